"""Contrastive predictive coding: the InfoNCE loss, causality of the context, the task."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import pretext3d as p3
from pretext3d.heads import CPCHead
from pretext3d.losses import BinaryCPCLoss, InfoNCELoss
from pretext3d.tasks import CPC


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
    with pytest.raises(ValueError, match="temperature must be > 0"):
        InfoNCELoss(0.0)
    with pytest.raises(ValueError, match=r"queries and keys must be \(Q, D\) and \(K, D\) with the same D"):
        InfoNCELoss()(torch.randn(3, 2), torch.randn(3, 4))
    with pytest.raises(ValueError, match="at least one key per query"):
        InfoNCELoss()(torch.randn(3, 2), torch.randn(2, 2))


def test_context_never_sees_its_targets(spatial_dims: int) -> None:
    torch.manual_seed(0)
    grid, feats = 4, 6
    head = CPCHead(feats, spatial_dims, grid, steps=2, code_dim=5, context_dim=7)
    features = torch.randn(2 * grid**spatial_dims, feats)
    z = head.codes(features)
    contexts = head.contexts(z)
    for row in range(1, grid):
        changed = features.view(2, *[grid] * spatial_dims, feats).clone()
        changed[:, row] += 10.0  # change every patch of one row
        new = head.contexts(head.codes(changed.view(-1, feats)))
        assert torch.allclose(new[:, :row], contexts[:, :row])  # rows above: untouched
        assert not torch.allclose(new[:, row], contexts[:, row])  # the row itself: changed


def test_head_targets_are_the_rows_below(spatial_dims: int) -> None:
    torch.manual_seed(0)
    grid = 4
    head = CPCHead(3, spatial_dims, grid, steps=3, code_dim=5)
    features = torch.randn(2 * grid**spatial_dims, 3)
    out = head(features)
    assert out.shape == (2, 2, 3, grid - 1, *[grid] * (spatial_dims - 1), 5)
    z = torch.nn.functional.normalize(head.codes(features), dim=-1)
    for k, r in itertools.product(range(3), range(grid - 1)):
        target = out[1, :, k, r]
        if r + 1 + k < grid:
            assert torch.allclose(target, z[:, r + 1 + k])
        else:
            assert torch.equal(target, torch.zeros_like(target))
    assert torch.allclose(out[0].norm(dim=-1), torch.ones(()))  # unit predictions


def test_task_shapes_and_grid_geometry(spatial_dims: int) -> None:
    if spatial_dims == 3:
        task, size = CPC(3), 128
        patch = 32
    else:
        task, size = CPC(2), 60
        patch = int(60 / (1 + 4 * 0.5))  # 5 patches with 50 % overlap: 20 voxels, stride 10
    x = torch.randn(2, 1, *[size] * spatial_dims)
    views, labels = task.eval()(x)
    assert views.shape == (2, task.grid**spatial_dims, 1, *[patch] * spatial_dims)
    assert torch.equal(labels, torch.zeros(2, dtype=torch.long))
    got_patch, stride, offset = task.geometry((size,) * spatial_dims)
    assert got_patch == patch
    # eval mode: no augmentation, so slot c is exactly the c-th grid window (row-major)
    for c, cell in enumerate(itertools.product(range(task.grid), repeat=spatial_dims)):
        region = tuple(
            slice(o + i * stride, o + i * stride + patch) for o, i in zip(offset, cell, strict=True)
        )
        assert torch.equal(views[1, c], x[(1, slice(None), *region)])


def test_training_augmentation_flips_and_crops(spatial_dims: int) -> None:
    task = CPC(spatial_dims, grid=2, patch=8, crop=2, flip_p=1.0)
    x = torch.randn(3, 1, *[16] * spatial_dims)
    views, _ = task(x, torch.Generator().manual_seed(0))
    clean, _ = task.eval()(x)
    task.train()
    assert views.shape == clean.shape
    # crop 2 then pad 1 on each side: the border is zero, the inside a shifted flipped crop
    border = views.clone()
    inner = (slice(None), slice(None), slice(None), *[slice(1, 7)] * spatial_dims)
    border[inner] = 0
    assert torch.equal(border, torch.zeros_like(border))
    flipped = clean.flip(list(range(3, 3 + spatial_dims)))
    patch = views[0, 0, 0][tuple(slice(1, 7) for _ in range(spatial_dims))]
    windows = [
        flipped[0, 0, 0][tuple(slice(o, o + 6) for o in corner)]
        for corner in itertools.product(range(3), repeat=spatial_dims)
    ]
    assert any(torch.equal(patch, w) for w in windows)


def test_cpc_accuracy_rises_above_chance() -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    images = p3.data.toy_images(64, 2, 40, generator=gen)
    task = CPC(2, grid=4, patch=16, overlap=0.5, steps=1)
    model = p3.PretextModel(p3.models.ConvEncoder(2, widths=(8, 16)), task)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    accuracies, losses = [], []
    for _ in range(60):
        views, labels = task(images[torch.randint(0, 64, (8,), generator=gen)], gen)
        out = model(views)
        loss = task.loss(out, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        accuracies.append(task.accuracy(out, labels).item())
        losses.append(loss.item())
    chance = 1 / (8 * 3 * 4)  # candidates per step: images x context rows x columns
    assert sum(accuracies[-10:]) / 10 > 5 * chance
    assert sum(losses[-10:]) < 0.9 * sum(losses[:10])


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: CPC(3, grid=4, steps=4), r"steps must be < grid = 4"),
        (lambda: CPC(3, overlap=1.0), r"overlap must lie in \[0, 1\)"),
        (lambda: CPC(3, loss="triplet"), "loss must be one of"),
        (lambda: CPC(2, loss="binary", gather=True), "gather=True only applies"),
        (lambda: CPCHead(8, 3, grid=3, steps=3), r"steps must be < grid = 3"),
    ],
)
def test_bad_construction(make: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()  # type: ignore[operator]


def test_grid_that_does_not_fit() -> None:
    with pytest.raises(
        ValueError, match=r"spans 128 voxels per axis, more than x's spatial shape \(96, 96, 96\)"
    ):
        CPC(3)(torch.randn(1, 1, 96, 96, 96))
    with pytest.raises(ValueError, match="must be the CPC head's"):
        CPC.pairs(torch.randn(3, 4))
