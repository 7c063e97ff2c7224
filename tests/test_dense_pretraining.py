"""Dense tasks through the pretrainer, the encoder file's decoder, and fine-tuning that keeps it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import pretext3d as p3
from pretext3d.data import PhantomImages
from pretext3d.diagnostics import chance_level, pretext_warning, shortcut_score
from pretext3d.experiments import SegmentationRecipe
from pretext3d.models import DenseHead, MultiScaleUNet, UNetEncoder, encoder_info, load_decoder, save_encoder
from pretext3d.pretrainer import PretrainConfig, Pretrainer
from pretext3d.tasks import MaskedImageModeling, ModelsGenesis, Rotation
from pretext3d.training import TaskSpec

RUN = {"steps": 4, "batch_size": 4, "crop": 16, "log_every": 1, "eval_every": 2, "checkpoint_every": 2,
       "progress": False, "device": "cpu", "shortcut_check": 8}  # fmt: skip


def test_a_dense_task_beside_a_classifier_pretrains_and_keeps_its_decoder(tmp_path: Path) -> None:
    torch.manual_seed(0)
    encoder = UNetEncoder(3, widths=(4, 8, 16))
    tasks = [TaskSpec(task=ModelsGenesis(3)), TaskSpec(task=Rotation(3))]
    trainer = Pretrainer(encoder, tasks, PhantomImages("ct", 12, 24, seed=3), PretrainConfig(**RUN),
                         tmp_path / "enc.pt", held_out=PhantomImages("ct", 16, 24, seed=4),
                         log=lambda line: None)  # fmt: skip
    record = trainer.fit()
    assert record["decoder"] == "genesis" and record["chance"]["genesis"] == 0.0
    assert "genesis" in record["shortcut"] and record["shortcut"]["genesis"]["chance"] == 1.0
    assert record["pretext_accuracies"]["genesis"] <= 1.0
    info = encoder_info(tmp_path / "enc.pt")
    assert info["decoder"] is not None and info["decoder"]["class"] == "DenseHead"
    head = trainer.models["genesis"].head
    assert isinstance(head, DenseHead)
    # fine-tuning with load_decoder: the decoder's stages start from the pretrained weights
    recipe = SegmentationRecipe(widths=(4, 8, 16), crop=16, load_decoder=True)
    model, _ = recipe.build(in_channels=1, encoder_file=tmp_path / "enc.pt")
    assert isinstance(model, MultiScaleUNet)
    pretrained = head.state_dict()
    for key, value in model.state_dict().items():
        if key.startswith("stages."):
            assert torch.equal(value, pretrained[key]), key
    assert model.head.out_channels == 3  # the output convolution starts anew: classes, not intensities
    # without load_decoder the same file fine-tunes the library's U-Net, decoder anew
    plain, _ = SegmentationRecipe(widths=(4, 8, 16), crop=16).build(
        in_channels=1, encoder_file=tmp_path / "enc.pt"
    )
    assert isinstance(plain, p3.models.UNet)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_load_decoder_refuses_a_file_without_one_and_a_decoder_of_another_layout(
    tmp_path: Path, spatial_dims: int
) -> None:
    encoder = UNetEncoder(spatial_dims, widths=(4, 8, 16))
    save_encoder(encoder, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="holds no pretrained decoder"):
        load_decoder(MultiScaleUNet(encoder, 2), tmp_path / "plain.pt")
    save_encoder(encoder, tmp_path / "dense.pt", decoder=DenseHead(encoder))
    assert load_decoder(MultiScaleUNet(encoder, 2), tmp_path / "dense.pt")
    other = MultiScaleUNet(encoder, 2, decoder_widths=[6, 12])
    with pytest.raises(ValueError, match="differ in shape"):
        load_decoder(other, tmp_path / "dense.pt")
    with pytest.raises(TypeError, match="MultiScaleUNet"):
        load_decoder(p3.models.UNet(spatial_dims, 1, 2, widths=(4, 8, 16)), tmp_path / "dense.pt")


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_the_dense_head_decodes_a_densenet_and_a_conv_encoder(spatial_dims: int) -> None:
    for encoder in (
        p3.models.DenseNetEncoder(spatial_dims, 1, growth_rate=4, block_config=(2, 2), init_features=8),
        p3.models.ConvEncoder(spatial_dims, widths=(4, 8)),
    ):
        model = p3.PretextModel(encoder, MaskedImageModeling(spatial_dims, patch=4))
        x = torch.rand(2, 1, *[32] * spatial_dims)
        assert model(x).shape == x.shape
        assert isinstance(model.head, DenseHead) and model.head.feature_channels


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_shortcut_and_warning_of_a_dense_task(spatial_dims: int) -> None:
    images = torch.rand(8, 1, *[16] * spatial_dims)
    weak = ModelsGenesis(spatial_dims, local_p=0.0, nonlinear_p=0.0, paint_p=0.0)  # the view is the image
    report = shortcut_score(weak, images)
    assert report.score == pytest.approx(1.0) and report.flagged  # the identity restores everything
    strong = shortcut_score(MaskedImageModeling(spatial_dims, patch=4), images)
    assert strong.score == pytest.approx(0.0, abs=1e-3) and not strong.flagged  # a patch's mean: no variance
    assert chance_level(weak) == 0.0
    assert "no better than its trivial predictor" in (pretext_warning(weak, -0.1, count=64) or "")
    assert pretext_warning(weak, 0.3, count=64) is None
