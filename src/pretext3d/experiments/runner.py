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

import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor, nn

from pretext3d._atomic import remove_stale_temporaries, write_text
from pretext3d._checks import check_device
from pretext3d.engine import Callback
from pretext3d.experiments.locks import RunLock
from pretext3d.experiments.subsets import RunSeeds, Split, nested_subsets, run_seeds, split_cases
from pretext3d.finetune.trainer import TrainConfig, Trainer
from pretext3d.provenance import (
    environment,
    file_sha256,
    overlapping_cases,
    read_pretraining_record,
    tensor_sha256,
)

__all__ = ["DataEfficiencyConfig", "Recipe", "check_methods", "run_data_efficiency", "run_name"]

_POLL_SECONDS = 5.0  # how often a worker looks again at runs that other workers hold

EncoderFiles = str | os.PathLike[str] | None | Sequence[str | os.PathLike[str]]


class Recipe(Protocol):
    """What the runner needs of an experiment (see :mod:`pretext3d.experiments.recipes`).

    Examples:
        The two recipes of the paper follow it:

        >>> recipe = p3.experiments.GradingRecipe(growth_rate=4, block_config=(1, 1), init_features=8)
        >>> model, encoder = recipe.build(in_channels=3, encoder_file=None)   # from scratch
        >>> recipe.metric, model(torch.randn(2, 3, 32, 32)).shape
        ('qwk', torch.Size([2, 5]))
    """

    metric: str
    encoder: ClassVar[str]

    def check_encoder(self, in_channels: int, encoder_file: str | os.PathLike[str]) -> None:
        """Raise ``ValueError`` unless the file's encoder loads into the recipe's model."""
        ...

    def build(
        self, in_channels: int, encoder_file: str | os.PathLike[str] | None
    ) -> tuple[nn.Module, nn.Module]:
        """Model and its encoder."""
        ...

    def loss(self) -> nn.Module:
        """The training loss."""
        ...

    def sample(
        self, images: Tensor, labels: Tensor, indices: list[int], batch: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """A training batch."""
        ...

    def evaluate(
        self, model: nn.Module, images: Tensor, labels: Tensor, device: torch.device | str = "cpu"
    ) -> dict[str, float]:
        """Metrics on whole images."""
        ...

    def score_cases(
        self, model: nn.Module, images: Tensor, labels: Tensor, device: torch.device | str = "cpu"
    ) -> tuple[dict[str, float], dict[str, list[float]]]:
        """Metrics on whole images and the per-case scores behind them."""
        ...


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
            ``freeze_encoder_epochs=0``. It may differ (its own tuned learning rate, say),
            but never freezes, and must have the same ``seed``, ``epochs``,
            ``early_stopping_patience`` and ``min_epochs`` as ``train`` (same budget, same
            convergence rule).
        transductive: allow encoders pretrained on validation or test images (the paper's
            setting); recorded in every row. Default: refuse them.

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

    def __post_init__(self) -> None:
        """Check the values."""
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

    @property
    def repetition_indices(self) -> tuple[int, ...]:
        """The repetitions the grid runs."""
        if isinstance(self.repetitions, int):
            return tuple(range(self.repetitions))
        return tuple(self.repetitions)

    def settings_for(self, pretrained: bool) -> TrainConfig:
        """The fine-tuning settings of a pretrained encoder or of the from-scratch baseline."""
        if pretrained:
            return self.train
        if self.baseline_train is not None:
            return self.baseline_train
        return dataclasses.replace(self.train, freeze_encoder_epochs=0)


def run_name(method: str, split_seed: int, repetition: int, fraction: float, pretraining: int = 0) -> str:
    """File stem of one run: ``{method}__p{pretraining}__s{split_seed}__r{repetition}__f{fraction}``.

    Examples:
        >>> run_name("rotation", split_seed=0, repetition=1, fraction=0.05)
        'rotation__p0__s0__r1__f0.05'
    """
    return f"{method}__p{pretraining}__s{split_seed}__r{repetition}__f{fraction:g}"


def _write_json(path: Path, payload: object) -> None:
    write_text(path, json.dumps(payload, indent=2, sort_keys=True))


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
    device: torch.device | str = "cpu",
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
    if len(images) != len(labels):
        raise ValueError(f"images and labels must have the same length, got {len(images)} and {len(labels)}")
    ids = [f"case{i}" for i in range(len(images))] if case_ids is None else [str(c) for c in case_ids]
    if len(ids) != len(images) or len(set(ids)) != len(ids):
        raise ValueError(
            f"case_ids must be {len(images)} distinct ids, got {len(ids)} ({len(set(ids))} distinct)"
        )
    if not str(output_dir).strip():
        raise ValueError("output_dir must name a folder, got ''")
    check_device(device)
    encoders = check_methods(recipe, images.shape[1], methods)
    out = Path(output_dir)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    (out / "checkpoints").mkdir(exist_ok=True)
    for folder in (out, out / "runs", out / "checkpoints"):
        for stale in remove_stale_temporaries(folder):
            log(f"removed {stale}, left by a killed process")
    settings = {
        "config": asdict(config),
        "methods": {name: [_encoder_info(f) for f in files] for name, files in encoders.items()},
        "method_order": list(encoders),
        "recipe": repr(recipe),
        "data": {
            "info": dict(data_info or {}),
            "cases": len(images),
            "sha256": tensor_sha256(images, labels),
            "case_ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest(),
        },
        "environment": environment(device),
        "synthetic": synthetic,
    }
    settings = json.loads(json.dumps(settings, default=str))
    saved = out / "config.json"
    if saved.exists():
        check_unchanged(
            json.loads(saved.read_text()), settings, saved, "runs made with other settings, data or software",
            finished=any((out / "runs").glob("*.json")), log=log,
        )  # fmt: skip
    strata = labels.tolist() if labels.ndim == 1 else None
    grid = [
        (method, p, s, r, f)
        for s in config.split_seeds
        for r in config.repetition_indices
        for f in config.fractions
        for method, files in encoders.items()
        for p in range(len(files))
    ]
    splits = {
        s: split_cases(len(images), config.val_fraction, config.test_fraction, s, strata=strata)
        for s in config.split_seeds
    }
    _check_pretraining(settings["methods"], splits, ids, config.transductive, log)
    _write_json(saved, settings)  # only once the grid may run: a refused one leaves no trace

    def done(cell: tuple[str, int, int, int, float]) -> bool:
        return (out / "runs" / f"{_name(cell)}.json").exists()

    todo = [cell for cell in grid if not done(cell)]
    first = splits[config.split_seeds[0]]
    log(
        f"data efficiency: {len(grid)} runs, {len(grid) - len(todo)} already done; per split "
        f"{len(first.train)} training pool / {len(first.val)} validation / {len(first.test)} test cases"
    )
    provenance = {k: settings[k] for k in ("data", "environment", "synthetic")}
    bar = _progress(len(todo)) if progress else None
    if bar is not None and log is print:  # lines above the bar, not through it
        log = bar.write

    def run(cell: tuple[str, int, int, int, float]) -> None:
        method, p, s, r, fraction = cell
        split = splits[s]
        seeds = run_seeds(s, r, config.train.seed)
        pool_strata = [strata[i] for i in split.train] if strata is not None else None
        subset = nested_subsets(split.train, config.fractions, seeds.subset, strata=pool_strata)[fraction]
        encoder_file = encoders[method][p]
        train = config.settings_for(encoder_file is not None)

        def on_epoch(record: Mapping[str, Any]) -> None:  # the bar moves within a run too
            if bar is not None:
                val = f", val {record['val']:.3f}" if "val" in record else ""
                bar.set_postfix_str(f"{_name(cell)}: epoch {record['epoch'] + 1}/{train.epochs}{val}")

        row = _one_run(
            recipe, images, labels, ids, encoder_file, subset, split.val, split.test, train, seeds,
            out / "checkpoints" / f"{_name(cell)}.pt", device, on_epoch,
        )  # fmt: skip
        info = settings["methods"][method][p]
        row.update(
            method=method,
            pretraining_seed=p,
            split_seed=s,
            repetition=r,
            fraction=fraction,
            seeds=asdict(seeds),
            encoder=info,
            pretext_accuracy=None if info is None else (info["pretraining"] or {}).get("pretext_accuracy"),
            transductive=config.transductive,
            provenance=provenance,
            synthetic=synthetic,
        )
        _write_json(out / "runs" / f"{_name(cell)}.json", row)
        (out / "checkpoints" / f"{_name(cell)}.pt").unlink(missing_ok=True)
        if bar is not None:
            bar.update(1)
        log(
            f"{_name(cell)}: {recipe.metric} {row['test'][recipe.metric]:.3f} ({row['n_labelled']} labelled, "
            f"best epoch {row['best_epoch']}/{row['epochs_run']}"
            f"{'' if row['converged'] is not False else ', NOT converged'}, {row['seconds']:.0f} s)"
        )

    # Workers sharing the folder (processes, machines, torchrun ranks) claim each run with a
    # lock file; a run another live worker holds is left to it and waited for at the end.
    pending = list(todo)
    while pending:
        progressed = False
        for cell in list(pending):
            if not done(cell):
                with RunLock(out / "runs" / f"{_name(cell)}.lock") as claimed:
                    if not claimed:
                        continue
                    if not done(cell):
                        run(cell)
            pending.remove(cell)
            progressed = True
        if pending and not progressed:
            log(f"waiting for {len(pending)} run(s) that other workers hold")
            time.sleep(_POLL_SECONDS)
    if bar is not None:
        bar.close()
    return [json.loads((out / "runs" / f"{_name(cell)}.json").read_text()) for cell in grid]


def _name(cell: tuple[str, int, int, int, float]) -> str:
    method, p, s, r, f = cell
    return run_name(method, s, r, f, p)


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
    changed = differences(old, new)
    if changed and finished:
        listed = ", ".join(changed[:8])
        raise ValueError(f"{str(saved.parent)!r} holds {what} (changed: {listed}); use another output folder")
    if changed:
        log(f"{saved} held other settings but no finished run; it is replaced")


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys where two JSON values differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += differences(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else str(key))
        return out
    return [] if old == new else [prefix or "(all)"]


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


def _one_run(
    recipe: Recipe,
    images: Tensor,
    labels: Tensor,
    ids: Sequence[str],
    encoder_file: str | None,
    subset: list[int],
    val: list[int],
    test: list[int],
    train: TrainConfig,
    seeds: RunSeeds,
    checkpoint: Path,
    device: torch.device | str,
    on_epoch: Callback | None = None,
) -> dict[str, Any]:
    start = time.perf_counter()
    torch.manual_seed(seeds.init)  # same decoder/classifier initialisation for every method
    model, encoder = recipe.build(images.shape[1], encoder_file)
    config = dataclasses.replace(train, seed=seeds.order)
    val_images, val_labels = images[val], labels[val]

    def validate(m: nn.Module) -> float:
        score = recipe.evaluate(m, val_images, val_labels, device)[recipe.metric]
        return -math.inf if math.isnan(score) else score

    def sample(generator: torch.Generator) -> tuple[Tensor, Tensor]:
        return recipe.sample(images, labels, subset, config.batch_size, generator)

    trainer = Trainer(
        model,
        recipe.loss(),
        sample,
        config,
        encoder=encoder,
        validate=validate if val else None,
        checkpoint=checkpoint,
        device=device,
        callbacks=[on_epoch] if on_epoch is not None else [],
    )
    history = trainer.fit()
    summary, per_case = recipe.score_cases(trainer.model, images[test], labels[test], device)
    best_epoch = trainer.best_epoch if trainer.best_epoch is not None else len(history) - 1
    patience = config.early_stopping_patience
    return {
        "n_labelled": len(subset),
        "labelled_cases": [ids[i] for i in subset],
        "n_val": len(val),
        "n_test": len(test),
        "test": summary,
        "test_cases": {"case_id": [ids[i] for i in test], **per_case},
        "best_val": trainer.best_score if val else None,
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        # converged: stopped because the validation score stopped improving, not by the budget
        "converged": None if patience is None or not val else len(history) - 1 - best_epoch >= patience,
        "train": asdict(config),
        "history": history,
        "seconds": time.perf_counter() - start,
    }


class _Bar(Protocol):
    def update(self, n: int) -> object: ...
    def close(self) -> object: ...
    def set_postfix_str(self, text: str) -> object: ...
    def write(self, text: str) -> None: ...


def _progress(total: int) -> _Bar | None:
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    bar: _Bar = tqdm(total=total, desc="fine-tuning runs")
    return bar
