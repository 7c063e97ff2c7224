"""Heads that sit on any encoder and produce what a task's loss needs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from pretext3d._checks import check_int, check_unit_interval

__all__ = ["CPCHead", "ClassifierHead", "MultiPatchClassifierHead", "ProjectionHead", "global_pool"]


def global_pool(features: Tensor) -> Tensor:
    """Average any spatial axes away: ``(N, F, *spatial) -> (N, F)``; ``(N, F)`` passes.

    Examples:
        >>> global_pool(torch.ones(2, 8, 3, 3, 3)).shape, global_pool(torch.ones(2, 8)).shape
        (torch.Size([2, 8]), torch.Size([2, 8]))
    """
    if features.dim() < 2:
        raise ValueError(
            f"encoder features must be (N, F) or (N, F, *spatial), got shape {tuple(features.shape)}"
        )
    return features.flatten(2).mean(-1) if features.dim() > 2 else features


class ClassifierHead(nn.Module):
    """Global average pool, then a one-hidden-layer MLP (e.g. for rotation).

    Args:
        num_features: encoder output channels ``F``.
        num_classes: classes to predict.
        hidden: width of the hidden layer; ``0`` for a single linear layer.
        dropout: dropout before each linear layer.

    Shapes:
        ``(N, F)`` or ``(N, F, *spatial)`` -> logits ``(N, num_classes)``.

    Examples:
        >>> head = ClassifierHead(num_features=32, num_classes=10)
        >>> head(torch.randn(4, 32)).shape   # pooled features -> logits
        torch.Size([4, 10])
    """

    def __init__(self, num_features: int, num_classes: int, hidden: int = 256, dropout: float = 0.0) -> None:
        super().__init__()
        self.mlp = _mlp(
            check_int("num_features", num_features, 1),
            check_int("num_classes", num_classes, 1),
            check_int("hidden", hidden, 0),
            dropout,
        )

    def forward(self, features: Tensor) -> Tensor:
        """Logits ``(N, num_classes)`` of encoder features ``(N, F[, *spatial])``."""
        out: Tensor = self.mlp(global_pool(features))
        return out


class MultiPatchClassifierHead(nn.Module):
    """Siamese head for patch tasks (jigsaw, relative patch location).

    The encoder has seen all ``B * P`` patches in one batch (``P`` consecutive rows per
    sample). Each patch's pooled features are projected by a shared linear layer to
    ``patch_features``, the ``P`` projections of a sample are concatenated in slot order
    and an MLP classifies them. The shared projection keeps the head small: for
    ``F = 256``, 27 patches and 100 classes about 0.5 M parameters, where the original
    put 16-36 M parameters into its heads.

    Args:
        num_features: encoder output channels ``F``.
        num_patches: patches per sample ``P``.
        num_classes: classes to predict.
        patch_features: width of each patch's projection.
        hidden: width of the MLP's hidden layer; ``0`` for a single linear layer.
        dropout: dropout before each linear layer of the MLP.

    Shapes:
        ``(B * P, F)`` or ``(B * P, F, *spatial)`` -> logits ``(B, num_classes)``.

    Examples:
        >>> head = MultiPatchClassifierHead(num_features=32, num_patches=9, num_classes=100)
        >>> head(torch.randn(4 * 9, 32)).shape   # the 9 patches of 4 images, in slot order -> logits
        torch.Size([4, 100])

    References:
        - Noroozi & Favaro, "Unsupervised Learning of Visual Representations by Solving Jigsaw Puzzles", ECCV
          2016.
        - Doersch et al., "Unsupervised Visual Representation Learning by Context Prediction", ICCV 2015.
        - Taleb et al., "3D Self-Supervised Methods for Medical Imaging", NeurIPS 2020.
    """

    def __init__(
        self,
        num_features: int,
        num_patches: int,
        num_classes: int,
        patch_features: int = 64,
        hidden: int = 256,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_patches = check_int("num_patches", num_patches, 1)
        check_int("patch_features", patch_features, 1)
        self.project = nn.Sequential(
            nn.Linear(check_int("num_features", num_features, 1), patch_features), nn.ReLU(inplace=True)
        )
        self.mlp = _mlp(
            num_patches * patch_features,
            check_int("num_classes", num_classes, 1),
            check_int("hidden", hidden, 0),
            dropout,
        )

    def forward(self, features: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` of the features of ``B * P`` patches."""
        pooled = global_pool(features)
        if pooled.shape[0] % self.num_patches:
            raise ValueError(
                f"features must hold B * num_patches = B * {self.num_patches} rows, got {pooled.shape[0]}"
            )
        per_sample = rearrange(self.project(pooled), "(b p) f -> b (p f)", p=self.num_patches)
        out: Tensor = self.mlp(per_sample)
        return out


class ProjectionHead(nn.Module):
    """Global average pool, an MLP, then L2 normalisation (for metric and contrastive losses).

    Shared by every view of the exemplar task, so all branches embed alike.

    Args:
        num_features: encoder output channels ``F``.
        out_features: embedding dimension ``D``.
        hidden: width of the hidden layer; ``0`` for a single linear layer.

    Shapes:
        ``(N, F)`` or ``(N, F, *spatial)`` -> unit-length embeddings ``(N, D)``.

    Examples:
        >>> with torch.no_grad():
        ...     embeddings = ProjectionHead(num_features=32, out_features=128)(torch.randn(4, 32))
        >>> embeddings.shape, round(float(embeddings[0].norm()), 4)   # unit-length embeddings
        (torch.Size([4, 128]), 1.0)

    References:
        - Taleb et al., "3D Self-Supervised Methods for Medical Imaging", NeurIPS 2020.
    """

    def __init__(self, num_features: int, out_features: int = 128, hidden: int = 256) -> None:
        super().__init__()
        self.mlp = _mlp(
            check_int("num_features", num_features, 1),
            check_int("out_features", out_features, 1),
            check_int("hidden", hidden, 0),
            0.0,
        )

    def forward(self, features: Tensor) -> Tensor:
        """Unit-length embeddings ``(N, out_features)``."""
        return F.normalize(self.mlp(global_pool(features)), dim=1)


