"""Losses against hand-written references: triplet margin, InfoNCE, binary CPC."""

from __future__ import annotations

import math

import pytest
import torch

from pretext3d.objectives import BinaryCPCLoss, InfoNCELoss, TripletMarginLoss


def test_triplet_loss_matches_a_loop() -> None:
    torch.manual_seed(0)
    emb = torch.randn(10, 4)
    a, p, n = torch.tensor([0, 1, 2, 3]), torch.tensor([5, 6, 7, 8]), torch.tensor([9, 2, 4, 0])
    expected = 0.0
    for i, j, k in zip(a.tolist(), p.tolist(), n.tolist(), strict=True):
        d_ap = math.sqrt(sum((emb[i, c] - emb[j, c]).item() ** 2 for c in range(4)))
        d_an = math.sqrt(sum((emb[i, c] - emb[k, c]).item() ** 2 for c in range(4)))
        expected += max(0.0, d_ap - d_an + 0.7)
    assert TripletMarginLoss(0.7)(emb, (a, p, n)).item() == pytest.approx(expected / 4, rel=1e-5)


def test_no_triplets_give_a_zero_that_keeps_the_graph() -> None:
    emb = torch.randn(3, 4, requires_grad=True)
    empty = torch.zeros(0, dtype=torch.long)
    loss = TripletMarginLoss()(emb, (empty, empty, empty))
    assert loss.item() == 0.0
    loss.backward()
    assert emb.grad is not None and torch.equal(emb.grad, torch.zeros(3, 4))


def test_identical_anchor_and_positive_give_finite_gradients() -> None:
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    TripletMarginLoss(1.0)(emb, (torch.tensor([0]), torch.tensor([1]), torch.tensor([2]))).backward()
    assert emb.grad is not None and torch.isfinite(emb.grad).all()


def test_loss_bad_input() -> None:
    with pytest.raises(ValueError, match="margin must be a finite number > 0, got 0"):
        TripletMarginLoss(0)
    with pytest.raises(ValueError, match="differ in length"):
        TripletMarginLoss()(torch.randn(3, 2), (torch.tensor([0]), torch.tensor([1, 2]), torch.tensor([2])))


def test_infonce_matches_a_manual_cross_entropy() -> None:
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(5, 3, generator=gen), torch.randn(7, 3, generator=gen)
    t = 0.3
    expected = 0.0
    for i in range(5):
        scores = [sum(q[i, c].item() * k[j, c].item() for c in range(3)) / t for j in range(7)]
        expected += -(scores[i] - math.log(sum(math.exp(s) for s in scores)))
    assert InfoNCELoss(t)(q, k).item() == pytest.approx(expected / 5, rel=1e-5)


def test_perfect_predictions_reach_the_analytic_minimum() -> None:
    # unit keys, mutually orthogonal, each query equal to its key:
    # loss = -log(e^(1/t) / (e^(1/t) + (n - 1))) = log(1 + (n - 1) e^(-1/t))
    n, t = 6, 0.2
    keys = torch.eye(n)
    assert InfoNCELoss(t)(keys, keys).item() == pytest.approx(
        math.log(1 + (n - 1) * math.exp(-1 / t)), rel=1e-5
    )
    # any other unit queries do worse
    other = torch.nn.functional.normalize(
        keys + 0.3 * torch.randn(n, n, generator=torch.Generator().manual_seed(0))
    )
    assert InfoNCELoss(t)(other, keys).item() > InfoNCELoss(t)(keys, keys).item()


def test_binary_loss_by_hand() -> None:
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    k = q.clone()
    loss = BinaryCPCLoss(temperature=1.0)(q, k)
    # each positive scores 1, each negative (the other key) 0
    expected = (2 * -math.log(1 / (1 + math.exp(-1))) + 2 * -math.log(1 - 0.5)) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_losses_bad_input() -> None:
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        InfoNCELoss(0.0)
    with pytest.raises(ValueError, match=r"queries and keys must be \(Q, D\) and \(K, D\) with the same D"):
        InfoNCELoss()(torch.randn(3, 2), torch.randn(3, 4))
    with pytest.raises(ValueError, match="at least one key per query"):
        InfoNCELoss()(torch.randn(3, 2), torch.randn(2, 2))
