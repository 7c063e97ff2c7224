"""DenseNet-121 in 2D and 3D (Huang et al., "Densely Connected Convolutional Networks", CVPR 2017).

The 2D model has exactly torchvision's ``densenet121`` layers and parameter count
(6,958,981 with 3 input channels and 5 classes); the 3D model is the same design with
3D layers. Taleb et al. (NeurIPS 2020) pretrained it on fundus images for
diabetic-retinopathy grading.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretext3d._checks import check_choice, check_int, check_spatial_dims, check_unit_interval
from pretext3d.config import SpatialDims
from pretext3d.models import _layers as L
from pretext3d.models.base import Encoder
from pretext3d.registry import register_encoder

__all__ = ["DenseNet", "DenseNet121", "DenseNetEncoder"]


class _DenseLayer(nn.Module):
    def __init__(
        self, spatial_dims: SpatialDims, cin: int, growth: int, bn_size: int, norm: str, dropout: float
    ) -> None:
        super().__init__()
        conv = L.conv(spatial_dims)
        self.norm1 = L.norm(norm, spatial_dims, cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = conv(cin, bn_size * growth, 1, bias=False)
        self.norm2 = L.norm(norm, spatial_dims, bn_size * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = conv(bn_size * growth, growth, 3, padding=1, bias=False)
        self.dropout = dropout
        self.checkpointing = False

    def _bottleneck(self, *inputs: Tensor) -> Tensor:
        out: Tensor = self.conv1(self.relu1(self.norm1(torch.cat(inputs, 1))))
        return out

    def forward(self, inputs: list[Tensor]) -> Tensor:
        if L.use_checkpoint(self.checkpointing):
            # The concatenation and its normalisation are the memory hog of a DenseNet
            # (Pleiss et al., "Memory-Efficient Implementation of DenseNets", 2017).
            bottleneck = L.checkpointed(self, self._bottleneck, *inputs)
        else:
            bottleneck = self._bottleneck(*inputs)
        out: Tensor = self.conv2(self.relu2(self.norm2(bottleneck)))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        return out


class _DenseBlock(nn.ModuleDict):
    def __init__(
        self,
        spatial_dims: SpatialDims,
        num_layers: int,
        cin: int,
        growth: int,
        bn_size: int,
        norm: str,
        dropout: float,
    ) -> None:
        super().__init__()
        for i in range(num_layers):
            self.add_module(
                f"denselayer{i + 1}",
                _DenseLayer(spatial_dims, cin + i * growth, growth, bn_size, norm, dropout),
            )

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class _Transition(nn.Sequential):
    def __init__(self, spatial_dims: SpatialDims, cin: int, cout: int, norm: str) -> None:
        super().__init__()
        self.add_module("norm", L.norm(norm, spatial_dims, cin))
        self.add_module("relu", nn.ReLU(inplace=True))
        self.add_module("conv", L.conv(spatial_dims)(cin, cout, 1, bias=False))
        self.add_module("pool", L.avg_pool(spatial_dims)(2, stride=2))


@register_encoder("densenet")
class DenseNetEncoder(Encoder):
    """The convolutional part of a DenseNet, ending in a normalisation and ReLU.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        growth_rate: channels each dense layer adds.
        block_config: dense layers per block.
        init_features: channels of the stem convolution.
        bn_size: bottleneck width as a multiple of ``growth_rate``.
        norm: ``"batch"`` (the paper's and torchvision's), ``"instance"`` or ``"group"``.
        dropout: dropout after each dense layer (torchvision's ``drop_rate``).
        checkpointing: recompute each dense layer's concatenation and bottleneck in
            backward (memory-efficient DenseNet).

    Attributes:
        num_features: channels of the output feature map.
        feature_info: per stage (stem, dense blocks, the final activation)
            ``{"num_chs", "reduction", "module"}``.
        config: the constructor arguments, for saving and rebuilding.

    Shapes:
        ``forward``: ``(N, C, *spatial)`` -> pooled ``(N, num_features)``;
        ``forward_features``: -> ``(N, num_features, *spatial / 2**(blocks + 1))``; every
        spatial size must be at least ``2 ** (len(block_config) + 1)`` (32 for DenseNet-121).

    Examples:
        >>> encoder = DenseNetEncoder(spatial_dims=2, in_channels=3)   # DenseNet-121's defaults
        >>> encoder.num_features, encoder(torch.randn(1, 3, 64, 64)).shape
        (1024, torch.Size([1, 1024]))

    References:
        - Huang et al., "Densely Connected Convolutional Networks", CVPR 2017.
        - Taleb et al., "3D Self-Supervised Methods for Medical Imaging", NeurIPS 2020.
    """

    def __init__(
        self,
        spatial_dims: SpatialDims = 2,
        in_channels: int = 3,
        growth_rate: int = 32,
        block_config: Sequence[int] = (6, 12, 24, 16),
        init_features: int = 64,
        bn_size: int = 4,
        *,
        norm: L.Norm = "batch",
        dropout: float = 0.0,
        checkpointing: bool = False,
    ) -> None:
        super().__init__()
        d = check_spatial_dims(spatial_dims)
        check_choice("norm", norm, L.NORMS)
        check_int("in_channels", in_channels, 1)
        check_int("growth_rate", growth_rate, 1)
        check_int("init_features", init_features, 1)
        check_int("bn_size", bn_size, 1)
        if not block_config:
            raise ValueError("block_config must name at least one dense block, got ()")
        for i, n in enumerate(block_config):
            check_int(f"block_config[{i}]", n, 1)
        check_unit_interval("dropout", dropout, include_one=False)
        self.config: dict[str, Any] = {
            "spatial_dims": d,
            "in_channels": in_channels,
            "growth_rate": growth_rate,
            "block_config": tuple(block_config),
            "init_features": init_features,
            "bn_size": bn_size,
            "norm": norm,
            "dropout": dropout,
        }
        self.spatial_dims = d
        self.in_channels = in_channels
        self.features = nn.Sequential()
        self.features.add_module(
            "conv0", L.conv(d)(in_channels, init_features, 7, stride=2, padding=3, bias=False)
        )
        self.features.add_module("norm0", L.norm(norm, d, init_features))
        self.features.add_module("relu0", nn.ReLU(inplace=True))
        self.features.add_module("pool0", L.max_pool(d)(3, stride=2, padding=1))
        channels = init_features
        self.feature_info = [{"num_chs": channels, "reduction": 4, "module": "features.pool0"}]
        for i, num_layers in enumerate(block_config):
            self.features.add_module(
                f"denseblock{i + 1}",
                _DenseBlock(d, num_layers, channels, growth_rate, bn_size, norm, dropout),
            )
            channels += num_layers * growth_rate
            reduction = 4 * 2**i
            if i != len(block_config) - 1:
                self.feature_info.append(
                    {"num_chs": channels, "reduction": reduction, "module": f"features.denseblock{i + 1}"}
                )
                self.features.add_module(f"transition{i + 1}", _Transition(d, channels, channels // 2, norm))
                channels //= 2
        self.features.add_module("norm5", L.norm(norm, d, channels))
        self.features.add_module("relu5", nn.ReLU(inplace=True))
        self.feature_info.append({"num_chs": channels, "reduction": reduction, "module": "features.relu5"})
        self.num_features = channels
        self.checkpointing = checkpointing
        for m in self.modules():
            if isinstance(m, nn.modules.conv._ConvNd):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    @property
    def min_size(self) -> int:
        """Smallest spatial size every axis must have: ``2 ** (blocks + 1)``."""
        return int(2 ** (len(self.config["block_config"]) + 1))

    @property
    def checkpointing(self) -> bool:
        """Whether dense layers recompute their bottleneck in backward."""
        return self._checkpointing

    @checkpointing.setter
    def checkpointing(self, value: bool) -> None:
        self._checkpointing = bool(value)
        for m in self.modules():
            if isinstance(m, _DenseLayer):
                m.checkpointing = self._checkpointing

    def _check(self, x: Tensor) -> None:
        blocks = len(self.config["block_config"])
        L.check_input(
            x, self.spatial_dims, self.in_channels, self.min_size, f"2**(blocks + 1) for {blocks} blocks"
        )
        deepest = []
        for s in x.shape[2:]:
            s = (s - 1) // 2 + 1  # stem convolution, stride 2
            s = (s - 1) // 2 + 1  # max pool, stride 2
            deepest.append(s // 2 ** (blocks - 1))  # one average pool per transition
        L.check_batch_statistics(self, x, deepest)

    def forward_features(self, x: Tensor) -> Tensor:
        """The final feature map ``(N, num_features, *reduced)``."""
        self._check(x)
        out: Tensor = self.features(x)
        return out

    def forward_intermediates(self, x: Tensor) -> list[Tensor]:
        """The outputs of the stem, every dense block but the last, and the final activation."""
        self._check(x)
        wanted = {info["module"].removeprefix("features.") for info in self.feature_info}
        out = []
        for name, module in self.features.named_children():
            x = module(x)
            if name in wanted:
                out.append(x)
        return out


class DenseNet(nn.Module):
    """A DenseNet classifier: :class:`DenseNetEncoder`, global average pooling, a linear layer.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        num_classes: output classes.
        growth_rate: as for :class:`DenseNetEncoder`.
        block_config: as for :class:`DenseNetEncoder`.
        init_features: as for :class:`DenseNetEncoder`.
        bn_size: as for :class:`DenseNetEncoder`.
        norm: as for :class:`DenseNetEncoder`.
        dropout: as for :class:`DenseNetEncoder`.
        checkpointing: as for :class:`DenseNetEncoder`.

    Shapes:
        ``(N, in_channels, *spatial)`` -> logits ``(N, num_classes)``.

    Examples:
        >>> model = DenseNet(spatial_dims=2, in_channels=3, num_classes=5)   # DenseNet-121, as torchvision's
        >>> sum(p.numel() for p in model.parameters())
        6958981
        >>> small = DenseNet(2, 3, 5, growth_rate=12, block_config=(2, 2), init_features=16)
        >>> small(torch.randn(2, 3, 64, 64)).shape
        torch.Size([2, 5])

    References:
        - Huang et al., "Densely Connected Convolutional Networks", CVPR 2017.
        - Taleb et al., "3D Self-Supervised Methods for Medical Imaging", NeurIPS 2020 (DR grading).
    """

    def __init__(
        self,
        spatial_dims: SpatialDims = 2,
        in_channels: int = 3,
        num_classes: int = 5,
        growth_rate: int = 32,
        block_config: Sequence[int] = (6, 12, 24, 16),
        init_features: int = 64,
        bn_size: int = 4,
        *,
        norm: L.Norm = "batch",
        dropout: float = 0.0,
        checkpointing: bool = False,
    ) -> None:
        super().__init__()
        encoder = DenseNetEncoder(
            spatial_dims,
            in_channels,
            growth_rate,
            block_config,
            init_features,
            bn_size,
            norm=norm,
            dropout=dropout,
            checkpointing=checkpointing,
        )
        self._build(encoder, num_classes)

    def _build(self, encoder: DenseNetEncoder, num_classes: int) -> None:
        check_int("num_classes", num_classes, 1)
        self.features = encoder
        self.classifier = nn.Linear(encoder.num_features, num_classes)
        nn.init.constant_(self.classifier.bias, 0)
        self.num_features = encoder.num_features

    @property
    def encoder(self) -> DenseNetEncoder:
        """The convolutional part (``features``), to pretrain or to load weights into."""
        return self.features

    @classmethod
    def from_encoder(
        cls, encoder: DenseNetEncoder, num_classes: int, *, copy_encoder: bool = True
    ) -> DenseNet:
        """A classifier around a (pretrained) encoder, with a new linear layer.

        Args:
            encoder: a :class:`DenseNetEncoder`, e.g. ``pretext_model.encoder``.
            num_classes: output classes.
            copy_encoder: use a deep copy (default) so fine-tuning leaves it untouched.
        """
        if not isinstance(encoder, DenseNetEncoder):
            raise TypeError(f"encoder must be a DenseNetEncoder, got {type(encoder).__name__}")
        net = cls.__new__(cls)
        nn.Module.__init__(net)
        net._build(copy.deepcopy(encoder) if copy_encoder else encoder, num_classes)
        return net

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, num_classes)``."""
        out: Tensor = self.classifier(self.features(x))
        return out


class DenseNet121(DenseNet):
    """DenseNet-121: growth 32, blocks (6, 12, 24, 16), 64 stem features, bottleneck 4.

    In 2D with 3 input channels and 5 classes: 6,958,981 parameters, as torchvision's
    ``densenet121``. Its encoder is ``DenseNetEncoder(spatial_dims, in_channels)`` (the
    encoder's defaults are DenseNet-121's).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        num_classes: output classes.
        norm: as for :class:`DenseNetEncoder`.
        dropout: as for :class:`DenseNetEncoder`.
        checkpointing: as for :class:`DenseNetEncoder`.

    Examples:
        >>> net = DenseNet121(spatial_dims=2, in_channels=3, num_classes=5)
        >>> net(torch.randn(1, 3, 64, 64)).shape, sum(p.numel() for p in net.parameters())
        (torch.Size([1, 5]), 6958981)
    """

    def __init__(
        self,
        spatial_dims: SpatialDims = 2,
        in_channels: int = 3,
        num_classes: int = 5,
        *,
        norm: L.Norm = "batch",
        dropout: float = 0.0,
        checkpointing: bool = False,
    ) -> None:
        super().__init__(
            spatial_dims,
            in_channels,
            num_classes,
            32,
            (6, 12, 24, 16),
            64,
            4,
            norm=norm,
            dropout=dropout,
            checkpointing=checkpointing,
        )
