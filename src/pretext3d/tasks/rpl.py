"""Relative patch location (Doersch et al., ICCV 2015; in 3D, Taleb et al., NeurIPS 2020)."""

from __future__ import annotations

import torch
from torch import Tensor

from pretext3d._checks import check_int
from pretext3d.tasks._grid import GridPatchTask

__all__ = ["RelativePatchLocation"]


class RelativePatchLocation(GridPatchTask):
    """Show the centre cell and one other cell; the class is where the other one lies.

    The grid and patches are those of :class:`~pretext3d.tasks.Jigsaw`. The query's
    class is its row-major cell index with the centre skipped: for ``grid=3`` classes
    ``0..7`` in 2D and ``0..25`` in 3D, and cell ``c`` has class ``c`` below the centre
    index ``(grid**d - 1) // 2`` and ``c - 1`` above it.

    Args:
        spatial_dims: 2 or 3.
        grid: cells per axis, odd so that there is a centre cell.
        jitter: as in :class:`~pretext3d.tasks.Jigsaw`.
        check_finite: reject NaN/inf input.

    Shapes:
        input ``(B, C, *spatial)`` -> views ``(B, 2, C, *patch)`` (slot 0 the centre,
        slot 1 the query), labels ``(B,)`` in ``[0, grid**d - 1)``.
    """

    def __init__(
        self, spatial_dims: int, grid: int = 3, jitter: int = 3, *, check_finite: bool = True
    ) -> None:
        if check_int("grid", grid, 3) % 2 == 0:
            raise ValueError(f"grid must be odd (3, 5, ...) so that a centre cell exists, got {grid}")
        super().__init__(spatial_dims, grid, jitter, check_finite=check_finite)
        self.centre = (self.num_cells - 1) // 2
        self.num_classes = self.num_cells - 1
        self.num_patches = 2

    def query_cells(self, labels: Tensor) -> Tensor:
        """Row-major cell index of each label's query cell."""
        cells: Tensor = labels + (labels >= self.centre).long()
        return cells

    def _views(self, x: Tensor, labels: Tensor, generator: torch.Generator | None) -> Tensor:
        cells = torch.stack([torch.full_like(labels, self.centre), self.query_cells(labels)], dim=1)
        return self._crop(x, cells, generator)

    def extra_repr(self) -> str:
        """The constructor arguments, for ``repr``."""
        return f"spatial_dims={self.spatial_dims}, grid={self.grid}, jitter={self.jitter}"
