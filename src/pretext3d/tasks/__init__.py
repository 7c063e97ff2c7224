"""Pretext tasks: each turns an unlabelled batch into ``(views, targets)``.

Three kinds (see :mod:`pretext3d.tasks.base`): classification (:class:`Rotation`,
:class:`Jigsaw`, :class:`RelativePatchLocation`), embedding (:class:`Exemplar`) and
predictive (:class:`CPC`). Each draws its parameters with ``randomize`` and builds its
views with ``apply_params``; its parameter type is exported beside it.
:class:`PretextViewsd` runs a task inside a MONAI dictionary pipeline.
"""

from pretext3d.tasks._grid import NO_DEFENCES, GridCrop
from pretext3d.tasks.base import (
    ClassificationTask,
    EmbeddingTask,
    PredictiveTask,
    PretextTask,
    TaskParams,
    check_classes,
)
from pretext3d.tasks.cpc import CPC, CPCParams
from pretext3d.tasks.dictionary import PretextViewsd
from pretext3d.tasks.exemplar import Exemplar, ExemplarParams
from pretext3d.tasks.jigsaw import Jigsaw, JigsawParams
from pretext3d.tasks.rotation import Rotation, RotationParams
from pretext3d.tasks.rpl import RelativePatchLocation, RelativePatchLocationParams

__all__ = [
    "CPC",
    "NO_DEFENCES",
    "CPCParams",
    "ClassificationTask",
    "EmbeddingTask",
    "Exemplar",
    "ExemplarParams",
    "GridCrop",
    "Jigsaw",
    "JigsawParams",
    "PredictiveTask",
    "PretextTask",
    "PretextViewsd",
    "RelativePatchLocation",
    "RelativePatchLocationParams",
    "Rotation",
    "RotationParams",
    "TaskParams",
    "check_classes",
]
