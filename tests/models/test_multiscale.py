"""MultiScaleUNet: a U-Net decoder over the multi-scale features of any encoder."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pretext3d as p3
from pretext3d.models import MultiScaleUNet


def _stack(d: int) -> nn.Sequential:
    """A plain encoder whose first convolution halves the resolution (the decoder must add a stage)."""
    conv, pool = (nn.Conv2d, nn.MaxPool2d) if d == 2 else (nn.Conv3d, nn.MaxPool3d)
    return nn.Sequential(
        conv(1, 8, 3, stride=2, padding=1), nn.ReLU(),  # "1": 1/2
        pool(2), conv(8, 16, 3, padding=1), nn.ReLU(),  # "4": 1/4
        pool(2), conv(16, 32, 3, padding=1), nn.ReLU(),  # "7": 1/8
    )  # fmt: skip


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_library_encoder_gives_its_stages_and_trains_end_to_end(spatial_dims: int) -> None:
    encoder = p3.models.UNetEncoder(spatial_dims, widths=(8, 16, 32))
    unet = MultiScaleUNet(encoder, out_channels=3)
    assert unet.source == "forward_intermediates"
    assert unet.feature_channels == [8, 16, 32] and unet.feature_reductions == [1, 2, 4]
    assert not unet.full_resolution  # the finest map is at full resolution already
    # a copy by default: the pretrained encoder is left as it was; copy_encoder=False shares it
    assert unet.encoder is not encoder
    for a, b in zip(unet.encoder.state_dict().values(), encoder.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert MultiScaleUNet(encoder, 3, copy_encoder=False).encoder is encoder
    x = torch.randn(2, 1, *[16] * spatial_dims)
    out = unet(x)
    assert out.shape == (2, 3, *[16] * spatial_dims)
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in unet.encoder.parameters())


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_named_stages_of_any_module_are_hooked(spatial_dims: int) -> None:
    unet = MultiScaleUNet(_stack(spatial_dims), out_channels=2, stages=["1", "4", "7"])
    assert unet.source == "stages" and unet.spatial_dims == spatial_dims and unet.in_channels == 1
    assert unet.feature_channels == [8, 16, 32] and unet.feature_reductions == [2, 4, 8]
    assert unet.full_resolution  # the finest map is at 1/2: a last stage at full resolution
    x = torch.randn(1, 1, *[24] * spatial_dims)  # not a power of two: skips are matched by size
    assert unet(x).shape == (1, 2, *[24] * spatial_dims)
    assert unet._reader.captured == []  # nothing kept between calls
    shared = _stack(spatial_dims)
    unet = MultiScaleUNet(shared, out_channels=2, stages=["1", "4", "7"], copy_encoder=False)
    shared(x)  # the shared encoder used elsewhere: its hooks keep nothing
    assert unet._reader.captured == [] and unet(x).shape == (1, 2, *[24] * spatial_dims)


def test_a_resnets_stages_are_found_by_name() -> None:
    from monai.networks.nets import resnet10

    encoder = resnet10(spatial_dims=3, n_input_channels=1, feed_forward=False, widen_factor=0.25)
    unet = MultiScaleUNet(encoder, out_channels=3)  # before issue 28: "cannot find" without stages
    assert unet.source == "stages" and unet._reader.stage_names == [
        "act",
        "layer1",
        "layer2",
        "layer3",
        "layer4",
    ]
    assert unet.feature_reductions == [1, 2, 4, 8, 16] and not unet.full_resolution  # MONAI's stem: stride 1
    assert unet(torch.randn(1, 1, 32, 32, 32)).shape == (1, 3, 32, 32, 32)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_a_torchvision_style_resnet_is_read_at_its_stem_and_stages(spatial_dims: int) -> None:
    conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d

    class TinyResNet(
        nn.Module
    ):  # torchvision's layout: conv1, bn1, relu, maxpool, layer1-4, a pooled forward
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.relu = conv(1, 4, 3, stride=2, padding=1), nn.ReLU()
            self.layer1, self.layer2 = conv(4, 4, 3, padding=1), conv(4, 8, 3, stride=2, padding=1)
            self.layer3, self.layer4 = (
                conv(8, 16, 3, stride=2, padding=1),
                conv(16, 32, 3, stride=2, padding=1),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.relu(self.conv1(x))
            return self.layer4(self.layer3(self.layer2(self.layer1(x)))).flatten(2).mean(-1)

    unet = MultiScaleUNet(TinyResNet(), out_channels=2)
    assert unet.source == "stages" and unet._reader.stage_names == [
        "relu",
        "layer1",
        "layer2",
        "layer3",
        "layer4",
    ]
    assert unet.feature_channels == [4, 8, 16, 32] and unet.feature_reductions == [
        2,
        4,
        8,
        16,
    ]  # relu = layer1's size
    assert unet(torch.randn(1, 1, *[32] * spatial_dims)).shape == (1, 2, *[32] * spatial_dims)


def test_a_forward_that_returns_feature_maps_is_used() -> None:
    from monai.networks.nets import ResNetFeatures

    encoder = ResNetFeatures("resnet10", pretrained=False, spatial_dims=3, in_channels=1)
    unet = MultiScaleUNet(encoder, out_channels=3)
    assert unet.source == "forward"
    assert unet.feature_channels == [64, 64, 128, 256, 512] and unet.feature_reductions == [2, 4, 8, 16, 32]
    assert unet(torch.randn(2, 1, 64, 64, 64)).shape == (2, 3, 64, 64, 64)


def test_maps_of_equal_resolution_keep_the_deeper_one() -> None:
    unet = MultiScaleUNet(_stack(2), out_channels=2, stages=["0", "1", "4"])  # conv and its ReLU: same size
    assert unet.feature_channels == [8, 16] and unet._reader.keep == [1, 2]


def test_what_cannot_work_is_refused_with_what_to_do() -> None:
    pooled = nn.Sequential(nn.Conv2d(1, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ValueError, match=r"Pass stages=\[\.\.\.\].*top-level modules: \['0', '1', '2'\]"):
        MultiScaleUNet(pooled, out_channels=2)
    with pytest.raises(ValueError, match=r"stages must name submodules.*\['layer9'\]"):
        MultiScaleUNet(_stack(2), out_channels=2, stages=["layer9"])
    with pytest.raises(ValueError, match="decoder_widths must give 2 widths"):
        MultiScaleUNet(_stack(2), out_channels=2, stages=["1", "4", "7"], decoder_widths=[8])
    with pytest.raises(TypeError, match=r"encoder must be an nn\.Module"):
        MultiScaleUNet(lambda x: x, out_channels=2)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"use pretext3d\.models\.MultiScaleUNet"):
        p3.models.UNet.from_encoder(_stack(3), out_channels=2)  # type: ignore[arg-type]
    unet = MultiScaleUNet(_stack(2), out_channels=2, stages=["1", "4", "7"])
    with pytest.raises(ValueError, match=r"x must have shape \(N, 1, \*spatial\) with 2 spatial axes"):
        unet(torch.randn(1, 3, 16, 16))


def test_default_decoder_widths_halve_toward_full_resolution(spatial_dims: int) -> None:
    from pretext3d.models import default_decoder_widths

    assert default_decoder_widths([16, 32, 64, 128, 256]) == [16, 32, 64, 128]  # the U-Net's mirror
    assert default_decoder_widths([64, 64, 128, 256, 512]) == [32, 64, 128, 256]
    assert default_decoder_widths([8, 8, 8]) == [8, 8]  # never wider than the skip
    assert default_decoder_widths([512, 1024, 2048]) == [128, 256]  # at most 256
    # an encoder whose finest map is coarser than the input gets a last stage at full size
    unet = MultiScaleUNet(_stack(spatial_dims), 2, stages=["1", "4", "7"])
    assert [s[0].out_channels for s in unet.stages] == [8, 16] and unet.final[0].out_channels == 8
    assert unet(torch.randn(2, 1, *(16,) * spatial_dims)).shape == (2, 2, *(16,) * spatial_dims)
