"""The data-efficiency experiment: downstream quality against the fraction of labels used.

For every method (``None`` = from scratch, else a pretrained encoder file), label
fraction and repetition, one fine-tuning run with the same recipe, step budget,
optimizer and augmentation; the same initialisation seed and batch order for every
method within a (fraction, repetition) cell, so methods differ only in the encoder's
starting weights. Validation and test cases are fixed once; the labelled subsets are
nested within a repetition (5 % ⊂ 10 % ⊂ ...).

Every finished run is written as its own JSON file (temporary name, then rename), and
an interrupted run resumes from its last epoch checkpoint: kill the process at any
point and rerun the same command; nothing finished is repeated, lost or duplicated.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from pretext3d._atomic import write_text
from pretext3d.finetune.subsets import nested_subsets, split_cases
from pretext3d.finetune.trainer import TrainConfig, Trainer

__all__ = ["DataEfficiencyConfig", "Recipe", "run_data_efficiency", "run_name"]


class Recipe(Protocol):
    """What the runner needs of an experiment (see :mod:`pretext3d.finetune.recipes`)."""

    metric: str

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


@dataclass
class DataEfficiencyConfig:
    """Settings of the data-efficiency grid.

    Attributes:
        fractions: label fractions of the training pool.
        repetitions: runs per method and fraction, with different subset and training seeds.
        split_seed: seed of the fixed validation/test split.
        val_fraction: share of all cases held out for validation (early stopping, best epoch).
        test_fraction: share of all cases held out for the test metrics.
        train: the fine-tuning settings, identical for every method.
    """

    fractions: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0)
    repetitions: int = 3
    split_seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.25
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        """Check the values."""
        if self.repetitions < 1:
            raise ValueError(f"repetitions must be >= 1, got {self.repetitions}")
        if not self.fractions or any(not 0 < f <= 1 for f in self.fractions):
            raise ValueError(f"fractions must be one or more numbers in (0, 1], got {self.fractions}")


def run_name(method: str, fraction: float, repetition: int) -> str:
    """File stem of one run: ``{method}__f{fraction}__r{repetition}``."""
    return f"{method}__f{fraction:g}__r{repetition}"


def _write_json(path: Path, payload: object) -> None:
    write_text(path, json.dumps(payload, indent=2, sort_keys=True))


def _pretext_accuracy(encoder_file: str | os.PathLike[str] | None) -> float | None:
    """The pretext accuracy recorded next to an encoder by ``pretext3d pretrain`` (``<file>.json``)."""
    if encoder_file is None:
        return None
    sidecar = Path(f"{encoder_file}.json")
    if not sidecar.exists():
        return None
    value = json.loads(sidecar.read_text()).get("pretext_accuracy")
    return None if value is None else float(value)


def run_data_efficiency(
    recipe: Recipe,
    images: Tensor,
    labels: Tensor,
    methods: Mapping[str, str | os.PathLike[str] | None],
    config: DataEfficiencyConfig,
    output_dir: str | os.PathLike[str],
    *,
    device: torch.device | str = "cpu",
    synthetic: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Run (or resume) the grid and write its results.

    Args:
        recipe: the experiment (:class:`~pretext3d.finetune.recipes.SegmentationRecipe` or
            :class:`~pretext3d.finetune.recipes.GradingRecipe`).
        images: all labelled cases ``(N, C, *spatial)``.
        labels: ``(N, *spatial)`` label maps or ``(N,)`` grades.
        methods: name -> pretrained encoder file, or ``None`` for the from-scratch baseline.
        config: the grid and training settings.
        output_dir: receives ``runs/*.json`` (one per finished run), ``checkpoints/``,
            ``config.json`` and, at the end, ``results.csv``/``results.json`` (see
            :func:`~pretext3d.finetune.report.write_report`).
        device: where to train.
        synthetic: the data are the built-in phantoms (recorded in every row and figure).
        progress: show a progress bar (needs tqdm; silently plain otherwise).
        log: where progress lines go.

    Returns:
        One row per (method, fraction, repetition).
    """
    if len(images) != len(labels):
        raise ValueError(f"images and labels must have the same length, got {len(images)} and {len(labels)}")
    bad = [name for name in methods if not name or "__" in name or "/" in name]
    if bad:
        raise ValueError(f"method names must be non-empty and contain no '__' or '/': {bad}")
    out = Path(output_dir)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    (out / "checkpoints").mkdir(exist_ok=True)
    settings = {
        "config": asdict(config),
        "methods": {k: None if v is None else str(v) for k, v in methods.items()},
        "recipe": repr(recipe),
        "cases": len(images),
        "synthetic": synthetic,
    }
    saved = out / "config.json"
    if saved.exists() and json.loads(saved.read_text()) != json.loads(json.dumps(settings)):
        raise ValueError(
            f"{str(out)!r} holds runs of other settings (config.json differs); use another output folder"
        )
    _write_json(saved, settings)

    split = split_cases(len(images), config.val_fraction, config.test_fraction, config.split_seed)
    grid = [(m, f, r) for r in range(config.repetitions) for f in config.fractions for m in methods]
    todo = [cell for cell in grid if not (out / "runs" / f"{run_name(*cell)}.json").exists()]
    log(
        f"data efficiency: {len(grid)} runs, {len(grid) - len(todo)} already done; "
        f"{len(split.train)} training pool / {len(split.val)} validation / {len(split.test)} test cases"
    )
    bar = _progress(len(todo)) if progress else None
    for method, fraction, rep in todo:
        seed = config.split_seed * 1_000_003 + rep
        subset = nested_subsets(split.train, config.fractions, seed)[fraction]
        row = _one_run(
            recipe,
            images,
            labels,
            methods[method],
            subset,
            split.val,
            split.test,
            config.train,
            seed,
            out / "checkpoints" / f"{run_name(method, fraction, rep)}.pt",
            device,
        )
        row.update(
            method=method,
            fraction=fraction,
            repetition=rep,
            seed=seed,
            synthetic=synthetic,
            pretext_accuracy=_pretext_accuracy(methods[method]),
        )
        _write_json(out / "runs" / f"{run_name(method, fraction, rep)}.json", row)
        (out / "checkpoints" / f"{run_name(method, fraction, rep)}.pt").unlink(missing_ok=True)
        if bar is not None:
            bar.update(1)
        log(
            f"{run_name(method, fraction, rep)}: {recipe.metric} {row['test'][recipe.metric]:.3f} "
            f"({row['n_labelled']} labelled, {row['seconds']:.0f} s)"
        )
    if bar is not None:
        bar.close()
    return [json.loads((out / "runs" / f"{run_name(*cell)}.json").read_text()) for cell in grid]


