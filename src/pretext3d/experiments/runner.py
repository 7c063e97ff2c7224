"""The data-efficiency experiment: downstream quality against the fraction of labels used.

The protocol (a fair comparison, after the shortcomings of the original's):

- **Grid.** For every split seed, repetition, label fraction and method, one fine-tuning
  run. A method is a list of encoder files, one per pretraining seed, or ``None`` for the
  from-scratch baseline.
- **Seeds.** Each split seed fixes its own validation and test cases; each repetition
  draws its own nested labelled subsets (5 % ⊂ 10 % ⊂ ...). Subset, initialisation and
  batch order come from separate seed streams (:func:`~pretext3d.experiments.subsets.run_seeds`),
  the same for every method of a (split seed, repetition) cell, so methods differ only in
  the encoder's starting weights. Grading data are split and subsampled stratified by grade.
- **Fair baseline.** A from-scratch encoder is never frozen: freezing random features
  starves the baseline and manufactures a gain. The baseline trains with
  ``baseline_train`` (default: ``train`` without the freeze); both arms share the maximum
  budget and the convergence rule (early stopping on the validation score, the best epoch
  restored). Whether each run converged (stopped by patience rather than by the budget)
  is recorded and reported.
- **No test images in pretraining.** An encoder whose pretraining record
  (:mod:`~pretext3d.provenance`) lists a validation or test case of a split is
  refused, unless ``transductive=True`` (the paper's setting), which is recorded.
- **Provenance.** ``config.json`` and every result row carry the settings, the data's
  hash and description, each encoder file's hash and pretraining record, and the
  environment (versions, git commit, device, threads). A folder holding runs of anything
  else is refused.

Every finished run is written as its own JSON file (temporary name, then rename), and
an interrupted run resumes from its last epoch checkpoint: kill the process at any
point and rerun the same command; nothing finished is repeated, lost or duplicated.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pretext3d import engine
from pretext3d._atomic import remove_stale_temporaries, write_text
from pretext3d._checks import check_device_name
from pretext3d.config import checked
from pretext3d.data.spec import DataSpec
from pretext3d.experiments.fitted import save_model
from pretext3d.experiments.locks import RunLock, remove_stale_locks, work_through
from pretext3d.experiments.recipes import Recipe
from pretext3d.experiments.subsets import RunSeeds, Split, nested_subsets, run_seeds, split_cases
from pretext3d.finetune.trainer import TrainConfig, Trainer
from pretext3d.provenance import (
    environment,
    file_sha256,
    overlapping_cases,
    read_pretraining_record,
    tensor_sha256,
)

__all__ = [
    "DataEfficiencyConfig",
    "DataEfficiencyGrid",
    "LabelledCases",
    "RunCell",
    "check_methods",
    "run_data_efficiency",
    "run_flag",
    "run_name",
]

_FLAG_NOTES = {"epoch-0": ", FAILED: never improved on its first epoch", "budget": ", NOT converged"}

EncoderFiles = str | os.PathLike[str] | None | Sequence[str | os.PathLike[str]]


@checked
@dataclass
class DataEfficiencyConfig:
    """Settings of the data-efficiency grid.

    Attributes:
        fractions: label fractions of the training pool.
        split_seeds: one validation/test split per seed; the independent repeats that the
            paired intervals are taken over (use five or more for a verdict).
        repetitions: labelled subsets drawn per split seed: ``n`` runs repetitions
            ``0..n-1``; a tuple runs exactly the repetitions it lists.
        val_fraction: share of all cases held out for validation (early stopping, best epoch).
        test_fraction: share of all cases held out for the test metrics.
        train: fine-tuning settings of the pretrained encoders (may freeze the encoder first).
            Its ``seed`` feeds the initialisation and batch-order streams of every method.
        baseline_train: the from-scratch baseline's settings; ``None``: ``train`` with
            ``freeze_encoder_epochs=0`` and ``encoder_lr_factor=1`` (a random encoder is neither
            frozen nor slowed). It may differ (its own tuned learning rate, say),
            but never freezes, and must have the same ``seed``, ``epochs``,
            ``early_stopping_patience`` and ``min_epochs`` as ``train`` (same budget, same
            convergence rule).
        transductive: allow encoders pretrained on validation or test images (the paper's
            setting); recorded in every row. Default: refuse them.
        lr_search: learning rates to try in every run, baseline and pretrained arms alike; each
            run keeps the one with the best validation score (the test set is never looked at)
            and records every candidate's (``row["lr_search"]``); empty: ``train.lr`` (and
            ``baseline_train.lr``) as given. Costs one fine-tuning per candidate.
        fit_head: before a pretrained encoder is fine-tuned, fit the new head to its frozen
            features of the labelled training cases (:meth:`Recipe.fit_head
            <pretext3d.experiments.Recipe.fit_head>`; the linear-probe step of LP-FT, Kumar et
            al. 2022), so that the warm-up starts from the best linear readout; recorded per run
            as ``row["head_fitted"]`` (recipes whose head is not a linear readout fit nothing).
            The from-scratch baseline has no features worth reading out and is never fitted.
        different_budgets: allow ``baseline_train`` a step budget (``epochs * steps_per_epoch *
            batch_size`` images) other than ``train``'s; default: refuse it, since an arm with
            more images seen wins for that reason alone.
        learning_rates: method -> the learning rate of every run of that method (frozen, e.g.
            chosen once on a development block by :func:`choose_learning_rates`); a method named
            here is not searched (``lr_search`` applies to the others). Recorded in every row.
        spread_pretraining_seeds: each split seed fine-tunes *one* of a method's pretraining
            seeds, the ``i``-th split seed of ``split_seeds`` the ``(i mod n)``-th of its ``n``
            encoder files, instead of every one: the pretraining seed is spread over the paired
            units (so the verdict is about the method, not one encoder) without multiplying
            the runs. Default: every pretraining seed at every split seed.

    Examples:
        >>> config = DataEfficiencyConfig(
        ...     train=p3.finetune.TrainConfig(epochs=50, freeze_encoder_epochs=5, early_stopping_patience=10),
        ...     baseline_train=p3.finetune.TrainConfig(epochs=50, early_stopping_patience=10))
        >>> config.fractions, config.split_seeds   # the paper's fractions, 5 split seeds
        ((0.05, 0.1, 0.25, 0.5, 1.0), (0, 1, 2, 3, 4))

    References:
        - Taleb et al., "3D Self-Supervised Methods for Medical Imaging", NeurIPS 2020. (the label fractions).
    """

    fractions: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0)
    split_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    repetitions: int | tuple[int, ...] = 1
    val_fraction: float = 0.15
    test_fraction: float = 0.25
    train: TrainConfig = field(default_factory=TrainConfig)
    baseline_train: TrainConfig | None = None
    transductive: bool = False
    different_budgets: bool = False
    lr_search: tuple[float, ...] = ()
    fit_head: bool = True
    learning_rates: dict[str, float] = field(default_factory=dict)
    spread_pretraining_seeds: bool = False

    def __post_init__(self) -> None:
        """Check the values."""
        self._check_lr_search()
        for method, lr in self.learning_rates.items():
            if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf:
                raise ValueError(f"learning_rates[{method!r}] must be a learning rate > 0, got {lr!r}")
        reps = self.repetition_indices
        if not reps or min(reps) < 0 or len(set(reps)) != len(reps):
            raise ValueError(
                f"repetitions must be a count >= 1 or distinct indices >= 0, got {self.repetitions!r}"
            )
        if not self.fractions or any(not 0 < f <= 1 for f in self.fractions):
            raise ValueError(f"fractions must be one or more numbers in (0, 1], got {self.fractions}")
        names = [f"{f:g}" for f in self.fractions]
        if len(set(names)) != len(names):
            raise ValueError(
                f"fractions must be distinct to 6 significant digits (they name the run files), got "
                f"{self.fractions}"
            )
        if not self.split_seeds or any(s < 0 for s in self.split_seeds):
            raise ValueError(f"split_seeds must be one or more seeds >= 0, got {self.split_seeds}")
        if len(set(self.split_seeds)) != len(self.split_seeds):
            raise ValueError(f"split_seeds must not repeat, got {self.split_seeds}")
        base = self.baseline_train
        if base is not None:
            if base.freeze_encoder_epochs:
                raise ValueError(
                    "baseline_train.freeze_encoder_epochs must be 0: a from-scratch encoder is never "
                    "frozen (freezing random features starves the baseline), "
                    f"got {base.freeze_encoder_epochs}"
                )
            for name in ("seed", "epochs", "early_stopping_patience", "min_epochs"):
                if getattr(base, name) != getattr(self.train, name):
                    raise ValueError(
                        f"baseline_train.{name} must equal train.{name} (same seeds, budget and "
                        f"convergence rule for every arm), got {getattr(base, name)} and "
                        f"{getattr(self.train, name)}"
                    )
            budgets = [_budget(base), _budget(self.train)]
            if budgets[0] != budgets[1] and not self.different_budgets:
                raise ValueError(
                    f"baseline_train's step budget (epochs x steps_per_epoch x batch_size = {budgets[0]} "
                    f"images) differs from train's ({budgets[1]}): give every arm the same budget, or set "
                    "experiment.different_budgets = true to compare unequal budgets on purpose (recorded)"
                )

    def _check_lr_search(self) -> None:
        lrs = self.lr_search
        numbers = all(isinstance(lr, (int, float)) and not isinstance(lr, bool) for lr in lrs)
        if not numbers or any(not 0 < lr < math.inf for lr in lrs) or len(set(lrs)) != len(lrs):
            raise ValueError(f"lr_search must hold distinct learning rates > 0, got {lrs}")
        if lrs and self.val_fraction <= 0:
            raise ValueError("lr_search chooses on validation cases: set val_fraction > 0")

    @property
    def repetition_indices(self) -> tuple[int, ...]:
        """The repetitions the grid runs."""
        if isinstance(self.repetitions, int):
            return tuple(range(self.repetitions))
        return tuple(self.repetitions)

    def settings_for(self, pretrained: bool, method: str | None = None) -> TrainConfig:
        """The fine-tuning settings of a pretrained encoder or of the from-scratch baseline.

        With ``method`` named in :attr:`learning_rates`, at that method's learning rate.
        """
        if pretrained:
            train = self.train
        elif self.baseline_train is not None:
            train = self.baseline_train
        else:
            train = dataclasses.replace(self.train, freeze_encoder_epochs=0, encoder_lr_factor=1.0)
        if method in self.learning_rates:
            train = dataclasses.replace(train, lr=float(self.learning_rates[method]))
        return train

    def pretraining_seeds_for(self, split_seed: int, count: int) -> range:
        """Which of a method's ``count`` encoder files the runs of ``split_seed`` fine-tune.

        Examples:
            >>> config = DataEfficiencyConfig(split_seeds=(100, 101, 102, 103), spread_pretraining_seeds=True)
            >>> [list(config.pretraining_seeds_for(s, 3)) for s in config.split_seeds]
            [[0], [1], [2], [0]]
            >>> list(DataEfficiencyConfig().pretraining_seeds_for(0, 3))   # every one
            [0, 1, 2]
        """
        if not self.spread_pretraining_seeds or count == 1:
            return range(count)
        k = self.split_seeds.index(split_seed) % count
        return range(k, k + 1)


def _score(value: float | None) -> float:
    """A validation score for ranking (``None`` or NaN: the worst)."""
    return -math.inf if value is None or math.isnan(value) else value


def _budget(train: TrainConfig) -> int:
    """Images one run may see: ``epochs * steps_per_epoch * batch_size``."""
    return train.epochs * train.steps_per_epoch * train.batch_size


def run_flag(best_epoch: int, converged: bool | None, *, validated_start: bool = False) -> str | None:
    """What is wrong with a run's end, for the summary and the figures (``None``: nothing).

    ``"epoch-0"``: its best validation score is its first epoch's (it never improved: a failed
    run, whatever its test score); ``"budget"``: it ran out of epochs while still improving
    (not converged). A run whose starting weights were validated (a head fitted to the frozen
    features first: ``validated_start``) measures improvement from them: its best epoch ``0``
    beat the start, and a best of ``-1`` (the fitted head itself, which fine-tuning never beat,
    kept after patience ran out) is a converged run, not a failed one.

    Examples:
        >>> run_flag(0, False), run_flag(7, False), run_flag(7, True), run_flag(3, None)
        ('epoch-0', 'budget', None, None)
        >>> run_flag(-1, True, validated_start=True), run_flag(0, True, validated_start=True)
        (None, None)
    """
    if best_epoch == 0 and converged is not None and not validated_start:
        return "epoch-0"
    return "budget" if converged is False else None


def run_name(method: str, split_seed: int, repetition: int, fraction: float, pretraining: int = 0) -> str:
    """File stem of one run: ``{method}__p{pretraining}__s{split_seed}__r{repetition}__f{fraction}``.

    Examples:
        >>> run_name("rotation", split_seed=0, repetition=1, fraction=0.05)
        'rotation__p0__s0__r1__f0.05'
    """
    return f"{method}__p{pretraining}__s{split_seed}__r{repetition}__f{fraction:g}"


@dataclass(frozen=True)
class RunCell:
    """One run of the grid: a method's encoder (by pretraining seed) at one split, repetition and fraction.

    Examples:
        >>> RunCell("rotation", pretraining=0, split_seed=2, repetition=0, fraction=0.1).name
        'rotation__p0__s2__r0__f0.1'
    """

    method: str
    pretraining: int
    split_seed: int
    repetition: int
    fraction: float

    @property
    def name(self) -> str:
        """The run's file stem (:func:`run_name`)."""
        return run_name(self.method, self.split_seed, self.repetition, self.fraction, self.pretraining)


