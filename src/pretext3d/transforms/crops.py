"""Crops: batched random crops of tensors, one random crop of an array, label-guided crops.

Every crop the library takes lives here: :func:`random_crops` (a batch on any device, in
one gather), :func:`random_crop` (one NumPy array in a ``Dataset`` worker, padded where too
small) and :func:`foreground_crops` (volumes with their label maps, for segmentation).
The grid tasks' patches are cut by :func:`pretext3d.functional.extract_patches`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from pretext3d._checks import shape_of
from pretext3d._random import as_generator, rand
from pretext3d.functional.patches import extract_patches

__all__ = ["foreground_crops", "random_crop", "random_crops"]


def random_crops(x: Tensor, size: Sequence[int], generator: torch.Generator | int | None = None) -> Tensor:
    """One uniformly placed crop of ``size`` per sample, in one gather.

    Rotation prediction on random sub-crops cannot lean on the body outline the way a
    whole-volume task can (see ``docs/tasks/rotation.md``). Tensors on any device; for one array
    in a ``Dataset`` see :func:`random_crop`.

    Args:
        x: ``(B, C, *spatial)``.
        size: crop edge per spatial axis, each ``<=`` that axis.
        generator: source of the corners (drawn on the generator's device, or ``x``'s).

    Returns:
        ``(B, C, *size)``, contiguous.

    Examples:
        >>> random_crops(torch.randn(2, 1, 40, 40, 40), (32, 32, 32), generator=0).shape
        torch.Size([2, 1, 32, 32, 32])
    """
    if not isinstance(x, Tensor) or x.dim() < 3 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch (B, C, *spatial), got {shape_of(x)}")
    generator = as_generator(generator)
    spatial = x.shape[2:]
    if len(size) != len(spatial) or any(not 1 <= s <= n for s, n in zip(size, spatial, strict=True)):
        raise ValueError(
            f"size must give one crop edge in 1..n per spatial axis of x {tuple(spatial)}, got {tuple(size)}"
        )
    high = torch.tensor([n - s + 1 for s, n in zip(size, spatial, strict=True)], device=x.device)
    starts = (rand((x.shape[0], 1, len(size)), generator, x.device) * high).long()
    return extract_patches(x, starts, size)[:, 0]


def random_crop(
    array: np.ndarray, size: Sequence[int], generator: torch.Generator | int | None = None
) -> np.ndarray:
    """A uniformly placed crop of ``size`` from the last ``len(size)`` axes, zero-padded where too small.

    Examples:
        >>> import numpy as np
        >>> random_crop(np.ones((1, 10, 10)), (8, 8), generator=0).shape
        (1, 8, 8)
        >>> # zero-padded where too small: 4 x 8 ones
        >>> int(random_crop(np.ones((1, 4, 10)), (8, 8), generator=0).sum())
        32
    """
    generator = as_generator(generator)
    if not len(size) or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in size):
        raise ValueError(f"size must be crop edges >= 1, got {tuple(size)}")
    if array.ndim < len(size):
        raise ValueError(f"array has {array.ndim} axes, fewer than the {len(size)} of size {tuple(size)}")
    spatial = array.shape[-len(size) :]
    pad = [(0, 0)] * (array.ndim - len(size)) + [
        (0, max(0, s - n)) for s, n in zip(size, spatial, strict=True)
    ]
    if any(p[1] for p in pad):
        array = np.pad(array, pad)
    spatial = array.shape[-len(size) :]
    starts = [
        int(torch.randint(0, n - s + 1, (1,), generator=generator))
        for s, n in zip(size, spatial, strict=True)
    ]
    lead = array.ndim - len(size)
    region = [slice(None)] * lead + [slice(a, a + s) for a, s in zip(starts, size, strict=True)]
    crop: np.ndarray = array[tuple(region)]
    return crop


def foreground_crops(
    x: Tensor, y: Tensor, size: int, oversampling: float, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Cubic crops of volumes and their label maps, centred on foreground with probability ``oversampling``.

    nnU-Net's foreground oversampling: with probability ``oversampling`` a crop is centred
    on a uniformly drawn voxel with label > 0 (shifted to stay inside the volume), else
    it is placed uniformly; images and labels are cut alike.

    Args:
        x: ``(B, C, D, H, W)`` images.
        y: ``(B, D, H, W)`` integer label maps.
        size: crop edge, at most every spatial size.
        oversampling: in ``[0, 1]``.
        generator: the source of randomness (a CPU generator).

    Returns:
        ``(B, C, size, size, size)`` and ``(B, size, size, size)``.

    Examples:
        >>> x, y = torch.randn(2, 1, 16, 16, 16), torch.zeros(2, 16, 16, 16, dtype=torch.long)
        >>> y[:, 12:, 12:, 12:] = 1   # a small foreground corner
        >>> g = torch.Generator().manual_seed(0)
        >>> xc, yc = foreground_crops(x, y, size=8, oversampling=1.0, generator=g)
        >>> xc.shape, bool((yc.flatten(1).amax(1) == 1).all())   # every crop holds foreground
        (torch.Size([2, 1, 8, 8, 8]), True)

    References:
        - Isensee et al., "nnU-Net: a self-configuring method for deep learning-based biomedical image
          segmentation", Nature Methods 2021.
    """
    shape = torch.tensor(y.shape[1:])
    if (shape < size).any():
        raise ValueError(f"crop={size} exceeds the volume shape {tuple(y.shape[1:])}")
    xs, ys = [], []
    for i in range(x.shape[0]):
        fg = torch.nonzero(y[i] > 0)
        if len(fg) and float(torch.rand(1, generator=generator)) < oversampling:
            centre = fg[int(torch.randint(len(fg), (1,), generator=generator))]
            start = (centre - size // 2).clamp(min=0)
            start = torch.minimum(start, shape - size)
        else:
            start = (torch.rand(3, generator=generator) * (shape - size + 1)).long()
        region = tuple(slice(int(s), int(s) + size) for s in start)
        xs.append(x[i][(slice(None), region[0], region[1], region[2])])
        ys.append(y[i][region])
    return torch.stack(xs), torch.stack(ys)
