"""Random transforms of image batches: the affine/intensity augmenter and crops."""

from pretext3d.transforms.affine import AugmentParams, ExemplarAugmenter
from pretext3d.transforms.crops import foreground_crops, random_crop, random_crops

__all__ = ["AugmentParams", "ExemplarAugmenter", "foreground_crops", "random_crop", "random_crops"]
