"""The one encoder contract, for every registered encoder in 2D and 3D."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

import pretext3d as p3
from pretext3d.models import Encoder
from pretext3d.registry import ENCODERS

SMALL: dict[str, dict[str, Any]] = {
    "unet": {"widths": (4, 8, 16)},
    "densenet": {"growth_rate": 4, "block_config": (1, 1), "init_features": 8},
    "conv": {"widths": (4, 8)},
}


def build(name: str, spatial_dims: int, **options: Any) -> Encoder:
    encoder = ENCODERS.get(name)(spatial_dims=spatial_dims, in_channels=2, **{**SMALL[name], **options})
    assert isinstance(encoder, Encoder)
    return encoder


def test_every_registered_encoder_is_covered() -> None:
    assert set(ENCODERS) == set(SMALL)


@pytest.mark.parametrize("name", list(SMALL))
def test_features_pooled_forward_and_intermediates(name: str, spatial_dims: int) -> None:
    encoder = build(name, spatial_dims).eval()
    assert isinstance(type(encoder).min_size, property) and encoder.min_size >= 1
    assert encoder.spatial_dims == spatial_dims and encoder.in_channels == 2
    size = 16
    x = torch.randn(2, 2, *[size] * spatial_dims)
    features = encoder.forward_features(x)
    assert features.shape[:2] == (2, encoder.num_features) and features.dim() == spatial_dims + 2
    assert torch.allclose(encoder(x), features.flatten(2).mean(-1))
    stages = encoder.forward_intermediates(x)
    assert len(stages) == len(encoder.feature_info)
    for stage, info in zip(stages, encoder.feature_info, strict=True):
        assert stage.shape[1] == info["num_chs"]
        assert all(abs(s - size / info["reduction"]) < 1 for s in stage.shape[2:]), (info, stage.shape)
        assert encoder.get_submodule(info["module"]) is not None
    assert torch.equal(stages[-1], features)
    # the config rebuilds the same architecture through the registry
    rebuilt = ENCODERS.get(name)(**encoder.config)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in encoder.state_dict().items()
    }
    # and any of them sits under a pretext head
    task = p3.tasks.Rotation(spatial_dims)
    assert p3.PretextModel(encoder, task)(task(x)[0]).shape == (2, task.num_classes)


@pytest.mark.parametrize("name", list(SMALL))
def test_norm_dropout_and_size_errors(name: str, spatial_dims: int) -> None:
    encoder = build(name, spatial_dims, norm="group", dropout=0.1)
    assert encoder.config["norm"] == "group" and encoder.config["dropout"] == 0.1
    assert any(isinstance(m, torch.nn.GroupNorm) for m in encoder.modules())
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in encoder.modules())
    with pytest.raises(ValueError, match=r"norm must be one of \['batch', 'instance', 'group'\]"):
        build(name, spatial_dims, norm="layer")
    with pytest.raises(ValueError, match=r"dropout must lie in \[0, 1\)"):
        build(name, spatial_dims, dropout=1.0)
    with pytest.raises(ValueError, match=r"x must have shape \(N, 2, \*spatial\)"):
        encoder(torch.randn(1, 3, *[16] * spatial_dims))
    if encoder.min_size > 1:
        too_small = encoder.min_size - 1
        with pytest.raises(ValueError, match=f"every spatial size must be at least {encoder.min_size}"):
            encoder(torch.randn(1, 2, *[too_small] * spatial_dims))


def test_densenet121_is_a_class_with_torchvisions_count() -> None:
    model = p3.models.DenseNet121()
    assert isinstance(model, p3.models.DenseNet)
    assert sum(p.numel() for p in model.parameters()) == 6_958_981
    assert math.isclose(model.encoder.min_size, 32)
