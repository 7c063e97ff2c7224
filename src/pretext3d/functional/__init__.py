"""Pure tensor maths that the task modules call."""

from pretext3d.functional.patches import cell_origins, extract_patches, standardize
from pretext3d.functional.rotation import apply_flips, apply_rotations, plane_rotation_matrix, rotation_group

__all__ = [
    "apply_flips",
    "apply_rotations",
    "cell_origins",
    "extract_patches",
    "plane_rotation_matrix",
    "rotation_group",
    "standardize",
]
