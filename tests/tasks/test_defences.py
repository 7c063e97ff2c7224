"""The grid tasks' shortcut defences, the rotation crop filter and the exemplar's default memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pretext3d as p3
from pretext3d.functional.patches import cell_origins, extract_patches
from pretext3d.functional.rotation import apply_flips
from pretext3d.tasks._grid import crop_resample, crop_tiles
from pretext3d.tasks.jigsaw import JigsawParams
from pretext3d.training import SeededCrops

UNDEFENDED = p3.tasks.NO_DEFENCES


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_crop_resample_identity_and_analytic_ramp(spatial_dims: int) -> None:
    n, d = 8, spatial_dims
    x = torch.randn(2, 2, *(n,) * d)
    whole = crop_resample(x, torch.ones(2), torch.zeros(2, d))
    torch.testing.assert_close(whole, x)
    # a ramp along axis 0: output voxel i samples input coordinate ((s * u + c + 1) * n - 1) / 2
    ramp = torch.arange(n, dtype=torch.float32).view(1, 1, n, *[1] * (d - 1)).expand(1, 1, *(n,) * d)
    s, c = 0.5, -0.25
    centre = torch.zeros(1, d)
    centre[0, 0] = c
    out = crop_resample(ramp.contiguous(), torch.tensor([s]), centre)
    i = torch.arange(1, n - 1, dtype=torch.float32)
    expected = ((s * ((2 * i + 1) / n - 1) + c + 1) * n - 1) / 2
    torch.testing.assert_close(out[0, 0, 1 : n - 1].flatten(1)[:, 0], expected)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_tiles_match_a_hand_written_reference(spatial_dims: int) -> None:
    d = spatial_dims
    size = 24 if d == 2 else 18
    task = p3.tasks.Jigsaw(d, grid=3, num_permutations=10, jitter=2, gap=2, color="none")
    x = torch.randn(2, 1, *(size,) * d)
    params = task.randomize(x, generator=0)
    views, targets = task.apply_params(x, params)
    assert params.crop is not None
    cropped = crop_resample(x, params.crop.scale, params.crop.centre)
    assert params.tile_flips is not None
    cell, patch = task.geometry((size,) * d)
    assert patch == tuple(c - 4 for c in cell)
    origins = cell_origins(cell, 3)
    for b in range(2):
        for slot, c in enumerate(task.permutations[targets[b]].tolist()):
            start = origins[c] + params.offsets[b, slot]
            box = [slice(int(a), int(a) + p) for a, p in zip(start, patch, strict=True)]
            tile = cropped[b][(slice(None), *box)]
            tile = tile.flip([1 + a for a in range(d) if params.tile_flips[b, slot, a]])
            tile = (tile - tile.mean()) / (tile.std(unbiased=False) + 1e-5)
            torch.testing.assert_close(views[b, slot], tile, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_separable_crop_equals_grid_sample_mirrored_and_in_float32(spatial_dims: int) -> None:
    # issue 39: the crop is interpolated one axis after another, mirrored tiles read their
    # positions backwards; the views are grid_sample's, flipped afterwards, to float rounding
    d, g = spatial_dims, torch.Generator().manual_seed(3)
    shape = (23, 30, 17)[:d]
    x = torch.randn(3, 2, *shape, generator=g)
    scale = torch.tensor([0.4, 0.73, 1.0])
    centre = (2 * torch.rand(3, d, generator=g) - 1) * (1 - scale[:, None])
    centre[0] = 1 - scale[0]  # at the far border
    patch = tuple(n // 3 for n in shape)
    starts = torch.stack(
        [torch.randint(0, n - t + 1, (3, 5), generator=g) for n, t in zip(shape, patch, strict=True)], -1
    )
    flips = torch.rand(3, 5, d, generator=g) < 0.5
    reference = extract_patches(crop_resample(x, scale, centre), starts, patch)
    reference = apply_flips(reference.flatten(0, 1), flips.flatten(0, 1)).view(reference.shape)
    torch.testing.assert_close(
        crop_tiles(x, scale, centre, starts, patch, flips), reference, atol=1e-5, rtol=1e-5
    )
    # bf16 input: positions and weights in float32, only the result rounded to bf16
    low = x.bfloat16()
    expected = crop_tiles(low.float(), scale, centre, starts, patch, flips).bfloat16()
    assert torch.equal(crop_tiles(low, scale, centre, starts, patch, flips), expected)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_gap_and_jitter_bound_the_offsets(spatial_dims: int) -> None:
    d = spatial_dims
    task = p3.tasks.RelativePatchLocation(d, jitter=0.2, gap=0.1)
    size = 60 if d == 2 else 30
    x = torch.randn(4, 1, *(size,) * d)
    jitter, gap = task.pixels((size,) * d)
    assert (jitter, gap) == (int(0.2 * (size // 3)), int(0.1 * (size // 3)))
    offsets = torch.cat([task.randomize(x, generator=k).offsets for k in range(20)])
    assert int(offsets.min()) == gap // 2 and int(offsets.max()) == gap // 2 + jitter
    task.eval()
    assert bool((task.randomize(x, generator=0).offsets == gap // 2 + jitter // 2).all())
    views, _ = task(x, generator=0)
    assert views.shape[3:] == (size // 3 - jitter - gap,) * d


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_tiles_are_normalised_and_colours_dropped(spatial_dims: int) -> None:
    d = spatial_dims
    x = torch.rand(3, 3, *(27,) * d) * 5 + 2
    views, _ = p3.tasks.Jigsaw(d, grid=3, num_permutations=5)(x, generator=0)
    stds = views.flatten(3).std(-1, unbiased=False)  # (B, P, C)
    means = views.flatten(3).mean(-1)
    # one channel kept per tile, normalised; the others set to their (zero) mean
    assert bool(((stds > 0.99) & (stds < 1.01)).sum(-1).eq(1).all())
    assert bool((stds[stds < 0.5] < 1e-5).all())
    torch.testing.assert_close(means, torch.zeros_like(means), atol=1e-5, rtol=0)
    gray = torch.rand(2, 1, *(27,) * d)
    views, _ = p3.tasks.Jigsaw(d, grid=3, num_permutations=5)(gray, generator=0)  # one channel: kept
    assert bool((views.flatten(3).std(-1, unbiased=False) > 0.99).all())


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_undefended_options_give_the_raw_cells(spatial_dims: int) -> None:
    d = spatial_dims
    x = torch.randn(2, 1, *(8,) * d)
    task = p3.tasks.Jigsaw(d, grid=2, num_permutations=4, **UNDEFENDED)
    params = JigsawParams(torch.tensor([0, 3]), torch.zeros(2, 2**d, d, dtype=torch.long))
    views, _ = task.apply_params(x, params)
    first = task.permutations[3, 0].item()
    corner = [(first >> (d - 1 - a)) & 1 for a in range(d)]
    expected = x[1][(slice(None), *[slice(4 * c, 4 * c + 4) for c in corner])]
    torch.testing.assert_close(views[1, 0], expected)


@pytest.mark.parametrize(
    ("options", "error", "named"),
    [
        ({"crop_scale": (0.9, 0.5)}, ValueError, "crop_scale"),
        ({"crop_scale": (0.0, 0.5)}, ValueError, "crop_scale"),
        ({"jitter": 1.5}, ValueError, "jitter"),
        ({"gap": "wide"}, TypeError, "gap"),
        ({"color": "grey"}, ValueError, "color"),
    ],
)
def test_bad_defence_options_are_named(
    options: dict[str, object], error: type[Exception], named: str
) -> None:
    with pytest.raises(error, match=named):
        p3.tasks.Jigsaw(2, grid=2, num_permutations=4, **options)  # type: ignore[arg-type]


def test_params_of_another_setting_are_refused() -> None:
    x = torch.randn(2, 3, 24, 24)
    undefended = p3.tasks.Jigsaw(2, grid=2, num_permutations=4, **UNDEFENDED)
    with pytest.raises(ValueError, match=r"params\.crop"):
        p3.tasks.Jigsaw(2, grid=2, num_permutations=4).apply_params(x, undefended.randomize(x, generator=0))


def test_exemplar_mines_against_a_memory_by_default() -> None:
    assert p3.tasks.Exemplar(2).memory is not None and p3.tasks.Exemplar(2).memory.size == 1024
    assert p3.tasks.Exemplar(2, memory_size=0).memory is None
    assert p3.tasks.Exemplar(2, protocol="original").memory is None


def test_loader_redraws_flat_crops() -> None:
    image = torch.zeros(1, 32, 32)
    image[:, :, 24:] = torch.rand(1, 32, 8, generator=torch.Generator().manual_seed(0))
    data = [image] * 16

    def stds(min_std: float) -> np.ndarray:
        crops = SeededCrops(data, 8, 2, seed=0, image_key="image", min_std=min_std)  # type: ignore[arg-type]
        return np.array([float(crops[i].std()) for i in range(16)])

    need = 0.5 * float(image.std())
    assert (stds(0.0) < need).mean() > 0.3  # most uniform crops are flat
    kept = stds(0.5)
    assert (kept >= need).mean() > 0.9  # redrawn until varied (8 draws at most)
    assert kept.tolist() == stds(0.5).tolist()  # deterministic
