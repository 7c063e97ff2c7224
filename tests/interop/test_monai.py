"""MONAI: its encoders under the tasks and through fine-tuning, its datasets and pipelines."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

import pretext3d as p3

monai = pytest.importorskip("monai")
from monai.data import CacheDataset, DataLoader, Dataset, MetaTensor, PersistentDataset  # noqa: E402
from monai.networks.nets import FlexibleUNet, resnet10  # noqa: E402
from monai.transforms import Compose, Lambdad  # noqa: E402

TASKS = {
    "rotation": lambda: p3.tasks.Rotation(3),
    "jigsaw": lambda: p3.tasks.Jigsaw(3, grid=2, num_permutations=24, jitter=2),
    "rpl": lambda: p3.tasks.RelativePatchLocation(3, grid=3, jitter=2),
    "exemplar": lambda: p3.tasks.Exemplar(3),
    "cpc": lambda: p3.tasks.CPC(3, grid=3, patch=16),
}


@functools.cache
def _phantoms() -> torch.Tensor:
    return p3.data.ct_phantom_batch(6, 48)[0]


def _scans(count: int = 6) -> list[dict[str, object]]:
    return [{"image": MetaTensor(_phantoms()[i]), "case": f"ct-{i}"} for i in range(count)]


@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_trains_a_monai_encoder_on_metatensors(name: str) -> None:
    task = TASKS[name]()
    model = p3.PretextModel(resnet10(spatial_dims=3, n_input_channels=1, feed_forward=False), task)
    x = torch.stack([s["image"] for s in _scans(2)])  # type: ignore[misc]
    assert isinstance(x, MetaTensor)
    views, targets = task(x, generator=0)
    loss = task.loss(model(views), targets, generator=0)
    loss.backward()
    assert torch.isfinite(loss) and model.num_features == 512


def test_the_pretrainer_takes_monai_datasets_unchanged(tmp_path: Path) -> None:
    config = p3.pretrainer.PretrainConfig(steps=2, batch_size=2, crop=32, device="cpu", progress=False)
    for data in (
        CacheDataset(_scans(), progress=False),
        PersistentDataset(_scans(), transform=None, cache_dir=tmp_path / "c"),
    ):
        output = tmp_path / f"{type(data).__name__}.pt"
        record = p3.pretrainer.Pretrainer(
            p3.models.UNetEncoder(3, widths=(8, 16)),
            p3.tasks.Rotation(3),
            data,
            config,
            output,
            log=lambda s: None,
        ).fit()
        assert record["steps"] == 2 and output.exists()
    with pytest.raises(ValueError, match=r"without image_key='img' \(its keys: \['case', 'image'\]\)"):
        p3.pretrainer.Pretrainer(
            p3.models.UNetEncoder(3, widths=(8, 16)), p3.tasks.Rotation(3), Dataset(_scans()), config,
            tmp_path / "x.pt", log=lambda s: None, image_key="img",
        ).fit()  # fmt: skip


def test_views_made_in_a_monai_compose_with_workers() -> None:
    task = p3.tasks.Rotation(3)
    crop = Lambdad(keys="image", func=lambda x: x[:, 8:40, 8:40, 8:40])  # a cube for the 3D rotations
    pipeline = Compose([crop, p3.tasks.PretextViewsd(task)])
    scans = _scans()
    loader = DataLoader(Dataset(scans, transform=pipeline), batch_size=3, num_workers=2)
    batches = list(loader)
    assert len(batches) == 2
    for b, batch in enumerate(batches):
        views, targets = batch["views"], batch["targets"]
        assert views.shape == (3, 1, 32, 32, 32) and targets.shape == (3,)
        assert batch["case"] == [f"ct-{i}" for i in range(3 * b, 3 * b + 3)]  # the rest of the dict kept
        # each view is its cropped scan rotated by its target: undone, it is the scan again
        undone, _ = task.apply_params(
            views.as_subclass(torch.Tensor), p3.tasks.RotationParams(task.inverse_classes[targets])
        )
        expected = torch.stack([crop({"image": s["image"]})["image"] for s in scans[3 * b : 3 * b + 3]])
        assert torch.equal(undone, expected.as_subclass(torch.Tensor))
    with pytest.raises(ValueError, match="cannot make views per sample"):
        p3.tasks.PretextViewsd(p3.tasks.Exemplar(3))


def test_weights_pretrained_on_a_monai_resnet_load_into_your_own_segmentation_network(tmp_path: Path) -> None:
    """The recipe: keep your segmentation network; load the pretrained encoder's weights into its encoder."""
    encoder = resnet10(spatial_dims=3, n_input_channels=1, feed_forward=False, bias_downsample=False)
    task = p3.tasks.Rotation(3)
    model = p3.PretextModel(encoder, task)
    views, targets = task(torch.randn(2, 1, 32, 32, 32), generator=0)
    task.loss(model(views), targets).backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    p3.models.save_encoder(model.encoder, tmp_path / "encoder.pt")
    network = FlexibleUNet(
        in_channels=1, out_channels=3, backbone="resnet10", spatial_dims=3, pretrained=False
    )
    p3.models.load_encoder_weights(network.encoder, tmp_path / "encoder.pt")  # strict: every key matches
    for key, value in network.encoder.state_dict().items():
        assert torch.equal(value, encoder.state_dict()[key]), key
    assert network(torch.randn(2, 1, 32, 32, 32)).shape == (2, 3, 32, 32, 32)
    # or the library's decoder over the same encoder
    unet = p3.models.MultiScaleUNet(encoder, 3, stages=["act", "layer1", "layer2", "layer3", "layer4"])
    assert unet(torch.randn(2, 1, 32, 32, 32)).shape == (2, 3, 32, 32, 32)
