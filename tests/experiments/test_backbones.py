"""Any encoder through the data-efficiency runner and the command line (MONAI's ResNet here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import pretext3d as p3
from pretext3d.cli import main
from pretext3d.experiments import GradingRecipe, PooledClassifier, SegmentationRecipe
from pretext3d.finetune import TrainConfig
from pretext3d.models import MultiScaleUNet

pytest.importorskip("monai")
OPTIONS = {"widen_factor": 0.125}  # a small ResNet-10


def _resnet_file(path: Path, spatial_dims: int, in_channels: int) -> Path:
    encoder = p3.create_encoder(
        "monai/resnet10", spatial_dims=spatial_dims, in_channels=in_channels, **OPTIONS
    )
    p3.models.save_encoder(encoder, path)
    return path


def _grid(
    recipe: Any, images: torch.Tensor, labels: torch.Tensor, file: Path, out: Path, batch_size: int
) -> Any:
    """One fraction, one split seed, one short epoch: scratch beside the pretrained ``file``."""
    train = TrainConfig(epochs=1, steps_per_epoch=1, batch_size=batch_size)
    config = p3.experiments.DataEfficiencyConfig(fractions=(1.0,), split_seeds=(0,), train=train)
    methods = {"scratch": None, "resnet": [str(file)]}
    return p3.experiments.run_data_efficiency(recipe, images, labels, methods, config, out, progress=False)


def test_a_segmentation_grid_fine_tunes_a_monai_resnet_beside_scratch(tmp_path: Path) -> None:
    recipe = SegmentationRecipe(backbone="monai/resnet10", backbone_options=OPTIONS, crop=16)
    file = _resnet_file(tmp_path / "resnet.pt", 3, 1)
    recipe.check_encoder(1, file)
    pretrained, encoder = recipe.build(1, file)
    scratch, _ = recipe.build(1, None)
    assert isinstance(pretrained, MultiScaleUNet) and pretrained.source == "stages"
    assert [p.shape for p in pretrained.parameters()] == [p.shape for p in scratch.parameters()]
    loaded = p3.models.load_encoder(file).state_dict()
    assert all(torch.equal(v, loaded[k]) for k, v in encoder.state_dict().items())  # the file's weights
    images, labels = p3.data.ct_phantom_batch(12, 16)
    rows = _grid(recipe, images, labels, file, tmp_path / "g", batch_size=2)
    assert [r["method"] for r in rows] == ["scratch", "resnet"]
    assert all(0 <= r["test"]["pancreas_dice"] <= 1 for r in rows)


def test_a_grading_grid_fits_a_linear_head_on_a_monai_resnets_pooled_features(tmp_path: Path) -> None:
    recipe = GradingRecipe(backbone="monai/resnet10", backbone_options=OPTIONS)
    file = _resnet_file(tmp_path / "resnet2d.pt", 2, 3)
    model, encoder = recipe.build(3, file)
    assert isinstance(model, PooledClassifier) and model.classifier.in_features == 64
    images, grades = p3.data.fundus_phantom_batch(24, 32)
    assert recipe.fit_head(model, encoder, images, grades, list(range(12)))  # the LP step works on it
    rows = _grid(recipe, images, grades, file, tmp_path / "g", batch_size=4)
    assert [(r["method"], r["head_fitted"]) for r in rows] == [("scratch", False), ("resnet", True)]


def test_a_mismatched_encoder_file_says_how_to_pair_it(tmp_path: Path) -> None:
    file = _resnet_file(tmp_path / "resnet.pt", 3, 1)
    with pytest.raises(
        ValueError, match=r"holds a 'monai/resnet10' encoder.*set \[segmentation\] backbone = "
    ):
        SegmentationRecipe().check_encoder(1, file)
    other = SegmentationRecipe(backbone="monai/resnet10", backbone_options={"widen_factor": 0.25})
    with pytest.raises(ValueError, match=r"built with options \{'widen_factor': 0.125\}.*same architecture"):
        other.check_encoder(1, file)


def test_the_command_line_fine_tunes_a_monai_encoder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = _resnet_file(tmp_path / "resnet.pt", 3, 1)
    args = [
        "data-efficiency", "--defaults", "--set", f'output_dir="{tmp_path / "de"}"',
        "--set", "data.count=12", "--set", "data.size=16", "--set", "experiment.fractions=[1.0]",
        "--set", "experiment.split_seeds=[0]", "--set", "experiment.train.epochs=1",
        "--set", "experiment.train.steps_per_epoch=1", "--set", "experiment.train.batch_size=2",
        "--set", "experiment.baseline_train.epochs=1", "--set", "experiment.baseline_train.steps_per_epoch=1",
        "--set", "experiment.baseline_train.batch_size=2", "--set", "segmentation.crop=16",
        "--set", f'methods.mine="{file}"',
    ]  # fmt: skip
    assert main(args) == 2  # the library's U-Net cannot take it: the message says what to set
    assert "set [segmentation] backbone = 'monai/resnet10'" in capsys.readouterr().err
    backbone = [
        "--set",
        'segmentation.backbone="monai/resnet10"',
        "--set",
        "segmentation.backbone_options={widen_factor = 0.125}",
    ]
    assert main([*args, *backbone]) == 0, capsys.readouterr().err


def test_decoder_options_name_the_stages_of_an_encoder_whose_maps_are_not_found(
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # the segmentation recipe is 3D (a 2D encoder's stages: tests/models/test_multiscale.py)
    monkeypatch.setattr(p3.registry.ENCODERS, "_entries", dict(p3.registry.ENCODERS._entries))

    @p3.registry.register_encoder("pooled-stack")
    def pooled_stack(spatial_dims: int = 3, in_channels: int = 1) -> torch.nn.Module:
        nn = torch.nn
        conv, pool = (nn.Conv3d, nn.MaxPool3d) if spatial_dims == 3 else (nn.Conv2d, nn.MaxPool2d)
        average = nn.AdaptiveAvgPool3d(1) if spatial_dims == 3 else nn.AdaptiveAvgPool2d(1)
        return nn.Sequential(  # returns pooled features: no maps to find by itself
            conv(in_channels, 8, 3, padding=1), nn.ReLU(), pool(2),
            conv(8, 16, 3, padding=1), nn.ReLU(), pool(2),
            conv(16, 32, 3, padding=1), nn.ReLU(), average, nn.Flatten(),
        )  # fmt: skip

    with pytest.raises(ValueError, match=r"cannot find multi-scale features.*Pass stages=\[\.\.\.\]"):
        SegmentationRecipe(backbone="pooled-stack", crop=16).build(1, None)
    recipe = SegmentationRecipe(backbone="pooled-stack", crop=16, decoder_options={"stages": ["1", "4", "7"]})
    model, _ = recipe.build(1, None)
    assert isinstance(model, MultiScaleUNet) and model.feature_channels == [8, 16, 32]
    assert model(torch.randn(1, 1, 16, 16, 16)).shape == (1, 3, 16, 16, 16)
    with pytest.raises(
        ValueError, match=r"unknown key 'stage' in \[decoder_options\].*did you mean 'stages'"
    ):
        SegmentationRecipe(backbone="pooled-stack", decoder_options={"stage": ["1"]})
    with pytest.raises(ValueError, match=r"must not set 'out_channels': it follows num_classes"):
        SegmentationRecipe(backbone="pooled-stack", decoder_options={"out_channels": 4})
    with pytest.raises(
        ValueError,
        match="decoder_options configure the MultiScaleUNet decoder of a backbone or of load_decoder",
    ):
        SegmentationRecipe(decoder_options={"stages": ["1"]})
