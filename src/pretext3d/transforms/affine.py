"""Random affine and intensity augmentation of 2D/3D batches, in one resampling pass.

The exemplar task's augmenter (Dosovitskiy et al., NeurIPS 2014; Taleb et al., NeurIPS
2020), usable on its own.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretext3d._checks import (
    check_batch,
    check_choice,
    check_positive,
    check_range,
    check_spatial_dims,
    check_unit_interval,
)
from pretext3d._random import as_generator, rand
from pretext3d.functional.rotation import apply_rotations, plane_rotation_matrix

__all__ = ["AugmentParams", "ExemplarAugmenter"]


@dataclass
class AugmentParams:
    """Per-sample parameters of one :meth:`ExemplarAugmenter.randomize` draw.

    Attributes:
        matrix: ``(B, d, d)`` float64: the voxel at centred coordinates ``v`` (spatial
            axis order) moves to ``matrix @ v``. Flips, quarter turns, free rotations and
            zoom, composed in that order.
        brightness: ``(B,)`` added after contrast.
        contrast: ``(B,)`` factor about each sample's mean.

    Examples:
        >>> augmenter = ExemplarAugmenter(spatial_dims=2)
        >>> params = augmenter.randomize(torch.randn(3, 1, 16, 16), generator=0)
        >>> params.matrix.shape, params.brightness.shape, params.contrast.shape
        (torch.Size([3, 2, 2]), torch.Size([3]), torch.Size([3]))
    """

    matrix: Tensor
    brightness: Tensor
    contrast: Tensor

    def __len__(self) -> int:
        return len(self.matrix)

    def to(self, device: torch.device | str) -> AugmentParams:
        """A copy on ``device``."""
        return AugmentParams(self.matrix.to(device), self.brightness.to(device), self.contrast.to(device))

    @classmethod
    def identity(cls, batch: int, spatial_dims: int, device: torch.device | None = None) -> AugmentParams:
        """Parameters that change nothing."""
        eye = torch.eye(spatial_dims, dtype=torch.float64, device=device).expand(batch, -1, -1).clone()
        return cls(eye, torch.zeros(batch, device=device), torch.ones(batch, device=device))


class ExemplarAugmenter(nn.Module):
    """Random flips, 90° rotations, free rotations, anisotropic zoom, brightness and contrast.

    A call draws parameters and applies them: ``aug(x, g) == aug.apply_params(x,
    aug.randomize(x, g'))`` for generators in the same state. Applied to a whole batch
    on its device at once: one composed affine per sample and a
    single resampling pass (``affine_grid`` + ``grid_sample``) for the samples that need
    interpolation; samples whose transform is only flips and quarter turns are moved
    exactly (no interpolation) like :class:`~pretext3d.tasks.Rotation`. Intensities are
    changed in place afterwards. Transforms act in voxel units about the volume centre,
    so a rotation is rigid also for non-cubic volumes.

    Defaults follow the exemplar protocol of Taleb et al.: each axis flipped with
    p = 0.5; per plane a quarter turn (1-3 times) with p = 0.5 and a free rotation with
    p = 0.5 (the paper gives no angle range: ``max_angle=45`` is ours); brightness
    ±0.125 and contrast ×[0.5, 1.5], each with p = 0.5; zoom ×[0.8, 1.2] per axis with
    p = 0.15.

    Args:
        spatial_dims: 2 or 3.
        flip_p: probability of flipping each axis.
        rot90_p: probability of a quarter turn in each plane.
        rotate_p: probability of a free rotation in each plane.
        max_angle: free rotations are uniform in ``[-max_angle, max_angle]`` degrees.
        zoom_p: probability of zooming a sample.
        zoom_range: per-axis zoom factors are uniform in this range (> 1 enlarges).
        intensity_p: probability of brightness, and separately of contrast.
        brightness: offsets are uniform in ``[-brightness, brightness]``.
        contrast: factors are uniform in this range.
        mode: ``"bilinear"`` (trilinear in 3D) or ``"nearest"`` resampling.
        padding_mode: ``grid_sample``'s ``"zeros"``, ``"border"`` or ``"reflection"``.

    Shapes:
        ``(B, C, *spatial)`` -> the same.

    Examples:
        >>> augment = ExemplarAugmenter(spatial_dims=3)
        >>> augment(torch.randn(2, 1, 16, 16, 16), generator=0).shape   # one augmented view per volume
        torch.Size([2, 1, 16, 16, 16])

    References:
        - Dosovitskiy et al., "Discriminative Unsupervised Feature Learning with Convolutional Neural
          Networks", NeurIPS 2014.
        - Taleb et al., "3D Self-Supervised Methods for Medical Imaging", NeurIPS 2020.
    """

    def __init__(
        self,
        spatial_dims: int,
        *,
        flip_p: float = 0.5,
        rot90_p: float = 0.5,
        rotate_p: float = 0.5,
        max_angle: float = 45.0,
        zoom_p: float = 0.15,
        zoom_range: tuple[float, float] = (0.8, 1.2),
        intensity_p: float = 0.5,
        brightness: float = 0.125,
        contrast: tuple[float, float] = (0.5, 1.5),
        mode: Literal["bilinear", "nearest"] = "bilinear",
        padding_mode: Literal["zeros", "border", "reflection"] = "zeros",
    ) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        for name, p in [
            ("flip_p", flip_p),
            ("rot90_p", rot90_p),
            ("rotate_p", rotate_p),
            ("zoom_p", zoom_p),
            ("intensity_p", intensity_p),
        ]:
            check_unit_interval(name, p)
        if check_positive("max_angle", max_angle, allow_zero=True) > 180.0:
            raise ValueError(f"max_angle must lie in [0, 180] degrees, got {max_angle}")
        zoom_range = check_range("zoom_range", zoom_range)
        if zoom_range[0] == 0:
            raise ValueError(f"zoom_range must be a pair (a, b) with 0 < a <= b, got {zoom_range!r}")
        contrast = check_range("contrast", contrast)
        check_positive("brightness", brightness, allow_zero=True)
        self.mode = check_choice("mode", mode, ("bilinear", "nearest"))
        self.padding_mode = check_choice("padding_mode", padding_mode, ("zeros", "border", "reflection"))
        self.flip_p, self.rot90_p, self.rotate_p = flip_p, rot90_p, rotate_p
        self.max_angle = max_angle
        self.zoom_p, self.zoom_range = zoom_p, zoom_range
        self.intensity_p, self.brightness, self.contrast = intensity_p, brightness, contrast
        self.planes = list(itertools.combinations(range(self.spatial_dims), 2))

    def forward(self, x: Tensor, generator: torch.Generator | int | None = None) -> Tensor:
        """Augment every sample of ``x`` with freshly drawn parameters."""
        return self.apply_params(x, self.randomize(x, generator))

    def randomize(self, x: Tensor, generator: torch.Generator | int | None = None) -> AugmentParams:
        """Draw parameters for every sample of ``x`` (on the generator's device, moved to ``x``'s).

        Args:
            x: ``(B, C, *spatial)``; only its batch size and device are read.
            generator: the source of randomness.
        """
        batch_x = self._batch(x)
        batch, device = batch_x.shape[0], batch_x.device
        generator = as_generator(generator)
        d = self.spatial_dims

        def uniform(*shape: int) -> Tensor:
            return rand(shape, generator, "cpu", torch.float64)

        matrix = torch.diag_embed(torch.where(uniform(batch, d) < self.flip_p, -1.0, 1.0).double())
        quarter = torch.where(
            uniform(batch, len(self.planes)) < self.rot90_p,
            1 + (uniform(batch, len(self.planes)) * 3).long(),
            0,
        )
        turn = torch.where(uniform(batch, len(self.planes)) < self.rotate_p, 1.0, 0.0)
        angles = turn * (uniform(batch, len(self.planes)) * 2 - 1) * math.radians(self.max_angle)
        for j, plane in enumerate(self.planes):
            turns = torch.stack([plane_rotation_matrix(d, plane, q) for q in range(4)]).double()
            matrix = turns[quarter[:, j]] @ matrix
        for j, (a, b) in enumerate(self.planes):
            rot = torch.eye(d, dtype=torch.float64).repeat(batch, 1, 1)
            cos, sin = torch.cos(angles[:, j]), torch.sin(angles[:, j])
            rot[:, a, a], rot[:, a, b], rot[:, b, a], rot[:, b, b] = cos, -sin, sin, cos
            matrix = rot @ matrix
        low, high = self.zoom_range
        zoom = torch.where(uniform(batch, 1) < self.zoom_p, low + (high - low) * uniform(batch, d), 1.0)
        matrix = torch.diag_embed(zoom) @ matrix
        bright = torch.where(
            uniform(batch) < self.intensity_p, (uniform(batch) * 2 - 1) * self.brightness, 0.0
        )
        c_low, c_high = self.contrast
        contrast = torch.where(
            uniform(batch) < self.intensity_p, c_low + (c_high - c_low) * uniform(batch), 1.0
        )
        return AugmentParams(matrix.to(device), bright.float().to(device), contrast.float().to(device))

    def apply_params(self, x: Tensor, params: AugmentParams) -> Tensor:
        """Apply given parameters (deterministic): ``(B, C, *spatial)`` -> the same."""
        return self._transform(self._batch(x), params)

    def _batch(self, x: Tensor) -> Tensor:
        hint = "add the batch axis, x[None]"
        return check_batch(x, self.spatial_dims, check_finite=False, allow_single=False, single_hint=hint)[0]

    def _transform(self, batch: Tensor, params: AugmentParams) -> Tensor:
        if params.matrix.shape != (batch.shape[0], self.spatial_dims, self.spatial_dims):
            raise ValueError(
                f"params.matrix must have shape ({batch.shape[0]}, {self.spatial_dims}, "
                f"{self.spatial_dims}) for this batch, got {tuple(params.matrix.shape)}"
            )
        matrix = params.matrix.detach().cpu().double()
        rounded = matrix.round()
        signed_perm = (matrix == rounded).flatten(1).all(1) & ((rounded.abs().sum(1) == 1).all(1))
        sizes = torch.tensor(batch.shape[2:], dtype=torch.float64)
        # A quarter turn between axes of different lengths is not a voxel permutation.
        same_extent = ((rounded.abs() @ sizes) == sizes).all(1)
        exact = signed_perm & same_extent
        if exact.all():
            out = self._move_exactly(batch, rounded)
        elif not exact.any():
            out = self._resample(batch, matrix)
        else:
            out = torch.empty_like(batch, memory_format=torch.contiguous_format)
            for part, resample in ((exact, False), (~exact, True)):
                idx = torch.nonzero(part).flatten().to(batch.device)
                sub = batch[idx]
                idx_cpu = idx.cpu()
                out[idx] = (
                    self._resample(sub, matrix[idx_cpu])
                    if resample
                    else self._move_exactly(sub, rounded[idx_cpu])
                )
        contrast = params.contrast.to(out.device, out.dtype)
        brightness = params.brightness.to(out.device, out.dtype)
        if bool(((contrast != 1) | (brightness != 0)).any()):
            # x' = (x - mean) * c + mean + b = c * x + (b + (1 - c) * mean), in place
            view = (-1,) + (1,) * (out.dim() - 1)
            shift = brightness
            if bool((contrast != 1).any()):
                shift = shift + (1 - contrast) * out.mean(dim=tuple(range(1, out.dim())))
            out.mul_(contrast.view(view)).add_(shift.view(view))
        return out

    @staticmethod
    def _move_exactly(x: Tensor, matrices: Tensor) -> Tensor:
        """Flips and quarter turns without interpolation, grouped by distinct matrix."""
        classes, inverse = torch.unique(matrices.long(), dim=0, return_inverse=True)
        return apply_rotations(x, inverse, classes)

    def _resample(self, x: Tensor, matrix: Tensor) -> Tensor:
        """One ``grid_sample`` pass: output voxel ``o`` reads input ``matrix^-1 o`` (voxel units)."""
        d = self.spatial_dims
        half = torch.tensor(x.shape[2:], dtype=torch.float64) / 2
        # normalised (align_corners=False) -> voxel units -> inverse -> normalised
        to_voxel = torch.diag(half)
        to_norm = torch.diag(1 / half)
        inverse = to_norm @ torch.linalg.inv(matrix) @ to_voxel
        flip = torch.eye(d, dtype=torch.float64).flip(0)  # grid_sample wants (x, y, z) = reversed axes
        # coordinates in at least fp32: a bf16 grid is off by up to half a voxel at 128 voxels
        dtype = torch.promote_types(x.dtype, torch.float32)
        theta = (flip @ inverse @ flip).to(x.device, dtype)  # (B, d, d), grid component order
        # The grid of affine_grid, built as a sum of d broadcast terms (no (B, N, d+1) matmul):
        # grid[b, ..., k] = sum_j theta[b, k, j] * u_j, with u_j the normalised coordinate of
        # grid component j (the spatial axis d - 1 - j) at voxel centres.
        sizes = x.shape[2:]
        grid = torch.zeros(x.shape[0], *sizes, d, device=x.device, dtype=dtype)
        for j in range(d):
            axis = d - 1 - j
            n = sizes[axis]
            coords = (torch.arange(n, device=x.device, dtype=dtype) * 2 + 1) / n - 1
            shape = [1] * (d + 2)
            shape[1 + axis] = n
            grid += coords.view(shape) * theta[:, :, j].reshape(-1, *[1] * d, d)
        out = F.grid_sample(
            x.to(dtype), grid, mode=self.mode, padding_mode=self.padding_mode, align_corners=False
        )
        return out.to(x.dtype)
