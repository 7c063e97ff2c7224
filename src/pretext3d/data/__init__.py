"""Data: synthetic images for demos and tests."""

from pretext3d.data.toy import toy_images

__all__ = ["toy_images"]
