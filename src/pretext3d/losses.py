"""Losses that score a head's output: the triplet margin loss and a cross-batch memory."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pretext3d._checks import check_int
from pretext3d.miners import Miner, Triplets, check_embeddings

__all__ = ["CrossBatchMemory", "TripletMarginLoss"]


class TripletMarginLoss(nn.Module):
    """Mean over the given triplets of ``relu(d(a, p) - d(a, n) + margin)``.

    ``d`` is the Euclidean distance between the embeddings as given (normalise them
    first if you want distances on the sphere, as the projection head does). The
    exemplar network of Dosovitskiy et al. (2014) in the triplet form of Taleb et al.
    (NeurIPS 2020), who used margin 1.

    With no triplets the loss is a zero that still depends on ``embeddings``, so a
    training step never crashes on a batch without valid triplets.

    Args:
        margin: ``> 0``.

    Shapes:
        ``embeddings (N, D)``, triplets three ``(T,)`` index tensors -> scalar.
    """

    def __init__(self, margin: float = 1.0) -> None:
        super().__init__()
        if not margin > 0:
            raise ValueError(f"margin must be > 0, got {margin}")
        self.margin = margin

    def forward(self, embeddings: Tensor, triplets: Triplets) -> Tensor:
        """The loss of ``triplets`` (anchor, positive, negative indices into ``embeddings``)."""
        if embeddings.dim() != 2:
            raise ValueError(f"embeddings must have shape (N, D), got {tuple(embeddings.shape)}")
        a, p, n = triplets
        if not len(a) == len(p) == len(n):
            raise ValueError(f"triplet index tensors differ in length: {len(a)}, {len(p)}, {len(n)}")
        if len(a) == 0:
            return embeddings.sum() * 0.0
        d_ap = torch.linalg.vector_norm(embeddings[a] - embeddings[p], dim=1)
        d_an = torch.linalg.vector_norm(embeddings[a] - embeddings[n], dim=1)
        return torch.relu(d_ap - d_an + self.margin).mean()


class CrossBatchMemory(nn.Module):
    """Mine against the embeddings of earlier batches too (Wang et al., "Cross-Batch Memory", CVPR 2020).

    A 3D batch holds 2-8 volumes: too few negatives. This keeps the last ``size``
    embeddings (detached) and their labels in a ring buffer; each call mines triplets
    whose anchors are the current batch and whose positives and negatives come from the
    batch and the memory, then adds the batch to the memory. Labels must be unique per
    instance across batches (the exemplar task's are).

    Args:
        loss: the loss to apply, e.g. :class:`TripletMarginLoss`.
        miner: the miner to use.
        embedding_dim: ``D``.
        size: number of embeddings remembered.

    Shapes:
        ``embeddings (B, D)``, ``labels (B,)`` -> scalar.
    """

    memory: Tensor
    memory_labels: Tensor

    def __init__(self, loss: nn.Module, miner: Miner, embedding_dim: int, size: int = 1024) -> None:
        super().__init__()
        self.loss = loss
        self.miner = miner
        self.size = check_int("size", size, 1)
        self.register_buffer("memory", torch.zeros(size, check_int("embedding_dim", embedding_dim, 1)))
        self.register_buffer("memory_labels", torch.zeros(size, dtype=torch.long))
        self.filled = 0
        self.position = 0

    def forward(self, embeddings: Tensor, labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Loss of the batch against itself and the memory; then remember the batch."""
        embeddings, labels = check_embeddings(embeddings, labels)
        if embeddings.shape[1] != self.memory.shape[1]:
            raise ValueError(
                f"embeddings have {embeddings.shape[1]} dimensions, "
                f"but the memory holds {self.memory.shape[1]}"
            )
        stored = self._stored()
        every = torch.cat([embeddings, stored[0].to(embeddings.dtype)])
        every_labels = torch.cat([labels, stored[1]])
        triplets = self.miner(every, every_labels, num_anchors=len(embeddings), generator=generator)
        loss: Tensor = self.loss(every, triplets)
        self._enqueue(embeddings.detach(), labels)
        return loss

    def reset(self) -> None:
        """Forget everything remembered."""
        self.filled = self.position = 0

    def _stored(self) -> tuple[Tensor, Tensor]:
        return self.memory[: self.filled], self.memory_labels[: self.filled]

    def _enqueue(self, embeddings: Tensor, labels: Tensor) -> None:
        count = min(len(embeddings), self.size)
        embeddings, labels = embeddings[-count:], labels[-count:]
        slots = (self.position + torch.arange(count, device=self.memory.device)) % self.size
        self.memory[slots] = embeddings.to(self.memory.dtype)
        self.memory_labels[slots] = labels.to(self.memory_labels.device)
        self.position = (self.position + count) % self.size
        self.filled = min(self.filled + count, self.size)
