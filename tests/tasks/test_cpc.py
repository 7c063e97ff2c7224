"""The CPC task: grid geometry, augmentation parameters, learning, errors."""

from __future__ import annotations

import itertools

import pytest
import torch

import pretext3d as p3
from pretext3d.heads import CPCHead
from pretext3d.tasks import CPC


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
    assert labels is None  # CPC's targets come from the image itself
    got_patch, stride, offset = task.geometry((size,) * spatial_dims)
    assert got_patch == patch
    # eval mode: no augmentation, so slot c is the c-th grid window (row-major), normalised
    for c, cell in enumerate(itertools.product(range(task.grid), repeat=spatial_dims)):
        region = tuple(
            slice(o + i * stride, o + i * stride + patch) for o, i in zip(offset, cell, strict=True)
        )
        window = x[(1, slice(None), *region)]
        expected = (window - window.mean()) / (window.std(unbiased=False) + 1e-5)
        torch.testing.assert_close(views[1, c], expected, atol=1e-5, rtol=1e-5)
    raw, _ = CPC(spatial_dims, normalize_patches=False).eval()(x)  # the option of 0.1: windows as cut
    assert torch.equal(raw[1, 0], x[(1, slice(None), *[slice(o, o + patch) for o in offset])])


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
    assert any(torch.allclose(patch, w, atol=1e-5) for w in windows)


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
    with pytest.raises(ValueError, match="must be this CPC head's"):
        CPC(3).pairs(torch.randn(3, 4))
    # a tensor of the head's rank-minus-one with plausible sizes is refused too (issue 26)
    message = r"\(2, 'B', 1, 2, 3, 3, 'D'\) tensor \(steps=1, grid=3, 3D\), got \(2, 2, 1, 2, 3, 16\)"
    with pytest.raises(ValueError, match=message):
        CPC(3, grid=3, patch=8).loss(torch.randn(2, 2, 1, 2, 3, 16), None)


def test_binary_negatives_follow_the_generator_and_eval_takes_plain_patches(spatial_dims: int) -> None:
    task = CPC(spatial_dims, grid=3, patch=4, overlap=0.0, steps=1, code_dim=8, loss="binary")
    x = torch.randn(2, 1, *[12] * spatial_dims)
    model = p3.PretextModel(p3.models.ConvEncoder(spatial_dims, widths=(4,)), task)
    views, targets = task(x, torch.Generator().manual_seed(0))
    out = model(views)

    def loss(seed: int) -> torch.Tensor:
        return task.loss(out, targets, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(loss(1), loss(1)) and not torch.equal(loss(1), loss(2))
    with pytest.raises(TypeError, match="CPC has no external targets"):
        task.loss(out, torch.zeros(2, dtype=torch.long))  # type: ignore[arg-type]
    params = task.eval().randomize(x, torch.Generator().manual_seed(0))
    assert params.crop == 0 and not params.flips.any()
