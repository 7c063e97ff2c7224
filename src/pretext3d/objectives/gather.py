"""Gather embeddings across ``torch.distributed`` ranks for losses that need the whole batch.

Gradient semantics of :func:`gather_with_grad`: every rank receives the concatenation
of all ranks' tensors in rank order; its own slice is the original tensor (it keeps its
gradient), the other slices are constants. Each rank then computes the same loss ``L``
over the global batch, and its backward pass yields ``dL/d(own embeddings)``, exactly
as one process seeing the whole batch would. Parameter gradients of rank ``r`` hold the
part of ``dL/dθ`` that flows through rank ``r``'s samples; their **sum** over ranks is
the single-process gradient. ``DistributedDataParallel`` averages gradients, so scale
the loss by ``world_size`` (:func:`world_size`) to train exactly as one process would.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["gather_labels", "gather_with_grad", "rank", "world_size"]


def world_size() -> int:
    """Number of ranks (1 without an initialised process group).

    Examples:
        >>> world_size()   # without torch.distributed initialised
        1
    """
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without an initialised process group).

    Examples:
        >>> rank()   # without torch.distributed initialised
        0
    """
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _all_gather(x: Tensor) -> list[Tensor]:
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
    if len({int(s) for s in sizes}) != 1:
        raise ValueError(
            f"gather needs the same batch size on every rank, got {[int(s) for s in sizes]}; "
            "use drop_last=True in the DataLoader"
        )
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return parts


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from all ranks along dim 0; this rank's slice keeps its gradient.

    Args:
        x: ``(B, ...)`` with the same shape on every rank.

    Returns:
        ``(world_size * B, ...)``; without a process group, ``x`` itself.

    Examples:
        >>> x = torch.randn(4, 8)
        >>> gather_with_grad(x) is x   # one process: nothing to gather
        True
    """
    if world_size() == 1:
        return x
    parts = _all_gather(x.detach())
    parts[rank()] = x
    return torch.cat(parts)


def gather_labels(labels: Tensor) -> Tensor:
    """Gather integer labels from all ranks, made unique per rank.

    Label ``l`` of rank ``r`` becomes ``l * world_size + r``, so instances of different
    ranks never share a label.

    Returns:
        ``(world_size * B,)``; without a process group, ``labels`` itself.

    Examples:
        >>> # one process: unchanged; with 2 ranks rank 1's 1 becomes 3
        >>> gather_labels(torch.tensor([0, 1, 1]))
        tensor([0, 1, 1])
    """
    if world_size() == 1:
        return labels
    size = world_size()
    return torch.cat([part * size + r for r, part in enumerate(_all_gather(labels))])
