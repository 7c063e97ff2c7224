"""Patch extraction and grid cells against plain slicing."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from pretext3d.functional import cell_origins, extract_patches
from tests.conftest import coordinate_image


def test_cell_origins_are_row_major() -> None:
    origins = cell_origins((4, 5, 6), 2)
    expected = [[i * 4, j * 5, k * 6] for i, j, k in itertools.product(range(2), repeat=3)]
    assert origins.tolist() == expected


@given(
    spatial_dims=st.sampled_from([2, 3]),
    batch=st.integers(1, 3),
    patches=st.integers(1, 4),
    patch=st.integers(1, 4),
    seed=st.integers(0, 1000),
)
def test_extract_patches_matches_slicing(
    spatial_dims: int, batch: int, patches: int, patch: int, seed: int
) -> None:
    size = 7
    x = coordinate_image(batch, 2, (size,) * spatial_dims)
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, size - patch + 1, (batch, patches, spatial_dims), generator=gen)
    out = extract_patches(x, starts, (patch,) * spatial_dims)
    assert out.shape == (batch, patches, 2, *[patch] * spatial_dims) and out.is_contiguous()
    for b, p in itertools.product(range(batch), range(patches)):
        region = tuple(slice(s, s + patch) for s in starts[b, p].tolist())
        assert torch.equal(out[b, p], x[(b, slice(None), *region)])


@pytest.mark.parametrize("layout", ["transposed", "sliced", "expanded"])
def test_extract_patches_on_strided_views(spatial_dims: int, layout: str) -> None:
    base = coordinate_image(3, 2, (9,) * spatial_dims)
    if layout == "transposed":
        x = base.transpose(2, -1)
    elif layout == "sliced":
        x = base[1:, :, 1:, ::2]
    else:
        x = base[:1].expand(3, *base.shape[1:])
    starts = torch.zeros(x.shape[0], 2, spatial_dims, dtype=torch.long)
    starts[:, 1] = 1
    out = extract_patches(x, starts, (3,) * spatial_dims)
    for b, p in itertools.product(range(x.shape[0]), range(2)):
        region = tuple(slice(p, p + 3) for _ in range(spatial_dims))
        assert torch.equal(out[b, p], x[(b, slice(None), *region)])
