"""The paper's experiments: downstream recipes, the data-efficiency grid and its report.

Also the pieces they stand on: label-fraction subsets and seeds, paired statistics,
pretraining by registered names, the commands' configs and functions (``pretext3d
pretrain``, ``finetune``, ``data-efficiency``), and the reproductions of the paper's two
figures (``pretext3d reproduce``). Provenance records live in :mod:`pretext3d.provenance`.
"""

from pretext3d.config import renamed
from pretext3d.experiments.commands import DataEfficiency, Finetuning, data_efficiency, finetune
from pretext3d.experiments.fitted import FineTunedModel, load_model, predict, save_model
from pretext3d.experiments.pretraining import (
    Pretraining,
    accuracy_summary,
    pretrain,
    pretrain_encoder,
    pretraining_curves,
)
from pretext3d.experiments.recipes import (
    ClassificationRecipe,
    GradingRecipe,
    PooledClassifier,
    Recipe,
    SegmentationRecipe,
    recipe_for,
)
from pretext3d.experiments.report import paper_curves, read_runs, summarize, summary_table, write_report
from pretext3d.experiments.reproduce import (
    Reproduction,
    held_out_block,
    load_reproduction,
    methods_of,
    run_reproduction,
)
from pretext3d.experiments.runner import (
    DataEfficiencyConfig,
    DataEfficiencyGrid,
    LabelledCases,
    RunCell,
    check_methods,
    run_data_efficiency,
    run_name,
)
from pretext3d.experiments.stats import PairedComparison, detectable_difference, holm, paired_differences
from pretext3d.experiments.subsets import RunSeeds, Split, nested_subsets, run_seeds, split_cases
from pretext3d.experiments.verdict import choose_learning_rates, verdict_rows, verdict_table

__all__ = [
    "ClassificationRecipe",
    "DataEfficiency",
    "DataEfficiencyConfig",
    "DataEfficiencyGrid",
    "FineTunedModel",
    "Finetuning",
    "GradingRecipe",
    "LabelledCases",
    "PairedComparison",
    "PooledClassifier",
    "Pretraining",
    "Recipe",
    "Reproduction",
    "RunCell",
    "RunSeeds",
    "SegmentationRecipe",
    "Split",
    "accuracy_summary",
    "check_methods",
    "choose_learning_rates",
    "data_efficiency",
    "detectable_difference",
    "finetune",
    "held_out_block",
    "holm",
    "load_model",
    "load_reproduction",
    "methods_of",
    "nested_subsets",
    "paired_differences",
    "paper_curves",
    "predict",
    "pretrain",
    "pretrain_encoder",
    "pretraining_curves",
    "read_runs",
    "recipe_for",
    "run_data_efficiency",
    "run_name",
    "run_reproduction",
    "run_seeds",
    "save_model",
    "split_cases",
    "summarize",
    "summary_table",
    "verdict_rows",
    "verdict_table",
    "write_report",
]


__getattr__ = renamed(
    {
        "TaskEntry": "pretext3d.TaskSpec(name, weight, options)",
        "PretextSetting": "pretext3d.TaskSpec(options=..., crop=...)",
    },
    "pretext3d.experiments",
)
