"""Gathering embeddings across ranks: 2 gloo processes on the CPU against one process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn

from pretext3d.objectives import BatchHardMiner, InfoNCELoss, TripletMarginLoss
from pretext3d.objectives import gather as distributed

BATCH, FEATURES, DIM = 6, 5, 3
LABELS = torch.tensor([0, 1, 2, 0, 1, 2])  # per rank: three instances, two views each


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(FEATURES, DIM)


def _data() -> Tensor:
    return torch.randn(2 * BATCH, FEATURES, generator=torch.Generator().manual_seed(1))


def _embed(model: nn.Module, x: Tensor) -> Tensor:
    return nn.functional.normalize(model(x), dim=1)


def _triplet_on_rank(model: nn.Module, mine: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    every = distributed.gather_with_grad(_embed(model, mine))
    labels = distributed.gather_labels(LABELS)
    return TripletMarginLoss(0.5)(every, BatchHardMiner()(every, labels)), {"labels": labels}


def _infonce_on_rank(model: nn.Module, mine: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    loss = InfoNCELoss(0.5, gather=True)(_embed(model, mine), _embed(model, mine.flip(0)))
    return loss, {}


LOSSES = {"triplet": _triplet_on_rank, "infonce": _infonce_on_rank}


def _worker(rank: int, init: str, out: str, loss_name: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        model = _model()
        loss, extra = LOSSES[loss_name](model, _data()[rank * BATCH : (rank + 1) * BATCH])
        loss.backward()
        for p in model.parameters():  # the sum over ranks is the single-process gradient
            assert p.grad is not None
            dist.all_reduce(p.grad)
        if rank == 0:
            torch.save({"loss": loss.detach(), "grads": [p.grad for p in model.parameters()], **extra}, out)
    finally:
        dist.destroy_process_group()


def _two_ranks(tmp_path: Path, loss_name: str) -> dict[str, Any]:
    out = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(f"file://{tmp_path / 'init'}", str(out), loss_name), nprocs=2, join=True)
    result: dict[str, Any] = torch.load(out)
    return result


def _assert_same(result: dict[str, Any], model: nn.Module, loss: Tensor) -> None:
    loss.backward()
    assert torch.allclose(result["loss"], loss.detach(), atol=1e-6)
    for got, p in zip(result["grads"], model.parameters(), strict=True):
        assert torch.allclose(got, p.grad, atol=1e-6)


def test_two_ranks_match_one_process(tmp_path: Path) -> None:
    result = _two_ranks(tmp_path, "triplet")
    model = _model()
    # gather_labels makes label l of rank r into l * 2 + r
    full_labels = torch.cat([LABELS * 2, LABELS * 2 + 1])
    assert torch.equal(result["labels"], full_labels)
    emb = _embed(model, _data())
    _assert_same(result, model, TripletMarginLoss(0.5)(emb, BatchHardMiner()(emb, full_labels)))


def test_infonce_gathered_over_two_ranks_matches_one_process(tmp_path: Path) -> None:
    result = _two_ranks(tmp_path, "infonce")
    model = _model()
    x = _data()
    keys = x.view(2, BATCH, FEATURES).flip(1).reshape(-1, FEATURES)  # each rank's own reversal
    _assert_same(result, model, InfoNCELoss(0.5)(_embed(model, x), _embed(model, keys)))


def test_without_a_process_group_gather_is_the_identity() -> None:
    x = torch.randn(3, 2)
    labels = torch.tensor([1, 2, 3])
    assert distributed.world_size() == 1 and distributed.rank() == 0
    assert distributed.gather_with_grad(x) is x and distributed.gather_labels(labels) is labels
