"""Masked image modelling for any CNN encoder (SimMIM, CVPR 2022; SparK, ICLR 2023)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from pretext3d._checks import check_choice, check_int, check_unit_interval
from pretext3d._random import rand
from pretext3d.config import SpatialDims
from pretext3d.registry import register_task
from pretext3d.tasks.base import DenseTask, Reconstruction, TaskParams

__all__ = ["MaskedImageModeling", "MaskedImageModelingParams", "patch_mask"]


@dataclass
class MaskedImageModelingParams(TaskParams):
    """The parameters of one :class:`MaskedImageModeling` call.

    Attributes:
        masked: ``BoolTensor (B, *patch_grid)``: the masked patches (the same count in every sample).

    Examples:
        >>> task = MaskedImageModeling(2, patch=4)   # masks 60 % of the patches
        >>> params = task.randomize(torch.rand(2, 1, 16, 16), torch.Generator().manual_seed(0))
        >>> params.masked.shape, params.masked.sum(dim=(1, 2)).tolist()   # 10 of 16 patches each
        (torch.Size([2, 4, 4]), [10, 10])
    """

    masked: Tensor


def patch_mask(masked: Tensor, patch: int, shape: tuple[int, ...]) -> Tensor:
    """The voxel mask ``(B, 1, *shape)`` of a patch mask ``(B, *grid)``; voxels beyond the grid: never.

    Examples:
        >>> patch_mask(torch.tensor([[[True, False]]]), 2, (2, 5))[0, 0].int().tolist()
        [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0]]
    """
    voxels = masked[:, None].float()
    for axis in range(masked.dim() - 1):
        voxels = voxels.repeat_interleave(patch, dim=2 + axis)
    pad = []
    for axis in reversed(range(len(shape))):
        pad += [0, shape[axis] - voxels.shape[2 + axis]]
    return F.pad(voxels, pad).bool()


@register_task("mim")
class MaskedImageModeling(DenseTask[MaskedImageModelingParams]):
    """Restore masked patches of each image from the rest (masked image modelling for CNNs).

    The image is cut into a grid of ``patch``-sized cubes (squares); exactly
    ``round(mask_ratio * patches)`` of them, drawn at random per image, are replaced at the
    input. The head (a :class:`~pretext3d.models.DenseHead`) restores the image, and the loss
    is the mean squared error on the masked patches only, against targets normalised per patch
    (each patch's voxels and channels to mean 0 and variance 1, MAE's choice, which its
    authors found to sharpen the features; ``normalize_targets=False`` restores intensities).
    Voxels beyond the last whole patch are never masked and never scored.

    Masked patches are filled with each image's mean per channel (``fill="mean"``) or zeros
    (``fill="zero"``), not with a learnable mask token: a task holds no weights (the token
    would have to live in the encoder, which would then differ from the one fine-tuned), and
    for a CNN a token at the input is a constant anyway; the image's mean carries nothing
    about the patch and is in range whatever the normalisation (zero is the mean only of
    standardised images).

    The trivial predictor the score (:class:`~pretext3d.tasks.DenseTask`) is measured against:
    with normalised targets, each patch's own mean (the zero target, error 1 per voxel); without,
    the mean of the visible patches around each masked one (its 3x3(x3) neighbourhood;
    the image's mean where none is visible).

    SparK's sparse convolutions (features of masked positions kept at zero through the whole
    encoder) are not implemented: they need the encoder's every convolution and normalisation
    to be replaced, which would tie the task to our own encoders, while this task works for any
    CNN; with the masked patches filled, information leaks into them only through the
    receptive field, which the loss on masked patches alone still makes a reconstruction task.

    Defaults: ``mask_ratio = 0.6`` (SimMIM and SparK; MAE's 0.75 is for ViTs) and
    ``patch = 8`` (about 8 patches per side of the demo's 64-voxel crops; SimMIM's 32-pixel
    patches are 1/6 of its 192-pixel images).

    Args:
        spatial_dims: 2 or 3.
        mask_ratio: share of the patches masked, in ``(0, 1)``.
        patch: the patches' edge in voxels.
        fill: ``"mean"`` or ``"zero"``: what masked patches are replaced by.
        normalize_targets: normalise each patch of the target (and the loss) to mean 0, variance 1.
        check_finite: reject NaN/inf input.

    Examples:
        >>> task = MaskedImageModeling(spatial_dims=2, patch=4)
        >>> x = torch.randn(2, 1, 16, 16)
        >>> views, targets = task(x, generator=0)
        >>> float(targets.weight.mean())   # 10 of the 16 patches: round(0.6 * 16)
        0.625

    References:
        - Xie et al., "SimMIM: A Simple Framework for Masked Image Modeling", CVPR 2022.
        - Tian et al., "Designing BERT for Convolutional Networks: Sparse and Hierarchical Masked
          Modeling" (SparK), ICLR 2023.
        - He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022.
    """

    params_type = MaskedImageModelingParams

    def __init__(
        self,
        spatial_dims: SpatialDims,
        mask_ratio: float = 0.6,
        patch: int = 8,
        *,
        fill: Literal["mean", "zero"] = "mean",
        normalize_targets: bool = True,
        check_finite: bool = True,
    ) -> None:
        super().__init__(spatial_dims, check_finite=check_finite)
        self.mask_ratio = check_unit_interval("mask_ratio", mask_ratio, include_one=False)
        if self.mask_ratio == 0:
            raise ValueError("mask_ratio must lie in (0, 1): with 0 nothing is masked, got 0")
        self.patch = check_int("patch", patch, 1)
        self.fill = check_choice("fill", fill, ("mean", "zero"))
        if not isinstance(normalize_targets, bool):
            raise TypeError(f"normalize_targets must be a bool, got {normalize_targets!r}")
        self.normalize_targets = normalize_targets

    @property
    def baseline(self) -> str:
        """The trivial predictor the score is measured against."""
        return "each patch's own mean" if self.normalize_targets else "the visible neighbouring patches' mean"

    def _grid(self, x: Tensor) -> tuple[int, ...]:
        return tuple(s // self.patch for s in x.shape[2:])

    def _check_input(self, x: Tensor) -> None:
        grid = self._grid(x)
        if min(grid) < 1 or round(self.mask_ratio * int(torch.tensor(grid).prod())) < 1:
            raise ValueError(
                f"MaskedImageModeling(patch={self.patch}, mask_ratio={self.mask_ratio}) masks no patch of "
                "spatial "
                f"size {tuple(x.shape[2:])} (a grid of {grid}): use a smaller patch or larger images"
            )

    def _randomize(self, x: Tensor, generator: torch.Generator | None) -> MaskedImageModelingParams:
        grid = self._grid(x)
        count = int(torch.tensor(grid).prod())
        keys = rand((x.shape[0], count), generator, x.device)
        ranks = keys.argsort(dim=1).argsort(dim=1)
        masked = ranks < round(self.mask_ratio * count)
        return MaskedImageModelingParams(masked.reshape(x.shape[0], *grid))

    def _check_params(self, x: Tensor, params: MaskedImageModelingParams) -> None:
        grid = self._grid(x)
        if params.masked.dtype != torch.bool or tuple(params.masked.shape) != (x.shape[0], *grid):
            raise ValueError(
                f"params.masked must be a BoolTensor of shape {(x.shape[0], *grid)} (patches of "
                f"{self.patch}), got "
                f"{params.masked.dtype} {tuple(params.masked.shape)}"
            )

    def _make_views(self, x: Tensor, params: MaskedImageModelingParams) -> tuple[Tensor, Reconstruction]:
        d = self.spatial_dims
        weight = patch_mask(params.masked, self.patch, tuple(x.shape[2:]))
        spatial = tuple(range(2, x.dim()))
        mean = x.float().mean(dim=spatial, keepdim=True)
        fill = mean if self.fill == "mean" else torch.zeros_like(mean)
        views = torch.where(weight, fill.to(x.dtype), x)
        grid = self._grid(x)
        region = (slice(None), slice(None), *[slice(0, g * self.patch) for g in grid])
        if self.normalize_targets:
            target = x.float().clone()
            patches = _patches(target[region], self.patch)  # (B, C, *grid, patch**d)
            moments = patches.movedim(1, -2).flatten(-2)  # (B, *grid, C * patch**d) per patch
            mu = moments.mean(-1)
            sd = (moments.var(-1, unbiased=False) + 1e-6).sqrt()
            expand = [slice(None), None, *[slice(None)] * d, None]
            normal = (patches - mu[tuple(expand)]) / sd[tuple(expand)]
            target[region] = _unpatch(normal, self.patch)
            baseline = torch.zeros_like(target)
        else:
            target = x.float()
            baseline = _neighbour_means(x.float(), params.masked, self.patch, mean)
        return views, Reconstruction(target, weight.float(), baseline)

    def extra_repr(self) -> str:
        """The constructor arguments, for ``repr``."""
        return (
            f"spatial_dims={self.spatial_dims}, mask_ratio={self.mask_ratio}, patch={self.patch}, "
            f"fill={self.fill!r}, normalize_targets={self.normalize_targets}"
        )


def _patches(x: Tensor, patch: int) -> Tensor:
    """``(B, C, *grid * patch)`` -> ``(B, C, *grid, patch**d)``."""
    d = x.dim() - 2
    grid = [s // patch for s in x.shape[2:]]
    split = x.reshape(*x.shape[:2], *[v for g in grid for v in (g, patch)])
    order = [0, 1, *[2 + 2 * a for a in range(d)], *[3 + 2 * a for a in range(d)]]
    return split.permute(order).reshape(*x.shape[:2], *grid, patch**d)


def _unpatch(patches: Tensor, patch: int) -> Tensor:
    """The inverse of :func:`_patches`."""
    d = patches.dim() - 3
    grid = list(patches.shape[2:-1])
    split = patches.reshape(*patches.shape[:2], *grid, *[patch] * d)
    order = [0, 1, *[v for a in range(d) for v in (2 + a, 2 + d + a)]]
    return split.permute(order).reshape(*patches.shape[:2], *[g * patch for g in grid])


def _neighbour_means(x: Tensor, masked: Tensor, patch: int, mean: Tensor) -> Tensor:
    """``x`` with each masked patch filled by the mean of the visible patches around it (else the mean)."""
    d = x.dim() - 2
    grid = masked.shape[1:]
    region = (slice(None), slice(None), *[slice(0, g * patch) for g in grid])
    means = _patches(x[region], patch).mean(-1)  # (B, C, *grid)
    visible = (~masked)[:, None].float()
    pool = F.avg_pool2d if d == 2 else F.avg_pool3d
    total = pool(means * visible, 3, stride=1, padding=1, count_include_pad=False)
    count = pool(visible, 3, stride=1, padding=1, count_include_pad=False)
    around = torch.where(count > 0, total / count.clamp_min(1e-12), mean)
    out = x.clone()
    filled = _unpatch(around[..., None].expand(*around.shape, patch**d), patch)
    out[region] = torch.where(patch_mask(masked, patch, tuple(filled.shape[2:])), filled, x[region])
    return out
