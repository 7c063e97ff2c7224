"""The paper's experiments: downstream recipes, the data-efficiency runner and its report.

Also the pieces they stand on: label-fraction subsets and seeds, paired statistics,
provenance records, pretraining by registered names (``pretext3d pretrain``), and the
reproductions of the paper's two figures (``pretext3d reproduce``).
"""

from pretext3d.experiments.pretraining import TaskEntry, pretrain_encoder
from pretext3d.experiments.recipes import GradingRecipe, SegmentationRecipe
from pretext3d.experiments.report import paper_curves, read_runs, summarize, summary_table, write_report
from pretext3d.experiments.reproduce import (
    PretextSetting,
    Reproduction,
    load_reproduction,
    pretraining_curves,
    run_reproduction,
)
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
    "PretextSetting",
    "Reproduction",
    "RunSeeds",
    "SegmentationRecipe",
    "Split",
    "TaskEntry",
    "case_key",
    "check_methods",
    "environment",
    "holm",
    "load_reproduction",
    "nested_subsets",
    "paired_differences",
    "paper_curves",
    "pretrain_encoder",
    "pretraining_curves",
    "read_pretraining_record",
    "read_runs",
    "run_data_efficiency",
    "run_name",
    "run_reproduction",
    "run_seeds",
    "split_cases",
    "summarize",
    "summary_table",
    "write_pretraining_record",
    "write_report",
]
