"""Fine-tuning: losses, metrics, the training loop, and the data-efficiency runner."""

from pretext3d.finetune.losses import DiceCELoss, OrdinalLoss, SoftDiceLoss, ordinal_decode, ordinal_encode
from pretext3d.finetune.metrics import (
    PANCREAS_REGIONS,
    dice_per_case,
    pooled_mean_dice,
    quadratic_weighted_kappa,
    region_dice,
)
from pretext3d.finetune.provenance import (
    case_key,
    environment,
    read_pretraining_record,
    write_pretraining_record,
)
from pretext3d.finetune.recipes import GradingRecipe, SegmentationRecipe
from pretext3d.finetune.report import paper_curves, read_runs, summarize, write_report
from pretext3d.finetune.runner import DataEfficiencyConfig, run_data_efficiency, run_name
from pretext3d.finetune.stats import PairedComparison, holm, paired_differences
from pretext3d.finetune.subsets import RunSeeds, Split, nested_subsets, run_seeds, split_cases
from pretext3d.finetune.trainer import TrainConfig, Trainer

__all__ = [
    "PANCREAS_REGIONS",
    "DataEfficiencyConfig",
    "DiceCELoss",
    "GradingRecipe",
    "OrdinalLoss",
    "PairedComparison",
    "RunSeeds",
    "SegmentationRecipe",
    "SoftDiceLoss",
    "Split",
    "TrainConfig",
    "Trainer",
    "case_key",
    "dice_per_case",
    "environment",
    "holm",
    "nested_subsets",
    "ordinal_decode",
    "ordinal_encode",
    "paired_differences",
    "paper_curves",
    "pooled_mean_dice",
    "quadratic_weighted_kappa",
    "read_pretraining_record",
    "read_runs",
    "region_dice",
    "run_data_efficiency",
    "run_name",
    "run_seeds",
    "split_cases",
    "summarize",
    "write_pretraining_record",
    "write_report",
]
