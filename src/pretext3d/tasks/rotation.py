"""Rotation prediction (Gidaris et al., ICLR 2018; in 3D, Taleb et al., NeurIPS 2020)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from pretext3d._checks import check_choice
from pretext3d._random import randint
from pretext3d.config import SpatialDims
from pretext3d.functional.rotation import apply_rotations, plane_rotation_matrix, rotation_group
from pretext3d.registry import register_task
from pretext3d.tasks.base import ClassificationTask, TaskParams, check_classes

__all__ = ["Rotation", "RotationParams"]

RotationSet = Literal["plane4", "taleb10", "cube24"]


@dataclass
class RotationParams(TaskParams):
    """The parameters of one :class:`Rotation` call.

    Attributes:
        rotation: ``LongTensor (B,)``: the rotation class of each sample (also its target).

    Examples:
        >>> task = Rotation(spatial_dims=3)
        >>> x = torch.randn(2, 1, 8, 8, 8)
        >>> # identity; 90 degrees about axis 1
        >>> views, targets = task.apply_params(x, RotationParams(torch.tensor([0, 4])))
        >>> targets.tolist(), torch.equal(views[0], x[0])
        ([0, 4], True)
        >>> undone, _ = task.apply_params(views, RotationParams(task.inverse_classes[targets]))
        >>> torch.equal(undone, x)
        True
    """

    rotation: Tensor


@register_task("rotation")
class Rotation(ClassificationTask[RotationParams]):
    """Rotate each sample by a random multiple of 90 degrees; the class is the rotation.

    Rotations are exact (``flip`` and ``permute``, no interpolation). Axis order and
    direction: spatial axis ``a`` is tensor dim ``2 + a``; turning "in the plane
    ``(a, b)``" moves axis ``a`` towards axis ``b``, i.e. ``torch.rot90(x, k, dims=(2 + a,
    2 + b))``; "about axis ``k``" in 3D is the plane ``((k + 1) % 3, (k + 2) % 3)``.

    Rotation sets (``rotations``):

    * ``"plane4"`` (the 2D default): class ``q`` turns ``q`` times by 90 degrees in
      ``plane`` (``q = 0..3``).
    * ``"taleb10"`` (the 3D default; Taleb et al.'s 10 classes): class 0 is the identity,
      class ``1 + 3k + (q - 1)`` turns ``q`` times (``q = 1, 2, 3``) about axis ``k``.
    * ``"cube24"`` (3D): the whole proper rotation group of the cube; its first 10
      classes are ``"taleb10"``'s, the other 14 follow in a fixed order.

    Nothing but the class is random, so eval mode changes nothing. Undo a call with
    ``task.apply_params(views, RotationParams(task.inverse_classes[targets]))``.

    Rotations that carry one axis onto another need those axes equally long: ``taleb10``
    and ``cube24`` need a cube, ``plane4`` a square plane. Crop first (random sub-crops
    also make the task harder to solve from global shortcuts, see the docs).

    Args:
        spatial_dims: 2 or 3.
        rotations: the label set; default ``"plane4"`` in 2D, ``"taleb10"`` in 3D.
        plane: the two spatial axes of ``"plane4"``; default ``(0, 1)`` in 2D and
            ``(1, 2)`` (rotation about axis 0) in 3D.
        check_finite: reject NaN/inf input.

    Attributes:
        matrices: ``LongTensor (num_classes, d, d)``: class ``k`` moves the voxel at
            centred coordinates ``v`` to ``matrices[k] @ v``.
        inverse_classes: ``LongTensor (num_classes,)``: the class that undoes class ``k``.

    Examples:
        >>> task = Rotation(spatial_dims=3)
        >>> views, targets = task(torch.randn(2, 1, 8, 8, 8), generator=torch.Generator().manual_seed(0))
        >>> views.shape, task.num_classes
        (torch.Size([2, 1, 8, 8, 8]), 10)

    References:
        - Gidaris et al., "Unsupervised Representation Learning by Predicting Image Rotations", ICLR 2018.
        - Taleb et al., "3D Self-Supervised Methods for Medical Imaging", NeurIPS 2020.
    """

    def __init__(
        self,
        spatial_dims: SpatialDims,
        rotations: RotationSet | None = None,
        *,
        plane: tuple[int, int] | None = None,
        check_finite: bool = True,
    ) -> None:
        super().__init__(spatial_dims, check_finite=check_finite)
        d = self.spatial_dims
        allowed = ("plane4",) if d == 2 else ("plane4", "taleb10", "cube24")
        if rotations is None:
            rotations = "plane4" if d == 2 else "taleb10"
        self.rotations = check_choice(f"rotations (for spatial_dims={d})", rotations, allowed)
        if plane is not None and rotations != "plane4":
            raise ValueError(f"plane only applies to rotations='plane4', got rotations={rotations!r}")
        if plane is None:
            plane = (0, 1) if d == 2 else (1, 2)
        if (
            not isinstance(plane, tuple)
            or len(plane) != 2
            or not all(isinstance(a, int) and 0 <= a < d for a in plane)
            or plane[0] == plane[1]
        ):
            raise ValueError(
                f"plane must be a tuple of two distinct spatial axes in 0..{d - 1}, got {plane!r}"
            )
        self.plane = plane
        matrices = _rotation_set(d, self.rotations, plane)
        self.num_classes = len(matrices)
        self.register_buffer("matrices", matrices, persistent=False)
        self.register_buffer("inverse_classes", _inverses(matrices), persistent=False)
        # Axes that some rotation of the set carries onto another axis.
        moved = (matrices.abs() != torch.eye(d, dtype=torch.long)).any(0).any(0)
        self._moved_axes = tuple(int(a) for a in torch.nonzero(moved).flatten())

    matrices: Tensor
    inverse_classes: Tensor
    params_type = RotationParams

    def _check_input(self, x: Tensor) -> None:
        sizes = [x.shape[2 + a] for a in self._moved_axes]
        if len(set(sizes)) > 1:
            what = "a cube" if len(sizes) == 3 else f"a square plane {self.plane}"
            raise ValueError(
                f"Rotation(rotations={self.rotations!r}) moves spatial axes {self._moved_axes} "
                f"onto each other, so x needs equal sizes there ({what}); got spatial shape "
                f"{tuple(x.shape[2:])}. Crop x first."
            )

    def _randomize(self, x: Tensor, generator: torch.Generator | None) -> RotationParams:
        return RotationParams(randint(self.num_classes, (x.shape[0],), generator, x.device))

    def _check_params(self, x: Tensor, params: RotationParams) -> None:
        params.rotation = check_classes(params.rotation, x.shape[0], self.num_classes, "params.rotation")

    def _make_views(self, x: Tensor, params: RotationParams) -> tuple[Tensor, Tensor]:
        return apply_rotations(x, params.rotation, self.matrices), params.rotation

    def extra_repr(self) -> str:
        """The constructor arguments, for ``repr``."""
        return (
            f"spatial_dims={self.spatial_dims}, rotations={self.rotations!r}, num_classes={self.num_classes}"
        )


def _rotation_set(spatial_dims: int, name: str, plane: tuple[int, int]) -> Tensor:
    if name == "plane4":
        return torch.stack([plane_rotation_matrix(spatial_dims, plane, q) for q in range(4)])
    taleb = [torch.eye(3, dtype=torch.long)]
    for axis in range(3):
        axis_plane = ((axis + 1) % 3, (axis + 2) % 3)
        taleb += [plane_rotation_matrix(3, axis_plane, q) for q in (1, 2, 3)]
    if name == "taleb10":
        return torch.stack(taleb)
    rest = [m for m in rotation_group(3) if not any(torch.equal(m, t) for t in taleb)]
    return torch.stack(taleb + rest)


def _inverses(matrices: Tensor) -> Tensor:
    inverse = matrices.transpose(1, 2)
    hits = (inverse[:, None] == matrices[None, :]).flatten(2).all(-1)
    return hits.int().argmax(dim=1)
