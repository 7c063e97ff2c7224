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
import functools
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from pretext3d import engine
from pretext3d._atomic import write_text
from pretext3d._checks import check_choice, check_int, check_positive, check_unit_interval
from pretext3d.diagnostics import FeatureProbe, shortcut_score
from pretext3d.models.io import save_encoder
from pretext3d.pretext_model import PretextModel, infer_num_features
from pretext3d.provenance import environment, write_pretraining_record
from pretext3d.tasks.base import ClassificationTask, PretextTask
from pretext3d.transforms.crops import random_crop

__all__ = ["PretrainConfig", "Pretrainer", "WeightedTask"]


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
        device: ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        precision: ``"auto"`` (bf16 on a GPU that has it, else fp32), ``"fp32"``, ``"bf16"``
            or ``"fp16"`` (with a gradient scaler).
        channels_last: channels-last weights (``None``: on CUDA only, where it is faster).
        compile: ``torch.compile`` the models.
        activation_checkpointing: recompute the encoder's activations in backward (less
            memory); the encoder must have a ``checkpointing`` attribute.
        sync_batchnorm: under several processes, batch-norm statistics over all ranks' batches
            (``SyncBatchNorm``; CUDA only).
        num_workers: loader processes.
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
    compile: bool = False
    activation_checkpointing: bool = False
    sync_batchnorm: bool = False
    num_workers: int = 0
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
                          ("num_workers", 0), ("eval_every", 1), ("log_every", 1),
                          ("checkpoint_every", 1), ("seed", 0), ("shortcut_check", 0)]:  # fmt: skip
            check_int(name, getattr(self, name), low)
        check_choice("optimizer", self.optimizer, ("adamw", "adam", "sgd"))
        check_choice("schedule", self.schedule, ("cosine", "constant"))
        check_choice("task_mode", self.task_mode, ("sum", "alternate"))
        check_choice("precision", self.precision, ("auto", "fp32", "bf16", "fp16"))
        check_positive("lr", self.lr)
        check_unit_interval("crop_min_std", self.crop_min_std, include_one=False)
        check_positive("weight_decay", self.weight_decay, allow_zero=True)
        check_positive("momentum", self.momentum, allow_zero=True)
        if self.grad_clip is not None:
            check_positive("grad_clip", self.grad_clip)
        if self.device != "auto":
            engine.resolve_device(self.device)


@dataclass
class WeightedTask:
    """A task of a multi-task run: its loss weight and its name in the logs.

    Attributes:
        task: the pretext task.
        weight: its loss weight (``>= 0``).
        name: its name in logs and checkpoints (default: the class name, lower case).

    Examples:
        >>> tasks = [WeightedTask(p3.tasks.Rotation(3), weight=1.0),
        ...          WeightedTask(p3.tasks.Jigsaw(3, grid=2, num_permutations=24), 0.5, name="jigsaw-2")]
        >>> [(t.name or type(t.task).__name__, t.weight) for t in tasks]
        [('Rotation', 1.0), ('jigsaw-2', 0.5)]
    """

    task: PretextTask[Any, Any]
    weight: float = 1.0
    name: str = ""


class _Crops(Dataset[Tensor]):
    """Items of ``data`` (index ``epoch * N + i``), randomly cropped as a function of (seed, epoch, i)."""

    def __init__(
        self,
        data: Dataset[Any],
        size: int,
        crop: int,
        spatial_dims: int,
        seed: int,
        image_key: str,
        min_std: float = 0.0,
    ) -> None:
        self.data, self.size, self.crop, self.spatial_dims, self.seed = data, size, crop, spatial_dims, seed
        self.image_key, self.min_std = image_key, min_std

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Tensor:
        epoch, i = divmod(index, self.size)
        image = _image(self.data[i], self.image_key, f"the data set's item {i}")
        if not isinstance(image, Tensor):
            image = torch.as_tensor(np.asarray(image))
        if image.dim() != self.spatial_dims + 1:
            raise ValueError(
                f"the data set's item {i} has shape {tuple(image.shape)}; pretraining needs "
                f"(C, *spatial) images with {self.spatial_dims} spatial axes"
            )
        if self.crop:
            generator = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 1_000_003 + i)
            image = torch.from_numpy(self._varied_crop(image.numpy(), generator))
        return image.float().contiguous()

    def _varied_crop(self, array: np.ndarray, generator: torch.Generator) -> np.ndarray:
        """A random crop, drawn again (up to 8 draws) while its std is below ``min_std`` x the image's."""
        size = (self.crop,) * self.spatial_dims
        crop = random_crop(array, size, generator)
        if not self.min_std:
            return crop
        need = self.min_std * float(array.std())
        best, best_std = crop, float(crop.std())
        for _ in range(7):
            if best_std >= need:
                break
            crop = random_crop(array, size, generator)
            if float(crop.std()) > best_std:
                best, best_std = crop, float(crop.std())
        return best


