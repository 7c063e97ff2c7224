"""Whole-image inference by overlapping sliding windows with Gaussian weighting.

A network trained on crops of a volume predicts the whole volume window by window; where
windows overlap, their logits are averaged with weights that fall off towards the window's
border (a separable Gaussian), so that predictions made near a window's edge, with little
context, count less. The scheme of nnU-Net (Isensee et al., Nature Methods 2021) and MONAI's
``sliding_window_inference``, whose window placement and weights this follows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pretext3d._checks import check_choice, check_device, check_int, check_positive, check_unit_interval

__all__ = ["gaussian_weights", "sliding_window_inference", "window_starts"]


def gaussian_weights(
    size: Sequence[int],
    sigma_scale: float = 0.125,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """The weight of each voxel of a window: a separable Gaussian centred on the window.

    ``w(x) = prod_d exp(-(x_d - (n_d - 1) / 2)^2 / (2 (sigma_scale * n_d)^2))``, clamped below
    at ``max(min(w), 1e-3)`` so that no voxel of a window is ignored.

    Args:
        size: the window's edge lengths ``(*roi)``.
        sigma_scale: the Gaussian's standard deviation as a fraction of each edge.
        device: where to make it.
        dtype: its dtype.

    Returns:
        ``(*size)`` weights in ``(0, 1]``, 1 at the centre (for odd edges).

    Examples:
        >>> w = gaussian_weights((5, 5))
        >>> w.shape, float(w[2, 2]), bool(w[0, 0] < w[1, 1] < w[2, 2])
        (torch.Size([5, 5]), 1.0, True)

    References:
        - Isensee et al., "nnU-Net", Nature Methods 2021 (the Gaussian importance of a window); as MONAI's
        - ``sliding_window_inference(mode="gaussian")``.
    """
    check_positive("sigma_scale", sigma_scale)
    weights = torch.ones((), dtype=torch.float64)
    for n in size:
        check_int("size", n, 1)
        x = torch.arange(n, dtype=torch.float64) - (n - 1) / 2
        axis = torch.exp(-(x**2) / (2 * (sigma_scale * n) ** 2))
        weights = weights.unsqueeze(-1) * axis
    weights = weights.clamp(min=max(float(weights.min()), 1e-3))
    return weights.to(device=device, dtype=dtype)


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """First index of every window along one axis of length ``size >= window``.

    Windows step by ``max(1, int(window * (1 - overlap)))`` from 0, and the last one ends
    exactly at ``size``, so every voxel is covered.

    Examples:
        >>> window_starts(100, window=48, overlap=0.5)   # the last window ends at 100
        [0, 24, 48, 52]
    """
    if size <= window:
        return [0]
    stride = max(1, int(window * (1 - overlap)))
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


@torch.no_grad()
def _window(window: object, dims: int) -> tuple[int, ...]:
    """The window's edges: one int (or numpy integer) for every axis, or ``dims`` of them."""

    def edge(n: object) -> int | None:
        ok = isinstance(n, (int, np.integer)) and not isinstance(n, (bool, np.bool_))
        return int(n) if ok and int(n) >= 1 else None  # type: ignore[call-overload]

    single = edge(window)
    if single is not None:
        return (single,) * dims
    if isinstance(window, Sequence) and not isinstance(window, str) and len(window) == dims:
        edges = [edge(n) for n in window]
        if all(e is not None for e in edges):
            return tuple(e for e in edges if e is not None)
    raise ValueError(f"window must be an int >= 1 or {dims} of them (one per spatial axis), got {window!r}")


def _check_logits(logits: object, crops: Tensor) -> Tensor:
    """The model's output for ``crops``, checked to be logits ``(B, K, *window)``."""
    if not isinstance(logits, Tensor):
        raise TypeError(
            f"model must return one logits tensor (B, K, *window), got {type(logits).__name__}; wrap a "
            "model that returns several outputs (deep supervision) to return the first"
        )
    expected = (crops.shape[0], "K", *crops.shape[2:])
    if (
        logits.dim() != crops.dim()
        or logits.shape[0] != crops.shape[0]
        or logits.shape[2:] != crops.shape[2:]
    ):
        raise ValueError(
            f"model must map windows {tuple(crops.shape)} to logits {expected} of the same size, got "
            f"{tuple(logits.shape)} (a model that downsamples, or moves the batch axis, cannot be blended)"
        )
    return logits.float()


