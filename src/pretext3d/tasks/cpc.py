"""Contrastive predictive coding.

Van den Oord et al., 2018; Hénaff et al., ICML 2020; in 3D, Taleb et al., NeurIPS 2020.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretext3d._checks import check_choice, check_int, check_positive, check_unit_interval
from pretext3d._random import as_generator, rand
from pretext3d.config import SpatialDims
from pretext3d.functional.patches import extract_patches, standardize
from pretext3d.functional.rotation import apply_flips
from pretext3d.heads import CPCHead
from pretext3d.objectives.losses import BinaryCPCLoss, InfoNCELoss
from pretext3d.registry import register_task
from pretext3d.tasks.base import PredictiveTask, TaskParams

__all__ = ["CPC", "CPCParams"]


@dataclass
class CPCParams(TaskParams):
    """The parameters of one :class:`CPC` call: each patch's flips and crop.

    Attributes:
        flips: ``BoolTensor (B, grid**d, d)``: flip the patch along each spatial axis.
        corners: ``LongTensor (B, grid**d, d)``: corner of the kept part, in ``[0, crop]``.
        crop: voxels cut from each patch per axis before it is zero-padded back (0: none).

    Examples:
        >>> task = CPC(spatial_dims=2, grid=4, patch=8)
        >>> params = task.randomize(torch.randn(2, 1, 32, 32), generator=0)
        >>> params.flips.shape, params.corners.shape   # per sample, per patch, per axis
        (torch.Size([2, 16, 2]), torch.Size([2, 16, 2]))
    """

    flips: Tensor
    corners: Tensor
    crop: int


@register_task("cpc")
class CPC(PredictiveTask[CPCParams]):
    """Predict the codes of patches further down a grid from the patches above them.

    Each image is cut into ``grid`` patches per axis (row-major cell order; a stride of
    ``patch * (1 - overlap)``, the grid centred in the image). In training mode every
    patch is flipped along each axis with ``flip_p`` and cropped by ``crop`` voxels at a
    random corner and zero-padded back (per patch, vectorised), as in the paper; eval
    mode takes the patches as they are. A shared
    encoder embeds every patch (one batched call over ``B * grid**d`` patches, by
    :class:`~pretext3d.PretextModel`), and the :class:`~pretext3d.heads.CPCHead` predicts
    the codes of rows ``r + 1 .. r + steps`` from the context of rows ``0..r``.

    The loss, for each step ``k``, is InfoNCE: a prediction against its true target and,
    as negatives, the targets of every other position and every other image of the
    batch (and of all ranks with ``gather=True``). The original 3D code used a binary
    loss with one negative from the same volume; ``loss="binary"`` offers a binary loss
    with one random negative for comparison.

    Defaults: 3D as in the paper, a 4x4x4 grid of 32³ patches (a 128³ crop), no overlap;
    2D a 5x5 grid with 50 % overlap and patches as large as fit. Patches are normalised
    (``normalize_patches``): without it, a patch's brightness alone tells which patch lies below
    it. ``steps`` defaults to
    ``grid // 2`` (our choice; the paper does not say).

    Args:
        spatial_dims: 2 or 3.
        grid: patches per axis (default 4 in 3D, 5 in 2D).
        patch: patch edge (default 32 in 3D; in 2D the largest that fits the input).
        overlap: fraction of a patch shared with its neighbour, in ``[0, 1)``.
        steps: rows predicted ahead, ``1 <= steps < grid``.
        code_dim: size of the codes.
        crop: maximum crop per patch before zero-padding back (default ``patch // 8``).
        flip_p: per-axis flip probability of each patch.
        loss: ``"infonce"`` or ``"binary"``.
        temperature: of the loss, on cosine similarities.
        gather: with InfoNCE, take negatives from all ranks too.
        normalize_patches: each patch's channels to zero mean and unit variance (before its
            crop), so that a patch's brightness does not tell which patch lies below it (the
            grid tasks' tile normalisation; ``False``: the behaviour of 0.1).
        check_finite: reject NaN/inf input.

    Shapes:
        input ``(B, C, *spatial)`` -> views ``(B, grid**d, C, *patch)`` and targets
        ``None`` (what is predicted comes from the image itself); the head gives the
        ``(2, B, steps, grid - 1, grid, ..., code_dim)`` tensor that :meth:`loss` reads.

    Examples:
        >>> task = CPC(spatial_dims=3, grid=4, patch=8)
        >>> views, targets = task(torch.randn(2, 1, 32, 32, 32), generator=0)
        >>> views.shape, targets   # the codes to predict come from the model, so there are no targets
        (torch.Size([2, 64, 1, 8, 8, 8]), None)

    References:
        - van den Oord et al., "Representation Learning with Contrastive Predictive Coding", arXiv:1807.03748,
          2018.
        - Hénaff et al., "Data-Efficient Image Recognition with Contrastive Predictive Coding", ICML 2020.
        - Taleb et al., "3D Self-Supervised Methods for Medical Imaging", NeurIPS 2020.
    """

    params_type = CPCParams

    def __init__(
        self,
        spatial_dims: SpatialDims,
        grid: int | None = None,
        patch: int | None = None,
        overlap: float | None = None,
        *,
        steps: int | None = None,
        code_dim: int = 128,
        crop: int | None = None,
        flip_p: float = 0.5,
        loss: Literal["infonce", "binary"] = "infonce",
        temperature: float = 0.1,
        gather: bool = False,
        normalize_patches: bool = True,
        check_finite: bool = True,
    ) -> None:
        super().__init__(spatial_dims, check_finite=check_finite)
        three = self.spatial_dims == 3
        self.grid = check_int("grid", grid if grid is not None else (4 if three else 5), 2)
        self.patch = check_int("patch", patch, 1) if patch is not None else (32 if three else None)
        self.overlap = check_unit_interval(
            "overlap", overlap if overlap is not None else (0.0 if three else 0.5), include_one=False
        )
        self.steps = check_int("steps", steps if steps is not None else self.grid // 2, 1)
        if self.steps >= self.grid:
            raise ValueError(
                f"steps must be < grid = {self.grid}: from row 0 there are only {self.grid - 1} rows "
                f"to predict; got steps={self.steps}"
            )
        self.code_dim = check_int("code_dim", code_dim, 1)
        self.crop = None if crop is None else check_int("crop", crop, 0)
        self.flip_p = check_unit_interval("flip_p", flip_p)
        check_choice("loss", loss, ("infonce", "binary"))
        check_positive("temperature", temperature)
        if gather and loss == "binary":
            raise ValueError("gather=True only applies to loss='infonce'")
        self.gather = bool(gather)
        self.normalize_patches = bool(normalize_patches)
        self.loss_fn: nn.Module = (
            InfoNCELoss(temperature, gather=gather) if loss == "infonce" else BinaryCPCLoss(temperature)
        )
        self.num_patches = self.grid**self.spatial_dims

    def geometry(self, spatial_shape: tuple[int, ...]) -> tuple[int, int, tuple[int, ...]]:
        """``(patch, stride, offset per axis)`` for an image of ``spatial_shape``."""
        g, o = self.grid, self.overlap
        patch = self.patch
        if patch is None:  # the largest patch whose grid fits every axis
            patch = int(min(spatial_shape) / (1 + (g - 1) * (1 - o)))
        stride = max(1, round(patch * (1 - o)))
        extent = patch + (g - 1) * stride
        if patch < 1 or extent > min(spatial_shape):
            raise ValueError(
                f"a {g}-per-axis grid of {patch}-voxel patches with overlap {o} spans {extent} voxels "
                f"per axis, more than x's spatial shape {spatial_shape}; use a larger input, a smaller "
                "grid or patch, or more overlap"
            )
        return patch, stride, tuple((s - extent) // 2 for s in spatial_shape)

    def _check_input(self, x: Tensor) -> None:
        self.geometry(tuple(x.shape[2:]))

    def _randomize(self, x: Tensor, generator: torch.Generator | None) -> CPCParams:
        patch = self.geometry(tuple(x.shape[2:]))[0]
        shape = (x.shape[0], self.grid**self.spatial_dims, self.spatial_dims)
        if not self.training:
            none = torch.zeros(shape, dtype=torch.long, device=x.device)
            return CPCParams(none.bool(), none, 0)
        crop = patch // 8 if self.crop is None else min(self.crop, patch - 1)
        flips = rand(shape, generator, x.device) < self.flip_p
        corners = (rand(shape, generator, x.device) * (crop + 1)).long()
        return CPCParams(flips, corners, crop)

    def _check_params(self, x: Tensor, params: CPCParams) -> None:
        patch = self.geometry(tuple(x.shape[2:]))[0]
        shape = (x.shape[0], self.grid**self.spatial_dims, self.spatial_dims)
        if params.flips.shape != shape or params.corners.shape != shape:
            raise ValueError(
                f"params.flips and params.corners must have shape {shape}, got "
                f"{tuple(params.flips.shape)} and {tuple(params.corners.shape)}"
            )
        if not 0 <= params.crop < patch or bool(
            ((params.corners < 0) | (params.corners > params.crop)).any()
        ):
            raise ValueError(
                f"params.crop must lie in [0, {patch - 1}] and params.corners in [0, crop]; "
                f"got crop={params.crop}"
            )

    def _make_views(self, x: Tensor, params: CPCParams) -> tuple[Tensor, None]:
        patch, stride, offset = self.geometry(tuple(x.shape[2:]))
        d, b = self.spatial_dims, x.shape[0]
        axes = [torch.arange(self.grid, device=x.device) * stride + o for o in offset]
        starts = torch.cartesian_prod(*axes).reshape(1, -1, d).expand(b, -1, -1)
        flat = extract_patches(x, starts, (patch,) * d).flatten(0, 1)
        flat = apply_flips(flat, params.flips.reshape(-1, d))
        if self.normalize_patches:
            flat = standardize(flat, d)
        if params.crop:
            kept = extract_patches(flat, params.corners.reshape(-1, 1, d), (patch - params.crop,) * d)[:, 0]
            before = params.crop // 2
            flat = F.pad(kept, [before, params.crop - before] * d)
        return flat.view(b, -1, *flat.shape[1:]), None

    def make_head(self, num_features: int) -> nn.Module:
        """A :class:`~pretext3d.heads.CPCHead` for this grid."""
        return CPCHead(num_features, self.spatial_dims, self.grid, self.steps, self.code_dim)

    def pairs(self, output: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Per step, the valid ``(predictions (Q, D), targets (Q, D))`` of a head output."""
        g, d = self.grid, self.spatial_dims
        expected = (2, "B", self.steps, g - 1, *(g,) * (d - 1), "D")
        if (
            not isinstance(output, Tensor)
            or output.dim() != 4 + d
            or output.shape[0] != 2
            or tuple(output.shape[2 : 3 + d]) != (self.steps, g - 1, *(g,) * (d - 1))
        ):
            raise ValueError(
                f"output must be this CPC head's {expected} tensor (steps={self.steps}, grid={g}, "
                f"{d}D), got {tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__}"
            )
        preds, targets = output[0], output[1]
        rows = preds.shape[2]
        out = []
        for k in range(preds.shape[1]):
            valid = rows - k
            q = preds[:, k, :valid].reshape(-1, preds.shape[-1])
            t = targets[:, k, :valid].reshape(-1, preds.shape[-1])
            out.append((q, t))
        return out

    def loss(
        self, output: Tensor, targets: None = None, *, generator: torch.Generator | int | None = None
    ) -> Tensor:
        """Mean over steps of the InfoNCE (or binary) loss of the head's output.

        Args:
            output: the head's ``(2, B, steps, grid - 1, ...)`` tensor.
            targets: ``None``, as the task returns it.
            generator: draws the binary loss's negatives (InfoNCE draws nothing).
        """
        _check_no_targets(targets)
        generator = as_generator(generator)
        if isinstance(self.loss_fn, BinaryCPCLoss):
            losses = [self.loss_fn(q, t, generator=generator) for q, t in self.pairs(output)]
        else:
            losses = [self.loss_fn(q, t) for q, t in self.pairs(output)]
        return torch.stack(losses).mean()

    def accuracy(self, output: Tensor, targets: None = None) -> Tensor:
        """Top-1 accuracy of predictions among all candidate targets, mean over steps."""
        accs = [
            ((q.detach() @ t.detach().T).argmax(dim=1) == torch.arange(len(q), device=q.device))
            .float()
            .mean()
            for q, t in self.pairs(output)
        ]
        return torch.stack(accs).mean()

    def extra_repr(self) -> str:
        """The constructor arguments, for ``repr``."""
        return (
            f"spatial_dims={self.spatial_dims}, grid={self.grid}, patch={self.patch}, "
            f"overlap={self.overlap}, steps={self.steps}"
        )


def _check_no_targets(targets: object) -> None:
    if targets is not None:
        raise TypeError(
            f"CPC has no external targets: pass the None that the task returned, got {type(targets).__name__}"
        )
