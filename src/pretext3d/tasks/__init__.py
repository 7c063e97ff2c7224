"""Pretext tasks: each turns an unlabelled batch into ``(views, labels)``."""

from pretext3d.tasks.base import PretextTask
from pretext3d.tasks.jigsaw import Jigsaw
from pretext3d.tasks.rotation import Rotation
from pretext3d.tasks.rpl import RelativePatchLocation

__all__ = ["Jigsaw", "PretextTask", "RelativePatchLocation", "Rotation"]