def _one_run(
    recipe: Recipe,
    images: Tensor,
    labels: Tensor,
    encoder_file: str | os.PathLike[str] | None,
    subset: list[int],
    val: list[int],
    test: list[int],
    train: TrainConfig,
    seed: int,
    checkpoint: Path,
    device: torch.device | str,
) -> dict[str, Any]:
    start = time.perf_counter()
    torch.manual_seed(seed)  # same decoder/classifier initialisation for every method
    model, encoder = recipe.build(images.shape[1], encoder_file)
    config = TrainConfig(**{**asdict(train), "seed": seed})
    val_images, val_labels = images[val], labels[val]

    def validate(m: nn.Module) -> float:
        if not val:
            return 0.0
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
    )
    history = trainer.fit()
    return {
        "n_labelled": len(subset),
        "n_val": len(val),
        "n_test": len(test),
        "steps": config.epochs * config.steps_per_epoch,
        "test": recipe.evaluate(trainer.model, images[test], labels[test], device),
        "best_val": trainer.best_score if val else None,
        "history": history,
        "seconds": time.perf_counter() - start,
    }


class _Bar(Protocol):
    def update(self, n: int) -> object: ...
    def close(self) -> object: ...


def _progress(total: int) -> _Bar | None:
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    bar: _Bar = tqdm(total=total, desc="fine-tuning runs")
    return bar
