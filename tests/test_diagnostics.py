"""Shortcut scores and frozen-feature probes (pretext3d.diagnostics), alone and in the Pretrainer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import pretext3d as p3
from pretext3d.diagnostics import FeatureProbe, fit_logistic, shortcut_score, view_statistics
from pretext3d.pretrainer import PretrainConfig, Pretrainer

UNDEFENDED = p3.tasks.NO_DEFENCES


def _bordered(spatial_dims: int, count: int = 32, size: int = 16) -> torch.Tensor:
    """Noise with a bright border at the start of every axis: each cell's position shows."""
    x = torch.rand(count, 1, *(size,) * spatial_dims, generator=torch.Generator().manual_seed(0))
    for axis in range(spatial_dims):
        index = [slice(None)] * (2 + spatial_dims)
        index[2 + axis] = slice(0, 2)
        x[tuple(index)] += 4.0
    return x


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_view_statistics_match_hand_computed_blocks(spatial_dims: int) -> None:
    x = torch.randn(3, 2, *(4,) * spatial_dims)
    stats = view_statistics(x, blocks=2)
    assert stats.shape == (3, 2 * 2 * 2**spatial_dims)
    block = x[0, 1][tuple(slice(2, 4) for _ in range(spatial_dims))]  # the last block of channel 1
    n = 2**spatial_dims
    assert torch.isclose(stats[0, 2 * n + n - 1], block.mean(), atol=1e-6)  # channel 1's means
    assert torch.isclose(stats[0, 3 * n + n - 1], block.std(unbiased=False), atol=1e-5)  # its stds
    # views narrower than the blocks (issue 39: one-voxel tiles): each block repeats the voxels it covers
    small = view_statistics(x[..., :1, :, :] if spatial_dims == 3 else x[..., :1, :], blocks=2)
    assert small.shape == stats.shape and bool((small[:, 2 * 2 * n :] >= 0).all())
    one = view_statistics(torch.full((1, 1, *(1,) * spatial_dims), 5.0), blocks=2)
    assert one.tolist() == [[5.0] * n + [0.0] * n]
    with pytest.raises(ValueError, match="blocks"):
        view_statistics(x, blocks=0)


def test_fit_logistic_separates_and_folds_the_standardisation() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.cat(
        [torch.randn(50, 3, generator=g) * 100 + 1000, torch.randn(50, 3, generator=g) * 100 + 1600]
    )
    y = torch.arange(100) // 50
    assert fit_logistic(x, y, 2)(x).argmax(1).eq(y).float().mean() == 1.0


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_a_bordered_whole_image_jigsaw_is_flagged_and_the_defended_one_is_not(spatial_dims: int) -> None:
    images = _bordered(spatial_dims, size=16 if spatial_dims == 2 else 24)
    whole = p3.tasks.Jigsaw(spatial_dims, grid=2, num_permutations=4, **UNDEFENDED)
    flagged = shortcut_score(whole, images)
    assert flagged.flagged and flagged.chance == 1 / 2**spatial_dims and flagged.score > 0.9
    assert "ABOVE" in str(flagged)
    defended = shortcut_score(p3.tasks.Jigsaw(spatial_dims, grid=2, num_permutations=4), images)
    assert not defended.flagged, defended
    rpl = shortcut_score(
        p3.tasks.RelativePatchLocation(spatial_dims, **UNDEFENDED), _bordered(spatial_dims, size=18)
    )
    assert rpl.chance == 1 / (3**spatial_dims - 1) and rpl.flagged


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_a_larger_crop_gives_the_border_back(spatial_dims: int) -> None:
    # why the grid tasks' crop is not raised for small images (issue 38, docs/tasks/index.md,
    # "Small images"): the nearer the crop comes to the whole image, the better one tile names its cell
    images = _bordered(spatial_dims, size=32 if spatial_dims == 2 else 24)

    def ratio(crop_scale: tuple[float, float] | None) -> float:
        task = p3.tasks.Jigsaw(spatial_dims, grid=2, num_permutations=4, crop_scale=crop_scale)
        report = shortcut_score(task, images)
        return report.score / report.chance

    whole, large, default = ratio(None), ratio((0.7, 1.0)), ratio((0.4, 0.7))
    assert whole > large > default and whole > 2.5 and large > 1.5 > default


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_rotation_of_a_ramp_is_flagged_and_of_noise_is_not(spatial_dims: int) -> None:
    task = p3.tasks.Rotation(spatial_dims)
    noise = torch.rand(32, 1, *(8,) * spatial_dims, generator=torch.Generator().manual_seed(1))
    ramp = noise + torch.linspace(0, 4, 8).view(1, 1, 8, *[1] * (spatial_dims - 1))
    assert shortcut_score(task, ramp).flagged
    assert not shortcut_score(task, noise).flagged


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_embedding_and_predictive_scores_and_state_kept(spatial_dims: int) -> None:
    x = torch.rand(16, 1, *(16,) * spatial_dims, generator=torch.Generator().manual_seed(2))
    exemplar = p3.tasks.Exemplar(spatial_dims)
    counter = int(exemplar.instance_counter)
    report = shortcut_score(exemplar, x, batch_size=8)
    assert report.chance == pytest.approx(1 / 15) and 0 <= report.score <= 1
    assert int(exemplar.instance_counter) == counter and exemplar.training
    cpc = p3.tasks.CPC(spatial_dims, grid=4, patch=4, steps=1, normalize_patches=False)
    # each column of patches has a brightness of its own that grows down the rows: the patch
    # below continues the one above, which a regression on the statistics finds
    columns = 100 * torch.rand(
        16, 1, *[1] * (spatial_dims - 1), 4, generator=torch.Generator().manual_seed(3)
    )
    rows = 0.5 * torch.arange(4.0).view(1, 1, 4, *[1] * (spatial_dims - 1))
    x = x + (columns + rows.repeat_interleave(4, dim=2)).repeat_interleave(4, dim=-1)
    report = shortcut_score(cpc, x, batch_size=8)
    assert report.chance == pytest.approx(1 / (8 * 3 * 4 ** (spatial_dims - 1)))
    assert report.flagged, report
    normalised = shortcut_score(p3.tasks.CPC(spatial_dims, grid=4, patch=4, steps=1), x, batch_size=8)
    assert normalised.score < report.score  # the patch normalisation hides the brightness


