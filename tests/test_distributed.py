"""Gathering embeddings across ranks: 2 gloo processes on the CPU against one process."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pretext3d import distributed
from pretext3d.losses import InfoNCELoss, TripletMarginLoss
from pretext3d.miners import BatchHardMiner

BATCH, FEATURES, DIM = 6, 5, 3


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(FEATURES, DIM)


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2 * BATCH, FEATURES, generator=gen)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])  # per rank: three instances, two views each
    return x, labels


def _loss(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    emb = torch.nn.functional.normalize(model(x), dim=1)
    return TripletMarginLoss(0.5)(emb, BatchHardMiner()(emb, labels))


def _worker(rank: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        model = _model()
        x, labels = _data()
        mine = x[rank * BATCH : (rank + 1) * BATCH]
        emb = torch.nn.functional.normalize(model(mine), dim=1)
        every = distributed.gather_with_grad(emb)
        every_labels = distributed.gather_labels(labels)
        loss = TripletMarginLoss(0.5)(every, BatchHardMiner()(every, every_labels))
        loss.backward()
        for p in model.parameters():  # the sum over ranks is the single-process gradient
            assert p.grad is not None
            dist.all_reduce(p.grad)
        if rank == 0:
            torch.save(
                {
                    "loss": loss.detach(),
                    "grads": [p.grad for p in model.parameters()],
                    "labels": every_labels,
                },
                out,
            )
    finally:
        dist.destroy_process_group()


def test_two_ranks_match_one_process(tmp_path: Path) -> None:
    out = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(f"file://{tmp_path / 'init'}", str(out)), nprocs=2, join=True)
    result = torch.load(out)

    model = _model()
    x, labels = _data()
    # gather_labels makes label l of rank r into l * 2 + r
    full_labels = torch.cat([labels * 2, labels * 2 + 1])
    assert torch.equal(result["labels"], full_labels)
    loss = _loss(model, x, full_labels)
    loss.backward()
    assert torch.allclose(result["loss"], loss.detach(), atol=1e-6)
    for got, p in zip(result["grads"], model.parameters(), strict=True):
        assert torch.allclose(got, p.grad, atol=1e-6)


def test_without_a_process_group_gather_is_the_identity() -> None:
    x = torch.randn(3, 2)
    labels = torch.tensor([1, 2, 3])
    assert distributed.world_size() == 1 and distributed.rank() == 0
    assert distributed.gather_with_grad(x) is x and distributed.gather_labels(labels) is labels


def _infonce_worker(rank: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        model = _model()
        x, _ = _data()
        mine = x[rank * BATCH : (rank + 1) * BATCH]
        q = torch.nn.functional.normalize(model(mine), dim=1)
        k = torch.nn.functional.normalize(model(mine.flip(0)), dim=1)
        loss = InfoNCELoss(0.5, gather=True)(q, k)
        loss.backward()
        for p in model.parameters():
            assert p.grad is not None
            dist.all_reduce(p.grad)
        if rank == 0:
            torch.save({"loss": loss.detach(), "grads": [p.grad for p in model.parameters()]}, out)
    finally:
        dist.destroy_process_group()


def test_infonce_gathered_over_two_ranks_matches_one_process(tmp_path: Path) -> None:
    out = tmp_path / "rank0.pt"
    mp.spawn(_infonce_worker, args=(f"file://{tmp_path / 'init'}", str(out)), nprocs=2, join=True)
    result = torch.load(out)
    model = _model()
    x, _ = _data()
    halves = x.view(2, BATCH, FEATURES)
    q = torch.nn.functional.normalize(model(x), dim=1)
    k = torch.nn.functional.normalize(model(halves.flip(1).reshape(-1, FEATURES)), dim=1)
    loss = InfoNCELoss(0.5)(q, k)
    loss.backward()
    assert torch.allclose(result["loss"], loss.detach(), atol=1e-6)
    for got, p in zip(result["grads"], model.parameters(), strict=True):
        assert torch.allclose(got, p.grad, atol=1e-6)
