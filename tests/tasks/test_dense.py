"""The dense tasks: Models Genesis and masked image modelling, against their definitions."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import pretext3d as p3
from pretext3d.tasks import DenseTask, MaskedImageModeling, ModelsGenesis, Reconstruction
from pretext3d.tasks.base import weighted_mse
from pretext3d.tasks.genesis import _cells, bezier_curve, local_shuffle, paint_mask
from pretext3d.tasks.mim import patch_mask

DIMS = [2, 3]


def image(spatial_dims: int, size: int = 32, batch: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 1, *[size] * spatial_dims, generator=torch.Generator().manual_seed(seed))


# --- Models Genesis -----------------------------------------------------------------------


def test_bezier_maps_the_unit_interval_onto_itself_monotonically() -> None:
    control = torch.rand(64, 2, 2, generator=torch.Generator().manual_seed(0))
    flipped = torch.arange(64) % 2 == 0
    xs, ys = bezier_curve(control, flipped)
    assert torch.allclose(xs[:, 0], torch.zeros(64)) and torch.allclose(xs[:, -1], torch.ones(64))
    assert bool((xs.diff(dim=1) >= 0).all())
    rising, falling = ys[~flipped], ys[flipped]
    assert bool((rising.diff(dim=1) >= 0).all()) and bool((falling.diff(dim=1) <= 0).all())
    assert torch.allclose(rising[:, 0], torch.zeros(32)) and torch.allclose(rising[:, -1], torch.ones(32))
    assert torch.allclose(falling[:, 0], torch.ones(32)) and torch.allclose(falling[:, -1], torch.zeros(32))


def test_bezier_with_control_points_on_the_diagonal_is_the_identity() -> None:
    # P1 = (1/3, 1/3), P2 = (2/3, 2/3): the cubic is the straight line x = y = t
    xs, ys = bezier_curve(torch.tensor([[[1 / 3, 1 / 3], [2 / 3, 2 / 3]]]), torch.tensor([False]))
    assert torch.allclose(xs, ys, atol=1e-6)


@pytest.mark.parametrize("spatial_dims", DIMS)
def test_the_intensity_curve_alone_is_monotonic_per_image(spatial_dims: int) -> None:
    task = ModelsGenesis(spatial_dims, local_p=0.0, nonlinear_p=1.0, paint_p=0.0)
    x = image(spatial_dims)
    views, _ = task(x, generator=0)
    params = task.randomize(x, generator=0)
    for i in range(len(x)):
        order = x[i].flatten().argsort()
        mapped = views[i].flatten()[order]
        steps = mapped.diff()
        if bool(params.flipped[i]):
            assert bool((steps <= 1e-5).all())
        else:
            assert bool((steps >= -1e-5).all())
        # the image's range is kept (scaled to [0, 1] and back)
        assert (
            float(mapped.min()) >= float(x[i].min()) - 1e-5
            and float(mapped.max()) <= float(x[i].max()) + 1e-5
        )


@pytest.mark.parametrize("spatial_dims", DIMS)
def test_local_shuffle_keeps_each_blocks_voxels_and_moves_nothing_else(spatial_dims: int) -> None:
    task = ModelsGenesis(spatial_dims)
    x = image(spatial_dims, size=35, batch=2)  # 35: a remainder beyond the last whole cell
    params = task.randomize(x, generator=3)
    out = local_shuffle(x, params.block_sizes, params.block_corners, params.seed)
    edges, counts = _cells(x.shape[2:])
    inside = torch.zeros(x.shape, dtype=torch.bool)
    for b in range(len(x)):
        for cell, index in enumerate(
            torch.cartesian_prod(*[torch.arange(n) for n in counts]).reshape(-1, spatial_dims)
        ):
            lo = [
                int(index[a]) * edges[a] + int(params.block_corners[b, cell, a]) for a in range(spatial_dims)
            ]
            hi = [lo[a] + int(params.block_sizes[b, cell, a]) for a in range(spatial_dims)]
            block = (b, slice(None), *[slice(lo[a], hi[a]) for a in range(spatial_dims)])
            inside[block] = True
            assert torch.equal(out[block].flatten().sort().values, x[block].flatten().sort().values)
    assert torch.equal(out[~inside], x[~inside])
    assert float((out != x)[inside].float().mean()) > 0.5  # the blocks are shuffled indeed


def test_paint_mask_is_the_union_of_the_drawn_boxes() -> None:
    corners = torch.tensor([[[0, 0], [2, 3]]])
    sizes = torch.tensor([[[2, 2], [2, 1]]])
    mask = paint_mask((5, 5), corners, sizes, torch.tensor([[True, True]]))[0, 0]
    expected = torch.zeros(5, 5, dtype=torch.bool)
    expected[0:2, 0:2] = True
    expected[2:4, 3:4] = True
    assert torch.equal(mask, expected)
    assert not paint_mask((5, 5), corners, sizes, torch.tensor([[False, False]])).any()


@pytest.mark.parametrize("spatial_dims", DIMS)
@pytest.mark.parametrize("outpaint", [False, True])
def test_painting_changes_only_the_drawn_region(spatial_dims: int, outpaint: bool) -> None:
    task = ModelsGenesis(spatial_dims, local_p=0.0, nonlinear_p=0.0, paint_p=1.0, outpaint_p=float(outpaint))
    x = image(spatial_dims) + 5.0  # the noise is drawn in the image's own range
    params = task.randomize(x, generator=1)
    views, targets = task.apply_params(x, params)
    mask = paint_mask(x.shape[2:], params.box_corners, params.box_sizes, params.box_on)
    noisy = ~mask if outpaint else mask
    assert torch.allclose(views[~noisy.expand_as(x)], x[~noisy.expand_as(x)], atol=1e-5)
    changed = views[noisy.expand_as(x)]
    assert float((changed - x[noisy.expand_as(x)]).abs().mean()) > 0.1
    assert float(changed.min()) >= float(x.min()) - 1e-5 and float(changed.max()) <= float(x.max()) + 1e-5
    if outpaint:  # a kept box of 3/7-4/7 of each side
        sides = params.box_sizes[:, 0].float() / torch.tensor(x.shape[2:])
        assert bool(((sides >= 3 / 7 - 0.05) & (sides <= 4 / 7 + 0.05)).all())
    assert torch.equal(targets.target, x) and torch.equal(targets.baseline, views) and targets.weight is None


@pytest.mark.parametrize("spatial_dims", DIMS)
def test_genesis_draws_each_transformation_at_its_probability(spatial_dims: int) -> None:
    task = ModelsGenesis(spatial_dims)
    params = task.randomize(image(spatial_dims, size=16, batch=4000), generator=0)
    assert float(params.local.float().mean()) == pytest.approx(0.5, abs=0.03)
    assert float(params.nonlinear.float().mean()) == pytest.approx(0.9, abs=0.02)
    assert float((params.paint > 0).float().mean()) == pytest.approx(0.9, abs=0.02)
    assert float((params.paint == 2).float().mean()) == pytest.approx(0.72, abs=0.03)  # 0.9 * 0.8
    assert float(params.flipped.float().mean()) == pytest.approx(0.5, abs=0.03)


# --- masked image modelling -----------------------------------------------------------------


@pytest.mark.parametrize("spatial_dims", DIMS)
@pytest.mark.parametrize("ratio", [0.25, 0.6, 0.75])
def test_the_mask_covers_the_requested_ratio_exactly(spatial_dims: int, ratio: float) -> None:
    task = MaskedImageModeling(spatial_dims, mask_ratio=ratio, patch=4)
    x = image(spatial_dims, size=18)  # 4 whole patches per side, 2 voxels left over
    params = task.randomize(x, generator=0)
    patches = 4**spatial_dims
    assert params.masked.flatten(1).sum(1).tolist() == [round(ratio * patches)] * len(x)
    _, targets = task.apply_params(x, params)
    assert targets.weight is not None
    covered = targets.weight.flatten(1).sum(1) / 4**spatial_dims
    assert covered.tolist() == [round(ratio * patches)] * len(x)
    assert not targets.weight[(..., *[slice(16, None)] * spatial_dims)].any()  # the remainder never


@pytest.mark.parametrize("spatial_dims", DIMS)
@pytest.mark.parametrize("fill", ["mean", "zero"])
def test_masked_patches_are_filled_and_the_rest_is_the_image(spatial_dims: int, fill: str) -> None:
    task = MaskedImageModeling(spatial_dims, patch=8, fill=fill)  # type: ignore[arg-type]
    x = image(spatial_dims)
    views, targets = task(x, generator=0)
    mask = targets.weight.bool().expand_as(x)
    assert torch.equal(views[~mask], x[~mask])
    means = x.mean(dim=tuple(range(2, x.dim())), keepdim=True).expand_as(x)
    assert torch.allclose(views[mask], means[mask] if fill == "mean" else torch.zeros_like(x[mask]))


@pytest.mark.parametrize("spatial_dims", DIMS)
def test_targets_are_normalised_per_patch(spatial_dims: int) -> None:
    task = MaskedImageModeling(spatial_dims, patch=4)
    x = image(spatial_dims, size=16) * 7 + 3
    _, targets = task(x, generator=0)
    first = targets.target[(0, 0, *[slice(0, 4)] * spatial_dims)]
    raw = x[(0, 0, *[slice(0, 4)] * spatial_dims)]
    assert float(first.mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(first.var(unbiased=False)) == pytest.approx(1.0, abs=1e-3)
    assert torch.allclose(first, (raw - raw.mean()) / (raw.var(unbiased=False) + 1e-6).sqrt(), atol=1e-4)
    raw_task = MaskedImageModeling(spatial_dims, patch=4, normalize_targets=False)
    assert torch.equal(raw_task(x, generator=0)[1].target, x)


@pytest.mark.parametrize("spatial_dims", DIMS)
def test_the_masked_loss_ignores_unmasked_voxels_of_the_prediction(spatial_dims: int) -> None:
    task = MaskedImageModeling(spatial_dims, patch=4)
    x = image(spatial_dims, size=16)
    _, targets = task(x, generator=0)
    prediction = torch.randn_like(x)
    changed = torch.where(targets.weight.bool(), prediction, prediction + 100)
    assert torch.equal(task.loss(prediction, targets), task.loss(changed, targets))
    masked = targets.weight.bool().expand_as(x)
    expected = ((prediction - targets.target)[masked] ** 2).mean()
    assert torch.allclose(task.loss(prediction, targets), expected)


def test_the_neighbour_baseline_is_the_mean_of_the_visible_patches_around() -> None:
    task = MaskedImageModeling(2, patch=2, mask_ratio=0.25, normalize_targets=False)
    x = torch.arange(16.0).reshape(1, 1, 4, 4)  # patch means [[2.5, 4.5], [10.5, 12.5]]
    masked = torch.tensor([[[True, False], [False, False]]])
    _, targets = task.apply_params(x, p3.tasks.MaskedImageModelingParams(masked))
    assert torch.allclose(targets.baseline[0, 0, :2, :2], torch.full((2, 2), (4.5 + 10.5 + 12.5) / 3))
    assert torch.equal(targets.baseline[0, 0, 2:], x[0, 0, 2:])


def test_patch_mask_repeats_each_patch_over_its_voxels() -> None:
    masked = torch.tensor([[[True, False], [False, True]]])
    voxels = patch_mask(masked, 2, (5, 4))[0, 0]
    assert voxels.shape == (5, 4)
    assert (
        voxels[:2, :2].all() and voxels[2:4, 2:4].all() and not voxels[:2, 2:].any() and not voxels[4].any()
    )


# --- both -------------------------------------------------------------------------------------

TASKS = [lambda d: ModelsGenesis(d), lambda d: MaskedImageModeling(d, patch=8)]


@pytest.mark.parametrize("spatial_dims", DIMS)
@pytest.mark.parametrize("make", TASKS)
def test_seeded_calls_repeat_and_apply_params_rebuilds_them(spatial_dims: int, make: object) -> None:
    task: DenseTask = make(spatial_dims)  # type: ignore[operator]
    x = image(spatial_dims)
    views, targets = task(x, generator=5)
    again, _ = task(x, generator=5)
    rebuilt, rebuilt_targets = task.apply_params(x, task.randomize(x, generator=5))
    other, _ = task(x, generator=6)
    assert torch.equal(views, again) and torch.equal(views, rebuilt) and not torch.equal(views, other)
    assert torch.equal(targets.target, rebuilt_targets.target)


@pytest.mark.parametrize("spatial_dims", DIMS)
@pytest.mark.parametrize("make", TASKS)
def test_the_score_is_one_for_the_target_and_zero_for_the_baseline(spatial_dims: int, make: object) -> None:
    task: DenseTask = make(spatial_dims)  # type: ignore[operator]
    _, targets = task(image(spatial_dims), generator=0)
    assert isinstance(targets, Reconstruction)
    assert float(task.accuracy(targets.target, targets)) == pytest.approx(1.0)
    assert float(task.accuracy(targets.baseline, targets)) == pytest.approx(0.0, abs=1e-6)
    assert float(task.loss(targets.target, targets)) == pytest.approx(0.0, abs=1e-10)
    assert torch.allclose(
        task.loss(targets.baseline, targets), weighted_mse(targets.baseline, targets.target, targets.weight)
    )


@pytest.mark.parametrize("spatial_dims", DIMS)
@pytest.mark.parametrize("make", TASKS)
def test_bf16_input_gives_bf16_views_close_to_fp32(spatial_dims: int, make: object) -> None:
    task: DenseTask = make(spatial_dims)  # type: ignore[operator]
    x = image(spatial_dims)
    views, _ = task(x, generator=0)
    low, _ = task(x.bfloat16(), generator=0)
    assert low.dtype == torch.bfloat16
    close = (low.float() - views).abs() <= 0.02 * (x.max() - x.min())
    assert float(close.float().mean()) > 0.99  # bf16 rounding (the local shuffle may sort ties apart)


@pytest.mark.parametrize("spatial_dims", DIMS)
@pytest.mark.parametrize("make", TASKS)
def test_a_pretext_model_restores_the_views_size_and_trains(spatial_dims: int, make: object) -> None:
    task: DenseTask = make(spatial_dims)  # type: ignore[operator]
    torch.manual_seed(0)
    model = p3.PretextModel(p3.models.UNetEncoder(spatial_dims, widths=(8, 16, 32)), task)
    # structured images: uniform noise would leave nothing to infer inside a masked patch
    x = p3.data.toy_images(4, spatial_dims, 32, generator=torch.Generator().manual_seed(0))
    views, targets = task(x, generator=0)
    out = model(views)
    assert out.shape == x.shape
    assert not any(k.startswith("head.encoder") for k in model.state_dict())  # the encoder once
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    with torch.no_grad():
        first = float(task.loss(model(views), targets))
    for _ in range(40):
        optimiser.zero_grad()
        task.loss(model(views), targets).backward()
        optimiser.step()
    with torch.no_grad():
        assert float(task.loss(model(views), targets)) < 0.8 * first


@pytest.mark.parametrize("make", TASKS)
def test_a_dense_task_refuses_a_width_head_and_single_samples(make: object) -> None:
    task: DenseTask = make(2)  # type: ignore[operator]
    with pytest.raises(TypeError, match="DenseHead"):
        task.make_head(32)
    with pytest.raises(ValueError, match="on a batch"):
        task.single(torch.rand(1, 32, 32))


def test_bad_arguments_name_themselves() -> None:
    with pytest.raises(ValueError, match="mask_ratio"):
        MaskedImageModeling(2, mask_ratio=0.0)
    with pytest.raises(ValueError, match="mask_ratio"):
        MaskedImageModeling(2, mask_ratio=1.0)
    with pytest.raises(ValueError, match="fill"):
        MaskedImageModeling(2, fill="token")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="normalize_targets"):
        MaskedImageModeling(2, normalize_targets="no")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="masks no patch"):
        MaskedImageModeling(2, patch=16)(torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match="paint_p"):
        ModelsGenesis(3, paint_p=1.5)
    with pytest.raises(ValueError, match=">= 8"):
        ModelsGenesis(2)(torch.rand(2, 1, 6, 6))
    task = MaskedImageModeling(2, patch=4)
    x = torch.rand(2, 1, 16, 16)
    with pytest.raises(ValueError, match=r"params\.masked"):
        task.apply_params(x, p3.tasks.MaskedImageModelingParams(torch.ones(2, 3, 3, dtype=torch.bool)))
    genesis = ModelsGenesis(2)
    params = genesis.randomize(x, generator=0)
    bad = dataclasses.replace(params, block_sizes=params.block_sizes + 5)
    with pytest.raises(ValueError, match="inside their cells"):
        genesis.apply_params(x, bad)
