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


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_flip_moves_images_and_labels_together_along_spatial_axes_only(spatial_dims: int) -> None:
    from pretext3d.experiments.recipes import _flip

    gen = torch.Generator().manual_seed(0)
    first = torch.randn(16, 1, *(4,) * spatial_dims, generator=gen)
    x = torch.cat([first, 2 * first], 1)  # channel 1 = 2 x channel 0: a channel flip would show
    y = (first[:, 0] > 0).long()
    fx, fy = _flip(x.clone(), y.clone(), torch.Generator().manual_seed(1), spatial_dims)
    assert torch.equal(fx[:, 1], 2 * fx[:, 0])  # channels kept in order
    assert torch.equal(fy, (fx[:, 0] > 0).long())  # every label still belongs to its image
    axes = [tuple(2 + a for a in range(spatial_dims) if (k >> a) & 1) for k in range(2**spatial_dims)]
    found = set()
    for i in range(16):  # each sample is its image flipped along some set of spatial axes
        match = [a for a in axes if torch.equal(fx[i], x[i].flip([d - 1 for d in a]))]
        assert match
        found.add(match[0])
    assert len(found) > 2  # and the flips vary (every axis is drawn)


def _grading_setup() -> tuple[p3.experiments.GradingRecipe, torch.Tensor, torch.Tensor, nn.Module]:
    """A small grading recipe, 96 phantom images, and an encoder trained with labels on others."""
    recipe = p3.experiments.GradingRecipe(growth_rate=4, block_config=(2, 2), init_features=8)
    images, grades = p3.data.fundus_phantom_batch(96, size=32, seed=0)  # SYNTHETIC
    others, other_grades = p3.data.fundus_phantom_batch(128, size=32, seed=1)
    torch.manual_seed(0)
    teacher, _ = recipe.build(3, None)
    config = p3.finetune.TrainConfig(epochs=1, steps_per_epoch=60, batch_size=16, lr=3e-3)
    p3.finetune.Trainer(
        teacher, recipe.loss(), lambda g: recipe.sample(others, other_grades, list(range(128)), 16, g), config
    ).fit()
    return recipe, images, grades, teacher.encoder


def test_grading_warm_up_learns_during_the_frozen_epochs_once_the_head_is_fitted() -> None:
    recipe, images, grades, pretrained = _grading_setup()
    train, val = list(range(16)), list(range(32, 96))

    def run(fit: bool) -> list[float]:
        torch.manual_seed(1)
        model, encoder = recipe.build(3, None)
        encoder.load_state_dict(pretrained.state_dict())
        if fit:
            assert recipe.fit_head(model, encoder, images, grades, train)
        config = p3.finetune.TrainConfig(epochs=2, steps_per_epoch=10, batch_size=8, freeze_encoder_epochs=2)
        trainer = p3.finetune.Trainer(
            model, recipe.loss(), lambda g: recipe.sample(images, grades, train, 8, g), config,
            encoder=encoder, validate=lambda m: recipe.evaluate(m, images[val], grades[val])["qwk"],
        )  # fmt: skip
        before = recipe.evaluate(model, images[val], grades[val])["qwk"]
        return [before] + [h["val"] for h in trainer.fit()]

    random_head, fitted = run(False), run(True)
    # a random head on frozen features barely moves in 20 steps; the fitted one reads the grade
    # out of the features from the start and its validation kappa stays well above
    assert abs(random_head[0]) < 0.1 and max(random_head) < 0.3
    assert fitted[0] > 0.4 and min(fitted[1:]) > max(random_head) + 0.2


def test_ordinal_head_fit_is_one_logistic_regression_per_threshold() -> None:
    _, images, grades, pretrained = _grading_setup()
    ordinal = p3.experiments.GradingRecipe(
        growth_rate=4, block_config=(2, 2), init_features=8, encoding="ordinal"
    )
    model, encoder = ordinal.build(3, None)
    encoder.load_state_dict(pretrained.state_dict())
    train = list(range(48))
    assert ordinal.fit_head(model, encoder, images, grades, train)
    assert encoder.training  # its mode restored
    logits = model.eval()(images[train]).detach()
    assert logits.shape == (48, 4)
    for k in range(4):  # each output separates grade > k on the training cases at least as chance does,
        above = grades[train] > k  # and better where both sides hold a quarter of the cases (with one
        agree = float(((logits[:, k] > 0) == above).float().mean())  # thread, the 3-of-48 threshold
        majority = max(float(above.float().mean()), 1 - float(above.float().mean()))  # ties its majority)
        assert agree >= majority and (agree > majority or majority > 0.75), (k, agree, majority)
    # the segmentation recipe's decoder is not a linear readout: nothing is fitted
    seg = SegmentationRecipe(widths=(4, 8), crop=16)
    seg_model, seg_encoder = seg.build(1, None)
    before = [p.clone() for p in seg_model.parameters()]
    ct, labels = p3.data.ct_phantom_batch(2, 16, seed=0)
    assert not seg.fit_head(seg_model, seg_encoder, ct, labels, [0, 1])
    assert all(torch.equal(a, b) for a, b in zip(before, seg_model.parameters(), strict=True))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_batch_norm_adaptation_takes_the_statistics_of_the_batches(spatial_dims: int) -> None:
    from pretext3d.experiments.recipes import _adapt_batch_norm

    norm = (nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d)(3, momentum=0.3)
    net = nn.Sequential(norm).eval()
    x = torch.randn(6, 3, *(5,) * spatial_dims) * 4 + 2
    _adapt_batch_norm(net, [x[:3], x[3:]], "cpu")
    dims = [0, *range(2, 2 + spatial_dims)]
    halves = [x[:3], x[3:]]  # a cumulative average of the two batches' statistics
    expected_mean = sum(h.mean(dims) for h in halves) / 2
    expected_var = sum(h.var(dims, unbiased=True) for h in halves) / 2
    torch.testing.assert_close(norm.running_mean, expected_mean)
    torch.testing.assert_close(norm.running_var, expected_var)
    assert norm.momentum == 0.3 and not net.training  # settings and mode restored


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_label_maps_are_the_argmax_over_classes_in_either_memory_format(spatial_dims: int) -> None:
    from pretext3d.experiments.recipes import _label_map

    logits = torch.randn(3, 4, *(6,) * spatial_dims, generator=torch.Generator().manual_seed(0))
    logits[:, 2] = logits[:, 1]  # ties go to the first class, as argmax's
    layout = torch.channels_last_3d if spatial_dims == 3 else torch.channels_last
    for x in (logits, logits.to(memory_format=layout)):
        assert torch.equal(_label_map(x), logits.argmax(1))


def test_issue_39_fit_head_without_training_cases_is_named() -> None:
    recipe = p3.experiments.GradingRecipe(growth_rate=4, block_config=(1, 1), init_features=8)
    model, encoder = recipe.build(3, None)
    with pytest.raises(ValueError, match="indices names no training case"):
        recipe.fit_head(model, encoder, torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 3]), [])
