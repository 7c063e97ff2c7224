"""A tiny pretraining run per task and dimension: the pretext loss must fall."""

from __future__ import annotations

import pytest
import torch

import pretext3d as p3
from pretext3d.tasks import Jigsaw, RelativePatchLocation, Rotation

SIZES = {2: 36, 3: 24}


@pytest.mark.parametrize(
    "make_task",
    [
        lambda d: Rotation(d),
        lambda d: Jigsaw(d, grid=3 if d == 2 else 2, num_permutations=10, jitter=2),
        lambda d: RelativePatchLocation(d, grid=3, jitter=1),
    ],
    ids=["rotation", "jigsaw", "rpl"],
)
def test_pretext_loss_falls(spatial_dims: int, make_task: object) -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    task = make_task(spatial_dims)  # type: ignore[operator]
    images = p3.data.toy_images(32, spatial_dims, SIZES[spatial_dims], generator=gen)
    model = p3.PretextModel(p3.models.ConvEncoder(spatial_dims, widths=(8, 16)), task)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(80):
        views, labels = task(images[torch.randint(0, 32, (16,), generator=gen)], generator=gen)
        loss = task.loss(model(views), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < 0.8 * first, f"loss went from {first:.3f} to {last:.3f}"
