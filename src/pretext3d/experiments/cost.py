"""What a reproduction will cost, from steps measured on this machine before it starts.

:func:`estimate_cost` counts what is left to do in a reproduction's folder (encoders to pretrain,
learning-rate candidates to calibrate, fine-tuning runs) and times, on this machine and with its
thread setting, two pretraining steps of every task and one fine-tuning epoch with its
validation; from them it gives the time the rest will take. ``pretext3d reproduce`` prints it
before anything runs (``--estimate``: only that).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pretext3d import engine
from pretext3d._checks import check_int
from pretext3d.experiments.subsets import split_cases
from pretext3d.experiments.verdict import calibration_folder, chosen_learning_rates
from pretext3d.finetune.trainer import Trainer
from pretext3d.provenance import read_pretraining_record
from pretext3d.registry import ENCODERS
from pretext3d.training import TaskSpec
from pretext3d.training.step import PretextStep
from pretext3d.transforms.crops import random_crops

__all__ = ["CostEstimate", "estimate_cost"]

#: the Pretrainer's time around its steps (loading, held-out evaluations, probes, checkpoints),
#: as a share of the steps' own: measured on the demo configs (issue 36)
PRETRAINING_OVERHEAD = 0.25


@dataclass(frozen=True)
class CostEstimate:
    """What is left of a reproduction and about how long it takes.

    Attributes:
        encoders: encoders still to pretrain (pretext tasks and positive controls).
        pretraining_seconds: their time, from each task's measured step time.
        calibration_runs: learning-rate candidates still to fine-tune on the calibration seeds.
        grid_runs: fine-tunings of the grid still to do (with ``lr_search`` in every run, each
            candidate counts).
        done_runs: runs of the grid already finished.
        epoch_seconds: one fine-tuning epoch with its validation, measured.
        epochs: a run's epochs: ``(fewest, likely, most)``: ``min_epochs``, ``min_epochs`` plus the
            patience (the budget's, if less), the budget.
        workers: processes sharing the folder.
        run_seconds: the mean seconds of the runs already finished in the folder or in the
            development block's (``development_dir``), which then stand for the likely run.
        measured_runs: how many finished runs that mean is of.

    Examples:
        >>> cost = CostEstimate(encoders=15, pretraining_seconds=1500.0, calibration_runs=0, grid_runs=280,
        ...                     done_runs=0, epoch_seconds=1.0, epochs=(8, 14, 30), workers=2)
        >>> round(cost.seconds()), round(cost.seconds("most"))
        (2710, 4950)
    """

    encoders: int
    pretraining_seconds: float
    calibration_runs: int
    grid_runs: int
    done_runs: int
    epoch_seconds: float
    epochs: tuple[int, int, int]
    workers: int = 1
    run_seconds: float | None = None
    measured_runs: int = 0

    def seconds(self, case: str = "likely") -> float:
        """Wall-clock seconds of what is left with :attr:`workers` workers.

        Args:
            case: the epochs per run: ``"fewest"``, ``"likely"`` or ``"most"`` (see :attr:`epochs`).
        """
        epochs = self.epochs[("fewest", "likely", "most").index(case)]
        per_run = epochs * self.epoch_seconds
        if case == "likely" and self.run_seconds is not None:
            per_run = self.run_seconds
        runs = self.calibration_runs + self.grid_runs
        return (self.pretraining_seconds + runs * per_run) / self.workers

    def __str__(self) -> str:
        """One paragraph for the log."""
        per_run = [e * self.epoch_seconds for e in self.epochs]
        calibration = f", {self.calibration_runs} learning-rate candidates" if self.calibration_runs else ""
        workers = f" with {self.workers} workers" if self.workers > 1 else ""
        likely = (
            f"likely {self.run_seconds:.0f} s: the mean of {self.measured_runs} finished runs"
            if self.run_seconds is not None
            else f"likely {per_run[1]:.0f} s: {self.epochs[1]} epochs of {self.epoch_seconds:.2f} s measured"
        )
        return (
            f"to do: {self.encoders} encoder(s) to pretrain (about {self.pretraining_seconds / 60:.0f} min "
            f"of steps measured here){calibration}, {self.grid_runs} fine-tuning runs "
            f"({self.done_runs} done) of {per_run[0]:.0f}-{per_run[2]:.0f} s ({likely}): about "
            f"{self.seconds() / 60:.0f} min{workers} (between {self.seconds('fewest') / 60:.0f} and "
            f"{self.seconds('most') / 60:.0f})"
        )


def _step_seconds(config: Any, spec: TaskSpec, pool: Any, repeats: int = 2) -> float:
    """Seconds of one pretraining step of ``spec`` on this machine (after one to warm up)."""
    d, recipe = config.data.spatial_dims, config.recipe
    torch.manual_seed(0)
    encoder = ENCODERS.get(recipe.encoder_kind())(spatial_dims=d, in_channels=config.data.in_channels,
                                           **recipe.encoder_options())  # fmt: skip
    step = PretextStep(encoder, [dataclasses.replace(spec, crop=None)], spatial_dims=d)
    optimizer = torch.optim.Adam(step.net.parameters(), lr=1e-4)
    size = min(config.pretrain.batch_size, len(pool))
    x = torch.stack([torch.as_tensor(pool[i]) for i in range(size)]).float()
    crop = config.pretrain.crop if spec.crop is None else spec.crop
    if crop and crop < min(x.shape[2:]):
        x = random_crops(x, (crop,) * d, 0)

    def one() -> None:
        loss: torch.Tensor = step(x).loss
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()

    one()
    start = time.perf_counter()
    for _ in range(repeats):
        one()
    return (time.perf_counter() - start) / repeats


def _epoch_seconds(config: Any, images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> float:
    """Seconds of one fine-tuning epoch and its validation (from scratch, the first split)."""
    recipe, experiment = config.recipe, config.experiment
    split = split_cases(len(images), experiment.val_fraction, experiment.test_fraction,
                        experiment.split_seeds[0])  # fmt: skip
    train = dataclasses.replace(experiment.train, epochs=2, freeze_encoder_epochs=0, min_epochs=0,
                                early_stopping_patience=None)  # fmt: skip
    torch.manual_seed(0)
    model, _ = recipe.build(images.shape[1], None)
    cases, val = list(split.train), split.val

    def validate(m: torch.nn.Module) -> float:
        return float(recipe.evaluate(m, images[val], labels[val], device)[recipe.metric])

    def sample(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return recipe.sample(images, labels, cases, train.batch_size, generator)  # type: ignore[no-any-return]

    trainer = Trainer(model, recipe.loss(), sample, train, validate=validate if val else None, device=device)
    start = time.perf_counter()
    trainer.fit()
    seconds: float = (
        time.perf_counter() - start
    ) / train.epochs  # with the first epoch's warm-up: on the high side
    return seconds


def _finished_seconds(folders: list[Path]) -> list[float]:
    """The seconds of every finished run in these grids' folders."""
    seconds = []
    for folder in folders:
        for path in sorted((folder / "runs").glob("*.json")):
            try:
                seconds.append(float(json.loads(path.read_text())["seconds"]))
            except (OSError, ValueError, KeyError, TypeError):  # a run being written, or another file
                continue
    return seconds


def _runs_left(folder: Path, names: list[str], candidates: int) -> tuple[int, int]:
    """``(runs to do, runs done)`` of a grid's run names in ``folder`` (``candidates`` runs each)."""
    done = sum((folder / "runs" / f"{name}.json").exists() for name in names)
    return (len(names) - done) * candidates, done


def estimate_cost(
    config: Any,
    *,
    workers: int = 1,
    pool: Any = None,
    labelled: tuple[torch.Tensor, torch.Tensor] | None = None,
    log: Callable[[str], None] | None = None,
) -> CostEstimate:
    """Count what is left of ``config`` in its folder, time its steps here, and estimate the rest.

    Args:
        config: a :class:`~pretext3d.experiments.Reproduction`.
        workers: processes that will share the folder.
        pool: the pretraining pool, or a function that makes it (called only when an encoder is
            left to pretrain); default ``config.pretraining_data.unlabelled()``.
        labelled: the labelled ``(images, labels)``, if read already.
        log: where a line goes before the measuring starts.

    Returns:
        The estimate (print it: one paragraph).

    Examples:
        >>> config = p3.experiments.Reproduction(
        ...     output_dir="tiny-cost", device="cpu", held_out=4,
        ...     data=p3.data.DataSpec(kind="fundus-phantom", count=24, size=32),   # SYNTHETIC
        ...     pretraining_data=p3.data.DataSpec(kind="fundus-phantom", count=8, size=32),
        ...     pretrain=p3.pretrainer.PretrainConfig(steps=20, batch_size=4, device="cpu", progress=False),
        ...     tasks={"rotation": p3.TaskSpec()},
        ...     grading=p3.experiments.GradingRecipe(growth_rate=4, block_config=(1, 1), init_features=8),
        ...     experiment=p3.experiments.DataEfficiencyConfig(
        ...         fractions=(0.5, 1.0), split_seeds=(0, 1),
        ...         train=p3.finetune.TrainConfig(epochs=3, steps_per_epoch=2)))
        >>> cost = estimate_cost(config)
        >>> cost.encoders, cost.grid_runs, cost.epochs
        (1, 8, (3, 3, 3))
    """
    from pretext3d.experiments.reproduce import methods_of  # the reproduction imports this module
    from pretext3d.experiments.runner import run_name

    check_int("workers", workers, 1)
    out, experiment, train = Path(config.output_dir), config.experiment, config.experiment.train
    methods = methods_of(config)
    counts = {m: 1 if m == "scratch" else config.pretraining_seeds for m in methods}

    def missing(method: str) -> list[int]:
        files = [out / "encoders" / f"{method}_p{k}.pt" for k in range(config.pretraining_seeds)]
        return [k for k, f in enumerate(files) if read_pretraining_record(f) is None]

    def names(split_seeds: tuple[int, ...], searched: list[str]) -> list[str]:
        grid = dataclasses.replace(experiment, split_seeds=split_seeds)
        return [
            run_name(m, s, r, f, p)
            for s in split_seeds
            for r in experiment.repetition_indices
            for f in experiment.fractions
            for m in searched
            for p in grid.pretraining_seeds_for(s, counts[m])
        ]

    tasks = {task: len(missing(task)) for task in config.tasks}
    control = len(missing("supervised")) if config.positive_control else 0
    candidates = max(1, len(experiment.lr_search))
    calibration = 0
    searched = [m for m in methods if m not in experiment.learning_rates]
    chosen = chosen_learning_rates(out)
    searched = [m for m in searched if m not in chosen]
    if config.calibration_seeds and searched:
        folder = calibration_folder(out, searched, experiment.learning_rates)
        calibration = _runs_left(folder, names(config.calibration_seeds, searched), candidates)[0]
    per_run = 1 if config.calibration_seeds else candidates
    left, done = _runs_left(out, names(experiment.split_seeds, methods), per_run)
    patience = train.early_stopping_patience
    likely = min(train.epochs, train.min_epochs + patience) if patience is not None else train.epochs
    fewest = max(1, min(train.min_epochs, train.epochs)) if patience is not None else train.epochs
    epochs = (fewest, max(fewest, likely), train.epochs)
    if not (any(tasks.values()) or control or calibration or left):
        return CostEstimate(0, 0.0, 0, 0, done, 0.0, epochs, workers)
    if log is not None:
        log("measuring a pretraining step of every task and a fine-tuning epoch on this machine ...")
    if any(tasks.values()):
        pool = pool() if callable(pool) else config.pretraining_data.unlabelled() if pool is None else pool
    images, labels = labelled if labelled is not None else config.data.labelled()[:2]
    steps = config.pretrain.steps
    if steps is None and pool is not None:  # epochs of the pool less its held-out images
        steps = config.pretrain.epochs * -(-(len(pool) - config.held_out) // config.pretrain.batch_size)
    seconds = sum(
        n * (config.tasks[task].steps or steps or 0) * _step_seconds(config, config.tasks[task], pool)
        * (1 + PRETRAINING_OVERHEAD)
        for task, n in tasks.items()
        if n
    )  # fmt: skip
    epoch = _epoch_seconds(config, images, labels, engine.resolve_device(config.device))
    seconds += control * train.epochs * epoch
    development = getattr(config, "development_dir", "")
    folders = [out, *([Path(development)] if development else [])]
    finished = _finished_seconds(folders)
    run_seconds = statistics.fmean(finished) * per_run if len(finished) >= 5 else None
    measured = len(finished) if run_seconds is not None else 0
    encoders = sum(tasks.values()) + control
    return CostEstimate(
        encoders, seconds, calibration, left, done, epoch, epochs, workers, run_seconds, measured
    )