@dataclass
class LabelledCases:
    """The labelled cases of a grid, with what the records say about them.

    Attributes:
        images: all labelled cases ``(N, C, *spatial)``.
        labels: ``(N, *spatial)`` label maps or ``(N,)`` grades (grades stratify the splits).
        case_ids: one id per case (file stem, phantom id), recorded with the per-case scores
            and matched against the encoders' pretraining records; ``None``: ``case0``, ...
        info: how the data were made (loader, path, size, preprocessing, seed), recorded and
            part of the fingerprint.
        synthetic: the data are the built-in phantoms (recorded in every row and figure).

    Examples:
        >>> cases = LabelledCases(*p3.data.fundus_phantom_batch(4, size=16), synthetic=True)
        >>> cases.ids, len(cases.strata)
        (['case0', 'case1', 'case2', 'case3'], 4)
    """

    images: Tensor
    labels: Tensor
    case_ids: list[str] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    synthetic: bool = False

    def __post_init__(self) -> None:
        """Check that images, labels and ids agree."""
        n = len(self.images)
        if n != len(self.labels):
            raise ValueError(f"images and labels must have the same length, got {n} and {len(self.labels)}")
        ids = [f"case{i}" for i in range(n)] if self.case_ids is None else [str(c) for c in self.case_ids]
        if len(ids) != n or len(set(ids)) != len(ids):
            raise ValueError(f"case_ids must be {n} distinct ids, got {len(ids)} ({len(set(ids))} distinct)")
        self.case_ids = ids

    @property
    def ids(self) -> list[str]:
        """The case ids (filled in)."""
        assert self.case_ids is not None
        return self.case_ids

    @property
    def strata(self) -> list[Any] | None:
        """The grades of graded cases (they stratify splits and subsets); ``None`` for label maps."""
        return self.labels.tolist() if self.labels.ndim == 1 else None

    def fingerprint(self) -> dict[str, Any]:
        """What the results folder's ``config.json`` records of the data."""
        return {
            "info": dict(self.info),
            "cases": len(self.images),
            "sha256": tensor_sha256(self.images, self.labels),
            "case_ids_sha256": hashlib.sha256("\n".join(self.ids).encode()).hexdigest(),
        }


