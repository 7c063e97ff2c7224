"""The 2D/3D U-Net of Taleb et al. (NeurIPS 2020), with its encoder as a module of its own.

Ronneberger et al., "U-Net", MICCAI 2015; Çiçek et al., "3D U-Net", MICCAI 2016.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from pretext3d._checks import check_choice, check_int, check_positive, check_spatial_dims, check_unit_interval
from pretext3d.config import SpatialDims
from pretext3d.models import _layers as L
from pretext3d.models.base import Encoder
from pretext3d.registry import register_encoder

__all__ = ["UNet", "UNetEncoder"]


class DoubleConv(nn.Sequential):
    """(3x3[x3] conv, norm, ReLU) x 2, then optional channel dropout."""

    def __init__(self, spatial_dims: SpatialDims, cin: int, cout: int, norm: str, dropout: float) -> None:
        conv = L.conv(spatial_dims)
        layers: list[nn.Module] = []
        for i in range(2):
            layers += [
                conv(cin if i == 0 else cout, cout, 3, padding=1),
                L.norm(norm, spatial_dims, cout),
                nn.ReLU(inplace=True),
            ]
        if dropout:
            layers.append(L.dropout(spatial_dims)(dropout))
        super().__init__(*layers)


class _Pooled:
    """``stage(pool(x))`` as one callable for checkpointing."""

    def __init__(self, pool: nn.Module, stage: nn.Module) -> None:
        self.pool, self.stage = pool, stage

    def __call__(self, x: Tensor) -> Tensor:
        out: Tensor = self.stage(self.pool(x))
        return out


class _UpBlock:
    """``stage(cat(up(y), skip))`` as one callable for checkpointing."""

    def __init__(self, up: nn.Module, stage: nn.Module) -> None:
        self.up, self.stage = up, stage

    def __call__(self, y: Tensor, skip: Tensor) -> Tensor:
        out: Tensor = self.stage(torch.cat([self.up(y), skip], dim=1))
        return out


@register_encoder("unet")
class UNetEncoder(Encoder):
    """The contracting half of a U-Net: double-conv stages with 2x max-pooling between them.

    With the defaults it is the paper's 3D encoder: widths 16/32/64/128 and a 256-wide
    bottleneck, convolutions with bias, batch norm, 3,535,440 parameters for one input
    channel, as in the original Keras model. The same weights run on any input size
    (a 39^3 jigsaw patch or a 128^3 volume): pooling floors odd sizes, and every spatial
    size must be at least ``2 ** (len(widths) - 1)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        widths: output channels of each stage; the last is the bottleneck.
        norm: ``"batch"``, ``"instance"`` or ``"group"``.
        dropout: channel-dropout probability after each stage.
        width_multiplier: scales every width (rounded, at least 1); 0.5 gives the
            half-width model of the earlier PyTorch port.
        checkpointing: recompute each stage's activations in backward instead of storing
            them (less memory, about one more forward pass of time).

    Attributes:
        num_features: the bottleneck width, what ``forward`` returns per sample.
        feature_info: per stage ``{"num_chs", "reduction", "module"}`` (timm's convention).
        config: the constructor arguments, for saving and rebuilding.

    Shapes:
        ``forward``: ``(N, C, *spatial)`` -> pooled ``(N, num_features)``.
        ``forward_features``: ``(N, C, *spatial)`` -> the bottleneck map
        ``(N, num_features, *spatial // 2**(stages - 1))``.
        ``forward_intermediates``: ``(N, C, *spatial)`` -> list of stage outputs, stage
        ``i`` of shape ``(N, widths[i], *spatial // 2**i)``.

    Examples:
        >>> encoder = UNetEncoder(spatial_dims=3, in_channels=1)   # the paper's widths 16-256
        >>> encoder.num_features, sum(p.numel() for p in encoder.parameters())
        (256, 3535440)
        >>> encoder(torch.randn(2, 1, 32, 32, 32)).shape   # pooled features
        torch.Size([2, 256])

    References:
        - Ronneberger et al., "U-Net: Convolutional Networks for Biomedical Image Segmentation", MICCAI 2015.
        - Çiçek et al., "3D U-Net: Learning Dense Volumetric Segmentation from Sparse Annotation", MICCAI
          2016.
        - Taleb et al., "3D Self-Supervised Methods for Medical Imaging", NeurIPS 2020.
    """

    def __init__(
        self,
        spatial_dims: SpatialDims = 3,
        in_channels: int = 1,
        widths: Sequence[int] = (16, 32, 64, 128, 256),
        *,
        norm: L.Norm = "batch",
        dropout: float = 0.0,
        width_multiplier: float = 1.0,
        checkpointing: bool = False,
    ) -> None:
        super().__init__()
        d = check_spatial_dims(spatial_dims)
        check_int("in_channels", in_channels, 1)
        check_choice("norm", norm, L.NORMS)
        if not widths:
            raise ValueError("widths must name at least one stage, got ()")
        for i, w in enumerate(widths):
            check_int(f"widths[{i}]", w, 1)
        check_positive("width_multiplier", width_multiplier)
        check_unit_interval("dropout", dropout, include_one=False)
        scaled = [max(1, round(w * width_multiplier)) for w in widths]
        self.config: dict[str, Any] = {
            "spatial_dims": d,
            "in_channels": in_channels,
            "widths": tuple(widths),
            "norm": norm,
            "dropout": dropout,
            "width_multiplier": width_multiplier,
        }
        self.spatial_dims = d
        self.in_channels = in_channels
        self.widths = tuple(scaled)
        self.checkpointing = checkpointing
        self.pool = L.max_pool(d)(2)
        self.stages = nn.ModuleList(
            DoubleConv(d, cin, cout, norm, dropout)
            for cin, cout in zip([in_channels, *scaled[:-1]], scaled, strict=True)
        )
        self.num_features = scaled[-1]
        self.feature_info = [
            {"num_chs": w, "reduction": 2**i, "module": f"stages.{i}"} for i, w in enumerate(scaled)
        ]

    @property
    def min_size(self) -> int:
        """Smallest spatial size every axis must have."""
        return int(2 ** (len(self.widths) - 1))

    def forward_intermediates(self, x: Tensor) -> list[Tensor]:
        """The output of every stage, finest first."""
        L.check_input(
            x,
            self.spatial_dims,
            self.in_channels,
            self.min_size,
            f"2**(stages - 1) for {len(self.widths)} stages",
        )
        L.check_batch_statistics(self, x, [s // self.min_size for s in x.shape[2:]])
        features = []
        checkpoint = L.use_checkpoint(self.checkpointing)
        for i, stage in enumerate(self.stages):
            # The pooling sits inside the checkpointed block, so that only the previous
            # stage's output (kept anyway as a skip connection) is saved for backward.
            block = stage if i == 0 else _Pooled(self.pool, stage)
            x = L.checkpointed(stage, block, x) if checkpoint else block(x)
            features.append(x)
        return features


class UNet(nn.Module):
    """A U-Net: a :class:`UNetEncoder` and a decoder that mirrors it.

    Each decoder stage upsamples by 2 (a transposed convolution, or linear upsampling
    and a 1x1 convolution), concatenates the encoder's skip connection of the same scale
    and applies a double convolution; a 1x1 convolution gives the logits.

    Size rule: every spatial size must be a multiple of ``2 ** (stages - 1)`` (16 for
    the default 5 stages) so that the skips line up; other sizes raise an error that
    names the nearest valid ones (pad or crop to them).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output classes (logits).
        widths: as for :class:`UNetEncoder`; the decoder mirrors them.
        norm: as for :class:`UNetEncoder`; the decoder uses the same.
        dropout: as for :class:`UNetEncoder`; the decoder uses the same.
        width_multiplier: as for :class:`UNetEncoder`.
        checkpointing: as for :class:`UNetEncoder`; the decoder uses the same.
        upsample: ``"transpose"`` or ``"linear"``.

    Shapes:
        ``(N, in_channels, *spatial)`` -> ``(N, out_channels, *spatial)``.

    Examples:
        >>> unet = UNet(3, in_channels=1, out_channels=3, widths=(8, 16, 32))
        >>> unet(torch.randn(1, 1, 32, 32, 32)).shape   # logits per voxel
        torch.Size([1, 3, 32, 32, 32])
        >>> pretrained = UNet.from_encoder(UNetEncoder(3, widths=(8, 16, 32)), out_channels=3)

    References:
        - Ronneberger et al., "U-Net: Convolutional Networks for Biomedical Image Segmentation", MICCAI 2015.
        - Çiçek et al., "3D U-Net: Learning Dense Volumetric Segmentation from Sparse Annotation", MICCAI
          2016.
        - Taleb et al., "3D Self-Supervised Methods for Medical Imaging", NeurIPS 2020.
    """

    def __init__(
        self,
        spatial_dims: SpatialDims = 3,
        in_channels: int = 1,
        out_channels: int = 3,
        widths: Sequence[int] = (16, 32, 64, 128, 256),
        *,
        norm: L.Norm = "batch",
        dropout: float = 0.0,
        width_multiplier: float = 1.0,
        checkpointing: bool = False,
        upsample: Literal["transpose", "linear"] = "transpose",
    ) -> None:
        super().__init__()
        encoder = UNetEncoder(
            spatial_dims,
            in_channels,
            widths,
            norm=norm,
            dropout=dropout,
            width_multiplier=width_multiplier,
            checkpointing=checkpointing,
        )
        self._build(encoder, out_channels, upsample)

    def _build(self, encoder: UNetEncoder, out_channels: int, upsample: str) -> None:
        check_int("out_channels", out_channels, 1)
        check_choice("upsample", upsample, ("transpose", "linear"))
        self.encoder = encoder
        d = encoder.spatial_dims
        norm_kind = encoder.config["norm"]
        drop = encoder.config["dropout"]
        self.ups = nn.ModuleList()
        self.stages = nn.ModuleList()
        ws = encoder.widths
        for deep, skip in zip(ws[:0:-1], ws[-2::-1], strict=True):
            if upsample == "transpose":
                up: nn.Module = L.conv_transpose(d)(deep, skip, 2, stride=2)
            else:
                mode = "bilinear" if d == 2 else "trilinear"
                up = nn.Sequential(nn.Upsample(scale_factor=2, mode=mode), L.conv(d)(deep, skip, 1))
            self.ups.append(up)
            self.stages.append(DoubleConv(d, 2 * skip, skip, norm_kind, drop))
        self.head = L.conv(d)(ws[0], out_channels, 1)
        self.out_channels = out_channels

    @property
    def checkpointing(self) -> bool:
        """Whether encoder and decoder stages recompute their activations in backward."""
        return self.encoder.checkpointing

    @checkpointing.setter
    def checkpointing(self, value: bool) -> None:
        self.encoder.checkpointing = value

    @classmethod
    def from_encoder(
        cls,
        encoder: UNetEncoder,
        out_channels: int,
        *,
        upsample: Literal["transpose", "linear"] = "transpose",
        copy_encoder: bool = True,
    ) -> UNet:
        """A U-Net around a (pretrained) encoder; the decoder is new.

        Args:
            encoder: a :class:`UNetEncoder`, e.g. ``pretext_model.encoder``.
            out_channels: output classes.
            upsample: ``"transpose"`` or ``"linear"``.
            copy_encoder: use a deep copy (default), so that fine-tuning leaves the
                pretrained encoder untouched; ``False`` shares the module.
        """
        if not isinstance(encoder, UNetEncoder):
            raise TypeError(
                f"UNet.from_encoder takes a UNetEncoder, got {type(encoder).__name__}; for any other encoder "
                "(timm, MONAI, your own) use pretext3d.models.MultiScaleUNet(encoder, out_channels)"
            )
        unet = cls.__new__(cls)
        nn.Module.__init__(unet)
        unet._build(copy.deepcopy(encoder) if copy_encoder else encoder, out_channels, upsample)
        return unet

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, out_channels, *spatial)``."""
        factor = self.encoder.min_size
        bad = [s for s in x.shape[2:] if s % factor]
        if bad:
            nearest = [(s // factor * factor or factor, (s // factor + 1) * factor) for s in x.shape[2:]]
            raise ValueError(
                f"UNet needs every spatial size to be a multiple of {factor} (2**(stages - 1)); "
                f"got {tuple(x.shape[2:])}. Pad or crop to one of {nearest} per axis."
            )
        features = self.encoder.forward_intermediates(x)
        y = features[-1]
        checkpoint = L.use_checkpoint(self.checkpointing)
        for up, stage, skip in zip(self.ups, self.stages, features[-2::-1], strict=True):
            # Upsampling, concatenation and convolutions in one checkpointed block: only
            # the coarse input and the skip (kept by the encoder anyway) are saved.
            block = _UpBlock(up, stage)
            y = L.checkpointed(stage, block, y, skip) if checkpoint else block(y, skip)
        out: Tensor = self.head(y)
        return out
