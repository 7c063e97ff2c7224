"""Reference backbones: U-Net with an explicit encoder, DenseNet-121, weights I/O, memory features."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

import pretext3d as p3
from pretext3d.models import (
    ConvEncoder,
    DenseNet,
    DenseNet121,
    DenseNetEncoder,
    UNet,
    UNetEncoder,
    load_encoder,
    load_encoder_weights,
    save_encoder,
)

SMALL = (4, 8, 16)  # a three-stage U-Net for fast tests


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def unet_encoder_params(spatial_dims: int, cin: int, widths: tuple[int, ...]) -> int:
    """Two convolutions with bias and two batch norms per stage, by hand."""
    k = 3**spatial_dims
    total = 0
    for w in widths:
        total += cin * w * k + w + w * w * k + w + 4 * w
        cin = w
    return total


def test_paper_encoder_has_the_originals_parameter_count() -> None:
    encoder = UNetEncoder(3, 1)
    assert count(encoder) == unet_encoder_params(3, 1, (16, 32, 64, 128, 256)) == 3_535_440
    assert encoder.num_features == 256
    assert count(UNetEncoder(2, 3)) == unet_encoder_params(2, 3, (16, 32, 64, 128, 256))
    assert UNetEncoder(3, 1, width_multiplier=0.5).widths == (8, 16, 32, 64, 128)


def test_encoder_is_size_agnostic_and_declares_its_features(spatial_dims: int) -> None:
    encoder = UNetEncoder(spatial_dims, 2, SMALL).eval()
    for size in (7, 13, 16):
        x = torch.randn(2, 2, *[size] * spatial_dims)
        feats = encoder.forward_intermediates(x)
        for f, info in zip(feats, encoder.feature_info, strict=True):
            assert f.shape == (2, info["num_chs"], *[size // info["reduction"]] * spatial_dims)
        pooled = encoder(x)
        assert pooled.shape == (2, 16)
        assert torch.allclose(pooled, feats[-1].flatten(2).mean(-1))
    with pytest.raises(ValueError, match=r"at least 4 = 2\*\*\(stages - 1\) for 3 stages"):
        encoder(torch.randn(1, 2, *[3] * spatial_dims))
    with pytest.raises(ValueError, match=r"x must have shape \(N, 2, \*spatial\)"):
        encoder(torch.randn(1, 1, *[8] * spatial_dims))


@pytest.mark.parametrize("upsample", ["transpose", "linear"])
def test_unet_shapes_and_size_rule(spatial_dims: int, upsample: str) -> None:
    unet = UNet(spatial_dims, 2, 3, SMALL, upsample=upsample)  # type: ignore[arg-type]
    x = torch.randn(2, 2, *[12] * spatial_dims)
    assert unet(x).shape == (2, 3, *[12] * spatial_dims)
    with pytest.raises(ValueError, match=r"multiple of 4 .* Pad or crop to one of \[\(8, 12\)"):
        unet(torch.randn(2, 2, *[10] * spatial_dims))


@pytest.mark.parametrize("norm", ["batch", "instance", "group"])
def test_norms(norm: str) -> None:
    unet = UNet(3, 1, 2, (8, 12), norm=norm)  # type: ignore[arg-type]
    assert unet(torch.randn(2, 1, 8, 8, 8)).shape == (2, 2, 8, 8, 8)
    kinds = {type(m).__name__ for m in unet.modules()}
    assert {"batch": "BatchNorm3d", "instance": "InstanceNorm3d", "group": "GroupNorm"}[norm] in kinds
    groups = [m.num_groups for m in unet.modules() if isinstance(m, nn.GroupNorm)]
    assert norm != "group" or set(groups) == {4, 8}  # 12 channels take 4 groups


def test_from_encoder_carries_the_pretrained_weights() -> None:
    task = p3.tasks.Rotation(3)
    model = p3.PretextModel(UNetEncoder(3, 1, SMALL), task)
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(1.0)  # "pretrained": differs from a fresh init
    unet = UNet.from_encoder(model.encoder, out_channels=3)
    assert unet.encoder is not model.encoder
    for (name, a), b in zip(
        unet.encoder.state_dict().items(), model.encoder.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert UNet.from_encoder(model.encoder, 3, copy_encoder=False).encoder is model.encoder
    assert unet(torch.randn(2, 1, 8, 8, 8)).shape == (2, 3, 8, 8, 8)
    with pytest.raises(TypeError, match=r"from_encoder takes a UNetEncoder, got ConvEncoder.*MultiScaleUNet"):
        UNet.from_encoder(p3.models.ConvEncoder(3), 3)  # type: ignore[arg-type]


def test_encoder_weights_round_trip(tmp_path: Path) -> None:
    encoder = UNetEncoder(3, 1, SMALL, norm="group", dropout=0.1).eval()
    path = tmp_path / "encoder.pt"
    save_encoder(encoder, path)
    # equal weights give byte-identical files, whatever the name (their SHA-256 is provenance)
    save_encoder(copy.deepcopy(encoder), tmp_path / "again.pt")
    assert path.read_bytes() == (tmp_path / "again.pt").read_bytes()
    rebuilt = load_encoder(path).eval()
    x = torch.randn(2, 1, 8, 8, 8)
    assert isinstance(rebuilt, UNetEncoder) and torch.equal(rebuilt(x), encoder(x))
    # into a fine-tuning model's encoder, from the file and from whole-model state dicts
    target = UNet(3, 1, 2, SMALL, norm="group", dropout=0.1).eval()
    load_encoder_weights(target.encoder, path)
    assert torch.equal(target.encoder(x), encoder(x))
    pretext = p3.PretextModel(copy.deepcopy(encoder), p3.tasks.Rotation(3))
    fresh = UNetEncoder(3, 1, SMALL, norm="group", dropout=0.1).eval()
    load_encoder_weights(fresh, pretext.state_dict())
    assert torch.equal(fresh(x), encoder(x))
    fresh2 = UNetEncoder(3, 1, SMALL, norm="group", dropout=0.1).eval()
    load_encoder_weights(fresh2, target.state_dict())
    assert torch.equal(fresh2(x), encoder(x))
    with pytest.raises(ValueError, match=r"do not match UNetEncoder: missing \['stages.0.0.bias'"):
        load_encoder_weights(UNetEncoder(3, 1, (4, 8, 16, 32)), {"stages.0.0.weight": torch.zeros(1)})
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="is not an encoder file"):
        load_encoder(tmp_path / "other.pt")
    conv = p3.models.ConvEncoder(3, widths=(4, 8), norm="instance").eval()
    save_encoder(conv, tmp_path / "conv.pt")
    assert p3.models.encoder_name(tmp_path / "conv.pt") == "conv"
    rebuilt_conv = load_encoder(tmp_path / "conv.pt").eval()
    assert isinstance(rebuilt_conv, ConvEncoder) and torch.equal(rebuilt_conv(x), conv(x))
    save_encoder(nn.Sequential(nn.Conv3d(1, 2, 3)), tmp_path / "plain.pt")
    assert p3.models.encoder_name(tmp_path / "plain.pt") is None
    with pytest.raises(ValueError, match="that is not registered here"):
        load_encoder(tmp_path / "plain.pt")


def test_encoder_files_of_0_1_still_load(tmp_path: Path) -> None:
    # 0.1 wrote the class name only, and DenseNet's dropout as drop_rate
    encoder = DenseNetEncoder(2, 1, 4, (1, 1), 8).eval()
    config = {**encoder.config, "drop_rate": 0.0}
    del config["dropout"], config["norm"]
    payload = {"format": "pretext3d-encoder-v1", "class": "DenseNetEncoder", "config": config,
               "state_dict": encoder.state_dict()}  # fmt: skip
    torch.save(payload, tmp_path / "old.pt")
    assert p3.models.encoder_name(tmp_path / "old.pt") == "densenet"
    x = torch.randn(1, 1, 16, 16)
    assert torch.equal(load_encoder(tmp_path / "old.pt").eval()(x), encoder(x))


def _step(model: nn.Module, x: torch.Tensor, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(seed)
    out = model(x)
    out.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), grads


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_checkpointing_gives_the_same_numbers(spatial_dims: int, dropout: float) -> None:
    torch.manual_seed(0)
    plain = UNet(spatial_dims, 1, 2, SMALL, dropout=dropout)
    ckpt = copy.deepcopy(plain)
    ckpt.checkpointing = True
    x = torch.randn(2, 1, *[8] * spatial_dims)
    out_a, grads_a = _step(plain, x, seed=1)
    out_b, grads_b = _step(ckpt, x, seed=1)
    assert torch.allclose(out_a, out_b, atol=1e-6)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) == len(list(plain.parameters()))
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=1e-5), name
    # batch-norm running statistics are updated once, not again by the recomputation
    for (name, a), b in zip(plain.state_dict().items(), ckpt.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name


def test_densenet_checkpointing_gives_the_same_numbers() -> None:
    torch.manual_seed(0)
    plain = DenseNet(2, 1, 3, growth_rate=4, block_config=(2, 2), init_features=8)
    ckpt = copy.deepcopy(plain)
    ckpt.features.checkpointing = True
    x = torch.randn(2, 1, 32, 32)
    out_a, grads_a = _step(plain, x, seed=0)
    out_b, grads_b = _step(ckpt, x, seed=0)
    assert torch.allclose(out_a, out_b, atol=1e-6)
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=1e-5), name
    assert all(
        torch.equal(a, b)
        for a, b in zip(plain.state_dict().values(), ckpt.state_dict().values(), strict=True)
    )


def test_densenet121_matches_torchvisions_parameter_count() -> None:
    model = DenseNet121(2, in_channels=3, num_classes=5)
    assert count(model) == 6_958_981
    assert model.num_features == 1024 and model.encoder is model.features
    assert count(model.encoder) + count(model.classifier) == count(model)
    assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 5)


def test_densenet121_in_3d() -> None:
    model = DenseNet121(3, in_channels=1, num_classes=4).eval()
    assert model(torch.randn(1, 1, 32, 32, 32)).shape == (1, 4)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv3d)]
    assert len(convs) == 1 + 2 * (6 + 12 + 24 + 16) + 3  # stem, two per dense layer, transitions


def test_densenet_encoder_reuse_and_size_rule(spatial_dims: int) -> None:
    encoder = DenseNetEncoder(spatial_dims, 1, growth_rate=4, block_config=(2, 2), init_features=8)
    assert encoder.feature_info[-1]["num_chs"] == encoder.num_features == (8 + 8) // 2 + 8
    net = DenseNet.from_encoder(encoder, num_classes=3)
    assert net.encoder is not encoder
    assert torch.equal(next(net.encoder.parameters()), next(encoder.parameters()))
    x = torch.randn(2, 1, *[8] * spatial_dims)
    assert net(x).shape == (2, 3)
    pretext = p3.PretextModel(encoder, p3.tasks.Rotation(spatial_dims))
    views, _ = pretext.task(x)
    assert pretext(views).shape == (2, pretext.task.num_classes)
    with pytest.raises(ValueError, match=r"at least 8 = 2\*\*\(blocks \+ 1\) for 2 blocks"):
        encoder(torch.randn(2, 1, *[7] * spatial_dims))
    with pytest.raises(TypeError, match="encoder must be a DenseNetEncoder"):
        DenseNet.from_encoder(UNetEncoder(spatial_dims), 3)  # type: ignore[arg-type]


@pytest.mark.parametrize("make", [lambda: UNet(3, 1, 2, SMALL), lambda: DenseNet(3, 1, 3, 4, (2, 2), 8)])
def test_channels_last_and_bf16_autocast(make: object) -> None:
    torch.manual_seed(0)
    model = make().eval()  # type: ignore[operator]
    x = torch.randn(2, 1, 16, 16, 16)
    reference = model(x)
    fast = copy.deepcopy(model).to(memory_format=torch.channels_last_3d)
    assert torch.allclose(fast(x.to(memory_format=torch.channels_last_3d)), reference, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x)
    assert low.dtype == torch.bfloat16 and torch.isfinite(low).all()
    assert torch.allclose(low.float(), reference, atol=0.1 * reference.abs().max().item())


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="width_multiplier must be a finite number > 0"):
        UNetEncoder(3, 1, width_multiplier=0)
    with pytest.raises(ValueError, match=r"widths\[1\] must be an int >= 1, got 0"):
        UNetEncoder(3, 1, (4, 0))
    with pytest.raises(ValueError, match="norm must be one of"):
        UNetEncoder(3, 1, norm="layer")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="upsample must be one of"):
        UNet(3, 1, 2, upsample="nearest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="block_config must name at least one dense block"):
        DenseNet(2, 3, 5, block_config=())


def test_conv_encoder_shapes_and_errors(spatial_dims: int) -> None:
    enc = ConvEncoder(spatial_dims, in_channels=2, widths=(4, 8, 16))
    x = torch.randn(2, 2, *[9] * spatial_dims)
    assert enc.forward_features(x).shape == (2, 16, *[3] * spatial_dims)
    assert enc.forward_features(x[..., :1, :1] if spatial_dims == 2 else x[..., :1, :1, :1]).shape == (
        2,
        16,
        *[1] * spatial_dims,
    )
    assert torch.allclose(enc(x), enc.forward_features(x).flatten(2).mean(-1))
    with pytest.raises(ValueError, match="widths must name at least one stage"):
        ConvEncoder(spatial_dims, widths=())
    with pytest.raises(ValueError, match=r"widths\[1\] must be an int >= 1, got 0"):
        ConvEncoder(spatial_dims, widths=(4, 0))
