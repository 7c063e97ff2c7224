"""PretextModel: any encoder, feature widths, the encoder-output contract."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pretext3d as p3
from pretext3d.models import ConvEncoder
from pretext3d.tasks import Jigsaw, RelativePatchLocation, Rotation


class Undeclared(nn.Module):
    """An encoder that declares nothing: its width must be probed."""

    def __init__(self, spatial_dims: int) -> None:
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.body = nn.Sequential(conv(2, 7, 3), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(x)
        return out


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
    assert calls == [(2 * 27, 1, 5, 5, 5)]
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
    task = Rotation(2, "plane4")
    logits = torch.cat([logits, torch.full((3, 2), -9.0)], dim=1)  # 4 classes
    assert float(task.accuracy(logits, torch.tensor([0, 1, 1]))) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match=r"Rotation scores logits \(B, num_classes=4\), got \(3, 11\)"):
        task.loss(torch.randn(3, 11), torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match=r"targets must be the task's classes \(3,\), got \(2,\)"):
        task.accuracy(logits, torch.tensor([0, 1]))


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


class Returns(nn.Module):
    """An encoder whose output is whatever ``make`` builds from a feature map."""

    def __init__(self, spatial_dims: int, make: object) -> None:
        super().__init__()
        self.conv = (nn.Conv2d if spatial_dims == 2 else nn.Conv3d)(1, 4, 3, padding=1)
        self.make = make

    def forward(self, x: torch.Tensor) -> object:
        return self.make(self.conv(x))  # type: ignore[operator]


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda f: (f, f), TypeError, r"returned a tuple of 2 Tensor, Tensor, not a feature tensor; wrap"),
        (lambda f: {"features": f}, TypeError, r"returned a dict with keys \['features'\]"),
        (lambda f: f.flatten(2).transpose(1, 2), ValueError, r"a rank-3 output looks like a token sequence"),
    ],
)
def test_outputs_it_cannot_interpret_are_refused_with_advice(
    spatial_dims: int, make: object, error: type[Exception], match: str
) -> None:
    model = p3.PretextModel(Returns(spatial_dims, make), Rotation(spatial_dims), num_features=4)
    with pytest.raises(error, match=match):
        model(torch.randn(2, 1, *[8] * spatial_dims))
    with pytest.raises(error, match=match):  # the probe says the same
        p3.PretextModel(Returns(spatial_dims, make), Rotation(spatial_dims))


def test_mismatched_dims_and_widths_are_refused(spatial_dims: int) -> None:
    other = 5 - spatial_dims
    with pytest.raises(
        ValueError, match=rf"declares spatial_dims={other} but the task Rotation works in {spatial_dims}D"
    ):
        p3.PretextModel(ConvEncoder(other), Rotation(spatial_dims))

    class Lying(ConvEncoder):
        num_features = 99  # type: ignore[assignment]

    lying = Lying(spatial_dims, widths=(4, 8))
    lying.num_features = 99
    model = p3.PretextModel(lying, Rotation(spatial_dims))
    with pytest.raises(
        ValueError,
        match=r"returned 8 feature channels, but encoder.num_features gave 99; pass num_features=8",
    ):
        model(torch.randn(2, 1, *[8] * spatial_dims))
    wrong = p3.PretextModel(ConvEncoder(spatial_dims, widths=(4,)), Rotation(spatial_dims), num_features=3)
    with pytest.raises(ValueError, match="but the num_features argument gave 3"):
        wrong(torch.randn(2, 1, *[8] * spatial_dims))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_patches_too_small_for_the_encoder_say_both_sizes(spatial_dims: int) -> None:
    conv, pool = (
        (torch.nn.Conv2d, torch.nn.MaxPool2d) if spatial_dims == 2 else (torch.nn.Conv3d, torch.nn.MaxPool3d)
    )
    encoder = torch.nn.Sequential(
        conv(1, 4, 3), pool(2), conv(4, 8, 3), pool(2), conv(8, 8, 3)
    )  # needs >= 18
    task = p3.tasks.Jigsaw(spatial_dims, grid=3, num_permutations=24, jitter=2)
    model = p3.PretextModel(encoder, task, num_features=8)
    views, _ = task(torch.randn(2, 1, *[48] * spatial_dims), generator=0)
    size = (13,) * spatial_dims  # 16 - jitter 2 - gap 1 (10 % of 16)
    with pytest.raises(ValueError) as info:
        model(views)
    message = str(info.value)
    assert f"cannot take inputs of spatial size {size}" in message
    assert f"Jigsaw makes patches of {size}: image size // grid (3) - jitter (2) - gap (0.1)" in message
    assert "it accepted 32 per axis when probed" in message
    assert encoder.training  # the probe left the encoder's mode as it was
