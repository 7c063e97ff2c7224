"""lightly's two-view losses and heads on the tasks' views.

lightly imports torchvision, so this runs in ``make test-interop``'s environment.
"""

from __future__ import annotations

import pytest
import torch

import pretext3d as p3
from pretext3d.objectives import TwoViewLoss
from tests.interop.docs_blocks import run_blocks_requiring

lightly = pytest.importorskip("lightly")
from lightly.loss import NegativeCosineSimilarity, NTXentLoss  # noqa: E402
from lightly.models.modules import SimCLRProjectionHead  # noqa: E402


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_a_lightly_loss_and_head_train_the_exemplar_task(spatial_dims: int) -> None:
    encoder = p3.models.ConvEncoder(spatial_dims, widths=(8, 16))
    task = p3.tasks.Exemplar(spatial_dims, loss=TwoViewLoss(NTXentLoss(temperature=0.5)))
    model = p3.PretextModel(encoder, task, head=SimCLRProjectionHead(16, 32, 8))
    x = torch.randn(4, 1, *[24] * spatial_dims, generator=torch.Generator().manual_seed(0))
    views, ids = task(x, generator=0)
    z = model(views)
    loss = task.loss(z, ids)
    loss.backward()
    assert torch.allclose(loss, NTXentLoss(temperature=0.5)(z[:4], z[4:]))  # the same as lightly's own call
    assert all(p.grad is not None for p in encoder.parameters())


def test_lightly_memory_banks_replace_the_tasks_memory() -> None:
    task = p3.tasks.Exemplar(2, loss=TwoViewLoss(NTXentLoss(memory_bank_size=(64, 128))))
    model = p3.PretextModel(p3.models.ConvEncoder(2, widths=(8, 16)), task)
    for step in range(3):
        views, ids = task(torch.randn(4, 1, 24, 24), generator=step)
        assert torch.isfinite(task.loss(model(views), ids))
    with pytest.raises(ValueError, match="without memory_size or gather"):
        p3.tasks.Exemplar(2, loss=TwoViewLoss(NegativeCosineSimilarity()), memory_size=32)
    with pytest.raises(ValueError, match="ids cat"):  # not two views of the same images
        TwoViewLoss(NegativeCosineSimilarity())(torch.randn(4, 8), (), torch.tensor([0, 1, 2, 3]))


def test_the_lightly_blocks_of_the_docs_run() -> None:
    assert run_blocks_requiring("lightly") == 1
