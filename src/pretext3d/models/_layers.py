"""Layer factories keyed by ``spatial_dims`` and the activation-checkpoint helper."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Literal

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from pretext3d._checks import check_choice

Norm = Literal["batch", "instance", "group"]
NORMS = ("batch", "instance", "group")


def conv(spatial_dims: int) -> type[nn.Conv2d] | type[nn.Conv3d]:
    """``nn.Conv2d`` or ``nn.Conv3d``."""
    return nn.Conv2d if spatial_dims == 2 else nn.Conv3d


def conv_transpose(spatial_dims: int) -> type[nn.ConvTranspose2d] | type[nn.ConvTranspose3d]:
    """``nn.ConvTranspose2d`` or ``nn.ConvTranspose3d``."""
    return nn.ConvTranspose2d if spatial_dims == 2 else nn.ConvTranspose3d


def max_pool(spatial_dims: int) -> type[nn.MaxPool2d] | type[nn.MaxPool3d]:
    """``nn.MaxPool2d`` or ``nn.MaxPool3d``."""
    return nn.MaxPool2d if spatial_dims == 2 else nn.MaxPool3d


def avg_pool(spatial_dims: int) -> type[nn.AvgPool2d] | type[nn.AvgPool3d]:
    """``nn.AvgPool2d`` or ``nn.AvgPool3d``."""
    return nn.AvgPool2d if spatial_dims == 2 else nn.AvgPool3d


def dropout(spatial_dims: int) -> type[nn.Dropout2d] | type[nn.Dropout3d]:
    """Channel dropout: ``nn.Dropout2d`` or ``nn.Dropout3d``."""
    return nn.Dropout2d if spatial_dims == 2 else nn.Dropout3d


def norm(kind: str, spatial_dims: int, channels: int) -> nn.Module:
    """A normalisation layer for ``channels`` channels.

    Args:
        kind: ``"batch"``, ``"instance"`` (affine) or ``"group"`` (8 groups, or fewer when
            ``channels`` is not a multiple of 8).
        spatial_dims: 2 or 3.
        channels: number of channels.
    """
    check_choice("norm", kind, NORMS)
    if kind == "batch":
        return (nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d)(channels)
    if kind == "instance":
        return (nn.InstanceNorm2d if spatial_dims == 2 else nn.InstanceNorm3d)(channels, affine=True)
    groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


@contextlib.contextmanager
def _frozen_running_stats(module: nn.Module) -> Iterator[None]:
    """Keep batch-norm running statistics and batch counts unchanged inside the block."""
    saved = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats:
            count = None if m.num_batches_tracked is None else m.num_batches_tracked.clone()
            saved.append((m, m.momentum, count))
            m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
    try:
        yield
    finally:
        for m, momentum, count in saved:
            m.momentum = momentum
            if count is not None and m.num_batches_tracked is not None:
                m.num_batches_tracked.copy_(count)


def checkpointed(module: nn.Module, fn: Callable[..., Tensor], *args: Tensor) -> Tensor:
    """``fn(*args)`` without storing ``module``'s activations: they are recomputed in backward.

    Uses non-reentrant ``torch.utils.checkpoint`` (random state preserved, so dropout
    matches) and freezes batch-norm running statistics during the recomputation, so
    that a checkpointed step updates them exactly once, as a plain step does.
    """

    def contexts() -> tuple[contextlib.AbstractContextManager[None], contextlib.AbstractContextManager[None]]:
        return contextlib.nullcontext(), _frozen_running_stats(module)

    out: Tensor = checkpoint(fn, *args, use_reentrant=False, context_fn=contexts)
    return out


def use_checkpoint(enabled: bool) -> bool:
    """Checkpoint only when enabled and gradients are being recorded."""
    return enabled and torch.is_grad_enabled()


def check_input(x: Tensor, spatial_dims: int, in_channels: int, min_size: int, rule: str) -> None:
    """Raise ``ValueError`` unless ``x`` is ``(N, in_channels, *spatial)`` with every size ``>= min_size``.

    Args:
        x: the encoder's input.
        spatial_dims: 2 or 3.
        in_channels: channels the encoder was built for.
        min_size: smallest spatial size the encoder can take.
        rule: why, for the message (e.g. ``"2**(stages - 1) for 5 stages"``).
    """
    if x.dim() != spatial_dims + 2 or x.shape[1] != in_channels:
        raise ValueError(
            f"x must have shape (N, {in_channels}, *spatial) with {spatial_dims} spatial axes, "
            f"got {tuple(x.shape)}"
        )
    if min(x.shape[2:]) < min_size:
        raise ValueError(f"every spatial size must be at least {min_size} = {rule}, got {tuple(x.shape[2:])}")


def check_batch_statistics(module: nn.Module, x: Tensor, deepest: Sequence[int]) -> None:
    """Raise ``ValueError`` when batch norm in training mode would see one value per channel.

    Args:
        module: the encoder.
        x: its input ``(N, C, *spatial)``.
        deepest: the spatial size of its smallest feature map for this input.
    """
    values = x.shape[0] * math.prod(deepest)
    if (
        values == 1
        and module.training
        and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())
    ):
        raise ValueError(
            f"batch norm in training mode needs more than one value per channel, but a batch of "
            f"{x.shape[0]} at spatial size {tuple(x.shape[2:])} leaves a {tuple(deepest)} map at the deepest "
            "stage; use a batch of 2 or more, a larger input, eval mode, or norm='group'/'instance'"
        )
