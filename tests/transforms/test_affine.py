"""The affine and intensity augmenter: exact paths, resampling, intensities, determinism."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import pretext3d as p3
from pretext3d.transforms import AugmentParams, ExemplarAugmenter


def off(spatial_dims: int, **on: float) -> ExemplarAugmenter:
    """An augmenter with every component off except those given."""
    probs = {"flip_p": 0.0, "rot90_p": 0.0, "rotate_p": 0.0, "zoom_p": 0.0, "intensity_p": 0.0}
    probs.update(on)
    return ExemplarAugmenter(spatial_dims, **probs)  # type: ignore[arg-type]


def test_flips_and_quarter_turns_are_exact(spatial_dims: int) -> None:
    x = torch.randn(6, 2, *[8] * spatial_dims)
    aug = off(spatial_dims, flip_p=1.0)
    assert torch.equal(aug(x), x.flip(list(range(2, 2 + spatial_dims))))
    turns = off(spatial_dims, rot90_p=1.0)
    params = turns.randomize(x, torch.Generator().manual_seed(0))
    out = turns.apply_params(x, params)
    for i in range(6):
        # find the quarter turns per plane whose product is the drawn matrix, then apply
        # them one after the other with torch.rot90
        for qs in itertools.product(range(4), repeat=len(turns.planes)):
            m = torch.eye(spatial_dims, dtype=torch.long)
            for plane, q in zip(turns.planes, qs, strict=True):
                m = p3.functional.plane_rotation_matrix(spatial_dims, plane, q) @ m
            if torch.equal(m.double(), params.matrix[i]):
                break
        expected = x[i]
        for (a, b), q in zip(turns.planes, qs, strict=True):
            expected = torch.rot90(expected, q, dims=(1 + a, 1 + b))
        assert torch.equal(out[i], expected)


def test_quarter_turn_matches_rot90(spatial_dims: int) -> None:
    x = torch.randn(1, 1, *[6] * spatial_dims)
    aug = off(spatial_dims)
    plane = (0, 1)
    params = AugmentParams.identity(1, spatial_dims)
    params.matrix[0] = p3.functional.plane_rotation_matrix(spatial_dims, plane, 1).double()
    assert torch.equal(aug.apply_params(x, params), torch.rot90(x, 1, dims=(2, 3)))


def test_identity_parameters_give_the_input_back(spatial_dims: int) -> None:
    x = torch.randn(3, 2, *[7] * spatial_dims)
    aug = ExemplarAugmenter(spatial_dims)
    assert torch.equal(aug.apply_params(x, AugmentParams.identity(3, spatial_dims)), x)
    assert torch.equal(off(spatial_dims)(x), x)


def test_resampling_path_agrees_with_exact_path_on_quarter_turns(spatial_dims: int) -> None:
    # grid_sample at a quarter turn lands on voxel centres: same values as the exact path
    x = torch.randn(2, 1, *[8] * spatial_dims)
    aug = off(spatial_dims)
    params = AugmentParams.identity(2, spatial_dims)
    params.matrix[:] = p3.functional.plane_rotation_matrix(spatial_dims, (0, 1), 1).double()
    exact = aug.apply_params(x, params)
    resampled = aug._resample(x, params.matrix)
    assert torch.allclose(resampled, exact, atol=1e-5)


def test_free_rotation_and_zoom_move_a_blob_where_the_matrix_says(spatial_dims: int) -> None:
    n = 33
    coords = torch.stack(
        torch.meshgrid(*[torch.arange(n, dtype=torch.float64)] * spatial_dims, indexing="ij")
    )
    centre = torch.tensor([20.0, 12.0, 16.0][:spatial_dims], dtype=torch.float64)
    blob = torch.exp(-((coords - centre.view(-1, *[1] * spatial_dims)) ** 2).sum(0) / 4).float()
    x = blob[None, None]
    aug = off(spatial_dims)
    params = AugmentParams.identity(1, spatial_dims)
    angle = math.radians(30)
    m = torch.eye(spatial_dims, dtype=torch.float64)
    m[0, 0], m[0, 1], m[1, 0], m[1, 1] = math.cos(angle), -math.sin(angle), math.sin(angle), math.cos(angle)
    params.matrix[0] = torch.diag(torch.tensor([1.1] + [0.9] * (spatial_dims - 1), dtype=torch.float64)) @ m
    out = aug.apply_params(x, params)[0, 0].double()
    expected = params.matrix[0] @ (centre - (n - 1) / 2) + (n - 1) / 2
    found = (coords * out).flatten(1).sum(1) / out.sum()
    assert torch.allclose(found, expected, atol=0.3)


def test_intensity(spatial_dims: int) -> None:
    x = torch.randn(2, 1, *[5] * spatial_dims)
    params = AugmentParams.identity(2, spatial_dims)
    params.contrast[0], params.brightness[0] = 1.5, 0.1
    out = off(spatial_dims).apply_params(x, params)
    mean = x[0].mean()
    assert torch.allclose(out[0], (x[0] - mean) * 1.5 + mean + 0.1, atol=1e-6)
    assert torch.equal(out[1], x[1])


@given(
    spatial_dims=st.sampled_from([2, 3]),
    batch=st.integers(1, 4),
    shape=st.lists(st.integers(4, 9), min_size=3, max_size=3),
    seed=st.integers(0, 1000),
)
def test_shapes_determinism_and_exact_fraction(
    spatial_dims: int, batch: int, shape: list[int], seed: int
) -> None:
    x = torch.randn(batch, 2, *shape[:spatial_dims])
    aug = ExemplarAugmenter(spatial_dims)
    a = aug(x, torch.Generator().manual_seed(seed))
    b = aug(x, torch.Generator().manual_seed(seed))
    assert a.shape == x.shape and torch.equal(a, b) and torch.isfinite(a).all()


def test_augmenter_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"flip_p must lie in \[0, 1\], got 1.5"):
        ExemplarAugmenter(3, flip_p=1.5)
    with pytest.raises(ValueError, match="zoom_range must be"):
        ExemplarAugmenter(3, zoom_range=(1.2, 0.8))
    with pytest.raises(ValueError, match="mode must be one of"):
        ExemplarAugmenter(3, mode="bicubic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"params.matrix must have shape \(2, 3, 3\)"):
        ExemplarAugmenter(3).apply_params(torch.randn(2, 1, 4, 4, 4), AugmentParams.identity(3, 3))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_half_precision_input_is_sampled_on_a_full_precision_grid(spatial_dims: int) -> None:
    size = 96 if spatial_dims == 3 else 256
    x = torch.randn(2, 1, *(size,) * spatial_dims).bfloat16()
    augmenter = ExemplarAugmenter(spatial_dims)
    params = augmenter.randomize(x, torch.Generator().manual_seed(0))
    half, full = augmenter.apply_params(x, params), augmenter.apply_params(x.float(), params)
    assert half.dtype == torch.bfloat16
    # the same voxels are read: the difference is bf16 rounding of the result (a grid in bf16
    # was off by up to half a voxel at this size, a difference of the order of the values)
    torch.testing.assert_close(half.float(), full, atol=0.05, rtol=0.02)
