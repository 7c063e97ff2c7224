"""Pretext tasks: each turns an unlabelled batch into ``(views, labels)``."""

from pretext3d.tasks.base import ClassificationTask, PretextTask
from pretext3d.tasks.cpc import CPC
from pretext3d.tasks.exemplar import AugmentParams, Exemplar, ExemplarAugmenter
from pretext3d.tasks.jigsaw import Jigsaw
from pretext3d.tasks.rotation import Rotation
from pretext3d.tasks.rpl import RelativePatchLocation

__all__ = [
    "CPC",
    "AugmentParams",
    "ClassificationTask",
    "Exemplar",
    "ExemplarAugmenter",
    "Jigsaw",
    "PretextTask",
    "RelativePatchLocation",
    "Rotation",
]
