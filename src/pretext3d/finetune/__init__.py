"""Fine-tuning: the generic training loop, fine-tuning losses and downstream metrics.

The paper's two downstream experiments, the data-efficiency runner and its report live
in :mod:`pretext3d.experiments`.
"""

from pretext3d.finetune.inference import gaussian_weights, sliding_window_inference, window_starts
from pretext3d.finetune.losses import DiceCELoss, OrdinalLoss, SoftDiceLoss, ordinal_decode, ordinal_encode
from pretext3d.finetune.metrics import (
    PANCREAS_REGIONS,
    balanced_accuracy,
    dice_per_case,
    pooled_mean_dice,
    quadratic_weighted_kappa,
    recall_per_class,
    region_dice,
)
from pretext3d.finetune.trainer import NonFiniteLossError, TrainConfig, Trainer

__all__ = [
    "PANCREAS_REGIONS",
    "DiceCELoss",
    "NonFiniteLossError",
    "OrdinalLoss",
    "SoftDiceLoss",
    "TrainConfig",
    "Trainer",
    "balanced_accuracy",
    "dice_per_case",
    "gaussian_weights",
    "ordinal_decode",
    "ordinal_encode",
    "pooled_mean_dice",
    "quadratic_weighted_kappa",
    "recall_per_class",
    "region_dice",
    "sliding_window_inference",
    "window_starts",
]
