"""Shared geometry of the grid tasks (jigsaw, relative patch location)."""

from __future__ import annotations

import torch
from torch import Tensor

from pretext3d._checks import check_int
from pretext3d._random import randint
from pretext3d.functional.patches import cell_origins, extract_patches
from pretext3d.tasks.base import ClassificationTask, P


class GridPatchTask(ClassificationTask[P]):
    """A task that cuts each image into ``grid`` cells per axis and crops a patch per cell.

    The cell edge along an axis is ``size // grid`` (the remainder at the far end is
    unused); the patch edge is ``cell - jitter``. Each patch sits at an offset in
    ``[0, jitter]`` per axis inside its cell: drawn per sample and patch in training
    mode (so borders cannot be matched), ``jitter // 2`` (the centre crop) in eval mode.
    """

    def __init__(self, spatial_dims: int, grid: int, jitter: int, *, check_finite: bool) -> None:
        super().__init__(spatial_dims, check_finite=check_finite)
        self.grid = check_int("grid", grid, 1)
        self.jitter = check_int("jitter", jitter, 0)
        self.num_cells = grid**self.spatial_dims

    def geometry(self, spatial_shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """``(cell_size, patch_size)`` for an image of ``spatial_shape``."""
        cell = tuple(size // self.grid for size in spatial_shape)
        return cell, tuple(c - self.jitter for c in cell)

    def _check_input(self, x: Tensor) -> None:
        spatial = tuple(x.shape[2:])
        need = self.grid * (self.jitter + 1)
        if min(spatial) < need:
            raise ValueError(
                f"x's spatial shape {spatial} is too small for grid={self.grid} and "
                f"jitter={self.jitter}: every axis needs at least grid * (jitter + 1) = {need} "
                "voxels so that patches are at least 1 voxel wide"
            )

    def _offsets(
        self, batch: int, patches: int, generator: torch.Generator | None, device: torch.device
    ) -> Tensor:
        """Patch offsets ``(B, patches, d)`` inside their cells, as the mode says."""
        shape = (batch, patches, self.spatial_dims)
        if self.training and self.jitter > 0:
            return randint(self.jitter + 1, shape, generator, device)
        return torch.full(shape, self.jitter // 2, dtype=torch.long, device=device)

    def _check_offsets(self, offsets: Tensor, batch: int, patches: int) -> None:
        shape = (batch, patches, self.spatial_dims)
        if not isinstance(offsets, Tensor) or offsets.is_floating_point() or offsets.shape != shape:
            raise ValueError(f"params.offsets must be an integer tensor of shape {shape}, got {offsets!r}")
        if bool(((offsets < 0) | (offsets > self.jitter)).any()):
            raise ValueError(f"params.offsets must lie in [0, jitter={self.jitter}]")

    def _crop(self, x: Tensor, cells: Tensor, offsets: Tensor) -> Tensor:
        """Crop cells ``(B, P)`` at ``offsets (B, P, d)`` into ``(B, P, C, *patch)``."""
        cell, patch = self.geometry(tuple(x.shape[2:]))
        starts = cell_origins(cell, self.grid, x.device)[cells] + offsets
        return extract_patches(x, starts, patch)
