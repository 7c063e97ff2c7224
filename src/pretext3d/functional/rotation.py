"""Exact 90-degree rotations of 2D and 3D batches.

Conventions (see ``docs/conventions.md``):

* Spatial axes are numbered ``0..d-1`` in tensor order after ``(B, C)``: for
  ``(B, C, D, H, W)`` axis 0 is ``D``, 1 is ``H``, 2 is ``W``.
* A rotation by 90 degrees "in the plane ``(a, b)``" turns axis ``a`` towards axis ``b``:
  it equals ``torch.rot90(x, 1, dims=(2 + a, 2 + b))``.
* "About axis ``k``" (3D) means in the plane ``((k + 1) % 3, (k + 2) % 3)``, the
  right-hand rule: about 0 turns 1 towards 2, about 1 turns 2 towards 0, about 2 turns
  0 towards 1.

A rotation is stored as a signed permutation matrix ``M`` (``d x d``, ``det M = +1``)
acting on voxel coordinates centred on the volume: the voxel at ``v`` moves to ``M v``.
It is applied as one axis permutation plus flips, never by interpolation.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

__all__ = [
    "apply_rotations",
    "plane_rotation_matrix",
    "rotation_group",
]


def plane_rotation_matrix(spatial_dims: int, plane: tuple[int, int], quarter_turns: int) -> Tensor:
    """Matrix of ``torch.rot90(x, quarter_turns, dims=(2 + plane[0], 2 + plane[1]))``.

    Args:
        spatial_dims: 2 or 3.
        plane: two distinct spatial axes ``(a, b)``; positive turns go from ``a`` to ``b``.
        quarter_turns: number of 90-degree turns (any integer; taken modulo 4).

    Returns:
        ``LongTensor (spatial_dims, spatial_dims)``.

    Examples:
        >>> plane_rotation_matrix(2, (0, 1), 1)
        tensor([[ 0, -1],
                [ 1,  0]])
    """
    a, b = plane
    step = torch.eye(spatial_dims, dtype=torch.long)
    step[a, a] = step[b, b] = 0
    step[b, a] = 1  # e_a -> e_b
    step[a, b] = -1  # e_b -> -e_a
    result: Tensor = torch.linalg.matrix_power(step, quarter_turns % 4)
    return result


def rotation_group(spatial_dims: int) -> Tensor:
    """All proper rotations of the square (4) or cube (24), identity first.

    Args:
        spatial_dims: 2 or 3.

    Returns:
        ``LongTensor (4 or 24, d, d)`` of signed permutation matrices with determinant 1,
        in lexicographic order of their entries after the identity.

    Examples:
        >>> rotation_group(2).shape, rotation_group(3).shape   # identity first
        (torch.Size([4, 2, 2]), torch.Size([24, 3, 3]))
        >>> bool((rotation_group(3)[0] == torch.eye(3, dtype=torch.long)).all())
        True
    """
    mats = []
    for perm in itertools.permutations(range(spatial_dims)):
        for signs in itertools.product((1, -1), repeat=spatial_dims):
            m = torch.zeros(spatial_dims, spatial_dims, dtype=torch.long)
            m[list(perm), list(range(spatial_dims))] = torch.tensor(signs)
            if round(torch.linalg.det(m.double()).item()) == 1:
                mats.append(m)
    eye = torch.eye(spatial_dims, dtype=torch.long)
    others = sorted((m for m in mats if not torch.equal(m, eye)), key=lambda m: m.flatten().tolist())
    return torch.stack([eye, *others])


def _permute_and_flips(matrix: Tensor) -> tuple[list[int], list[int]]:
    """Spatial permutation ``perm`` and flipped axes with ``rotate(x) == x.permute(perm).flip(flips)``.

    The output voxel ``o`` comes from the input voxel ``M^-1 o = M^T o``: output axis ``j``
    reads input axis ``perm[j]``, reversed where that entry of ``M`` is -1.
    """
    inverse = matrix.t()
    perm = [int(inverse[:, j].abs().argmax()) for j in range(matrix.shape[0])]
    flips = [j for j in range(matrix.shape[0]) if int(inverse[perm[j], j]) < 0]
    return perm, flips


def _rotate_into(out: Tensor, x: Tensor, matrix: Tensor) -> None:
    """Write the rotation ``matrix`` of the contiguous batch ``x`` into ``out`` in one pass.

    Three cases, by what happens to the last (contiguous) axis; speeds measured on a
    2-core CPU at 128^3 against a 1.4 ms copy of 8 volumes:

    * it stays and is not reversed: whole rows move, reordered by ``index_select``
      (about 2-3 ms);
    * another axis becomes the last one: a transposing copy, written in slabs of a few
      columns so that the input's cache lines are reused (about 8-13 ms, 2.5x faster
      than one pass);
    * it is reversed in place: ``torch.flip``, which reverses element by element
      (about 20 ms; no CPU kernel of torch or numpy reverses faster).
    """
    perm, flips = _permute_and_flips(matrix)
    last = len(perm) - 1
    view = x.permute(0, 1, *(2 + p for p in perm))
    dims = [2 + f for f in flips]
    if perm[last] == last and last not in flips:
        _reverse_rows_into(out, view, dims)
    elif perm[last] != last and out.is_cpu and out.numel() >= _TILE_MIN_NUMEL:
        size = out.shape[-1]
        for start in range(0, size, _TILE):
            stop = min(start + _TILE, size)
            src = view[..., size - stop : size - start] if out.dim() - 1 in dims else view[..., start:stop]
            _flip_into(out[..., start:stop], src, dims)
    else:
        _flip_into(out, view, dims)


_TILE = 16
_TILE_MIN_NUMEL = 1 << 16


def _flip_into(out: Tensor, src: Tensor, dims: list[int]) -> None:
    if dims:
        torch.ops.aten.flip.out(src, dims, out=out)
    else:
        out.copy_(src)


def _reverse_rows_into(out: Tensor, view: Tensor, dims: list[int]) -> None:
    """``out = view.flip(dims)`` for ``dims`` that exclude the last axis, row by row."""
    if not dims:
        out.copy_(view)
        return
    if len(dims) == 2:
        # Reversing both outer axes of a 3D volume is reversing them merged into one.
        # For proper rotations the outer permutation is then the identity (an odd one
        # needs an odd number of flips) and the merge is free; otherwise it copies.
        view = view.reshape(*view.shape[:2], -1, view.shape[-1])
        out = out.view(view.shape)
        dims = [2]
    index = torch.arange(view.shape[dims[0]] - 1, -1, -1, device=view.device)
    torch.index_select(view, dims[0], index, out=out)


def apply_rotations(x: Tensor, labels: Tensor, matrices: Tensor) -> Tensor:
    """Rotate (or reflect) sample ``i`` of ``x`` by ``matrices[labels[i]]``.

    Works per rotation class: the samples of a class are gathered and rotated in one
    call. Samples of 65536 values or more are instead rotated straight from views of
    ``x`` into views of the output, one call per run of equal labels, since for them a
    gathered copy costs more than the rotation.

    Args:
        x: ``(B, C, *spatial)``; every axis that a used rotation moves onto another must
            have that axis's length (checked by the caller).
        labels: ``(B,)`` integer class indices into ``matrices``.
        matrices: ``(K, d, d)`` signed permutation matrices (reflections, with determinant
            -1, work too).

    Returns:
        ``(B, C, *spatial)`` rotated batch, new memory, contiguous. Differentiable: an input
        that requires grad takes a path without in-place ``out=`` kernels.

    Examples:
        >>> x = torch.randn(2, 1, 4, 4)
        >>> quarter_turn = plane_rotation_matrix(2, (0, 1), 1)[None]   # one matrix: label 0
        >>> turned = apply_rotations(x, torch.tensor([0, 0]), quarter_turn)
        >>> torch.equal(turned, torch.rot90(x, 1, dims=(2, 3)))
        True
    """
    if x.requires_grad and torch.is_grad_enabled():
        return _apply_differentiable(x, labels, matrices)
    x = x.contiguous()
    out = torch.empty_like(x)
    labels_cpu, matrices = labels.cpu(), matrices.cpu()
    large = x[0].numel() >= _TILE_MIN_NUMEL
    for k in torch.unique(labels_cpu).tolist():
        idx = torch.nonzero(labels_cpu == k).flatten()
        if large or int(idx[-1] - idx[0]) + 1 == len(idx):
            # Large samples: rotate each run of equal labels from views (a gathered
            # copy would cost more than the rotation); at most one run per sample.
            for first, stop in _runs(idx):
                _rotate_into(out[first:stop], x[first:stop], matrices[k])
        else:
            idx_dev = idx.to(x.device)
            members = x[idx_dev]
            rotated = torch.empty_like(members)
            _rotate_into(rotated, members, matrices[k])
            out[idx_dev] = rotated
    return out


def _apply_differentiable(x: Tensor, labels: Tensor, matrices: Tensor) -> Tensor:
    """:func:`apply_rotations` from differentiable views (permute, flip, index_copy)."""
    labels_cpu, matrices = labels.cpu(), matrices.cpu()
    parts, order = [], []
    for k in torch.unique(labels_cpu).tolist():
        idx = torch.nonzero(labels_cpu == k).flatten()
        perm, flips = _permute_and_flips(matrices[k])
        view = x[idx.to(x.device)].permute(0, 1, *(2 + p for p in perm))
        parts.append(view.flip([2 + f for f in flips]) if flips else view)
        order.append(idx)
    index = torch.cat(order).to(x.device)
    return torch.zeros_like(x).index_copy(0, index, torch.cat(parts))


def _runs(idx: Tensor) -> list[tuple[int, int]]:
    """``[first, stop)`` bounds of the runs of consecutive values in the sorted ``idx``."""
    breaks = (torch.nonzero(idx[1:] - idx[:-1] != 1).flatten() + 1).tolist()
    starts = [0, *breaks]
    stops = [*breaks, len(idx)]
    return [(int(idx[a]), int(idx[b - 1]) + 1) for a, b in zip(starts, stops, strict=True)]


def apply_flips(x: Tensor, flips: Tensor) -> Tensor:
    """Mirror sample ``i`` of ``x`` along each spatial axis ``a`` where ``flips[i, a]`` is true.

    Args:
        x: ``(B, C, *spatial)``.
        flips: ``(B, d)`` bool.

    Returns:
        ``(B, C, *spatial)``, new memory (each combination of axes is one reflection class of
        :func:`apply_rotations`).

    Examples:
        >>> x = torch.arange(8.0).reshape(2, 1, 2, 2)
        >>> out = apply_flips(x, torch.tensor([[True, False], [False, True]]))
        >>> torch.equal(out[0], x[0].flip(1)) and torch.equal(out[1], x[1].flip(2))
        True
    """
    d = flips.shape[-1]
    classes = (flips.long().cpu() * 2 ** torch.arange(d)).sum(1)
    axes = torch.tensor([[(c >> a) & 1 for a in range(d)] for c in range(2**d)])
    return apply_rotations(x, classes, torch.diag_embed(1 - 2 * axes))
