"""What scores a head's output: losses, triplet miners, the cross-batch memory, gathering across ranks."""

from pretext3d.objectives.gather import gather_labels, gather_with_grad, rank, world_size
from pretext3d.objectives.losses import BinaryCPCLoss, InfoNCELoss, TripletMarginLoss
from pretext3d.objectives.memory import CrossBatchMemory
from pretext3d.objectives.miners import (
    BatchHardMiner,
    DistanceWeightedMiner,
    Miner,
    RandomNegativeMiner,
    SemiHardMiner,
    Triplets,
    check_embeddings,
)
from pretext3d.objectives.pml import PMLLoss, PMLMiner, TwoViewLoss

__all__ = [
    "BatchHardMiner",
    "BinaryCPCLoss",
    "CrossBatchMemory",
    "DistanceWeightedMiner",
    "InfoNCELoss",
    "Miner",
    "PMLLoss",
    "PMLMiner",
    "RandomNegativeMiner",
    "SemiHardMiner",
    "TripletMarginLoss",
    "Triplets",
    "TwoViewLoss",
    "check_embeddings",
    "gather_labels",
    "gather_with_grad",
    "rank",
    "world_size",
]
