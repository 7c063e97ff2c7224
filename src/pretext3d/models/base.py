"""The contract every shipped encoder keeps (timm's, in 2D and 3D)."""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Encoder", "evaluating"]


@contextlib.contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode without gradients (a probe), its training mode restored after.

    Examples:
        >>> net = torch.nn.BatchNorm1d(4)
        >>> with evaluating(net):
        ...     out = net(torch.randn(2, 4))   # running statistics untouched
        >>> net.training, int(net.num_batches_tracked)
        (True, 0)
    """
    mode = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield module
    finally:
        module.train(mode)


class Encoder(nn.Module, abc.ABC):
    """Base class of the library's encoders: the interface heads, decoders and I/O rely on.

    Follows timm's feature-extractor contract:

    * ``forward_features(x)``: the final feature map ``(N, num_features, *spatial')``;
    * ``forward(x)``: those features globally average-pooled, ``(N, num_features)`` (a
      timm model with ``num_classes=0`` does the same);
    * ``forward_intermediates(x)``: the output of every stage listed in
      ``feature_info``, finest first (what a U-Net decoder needs);
    * ``num_features``, ``feature_info`` (per stage ``{"num_chs", "reduction",
      "module"}``), ``spatial_dims``, ``in_channels``, ``min_size`` (the smallest
      spatial size every axis must have) and ``config`` (the constructor arguments, so
      :func:`~pretext3d.models.load_encoder` can rebuild it).

    Every encoder takes ``spatial_dims``, ``in_channels``, ``norm`` (``"batch"``,
    ``"instance"`` or ``"group"``) and ``dropout``. Any ``nn.Module`` that maps
    ``(N, C, *spatial)`` to ``(N, F)`` or ``(N, F, *spatial)`` can be pretrained with
    :class:`~pretext3d.PretextModel`; this base is only what the library's own keep.

    Examples:
        >>> encoder = p3.models.UNetEncoder(spatial_dims=2, in_channels=1, widths=(8, 16))
        >>> x = torch.randn(2, 1, 32, 32)
        >>> encoder.forward_features(x).shape, encoder(x).shape, encoder.min_size
        (torch.Size([2, 16, 16, 16]), torch.Size([2, 16]), 2)
        >>> stages = encoder.forward_intermediates(x)   # finest first, for a U-Net decoder
        >>> [f["num_chs"] for f in encoder.feature_info], [s.shape[1] for s in stages]
        ([8, 16], [8, 16])
    """

    spatial_dims: int
    in_channels: int
    num_features: int
    feature_info: list[dict[str, Any]]
    config: dict[str, Any]

    @property
    @abc.abstractmethod
    def min_size(self) -> int:
        """Smallest spatial size every axis of the input must have."""

    @abc.abstractmethod
    def forward_intermediates(self, x: Tensor) -> list[Tensor]:
        """The output of every ``feature_info`` stage, finest first."""

    def forward_features(self, x: Tensor) -> Tensor:
        """The final feature map ``(N, num_features, *spatial')``."""
        return self.forward_intermediates(x)[-1]

    def forward(self, x: Tensor) -> Tensor:
        """Globally average-pooled features ``(N, num_features)``."""
        return self.forward_features(x).flatten(2).mean(-1)
