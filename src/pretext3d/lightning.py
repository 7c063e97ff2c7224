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

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from pretext3d import engine
from pretext3d._checks import check_choice, check_int
from pretext3d._random import Seeds
from pretext3d.diagnostics import FeatureProbe
from pretext3d.tasks import PretextTask
from pretext3d.training import (
    OptimSettings,
    PretextStep,
    TaskSpec,
    build_optimizer,
    check_finite,
    image_of,
    lr_schedule,
    switch_checkpointing,
)
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
        tasks: a task, or several (task objects or :class:`~pretext3d.training.TaskSpec`).
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
        ['held_out_accuracy/rotation', 'held_out_accuracy/rpl']
        >>> p3.models.save_encoder(module.encoder, "encoder.pt")
    """

    def __init__(
        self,
        encoder: nn.Module,
        tasks: PretextTask[Any, Any] | TaskSpec | Sequence[PretextTask[Any, Any] | TaskSpec],
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
        self.settings = OptimSettings(optimizer, lr, weight_decay, momentum, schedule, warmup_steps)
        self.lr = self.settings.lr
        self.task_mode = check_choice("task_mode", task_mode, ("sum", "alternate"))
        self.crop = check_int("crop", crop, 0)
        self.channels_last = channels_last
        self.image_key = image_key
        self.seed = check_int("seed", seed, 0)
        if activation_checkpointing:
            switch_checkpointing(encoder)
        self.core = PretextStep(encoder, tasks, seed=seed)  # the Pretrainer's step
        self.spatial_dims = self.core.spatial_dims
        self.encoder = encoder
        self.models = self.core.models
        if compile:
            for model in self.models.values():
                model.compile()
        self._resumed = False

    # --- Lightning hooks ---------------------------------------------------------------------

    def on_fit_start(self) -> None:
        """Seed one draw stream per task and rank (unless resumed); channels-last on CUDA (or when asked)."""
        if not self._resumed:
            self.core.seed_streams(self.seed, self.global_rank)
        engine.to_channels_last(
            self.models, self.spatial_dims, setting=self.channels_last, device=self.device
        )

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
            x = random_crops(x, [self.crop] * self.spatial_dims, self.core.generators[0])
        drawn = self.core.draw(x, self.core.active(self.global_step, self.task_mode))
        outputs = self.core.net({name: views for name, (views, _) in drawn.items()})
        world = self.trainer.world_size if self._trainer is not None else 1
        result = self.core.score(outputs, drawn, world=world, check=self._check_finite)
        for name, loss in result.losses.items():
            self.log(f"loss/{name}", loss, prog_bar=True, batch_size=len(x))
            self.log(f"accuracy/{name}", result.accuracies[name], batch_size=len(x))
        return result.loss

    def _check_finite(self, loss: Tensor, name: str) -> None:
        check_finite(loss, f"{name} loss", f"at step {self.global_step}", self.lr)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Held-out pretext loss and accuracy of every task (eval mode, the same draw per batch)."""
        x = self._images(batch)
        generators = [
            torch.Generator().manual_seed(Seeds.lightning_held_out_views(self.seed, k, batch_idx))
            for k in range(len(self.core.tasks))
        ]
        for name, (loss, accuracy) in self.core.measure(x, generators).items():
            self.log(f"held_out_loss/{name}", loss, batch_size=len(x))
            self.log(f"held_out_accuracy/{name}", accuracy, batch_size=len(x))

    def configure_optimizers(self) -> Any:
        """The optimizer and a per-step warm-up + cosine (or constant) schedule."""
        settings = dataclasses.replace(self.settings, lr=self.lr)  # module.lr, as a tuner may set it
        optimizer = build_optimizer(self.models.parameters(), settings)
        scheduler = lr_schedule(optimizer, settings, max(1, int(self.trainer.estimated_stepping_batches)))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the task draw streams, so that a resumed run draws what an uninterrupted one would."""
        checkpoint["pretext3d_generators"] = self.core.generator_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the task draw streams (the tasks' own state is in the state dict)."""
        states = checkpoint.get("pretext3d_generators")
        if states is not None:
            self.core.set_generator_states(states)
            self._resumed = True

    # --- helpers -----------------------------------------------------------------------------

    def _images(self, batch: Any) -> Tensor:
        images = image_of(batch, self.image_key, "a batch")  # a MONAI MetaTensor becomes a plain tensor
        if not isinstance(images, Tensor):
            raise TypeError(f"a batch must be a tensor (B, C, *spatial), got {type(images).__name__}")
        return images
