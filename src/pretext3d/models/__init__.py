"""Reference encoders and the networks built from them."""

from pretext3d.models.conv import ConvEncoder
from pretext3d.models.densenet import DenseNet, DenseNet121, DenseNetEncoder
from pretext3d.models.io import load_encoder, load_encoder_weights, save_encoder
from pretext3d.models.unet import UNet, UNetEncoder

__all__ = [
    "ConvEncoder",
    "DenseNet",
    "DenseNet121",
    "DenseNetEncoder",
    "UNet",
    "UNetEncoder",
    "load_encoder",
    "load_encoder_weights",
    "save_encoder",
]
