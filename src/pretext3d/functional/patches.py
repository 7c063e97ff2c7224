"""Grid cells and batched patch extraction, shared by the jigsaw and relative-patch tasks.

Cells are numbered in row-major order over the spatial axes: in 3D the cell at grid
position ``(i, j, k)`` has index ``(i * grid + j) * grid + k``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["cell_origins", "extract_patches", "standardize"]


def cell_origins(cell_size: Sequence[int], grid: int, device: torch.device | None = None) -> Tensor:
    """Corner of every grid cell, in row-major cell order.

    Args:
        cell_size: cell edge per spatial axis, e.g. ``(42, 42, 42)``.
        grid: cells per axis.
        device: where to put the result.

    Returns:
        ``LongTensor (grid**d, d)``: row ``c`` is the first voxel of cell ``c``.

    Examples:
        >>> cell_origins((4, 5), grid=2).tolist()   # cells of 4 x 5 pixels in a 2 x 2 grid, row-major
        [[0, 0], [0, 5], [4, 0], [4, 5]]
    """
    axes = [torch.arange(grid, device=device) * size for size in cell_size]
    return torch.cartesian_prod(*axes).reshape(grid ** len(cell_size), len(cell_size))


def extract_patches(x: Tensor, starts: Tensor, patch_size: Sequence[int]) -> Tensor:
    """Crop a patch per ``(sample, slot)`` at its own corner, all in one gather.

    Every patch is one row of a single overlapping strided view of ``x`` (row ``r`` is
    the patch whose corner voxel sits at storage offset ``r``), so one ``index_select``
    copies all of them, at close to copy speed, with no Python loop over samples or
    patches. (2.6x faster than advanced indexing of ``x.unfold(...)`` windows for 8 x 27
    patches of 39^3 on a 2-core CPU.)

    Args:
        x: ``(B, C, *spatial)``.
        starts: ``(B, P, d)`` integer corners; patch ``[b, p]`` is
            ``x[b, :, s0:s0 + p0, s1:s1 + p1, ...]`` with ``s = starts[b, p]``. They
            must keep the patch inside ``x`` (not checked here).
        patch_size: patch edge per spatial axis.

    Returns:
        ``(B, P, C, *patch_size)``, contiguous.

    Examples:
        >>> x = torch.arange(16.0).reshape(1, 1, 4, 4)
        >>> patches = extract_patches(x, torch.tensor([[[0, 0], [2, 1]]]), patch_size=(2, 2))
        >>> patches.shape, patches[0, 1, 0].tolist()   # the second patch starts at row 2, column 1
        (torch.Size([1, 2, 1, 2, 2]), [[9.0, 10.0], [13.0, 14.0]])
    """
    batch, num = starts.shape[:2]
    strides = torch.tensor(x.stride(), device=starts.device)
    corner = torch.arange(batch, device=starts.device)[:, None] * strides[0]
    corner = corner + (starts * strides[2:]).sum(-1)  # (B, P) storage offsets
    spatial_strides = x.stride()[2:]
    extent = (x.shape[1] - 1) * x.stride(1) + sum(
        (p - 1) * s for p, s in zip(patch_size, spatial_strides, strict=True)
    )
    last = sum((n - 1) * s for n, s in zip(x.shape, x.stride(), strict=True))
    rows = x.as_strided(
        (last - extent + 1, x.shape[1], *patch_size),
        (1, x.stride(1), *spatial_strides),
        x.storage_offset(),
    )
    patches = torch.index_select(rows, 0, corner.flatten().to(x.device))
    return patches.view(batch, num, *patches.shape[1:])


def standardize(x: Tensor, spatial_dims: int, *, inplace: bool = False) -> Tensor:
    """Each channel of each patch to zero mean and unit variance over its last ``spatial_dims`` axes.

    ``(x - mean) / (std + 1e-5)`` with the population std: what the grid tasks' tile
    normalisation and CPC's patch normalisation apply.

    Args:
        x: ``(..., C, *spatial)``, e.g. tiles ``(B, P, C, *patch)``.
        spatial_dims: the number of trailing spatial axes.
        inplace: overwrite ``x`` (no new tensor; not for a tensor autograd still needs).

    Returns:
        ``x``'s shape (``x`` itself with ``inplace``).

    Examples:
        >>> out = standardize(torch.tensor([[[1.0, 3.0], [5.0, 5.0]]]), spatial_dims=1)
        >>> out.round(decimals=3).tolist()   # a constant channel becomes 0
        [[[-1.0, 1.0], [0.0, 0.0]]]
    """
    var, mean = torch.var_mean(x, tuple(range(x.dim() - spatial_dims, x.dim())), correction=0, keepdim=True)
    if inplace:
        return x.sub_(mean).div_(var.sqrt_().add_(1e-5))
    return (x - mean) / (var.sqrt() + 1e-5)
