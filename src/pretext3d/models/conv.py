"""A small plain convolutional encoder for tests, demos and quick experiments."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from pretext3d._checks import check_int, check_spatial_dims

__all__ = ["ConvEncoder"]


class ConvEncoder(nn.Module):
    """Stages of (3x3[x3] conv, batch norm, ReLU) x 2, max-pooled by 2 (rounding up) between stages.

    Not one of the paper's backbones (see the U-Net and DenseNet encoders for those): a
    small, fast encoder that shows the interface the library expects of any encoder.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels ``C``.
        widths: output channels of each stage.

    Attributes:
        num_features: ``widths[-1]``, the feature width heads read.
        in_channels: ``C``.

    Shapes:
        ``(N, C, *spatial)`` -> ``(N, widths[-1], *ceil(spatial / 2**(len(widths) - 1)))``;
        any spatial size >= 1 works (pooling rounds up).
    """

    def __init__(self, spatial_dims: int, in_channels: int = 1, widths: Sequence[int] = (8, 16, 32)) -> None:
        super().__init__()
        d = check_spatial_dims(spatial_dims)
        self.in_channels = check_int("in_channels", in_channels, 1)
        if not widths:
            raise ValueError("widths must name at least one stage, got ()")
        conv = nn.Conv2d if d == 2 else nn.Conv3d
        norm = nn.BatchNorm2d if d == 2 else nn.BatchNorm3d
        pool = nn.MaxPool2d if d == 2 else nn.MaxPool3d
        layers: list[nn.Module] = []
        previous = in_channels
        for i, width in enumerate(widths):
            check_int(f"widths[{i}]", width, 1)
            if i:
                layers.append(pool(2, ceil_mode=True))
            for _ in range(2):
                layers += [
                    conv(previous, width, 3, padding=1, bias=False),
                    norm(width),
                    nn.ReLU(inplace=True),
                ]
                previous = width
        self.layers = nn.Sequential(*layers)
        self.num_features = previous

    def forward(self, x: Tensor) -> Tensor:
        """Feature map ``(N, num_features, *reduced)``."""
        out: Tensor = self.layers(x)
        return out
