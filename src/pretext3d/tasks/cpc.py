"""Contrastive predictive coding.

Van den Oord et al., 2018; Hénaff et al., ICML 2020; in 3D, Taleb et al., NeurIPS 2020.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretext3d._checks import check_batch, check_choice, check_int, check_unit_interval
from pretext3d._random import rand
from pretext3d.functional.patches import extract_patches
from pretext3d.functional.rotation import apply_rotations
from pretext3d.losses import BinaryCPCLoss, InfoNCELoss
from pretext3d.tasks.base import PretextTask

__all__ = ["CPC"]


class CPC(PretextTask):
    """Predict the codes of patches further down a grid from the patches above them.

    Each image is cut into ``grid`` patches per axis (row-major cell order; a stride of
    ``patch * (1 - overlap)``, the grid centred in the image). In training mode every
    patch is flipped along each axis with ``flip_p`` and cropped by up to ``crop``
    voxels and zero-padded back (per patch, vectorised), as in the paper. A shared
    encoder embeds every patch (one batched call over ``B * grid**d`` patches, by
    :class:`~pretext3d.PretextModel`), and the :class:`~pretext3d.heads.CPCHead` predicts
    the codes of rows ``r + 1 .. r + steps`` from the context of rows ``0..r``.

    The loss, for each step ``k``, is InfoNCE: a prediction against its true target and,
    as negatives, the targets of every other position and every other image of the
    batch (and of all ranks with ``gather=True``). The original 3D code used a binary
    loss with one negative from the same volume; ``loss="binary"`` offers a binary loss
    with one random negative for comparison.

    Defaults: 3D as in the paper, a 4x4x4 grid of 32³ patches (a 128³ crop), no overlap;
    2D a 5x5 grid with 50 % overlap and patches as large as fit. ``steps`` defaults to
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
        check_finite: reject NaN/inf input.

    Shapes:
        input ``(B, C, *spatial)`` -> views ``(B, grid**d, C, *patch)``; labels ``(B,)``
        are zeros (CPC's targets come from the image itself); the head gives the
        ``(2, B, steps, grid - 1, grid, ..., code_dim)`` tensor that :meth:`loss` reads.
    """

    def __init__(
        self,
        spatial_dims: int,
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
        if gather and loss == "binary":
            raise ValueError("gather=True only applies to loss='infonce'")
        self.loss_fn: nn.Module = (
            InfoNCELoss(temperature, gather=gather) if loss == "infonce" else BinaryCPCLoss(temperature)
        )
        self.num_classes = 0
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

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Patches ``(B, grid**d, C, *patch)`` and zero labels ``(B,)``."""
        batch, single = check_batch(x, self.spatial_dims, check_finite=self.check_finite)
        patch, stride, offset = self.geometry(tuple(batch.shape[2:]))
        d = self.spatial_dims
        axes = [torch.arange(self.grid, device=batch.device) * stride + o for o in offset]
        starts = torch.cartesian_prod(*axes).reshape(1, -1, d).expand(batch.shape[0], -1, -1)
        views = extract_patches(batch, starts, (patch,) * d)
        if self.training:
            views = self._augment(views, patch, generator)
        labels = torch.zeros(batch.shape[0], dtype=torch.long, device=batch.device)
        return (views[0], labels[0]) if single else (views, labels)

    def _augment(self, views: Tensor, patch: int, generator: torch.Generator | None) -> Tensor:
        """Per-patch random flips and crop-and-pad, vectorised over all patches."""
        b, p = views.shape[:2]
        flat = views.flatten(0, 1)
        d = self.spatial_dims
        flips = (rand((b * p, d), generator, flat.device) < self.flip_p).long()
        classes = torch.tensor([[(c >> a) & 1 for a in range(d)] for c in range(2**d)])
        matrices = torch.diag_embed(1 - 2 * classes)
        labels = (flips.cpu() * (2 ** torch.arange(d))).sum(1)
        flat = apply_rotations(flat, labels, matrices)
        crop = patch // 8 if self.crop is None else min(self.crop, patch - 1)
        if crop:
            corner = (rand((b * p, 1, d), generator, flat.device) * (crop + 1)).long()
            kept = extract_patches(flat, corner, (patch - crop,) * d)[:, 0]
            before = crop // 2
            flat = F.pad(kept, [before, crop - before] * d)
        return flat.view(views.shape)

    def make_head(self, num_features: int) -> nn.Module:
        """A :class:`~pretext3d.heads.CPCHead` for this grid."""
        from pretext3d.heads import CPCHead

        return CPCHead(num_features, self.spatial_dims, self.grid, self.steps, self.code_dim)

    @staticmethod
    def pairs(output: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Per step, the valid ``(predictions (Q, D), targets (Q, D))`` of a head output."""
        if output.dim() < 5 or output.shape[0] != 2:
            raise ValueError(
                "output must be the CPC head's (2, B, steps, grid - 1, ..., D) tensor, "
                f"got {tuple(output.shape)}"
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

    def loss(self, output: Tensor, labels: Tensor) -> Tensor:
        """Mean over steps of the InfoNCE (or binary) loss of the head's output."""
        losses = [self.loss_fn(q, t) for q, t in self.pairs(output)]
        return torch.stack(losses).mean()

    @staticmethod
    def accuracy(output: Tensor, labels: Tensor) -> Tensor:
        """Top-1 accuracy of predictions among all candidate targets, mean over steps."""
        accs = [
            ((q.detach() @ t.detach().T).argmax(dim=1) == torch.arange(len(q), device=q.device))
            .float()
            .mean()
            for q, t in CPC.pairs(output)
        ]
        return torch.stack(accs).mean()

    def extra_repr(self) -> str:
        """The constructor arguments, for ``repr``."""
        return (
            f"spatial_dims={self.spatial_dims}, grid={self.grid}, patch={self.patch}, "
            f"overlap={self.overlap}, steps={self.steps}"
        )
