"""Shared geometry of the grid tasks (jigsaw, relative patch location), and their shortcut defences.

A grid task is only worth its accuracy if no single tile gives its cell away. Whole images
do: the field-of-view border, vignetting and the body outline tell a tile's absolute position,
and the task is then solved without relating tiles (Doersch et al. 2015 call these "trivial
shortcuts"). The defences the grid-task papers used are options here, on by default:

* ``crop_scale``: a random crop of each image (side a random fraction in the range, at a
  random place), resampled back to the image's size, before tiling: the grid then sits
  anywhere on the anatomy, so the image's border (the field of view, the air around the body)
  no longer tells which cell a tile is (Noroozi & Favaro 2016 crop 225 of 256 px; Doersch et
  al. rescale at random). The cells are those of the cropped image, so the targets keep their
  meaning.
* ``normalize_tiles``: each tile's channels to zero mean and unit variance, so brightness
  and contrast (vignetting, a dark border) do not tell the cell (Noroozi & Favaro 2016).
* ``jitter`` and ``gap``: tiles smaller than their cells, placed at random within them, and
  kept apart, so edges and textures cannot be continued across tiles (Doersch et al. 2015;
  Noroozi & Favaro 2016).
* ``tile_flip``: each tile mirrored at random along each axis, independently of the others.
  A tile "points" to the image's centre (the body or the field of view fills the middle, air
  or black the corners), in a crop too; mirroring each tile hides which side faces inwards, so
  only *what* a tile shows can tell where it belongs (ours; CPC v2 augments each patch alike,
  Hénaff et al. 2020).
* ``color="drop"``: in images of several channels, each tile keeps one random channel and
  the others are set to the tile's mean, against chromatic aberration and colour casts
  (Doersch et al. 2015).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from pretext3d._checks import check_choice, check_int
from pretext3d._random import rand, randint
from pretext3d.config import SpatialDims
from pretext3d.functional.patches import cell_origins, extract_patches, standardize
from pretext3d.functional.rotation import apply_flips
from pretext3d.tasks.base import ClassificationTask, P, TaskParams

__all__ = ["NO_DEFENCES", "GridCrop", "GridPatchTask", "crop_resample", "crop_tiles"]

#: The grid tasks' options with every shortcut defence off: ``Jigsaw(3, jitter=3, **NO_DEFENCES)``
#: cuts the tiles as 0.1 did (and as Taleb et al.'s 3D jigsaw: cells of 42, patches of 39 at 128³).
NO_DEFENCES: dict[str, Any] = {
    "gap": 0,
    "crop_scale": None,
    "normalize_tiles": False,
    "tile_flip": False,
    "color": "none",
}


@dataclass
class GridCrop(TaskParams):
    """Where each image is cropped before tiling (``GridPatchTask(crop_scale=...)``).

    Attributes:
        scale: ``(B,)`` side of the crop as a fraction of the image's side.
        centre: ``(B, d)`` centre of the crop in normalised coordinates (``-1``: the first
            voxel's outer edge, ``1``: the last one's), within ``+-(1 - scale)``.

    Examples:
        >>> task = p3.tasks.Jigsaw(2, grid=2, num_permutations=4)   # crop_scale=(0.4, 0.7)
        >>> crop = task.randomize(torch.randn(3, 1, 16, 16), generator=0).crop
        >>> crop.scale.shape, bool(((crop.scale >= 0.4) & (crop.scale <= 0.7)).all()), crop.centre.shape
        (torch.Size([3]), True, torch.Size([3, 2]))
    """

    scale: Tensor
    centre: Tensor


def _amount(name: str, value: int | float) -> int | float:
    """A length: an int of voxels, or a float in ``[0, 1)`` as a fraction of the cell."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{name} must be an int (voxels) or a float in [0, 1) (a fraction of the cell), got {value!r}"
        )
    if isinstance(value, int):
        return check_int(name, value, 0)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} as a float is a fraction of the cell and must lie in [0, 1), got {value}")
    return float(value)


