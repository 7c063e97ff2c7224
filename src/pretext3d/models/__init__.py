"""Reference encoders and the networks built from them.

Every encoder here keeps the contract of :class:`Encoder` (timm's ``forward_features`` /
``forward`` / ``num_features`` / ``feature_info``, plus ``forward_intermediates``,
``min_size`` and ``config``) and is registered by name in
:data:`pretext3d.registry.ENCODERS`: ``"unet"``, ``"densenet"``, ``"conv"``.
:class:`MultiScaleUNet` puts a U-Net decoder on any other encoder (timm, MONAI, your own).
"""

from pretext3d.models.base import Encoder, evaluating
from pretext3d.models.conv import ConvEncoder
from pretext3d.models.densenet import DenseNet, DenseNet121, DenseNetEncoder
from pretext3d.models.io import (
    encoder_info,
    encoder_name,
    load_decoder,
    load_encoder,
    load_encoder_weights,
    save_encoder,
)
from pretext3d.models.multiscale import DenseHead, MultiScaleUNet, default_decoder_widths
from pretext3d.models.unet import UNet, UNetEncoder

__all__ = [
    "ConvEncoder",
    "DenseHead",
    "DenseNet",
    "DenseNet121",
    "DenseNetEncoder",
    "Encoder",
    "MultiScaleUNet",
    "UNet",
    "UNetEncoder",
    "default_decoder_widths",
    "encoder_info",
    "encoder_name",
    "evaluating",
    "load_decoder",
    "load_encoder",
    "load_encoder_weights",
    "save_encoder",
]
