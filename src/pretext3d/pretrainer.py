"""Pretraining at scale: stream scans from disk, train one encoder on one or several tasks, resume.

The :class:`Pretrainer` is the library's pretraining loop (``pretext3d pretrain`` runs on
it). It reads any ``torch.utils.data.Dataset`` of unlabelled images through a
``DataLoader`` (workers, random crops in the workers, pinned memory, non-blocking copies),
makes the pretext views on the training device, and trains with AdamW/Adam/SGD, warmup and
a cosine (or constant) schedule, gradient clipping and accumulation, in fp32, bf16 or fp16.
Checkpoints are atomic; rerunning the same call after a crash continues from the last one
and ends with the weights an uninterrupted run has. Several tasks share one encoder, each
with its own head and loss weight, summed every step or alternating.

Every random draw is a function of ``config.seed``: the sample order of each epoch, each
sample's crop (of its epoch and index, so workers and resumes do not change it), and one
generator per task for views and losses. That is what makes a resumed run exact.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from pretext3d import engine
from pretext3d._atomic import remove_stale_temporaries, write_text
from pretext3d._checks import (
    check_choice,
    check_device_name,
    check_int,
    check_precision,
    check_unit_interval,
)
from pretext3d._random import Seeds
from pretext3d.config import checked, renamed
from pretext3d.diagnostics import FeatureProbe, chance_level, pretext_warning, shortcut_score
from pretext3d.models.io import save_encoder
from pretext3d.provenance import environment, write_pretraining_record
from pretext3d.tasks.base import DenseTask, PretextTask
from pretext3d.tasks.rotation import Rotation
from pretext3d.training import (
    Optimization,
    OptimSettings,
    PretextStep,
    ResumableBatches,
    SeededCrops,
    TaskSpec,
    case_ids,
    stack_images,
    switch_checkpointing,
)

__all__ = ["PretrainConfig", "Pretrainer"]

#: what a rotation's shortcut score above the flag means (expected, not a fault of the run)
ROTATION_NOTE = (
    "expected for rotation: a rotated view keeps its orientation in its low-level statistics (intensity "
    "gradients, the body's outline), so trivial statistics tell part of the rotation whatever the crop; "
    "judge rotation by its held-out accuracy and frozen-feature probe (docs/tasks/index.md#shortcuts)"
)


@checked
@dataclass
class PretrainConfig:
    """How to pretrain.

    Attributes:
        steps: optimizer steps (``None`` when ``epochs`` is given).
        epochs: passes over the data instead of ``steps``.
        batch_size: images per micro-batch and process (under ``torchrun`` the global batch is
            ``batch_size * world_size``).
        accumulate: micro-batches per optimizer step (gradient accumulation).
        crop: edge of the random crop each image gets in the loader (``0``: whole images,
            which must then share one shape).
        crop_min_std: reject near-homogeneous crops in the loader (it costs the GPU nothing):
            a crop whose intensity std is below this fraction of its whole image's std is
            drawn again, up to 8 times, and the most varied draw is kept if none passes. A
            flat crop of tissue carries no orientation, so rotation cannot be learned from it.
            ``0``: keep every crop (the behaviour of 0.1).
        shortcut_check: images of the data on which :func:`~pretext3d.diagnostics.shortcut_score`
            runs once at the start of a run (a warning when trivial statistics predict a task's
            targets above 1.5 x chance; the scores go into the record); ``0``: no check.
        optimizer: ``"adamw"``, ``"adam"`` or ``"sgd"`` (with ``momentum``).
        lr: peak learning rate.
        weight_decay: decoupled for AdamW, L2 for Adam and SGD.
        momentum: SGD's momentum.
        schedule: ``"cosine"`` (to 0 at the last step) or ``"constant"``, after ``warmup_steps``
            of linear warmup.
        warmup_steps: linear warmup from 0.
        grad_clip: maximum global gradient norm (``None``: no clipping).
        task_mode: several tasks: ``"sum"`` (weighted sum every step) or ``"alternate"``
            (one task per step, in turn).
        device: ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...;
            resolved when the run starts (a GPU config loads and checks on any machine; under
            torchrun ``"cuda"`` is the process's ``LOCAL_RANK`` GPU).
        precision: ``"auto"`` (bf16 on a GPU that has it, else fp32), ``"fp32"``, ``"bf16"``
            or ``"fp16"`` (with a gradient scaler).
        channels_last: channels-last weights (``None``: on CUDA only, where it is faster).
        compile: ``torch.compile`` the models: ``True``, ``False`` or ``"auto"`` (on CUDA, with
            Triton installed, for runs of 1,000 steps or more; see
            :func:`pretext3d.engine.resolve_compile`). The log says which and why.
        activation_checkpointing: recompute the encoder's activations in backward (less
            memory); the encoder must have a ``checkpointing`` attribute.
        sync_batchnorm: under several processes, batch-norm statistics over all ranks' batches
            (``SyncBatchNorm``; CUDA only).
        restart: start over when the run folder holds a checkpoint of other settings (finished or
            not) instead of refusing it; a checkpoint of these settings is resumed either way. A
            finished run given more ``steps`` (or ``epochs``) and nothing else continues from its
            final state without it.
        num_workers: loader processes, or ``"auto"``: on CUDA one per free core, at most 8
            (:func:`pretext3d.engine.resolve_workers`), on the CPU 0. Workers persist across
            the run and load ahead into pinned memory on CUDA.
        eval_every: steps between held-out evaluations (and at the end).
        log_every: steps between metric rows.
        checkpoint_every: steps between checkpoints (and at the end).
        seed: the one seed of the run.
        progress: show a progress bar (needs tqdm).
        tensorboard: also log to TensorBoard (needs tensorboard).

    Examples:
        >>> config = PretrainConfig(steps=500, batch_size=4, crop=64, lr=3e-4, device="auto")
        >>> config.precision, config.schedule   # bf16 on a GPU that has it; cosine decay
        ('auto', 'cosine')
        >>> PretrainConfig(batch_size=0)
        Traceback (most recent call last):
        ValueError: batch_size must be an int >= 1, got 0
    """

    steps: int | None = 1000
    epochs: int | None = None
    batch_size: int = 8
    accumulate: int = 1
    crop: int = 0
    crop_min_std: float = 0.25
    shortcut_check: int = 64
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = 0
    grad_clip: float | None = 1.0
    task_mode: Literal["sum", "alternate"] = "sum"
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool | None = None
    compile: bool | Literal["auto"] = "auto"
    activation_checkpointing: bool = False
    sync_batchnorm: bool = False
    restart: bool = False
    num_workers: int | Literal["auto"] = "auto"
    eval_every: int = 100
    log_every: int = 10
    checkpoint_every: int = 100
    seed: int = 0
    progress: bool = True
    tensorboard: bool = False

    def __post_init__(self) -> None:
        """Check the values."""
        if (self.steps is None) == (self.epochs is None):
            raise ValueError(
                f"give exactly one of steps and epochs, got steps={self.steps}, epochs={self.epochs}"
            )
        if self.steps is not None:
            check_int("steps", self.steps, 1)
        if self.epochs is not None:
            check_int("epochs", self.epochs, 1)
        for name, low in [("batch_size", 1), ("accumulate", 1), ("crop", 0), ("warmup_steps", 0),
                          ("eval_every", 1), ("log_every", 1),
                          ("checkpoint_every", 1), ("seed", 0), ("shortcut_check", 0)]:  # fmt: skip
            check_int(name, getattr(self, name), low)
        engine.resolve_workers(self.num_workers, torch.device("cpu"))  # an int >= 0 or "auto"
        engine.resolve_compile(self.compile, torch.device("cpu"), 1)  # a bool or "auto"
        self.optim_settings()  # optimizer, schedule, lr, weight_decay, momentum, grad_clip
        check_choice("task_mode", self.task_mode, ("sum", "alternate"))
        check_precision("precision", self.precision)
        check_unit_interval("crop_min_std", self.crop_min_std, include_one=False)
        check_device_name("device", self.device)

    def optim_settings(self) -> OptimSettings:
        """The optimisation block's part of these settings."""
        return OptimSettings(
            self.optimizer, self.lr, self.weight_decay, self.momentum, self.schedule, self.warmup_steps,
            self.grad_clip,
        )  # fmt: skip


