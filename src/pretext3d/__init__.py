"""pretext3d: self-supervised pretext tasks for 2D and 3D (medical) images.

Five tasks after Taleb et al., "3D Self-Supervised Methods for Medical Imaging", NeurIPS
2020: rotation prediction, jigsaw puzzles, relative patch location, exemplar networks
with a triplet loss, and contrastive predictive coding (:mod:`pretext3d.tasks`).
Around them: heads (:mod:`~pretext3d.heads`) and :class:`PretextModel` to put one on any
encoder, losses and miners (:mod:`~pretext3d.objectives`), transforms, reference
encoders (:mod:`~pretext3d.models`), the pretraining loop (:mod:`~pretext3d.pretrainer`,
under torchrun too), fine-tuning (:mod:`~pretext3d.finetune`), the paper's experiments
(:mod:`~pretext3d.experiments`, with the reproductions of its Figures 3 and 4), data loaders
and phantoms (:mod:`~pretext3d.data`), shortcut scores and feature probes
(:mod:`~pretext3d.diagnostics`), pictures of the views a task makes (:mod:`~pretext3d.viz`),
and the registry of named tasks and encoders.
"""

from pretext3d import (
    data,
    diagnostics,
    engine,
    experiments,
    finetune,
    functional,
    heads,
    models,
    objectives,
    pretrainer,
    provenance,
    registry,
    tasks,
    transforms,
    viz,
)
from pretext3d._version import __version__
from pretext3d.permutations import HammingStats, hamming_stats, load_permutation_set, permutation_set
from pretext3d.pretext_model import PretextModel, infer_num_features
from pretext3d.registry import register_encoder, register_task

__all__ = [
    "HammingStats",
    "PretextModel",
    "__version__",
    "data",
    "diagnostics",
    "engine",
    "experiments",
    "finetune",
    "functional",
    "hamming_stats",
    "heads",
    "infer_num_features",
    "load_permutation_set",
    "models",
    "objectives",
    "permutation_set",
    "pretrainer",
    "provenance",
    "register_encoder",
    "register_task",
    "registry",
    "tasks",
    "transforms",
    "viz",
]