def sliding_window_inference(
    model: Callable[[Tensor], Tensor],
    images: Tensor,
    window: int | Sequence[int],
    *,
    overlap: float = 0.5,
    weighting: Literal["gaussian", "constant"] = "gaussian",
    sigma_scale: float = 0.125,
    batch_size: int = 4,
    device: torch.device | str | None = None,
) -> Tensor:
    """Logits of whole images, predicted window by window and blended.

    Each image is padded with its own minimum where it is smaller than the window; the
    result does not depend on ``batch_size`` or on the other images of the batch.

    Args:
        model: maps ``(B, C, *window)`` to logits ``(B, K, *window)``.
        images: ``(N, C, *spatial)`` on any device.
        window: the window's edge (one int for every axis) or edges.
        overlap: share of a window that the next one overlaps, in ``[0, 1)``.
        weighting: ``"gaussian"`` (:func:`gaussian_weights`) or ``"constant"`` (plain mean).
        sigma_scale: the Gaussian's width as a fraction of the window.
        batch_size: windows per forward pass.
        device: where the model runs (default: the images' device); the blended result is
            returned on the images' device, in float32.

    Returns:
        ``(N, K, *spatial)`` blended logits.

    Examples:
        >>> net = lambda x: torch.cat([x, -x], 1)
        >>> sliding_window_inference(net, torch.ones(1, 1, 40, 40, 40), 32).shape
        torch.Size([1, 2, 40, 40, 40])

    References:
        - Isensee et al., "nnU-Net: a self-configuring method for deep learning-based biomedical image
          segmentation", Nature Methods 2021.
    """
    if not isinstance(images, Tensor) or images.ndim < 3:
        raise ValueError(
            f"images must be a tensor (N, C, *spatial) with 1-3 spatial axes, got "
            f"{getattr(images, 'shape', type(images).__name__)}"
        )
    spatial = tuple(images.shape[2:])
    roi = _window(window, len(spatial))
    check_unit_interval("overlap", overlap, include_one=False)
    check_choice("weighting", weighting, ("gaussian", "constant"))
    check_int("batch_size", batch_size, 1)
    if images.is_floating_point() and not torch.isfinite(images).all():
        raise ValueError(
            f"images hold {int((~torch.isfinite(images)).sum())} NaN or infinite values: each makes NaN "
            "logits for every window that holds it"
        )
    run_on = images.device if device is None else check_device(device)
    weights = (
        gaussian_weights(roi, sigma_scale, device=run_on)
        if weighting == "gaussian"
        else torch.ones(roi, device=run_on)
    )
    grid = [window_starts(max(s, n), n, overlap) for s, n in zip(spatial, roi, strict=True)]
    corners = [
        tuple(c) for c in torch.cartesian_prod(*[torch.tensor(g) for g in grid]).view(-1, len(roi)).tolist()
    ]
    outputs = []
    for image in images:
        padded = _pad_to(image, roi).to(run_on)
        total: Tensor | None = None
        norm = torch.zeros(padded.shape[1:], device=run_on)
        for i in range(0, len(corners), batch_size):
            chunk = corners[i : i + batch_size]
            crops = torch.stack([padded[_all_channels(_box(c, roi))] for c in chunk])
            logits = _check_logits(model(crops), crops)
            if total is None:
                total = torch.zeros((logits.shape[1], *padded.shape[1:]), device=run_on)
            for c, out in zip(chunk, logits, strict=True):
                box = _box(c, roi)
                total[_all_channels(box)] += out * weights
                norm[box] += weights
        assert total is not None  # at least one window
        blended = total / norm
        outputs.append(blended[_all_channels(tuple(slice(0, s) for s in spatial))].to(images.device))
    return torch.stack(outputs)


def _box(corner: Sequence[int], roi: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(c, c + n) for c, n in zip(corner, roi, strict=True))


def _all_channels(box: tuple[slice, ...]) -> tuple[slice, ...]:
    return (slice(None), *box)


def _pad_to(image: Tensor, roi: Sequence[int]) -> Tensor:
    """Pad ``(C, *spatial)`` at the end of each axis with its minimum up to at least ``roi``."""
    pad = [max(0, n - s) for s, n in zip(image.shape[1:], roi, strict=True)]
    if not any(pad):
        return image
    widths = [w for p in reversed(pad) for w in (0, p)]
    return F.pad(image.unsqueeze(0), widths, value=float(image.min())).squeeze(0)