#: what the Pretrainer's attributes renamed in 0.2 became
_RENAMED = renamed(
    {
        "entries": "Pretrainer.core (names, tasks, weights)",
        "generators": "Pretrainer.core.generators",
        "optimizer": "Pretrainer.optim.optimizer",
        "scheduler": "Pretrainer.optim.scheduler",
        "scaler": "Pretrainer.optim.scaler",
    },
    "Pretrainer",
)


class Pretrainer:
    """Pretrain ``encoder`` on one or several pretext tasks; see the module docstring.

    Args:
        encoder: any encoder (:class:`~pretext3d.PretextModel`'s rules); trained in place. It is
            built before the pretrainer sees it: seed its initialisation yourself
            (``torch.manual_seed``) for a reproducible run.
        tasks: one task, or several (task objects or :class:`~pretext3d.training.TaskSpec`, with
            weights and names) sharing the encoder.
        data: unlabelled images; items ``(C, *spatial)`` tensors or arrays, tuples whose
            first element is one (a labelled data set's ``(image, label)``), or dicts holding
            one under ``image_key`` (MONAI's ``Dataset``, ``CacheDataset``,
            ``PersistentDataset``, a MONAI ``MetaTensor`` included).
        config: the settings.
        output: the encoder file to write (:func:`~pretext3d.models.save_encoder`), with its
            pretraining record beside it; the run folder ``<output>.run/`` holds the
            checkpoint and the metrics (``metrics.jsonl``, ``metrics.csv``). With a dense task the
            file keeps its decoder too (for :func:`~pretext3d.models.load_decoder`).
        held_out: images for the held-out pretext loss and accuracy.
        record: more fields for the pretraining record (e.g. a command's settings).
        log: where summary lines go.
        image_key: the image's key in dict items.
        callbacks: called with every metric row, on the main process (see
            :data:`pretext3d.engine.Callback`): to log to any tracker, or to stop by raising.
        probe: a :class:`~pretext3d.diagnostics.FeatureProbe` on a small labelled set: run on
            the randomly initialised encoder before the first step (the reference), then every
            ``probe.every`` steps and at the end, logged as ``probe/<metric>`` beside the pretext
            loss and accuracy (main process).

    Examples:
        >>> scans = p3.data.PhantomImages("ct", count=8, size=32)   # or VolumeFolder("scans/", cache_dir=...)
        >>> tasks = [p3.tasks.Rotation(3), p3.TaskSpec(p3.tasks.Jigsaw(3, grid=2, num_permutations=24), 0.5)]
        >>> config = PretrainConfig(steps=2, batch_size=2, device="cpu", progress=False)
        >>> trainer = Pretrainer(p3.models.UNetEncoder(3, widths=(8, 16)), tasks, scans, config, "enc.pt",
        ...                      log=lambda line: None)
        >>> record = trainer.fit()   # rerun after a crash: it resumes
        >>> record["tasks"], record["steps"]
        (['rotation', 'jigsaw'], 2)
    """

    # renamed in 0.2 (CHANGELOG.md, Migration): the old names say where their values went
    entries = property(lambda self: _RENAMED("entries"))
    generators = property(lambda self: _RENAMED("generators"))
    optimizer = property(lambda self: _RENAMED("optimizer"))
    scheduler = property(lambda self: _RENAMED("scheduler"))
    scaler = property(lambda self: _RENAMED("scaler"))

    def __init__(
        self,
        encoder: nn.Module,
        tasks: PretextTask[Any, Any] | TaskSpec | Sequence[PretextTask[Any, Any] | TaskSpec],
        data: Dataset[Any],
        config: PretrainConfig,
        output: str | os.PathLike[str],
        *,
        held_out: Dataset[Any] | None = None,
        record: dict[str, Any] | None = None,
        log: Callable[[str], None] = print,
        image_key: str = "image",
        callbacks: Sequence[engine.Callback] = (),
        probe: FeatureProbe | None = None,
    ) -> None:
        if probe is not None and not isinstance(probe, FeatureProbe):
            raise TypeError(f"probe must be a pretext3d.diagnostics.FeatureProbe, got {type(probe).__name__}")
        self.probe = probe
        self.config, self.log, self.extra_record = config, log, dict(record or {})
        self.image_key, self.callbacks = image_key, list(callbacks)
        if not hasattr(data, "__len__") or len(data) == 0:
            raise ValueError("data must be a non-empty Dataset with a length")
        if held_out is not None and (not hasattr(held_out, "__len__") or len(held_out) == 0):
            raise ValueError("held_out must hold at least one image (a Dataset with a length), or be None")
        self.size = len(data)
        self.data, self.held_out = data, held_out
        self.output, self.run_dir = _writable(Path(output))
        self.rank, self.world, self._started_group = engine.process_group()
        self.main = self.rank == 0
        self.device = engine.resolve_device(config.device)
        if self.world > 1 and self.device.type == "cuda":  # one GPU per process
            torch.cuda.set_device(self.device)
        self.precision = engine.resolve_precision(config.precision, self.device)
        self.steps = self._count_steps()
        if config.activation_checkpointing:
            switch_checkpointing(encoder)
        self.core = PretextStep(encoder, tasks, seed=config.seed, rank=self.rank)
        self.spatial_dims, self.names = self.core.spatial_dims, self.core.names
        if probe is not None and probe.spatial_dims != self.spatial_dims:
            raise ValueError(
                f"probe holds {probe.spatial_dims}D images, but the tasks are {self.spatial_dims}D: give the "
                f"FeatureProbe {self.spatial_dims}D images of the data"
            )
        for name, task in zip(self.names, self.core.tasks, strict=True):
            need = getattr(task, "min_batch_size", 1)
            if config.batch_size < need:
                raise ValueError(
                    f"batch_size={config.batch_size} is too small for {name}: it needs >= {need} images per "
                    "batch (its negatives are the batch's other images; with fewer its loss is always 0)"
                )
        self.models = self.core.models.to(self.device)
        self.encoder = encoder
        engine.to_channels_last(
            self.models, self.spatial_dims, setting=config.channels_last, device=self.device
        )
        # the shared encoder's parameters once
        self.optim = Optimization(
            self.models.parameters(), config.optim_settings(), self.steps, self.device, self.precision
        )
        self.step = 0
        self.saved_step = 0  # the step of the last checkpoint written or resumed from
        self.window = _Window()  # the steps since the last metrics row (kept in checkpoints)
        self.metrics = engine.MetricsLog(self.run_dir, tensorboard=config.tensorboard)
        self.checkpoint = self.run_dir / "checkpoint.pt"
        self.compiled, self.compile_reason = engine.resolve_compile(config.compile, self.device, self.steps)
        if self.compiled:
            for model in self.models.values():
                model.compile()
        self.num_workers = engine.resolve_workers(config.num_workers, self.device)
        self.net = self._wrap(self.core.net)

    def _count_steps(self) -> int:
        """Optimizer steps of the run (``config.steps``, or its epochs over this rank's batches)."""
        cfg = self.config
        if self.size < cfg.batch_size * self.world:
            held = 0 if self.held_out is None else len(self.held_out)
            kept = f" (after the {held} held-out images: lower held_out)" if held else ""
            raise ValueError(
                f"data holds {self.size} training images{kept}, fewer than batch_size={cfg.batch_size} x "
                f"{self.world} processes"
            )
        if cfg.steps is not None:
            return cfg.steps
        per_epoch = self.size // (cfg.batch_size * self.world)
        return max(1, (cfg.epochs or 1) * per_epoch // cfg.accumulate)

    def _wrap(self, net: nn.Module) -> nn.Module:
        """The task models as trained: with synchronised batch norm and DDP where asked for."""
        if self.config.sync_batchnorm:
            if self.device.type != "cuda":
                raise ValueError("sync_batchnorm needs CUDA devices (torch's SyncBatchNorm runs there only)")
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)  # type: ignore[no-untyped-call]
        if self.world > 1:
            net = nn.parallel.DistributedDataParallel(
                net,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.config.task_mode == "alternate",
            )
        return net

    def _crops(self, data: Dataset[Any], seed: int) -> SeededCrops:
        cfg = self.config
        return SeededCrops(data, cfg.crop, self.spatial_dims, seed, self.image_key, cfg.crop_min_std)

    def _loader(
        self, data: Dataset[Any], first: int, count: int, seed: int, shuffle: bool
    ) -> DataLoader[Tensor]:
        crops = self._crops(data, seed)
        batch = min(self.config.batch_size, len(crops))
        rank, world = (self.rank, self.world) if shuffle else (0, 1)  # held-out data is not split
        sampler = ResumableBatches(len(crops), batch, seed, first, count, shuffle, rank, world)
        workers = self.num_workers if shuffle else 0  # a held-out pass is short: no processes to start
        return DataLoader(
            crops,
            batch_sampler=sampler,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            collate_fn=stack_images,
            persistent_workers=workers > 0,
        )

    def _resume(self) -> None:
        state = engine.load_checkpoint(self.checkpoint, ("step", "models", "optimizer", "config"), "cpu")
        if state is None:
            return
        config = dataclasses.asdict(self.config)
        changed = engine.changed_settings(state["config"], config, ignore=_RESUMABLE_WITH_OTHER)
        changed += ["tasks"] if state["tasks"] != self.names else []
        if "identity" in state:  # checkpoints of 0.2 and later: what else must match
            changed += _identity_changes(state["identity"], self._identity())
        finished = state["step"] >= state.get("steps", math.inf)
        longer = finished and set(changed) <= {"steps", "epochs"} and self.steps > state["step"]
        if changed and not longer:
            what = f"{'a finished' if finished else 'an unfinished'} run of other settings or tasks"
            if not self.config.restart:
                again = "use it, or more steps to continue it" if finished else "resume it"
                raise ValueError(
                    f"checkpoint {str(self.checkpoint)!r} holds {what} (changed: {', '.join(changed[:8])}); "
                    f"rerun with its settings to {again}, set restart = true to start over, or write the "
                    "encoder to another path"
                )
            self.log(f"{self.checkpoint} holds {what} (changed: {', '.join(changed[:8])}); starting over")
            return
        if state.get("world", 1) != self.world:
            raise ValueError(
                f"checkpoint {str(self.checkpoint)!r} was written by {state.get('world', 1)} processes, this "
                f"run has {self.world}: resume with the same number (the data split and views depend on it)"
            )
        self.models.load_state_dict(state["models"])
        self.optim.load_state_dict(state)
        if longer:  # its schedule now spans the longer run
            self.optim.sync_lr()
            self.log(
                f"continuing the finished run of {state['step']} steps to {self.steps} from its final "
                f"state; the schedule now spans {self.steps} steps (lr {self.optim.lr:.3g} at step "
                f"{state['step']})"
            )
        self.core.set_generator_states(state["generators"][self.rank])
        engine.set_rng_state(state["rng"][self.rank])
        self.step = self.saved_step = int(state["step"])
        if "window" in state:
            kept = state["window"][self.rank]
            self.window = _Window(losses=kept["losses"], accuracies=kept["accuracies"])
        if self.main:
            self.log(f"resumed from {self.checkpoint} at step {self.step}/{self.steps}")

    def _identity(self) -> dict[str, Any]:
        """What a checkpoint must share with this run to resume it, besides the config.

        Each task's settings (its repr) and weight, the shape of every parameter (an encoder or
        head of other widths), and the training images (their case ids, or their count), so
        that a refusal names what changed rather than failing on a state dict.
        """
        ids = case_ids(self.data)
        return {
            "task_settings": {  # without memory addresses (a callable option's repr has one)
                n: re.sub(r" at 0x[0-9a-fA-F]+", "", f"{t!r} x {w:g}")
                for n, t, w in zip(self.names, self.core.tasks, self.core.weights, strict=True)
            },
            "parameter_shapes": {k: list(v.shape) for k, v in self.models.state_dict().items()},
            "data": hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]
            if ids
            else f"{self.size} images",
        }

    def _gather(self, value: Any) -> list[Any]:
        """``value`` of every rank, in rank order (``[value]`` for one process)."""
        if self.world == 1:
            return [value]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, value)
        return out

    def _save(self) -> None:
        generators = self._gather(self.core.generator_states())  # every rank's streams
        rng = self._gather(engine.rng_state())
        # the losses since the last metrics row, so that a resumed run logs the row it would have
        window = self._gather({"losses": self.window.losses, "accuracies": self.window.accuracies})
        if not self.main:
            dist.barrier()  # until rank 0 has written it
            return
        engine.save_checkpoint(
            self.checkpoint,
            {
                "step": self.step,
                "steps": self.steps,
                "world": self.world,
                "config": dataclasses.asdict(self.config),
                "tasks": self.names,
                "identity": self._identity(),
                "models": self.models.state_dict(),
                **self.optim.state_dict(),
                "generators": generators,
                "rng": rng,
                "window": window,
            },
        )
        self.metrics.flush()
        self.saved_step = self.step
        if self.world > 1:
            dist.barrier()

    def fit(self) -> dict[str, Any]:
        """Train (or continue) to ``steps``, write the encoder and its record; the summary."""
        cfg = self.config
        self._resume()
        if self.main:
            self.metrics.truncate(self.step)  # rows logged after the checkpoint (or by an unsaved start) go
        start_step = self.step
        if self.main and self.step < self.steps:
            self.log(
                f"{self.device}, {self.precision}, {self.compile_reason}, {self.num_workers} loader workers"
            )
        if self.main and self.step == 0:
            self._check_shortcuts()
            if self.probe is not None:
                self._probe()
        micro = cfg.accumulate
        loader = self._loader(self.data, self.step * micro, (self.steps - self.step) * micro, cfg.seed, True)
        batches = iter(loader)
        last_eval: dict[str, float] = {}
        shown: dict[str, float] = {}  # the bar's values, smoothed
        with engine.progress(self.steps, self.step, cfg.progress and self.main, "pretraining") as bar:
            try:
                while self.step < self.steps:
                    losses, accuracies = self._train_step(batches, self.window)
                    self.step += 1
                    if bar is not None:
                        _smooth(
                            shown,
                            {"loss": sum(losses.values())} | {f"acc_{k}": v for k, v in accuracies.items()},
                        )
                        bar.update(1)
                        bar.set_postfix(
                            {k: f"{v:.3f}" for k, v in shown.items()}, images_s=f"{self.window.rate():.1f}"
                        )
                    if self.step % cfg.log_every == 0 or self.step == self.steps:
                        self._log_window(self.window)
                        self.window = _Window()
                    last_eval = self._after_step() or last_eval
            except KeyboardInterrupt:
                if self.main:
                    self.log(self._stopped())
                raise
        if self.held_out is not None and self.main and not last_eval:  # a resumed finished run: its last
            logged = [
                r for r in self.metrics.rows() if r["step"] == self.steps and any("held_out" in k for k in r)
            ]
            last_eval = {k: v for k, v in logged[-1].items() if k != "step"} if logged else self.evaluate()
        return self._finish(start_step, last_eval)

    def _stopped(self) -> str:
        """What a Ctrl-C leaves: the step reached, the last checkpoint, how to resume."""
        first = min(self.config.checkpoint_every, self.steps)
        saved = (
            f"the last checkpoint is at step {self.saved_step} ({self.checkpoint})"
            if self.saved_step
            else f"no checkpoint yet (the first is due at step {first})"
        )
        return f"stopped at step {self.step} of {self.steps}; {saved}; rerun the same command to resume"

    def _train_step(self, batches: Any, window: _Window) -> tuple[dict[str, float], dict[str, float]]:
        """One optimizer step over ``config.accumulate`` micro-batches; this step's losses and accuracies."""
        micro = self.config.accumulate
        for model in self.models.values():
            model.train()
        active = self.core.active(self.step, self.config.task_mode)
        losses: dict[str, float] = {}
        accuracies: dict[str, float] = {}
        for m in range(micro):
            t0 = time.perf_counter()
            x = next(batches).to(self.device, non_blocking=True)
            t1 = time.perf_counter()
            window.wait += t1 - t0
            drawn = self.core.draw(x, active)
            # under DDP gradients are averaged once per step: not on the accumulating micro-batches
            last = m == micro - 1 or not isinstance(self.net, nn.parallel.DistributedDataParallel)
            with contextlib.nullcontext() if last else self.net.no_sync():  # type: ignore[operator]
                with self.optim.autocast():
                    outputs = self.net({name: views for name, (views, _) in drawn.items()})
                result = self.core.score(outputs, drawn, world=self.world, check=self._check_finite)
                self.optim.backward(result.loss / micro)
            for name, value in result.losses.items():
                losses[name] = losses.get(name, 0.0) + value / micro
                accuracies[name] = accuracies.get(name, 0.0) + result.accuracies[name] / micro
            window.seen += x.shape[0]
            window.compute += time.perf_counter() - t1
        window.add(losses, accuracies)
        self.optim.step()
        return losses, accuracies

    def _check_finite(self, loss: Tensor, name: str) -> None:
        self.optim.check_finite(loss, f"{name} loss", f"at step {self.step}")

    def _log_window(self, window: _Window) -> None:
        """The metric row of the steps since the last one (averaged over ranks; rank 0 writes it)."""
        row: dict[str, Any] = {"step": self.step, "lr": self.optim.lr}
        row.update({f"loss/{n}": sum(v) / len(v) for n, v in window.losses.items()})
        row.update({f"accuracy/{n}": sum(v) / len(v) for n, v in window.accuracies.items()})
        busy = window.wait + window.compute
        row.update(images_per_s=window.seen / max(busy, 1e-9), data_wait=window.wait / max(busy, 1e-9))
        row = self._mean_over_ranks(row)
        if self.main:
            self._emit(row)
        if self.main and busy and window.wait / busy > 0.5:
            share = f"{window.wait / busy:.0%}"
            self.log(f"step {self.step}: {share} of the time waits for data; add num_workers")

    def _after_step(self) -> dict[str, float]:
        """Held-out evaluation, probe and checkpoint when due; the evaluation's result (or ``{}``)."""
        cfg = self.config
        last = self.step == self.steps
        result: dict[str, float] = {}
        if self.held_out is not None and self.main and (self.step % cfg.eval_every == 0 or last):
            result = self.evaluate()  # rank 0 only: no collectives
        if self.main and self.probe is not None and (self.step % self.probe.every == 0 or last):
            self._probe()
        if self.step % cfg.checkpoint_every == 0 or last:
            self._save()
        return result

    def _check_shortcuts(self) -> None:
        """Score every task's shortcut on up to ``config.shortcut_check`` images; warn; keep the scores."""
        count = min(self.config.shortcut_check, self.size)
        if count < 4:
            return
        crops = self._crops(self.data, Seeds.shortcut_crops(self.config.seed))
        images = stack_images([crops[i] for i in range(count)]).to(self.device)
        reports = {}
        for k, (name, task) in enumerate(zip(self.names, self.core.tasks, strict=True)):
            report = shortcut_score(
                task, images, generator=self.config.seed + k, batch_size=max(2, self.config.batch_size)
            )
            reports[name] = report.as_dict()
            if report.flagged and isinstance(task, Rotation):  # expected: said as what it is, not a warning
                self.log(f"note: {name}: {report}; {ROTATION_NOTE}")
            else:
                self.log(f"{'warning: ' if report.flagged else ''}{name}: {report}")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_text(self.run_dir / "shortcuts.json", json.dumps(reports, indent=1))

    def _probe(self) -> None:
        assert self.probe is not None
        result = self.probe(self.encoder)
        self._emit({"step": self.step, **{f"probe/{k}": v for k, v in result.items()}})
        self.log(
            f"step {self.step}: frozen-feature probe " + ", ".join(f"{k} {v:.3f}" for k, v in result.items())
        )

    def _held_out_batch(self) -> int:
        """Images per batch of the held-out evaluation (the chance of some tasks' accuracy depends on it)."""
        return (
            min(self.config.batch_size, len(self.held_out))
            if self.held_out is not None
            else self.config.batch_size
        )

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out pretext loss and accuracy per task (fixed crops and views), logged."""
        assert self.held_out is not None
        n = len(self.held_out)
        batches = max(1, n // self._held_out_batch())
        loader = self._loader(self.held_out, 0, batches, Seeds.held_out_crops(self.config.seed), False)
        for model in self.models.values():
            model.eval()
        sums: dict[str, list[float]] = {}
        generators = [torch.Generator().manual_seed(Seeds.held_out_views(k)) for k in range(len(self.names))]
        count = 0
        for x in loader:
            count += x.shape[0]
            for name, (loss, acc) in self.core.measure(
                x.to(self.device), generators, self.optim.autocast
            ).items():
                sums.setdefault(name, []).extend([float(loss), float(acc)])
        result: dict[str, float] = {}
        for name, task in zip(self.names, self.core.tasks, strict=True):
            values = sums[name]
            mean_loss, mean_acc = float(np.mean(values[0::2])), float(np.mean(values[1::2]))
            result[f"held_out_loss/{name}"] = mean_loss
            result[f"held_out_accuracy/{name}"] = mean_acc
            warning = pretext_warning(task, mean_acc, count)
            if warning:
                self.log(f"step {self.step}: {name} {warning}")
        self._emit({"step": self.step, **result})
        return result

    def _emit(self, row: dict[str, Any]) -> None:
        """Log a metric row and hand it to the callbacks (main process only)."""
        self.metrics.log(row)
        for callback in self.callbacks:
            callback(row)

    def _mean_over_ranks(self, row: dict[str, Any]) -> dict[str, Any]:
        """A metric row averaged over the ranks (images/s summed); rank 0 logs it."""
        if self.world == 1:
            return row
        keys = [k for k in row if k != "step" and isinstance(row[k], float)]
        values = torch.tensor([row[k] for k in keys], dtype=torch.float64)
        dist.all_reduce(values)
        out = dict(row)
        for k, v in zip(keys, values.tolist(), strict=True):
            out[k] = v if k == "images_per_s" else v / self.world
        return out

    def _record(self, held: dict[str, float]) -> dict[str, Any]:
        """The pretraining record (beside the encoder file)."""
        key = "held_out_accuracy/"
        accuracies = {k.removeprefix(key): v for k, v in held.items() if k.startswith(key)}
        record = {
            "tasks": self.names,
            "task_weights": self.core.weights,
            # one task: its accuracy; several: none (their chance levels differ), each in pretext_accuracies
            "pretext_accuracy": accuracies.get(self.names[0]) if len(self.names) == 1 else None,
            "pretext_accuracies": accuracies,
            "chance": {
                n: chance_level(t, self._held_out_batch())
                for n, t in zip(self.names, self.core.tasks, strict=True)
            },
            "held_out": held,
            "steps": self.steps,
            "config": dataclasses.asdict(self.config),
            "device": str(self.device),
            "precision": self.precision,
            "compiled": self.compiled,
            "num_workers": self.num_workers,
            "environment": environment(self.device),
        }
        shortcuts = self.run_dir / "shortcuts.json"
        if shortcuts.exists():
            record["shortcut"] = json.loads(shortcuts.read_text())
        probes = [r for r in self.metrics.rows() if any(k.startswith("probe/") for k in r)]
        if probes:
            record["probe"] = {
                "initial": {k: v for k, v in probes[0].items() if k != "step"} | {"step": probes[0]["step"]},
                "final": {k: v for k, v in probes[-1].items() if k != "step"} | {"step": probes[-1]["step"]},
            }
        record.update(self.extra_record)
        record["held_out_cases"] = case_ids(self.held_out) if self.held_out is not None else []
        return record

    def _finish(self, start_step: int, held: dict[str, float]) -> dict[str, Any]:
        if not self.main:  # rank 0 writes; the others return its record
            box: list[Any] = [None]
            dist.broadcast_object_list(box, src=0)
            if self._started_group:
                engine.end_process_group()
            return dict(box[0])
        dense = [n for n, t in zip(self.names, self.core.tasks, strict=True) if isinstance(t, DenseTask)]
        # a dense task's decoder is kept beside the encoder (the first one's, with several)
        decoder = self.models[dense[0]].head if dense else None
        save_encoder(self.encoder, self.output, decoder=decoder if isinstance(decoder, nn.Module) else None)
        record = self._record(held)
        if dense:
            record["decoder"] = dense[0]
        write_pretraining_record(
            self.output, case_ids=case_ids(self.data) + record["held_out_cases"], **record
        )
        self.metrics.close()
        if self.world > 1:
            dist.broadcast_object_list([record], src=0)
            if self._started_group:
                engine.end_process_group()
        self.log(
            f"pretrained {self.names} for {self.steps} steps ({self.steps - start_step} now) on "
            f"{self.device} in {self.precision}; encoder: {self.output}; record: {self.output}.json; "
            f"metrics: {self.metrics.jsonl}"
        )
        return record


def _smooth(shown: dict[str, float], values: Mapping[str, float]) -> None:
    """Exponential moving averages over about 20 steps (the first value as it is)."""
    for key, value in values.items():
        shown[key] = value if key not in shown else 0.95 * shown[key] + 0.05 * value


@dataclass
class _Window:
    """What the steps since the last metric row measured."""

    wait: float = 0.0
    compute: float = 0.0
    seen: int = 0
    losses: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    accuracies: dict[str, list[float]] = dataclasses.field(default_factory=dict)

    def add(self, losses: Mapping[str, float], accuracies: Mapping[str, float]) -> None:
        for name, value in losses.items():
            self.losses.setdefault(name, []).append(value)
            self.accuracies.setdefault(name, []).append(accuracies[name])

    def rate(self) -> float:
        return self.seen / max(self.wait + self.compute, 1e-9)


#: settings a run may resume with other values of: they change how fast it computes, not what
_RESUMABLE_WITH_OTHER = ("num_workers", "progress", "compile", "restart")


def _identity_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between two :meth:`Pretrainer._identity`'s, in words."""
    changed = []
    tasks_old, tasks_new = old.get("task_settings", {}), new.get("task_settings", {})
    for name in sorted(set(tasks_old) & set(tasks_new)):
        if tasks_old[name] != tasks_new[name]:
            a, b = (set(re.split(r"[(), ]+", t)) for t in (tasks_old[name], tasks_new[name]))
            changed.append(f"{name}'s settings ({' '.join(sorted(a - b))} -> {' '.join(sorted(b - a))})")
    shapes = engine.changed_settings(old.get("parameter_shapes"), new.get("parameter_shapes"))
    if shapes:
        changed.append(
            f"parameter shapes, an encoder or head of other widths ({len(shapes)} tensors, first "
            f"{shapes[0].split('.', 1)[-1]})"
        )
    if old.get("data") != new.get("data"):
        changed.append("data (other training images: the encoder's record would miss the first ones)")
    return changed


def _writable(output: Path) -> tuple[Path, Path]:
    """``(output, its run folder)``, checked to be writable before any training."""
    if not output.name or output.is_dir():
        raise ValueError(
            f"output {str(output)!r} is a directory: give the encoder's file path (e.g. 'encoder.pt'), "
            "beside which the run's folder '<output>.run' is made"
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(output.parent, os.W_OK) or (output.exists() and not os.access(output, os.W_OK)):
        raise ValueError(f"output {str(output)!r} cannot be written (checked before training)")
    run_dir = output.with_name(output.name + ".run")
    for folder in (output.parent, run_dir):  # what killed runs left: half-written checkpoints, logs
        if folder.is_dir():
            remove_stale_temporaries(folder)
    return output, run_dir


__getattr__ = renamed(
    {
        "WeightedTask": "pretext3d.TaskSpec(task, weight, name=name)",
        "wilson_interval": "pretext3d.diagnostics.wilson_interval",
        "MIN_HELD_OUT": "pretext3d.diagnostics.MIN_HELD_OUT",
    },
    "pretext3d.pretrainer",
)
