"""Crops: batched random crops, one random crop of an array, foreground crops."""

from __future__ import annotations

import pytest
import torch

from pretext3d.transforms import random_crops
from tests.conftest import coordinate_image


def test_random_crops_are_uniform_windows(spatial_dims: int) -> None:
    shape = (6, 7, 8)[:spatial_dims]
    x = coordinate_image(400, 1, shape)
    size = (3, 4, 5)[:spatial_dims]
    crops = random_crops(x, size, torch.Generator().manual_seed(0))
    assert crops.shape == (400, 1, *size)
    corners = set()
    for b in range(400):
        flat = int(crops[(b, 0, *[0] * spatial_dims)]) - b * int(torch.tensor(shape).prod())
        corner = tuple(int(c) for c in torch.unravel_index(torch.tensor(flat), shape))
        region = tuple(slice(c, c + s) for c, s in zip(corner, size, strict=True))
        assert torch.equal(crops[b], x[(b, slice(None), *region)])
        corners.add(corner)
    assert len(corners) == 4**spatial_dims  # every placement occurs: 4 per axis
    with pytest.raises(ValueError, match=r"size must give one crop edge in 1\.\.n per spatial axis"):
        random_crops(x, (7,) * spatial_dims)
