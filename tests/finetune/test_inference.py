"""Sliding-window inference: window placement, Gaussian weights, blending, against MONAI."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from pretext3d.experiments import SegmentationRecipe
from pretext3d.finetune import gaussian_weights, sliding_window_inference, window_starts


def _context_model(x: Tensor) -> Tensor:
    """Logits that depend on the whole window (its mean and sd), so blending weights matter."""
    axes = tuple(range(2, x.ndim))
    return torch.cat([x + x.mean(dim=axes, keepdim=True), x * x.std(dim=axes, keepdim=True)], 1)


@pytest.mark.parametrize(("size", "window", "overlap", "expected"), [
    (10, 4, 0.5, [0, 2, 4, 6]),
    (11, 4, 0.5, [0, 2, 4, 6, 7]),  # the last window ends exactly at the border
    (10, 4, 0.0, [0, 4, 6]),
    (10, 4, 0.9, list(range(7))),  # the stride never drops below 1
    (4, 4, 0.5, [0]),
    (3, 4, 0.5, [0]),  # smaller than a window: one (padded) window
])  # fmt: skip
def test_window_starts(size: int, window: int, overlap: float, expected: list[int]) -> None:
    assert window_starts(size, window, overlap) == expected


def test_gaussian_weights_follow_the_formula() -> None:
    w = gaussian_weights((5, 8), sigma_scale=0.25, dtype=torch.float64)
    for i in range(5):
        for j in range(8):
            ref = math.exp(-((i - 2) ** 2) / (2 * 1.25**2)) * math.exp(-((j - 3.5) ** 2) / (2 * 2.0**2))
            assert w[i, j].item() == pytest.approx(max(ref, float(w.min())), rel=1e-12)
    assert w[2].argmax() in (3, 4) and w.max() <= 1
    narrow = gaussian_weights((33,), sigma_scale=0.01)
    assert narrow.min().item() == pytest.approx(1e-3)  # clamped: no voxel of a window is ignored


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_a_pointwise_model_is_reproduced_exactly(spatial_dims: int) -> None:
    """Blending normalises the weights: a model acting voxel by voxel gives its own output."""
    x = torch.randn(2, 1, *([13] * spatial_dims))
    out = sliding_window_inference(lambda t: torch.cat([2 * t, -t], 1), x, 8, overlap=0.5)
    torch.testing.assert_close(out, torch.cat([2 * x, -x], 1))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_a_window_as_large_as_the_image_is_one_forward_pass(spatial_dims: int) -> None:
    x = torch.randn(2, 1, *([8] * spatial_dims))
    out = sliding_window_inference(_context_model, x, 8)
    torch.testing.assert_close(out, _context_model(x))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_small_images_are_padded_with_their_minimum(spatial_dims: int) -> None:
    x = torch.rand(1, 1, *([5] * spatial_dims)) + 1
    seen: list[Tensor] = []

    def model(t: Tensor) -> Tensor:
        seen.append(t)
        return t

    out = sliding_window_inference(model, x, 8)
    assert out.shape == x.shape and seen[0].shape[2:] == (8,) * spatial_dims
    assert seen[0][(..., *([slice(5, None)] * spatial_dims))].eq(x.min()).all()


@pytest.mark.parametrize("weighting", ["gaussian", "constant"])
@pytest.mark.parametrize("overlap", [0.25, 0.5, 0.7])
def test_agrees_with_monai(weighting: str, overlap: float) -> None:
    from monai.inferers import sliding_window_inference as monai_swi

    torch.manual_seed(0)
    x = torch.randn(2, 1, 37, 29, 41)
    ours = sliding_window_inference(
        _context_model,
        x,
        (16, 20, 24),
        overlap=overlap,
        weighting=weighting,
        batch_size=3,  # type: ignore[arg-type]
    )
    theirs = monai_swi(x, (16, 20, 24), 4, _context_model, overlap=overlap, mode=weighting)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_the_result_does_not_depend_on_the_batch() -> None:
    x = torch.randn(3, 1, 20, 20, 20)
    whole = sliding_window_inference(_context_model, x, 8, batch_size=1)
    torch.testing.assert_close(sliding_window_inference(_context_model, x, 8, batch_size=7), whole)
    torch.testing.assert_close(sliding_window_inference(_context_model, x[1:2], 8), whole[1:2])


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"window": (8, 8)}, "window must be an int >= 1 or 3 of them"),
    ({"window": 0}, "window must be an int >= 1"),
    ({"overlap": 1.0}, "overlap"),
    ({"weighting": "cosine"}, "weighting"),
    ({"batch_size": 0}, "batch_size"),
])  # fmt: skip
def test_bad_arguments_are_named(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"window": 8, **kwargs}
    with pytest.raises(ValueError, match=message):
        sliding_window_inference(_context_model, torch.zeros(1, 1, 8, 8, 8), **args)  # type: ignore[arg-type]


def test_the_segmentation_recipe_evaluates_by_sliding_windows() -> None:
    torch.manual_seed(0)
    recipe = SegmentationRecipe(widths=(4, 8), crop=8, inference_window=8)
    model, _ = recipe.build(1, None)
    images = torch.randn(2, 1, 12, 12, 12)
    expected = sliding_window_inference(model.eval(), images, 8).argmax(1)
    assert torch.equal(recipe.predict(model, images), expected)
    with pytest.raises(ValueError, match="inference_window must be a multiple of 2"):
        SegmentationRecipe(widths=(4, 8), inference_window=7)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_under_bf16_autocast_windows_run_in_bf16_and_blend_in_fp32(spatial_dims: int) -> None:
    """What fine-tuning's validation does in bf16: the network in bf16, the blending in fp32."""
    conv = (torch.nn.Conv2d if spatial_dims == 2 else torch.nn.Conv3d)(1, 2, 3, padding=1)
    seen: list[torch.dtype] = []

    def model(x: Tensor) -> Tensor:
        out: Tensor = conv(x)
        seen.append(out.dtype)
        return out

    x = torch.randn(1, 1, *([12] * spatial_dims))
    with torch.no_grad():
        reference = sliding_window_inference(model, x, 8)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = sliding_window_inference(model, x, 8)
    assert seen[0] == torch.float32 and seen[-1] == torch.bfloat16 and low.dtype == torch.float32
    torch.testing.assert_close(low, reference, atol=0.05, rtol=0.02)  # bf16's 8-bit mantissa
    assert not torch.equal(low, reference)
