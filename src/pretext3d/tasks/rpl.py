"""Relative patch location (Doersch et al., ICCV 2015; in 3D, Taleb et al., NeurIPS 2020)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from pretext3d._checks import check_int
from pretext3d._random import randint
from pretext3d.config import SpatialDims
from pretext3d.registry import register_task
from pretext3d.tasks._grid import GridCrop, GridPatchTask
from pretext3d.tasks.base import TaskParams, check_classes

__all__ = ["RelativePatchLocation", "RelativePatchLocationParams"]


@dataclass
class RelativePatchLocationParams(TaskParams):
    """The parameters of one :class:`RelativePatchLocation` call.

    Attributes:
        location: ``LongTensor (B,)``: where the query cell lies (also the target).
        offsets: ``LongTensor (B, 2, d)``: the centre's and the query's patch offsets
            inside their cells, in ``[gap // 2, gap // 2 + jitter]`` (voxels).
        crop: the crop before tiling (``None`` with ``crop_scale=None``).
        channels: ``LongTensor (B, 2)``: the channel each patch keeps (``color="drop"`` on
            images of several channels; else ``None``).
        tile_flips: ``BoolTensor (B, 2, d)``: mirror each slot's patch along each axis
            (``None`` with ``tile_flip=False``).

    Examples:
        >>> task = RelativePatchLocation(spatial_dims=2, grid=3, jitter=0, gap=0, crop_scale=None,
        ...                              normalize_tiles=False, tile_flip=False)   # the tiles as cut
        >>> x = torch.arange(81.0).reshape(1, 1, 9, 9)
        >>> params = RelativePatchLocationParams(torch.tensor([0]), torch.zeros(1, 2, 2, dtype=torch.long))
        >>> views, targets = task.apply_params(x, params)   # class 0: the top-left neighbour
        >>> # corners of the centre and the query cell
        >>> views[0, 0, 0, 0, 0].item(), views[0, 1, 0, 0, 0].item()
        (30.0, 0.0)
    """

    location: Tensor
    offsets: Tensor
    crop: GridCrop | None = None
    channels: Tensor | None = None
    tile_flips: Tensor | None = None


@register_task("rpl")
class RelativePatchLocation(GridPatchTask[RelativePatchLocationParams]):
    """Show the centre cell and one other cell; the class is where the other one lies.

    The grid and patches are those of :class:`~pretext3d.tasks.Jigsaw`. The query's
    class is its row-major cell index with the centre skipped: for ``grid=3`` classes
    ``0..7`` in 2D and ``0..25`` in 3D, and cell ``c`` has class ``c`` below the centre
    index ``(grid**d - 1) // 2`` and ``c - 1`` above it.

    Args:
        spatial_dims: 2 or 3.
        grid: cells per axis, odd so that there is a centre cell.
        jitter: as in :class:`~pretext3d.tasks.Jigsaw`.
        gap: as in :class:`~pretext3d.tasks.Jigsaw`.
        crop_scale: as in :class:`~pretext3d.tasks.Jigsaw`.
        normalize_tiles: as in :class:`~pretext3d.tasks.Jigsaw`.
        tile_flip: as in :class:`~pretext3d.tasks.Jigsaw`.
        color: as in :class:`~pretext3d.tasks.Jigsaw`.
        check_finite: reject NaN/inf input.

    Shapes:
        input ``(B, C, *spatial)`` -> views ``(B, 2, C, *patch)`` (slot 0 the centre,
        slot 1 the query), targets ``(B,)`` in ``[0, grid**d - 1)``.

    The shortcut defences and their defaults are :class:`~pretext3d.tasks.Jigsaw`'s;
    ``jitter=3, gap=0, crop_scale=None, normalize_tiles=False, tile_flip=False, color="none"``
    is the behaviour of 0.1.

    Examples:
        >>> task = RelativePatchLocation(spatial_dims=2, grid=3)
        >>> views, targets = task(torch.randn(4, 3, 64, 64), generator=0)
        >>> views.shape, task.num_classes   # slot 0 the centre, slot 1 the query; 8 neighbours in 2D
        (torch.Size([4, 2, 3, 17, 17]), 8)

    References:
        - Doersch et al., "Unsupervised Visual Representation Learning by Context Prediction", ICCV 2015.
        - Taleb et al., "3D Self-Supervised Methods for Medical Imaging", NeurIPS 2020.
    """

    params_type = RelativePatchLocationParams

    def __init__(
        self,
        spatial_dims: SpatialDims,
        grid: int = 3,
        jitter: int | float = 0.1,
        *,
        gap: int | float = 0.1,
        crop_scale: tuple[float, float] | None = (0.4, 0.7),
        normalize_tiles: bool = True,
        tile_flip: bool = True,
        color: Literal["drop", "none"] = "drop",
        check_finite: bool = True,
    ) -> None:
        if check_int("grid", grid, 3) % 2 == 0:
            raise ValueError(f"grid must be odd (3, 5, ...) so that a centre cell exists, got {grid}")
        super().__init__(
            spatial_dims, grid, jitter, gap=gap, crop_scale=crop_scale, normalize_tiles=normalize_tiles,
            tile_flip=tile_flip, color=color, check_finite=check_finite,
        )  # fmt: skip
        self.centre = (self.num_cells - 1) // 2
        self.num_classes = self.num_cells - 1
        self.num_patches = 2

    def query_cells(self, location: Tensor) -> Tensor:
        """Row-major cell index of each location's query cell."""
        cells: Tensor = location + (location >= self.centre).long()
        return cells

    def _randomize(self, x: Tensor, generator: torch.Generator | None) -> RelativePatchLocationParams:
        location = randint(self.num_classes, (x.shape[0],), generator, x.device)
        return RelativePatchLocationParams(location, *self._draw_grid_params(x, 2, generator))

    def _check_params(self, x: Tensor, params: RelativePatchLocationParams) -> None:
        params.location = check_classes(params.location, x.shape[0], self.num_classes, "params.location")
        self._check_grid_params(x, params, 2)

    def _make_views(self, x: Tensor, params: RelativePatchLocationParams) -> tuple[Tensor, Tensor]:
        location = params.location
        return self._tiles(x, self.tile_cells(location), params), location

    def tile_cells(self, targets: Tensor) -> Tensor:
        """The cell each slot shows, ``(B, num_patches)``, for the classes ``targets (B,)``."""
        return torch.stack([torch.full_like(targets, self.centre), self.query_cells(targets)], dim=1)

    def extra_repr(self) -> str:
        """The constructor arguments, for ``repr``."""
        return f"spatial_dims={self.spatial_dims}, grid={self.grid}, {self._defences_repr()}"
