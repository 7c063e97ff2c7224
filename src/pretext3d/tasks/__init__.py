"""Pretext tasks: each turns an unlabelled batch into ``(views, targets)``.

Four kinds (see :mod:`pretext3d.tasks.base`): classification (:class:`Rotation`,
:class:`Jigsaw`, :class:`RelativePatchLocation`), embedding (:class:`Exemplar`),
predictive (:class:`CPC`) and dense (:class:`ModelsGenesis`, :class:`MaskedImageModeling`).
Each draws its parameters with ``randomize`` and builds its
views with ``apply_params``; its parameter type is exported beside it.
:class:`PretextViewsd` runs a task inside a MONAI dictionary pipeline.
"""

from pretext3d.tasks._grid import NO_DEFENCES, GridCrop
from pretext3d.tasks.base import (
    ClassificationTask,
    DenseTask,
    EmbeddingTask,
    PredictiveTask,
    PretextTask,
    Reconstruction,
    TaskParams,
    check_classes,
)
from pretext3d.tasks.cpc import CPC, CPCParams
from pretext3d.tasks.dictionary import PretextViewsd
from pretext3d.tasks.exemplar import Exemplar, ExemplarParams
from pretext3d.tasks.genesis import GenesisParams, ModelsGenesis
from pretext3d.tasks.jigsaw import Jigsaw, JigsawParams
from pretext3d.tasks.mim import MaskedImageModeling, MaskedImageModelingParams
from pretext3d.tasks.rotation import Rotation, RotationParams
from pretext3d.tasks.rpl import RelativePatchLocation, RelativePatchLocationParams

__all__ = [
    "CPC",
    "NO_DEFENCES",
    "CPCParams",
    "ClassificationTask",
    "DenseTask",
    "EmbeddingTask",
    "Exemplar",
    "ExemplarParams",
    "GenesisParams",
    "GridCrop",
    "Jigsaw",
    "JigsawParams",
    "MaskedImageModeling",
    "MaskedImageModelingParams",
    "ModelsGenesis",
    "PredictiveTask",
    "PretextTask",
    "PretextViewsd",
    "Reconstruction",
    "RelativePatchLocation",
    "RelativePatchLocationParams",
    "Rotation",
    "RotationParams",
    "TaskParams",
    "check_classes",
]
