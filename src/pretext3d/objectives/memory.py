"""A memory of earlier batches' embeddings to mine against (Wang et al., CVPR 2020)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pretext3d._checks import check_int
from pretext3d.objectives.miners import Miner, check_embeddings

__all__ = ["CrossBatchMemory"]


class CrossBatchMemory(nn.Module):
    """Mine against the embeddings of earlier batches too (Wang et al., "Cross-Batch Memory", CVPR 2020).

    A 3D batch holds 2-8 volumes: too few negatives. This keeps the last ``size``
    embeddings (detached) and their labels in a ring buffer; each call mines triplets
    whose anchors are the current batch and whose positives and negatives come from the
    batch and the memory, then, in training mode only, adds the batch to the memory (a
    validation pass reads it but leaves it as it was, as lightly's memory bank does).
    Labels must be unique per instance across batches (the exemplar task's are).

    All of its state lives in buffers (the embeddings, their labels, how many are filled
    and where the next one goes), so ``state_dict`` saves and restores it exactly.

    Args:
        loss: the loss to apply, e.g. :class:`TripletMarginLoss`.
        miner: the miner to use.
        embedding_dim: ``D``.
        size: number of embeddings remembered.

    Shapes:
        ``embeddings (B, D)``, ``labels (B,)`` -> scalar.

    Examples:
        >>> loss, miner = p3.objectives.TripletMarginLoss(), p3.objectives.BatchHardMiner()
        >>> memory = CrossBatchMemory(loss, miner, embedding_dim=8, size=16)
        >>> g = torch.Generator().manual_seed(0)
        >>> for step in range(3):   # instance ids stay unique across batches
        ...     x = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=1)
        ...     loss = memory(x, torch.tensor([0, 0, 1, 1]) + 2 * step)
        >>> int(memory.filled)   # 12 embeddings remembered, the last batch mined against all of them
        12

    References:
        - Wang et al., "Cross-Batch Memory for Embedding Learning", CVPR 2020.
    """

    memory: Tensor
    memory_labels: Tensor
    filled: Tensor
    position: Tensor

    def __init__(self, loss: nn.Module, miner: Miner, embedding_dim: int, size: int = 1024) -> None:
        super().__init__()
        self.loss = loss
        self.miner = miner
        self.size = check_int("size", size, 1)
        self.register_buffer("memory", torch.zeros(size, check_int("embedding_dim", embedding_dim, 1)))
        self.register_buffer("memory_labels", torch.zeros(size, dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        self.register_buffer("position", torch.zeros((), dtype=torch.long))

    def forward(
        self, embeddings: Tensor, labels: Tensor, *, generator: torch.Generator | None = None
    ) -> Tensor:
        """Loss of the batch against itself and the memory; then (training only) remember the batch."""
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
        loss: Tensor = self.loss(every, triplets, every_labels)
        if self.training:
            self._enqueue(embeddings.detach(), labels)
        return loss

    def reset(self) -> None:
        """Forget everything remembered."""
        self.filled.zero_()
        self.position.zero_()

    def _stored(self) -> tuple[Tensor, Tensor]:
        filled = int(self.filled)
        return self.memory[:filled], self.memory_labels[:filled]

    def _enqueue(self, embeddings: Tensor, labels: Tensor) -> None:
        count = min(len(embeddings), self.size)
        embeddings, labels = embeddings[-count:], labels[-count:]
        position = int(self.position)
        slots = (position + torch.arange(count, device=self.memory.device)) % self.size
        self.memory[slots] = embeddings.to(self.memory.dtype)
        self.memory_labels[slots] = labels.to(self.memory_labels.device)
        self.position.fill_((position + count) % self.size)
        self.filled.fill_(min(int(self.filled) + count, self.size))
