"""A small plain convolutional encoder for tests, demos and quick experiments."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from pretext3d._checks import check_choice, check_int, check_spatial_dims, check_unit_interval
from pretext3d.config import SpatialDims
from pretext3d.models import _layers as L
from pretext3d.models.base import Encoder
from pretext3d.registry import register_encoder

__all__ = ["ConvEncoder"]


@register_encoder("conv")
class ConvEncoder(Encoder):
    """Stages of (3x3[x3] conv, norm, ReLU) x 2, max-pooled by 2 (rounding up) between stages.

    Not one of the paper's backbones (see the U-Net and DenseNet encoders for those): a
    small, fast encoder that keeps the same contract (:class:`~pretext3d.models.Encoder`).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels ``C``.
        widths: output channels of each stage.
        norm: ``"batch"``, ``"instance"`` or ``"group"``.
        dropout: channel-dropout probability after each stage.

    Attributes:
        num_features: ``widths[-1]``, the feature width heads read.
        feature_info: per stage ``{"num_chs", "reduction", "module"}``.
        config: the constructor arguments, for saving and rebuilding.

    Shapes:
        ``forward_features``: ``(N, C, *spatial)`` ->
        ``(N, widths[-1], *ceil(spatial / 2**(len(widths) - 1)))``; ``forward``: pooled
        ``(N, widths[-1])``. Any spatial size >= 1 works (pooling rounds up).

    Examples:
        >>> encoder = ConvEncoder(spatial_dims=3, widths=(8, 16, 32))
        >>> encoder(torch.randn(2, 1, 16, 16, 16)).shape
        torch.Size([2, 32])
    """

    def __init__(
        self,
        spatial_dims: SpatialDims,
        in_channels: int = 1,
        widths: Sequence[int] = (8, 16, 32),
        *,
        norm: L.Norm = "batch",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        d = check_spatial_dims(spatial_dims)
        self.spatial_dims = d
        self.in_channels = check_int("in_channels", in_channels, 1)
        check_choice("norm", norm, L.NORMS)
        check_unit_interval("dropout", dropout, include_one=False)
        if not widths:
            raise ValueError("widths must name at least one stage, got ()")
        self.config: dict[str, Any] = {
            "spatial_dims": d,
            "in_channels": in_channels,
            "widths": tuple(widths),
            "norm": norm,
            "dropout": dropout,
        }
        self.stages = nn.ModuleList()
        self.feature_info = []
        previous = in_channels
        for i, width in enumerate(widths):
            check_int(f"widths[{i}]", width, 1)
            layers: list[nn.Module] = [L.max_pool(d)(2, ceil_mode=True)] if i else []
            for _ in range(2):
                layers += [
                    L.conv(d)(previous, width, 3, padding=1, bias=False),
                    L.norm(norm, d, width),
                    nn.ReLU(inplace=True),
                ]
                previous = width
            if dropout:
                layers.append(L.dropout(d)(dropout))
            self.stages.append(nn.Sequential(*layers))
            self.feature_info.append({"num_chs": width, "reduction": 2**i, "module": f"stages.{i}"})
        self.num_features = previous

    @property
    def min_size(self) -> int:
        """1: pooling rounds up, so every size works."""
        return 1

    def forward_intermediates(self, x: Tensor) -> list[Tensor]:
        """The output of every stage, finest first."""
        L.check_input(x, self.spatial_dims, self.in_channels, 1, "1")
        pooled = 2 ** (len(self.stages) - 1)
        L.check_batch_statistics(self, x, [-(-s // pooled) for s in x.shape[2:]])
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out
