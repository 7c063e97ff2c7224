"""The downstream recipes: sampling, evaluation, tumour detection metrics, encoder checks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import pretext3d as p3
from pretext3d.experiments import (
    SegmentationRecipe,
)


class _Fixed(nn.Module):
    """Outputs one-hot logits of fixed label maps, the next ``len(x)`` volumes per call."""

    def __init__(self, maps: torch.Tensor) -> None:
        super().__init__()
        self.maps, self.done = maps, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = nn.functional.one_hot(self.maps[self.done : self.done + len(x)], 3).permute(0, 4, 1, 2, 3)
        self.done += len(x)
        return out.float()


def test_segmentation_recipe_samples_foreground_and_evaluates() -> None:
    images, labels = p3.data.ct_phantom_batch(4, 32, seed=1)
    recipe = SegmentationRecipe(crop=16, foreground_oversampling=1.0)
    gen = torch.Generator().manual_seed(0)
    x, y = recipe.sample(images, labels, [0, 1, 2, 3], 6, gen)
    assert x.shape == (6, 1, 16, 16, 16) and y.shape == (6, 16, 16, 16)
    assert all((yi > 0).any() for yi in y)  # every crop holds pancreas
    model, _ = recipe.build(1, None)
    metrics = recipe.evaluate(model, images[:2, :, :30, :30, :30], labels[:2, :30, :30, :30])  # padded to 32
    assert set(metrics) == {
        "pancreas_dice",
        "tumour_dice",
        "tumour_sensitivity",
        "tumour_specificity",
        "pooled_mean_dice_3class",
    }
    # whole volumes go through in batches; each is padded on its own, so the batch size does not matter
    odd = images[:, :, :30, :30, :30]
    assert torch.equal(recipe.predict(model, odd, batch=1), recipe.predict(model, odd, batch=3))
    with pytest.raises(ValueError, match="crop must be a multiple of 4"):
        SegmentationRecipe(crop=18)


def test_tumour_metrics_count_false_positives_by_detection() -> None:
    target = torch.zeros(4, 8, 8, 8, dtype=torch.long)
    target[:, 2:6, 2:6, 2:6] = 1
    target[0, 3:5, 3:5, 3:5] = 2  # cases 0 and 1 have a tumour, 2 and 3 do not
    target[1, 2:4, 2:4, 2:4] = 2
    pred = target.clone()
    pred[1][pred[1] == 2] = 1  # tumour of case 1 missed
    pred[2, 3:5, 3:5, 3:5] = 2  # false-positive tumour in case 2
    summary, cases = SegmentationRecipe(widths=(4,)).score_cases(
        _Fixed(pred), target[:, None].float(), target
    )
    assert cases["tumour_dice"][0] == 1.0 and cases["tumour_dice"][1] == 0.0
    assert math.isnan(cases["tumour_dice"][2])  # Dice cannot see the false positive ...
    assert summary["tumour_dice"] == pytest.approx(0.5)
    assert summary["tumour_sensitivity"] == 0.5 and summary["tumour_specificity"] == 0.5  # ... detection does
    assert cases["tumour_present"] == [1.0, 1.0, 0.0, 0.0]
    assert cases["tumour_predicted"] == [1.0, 0.0, 1.0, 0.0]
    assert cases["pancreas_dice"] == [1.0] * 4  # the whole region {1, 2} is right in every case