class GridPatchTask(ClassificationTask[P]):
    """A task that cuts each image into ``grid`` cells per axis and crops a patch per cell.

    After the optional random crop (``crop_scale``), the cell edge along an axis is
    ``size // grid`` (the remainder at the far end is unused). Per cell, ``gap`` voxels are
    always left out (half on each side) and the patch sits at an offset in ``[0, jitter]``
    inside the rest, so ``patch = cell - gap - jitter`` and neighbouring patches are at least
    ``gap`` apart. ``jitter`` and ``gap`` are voxels (int) or fractions of the smallest cell
    edge (float, rounded down). The jitter offset is drawn per sample and patch in training
    mode, and is ``jitter // 2`` (the centre) in eval mode. The crop is drawn in both modes:
    it is a defence, not an augmentation, and a held-out accuracy measured without it would
    let the shortcut back in.

    The module docstring says why each defence is there.

    Examples:
        >>> task = p3.tasks.RelativePatchLocation(2, grid=3, jitter=0.2, gap=0.1)
        >>> task.pixels((60, 60))   # (jitter, gap) in voxels: 20 % and 10 % of the 20-voxel cell
        (4, 2)
        >>> task.geometry((60, 60))   # (cell, patch): patch = cell - jitter - gap
        ((20, 20), (14, 14))
    """

    def __init__(
        self,
        spatial_dims: SpatialDims,
        grid: int,
        jitter: int | float,
        *,
        gap: int | float,
        crop_scale: tuple[float, float] | None,
        normalize_tiles: bool,
        tile_flip: bool,
        color: Literal["drop", "none"],
        check_finite: bool,
    ) -> None:
        super().__init__(spatial_dims, check_finite=check_finite)
        self.grid = check_int("grid", grid, 1)
        self.jitter = _amount("jitter", jitter)
        self.gap = _amount("gap", gap)
        if crop_scale is not None:
            if (
                not isinstance(crop_scale, (tuple, list))
                or len(crop_scale) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in crop_scale)
                or not 0 < crop_scale[0] <= crop_scale[1] <= 1
            ):
                raise ValueError(
                    f"crop_scale must be None (no crop) or a pair (low, high) with 0 < low <= high <= 1, "
                    f"the crop's side as a fraction of the image's; got {crop_scale!r}"
                )
            crop_scale = (float(crop_scale[0]), float(crop_scale[1]))
        self.crop_scale = crop_scale
        self.normalize_tiles = bool(normalize_tiles)
        self.tile_flip = bool(tile_flip)
        self.color = check_choice("color", color, ("drop", "none"))
        self.num_cells = grid**self.spatial_dims

    def pixels(self, spatial_shape: tuple[int, ...]) -> tuple[int, int]:
        """``(jitter, gap)`` in voxels for an image of ``spatial_shape``."""
        cell = min(size // self.grid for size in spatial_shape)
        return tuple(  # type: ignore[return-value]
            v if isinstance(v, int) else int(v * cell) for v in (self.jitter, self.gap)
        )

    def geometry(self, spatial_shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """``(cell_size, patch_size)`` for an image of ``spatial_shape``."""
        jitter, gap = self.pixels(spatial_shape)
        cell = tuple(size // self.grid for size in spatial_shape)
        return cell, tuple(c - jitter - gap for c in cell)

    def smallest_size(self) -> int:
        """The smallest image edge whose patches are at least 1 voxel wide with these settings.

        Examples:
            >>> p3.tasks.Jigsaw(2, grid=3, jitter=2, gap=1).smallest_size()   # 3 * (2 + 1 + 1)
            12
        """
        size = self.grid
        while min(self.geometry((size,))[1]) < 1:
            size += 1
        return size

    def _check_input(self, x: Tensor) -> None:
        spatial = tuple(x.shape[2:])
        _, patch = self.geometry(spatial)
        if min(patch) < 1:
            raise ValueError(
                f"x's spatial shape {spatial} is too small for grid={self.grid}, jitter={self.jitter} and "
                f"gap={self.gap}: patches would be {patch} voxels (patch = size // grid - jitter - gap); "
                f"every axis needs at least {self.smallest_size()} voxels with these settings, or lower "
                "grid, jitter or gap"
            )

    def _draw_grid_params(
        self, x: Tensor, patches: int, generator: torch.Generator | None
    ) -> tuple[Tensor, GridCrop | None, Tensor | None, Tensor | None]:
        """``(offsets, crop, channels, tile_flips)`` of a call, in the parameters' field order."""
        crop = self._randomize_crop(x, generator)
        offsets = self._offsets(x, patches, generator)
        return offsets, crop, self._channels(x, patches, generator), self._tile_flips(x, patches, generator)

    def _randomize_crop(self, x: Tensor, generator: torch.Generator | None) -> GridCrop | None:
        if self.crop_scale is None:
            return None
        low, high = self.crop_scale
        b = x.shape[0]
        scale = low + (high - low) * rand((b,), generator, x.device)
        centre = (2 * rand((b, self.spatial_dims), generator, x.device) - 1) * (1 - scale[:, None])
        return GridCrop(scale, centre)

    def _check_crop(self, crop: GridCrop | None, batch: int) -> None:
        if (crop is None) != (self.crop_scale is None):
            raise ValueError(
                f"params.crop must be {'a GridCrop' if self.crop_scale else 'None'} "
                f"for crop_scale={self.crop_scale}"
            )
        d = self.spatial_dims
        if crop is not None and (crop.scale.shape != (batch,) or crop.centre.shape != (batch, d)):
            raise ValueError(f"params.crop must hold scale ({batch},) and centre ({batch}, {d})")

    def _offsets(self, x: Tensor, patches: int, generator: torch.Generator | None) -> Tensor:
        """Patch offsets ``(B, patches, d)`` inside their cells (gap and jitter), as the mode says."""
        jitter, gap = self.pixels(tuple(x.shape[2:]))
        shape = (x.shape[0], patches, self.spatial_dims)
        if self.training and jitter > 0:
            return gap // 2 + randint(jitter + 1, shape, generator, x.device)
        return torch.full(shape, gap // 2 + jitter // 2, dtype=torch.long, device=x.device)

    def _check_offsets(self, x: Tensor, offsets: Tensor, patches: int) -> None:
        jitter, gap = self.pixels(tuple(x.shape[2:]))
        shape = (x.shape[0], patches, self.spatial_dims)
        if not isinstance(offsets, Tensor) or offsets.is_floating_point() or offsets.shape != shape:
            raise ValueError(f"params.offsets must be an integer tensor of shape {shape}, got {offsets!r}")
        low, high = gap // 2, gap // 2 + jitter
        if bool(((offsets < low) | (offsets > high)).any()):
            raise ValueError(f"params.offsets must lie in [gap // 2, gap // 2 + jitter] = [{low}, {high}]")

    def _tile_flips(self, x: Tensor, patches: int, generator: torch.Generator | None) -> Tensor | None:
        """Per tile and axis, whether it is mirrored (``tile_flip``), else ``None``."""
        if not self.tile_flip:
            return None
        return rand((x.shape[0], patches, self.spatial_dims), generator, x.device) < 0.5

    def _channels(self, x: Tensor, patches: int, generator: torch.Generator | None) -> Tensor | None:
        """The channel each tile keeps (``color="drop"``, several channels), else ``None``."""
        if self.color == "none" or x.shape[1] == 1:
            return None
        return randint(x.shape[1], (x.shape[0], patches), generator, x.device)

    def _check_channels(self, x: Tensor, channels: Tensor | None, patches: int) -> None:
        if (channels is None) != (self.color == "none" or x.shape[1] == 1):
            raise ValueError(
                "params.channels must be given exactly for color='drop' on images of several channels"
            )
        if channels is not None and (
            channels.shape != (x.shape[0], patches)
            or channels.is_floating_point()
            or bool(((channels < 0) | (channels >= x.shape[1])).any())
        ):
            raise ValueError(
                f"params.channels must be integers in [0, {x.shape[1]}) of shape ({x.shape[0]}, {patches})"
            )

    def _check_grid_params(self, x: Tensor, params: P, patches: int) -> None:
        self._check_crop(params.crop, x.shape[0])  # type: ignore[attr-defined]
        self._check_offsets(x, params.offsets, patches)  # type: ignore[attr-defined]
        self._check_channels(x, params.channels, patches)  # type: ignore[attr-defined]
        flips = params.tile_flips  # type: ignore[attr-defined]
        shape = (x.shape[0], patches, self.spatial_dims)
        if (flips is None) == self.tile_flip or (
            flips is not None and (flips.shape != shape or flips.dtype != torch.bool)
        ):
            raise ValueError(f"params.tile_flips must be a bool tensor {shape} exactly when tile_flip=True")

    def _tiles(self, x: Tensor, cells: Tensor, params: P) -> Tensor:
        """Crop the image, cut cells ``(B, P)`` at the offsets, mirror, normalise, drop colours."""
        crop: GridCrop | None = params.crop  # type: ignore[attr-defined]
        offsets: Tensor = params.offsets  # type: ignore[attr-defined]
        channels: Tensor | None = params.channels  # type: ignore[attr-defined]
        flips: Tensor | None = params.tile_flips  # type: ignore[attr-defined]
        cell, patch = self.geometry(tuple(x.shape[2:]))
        starts = cell_origins(cell, self.grid, x.device)[cells] + offsets
        if crop is not None:  # only the tiles' voxels of the resampled crop are computed, mirrored
            tiles = crop_tiles(x, crop.scale, crop.centre, starts, patch, flips)
        else:
            tiles = extract_patches(x, starts, patch)  # (B, P, C, *patch)
            if flips is not None:
                tiles = apply_flips(tiles.flatten(0, 1), flips.flatten(0, 1)).view(tiles.shape)
        if self.normalize_tiles:  # in place (the tiles are this call's own) unless autograd needs them
            tiles = standardize(tiles, self.spatial_dims, inplace=not tiles.requires_grad)
        if channels is not None:
            keep = F.one_hot(channels, x.shape[1]).to(tiles.dtype)  # (B, P, C)
            keep = keep.view(*keep.shape, *[1] * self.spatial_dims)
            tiles = tiles * keep + tiles.mean(tuple(range(3, tiles.dim())), keepdim=True) * (1 - keep)
        return tiles

    def tile_cells(self, targets: Tensor) -> Tensor:
        """The cell each slot shows, ``(B, num_patches)``, for the classes ``targets (B,)``."""
        raise NotImplementedError

    def _defences_repr(self) -> str:
        return (
            f"jitter={self.jitter}, gap={self.gap}, crop_scale={self.crop_scale}, "
            f"normalize_tiles={self.normalize_tiles}, tile_flip={self.tile_flip}, color={self.color!r}"
        )


def crop_resample(x: Tensor, scale: Tensor, centre: Tensor) -> Tensor:
    """Crop each sample to a box of side ``scale`` at ``centre`` and resample it to ``x``'s size.

    Linear interpolation (bilinear/trilinear) through ``grid_sample``, one call for the batch.

    Args:
        x: ``(B, C, *spatial)``.
        scale: ``(B,)`` side of the box as a fraction of each axis, in ``(0, 1]``.
        centre: ``(B, d)`` its centre in normalised coordinates (``[-1, 1]``, axis order of
            ``x``'s spatial axes).

    Returns:
        ``(B, C, *spatial)``.

    Examples:
        >>> x = torch.arange(16.0).reshape(1, 1, 4, 4)
        >>> torch.allclose(crop_resample(x, torch.ones(1), torch.zeros(1, 2)), x)   # the whole image
        True
    """
    d = x.dim() - 2
    b = x.shape[0]
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()  # positions in float32 at least
    theta = torch.zeros(b, d, d + 1, dtype=work.dtype, device=x.device)
    # affine_grid's coordinates run (x, y[, z]) = the spatial axes in reverse order
    theta[:, range(d), range(d)] = scale.to(work.dtype)[:, None]
    theta[:, :, d] = centre.to(work.dtype).flip(1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(work, grid, mode="bilinear", padding_mode="border", align_corners=False).to(x.dtype)


def crop_tiles(
    x: Tensor,
    scale: Tensor,
    centre: Tensor,
    starts: Tensor,
    patch: tuple[int, ...],
    flips: Tensor | None = None,
) -> Tensor:
    """The tiles of :func:`crop_resample`'s output, sampled straight from ``x``.

    Equal to ``extract_patches(crop_resample(x, scale, centre), starts, patch)`` (to float
    rounding) but computes only the tiles' voxels, and separably: the crop is a scale and a
    shift per sample along each axis, so (bi/tri)linear interpolation is a linear interpolation
    along one axis after the other. Each tile's footprint in ``x`` (at most ``patch + 2`` voxels
    per axis, as the crop is never larger than the image) is cut out in one gather, then the
    first and last axes are interpolated by a matmul per tile with its two-tap weights and a
    middle one by two row gathers and a ``lerp``, at each tile's own sample positions
    (``grid_sample``'s, ``align_corners=False``, border padding). Positions and weights are
    computed in float32 whatever ``x``'s precision (bf16 positions are up to a fifth of a voxel
    off at 128³), and the tiles come back in ``x``'s dtype. A NaN or inf in a tile's footprint
    spreads along its matmul rows, where ``grid_sample`` kept it to its neighbours (the tasks
    refuse non-finite input unless ``check_finite=False``).

    Args:
        x: ``(B, C, *spatial)``.
        scale: ``(B,)`` side of the crop as a fraction of each axis.
        centre: ``(B, d)`` its centre in normalised coordinates.
        starts: ``(B, P, d)`` integer corners of the tiles in the resampled crop (``x``'s size).
        patch: tile edge per spatial axis.
        flips: ``(B, P, d)`` bool: mirror that tile along that axis (its sample positions taken in
            reverse order, at no cost), as ``apply_flips`` on the tiles would; ``None``: none.

    Returns:
        ``(B, P, C, *patch)``.

    Examples:
        >>> x = torch.randn(2, 1, 12, 12)
        >>> scale, centre = torch.tensor([0.5, 0.8]), torch.tensor([[0.2, -0.1], [0.0, 0.1]])
        >>> starts = torch.tensor([[[0, 0], [6, 3]], [[2, 8], [5, 5]]])
        >>> expected = p3.functional.extract_patches(crop_resample(x, scale, centre), starts, (4, 4))
        >>> torch.allclose(crop_tiles(x, scale, centre, starts, (4, 4)), expected, atol=1e-5)
        True
    """
    b, p, d = starts.shape
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()
    exact = torch.float64 if x.dtype == torch.float64 else torch.float32
    corners, lows, highs, weights, windows = [], [], [], [], []
    for a in range(d):
        size = x.shape[2 + a]
        voxel = starts[..., a, None].to(exact) + torch.arange(patch[a], device=x.device, dtype=exact)
        normalised = (2 * voxel + 1) / size - 1  # the resampled crop's voxel centres (align_corners=False)
        sampled = scale.to(exact)[:, None, None] * normalised + centre.to(exact)[:, None, a, None]
        position = (((sampled + 1) * size - 1) / 2).clamp(0, size - 1)  # in x's voxels; border padding
        low = position.floor().long()  # (B, P, patch[a])
        window = min(patch[a] + 2, size)  # the span, one voxel to the right, one of float rounding
        corner = low[..., :1].clamp(max=size - window)  # (B, P, 1): the footprint's first voxel
        low, high, weight = low - corner, (low + 1).clamp(max=size - 1) - corner, position - position.floor()
        if flips is not None:  # a mirrored tile samples its positions in reverse order
            mirror = flips[..., a, None]
            low, high, weight = (torch.where(mirror, v.flip(-1), v) for v in (low, high, weight))
        lows.append(low)
        highs.append(high)
        weights.append(weight)
        corners.append(corner[..., 0])
        windows.append(window)
    tiles = extract_patches(work, torch.stack(corners, -1), windows)  # (B, P, C, *windows)
    n, c = b * p, x.shape[1]
    # the first and the last axis: a matmul per tile with its two-tap weights; the middle one
    # (3D): two row gathers and a lerp
    tiles = torch.bmm(
        _taps(lows[0], highs[0], weights[0], windows[0], work.dtype).transpose(1, 2).repeat_interleave(c, 0),
        tiles.view(n * c, windows[0], -1),
    )
    for a in range(1, d - 1):
        done = math.prod(patch[:a])  # axes already interpolated, between the tile and axis a
        rest = math.prod(windows[a + 1 :])
        base = torch.arange(n * c * done, device=x.device).view(n, c * done, 1) * windows[a]
        rows = tiles.reshape(-1, rest)
        low = rows.index_select(0, (base + lows[a].view(n, 1, patch[a])).flatten())
        high = rows.index_select(0, (base + highs[a].view(n, 1, patch[a])).flatten())
        weight = weights[a].to(work.dtype).view(n, 1, patch[a], 1)
        tiles = torch.lerp(
            low.view(n, c * done, patch[a], rest), high.view(n, c * done, patch[a], rest), weight
        )
    last = d - 1
    tiles = torch.bmm(
        tiles.reshape(n, -1, windows[last]),
        _taps(lows[last], highs[last], weights[last], windows[last], work.dtype),
    )
    return tiles.view(b, p, c, *patch).to(x.dtype)


def _taps(low: Tensor, high: Tensor, weight: Tensor, window: int, dtype: torch.dtype) -> Tensor:
    """``(B * P, window, patch)``: column ``i`` holds sample ``i``'s two linear-interpolation weights."""
    n = low.shape[0] * low.shape[1]
    patch = low.shape[-1]
    taps = torch.zeros(n, window, patch, dtype=dtype, device=low.device)
    weight = weight.to(dtype).reshape(n, 1, patch)
    taps.scatter_add_(1, low.reshape(n, 1, patch), 1 - weight)
    taps.scatter_add_(1, high.reshape(n, 1, patch), weight)
    return taps
