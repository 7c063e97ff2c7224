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
    assert int(memory.filled) == 2
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
    assert int(memory.filled) == 4 and memory.memory_labels.tolist() == [5, 6, 7, 0]


def test_state_lives_in_buffers_and_only_training_writes_it() -> None:
    memory = CrossBatchMemory(TripletMarginLoss(), BatchHardMiner(), embedding_dim=2, size=4)
    memory(torch.randn(3, 2), torch.tensor([0, 0, 1]))
    assert int(memory.filled) == 3 and int(memory.position) == 3
    state = memory.state_dict()
    assert {"memory", "memory_labels", "filled", "position"} <= set(state)
    restored = CrossBatchMemory(TripletMarginLoss(), BatchHardMiner(), embedding_dim=2, size=4)
    restored.load_state_dict(state)
    x, labels = torch.tensor([[0.0, 1.0], [3.0, 3.0]]), torch.tensor([0, 2])
    # a restored memory is not empty: it mines against what was saved
    assert torch.equal(restored(x, labels), memory(x, labels))
    # a validation pass reads the memory but leaves it as it was
    restored.eval()
    before = {k: v.clone() for k, v in restored.state_dict().items()}
    restored(torch.randn(2, 2), torch.tensor([7, 8]))
    assert all(torch.equal(v, restored.state_dict()[k]) for k, v in before.items())
    restored.train()
    restored(torch.randn(2, 2), torch.tensor([7, 8]))
    assert int(restored.filled) == 4 and int(restored.position) == 3
    restored.reset()
    assert int(restored.filled) == 0 and int(restored.position) == 0
