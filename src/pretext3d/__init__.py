"""pretext3d: self-supervised pretext tasks for 2D and 3D (medical) images.

Tasks (rotation, jigsaw, relative patch location) after Taleb et al., "3D
Self-Supervised Methods for Medical Imaging", NeurIPS 2020.
"""

from pretext3d import data, distributed, finetune, functional, heads, losses, miners, models, tasks
from pretext3d.permutations import HammingStats, hamming_stats, load_permutation_set, permutation_set
from pretext3d.pretext_model import PretextModel, infer_num_features

__version__ = "0.1.0.dev0"

__all__ = [
    "HammingStats",
    "PretextModel",
    "__version__",
    "data",
    "distributed",
    "finetune",
    "functional",
    "hamming_stats",
    "heads",
    "infer_num_features",
    "load_permutation_set",
    "losses",
    "miners",
    "models",
    "permutation_set",
    "tasks",
]
