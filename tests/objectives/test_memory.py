"""The cross-batch memory: mining against earlier batches, state in buffers, training-only updates."""

from __future__ import annotations

import pytest
import torch

from pretext3d.objectives import (
    BatchHardMiner,
    CrossBatchMemory,
    TripletMarginLoss,
)


def test_cross_batch_memory_mines_against_earlier_batches() -> None:
    memory = CrossBatchMemory(TripletMarginLoss(), BatchHardMiner(), embedding_dim=2, size=4)
    first = torch.tensor([[0.0, 0.0], [0.0, 0.1]])
    memory(first, torch.tensor([0, 0]))  # one instance: no triplet yet, but remembered
    assert memory.filled == 2
    second = torch.tensor([[0.0, 0.05], [5.0, 5.0]], requires_grad=True)
    loss = memory(second, torch.tensor([1, 0]))
    # anchor 0 (label 1) has no positive; anchor 1 (label 0) finds positives in memory
    expected = TripletMarginLoss()(
        torch.cat([second, first]), (torch.tensor([1]), torch.tensor([2]), torch.tensor([0]))
    )
    assert loss.item() == pytest.approx(expected.item())
    loss.backward()
    assert second.grad is not None
    memory(torch.randn(3, 2), torch.tensor([5, 6, 7]))
    # a ring of 4: [0, 0] then [1, 0] filled it; [5, 6, 7] overwrote the three oldest
    assert memory.filled == 4 and memory.memory_labels.tolist() == [5, 6, 7, 0]
