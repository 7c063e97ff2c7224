"""The fine-tuning commands as configs and library functions: ``data-efficiency`` and ``finetune``.

The command line only parses: ``pretext3d data-efficiency`` reads a :class:`DataEfficiency`
config and calls :func:`data_efficiency`; ``pretext3d finetune`` reads a :class:`Finetuning`
and calls :func:`finetune` (one run of the same grid). What they do here: pick the recipe
the data's kind names, check every encoder file before reading the data, run the grid
(:class:`~pretext3d.experiments.runner.DataEfficiencyGrid`), and write the report once when
several workers share the folder.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pretext3d._atomic import atomic_path
from pretext3d._checks import check_device_name, check_int
from pretext3d.config import ConfigError, checked
from pretext3d.data.spec import DataSpec
from pretext3d.experiments.locks import RunLock
from pretext3d.experiments.recipes import (
    ClassificationRecipe,
    GradingRecipe,
    Recipe,
    SegmentationRecipe,
    recipe_for,
)
from pretext3d.experiments.report import write_report
from pretext3d.experiments.runner import (
    DataEfficiencyConfig,
    DataEfficiencyGrid,
    LabelledCases,
    check_methods,
    run_name,
)
from pretext3d.finetune.trainer import TrainConfig

__all__ = ["DataEfficiency", "Finetuning", "data_efficiency", "finetune", "write_report_once"]


@checked
@dataclass
class DataEfficiency:
    """``pretext3d data-efficiency``: downstream quality against the fraction of labels.

    Several workers can share one grid: start it N times on one ``output_dir`` (or under
    ``torchrun --nproc-per-node N``, one GPU each with ``device = "cuda"``); each run is
    claimed by one worker, a killed worker's run is taken over, the report is written once.

    Attributes:
        data: the labelled images (CT: segmentation; fundus: grading; a
            ``labelled-image-folder``: classification; a registered data kind: the recipe it
            names).
        methods: name -> encoder file from ``pretext3d pretrain``, or a list of them (one
            per pretraining seed); ``""`` = from scratch.
        segmentation: the segmentation recipe (CT data).
        grading: the grading recipe (fundus data, a ``graded-image-folder``).
        classification: the classification recipe (a ``labelled-image-folder``).
        experiment: fractions, repetitions, splits and the training settings.
        output_dir: where runs, results, summary and plot go.
        device: ``"auto"`` (a GPU if there is one), ``"cpu"`` or ``"cuda[:i]"``; resolved when
            the grid starts.
        save_models: also write each run's model (the epoch selected on validation) to
            ``<output_dir>/models/<run>.pt``, for ``pretext3d predict``.
        plugins: modules to import first.

    Examples:
        >>> from pretext3d.config import from_mapping
        >>> config = from_mapping(DataEfficiency, {
        ...     "methods": {"scratch": "", "rotation": ["rotation-seed0.pt", "rotation-seed1.pt"]},
        ...     "experiment": {"fractions": [0.05, 0.5], "split_seeds": [0, 1, 2]}})
        >>> config.experiment.fractions, sorted(config.methods)
        ((0.05, 0.5), ['rotation', 'scratch'])
    """

    data: DataSpec = field(default_factory=DataSpec)
    methods: dict[str, str | list[str]] = field(default_factory=lambda: {"scratch": ""})
    segmentation: SegmentationRecipe = field(default_factory=SegmentationRecipe)
    grading: GradingRecipe = field(default_factory=GradingRecipe)
    classification: ClassificationRecipe = field(default_factory=ClassificationRecipe)
    experiment: DataEfficiencyConfig = field(default_factory=DataEfficiencyConfig)
    output_dir: str = "data-efficiency"
    device: str = "auto"
    save_models: bool = False
    plugins: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        """Check what can be checked before any data are read."""
        if not self.methods:
            raise ValueError('methods must name at least one method, e.g. scratch = ""')
        if not self.output_dir.strip():
            raise ValueError("output_dir must name a folder, got ''")
        check_device_name("device", self.device)

    @property
    def recipe(self) -> Recipe:
        """The recipe the data's kind names, with this config's settings for it."""
        recipes = {"segmentation": self.segmentation, "grading": self.grading}
        return recipe_for(self.data, {**recipes, "classification": self.classification})


@checked
@dataclass
class Finetuning:
    """``pretext3d finetune``: one fine-tuning run (one method, one label fraction).

    Attributes:
        data: the labelled images.
        encoder: encoder file from ``pretext3d pretrain`` (``""``: from scratch).
        name: the method's name in the results.
        fraction: share of the training pool that is labelled.
        repetition: which seeded subset and training order (only that one runs).
        split_seed: seed of the fixed validation/test split.
        val_fraction: validation share.
        test_fraction: test share.
        train: the training settings (a from-scratch run never freezes the encoder).
        transductive: allow an encoder pretrained on validation or test images (recorded).
        segmentation: the segmentation recipe (CT data).
        grading: the grading recipe (fundus data, a ``graded-image-folder``).
        classification: the classification recipe (a ``labelled-image-folder``).
        output_dir: where the run, its checkpoint and the results go; the model (the epoch
            selected on validation) goes to ``<output_dir>/model.pt``, for ``pretext3d predict``.
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:i]"``.
        plugins: modules to import first.

    Examples:
        >>> from pretext3d.config import from_mapping
        >>> config = from_mapping(Finetuning, {"encoder": "encoder.pt", "fraction": 0.1,
        ...                                    "train": {"epochs": 30}})
        >>> config.fraction, config.train.epochs, config.data.kind
        (0.1, 30, 'ct-phantom')
    """

    data: DataSpec = field(default_factory=DataSpec)
    encoder: str = ""
    name: str = "run"
    fraction: float = 1.0
    repetition: int = 0
    split_seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.25
    train: TrainConfig = field(default_factory=TrainConfig)
    transductive: bool = False
    segmentation: SegmentationRecipe = field(default_factory=SegmentationRecipe)
    grading: GradingRecipe = field(default_factory=GradingRecipe)
    classification: ClassificationRecipe = field(default_factory=ClassificationRecipe)
    output_dir: str = "finetune"
    device: str = "auto"
    plugins: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        """Check what can be checked before any data are read."""
        if not self.output_dir.strip():
            raise ValueError("output_dir must name a folder, got ''")
        check_device_name("device", self.device)
        self.grid()

    def grid(self) -> DataEfficiency:
        """The one-run grid this command runs (its checks name ``fraction``, ``repetition``, ...)."""
        check_int("repetition", self.repetition, 0)
        experiment = DataEfficiencyConfig(
            fractions=(self.fraction,),
            repetitions=(self.repetition,),
            split_seeds=(self.split_seed,),
            val_fraction=self.val_fraction,
            test_fraction=self.test_fraction,
            train=self.train,
            transductive=self.transductive,
        )
        return DataEfficiency(
            self.data, {self.name: self.encoder}, self.segmentation, self.grading, self.classification,
            experiment, self.output_dir, self.device, save_models=True, plugins=self.plugins,
        )  # fmt: skip


def data_efficiency(config: DataEfficiency, *, title: str = "Data efficiency") -> list[dict[str, Any]]:
    """Run (or resume, or join as one more worker) the grid of ``config``; write the report once.

    ``title``: the summary's and the figures'.

    Raises:
        ConfigError: ``data.include_labelled`` (a pretraining setting), an encoder the recipe
            cannot load (checked before the data are read), or what the grid refuses.

    Examples:
        >>> config = DataEfficiency(
        ...     data=p3.data.DataSpec(kind="fundus-phantom", count=24, size=32),
        ...     output_dir="grid", device="cpu",
        ...     grading=GradingRecipe(growth_rate=4, block_config=(1, 1), init_features=8),
        ...     experiment=DataEfficiencyConfig(fractions=(1.0,), split_seeds=(0,),
        ...                                     train=TrainConfig(epochs=1, steps_per_epoch=1)))
        >>> rows = data_efficiency(config)   # rerun: resumes; another worker on "grid": shares it
        data efficiency: 1 runs, 0 already done; ...
        >>> [(r["method"], r["fraction"]) for r in rows]
        [('scratch', 1.0)]
    """
    if config.data.include_labelled:
        raise ConfigError(
            "data.include_labelled applies to the pretraining pool (pretext3d pretrain) only; "
            "to allow encoders pretrained on validation/test cases set experiment.transductive = true"
        )
    recipe = config.recipe
    methods: dict[str, str | list[str] | None] = {
        name: (path or None) if isinstance(path, str) else list(path) for name, path in config.methods.items()
    }
    try:  # refuse an encoder the recipe cannot load now, before reading the data or training
        check_methods(recipe, config.data.in_channels, methods)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    images, labels, case_ids = config.data.labelled()
    try:
        cases = LabelledCases(images, labels, case_ids, config.data.settings(), config.data.synthetic)
        grid = DataEfficiencyGrid(
            recipe, cases, methods, config.experiment, config.output_dir, device=config.device,
            save_models=config.save_models,
        )  # fmt: skip
        rows = grid.run()
    except ValueError as err:
        raise ConfigError(str(err)) from err
    write_report_once(rows, config.output_dir, recipe.metric, synthetic=config.data.synthetic, title=title)
    return rows


def finetune(config: Finetuning) -> list[dict[str, Any]]:
    """One fine-tuning run: the one-cell grid of ``config`` (:meth:`Finetuning.grid`), and its model.

    The model the run selected on validation is written to ``<output_dir>/model.pt`` (and
    ``models/<run>.pt``, as the grid names it): :func:`~pretext3d.experiments.load_model`,
    ``pretext3d predict``.

    Examples:
        >>> config = Finetuning(
        ...     data=p3.data.DataSpec(kind="fundus-phantom", count=24, size=32), fraction=0.5,
        ...     output_dir="one-run", device="cpu", train=TrainConfig(epochs=1, steps_per_epoch=1),
        ...     grading=GradingRecipe(growth_rate=4, block_config=(1, 1), init_features=8))
        >>> rows = finetune(config)
        data efficiency: 1 runs, 0 already done; ...
        >>> rows[0]["fraction"], rows[0]["method"]
        (0.5, 'run')
        >>> p3.experiments.load_model("one-run/model.pt").record["fraction"]
        0.5
    """
    title = f"Fine-tuning run {config.name!r}: {config.fraction:.0%} of the labelled pool"
    grid = config.grid()
    rows = data_efficiency(grid, title=title)
    row = rows[0]
    name = run_name(
        row["method"], row["split_seed"], row["repetition"], row["fraction"], row["pretraining_seed"]
    )
    model = Path(config.output_dir) / "models" / f"{name}.pt"
    if model.exists():  # a resumed run that finished before models were saved has none
        target = Path(config.output_dir) / "model.pt"
        with atomic_path(target) as tmp:
            shutil.copyfile(model, tmp)
        best = "n/a" if row["best_val"] is None else f"{grid.recipe.metric} {row['best_val']:.4f}"
        print(f"wrote {target} (validation {best}); apply it with pretext3d predict")
    return rows


def write_report_once(
    rows: list[dict[str, Any]],
    output_dir: str | Path,
    metric: str,
    *,
    synthetic: bool,
    title: str = "Data efficiency",
) -> None:
    """Write the report unless another worker is writing it or it is newer than every run.

    Several workers (torchrun ranks, or processes on one folder) finish together: the report is
    written once, by the worker that finds it missing or older than the newest run.

    Examples:
        >>> rows = finetune(Finetuning(
        ...     data=p3.data.DataSpec(kind="fundus-phantom", count=24, size=32),
        ...     output_dir="once", device="cpu",
        ...     train=TrainConfig(epochs=1, steps_per_epoch=1),
        ...     grading=GradingRecipe(growth_rate=4, block_config=(1, 1), init_features=8)))
        data efficiency: ...
        >>> write_report_once(rows, "once", "qwk", synthetic=True)   # newer than every run: not again
    """
    out = Path(output_dir)
    with RunLock(out / "report.lock") as claimed:
        summary = out / "summary.md"
        newest = max(p.stat().st_mtime for p in (out / "runs").glob("*.json"))
        if claimed and (not summary.exists() or summary.stat().st_mtime < newest):
            for path in write_report(rows, output_dir, metric, synthetic=synthetic, title=title):
                print(f"wrote {path}")
