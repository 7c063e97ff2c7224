"""The paper's experiments: downstream recipes, the data-efficiency runner and its report.

Also the pieces they stand on: label-fraction subsets and seeds, paired statistics,
provenance records, and the in-memory pretraining loop of ``pretext3d pretrain``.
"""

from pretext3d.experiments.recipes import GradingRecipe, SegmentationRecipe
from pretext3d.experiments.report import paper_curves, read_runs, summarize, write_report
from pretext3d.experiments.runner import DataEfficiencyConfig, check_methods, run_data_efficiency, run_name
from pretext3d.experiments.stats import PairedComparison, holm, paired_differences
from pretext3d.experiments.subsets import RunSeeds, Split, nested_subsets, run_seeds, split_cases
from pretext3d.provenance import (
    case_key,
    environment,
    read_pretraining_record,
    write_pretraining_record,
)

__all__ = [
    "DataEfficiencyConfig",
    "GradingRecipe",
    "PairedComparison",
    "RunSeeds",
    "SegmentationRecipe",
    "Split",
    "case_key",
    "check_methods",
    "environment",
    "holm",
    "nested_subsets",
    "paired_differences",
    "paper_curves",
    "read_pretraining_record",
    "read_runs",
    "run_data_efficiency",
    "run_name",
    "run_seeds",
    "split_cases",
    "summarize",
    "write_pretraining_record",
    "write_report",
]
