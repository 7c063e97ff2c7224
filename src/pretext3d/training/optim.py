"""The one optimisation block: optimizer, warm-up and schedule, precision with its scaler, clipping.

The :class:`~pretext3d.pretrainer.Pretrainer` and the fine-tuning
:class:`~pretext3d.finetune.Trainer` step through an :class:`Optimization`;
:class:`~pretext3d.lightning.PretextLightningModule` builds the same optimizer and schedule
(:func:`build_optimizer`, :func:`lr_schedule`) and leaves precision and clipping to Lightning.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from pretext3d import engine
from pretext3d._checks import check_choice, check_int, check_positive
from pretext3d.config import checked

__all__ = ["OptimSettings", "Optimization", "build_optimizer", "check_finite", "lr_factor", "lr_schedule"]


@checked
@dataclass(frozen=True)
class OptimSettings:
    """What an optimisation block is made of (the configs' fields of the same names).

    Attributes:
        optimizer: ``"adamw"``, ``"adam"`` or ``"sgd"`` (with ``momentum``).
        lr: peak learning rate.
        weight_decay: decoupled for AdamW, L2 for Adam and SGD.
        momentum: SGD's momentum.
        schedule: ``"cosine"`` (to 0 at the last step) or ``"constant"``, after ``warmup_steps``.
        warmup_steps: linear warm-up from 0.
        grad_clip: maximum global gradient norm (``None``: no clipping).

    Examples:
        >>> OptimSettings(optimizer="sgd", lr=0.1).schedule
        'constant'
        >>> OptimSettings(lr=0)
        Traceback (most recent call last):
        ValueError: lr must be a finite number > 0, got 0
    """

    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: Literal["cosine", "constant"] = "constant"
    warmup_steps: int = 0
    grad_clip: float | None = None

    def __post_init__(self) -> None:
        """Check the values."""
        check_choice("optimizer", self.optimizer, ("adamw", "adam", "sgd"))
        check_choice("schedule", self.schedule, ("cosine", "constant"))
        check_positive("lr", self.lr)
        check_positive("weight_decay", self.weight_decay, allow_zero=True)
        check_positive("momentum", self.momentum, allow_zero=True)
        check_int("warmup_steps", self.warmup_steps, 0)
        if self.grad_clip is not None:
            check_positive("grad_clip", self.grad_clip)  # <= 0 would zero or reverse the step


def build_optimizer(
    params: Iterable[nn.Parameter] | Iterable[dict[str, Any]], settings: OptimSettings
) -> torch.optim.Optimizer:
    """AdamW, Adam or SGD with momentum, as ``settings`` say.

    ``params`` may be parameter groups (dicts with ``"params"`` and, e.g., their own ``"lr"``).

    Examples:
        >>> type(build_optimizer(torch.nn.Linear(2, 2).parameters(), OptimSettings("sgd"))).__name__
        'SGD'
    """
    s = settings
    if s.optimizer == "sgd":
        return torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
    cls = torch.optim.AdamW if s.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=s.lr, weight_decay=s.weight_decay)


def lr_factor(step: int, *, warmup: int, total: int, cosine: bool) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total`` (or constant).

    Examples:
        >>> [round(lr_factor(s, warmup=1, total=3, cosine=True), 3) for s in range(4)]
        [0.5, 1.0, 0.5, 0.0]
    """
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if not cosine:
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def lr_schedule(
    optimizer: torch.optim.Optimizer, settings: OptimSettings, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """The per-step warm-up + cosine (or constant) schedule of ``settings`` over ``total_steps``.

    Examples:
        >>> settings = OptimSettings(lr=1.0, schedule="cosine", warmup_steps=1)
        >>> optimizer = build_optimizer(torch.nn.Linear(2, 2).parameters(), settings)
        >>> schedule = lr_schedule(optimizer, settings, total_steps=3)
        >>> rates = []
        >>> for _ in range(3):
        ...     rates.append(round(schedule.get_last_lr()[0], 3))
        ...     optimizer.step()
        ...     schedule.step()
        >>> rates
        [0.5, 1.0, 0.5]
    """
    factor = functools.partial(
        lr_factor, warmup=settings.warmup_steps, total=total_steps, cosine=settings.schedule == "cosine"
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def check_finite(loss: Tensor, what: str, where: str, lr: float) -> None:
    """Raise :class:`~pretext3d.engine.NonFiniteLossError` if ``loss`` is NaN or infinite.

    Examples:
        >>> check_finite(torch.tensor(float("nan")), "rotation loss", "at step 3", lr=0.1)
        Traceback (most recent call last):
        pretext3d.engine.NonFiniteLossError: the rotation loss is nan at step 3; the run stops (lower lr, ...
    """
    if not bool(torch.isfinite(loss.detach())):
        raise engine.NonFiniteLossError(
            f"the {what} is {float(loss.detach())} {where}; the run stops (lower lr, now {lr}, or check the "
            "data for NaN)"
        )


class Optimization:
    """Optimizer, schedule, precision (autocast and fp16's gradient scaler), clipping, checks.

    A step is ``backward(loss)`` once per micro-batch (accumulated gradients), then
    :meth:`step`: unscale, clip, optimizer step, scaler update, zero the gradients, advance
    the schedule. Its :meth:`state_dict` is what a checkpoint needs to resume exactly.

    Args:
        params: the parameters to train, or parameter groups (dicts with ``"params"`` and their
            own ``"lr"``, e.g. discriminative learning rates); the schedule scales every group.
        settings: the optimizer, schedule and clipping.
        total_steps: the schedule's length.
        device: where the step runs (autocast's device type).
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (resolved; see
            :func:`pretext3d.engine.resolve_precision`).

    Examples:
        >>> net = torch.nn.Linear(4, 1)
        >>> block = Optimization(net.parameters(), OptimSettings(lr=0.1, grad_clip=1.0), 10,
        ...                      torch.device("cpu"), "fp32")
        >>> with block.autocast():
        ...     loss = net(torch.randn(8, 4)).pow(2).mean()
        >>> block.check_finite(loss, "training loss", "at step 0")
        >>> block.backward(loss)
        >>> block.step()   # clip, step, zero the gradients, advance the schedule
        >>> net.weight.grad is None, block.lr
        (True, 0.1)
    """

    def __init__(
        self,
        params: Iterable[nn.Parameter] | Iterable[dict[str, Any]],
        settings: OptimSettings,
        total_steps: int,
        device: torch.device,
        precision: str,
    ) -> None:
        self.settings, self.device, self.precision = settings, device, precision
        groups: list[Any] = list(params)
        self.params: list[nn.Parameter] = [
            p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])
        ]
        self.optimizer = build_optimizer(groups, settings)
        self.scheduler = lr_schedule(self.optimizer, settings, total_steps)
        self.scaler = engine.grad_scaler(device, precision)

    @property
    def lr(self) -> float:
        """The learning rate of the next step."""
        return float(self.scheduler.get_last_lr()[0])

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The forward pass's autocast context (none in fp32)."""
        return engine.autocast(self.device, self.precision)

    def check_finite(self, loss: Tensor, what: str, where: str) -> None:
        """Raise :class:`~pretext3d.engine.NonFiniteLossError` if ``loss`` is NaN or infinite.

        The message reads ``the <what> is nan <where>; the run stops (lower lr, now ..., or
        check the data for NaN)``; in bf16 on the CPU it adds a known cause (torch 2.13's
        oneDNN gave non-finite bf16 weight gradients for 3D convolutions of 2-voxel feature
        maps in about 1 call in 20; fp32 never did).
        """
        try:
            check_finite(loss, what, where, self.settings.lr)
        except engine.NonFiniteLossError as err:
            if self.device.type == "cpu" and self.precision == "bf16":
                raise engine.NonFiniteLossError(
                    f"{err}. In bf16 on the CPU, 3D convolutions of 2-voxel feature maps (small patches "
                    "through a deep encoder) have given non-finite gradients (oneDNN, torch 2.13): use "
                    'precision="fp32" on the CPU, or larger patches'
                ) from None
            raise

    def backward(self, loss: Tensor) -> None:
        """Accumulate the gradients of ``loss`` (scaled in fp16)."""
        self.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]

    def step(self) -> None:
        """Unscale, clip, step, update the scaler, zero the gradients, advance the schedule."""
        if self.settings.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(
                [p for p in self.params if p.grad is not None], self.settings.grad_clip
            )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

    def sync_lr(self) -> None:
        """Set every group's learning rate from this block's schedule at its current step.

        After :meth:`load_state_dict` of a run whose schedule had another length (a finished
        run continued for more steps), the optimizer holds the rate of the old schedule (0 at
        the end of a cosine); the next step takes the rate of this one.

        Examples:
            >>> net = torch.nn.Linear(2, 1)
            >>> short = Optimization(net.parameters(), OptimSettings(schedule="cosine"), 2,
            ...                      torch.device("cpu"), "fp32")
            >>> for _ in range(2):
            ...     short.step()
            >>> longer = Optimization(net.parameters(), OptimSettings(schedule="cosine"), 4,
            ...                       torch.device("cpu"), "fp32")
            >>> longer.load_state_dict(short.state_dict())
            >>> longer.optimizer.param_groups[0]["lr"]   # the short schedule's end
            0.0
            >>> longer.sync_lr()
            >>> round(longer.optimizer.param_groups[0]["lr"], 6), round(longer.lr, 6)   # cos at 2 of 4
            (0.0005, 0.0005)
        """
        step = self.scheduler.last_epoch
        for group, base, factor in zip(
            self.optimizer.param_groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas, strict=True
        ):
            group["lr"] = base * factor(step)
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        """``{"optimizer", "scheduler", "scaler"}`` states, for a checkpoint."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