class CPCHead(nn.Module):
    """Contrastive predictive coding over a grid of patch codes (van den Oord et al., 2018).

    The encoder has seen the ``B * grid**d`` patches of ``B`` images (row-major cell
    order, as the CPC task makes them). Each patch's pooled features are projected to a
    code ``z`` of ``code_dim``. Rows are the cells along spatial axis 0. For every column
    (a position along the other axes) a GRU runs down the rows, so the context ``c_r``
    of row ``r`` summarises rows ``0..r`` of its column and never a row below; a linear
    map per step ``k`` (1..``steps``) predicts ``z`` of row ``r + k`` from ``c_r``.
    (Taleb et al. aggregated with a GRU too; a masked convolution would also see
    neighbouring columns.)

    Args:
        num_features: encoder output channels ``F``.
        spatial_dims: 2 or 3.
        grid: cells per axis ``G``.
        steps: rows predicted ahead ``K``, ``1 <= K < G``.
        code_dim: size of the codes ``D``.
        context_dim: GRU hidden size.

    Shapes:
        ``(B * G**d, F[, *spatial])`` -> ``(2, B, K, G - 1, G, ..., D)``: index 0 holds the
        unit-length predictions from context rows ``0..G-2``, index 1 the unit-length
        targets, row ``r + 1 + k`` for prediction ``(k, r)`` (zero where that row does not
        exist: ``r + 1 + k >= G``).

    Examples:
        >>> head = CPCHead(num_features=16, spatial_dims=2, grid=4, steps=2, code_dim=8)
        >>> out = head(torch.randn(3 * 4**2, 16))   # the features of 3 images' 16 patches
        >>> out.shape   # (predictions | targets, B, K, G - 1, G, D)
        torch.Size([2, 3, 2, 3, 4, 8])

    References:
        - van den Oord et al., "Representation Learning with Contrastive Predictive Coding", arXiv:1807.03748,
          2018.
        - Hénaff et al., "Data-Efficient Image Recognition with Contrastive Predictive Coding", ICML 2020.
        - Taleb et al., "3D Self-Supervised Methods for Medical Imaging", NeurIPS 2020.
    """

    def __init__(
        self,
        num_features: int,
        spatial_dims: int,
        grid: int,
        steps: int,
        code_dim: int = 128,
        context_dim: int = 256,
    ) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.grid = check_int("grid", grid, 2)
        self.steps = check_int("steps", steps, 1)
        if steps >= grid:
            raise ValueError(f"steps must be < grid = {grid} (rows to predict from row 0), got {steps}")
        self.code_dim = check_int("code_dim", code_dim, 1)
        self.encode = nn.Linear(check_int("num_features", num_features, 1), code_dim)
        self.context = nn.GRU(code_dim, check_int("context_dim", context_dim, 1), batch_first=True)
        self.predict = nn.ModuleList(nn.Linear(context_dim, code_dim) for _ in range(steps))

    def codes(self, features: Tensor) -> Tensor:
        """Codes ``(B, G, ..., G, D)`` of the patches' features (rows first)."""
        cells = self.grid**self.spatial_dims
        pooled = global_pool(features)
        if pooled.shape[0] % cells:
            raise ValueError(f"features must hold B * grid**d = B * {cells} rows, got {pooled.shape[0]}")
        z: Tensor = self.encode(pooled)
        return z.view(-1, *[self.grid] * self.spatial_dims, self.code_dim)  # row-major cells

    def contexts(self, z: Tensor) -> Tensor:
        """Contexts ``(B, G, ..., G, context_dim)``: row ``r`` has seen rows ``0..r`` of its column."""
        # one GRU sequence per column: the rows become the sequence axis
        if self.spatial_dims == 2:
            out: Tensor = self.context(rearrange(z, "b r w c -> (b w) r c"))[0]
            return rearrange(out, "(b w) r c -> b r w c", b=z.shape[0])
        out = self.context(rearrange(z, "b r h w c -> (b h w) r c"))[0]
        return rearrange(out, "(b h w) r c -> b r h w c", b=z.shape[0], h=self.grid)

    def forward(self, features: Tensor) -> Tensor:
        """Stacked predictions and targets, see the class docstring."""
        z = self.codes(features)
        c = self.contexts(z)[:, :-1]  # context rows 0..G-2
        preds = torch.stack([F.normalize(p(c), dim=-1) for p in self.predict], dim=1)
        z = F.normalize(z, dim=-1)
        targets = torch.zeros_like(preds)
        for k in range(self.steps):
            rows = self.grid - 1 - k
            targets[:, k, :rows] = z[:, k + 1 : k + 1 + rows]
        out = torch.stack([preds, targets])
        return out


def _mlp(in_features: int, out_features: int, hidden: int, dropout: float) -> nn.Sequential:
    check_unit_interval("dropout", dropout, include_one=False)
    if hidden == 0:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, out_features))
    return nn.Sequential(
        nn.Dropout(dropout),
        nn.Linear(in_features, hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(hidden, out_features),
    )
