"""Pretraining through Lightning: a ``LightningModule`` for any encoder and any tasks.

The library's own :class:`~pretext3d.pretrainer.Pretrainer` needs nothing but torch; this
module is for those who already train with Lightning (its ``Trainer``, callbacks, loggers,
strategies). It needs ``pip install 'pretext3d[lightning]'``.

What the Pretrainer's :class:`~pretext3d.pretrainer.PretrainConfig` sets, and where it goes
here: the optimizer, learning rate, schedule, warm-up, task mode, crop, channels-last,
``torch.compile``, activation checkpointing and seed are arguments of
:class:`PretextLightningModule`; the device, precision (``precision="bf16-mixed"``: the GPU
fast path), gradient clipping (``gradient_clip_val``), steps, several GPUs
(``strategy="ddp"``), sync batch norm, checkpoints and resuming (``ckpt_path``) are
Lightning ``Trainer`` arguments; the data loader is yours.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from pretext3d import engine
from pretext3d._checks import check_choice, check_int, check_positive
from pretext3d.diagnostics import FeatureProbe
from pretext3d.pretext_model import PretextModel, infer_num_features
from pretext3d.pretrainer import WeightedTask, _image, _lr_factor, _optimizer, _task_loss, _weighted
from pretext3d.tasks import PretextTask
from pretext3d.transforms import random_crops

try:
    import lightning.pytorch as pl
except ImportError as err:  # pragma: no cover - depends on the extra
    raise ImportError("pretext3d.lightning needs Lightning: pip install 'pretext3d[lightning]'") from err

__all__ = ["PretextLightningModule"]


class PretextLightningModule(pl.LightningModule):
    """Pretrain an encoder on one or several pretext tasks with a Lightning ``Trainer``.

    Each training batch (a tensor ``(B, C, *spatial)``, a tuple whose first element is one, or
    a dict holding one under ``image_key``, as MONAI datasets give) is cropped (``crop``),
    turned into each task's views on the device, and the weighted sum of the task losses is
    returned (``task_mode="alternate"``: one task per step, in turn). Validation batches give
    the held-out pretext loss and accuracy in eval mode, each batch with the same draw every
    time. Logged: ``loss/<task>``, ``accuracy/<task>``, ``held_out_loss/<task>``,
    ``held_out_accuracy/<task>``.

    Args:
        encoder: any encoder (as for :class:`~pretext3d.PretextModel`); ``module.encoder``
            after training, for :func:`~pretext3d.models.save_encoder`.
        tasks: a task, or several (tasks or :class:`~pretext3d.pretrainer.WeightedTask`).
        optimizer: ``"adamw"``, ``"adam"`` or ``"sgd"``.
        lr: peak learning rate.
        weight_decay: weight decay.
        momentum: SGD momentum.
        schedule: ``"cosine"`` (to 0 over the Trainer's steps) or ``"constant"``.
        warmup_steps: linear warm-up steps.
        task_mode: ``"sum"`` or ``"alternate"``.
        crop: random crop edge taken from each batch first (0: none).
        channels_last: channels-last memory format (``None``: on CUDA).
        compile: ``torch.compile`` the task models.
        activation_checkpointing: switch the encoder's ``checkpointing`` on.
        image_key: the image's key in dict batches.
        seed: seeds the heads and the task draws.
        probe: a :class:`~pretext3d.diagnostics.FeatureProbe`: run on the encoder before the
            first step (the randomly initialised reference) and after every ``probe.every``
            steps, logged as ``probe/<metric>`` and kept in ``module.probe_history``
            (``[{"step": ..., "<metric>": ...}, ...]``).

    Examples:
        >>> import lightning.pytorch as pl
        >>> images = p3.data.PhantomImages("ct", count=8, size=32)   # any Dataset or DataLoader
        >>> loader = torch.utils.data.DataLoader(images, batch_size=4)
        >>> module = PretextLightningModule(p3.models.UNetEncoder(3, widths=(8, 16)),
        ...                                 [p3.tasks.Rotation(3), p3.tasks.RelativePatchLocation(3)])
        >>> trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
        ...                      enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(module, loader, loader)
        >>> sorted(k for k in trainer.logged_metrics if k.startswith("held_out_accuracy"))
        ['held_out_accuracy/relativepatchlocation', 'held_out_accuracy/rotation']
        >>> p3.models.save_encoder(module.encoder, "encoder.pt")
    """

    def __init__(
        self,
        encoder: nn.Module,
        tasks: PretextTask[Any, Any] | Sequence[PretextTask[Any, Any] | WeightedTask],
        *,
        optimizer: Literal["adamw", "adam", "sgd"] = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        momentum: float = 0.9,
        schedule: Literal["cosine", "constant"] = "cosine",
        warmup_steps: int = 0,
        task_mode: Literal["sum", "alternate"] = "sum",
        crop: int = 0,
        channels_last: bool | None = None,
        compile: bool = False,
        activation_checkpointing: bool = False,
        image_key: str = "image",
        seed: int = 0,
        probe: FeatureProbe | None = None,
    ) -> None:
        super().__init__()
        if probe is not None and not isinstance(probe, FeatureProbe):
            raise TypeError(f"probe must be a pretext3d.diagnostics.FeatureProbe, got {type(probe).__name__}")
        self.probe = probe
        self.probe_history: list[dict[str, float]] = []
        self.optimizer_name = check_choice("optimizer", optimizer, ("adamw", "adam", "sgd"))
        self.lr = check_positive("lr", lr)
        self.weight_decay = check_positive("weight_decay", weight_decay, allow_zero=True)
        self.momentum = check_positive("momentum", momentum, allow_zero=True)
        self.schedule = check_choice("schedule", schedule, ("cosine", "constant"))
        self.warmup_steps = check_int("warmup_steps", warmup_steps, 0)
        self.task_mode = check_choice("task_mode", task_mode, ("sum", "alternate"))
        self.crop = check_int("crop", crop, 0)
        self.channels_last = channels_last
        self.image_key = image_key
        self.seed = check_int("seed", seed, 0)
        self.entries = _weighted(tasks)
        dims = {e.task.spatial_dims for e in self.entries}
        if len(dims) != 1:
            raise ValueError(f"all tasks must work in one spatial dimension, got {sorted(dims)}")
        self.spatial_dims = dims.pop()
        if activation_checkpointing:
            if not hasattr(encoder, "checkpointing"):
                raise ValueError(
                    f"activation_checkpointing needs an encoder with a .checkpointing switch; "
                    f"{type(encoder).__name__} has none"
                )
            encoder.checkpointing = True  # type: ignore[assignment]
        torch.manual_seed(seed)  # the heads' initialisation, as the Pretrainer's
        width = infer_num_features(encoder, self.spatial_dims)
        self.encoder = encoder
        self.models = nn.ModuleDict(
            {e.name: PretextModel(encoder, e.task, num_features=width) for e in self.entries}
        )
        if compile:
            for model in self.models.values():
                model.compile()
        self.generators: list[torch.Generator] = []

    # --- Lightning hooks ---------------------------------------------------------------------

    def on_fit_start(self) -> None:
        """Seed one draw stream per task and rank (unless resumed); channels-last on CUDA (or when asked)."""
        if not self.generators:
            self.generators = [
                torch.Generator().manual_seed(self.seed * 1000 + k + 1 + 7919 * self.global_rank)
                for k in range(len(self.entries))
            ]
        if self.channels_last or (self.channels_last is None and self.device.type == "cuda"):
            engine.to_channels_last(self.models, self.spatial_dims)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Probe the randomly initialised encoder before the first step (the reference)."""
        if self.probe is not None and self.global_step == 0 and not self.probe_history:
            self._run_probe()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Probe the frozen features every ``probe.every`` steps."""
        due = self.probe is not None and self.global_step % self.probe.every == 0
        if due and (not self.probe_history or self.probe_history[-1]["step"] != self.global_step):
            self._run_probe()

    def _run_probe(self) -> None:
        assert self.probe is not None
        result = self.probe(self.encoder)
        self.probe_history.append({"step": float(self.global_step), **result})
        for key, value in result.items():
            self.log(f"probe/{key}", value, on_step=True, on_epoch=False, batch_size=1)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """The weighted sum of the active tasks' losses on this batch."""
        x = self._images(batch)
        if self.crop:
            x = random_crops(x, [self.crop] * self.spatial_dims, self.generators[0])
        active = (
            self.entries if self.task_mode == "sum" else [self.entries[self.global_step % len(self.entries)]]
        )
        world = self.trainer.world_size if self._trainer is not None else 1
        total = torch.zeros((), device=x.device)
        for entry in active:
            generator = self.generators[self.entries.index(entry)]
            views, targets = entry.task(x, generator)
            output = self.models[entry.name](views).float()
            weighted, loss = _task_loss(
                entry, output, targets, generator, step=self.global_step, world=world, lr=self.lr
            )
            total = total + weighted
            accuracy = entry.task.accuracy(output.detach(), targets)
            self.log(f"loss/{entry.name}", loss.detach(), prog_bar=True, batch_size=len(x))
            self.log(f"accuracy/{entry.name}", accuracy, batch_size=len(x))
        return total

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Held-out pretext loss and accuracy of every task (eval mode, the same draw per batch)."""
        x = self._images(batch)
        for k, entry in enumerate(self.entries):
            generator = torch.Generator().manual_seed(self.seed * 1000 + 500 + 31 * k + batch_idx)
            views, targets = entry.task(x, generator)
            output = self.models[entry.name](views).float()
            loss = entry.task.loss(output, targets, generator=generator)
            self.log(f"held_out_loss/{entry.name}", loss, batch_size=len(x))
            self.log(
                f"held_out_accuracy/{entry.name}", entry.task.accuracy(output, targets), batch_size=len(x)
            )

    def configure_optimizers(self) -> Any:
        """The optimizer and a per-step warm-up + cosine (or constant) schedule."""
        optimizer = _optimizer(
            self.models.parameters(), self.optimizer_name, self.lr, self.weight_decay, self.momentum
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        factor = functools.partial(
            _lr_factor, warmup=self.warmup_steps, total=total, cosine=self.schedule == "cosine"
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the task draw streams, so that a resumed run draws what an uninterrupted one would."""
        checkpoint["pretext3d_generators"] = [g.get_state() for g in self.generators]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the task draw streams (the tasks' own state is in the state dict)."""
        states = checkpoint.get("pretext3d_generators", [])
        self.generators = [torch.Generator() for _ in states]
        for generator, state in zip(self.generators, states, strict=True):
            generator.set_state(state)

    # --- helpers -----------------------------------------------------------------------------

    def _images(self, batch: Any) -> Tensor:
        images = _image(batch, self.image_key, "a batch")  # a MONAI MetaTensor becomes a plain tensor
        if not isinstance(images, Tensor):
            raise TypeError(f"a batch must be a tensor (B, C, *spatial), got {type(images).__name__}")
        return images
