"""Jigsaw puzzles (Noroozi & Favaro, ECCV 2016; in 3D, Taleb et al., NeurIPS 2020)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from os import PathLike
from typing import Literal

import torch
from torch import Tensor

from pretext3d._checks import check_int
from pretext3d._random import randint
from pretext3d.config import SpatialDims
from pretext3d.permutations import HammingStats, hamming_stats, load_permutation_set, permutation_set
from pretext3d.registry import register_task
from pretext3d.tasks._grid import GridCrop, GridPatchTask
from pretext3d.tasks.base import TaskParams, check_classes

__all__ = ["Jigsaw", "JigsawParams"]


@dataclass
class JigsawParams(TaskParams):
    """The parameters of one :class:`Jigsaw` call.

    Attributes:
        permutation: ``LongTensor (B,)``: index into ``task.permutations`` (also the target).
        offsets: ``LongTensor (B, grid**d, d)``: each slot's patch offset inside its cell,
            in ``[gap // 2, gap // 2 + jitter]`` (voxels).
        crop: the crop before tiling (``None`` with ``crop_scale=None``).
        channels: ``LongTensor (B, grid**d)``: the channel each slot keeps (``color="drop"``
            on images of several channels; else ``None``).
        tile_flips: ``BoolTensor (B, grid**d, d)``: mirror each slot's patch along each axis
            (``None`` with ``tile_flip=False``).

    Examples:
        >>> task = Jigsaw(spatial_dims=2, grid=2, num_permutations=4, jitter=0, gap=0, crop_scale=None,
        ...               normalize_tiles=False, tile_flip=False)   # no defences: the tiles as cut
        >>> x = torch.arange(16.0).reshape(1, 1, 4, 4)
        >>> params = JigsawParams(torch.tensor([1]), offsets=torch.zeros(1, 4, 2, dtype=torch.long))
        >>> views, targets = task.apply_params(x, params)
        >>> # slot p shows cell permutations[1][p]; each cell's first pixel tells which one it is
        >>> [int(v[0, 0, 0]) for v in views[0]] == [int(x.flatten()[8 * (c // 2) + 2 * (c % 2)])
        ...                                          for c in task.permutations[1]]
        True
    """

    permutation: Tensor
    offsets: Tensor
    crop: GridCrop | None = None
    channels: Tensor | None = None
    tile_flips: Tensor | None = None


@register_task("jigsaw")
class Jigsaw(GridPatchTask[JigsawParams]):
    """Shuffle the grid cells of each image by one permutation of a fixed set.

    The class is the permutation's index.

    Cells are numbered in row-major order over the spatial axes. Slot ``p`` of the
    output receives cell ``perm[p]`` of the sample's permutation ``perm``, so
    ``views[b, p] == patch(x[b], cell=permutations[targets[b], p])``; undo it with
    ``views[:, permutations[targets].argsort(-1)]``.

    The default set comes from :func:`~pretext3d.permutation_set`: for the 3D 3x3x3 grid
    every pair of its 100 permutations differs in at least 26 of the 27 cells (the
    original's random set: 19).

    Args:
        spatial_dims: 2 or 3.
        grid: cells per axis (``grid**spatial_dims`` cells in all).
        num_permutations: size of the permutation set, i.e. ``num_classes``; ``None`` (the
            default): 100, or every permutation where the grid has fewer (``4! = 24`` for a
            2D grid of 2).
        jitter: how far a patch moves inside its cell: voxels (int) or a fraction of the
            cell (float); in training a random offset in ``[0, jitter]`` per patch (so
            borders cannot be matched), in eval mode the centre.
        gap: voxels (int) or fraction of the cell (float) always left out between
            neighbouring patches; ``patch = cell - gap - jitter``.
        crop_scale: ``(low, high)``: crop each image to a random box of side ``low..high``
            of the image's at a random place, resampled back to the image's size, before
            tiling, so that absolute position gives no cell away; ``None``: tile the whole
            image.
        normalize_tiles: each patch's channels to zero mean and unit variance.
        tile_flip: mirror each patch at random along each axis, independently of the others.
        color: ``"drop"``: each patch of a several-channel image keeps one random channel,
            the others are set to their mean (against chromatic aberration and colour
            casts; single-channel images are unaffected); ``"none"``: keep colours.
        seed: seed of the permutation set (not of the sampling; pass a ``generator`` to
            the call for that).
        permutations: a set to use instead: a ``(num_permutations, grid**d)`` integer
            tensor or the path of a ``.npy`` file (0- or 1-based).
        check_finite: reject NaN/inf input.

    Attributes:
        permutations: ``LongTensor (num_permutations, grid**d)``.
        num_patches: ``grid**d``.

    Shapes:
        input ``(B, C, *spatial)`` -> views ``(B, grid**d, C, *patch)``, targets ``(B,)``,
        where ``patch = spatial // grid - jitter - gap`` (in voxels).

    Defaults and shortcuts: the defaults defend against one tile giving its cell away
    (why each one, and the measurements: ``docs/tasks/index.md``, "Shortcuts"): a random crop of
    40-70 % of each side before tiling; tiles mirrored at random and normalised; 10 % jitter and a
    10 % gap; colour dropping. ``jitter=3, gap=0, crop_scale=None, normalize_tiles=False,
    tile_flip=False, color="none"`` is the behaviour of 0.1 (and Taleb et al.'s 3D jigsaw: cell
    42, patch 39).

    Examples:
        >>> task = Jigsaw(spatial_dims=3, grid=3, num_permutations=100)
        >>> views, targets = task(torch.randn(2, 1, 96, 96, 96), generator=0)
        >>> views.shape, targets.shape, task.num_classes   # 27 patches of 32 - 3 (jitter) - 3 (gap) voxels
        (torch.Size([2, 27, 1, 26, 26, 26]), torch.Size([2]), 100)

    References:
        - Noroozi & Favaro, "Unsupervised Learning of Visual Representations by Solving Jigsaw Puzzles", ECCV
          2016.
        - Taleb et al., "3D Self-Supervised Methods for Medical Imaging", NeurIPS 2020.
    """

    permutations: Tensor
    params_type = JigsawParams

    def __init__(
        self,
        spatial_dims: SpatialDims,
        grid: int = 3,
        num_permutations: int | None = None,
        jitter: int | float = 0.1,
        seed: int = 0,
        *,
        gap: int | float = 0.1,
        crop_scale: tuple[float, float] | None = (0.4, 0.7),
        normalize_tiles: bool = True,
        tile_flip: bool = True,
        color: Literal["drop", "none"] = "drop",
        permutations: Tensor | str | PathLike[str] | None = None,
        check_finite: bool = True,
    ) -> None:
        super().__init__(
            spatial_dims, check_int("grid", grid, 2), jitter, gap=gap, crop_scale=crop_scale,
            normalize_tiles=normalize_tiles, tile_flip=tile_flip, color=color, check_finite=check_finite,
        )  # fmt: skip
        if num_permutations is None:  # 100, or all there are
            num_permutations = 100 if self.num_cells > 4 else math.factorial(self.num_cells)
        check_int("num_permutations", num_permutations, 2)  # one permutation: a one-class task
        if self.num_cells <= 20 and num_permutations > math.factorial(self.num_cells):
            raise ValueError(
                f"num_permutations must be <= {self.num_cells}! = {math.factorial(self.num_cells)}, "
                f"the number of distinct permutations of a {grid}**{spatial_dims} grid; "
                f"got {num_permutations}"
            )
        if permutations is None:
            perms = permutation_set(self.num_cells, num_permutations, seed=seed)
        else:
            perms = _external_set(permutations, self.num_cells)
            if len(perms) != num_permutations:
                raise ValueError(
                    f"permutations holds {len(perms)} permutations but num_permutations="
                    f"{num_permutations}; pass num_permutations={len(perms)}"
                )
        self.register_buffer("permutations", perms, persistent=True)
        self.num_classes = num_permutations
        self.num_patches = self.num_cells

    @property
    def hamming(self) -> HammingStats:
        """Minimum and mean pairwise Hamming distance of the permutation set."""
        return hamming_stats(self.permutations)

    def _randomize(self, x: Tensor, generator: torch.Generator | None) -> JigsawParams:
        permutation = randint(self.num_classes, (x.shape[0],), generator, x.device)
        return JigsawParams(permutation, *self._draw_grid_params(x, self.num_cells, generator))

    def _check_params(self, x: Tensor, params: JigsawParams) -> None:
        params.permutation = check_classes(
            params.permutation, x.shape[0], self.num_classes, "params.permutation"
        )
        self._check_grid_params(x, params, self.num_cells)

    def _make_views(self, x: Tensor, params: JigsawParams) -> tuple[Tensor, Tensor]:
        cells = self.permutations[params.permutation]
        return self._tiles(x, cells, params), params.permutation

    def tile_cells(self, targets: Tensor) -> Tensor:
        """The cell each slot shows, ``(B, num_patches)``, for the classes ``targets (B,)``."""
        return self.permutations[targets]

    def extra_repr(self) -> str:
        """The constructor arguments, for ``repr``."""
        return (
            f"spatial_dims={self.spatial_dims}, grid={self.grid}, "
            f"num_permutations={self.num_classes}, {self._defences_repr()}"
        )


def _external_set(perms: Tensor | str | PathLike[str], num_cells: int) -> Tensor:
    if not isinstance(perms, Tensor):
        return load_permutation_set(perms, num_cells)
    if perms.dim() != 2 or perms.shape[1] != num_cells or perms.is_floating_point():
        raise ValueError(
            f"permutations must be an integer tensor (count, {num_cells}), got dtype "
            f"{perms.dtype} and shape {tuple(perms.shape)}"
        )
    perms = perms.long().cpu()
    if not torch.equal(perms.sort(dim=1).values, torch.arange(num_cells).expand_as(perms)):
        raise ValueError(f"every row of permutations must be a permutation of 0..{num_cells - 1}")
    if len(torch.unique(perms, dim=0)) != len(perms):
        raise ValueError("permutations contains repeated rows")
    return perms.clone()