def check_methods(
    recipe: Recipe, in_channels: int, methods: Mapping[str, EncoderFiles]
) -> dict[str, list[str | None]]:
    """Each method's encoder files (``None``: from scratch), every one checked to load into ``recipe``.

    What :func:`run_data_efficiency` checks before anything runs; the CLI calls it before
    reading the data.

    Raises:
        ValueError: no method, a bad method name, an empty list, a missing file, or an encoder
            the recipe cannot load; the message names the method.

    Examples:
        >>> recipe = p3.experiments.GradingRecipe(growth_rate=4, block_config=(1, 1), init_features=8)
        >>> check_methods(recipe, 3, {"scratch": None, "rotation": "missing.pt"})
        Traceback (most recent call last):
        ValueError: methods['rotation']: ...
    """
    encoders = _encoder_lists(methods)
    for name, files in encoders.items():
        for f in files:
            if f is not None:
                try:
                    recipe.check_encoder(in_channels, f)
                except ValueError as err:
                    raise ValueError(f"methods[{name!r}]: {err}") from err
    return encoders


def _encoder_lists(methods: Mapping[str, EncoderFiles]) -> dict[str, list[str | None]]:
    if not methods:
        raise ValueError("methods must name at least one method, e.g. {'scratch': None}")
    out: dict[str, list[str | None]] = {}
    for name, files in methods.items():
        if not name or "__" in name or "/" in name:
            raise ValueError(f"method names must be non-empty and contain no '__' or '/', got {name!r}")
        if files is None:
            out[name] = [None]
        elif isinstance(files, (str, os.PathLike)):
            out[name] = [str(files)]
        else:
            listed: list[str | None] = [str(f) for f in files]
            if not listed:
                raise ValueError(f"methods[{name!r}] lists no encoder file; use None for from scratch")
            out[name] = listed
        for f in out[name]:
            if f is not None and not Path(f).is_file():
                raise ValueError(f"methods[{name!r}]: encoder file {f!r} does not exist")
    return out


