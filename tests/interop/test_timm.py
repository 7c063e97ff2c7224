"""timm and torchvision encoders under the tasks and through fine-tuning.

timm imports torchvision, and no torchvision release loads beside the CPU build of torch 2.13.0
that ``make test`` pins; ``make test-interop`` runs this file in its own environment (torch
2.14.1 with torchvision 0.29.1 and timm). Elsewhere it is skipped.
"""

from __future__ import annotations

import pytest
import torch

import pretext3d as p3
from tests.interop.docs_blocks import run_blocks_requiring

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

TASKS = {
    "rotation": lambda: p3.tasks.Rotation(2),
    "jigsaw": lambda: p3.tasks.Jigsaw(2, grid=3, num_permutations=24, jitter=2),
    "rpl": lambda: p3.tasks.RelativePatchLocation(2, grid=3, jitter=2),
    "exemplar": lambda: p3.tasks.Exemplar(2),
    "cpc": lambda: p3.tasks.CPC(2, grid=3, patch=32),
}


@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_trains_a_timm_and_a_torchvision_encoder(name: str) -> None:
    task = TASKS[name]()
    vision = torchvision.models.resnet18(weights=None)
    vision.fc = torch.nn.Identity()  # pooled (B, 512)
    for encoder in (timm.create_model("resnet18", pretrained=False, num_classes=0, in_chans=3), vision):
        model = p3.PretextModel(encoder, task)
        views, targets = task(torch.randn(4, 3, 96, 96), generator=0)
        loss = task.loss(model(views), targets, generator=0)
        loss.backward()
        assert torch.isfinite(loss) and model.num_features == 512


def test_a_wrong_declared_width_names_the_attribute() -> None:
    encoder = timm.create_model("mobilenetv3_small_100", pretrained=False, num_classes=0)  # declares 576
    model = p3.PretextModel(encoder, p3.tasks.Rotation(2))
    with pytest.raises(
        ValueError, match=r"returned 1024 feature channels, but encoder.num_features gave 576"
    ):
        model(torch.randn(2, 3, 64, 64))
    assert p3.PretextModel(encoder, p3.tasks.Rotation(2), num_features=1024)(
        torch.randn(2, 3, 64, 64)
    ).shape == (2, 4)


def test_a_unet_decoder_over_timm_features() -> None:
    features_only = timm.create_model("resnet18", pretrained=False, features_only=True, in_chans=1)
    unet = p3.models.MultiScaleUNet(features_only, out_channels=3)
    assert unet.source == "forward" and unet.feature_reductions == [2, 4, 8, 16, 32]
    assert unet(torch.randn(2, 1, 64, 64)).shape == (2, 3, 64, 64)
    pooled = timm.create_model("resnet18", pretrained=False, num_classes=0, in_chans=1)  # as pretrained
    unet = p3.models.MultiScaleUNet(pooled, out_channels=3)
    assert unet.source == "forward_intermediates" and unet.feature_channels[-1] == 512
    assert unet(torch.randn(2, 1, 64, 64)).shape == (2, 3, 64, 64)


def test_the_timm_blocks_of_the_docs_run() -> None:
    assert run_blocks_requiring("timm") == 1
