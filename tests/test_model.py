"""Heads, the encoder wrapper and the reference ConvEncoder."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

import pretext3d as p3
from pretext3d.heads import ClassifierHead, MultiPatchClassifierHead, global_pool
from pretext3d.models import ConvEncoder
from pretext3d.tasks import Jigsaw, RelativePatchLocation, Rotation


def test_global_pool_means_over_space(spatial_dims: int) -> None:
    f = torch.randn(3, 5, *[4] * spatial_dims)
    assert torch.allclose(global_pool(f), f.mean(dim=tuple(range(2, 2 + spatial_dims))))
    assert torch.equal(
        global_pool(f[:, :, 0, 0] if spatial_dims == 2 else f[:, :, 0, 0, 0]), f.flatten(2)[..., 0]
    )
    with pytest.raises(ValueError, match=r"must be \(N, F\) or \(N, F, \*spatial\)"):
        global_pool(torch.randn(5))


def test_classifier_head_shapes() -> None:
    head = ClassifierHead(16, 10)
    assert head(torch.randn(4, 16)).shape == (4, 10)
    assert head(torch.randn(4, 16, 3, 3, 3)).shape == (4, 10)
    assert isinstance(ClassifierHead(16, 10, hidden=0).mlp[-1], nn.Linear)
    with pytest.raises(ValueError, match="dropout must lie in"):
        ClassifierHead(16, 10, dropout=1.0)


def test_multi_patch_head_concatenates_in_slot_order() -> None:
    torch.manual_seed(0)
    head = MultiPatchClassifierHead(8, num_patches=3, num_classes=5)
    feats = torch.randn(2 * 3, 8, 2, 2)
    out = head(feats)
    assert out.shape == (2, 5)
    swapped = feats.view(2, 3, 8, 2, 2)[:, [1, 0, 2]].reshape(6, 8, 2, 2)
    assert not torch.allclose(head(swapped), out)  # slot order matters (no pooling over slots)
    # each sample's logits depend only on its own patches
    other = feats.clone()
    other[3:] = torch.randn(3, 8, 2, 2)
    assert torch.allclose(head(other)[0], out[0]) and not torch.allclose(head(other)[1], out[1])
    with pytest.raises(ValueError, match="B \\* num_patches = B \\* 3 rows, got 5"):
        head(torch.randn(5, 8))


def test_jigsaw_head_is_small() -> None:
    # The original put 16-36 M parameters into its heads on a 3.5 M encoder.
    head = Jigsaw(3).make_head(256)
    assert sum(p.numel() for p in head.parameters()) < 600_000


@pytest.mark.parametrize("task_cls", [Rotation, Jigsaw, RelativePatchLocation])
def test_pretext_model_end_to_end_shapes(spatial_dims: int, task_cls: type) -> None:
    task = task_cls(spatial_dims)
    model = p3.PretextModel(ConvEncoder(spatial_dims, widths=(4, 8)), task)
    views, labels = task(torch.randn(3, 1, *[15] * spatial_dims))
    logits = model(views)
    assert logits.shape == (3, task.num_classes)
    loss = task.loss(logits, labels)
    loss.backward()
    assert all(p.grad is not None for p in model.encoder.parameters())
    assert torch.isclose(loss, nn.functional.cross_entropy(logits, labels))
    assert 0.0 <= float(task.accuracy(logits, labels)) <= 1.0


def test_patch_tasks_run_one_encoder_call_over_all_patches() -> None:
    calls: list[tuple[int, ...]] = []
    encoder = ConvEncoder(3, widths=(4,))
    encoder.register_forward_hook(lambda m, i, o: calls.append(tuple(i[0].shape)))
    task = Jigsaw(3)
    model = p3.PretextModel(encoder, task)
    views, _ = task(torch.randn(2, 1, 15, 15, 15))
    model(views)
    assert calls == [(2 * 27, 1, 2, 2, 2)]
    with pytest.raises(ValueError, match=r"views must have shape \(B, 27, C, \*patch\)"):
        model(views[:, :5])


def test_module_apply_still_reaches_every_submodule() -> None:
    # Tasks are submodules of PretextModel; nn.Module.apply(fn) must still work through them.
    model = p3.PretextModel(ConvEncoder(3, widths=(4,)), Rotation(3))
    seen: list[str] = []
    model.apply(lambda m: seen.append(type(m).__name__))
    assert "Rotation" in seen and "Conv3d" in seen and seen[-1] == "PretextModel"


def test_accuracy_by_hand() -> None:
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    assert float(Rotation(2).accuracy(logits, torch.tensor([0, 1, 1]))) == pytest.approx(2 / 3)


class Undeclared(nn.Module):
    """An encoder that declares nothing: its width must be probed."""

    def __init__(self, spatial_dims: int) -> None:
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.body = nn.Sequential(conv(2, 7, 3), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(x)
        return out


def test_feature_width_declared_or_probed(spatial_dims: int) -> None:
    assert p3.infer_num_features(ConvEncoder(spatial_dims, widths=(4, 6)), spatial_dims) == 6
    conv = (nn.Conv2d if spatial_dims == 2 else nn.Conv3d)(1, 9, 3)
    assert p3.infer_num_features(conv, spatial_dims) == 9  # out_channels
    probed = Undeclared(spatial_dims).train()
    assert p3.infer_num_features(probed, spatial_dims) == 7
    assert probed.training  # the probe restores the mode
    model = p3.PretextModel(probed, Rotation(spatial_dims))
    assert model.head.mlp[1].in_features == 7
    explicit = p3.PretextModel(nn.Flatten(), Rotation(spatial_dims), num_features=11)
    assert explicit.head.mlp[1].in_features == 11


def test_feature_width_errors() -> None:
    with pytest.raises(ValueError, match="pass num_features"):
        p3.infer_num_features(nn.Flatten(), 3)
    with pytest.raises(ValueError, match="probing Sequential with a zero input of spatial size 32 failed"):
        p3.infer_num_features(nn.Sequential(nn.Conv3d(1, 4, 40)), 3)
    with pytest.raises(TypeError, match=r"encoder must be a torch\.nn\.Module"):
        p3.PretextModel(lambda x: x, Rotation(3))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="task must be a pretext3d PretextTask"):
        p3.PretextModel(nn.Flatten(), "rotation")  # type: ignore[arg-type]


def test_conv_encoder_shapes_and_errors(spatial_dims: int) -> None:
    enc = ConvEncoder(spatial_dims, in_channels=2, widths=(4, 8, 16))
    assert enc(torch.randn(2, 2, *[9] * spatial_dims)).shape == (2, 16, *[3] * spatial_dims)
    assert enc(torch.randn(2, 2, *[1] * spatial_dims)).shape == (2, 16, *[1] * spatial_dims)
    with pytest.raises(ValueError, match="widths must name at least one stage"):
        ConvEncoder(spatial_dims, widths=())
    with pytest.raises(ValueError, match=r"widths\[1\] must be an int >= 1, got 0"):
        ConvEncoder(spatial_dims, widths=(4, 0))


def test_import_pulls_no_optional_dependency() -> None:
    # torch itself imports tqdm when it is installed (torch.hub); count only what pretext3d adds
    code = (
        "import sys, torch; before = set(sys.modules); import pretext3d; "
        "optional = ('nibabel', 'PIL', 'matplotlib', 'tqdm', 'pydicom', 'sklearn', 'monai', "
        "'nilearn', 'skimage'); "
        "bad = [m for m in optional if m in sys.modules and m not in before]; "
        "print(bad); sys.exit(bool(bad))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