def _encoder_info(path: str | None) -> dict[str, Any] | None:
    if path is None:
        return None
    return {"path": path, "sha256": file_sha256(path), "pretraining": read_pretraining_record(path)}


def run_data_efficiency(
    recipe: Recipe,
    images: Tensor,
    labels: Tensor,
    methods: Mapping[str, EncoderFiles],
    config: DataEfficiencyConfig,
    output_dir: str | os.PathLike[str],
    *,
    case_ids: Sequence[str] | None = None,
    data_info: Mapping[str, Any] | None = None,
    device: torch.device | str = "auto",
    synthetic: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Run (or resume) the grid and write its results.

    Args:
        recipe: the experiment (:class:`~pretext3d.experiments.recipes.SegmentationRecipe` or
            :class:`~pretext3d.experiments.recipes.GradingRecipe`).
        images: all labelled cases ``(N, C, *spatial)``.
        labels: ``(N, *spatial)`` label maps or ``(N,)`` grades (grades stratify the splits).
        methods: name -> pretrained encoder file, a list of them (one per pretraining
            seed), or ``None`` for the from-scratch baseline.
        config: the grid and training settings.
        output_dir: receives ``runs/*.json`` (one per finished run), ``checkpoints/``,
            ``config.json`` and, at the end, the report files (see
            :func:`~pretext3d.experiments.report.write_report`).
        case_ids: one id per case (file stem, phantom id), recorded with the per-case
            scores and matched against the encoders' pretraining records; default
            ``case0``, ``case1``, ...
        data_info: how the data were made (loader, path, size, preprocessing, seed),
            recorded and part of the fingerprint.
        device: where to train.
        synthetic: the data are the built-in phantoms (recorded in every row and figure).
        progress: show a progress bar (needs tqdm; plain log lines otherwise).
        log: where progress lines go.

    Returns:
        One row per (method, pretraining seed, split seed, repetition, fraction).

    Raises:
        ValueError: mismatched inputs, a folder holding runs of other settings, data or
            software, or an encoder pretrained on validation/test cases (unless
            ``config.transductive``).

    Examples:
        >>> images, grades = p3.data.fundus_phantom_batch(24, size=32)   # SYNTHETIC
        >>> recipe = p3.experiments.GradingRecipe(growth_rate=4, block_config=(1, 1), init_features=8)
        >>> config = p3.experiments.DataEfficiencyConfig(
        ...     fractions=(0.25, 1.0), split_seeds=(0,),
        ...     train=p3.finetune.TrainConfig(epochs=1, steps_per_epoch=2, batch_size=4))
        >>> # a rerun resumes: nothing finished is redone
        >>> rows = run_data_efficiency(recipe, images, grades, {"scratch": None}, config, "grid",
        ...                            synthetic=True, progress=False, log=lambda line: None)
        >>> [(r["method"], r["fraction"], r["n_labelled"]) for r in rows], sorted(rows[0]["test"])
        ([('scratch', 0.25, 4), ('scratch', 1.0, 14)], ['accuracy', 'qwk'])

    References:
        - Taleb et al., "3D Self-Supervised Methods for Medical Imaging", NeurIPS 2020. (the data-efficiency
          protocol, here with a fair baseline).
    """
    cases = LabelledCases(
        images, labels, None if case_ids is None else list(case_ids), dict(data_info or {}), synthetic
    )
    grid = DataEfficiencyGrid(recipe, cases, methods, config, output_dir, device=device, log=log)
    return grid.run(progress=progress)


class DataEfficiencyGrid:
    """The data-efficiency grid as an object: it plans, claims, runs and collects.

    Args:
        recipe: the experiment (a registered :class:`~pretext3d.experiments.Recipe`).
        cases: the labelled cases.
        methods: name -> pretrained encoder file, a list of them (one per pretraining
            seed), or ``None`` for the from-scratch baseline.
        config: the grid and training settings.
        output_dir: the results folder (see :func:`run_data_efficiency`).
        device: where to fine-tune (``"auto"``, ``"cpu"``, ``"cuda[:i]"``; under torchrun
            ``"cuda"`` is the worker's own GPU), resolved here.
        log: where progress lines go.
        save_models: write each run's model, as selected on validation, to
            ``models/<run>.pt`` (:func:`~pretext3d.experiments.save_model`; apply it with
            :func:`~pretext3d.experiments.predict`). Needs ``cases.info`` to be the data's
            :class:`~pretext3d.data.DataSpec` settings (the commands' are).

    Examples:
        >>> cases = LabelledCases(*p3.data.fundus_phantom_batch(24, size=32), synthetic=True)
        >>> recipe = p3.experiments.GradingRecipe(growth_rate=4, block_config=(1, 1), init_features=8)
        >>> config = DataEfficiencyConfig(fractions=(0.25, 1.0), split_seeds=(0,),
        ...                               train=p3.finetune.TrainConfig(epochs=1, steps_per_epoch=2))
        >>> grid = DataEfficiencyGrid(recipe, cases, {"scratch": None}, config, "grid-objects", device="cpu",
        ...                           log=lambda line: None)
        >>> [cell.name for cell in grid.plan()]
        ['scratch__p0__s0__r0__f0.25', 'scratch__p0__s0__r0__f1']
        >>> rows = grid.run(progress=False)   # claims each run, runs it, collects every row
        >>> [row["n_labelled"] for row in rows]
        [4, 14]
    """

    def __init__(
        self,
        recipe: Recipe,
        cases: LabelledCases,
        methods: Mapping[str, EncoderFiles],
        config: DataEfficiencyConfig,
        output_dir: str | os.PathLike[str],
        *,
        device: torch.device | str = "auto",
        log: Callable[[str], None] = print,
        save_models: bool = False,
    ) -> None:
        if not str(output_dir).strip():
            raise ValueError("output_dir must name a folder, got ''")
        self.data: DataSpec | None = None
        if save_models:
            try:
                self.data = DataSpec(**cases.info)
            except TypeError as err:
                raise ValueError(
                    "save_models needs cases.info to hold the data's DataSpec settings (dataclasses.asdict "
                    f"of it) to record how inputs are prepared; got {sorted(cases.info)}"
                ) from err
        if isinstance(device, str):
            check_device_name("device", device)
        recipe.check_labels(cases.labels)
        self.recipe, self.cases, self.config, self.log = recipe, cases, config, log
        self.device = engine.resolve_device(device)
        self.encoders = check_methods(recipe, cases.images.shape[1], methods)
        unknown = sorted(set(config.learning_rates) - set(self.encoders))
        if unknown:
            raise ValueError(
                f"experiment.learning_rates names {unknown}, which are not methods of this grid "
                f"({', '.join(self.encoders)})"
            )
        self.out = Path(output_dir)
        self.splits = {
            s: split_cases(
                len(cases.images), config.val_fraction, config.test_fraction, s, strata=cases.strata
            )
            for s in config.split_seeds
        }
        self.settings: dict[str, Any] = {}
        self._warned: set[float] = set()  # fractions whose missing classes were reported

    def plan(self) -> list[RunCell]:
        """Every run, in the order they are run and reported."""
        c = self.config
        return [
            RunCell(method, p, s, r, f)
            for s in c.split_seeds
            for r in c.repetition_indices
            for f in c.fractions
            for method, files in self.encoders.items()
            for p in c.pretraining_seeds_for(s, len(files))
        ]

    def path(self, cell: RunCell) -> Path:
        """The finished run's result file."""
        return self.out / "runs" / f"{cell.name}.json"

    def model_path(self, cell: RunCell) -> Path:
        """The run's model file (written with ``save_models``)."""
        return self.out / "models" / f"{cell.name}.pt"

    def done(self, cell: RunCell) -> bool:
        """Whether the run has finished (its result file exists)."""
        return self.path(cell).exists()

    def _lock(self, cell: RunCell) -> Path:
        return self.out / "runs" / f"{cell.name}.lock"

    @contextlib.contextmanager
    def claim(self, cell: RunCell) -> Iterator[bool]:
        """Hold the run's lock while the block runs; ``True`` if this worker holds it."""
        with RunLock(self._lock(cell)) as claimed:
            yield claimed

    def prepare(self) -> None:
        """Make the folder, remove what killed processes left, check and write ``config.json``.

        Raises:
            ValueError: the folder holds runs of other settings, data or software, or an encoder
                was pretrained on validation/test cases (unless ``config.transductive``).
        """
        out, log = self.out, self.log
        (out / "runs").mkdir(parents=True, exist_ok=True)
        (out / "checkpoints").mkdir(exist_ok=True)
        for folder in (out, out / "runs", out / "checkpoints"):
            for stale in remove_stale_temporaries(folder):
                log(f"removed {stale}, left by a killed process")
        for lock in remove_stale_locks(out / "runs"):
            log(f"removed {lock}, the lock of a killed worker")
        for cell in self.plan():
            if self.done(cell):  # a worker killed between writing the row and cleaning up
                for leftover in self._leftovers(cell):
                    if leftover.exists():
                        leftover.unlink()
                        log(f"removed {leftover}, left by a run that had finished")
        settings = {
            "config": asdict(self.config),
            "methods": {name: [_encoder_info(f) for f in files] for name, files in self.encoders.items()},
            "method_order": list(self.encoders),
            "recipe": repr(self.recipe),
            "data": self.cases.fingerprint(),
            "environment": environment(self.device),
            "synthetic": self.cases.synthetic,
        }
        self.settings = json.loads(json.dumps(settings, default=str))
        saved = out / "config.json"
        if saved.exists():
            old = json.loads(saved.read_text())
            added = _added_methods(old, self.settings)
            if added:  # the other methods' runs are as they were: only the new ones run
                log(f"adding method(s) {', '.join(added)} to the grid in {out}; the other runs are kept")
            else:
                check_unchanged(
                    old, self.settings, saved, "runs made with other settings, data or software",
                    finished=any((out / "runs").glob("*.json")), log=log,
                )  # fmt: skip
        _check_pretraining(
            self.settings["methods"], self.splits, self.cases.ids, self.config.transductive, log
        )
        write_text(saved, json.dumps(self.settings, indent=2, sort_keys=True))  # once the grid may run

    def run(self, *, progress: bool = True) -> list[dict[str, Any]]:
        """Prepare, run every unfinished run this worker can claim, wait for the others; every row.

        Workers sharing the folder (processes, machines, torchrun ranks) claim each run with a
        lock file; a run another live worker holds is left to it and waited for at the end.
        """
        self.prepare()
        plan = self.plan()
        pending = [cell for cell in plan if not self.done(cell)]
        unsaved = [
            c.name for c in plan if self.data is not None and self.done(c) and not self.model_path(c).exists()
        ]
        if unsaved:
            self.log(
                f"{len(unsaved)} run(s) finished before models were saved and have none ({unsaved[0]}, ...): "
                "delete their runs/<run>.json to train them again with their model"
            )
        first = self.splits[self.config.split_seeds[0]]
        self.log(
            f"data efficiency: {len(plan)} runs, {len(plan) - len(pending)} already done; per split "
            f"{len(first.train)} training pool / {len(first.val)} validation / {len(first.test)} test cases"
        )
        log = self.log
        with engine.progress(len(pending), 0, progress, "fine-tuning runs") as bar:
            if bar is not None and log is print:  # lines above the bar, not through it
                self.log = bar.write
            try:
                self._run_pending(pending, bar)
            except KeyboardInterrupt:
                finished = sum(self.done(cell) for cell in plan)
                self.log(
                    f"stopped: {finished} of {len(plan)} runs finished and kept in {self.out}; rerun the "
                    "same command to resume (an unfinished run goes on from its last epoch's checkpoint)"
                )
                raise
            finally:
                self.log = log
        return self.collect()

    def _run_pending(self, pending: list[RunCell], bar: Any) -> None:
        work_through(
            pending, done=self.done, lock=self._lock, run=lambda cell: self.run_one(cell, bar), log=self.log,
            waiting="run(s) that other workers hold",
        )  # fmt: skip

    def collect(self) -> list[dict[str, Any]]:
        """The rows of every run of the plan (all must have finished)."""
        return [json.loads(self.path(cell).read_text()) for cell in self.plan()]

    def run_one(self, cell: RunCell, bar: Any = None) -> dict[str, Any]:
        """Fine-tune one run (resuming its checkpoint), write its row, remove its checkpoint; the row."""
        split = self.splits[cell.split_seed]
        seeds = run_seeds(cell.split_seed, cell.repetition, self.config.train.seed)
        strata = self.cases.strata
        pool_strata = [strata[i] for i in split.train] if strata is not None else None
        subsets = nested_subsets(split.train, self.config.fractions, seeds.subset, strata=pool_strata)
        self._warn_missing_classes(cell, subsets[cell.fraction])
        encoder_file = self.encoders[cell.method][cell.pretraining]
        train = dataclasses.replace(
            self.config.settings_for(encoder_file is not None, cell.method), seed=seeds.order
        )

        def on_epoch(record: Mapping[str, Any]) -> None:  # the bar moves within a run too
            if bar is not None:
                val = f", val {record['val']:.3f}" if "val" in record else ""
                bar.set_postfix_str(f"{cell.name}: epoch {record['epoch'] + 1}/{train.epochs}{val}")

        record = {
            "run": cell.name,
            "method": cell.method,
            "fraction": cell.fraction,
            "split_seed": cell.split_seed,
            "repetition": cell.repetition,
            "encoder": encoder_file,
        }
        row = self._search(cell, train, lambda trial, path, model: self._finetune(
            encoder_file, subsets[cell.fraction], split, trial, seeds, path, on_epoch,
            (model, record) if self.data is not None else None,
        ))  # fmt: skip
        info = self.settings["methods"][cell.method][cell.pretraining]
        row.update(
            method=cell.method,
            pretraining_seed=cell.pretraining,
            split_seed=cell.split_seed,
            repetition=cell.repetition,
            fraction=cell.fraction,
            seeds=asdict(seeds),
            encoder=info,
            pretext_accuracy=None if info is None else (info["pretraining"] or {}).get("pretext_accuracy"),
            transductive=self.config.transductive,
            provenance={k: self.settings[k] for k in ("data", "environment", "synthetic")},
            synthetic=self.cases.synthetic,
        )
        write_text(self.path(cell), json.dumps(row, indent=2, sort_keys=True))
        for leftover in self._leftovers(cell):
            leftover.unlink(missing_ok=True)
        if bar is not None:
            bar.update(1)
        metric = self.recipe.metric
        best = (
            "kept its fitted head (no epoch beat it)"
            if row["best_epoch"] == -1
            else f"best epoch {row['best_epoch']}"
        )
        self.log(
            f"{cell.name}: {metric} {row['test'][metric]:.3f} ({row['n_labelled']} labelled, "
            f"{best}/{row['epochs_run']}{_FLAG_NOTES.get(row['flag'], '')}, {row['seconds']:.0f} s)"
        )
        return row

    def _warn_missing_classes(self, cell: RunCell, subset: list[int]) -> None:
        """Say once per fraction when a classification subset lacks classes (a fraction too small)."""
        classes = getattr(self.recipe, "num_classes", None)
        labels = self.cases.labels
        if classes is None or labels.dim() != 1 or cell.fraction in self._warned:
            return
        present = len(torch.unique(labels[subset]))
        if present < classes:
            self._warned.add(cell.fraction)
            self.log(
                f"warning: at fraction {cell.fraction:g} the labelled subset ({cell.name}) holds "
                f"{len(subset)} image(s) of {present} of the {classes} classes: the model never sees the "
                "others; raise the fraction or label more images"
            )

    def _checkpoint(self, cell: RunCell, lr: float | None = None, ext: str = ".pt") -> Path:
        """A run's checkpoint, or a learning-rate candidate's checkpoint (``.pt``) or result (``.json``)."""
        name = f"{cell.name}{ext}" if lr is None else f"{cell.name}.lr{lr:g}{ext}"
        return self.out / "checkpoints" / name

    def _leftovers(self, cell: RunCell) -> list[Path]:
        """The files a run keeps while it runs: its checkpoint, its learning-rate candidates'."""
        return [self._checkpoint(cell)] + [
            self._checkpoint(cell, lr, ext)
            for lr in self.config.lr_search
            for ext in (".pt", ".json", ".model.pt")
        ]

    def _search(
        self,
        cell: RunCell,
        train: TrainConfig,
        finetune: Callable[[TrainConfig, Path, Path], dict[str, Any]],
    ) -> dict[str, Any]:
        """The run with ``train`` as given, or the best on validation of ``config.lr_search``.

        ``finetune(settings, checkpoint, model file)``. A finished candidate is kept in
        ``checkpoints/<run>.lr<lr>.json`` (its model in ``.lr<lr>.model.pt``) until the run's
        row is written, so an interrupted search repeats none.
        """
        if not self.config.lr_search or cell.method in self.config.learning_rates:
            return finetune(train, self._checkpoint(cell), self.model_path(cell))
        tried: list[tuple[float, dict[str, Any]]] = []
        for lr in self.config.lr_search:
            done = self._checkpoint(cell, lr, ".json")
            if done.exists():
                row = json.loads(done.read_text())
            else:
                row = finetune(
                    dataclasses.replace(train, lr=lr),
                    self._checkpoint(cell, lr),
                    self._checkpoint(cell, lr, ".model.pt"),
                )
                write_text(done, json.dumps(row, sort_keys=True))
            tried.append((lr, row))
        order = {lr: i for i, (lr, _) in enumerate(tried)}  # ties: the first candidate listed
        best_lr, best = max(tried, key=lambda t: (_score(t[1]["best_val"]), -order[t[0]]))
        chosen = self._checkpoint(cell, best_lr, ".model.pt")
        if chosen.exists():  # the chosen candidate's model is the run's
            self.model_path(cell).parent.mkdir(exist_ok=True)
            os.replace(chosen, self.model_path(cell))
        best = dict(best)
        best["lr_search"] = [
            {"lr": lr, "best_val": r["best_val"], "best_epoch": r["best_epoch"], "chosen": lr == best_lr}
            for lr, r in tried
        ]
        return best

    def _finetune(
        self,
        encoder_file: str | None,
        subset: list[int],
        split: Split,
        config: TrainConfig,
        seeds: RunSeeds,
        checkpoint: Path,
        on_epoch: engine.Callback,
        save: tuple[Path, dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Train one model from ``encoder_file`` (or scratch) on ``subset``; its result row.

        ``save``: the model file to write, with what to record in it beside the selection.
        """
        start = time.perf_counter()
        recipe, images, labels, ids = self.recipe, self.cases.images, self.cases.labels, self.cases.ids
        val, test = split.val, split.test
        torch.manual_seed(seeds.init)  # same decoder/classifier initialisation for every method
        model, encoder = recipe.build(images.shape[1], encoder_file)
        val_images, val_labels = images[val], labels[val]
        # fitted on a resume too (deterministic and cheap): the checkpoint then replaces the model
        fitted = (
            encoder_file is not None
            and self.config.fit_head
            and recipe.fit_head(model.to(self.device), encoder, images, labels, subset, self.device)
        )

        def validate(m: nn.Module) -> float:
            score = recipe.evaluate(m, val_images, val_labels, self.device)[recipe.metric]
            return -math.inf if math.isnan(score) else score

        def sample(generator: torch.Generator) -> tuple[Tensor, Tensor]:
            return recipe.sample(images, labels, subset, config.batch_size, generator)

        trainer = Trainer(
            model, recipe.loss(), sample, config, encoder=encoder, validate=validate if val else None,
            checkpoint=checkpoint, device=self.device, callbacks=[on_epoch],
            validate_start=bool(fitted and val),  # patience counts from the fitted head
        )  # fmt: skip
        history = trainer.fit()
        with trainer.optim.autocast():  # tested in the precision it was validated in
            summary, per_case = recipe.score_cases(trainer.model, images[test], labels[test], self.device)
        best_epoch = trainer.best_epoch if trainer.best_epoch is not None else len(history) - 1
        if save is not None and self.data is not None:
            file, record = save
            selection = {"metric": recipe.metric, "best_val": trainer.best_score if val else None,
                         "best_epoch": best_epoch, "test": summary, "n_labelled": len(subset)}  # fmt: skip
            file.parent.mkdir(parents=True, exist_ok=True)
            save_model(file, model, recipe, self.data, images.shape[1], {**record, **selection})
        patience = config.early_stopping_patience
        converged = None if patience is None or not val else trainer.stopped_by_patience()
        return {
            "n_labelled": len(subset),
            "labelled_cases": [ids[i] for i in subset],
            "n_val": len(val),
            "n_test": len(test),
            "test": summary,
            "test_cases": {"case_id": [ids[i] for i in test], **per_case},
            "head_fitted": fitted,
            # the fitted head's validation score before fine-tuning (None: not validated)
            "val_start": trainer.start_score,
            "best_val": trainer.best_score if val else None,
            "best_epoch": best_epoch,
            "epochs_run": len(history),
            # converged: stopped because the validation score stopped improving after it had improved
            # on the first epoch, not by the budget (see TrainConfig.early_stopping_patience)
            "converged": converged,
            "flag": run_flag(best_epoch, converged, validated_start=trainer.start_score is not None),
            "train": asdict(config),
            "history": history,
            "seconds": time.perf_counter() - start,
        }


def check_unchanged(
    old: Any, new: Any, saved: Path, what: str, *, finished: bool, log: Callable[[str], None]
) -> None:
    """Refuse a results folder whose saved settings ``old`` differ from ``new`` once anything finished.

    With nothing finished under the old settings (e.g. a run failed at its start) there is no
    result to protect, so the folder is not locked by a configuration that never ran: the
    new settings replace the old (logged).

    Raises:
        ValueError: the settings differ and ``finished``; the message names what changed.
    """
    changed = engine.changed_settings(old, new)
    if changed and finished:
        listed = ", ".join(changed[:8])
        raise ValueError(f"{str(saved.parent)!r} holds {what} (changed: {listed}); use another output folder")
    if changed:
        log(f"{saved} held other settings but no finished run; it is replaced")


def _added_methods(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The methods ``new`` adds to ``old``'s grid when nothing else differs (else ``[]``).

    The added methods may bring their own learning rates and may run at another commit of the
    library (each run records its environment); the old methods keep their order.

    Examples:
        >>> old = {"methods": {"scratch": [None]}, "method_order": ["scratch", "supervised"],
        ...        "config": {"learning_rates": {"scratch": 0.001}}, "environment": {"git_commit": "a"}}
        >>> new = {"methods": {"scratch": [None], "mim": [None]},
        ...        "method_order": ["scratch", "mim", "supervised"],
        ...        "config": {"learning_rates": {"scratch": 0.001, "mim": 0.003}},
        ...        "environment": {"git_commit": "b"}}
        >>> _added_methods(old, new)
        ['mim']
        >>> _added_methods(old, {**new, "config": {"learning_rates": {"scratch": 0.003, "mim": 0.003}}})
        []
    """
    before, after = old.get("methods", {}), new.get("methods", {})
    added = [name for name in after if name not in before]
    if not added or any(after.get(name) != value for name, value in before.items()):
        return []
    order = [name for name in new.get("method_order", []) if name not in added]
    if order != list(old.get("method_order", [])):
        return []

    def without_added(settings: Mapping[str, Any]) -> dict[str, Any]:
        config = dict(settings.get("config", {}))
        rates = config.get("learning_rates")
        if isinstance(rates, Mapping):
            config["learning_rates"] = {k: v for k, v in rates.items() if k not in added}
        environment = {k: v for k, v in dict(settings.get("environment", {})).items() if k != "git_commit"}
        return {**settings, "config": config, "environment": environment}

    ignore = ("methods", "method_order")
    return added if not engine.changed_settings(without_added(old), without_added(new), ignore=ignore) else []


def _check_pretraining(
    methods: Mapping[str, list[dict[str, Any] | None]],
    splits: Mapping[int, Split],
    ids: Sequence[str],
    transductive: bool,
    log: Callable[[str], None],
) -> None:
    """Refuse encoders pretrained on validation or test cases (unless transductive)."""
    for name, infos in methods.items():
        for info in infos:
            if info is None:
                continue
            record = info["pretraining"]
            if record is None or "pretraining_cases" not in record:
                log(
                    f"warning: {info['path']!r} ({name}) has no pretraining record listing its images; "
                    "cannot check that no validation/test case reached pretraining"
                )
                continue
            for seed, split in splits.items():
                held = [ids[i] for i in (*split.val, *split.test)]
                seen = overlapping_cases(record["pretraining_cases"], held)
                if seen and not transductive:
                    raise ValueError(
                        f"encoder {info['path']!r} ({name}) was pretrained on {len(seen)} validation/test "
                        f"case(s) of split seed {seed} (e.g. {seen[:3]}); pretrain on images outside the "
                        "labelled set, or set transductive=true to allow it (the paper's setting; recorded)"
                    )
                if seen:
                    log(
                        f"transductive: {name} was pretrained on {len(seen)} validation/test cases "
                        f"(split {seed})"
                    )
