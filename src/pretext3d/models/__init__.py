"""Reference encoders."""

from pretext3d.models.conv import ConvEncoder

__all__ = ["ConvEncoder"]