class _Batches(Sampler[list[int]]):
    """Micro-batches ``first, first + 1, ...`` of one rank.

    Epoch ``e`` visits the items in an order of (seed, e) (the same on every rank); global
    batch ``b`` is items ``[b * B * world, (b + 1) * B * world)`` of that order, and rank ``r``
    takes its ``r``-th slice of ``B`` (``DistributedSampler``'s split, with the per-epoch
    reshuffle, in a form that resumes at any batch).
    """

    def __init__(
        self,
        size: int,
        batch: int,
        seed: int,
        first: int,
        count: int,
        shuffle: bool,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.size, self.batch, self.seed, self.shuffle = size, batch, seed, shuffle
        self.first, self.count, self.rank, self.world = first, count, rank, world
        self.per_epoch = max(1, size // (batch * world))

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[list[int]]:
        order: Tensor | None = None
        epoch_of_order = -1
        for b in range(self.first, self.first + self.count):
            epoch, j = divmod(b, self.per_epoch)
            if epoch != epoch_of_order:
                g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
                order = torch.randperm(self.size, generator=g) if self.shuffle else torch.arange(self.size)
                epoch_of_order = epoch
            assert order is not None
            start = (j * self.world + self.rank) * self.batch
            yield [epoch * self.size + int(i) for i in order[start : start + self.batch]]


class _AllTasks(nn.Module):
    """The task models as one module, so one (DDP) forward serves every task of a step."""

    def __init__(self, models: nn.ModuleDict) -> None:
        super().__init__()
        self.models = models

    def forward(self, views: dict[str, Tensor]) -> dict[str, Tensor]:
        return {name: self.models[name](v) for name, v in views.items()}


class Pretrainer:
    """Pretrain ``encoder`` on one or several pretext tasks; see the module docstring.

    Args:
        encoder: any encoder (:class:`~pretext3d.PretextModel`'s rules); trained in place. It is
            built before the pretrainer sees it: seed its initialisation yourself
            (``torch.manual_seed``) for a reproducible run.
        tasks: one task, or several (tasks or :class:`WeightedTask`) sharing the encoder.
        data: unlabelled images; items ``(C, *spatial)`` tensors or arrays, tuples whose
            first element is one (a labelled data set's ``(image, label)``), or dicts holding
            one under ``image_key`` (MONAI's ``Dataset``, ``CacheDataset``,
            ``PersistentDataset``, a MONAI ``MetaTensor`` included).
        config: the settings.
        output: the encoder file to write (:func:`~pretext3d.models.save_encoder`), with its
            pretraining record beside it; the run folder ``<output>.run/`` holds the
            checkpoint and the metrics (``metrics.jsonl``, ``metrics.csv``).
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
        >>> tasks = [p3.tasks.Rotation(3), WeightedTask(p3.tasks.Jigsaw(3, grid=2, num_permutations=24), 0.5)]
        >>> config = PretrainConfig(steps=2, batch_size=2, device="cpu", progress=False)
        >>> trainer = Pretrainer(p3.models.UNetEncoder(3, widths=(8, 16)), tasks, scans, config, "enc.pt",
        ...                      log=lambda line: None)
        >>> record = trainer.fit()   # rerun after a crash: it resumes
        >>> record["tasks"], record["steps"]
        (['rotation', 'jigsaw'], 2)
    """

    def __init__(
        self,
        encoder: nn.Module,
        tasks: PretextTask[Any, Any] | Sequence[PretextTask[Any, Any] | WeightedTask],
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
        self.entries = _weighted(tasks)
        dims = {e.task.spatial_dims for e in self.entries}
        if len(dims) != 1:
            raise ValueError(f"all tasks must work in one spatial dimension, got {sorted(dims)}")
        self.spatial_dims = dims.pop()
        if not hasattr(data, "__len__") or len(data) == 0:
            raise ValueError("data must be a non-empty Dataset with a length")
        self.size = len(data)
        self.data, self.held_out = data, held_out
        self.output = Path(output)
        self.run_dir = self.output.with_name(self.output.name + ".run")
        self.output.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(self.output.parent, os.W_OK) or (
            self.output.exists() and not os.access(self.output, os.W_OK)
        ):
            raise ValueError(f"output {str(self.output)!r} cannot be written (checked before training)")
        self.rank, self.world, self._started_group = engine.process_group()
        self.main = self.rank == 0
        self.device = engine.resolve_device(config.device)
        if self.world > 1 and self.device.type == "cuda":  # one GPU per process
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", self.rank)))
            torch.cuda.set_device(self.device)
        self.precision = engine.resolve_precision(config.precision, self.device)
        if self.size < config.batch_size * self.world:
            raise ValueError(
                f"data holds {self.size} images, fewer than batch_size={config.batch_size} x "
                f"{self.world} processes"
            )
        self.per_epoch = self.size // (config.batch_size * self.world)
        self.steps = (
            config.steps
            if config.steps is not None
            else max(1, (config.epochs or 1) * self.per_epoch // config.accumulate)
        )
        if config.activation_checkpointing:
            if not hasattr(encoder, "checkpointing"):
                raise ValueError(
                    "activation_checkpointing needs an encoder with a .checkpointing switch; "
                    f"{type(encoder).__name__} has none"
                )
            encoder.checkpointing = True  # type: ignore[assignment]
        torch.manual_seed(config.seed)  # the heads' initialisation
        width = infer_num_features(encoder, self.spatial_dims)
        self.models = nn.ModuleDict(
            {e.name: PretextModel(encoder, e.task, num_features=width) for e in self.entries}
        )
        self.models.to(self.device)
        self.encoder = encoder
        if config.channels_last or (config.channels_last is None and self.device.type == "cuda"):
            engine.to_channels_last(self.models, self.spatial_dims)
        self.optimizer = _optimizer(  # the shared encoder's parameters once
            self.models.parameters(), config.optimizer, config.lr, config.weight_decay, config.momentum
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            functools.partial(
                _lr_factor, warmup=config.warmup_steps, total=self.steps, cosine=config.schedule == "cosine"
            ),
        )
        self.scaler = engine.grad_scaler(self.device, self.precision)
        # one view/loss stream per task and rank: ranks draw different views, reruns the same ones
        self.generators = [
            torch.Generator().manual_seed(config.seed * 1000 + k + 1 + 7919 * self.rank)
            for k in range(len(self.entries))
        ]
        self.step = 0
        self.metrics = engine.MetricsLog(self.run_dir, tensorboard=config.tensorboard)
        self.checkpoint = self.run_dir / "checkpoint.pt"
        if config.compile:
            for model in self.models.values():
                model.compile()
        self.net: nn.Module = _AllTasks(self.models)
        if config.sync_batchnorm:
            if self.device.type != "cuda":
                raise ValueError("sync_batchnorm needs CUDA devices (torch's SyncBatchNorm runs there only)")
            self.net = nn.SyncBatchNorm.convert_sync_batchnorm(self.net)  # type: ignore[no-untyped-call]
        if self.world > 1:
            self.net = nn.parallel.DistributedDataParallel(
                self.net,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=config.task_mode == "alternate",
            )

    def _loader(
        self, data: Dataset[Any], first: int, count: int, seed: int, shuffle: bool
    ) -> DataLoader[Tensor]:
        crops = _Crops(
            data, len(data), self.config.crop, self.spatial_dims, seed, self.image_key,  # type: ignore[arg-type]
            self.config.crop_min_std,
        )  # fmt: skip
        batch = min(self.config.batch_size, len(crops))
        rank, world = (self.rank, self.world) if shuffle else (0, 1)  # held-out data is not split
        sampler = _Batches(len(crops), batch, seed, first, count, shuffle, rank, world)
        return DataLoader(
            crops,
            batch_sampler=sampler,
            num_workers=self.config.num_workers,
            pin_memory=self.device.type == "cuda",
            collate_fn=_stack,
        )

    def _resume(self) -> None:
        state = engine.load_checkpoint(self.checkpoint, ("step", "models", "optimizer", "config"), "cpu")
        if state is None:
            return
        if state["config"] != dataclasses.asdict(self.config) or state["tasks"] != self._task_names():
            if state["step"] >= state.get("steps", math.inf):  # a finished run of other settings
                self.log(f"{self.checkpoint} holds a finished run of other settings; starting a new run")
                return
            raise ValueError(
                f"checkpoint {str(self.checkpoint)!r} holds an unfinished run of other settings or tasks "
                "(rerun that to resume it); delete its folder or write the encoder to another path"
            )
        if state.get("world", 1) != self.world:
            raise ValueError(
                f"checkpoint {str(self.checkpoint)!r} was written by {state.get('world', 1)} processes, this "
                f"run has {self.world}: resume with the same number (the data split and views depend on it)"
            )
        self.models.load_state_dict(state["models"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        for g, s in zip(self.generators, state["generators"][self.rank], strict=True):
            g.set_state(s)
        engine.set_rng_state(state["rng"][self.rank])
        self.step = int(state["step"])
        if self.main:
            self.log(f"resumed from {self.checkpoint} at step {self.step}/{self.steps}")

    def _gather(self, value: Any) -> list[Any]:
        """``value`` of every rank, in rank order (``[value]`` for one process)."""
        if self.world == 1:
            return [value]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, value)
        return out

    def _save(self) -> None:
        generators = self._gather([g.get_state() for g in self.generators])  # every rank's streams
        rng = self._gather(engine.rng_state())
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
                "tasks": self._task_names(),
                "models": self.models.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "generators": generators,
                "rng": rng,
            },
        )
        self.metrics.flush()
        if self.world > 1:
            dist.barrier()

    def _task_names(self) -> list[str]:
        return [e.name for e in self.entries]

    def fit(self) -> dict[str, Any]:
        """Train (or continue) to ``steps``, write the encoder and its record; the summary."""
        cfg = self.config
        self._resume()
        if self.main:
            self.metrics.truncate(self.step)  # rows logged after the checkpoint (or by an unsaved start) go
        start_step = self.step
        if self.main and self.step == 0:
            self._check_shortcuts()
            if self.probe is not None:
                self._probe()
        micro = cfg.accumulate
        loader = self._loader(self.data, self.step * micro, (self.steps - self.step) * micro, cfg.seed, True)
        batches = iter(loader)
        wait = compute = 0.0
        seen = 0
        window_loss: dict[str, list[float]] = {}  # the steps since the last metric row
        window_acc: dict[str, list[float]] = {}
        last_eval: dict[str, float] = {}
        with engine.progress(self.steps, self.step, cfg.progress and self.main, "pretraining") as bar:
            while self.step < self.steps:
                for model in self.models.values():
                    model.train()
                active = (
                    self.entries if cfg.task_mode == "sum" else [self.entries[self.step % len(self.entries)]]
                )
                losses: dict[str, float] = {}  # this step's
                accuracies: dict[str, float] = {}
                for m in range(micro):
                    t0 = time.perf_counter()
                    x = next(batches).to(self.device, non_blocking=True)
                    t1 = time.perf_counter()
                    wait += t1 - t0
                    drawn = {e.name: e.task(x, self.generators[self.entries.index(e)]) for e in active}
                    # under DDP gradients are averaged once per step: not on the accumulating micro-batches
                    last = m == micro - 1 or not isinstance(self.net, nn.parallel.DistributedDataParallel)
                    with contextlib.nullcontext() if last else self.net.no_sync():  # type: ignore[operator]
                        with engine.autocast(self.device, self.precision):
                            outputs = self.net({name: views for name, (views, _) in drawn.items()})
                        total = torch.zeros((), device=self.device)
                        for entry in active:
                            targets = drawn[entry.name][1]
                            output = outputs[entry.name].float()
                            gen = self.generators[self.entries.index(entry)]
                            weighted, loss = _task_loss(
                                entry, output, targets, gen, step=self.step, world=self.world, lr=cfg.lr
                            )
                            total = total + weighted
                            losses[entry.name] = losses.get(entry.name, 0.0) + float(loss.detach()) / micro
                            accuracies[entry.name] = (
                                accuracies.get(entry.name, 0.0)
                                + float(entry.task.accuracy(output.detach(), targets)) / micro
                            )
                        self.scaler.scale(total / micro).backward()  # type: ignore[no-untyped-call]
                    seen += x.shape[0]
                    compute += time.perf_counter() - t1
                for name, value in losses.items():
                    window_loss.setdefault(name, []).append(value)
                    window_acc.setdefault(name, []).append(accuracies[name])
                if cfg.grad_clip is not None:
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(list(self.models.parameters()), cfg.grad_clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                self.step += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(
                        loss=f"{sum(losses.values()):.3f}",
                        accuracy=f"{sum(accuracies.values()) / len(accuracies):.3f}",
                        images_s=f"{seen / max(wait + compute, 1e-9):.1f}",
                    )
                if self.step % cfg.log_every == 0 or self.step == self.steps:
                    row: dict[str, Any] = {"step": self.step, "lr": self.scheduler.get_last_lr()[0]}
                    row.update({f"loss/{n}": sum(v) / len(v) for n, v in window_loss.items()})
                    row.update({f"accuracy/{n}": sum(v) / len(v) for n, v in window_acc.items()})
                    busy = wait + compute
                    row.update(images_per_s=seen / max(busy, 1e-9), data_wait=wait / max(busy, 1e-9))
                    row = self._mean_over_ranks(row)
                    if self.main:
                        self._emit(row)
                    if self.main and busy and wait / busy > 0.5:
                        share = f"{wait / busy:.0%}"
                        self.log(f"step {self.step}: {share} of the time waits for data; add num_workers")

                    wait = compute = 0.0
                    seen = 0
                    window_loss, window_acc = {}, {}
                evaluate = self.step % cfg.eval_every == 0 or self.step == self.steps
                if self.held_out is not None and self.main and evaluate:  # rank 0 only: no collectives
                    last_eval = self.evaluate()
                probe_due = self.probe is not None and self.step % self.probe.every == 0
                if self.main and (probe_due or (self.probe is not None and self.step == self.steps)):
                    self._probe()
                if self.step % cfg.checkpoint_every == 0 or self.step == self.steps:
                    self._save()
        if self.held_out is not None and self.main and not last_eval:  # a resumed finished run: its last
            logged = [
                r for r in self.metrics.rows() if r["step"] == self.steps and any("held_out" in k for k in r)
            ]
            last_eval = {k: v for k, v in logged[-1].items() if k != "step"} if logged else self.evaluate()
        return self._finish(start_step, last_eval)

    def _check_shortcuts(self) -> None:
        """Score every task's shortcut on up to ``config.shortcut_check`` images; warn; keep the scores."""
        count = min(self.config.shortcut_check, self.size)
        if count < 4:
            return
        crops = _Crops(
            self.data, self.size, self.config.crop, self.spatial_dims, self.config.seed + 104_729,
            self.image_key, self.config.crop_min_std,
        )  # fmt: skip
        images = _stack([crops[i] for i in range(count)]).to(self.device)
        reports = {}
        for k, entry in enumerate(self.entries):
            report = shortcut_score(
                entry.task, images, generator=self.config.seed + k, batch_size=max(2, self.config.batch_size)
            )
            reports[entry.name] = report.as_dict()
            self.log(f"{'warning: ' if report.flagged else ''}{entry.name}: {report}")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_text(self.run_dir / "shortcuts.json", json.dumps(reports, indent=1))

    def _probe(self) -> None:
        assert self.probe is not None
        result = self.probe(self.encoder)
        self._emit({"step": self.step, **{f"probe/{k}": v for k, v in result.items()}})
        self.log(
            f"step {self.step}: frozen-feature probe " + ", ".join(f"{k} {v:.3f}" for k, v in result.items())
        )

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out pretext loss and accuracy per task (fixed crops and views), logged."""
        assert self.held_out is not None
        n = len(self.held_out)  # type: ignore[arg-type]
        batches = max(1, n // min(self.config.batch_size, n))
        loader = self._loader(self.held_out, 0, batches, self.config.seed + 7919, False)
        for model in self.models.values():
            model.eval()
        sums: dict[str, list[float]] = {}
        generators = [torch.Generator().manual_seed(10**6 + k) for k in range(len(self.entries))]
        for x in loader:
            x = x.to(self.device)
            for k, entry in enumerate(self.entries):
                with engine.autocast(self.device, self.precision):
                    views, targets = entry.task(x, generators[k])
                    output = self.models[entry.name](views).float()
                loss = entry.task.loss(output, targets, generator=generators[k])
                acc = entry.task.accuracy(output, targets)
                sums.setdefault(entry.name, []).extend([float(loss), float(acc)])
        result: dict[str, float] = {}
        for entry in self.entries:
            values = sums[entry.name]
            mean_loss, mean_acc = float(np.mean(values[0::2])), float(np.mean(values[1::2]))
            result[f"held_out_loss/{entry.name}"] = mean_loss
            result[f"held_out_accuracy/{entry.name}"] = mean_acc
            warning = pretext_warning(entry.task, mean_acc)
            if warning:
                self.log(f"step {self.step}: {entry.name} {warning}")
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

    def _finish(self, start_step: int, held: dict[str, float]) -> dict[str, Any]:
        if not self.main:  # rank 0 writes; the others return its record
            box: list[Any] = [None]
            dist.broadcast_object_list(box, src=0)
            if self._started_group:
                engine.end_process_group()
            return dict(box[0])
        save_encoder(self.encoder, self.output)
        accuracy = [v for k, v in held.items() if k.startswith("held_out_accuracy/")]
        record = {
            "tasks": self._task_names(),
            "task_weights": [e.weight for e in self.entries],
            "pretext_accuracy": float(np.mean(accuracy)) if accuracy else None,
            "held_out": held,
            "steps": self.steps,
            "config": dataclasses.asdict(self.config),
            "device": str(self.device),
            "precision": self.precision,
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
        held_ids = _case_ids(self.held_out) if self.held_out is not None else []
        record["held_out_cases"] = held_ids
        write_pretraining_record(self.output, case_ids=_case_ids(self.data) + held_ids, **record)
        self.metrics.close()
        if self.world > 1:
            dist.broadcast_object_list([record], src=0)
            if self._started_group:
                engine.end_process_group()
        self.log(
            f"pretrained {self._task_names()} for {self.steps} steps ({self.steps - start_step} now) on "
            f"{self.device} in {self.precision}; encoder: {self.output}; record: {self.output}.json; "
            f"metrics: {self.metrics.jsonl}"
        )
        return record


def pretext_warning(task: PretextTask[Any, Any], accuracy: float) -> str | None:
    """A warning when a held-out pretext accuracy says the task teaches little.

    At chance (classification: below 1.5 x chance) the encoder learns nothing from it; at
    0.99 or more the task is solved outright, often from a shortcut (see docs/tasks/rotation.md).
    """
    if accuracy >= 0.99:
        return f"is solved outright (held-out accuracy {accuracy:.3f}): it may be too easy to teach much"
    if isinstance(task, ClassificationTask) and accuracy < 1.5 / task.num_classes:
        return f"is at chance (held-out accuracy {accuracy:.3f}, chance {1 / task.num_classes:.3f})"
    return None


def _optimizer(
    params: Iterable[nn.Parameter], name: str, lr: float, weight_decay: float, momentum: float
) -> torch.optim.Optimizer:
    """AdamW, Adam or SGD with momentum (the Pretrainer's and the LightningModule's)."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    return cls(params, lr=lr, weight_decay=weight_decay)


def _lr_factor(step: int, *, warmup: int, total: int, cosine: bool) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total`` (or constant)."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if not cosine:
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def _task_loss(
    entry: WeightedTask,
    output: Tensor,
    targets: Any,
    generator: torch.Generator,
    *,
    step: int,
    world: int,
    lr: float,
) -> tuple[Tensor, Tensor]:
    """``(weighted loss to backpropagate, the task's loss)``; a non-finite loss stops the run."""
    loss = entry.task.loss(output, targets, generator=generator)
    if not bool(torch.isfinite(loss.detach())):
        raise engine.NonFiniteLossError(
            f"the {entry.name} loss is {float(loss.detach())} at step {step}; "
            f"the run stops (lower lr, now {lr}, or check the data for NaN)"
        )
    # a loss over negatives gathered from every rank is the global batch's loss on each rank;
    # DDP averages the gradients, so it is scaled back up (see pretext3d.objectives.gather)
    return entry.weight * loss * (world if _gathers(entry.task) else 1), loss


def _image(item: Any, image_key: str, where: str) -> Any:
    """The image of a data item or batch: a dict's ``image_key``, a tuple's first element, or itself.

    A tensor comes back as a plain ``Tensor`` (a MONAI ``MetaTensor`` loses its metadata).
    """
    if isinstance(item, Mapping):  # a MONAI dataset's {"image": ..., ...}
        if image_key not in item:
            raise ValueError(
                f"{where} is a dict without image_key={image_key!r} (its keys: {sorted(item)}); "
                "pass image_key=..."
            )
        item = item[image_key]
    image = item[0] if isinstance(item, (tuple, list)) else item
    return image.as_subclass(Tensor) if isinstance(image, Tensor) else image


def _gathers(task: PretextTask[Any, Any]) -> bool:
    """Whether ``task``'s loss gathers across ranks (exemplar's or CPC's ``gather=True``)."""
    return bool(getattr(task, "gather", False))


def _case_ids(data: Dataset[Any]) -> list[str]:
    """The ids of a data set's images (``case_ids``, through ``Subset``s); ``[]`` if it has none."""
    if isinstance(data, Subset):
        ids = _case_ids(data.dataset)
        return [ids[i] for i in data.indices] if ids else []
    names = getattr(data, "case_ids", None)
    return [str(i) for i in names] if names is not None else []


def _stack(images: list[Tensor]) -> Tensor:
    shapes = sorted({tuple(x.shape) for x in images})
    if len(shapes) > 1:
        raise ValueError(
            f"the images of a batch differ in shape {shapes[:4]}; set crop (PretrainConfig.crop) to cut "
            "equal random crops, or resize the images in the data set"
        )
    return torch.stack(images)


def _weighted(
    tasks: PretextTask[Any, Any] | Sequence[PretextTask[Any, Any] | WeightedTask],
) -> list[WeightedTask]:
    items = [tasks] if isinstance(tasks, PretextTask) else list(tasks)
    if not items:
        raise ValueError("tasks must hold at least one task")
    entries = []
    for item in items:
        entry = (
            item
            if isinstance(item, WeightedTask)
            else WeightedTask(item)
            if isinstance(item, PretextTask)
            else None
        )
        if entry is None:
            raise TypeError(f"tasks must be PretextTask or WeightedTask objects, got {type(item).__name__}")
        check_positive(f"weight of {type(entry.task).__name__}", entry.weight, allow_zero=True)
        name = entry.name or type(entry.task).__name__.lower()
        entries.append(WeightedTask(entry.task, float(entry.weight), name))
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"task names must differ, got {names}; give WeightedTask(name=...)")
    return entries
