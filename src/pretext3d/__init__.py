"""pretext3d: self-supervised pretext tasks for 2D and 3D (medical) images.

Five tasks after Taleb et al., "3D Self-Supervised Methods for Medical Imaging", NeurIPS
2020: rotation prediction, jigsaw puzzles, relative patch location, exemplar networks
with a triplet loss, and contrastive predictive coding, and two modern baselines beside
them: Models Genesis's restoration and masked image modelling (:mod:`pretext3d.tasks`).
Around them: heads (:mod:`~pretext3d.heads`) and :class:`PretextModel` to put one on any
encoder, losses and miners (:mod:`~pretext3d.objectives`), transforms, reference
encoders (:mod:`~pretext3d.models`), the :class:`Pretrainer` (under torchrun too) on the
training core (:mod:`~pretext3d.training`), fine-tuning (:mod:`~pretext3d.finetune`), the
paper's experiments (:mod:`~pretext3d.experiments`, with the reproductions of its Figures 3
and 4), data loaders and phantoms (:mod:`~pretext3d.data`), shortcut scores and feature
probes (:mod:`~pretext3d.diagnostics`) and pictures of the views a task makes
(:mod:`~pretext3d.viz`). Tasks and encoders are named in a registry:
:func:`create_task`, :func:`create_encoder`, :func:`register_task`, :func:`register_encoder`.
"""

from pretext3d import (
    data,
    diagnostics,
    experiments,
    finetune,
    functional,
    heads,
    models,
    objectives,
    tasks,
    training,
    transforms,
    viz,
)
from pretext3d._version import __version__
from pretext3d.pretext_model import PretextModel, infer_num_features
from pretext3d.pretrainer import PretrainConfig, Pretrainer
from pretext3d.registry import create_encoder, create_task, register_encoder, register_task
from pretext3d.training import TaskSpec

__all__ = [
    "PretextModel",
    "PretrainConfig",
    "Pretrainer",
    "TaskSpec",
    "__version__",
    "create_encoder",
    "create_task",
    "data",
    "diagnostics",
    "experiments",
    "finetune",
    "functional",
    "heads",
    "infer_num_features",
    "models",
    "objectives",
    "register_encoder",
    "register_task",
    "tasks",
    "training",
    "transforms",
    "viz",
]