def test_shortcut_score_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="images"):
        shortcut_score(p3.tasks.Rotation(2), torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match="spatial axes"):
        shortcut_score(p3.tasks.Rotation(3), torch.rand(8, 1, 8, 8))
    with pytest.raises(TypeError, match="PretextTask"):
        shortcut_score(nn.Identity(), torch.rand(8, 1, 8, 8))  # type: ignore[arg-type]


class _Identity(nn.Module):
    """An 'encoder' whose features are the image itself (so the probe's answer is known)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("method", ["linear", "knn"])
def test_classification_probe_reads_what_the_features_carry(spatial_dims: int, method: str) -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(40) % 2
    images = torch.rand(40, 2, *(4,) * spatial_dims, generator=g)
    images[:, 0] += 3 * labels.view(-1, *[1] * spatial_dims)  # channel 0's mean tells the class
    probe = FeatureProbe(images, labels, method=method, k=3)  # type: ignore[arg-type]
    assert probe(_Identity()) == {"accuracy": 1.0}
    shuffled = FeatureProbe(images, labels[torch.randperm(40, generator=g)], method=method)  # type: ignore[arg-type]
    assert shuffled(_Identity())["accuracy"] < 0.8


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_segmentation_probe_finds_bright_foreground(spatial_dims: int) -> None:
    g = torch.Generator().manual_seed(0)
    labels = (torch.rand(12, *(8,) * spatial_dims, generator=g) < 0.2).long()
    images = labels.unsqueeze(1).float() * 3 + 0.1 * torch.randn(12, 1, *(8,) * spatial_dims, generator=g)
    probe = FeatureProbe(images, labels, task="segmentation")
    assert probe(_Identity()) == {"patch_dice": 1.0}


def test_probe_refuses_bad_input() -> None:
    images = torch.rand(8, 1, 8, 8)
    with pytest.raises(ValueError, match="labels"):
        FeatureProbe(images, torch.rand(8))
    with pytest.raises(ValueError, match="label maps"):
        FeatureProbe(images, torch.zeros(8, 4, 4, dtype=torch.long), task="segmentation")
    with pytest.raises(ValueError, match="knn"):
        FeatureProbe(images, torch.zeros(8, 8, 8, dtype=torch.long), task="segmentation", method="knn")
    with pytest.raises(ValueError, match="task"):
        FeatureProbe(images, torch.zeros(8, dtype=torch.long), task="detection")  # type: ignore[arg-type]


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_pretrainer_logs_probe_and_shortcuts(tmp_path: Path, spatial_dims: int) -> None:
    kind, size = ("fundus", 32) if spatial_dims == 2 else ("ct", 16)
    data = p3.data.PhantomImages(kind, count=8, size=size)
    if spatial_dims == 2:
        images, labels = p3.data.fundus_phantom_batch(8, size=size, seed=3)
        encoder: nn.Module = p3.models.DenseNetEncoder(
            2, 3, growth_rate=4, block_config=(1, 1), init_features=8
        )
        probe = FeatureProbe(images, labels, every=2)
    else:
        images, labels = p3.data.ct_phantom_batch(8, size=size, seed=3)
        encoder = p3.models.UNetEncoder(3, widths=(4, 8))
        probe = FeatureProbe(images, labels, task="segmentation", every=2)
    lines: list[str] = []
    jigsaw = p3.tasks.Jigsaw(spatial_dims, grid=2, num_permutations=4, **UNDEFENDED)
    config = PretrainConfig(steps=3, batch_size=4, device="cpu", progress=False, shortcut_check=8)
    record = Pretrainer(encoder, jigsaw, data, config, tmp_path / "e.pt", probe=probe, log=lines.append).fit()
    rows = [json.loads(line) for line in (tmp_path / "e.pt.run" / "metrics.jsonl").read_text().splitlines()]
    probed = [r["step"] for r in rows if f"probe/{probe.metric}" in r]
    assert probed == [0, 2, 3]  # the random encoder first, then every 2 steps and at the end
    assert record["probe"]["initial"]["step"] == 0 and record["probe"]["final"]["step"] == 3
    assert record["shortcut"]["jigsaw"]["task"] == "Jigsaw"
    assert any("shortcut score of Jigsaw" in line for line in lines)
    with pytest.raises(TypeError, match="FeatureProbe"):
        Pretrainer(encoder, jigsaw, data, config, tmp_path / "f.pt", probe=object())  # type: ignore[arg-type]


def test_issue_39_a_probe_refuses_unlabelled_images_and_nan_by_name() -> None:
    images, labels = torch.rand(8, 1, 8, 8), torch.tensor([0, 1] * 4)
    with pytest.raises(ValueError, match=r"labels must be class numbers >= 0, got -1"):
        p3.diagnostics.FeatureProbe(images, torch.tensor([-1, 0, 1, 0, 1, 0, 1, 0]))
    images[3, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="images hold NaN or inf"):
        p3.diagnostics.FeatureProbe(images, labels)
