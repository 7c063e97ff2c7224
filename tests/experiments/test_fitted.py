"""A model out of fine-tuning: saved by the runs, rebuilt, applied to new scans and images."""

from __future__ import annotations

import contextlib
import csv
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import pretext3d as p3
from pretext3d.cli import main
from pretext3d.data import DataSpec
from pretext3d.data.preprocess import CTPreprocessing
from pretext3d.experiments import FineTunedModel, SegmentationRecipe, load_model, predict

nib = pytest.importorskip("nibabel")
pytest.importorskip("PIL")

#: voxel axes of a file relative to RAS+: identity, left-right flipped (LAS), axes permuted (ASL-like)
ORIENTATIONS = {
    "RAS": np.diag([1.0, 1.0, 2.0, 1.0]),
    "LAS": np.diag([-1.0, 1.0, 2.0, 1.0]),
    "permuted": np.array([[0, 0, 2.0, 0], [1.0, 0, 0, 0], [0, -1.0, 0, 0], [0, 0, 0, 1.0]]),
}


def _scan(shape: tuple[int, int, int] = (20, 18, 12), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """MR-like noise with a bright box (label 1), as stored in the file's voxel order."""
    rng = np.random.default_rng(seed)
    image = rng.normal(300, 20, size=shape).astype(np.float32)
    label = np.zeros(shape, np.int16)
    label[3:11, 4:12, 2:8] = 1
    image[label == 1] += 400
    return image, label


class Threshold(nn.Module):
    """Label 1 where the prepared (z-scored) image is above 1, 0 elsewhere (logits of 3 classes)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([1 - x, x - 1, torch.full_like(x, -100.0)], 1)


PREPARATIONS = {
    "as stored": {"modality": "mr"},
    "resampled to 2 mm and resized": {"modality": "mr", "spacing": [2.0, 2.0, 2.0], "resize": True},
}


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
@pytest.mark.parametrize("preparation", list(PREPARATIONS))
@pytest.mark.parametrize("window", [None, 8])
def test_a_label_map_comes_back_on_the_inputs_grid_and_orientation(
    tmp_path: Path, orientation: str, preparation: str, window: int | None
) -> None:
    """Prepared, predicted (whole or by windows), put back: the label lies where the box was."""
    image, truth = _scan()
    affine = ORIENTATIONS[orientation]
    p3.data.io.write_nifti(tmp_path / "new" / "scan.nii.gz", image, affine)
    data = DataSpec(
        kind="labelled-volume-folder", path="unused", size=16, preprocessing=PREPARATIONS[preparation]
    )
    model = FineTunedModel(Threshold(), SegmentationRecipe(widths=(4, 8), crop=None), data, 1, {})
    written = predict(model, tmp_path / "new", tmp_path / "out", device="cpu", window=window)
    assert written == [tmp_path / "out" / "scan.nii.gz"]
    out = nib.load(str(written[0]))
    assert out.shape == image.shape and np.allclose(out.affine, affine)  # the input's geometry
    label = np.asarray(out.dataobj)
    if preparation == "as stored":
        assert np.array_equal(label, truth)  # every voxel in its place, whatever the orientation
        return
    assert float((label == truth).mean()) > 0.95  # the box's edges move with the 2 mm resampling ...
    shift = np.argwhere(label == 1).mean(0) - np.argwhere(truth == 1).mean(0)
    assert np.abs(shift).max() < 0.5, shift  # ... but the box does not


def test_the_preprocessing_is_undone_exactly_where_it_loses_nothing() -> None:
    """A centre crop/pad with the scan's own spacing: the label map restored is the label map."""
    image, label = _scan()
    pipeline = CTPreprocessing.preset("mr", crop=(16, 24, 8), dtype="float32")
    prepared, prepared_label, geometry = pipeline.transform(image, (1.0, 1.0, 2.0), label)
    assert prepared.shape == (16, 24, 8) and prepared_label is not None
    assert np.array_equal(geometry.restore(prepared_label), label)
    body = CTPreprocessing(spacing=None, crop="body", dtype="float32")
    ct = np.where(label == 1, 40.0, -1000.0).astype(np.float32)
    _, cropped, geometry = body.transform(ct, (1.0, 1.0, 1.0), label)
    assert cropped is not None and cropped.shape != label.shape
    assert np.array_equal(geometry.restore(cropped), label)  # put back into zeros where it was


def _run(args: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(args)
    return status, out.getvalue() + err.getvalue()


def test_scans_from_finetune_to_predict_on_the_command_line(tmp_path: Path) -> None:
    """nnU-Net layout: pretext3d finetune writes a model; pretext3d predict labels new scans."""
    affine = ORIENTATIONS["LAS"]
    for i in range(6):
        image, label = _scan(seed=i)
        p3.data.io.write_nifti(tmp_path / "data" / "imagesTr" / f"case{i}_0000.nii.gz", image, affine)
        p3.data.io.write_nifti(
            tmp_path / "data" / "labelsTr" / f"case{i}.nii.gz", label.astype(np.uint8), affine
        )
    new, _ = _scan((22, 16, 10), seed=9)  # another shape
    p3.data.io.write_nifti(tmp_path / "new" / "other_0000.nii.gz", new, ORIENTATIONS["permuted"])
    (tmp_path / "finetune.toml").write_text(f'''output_dir = "{tmp_path / "ft"}"
device = "cpu"
fraction = 1.0
train = {{ epochs = 1, steps_per_epoch = 2, batch_size = 2 }}
segmentation = {{ widths = [4, 8], crop = 8 }}
[data]
kind = "labelled-volume-folder"
path = "{tmp_path / "data"}"
size = 16
classes = ["background", "box"]
preprocessing = {{ modality = "mr", spacing = [2.0, 2.0, 2.0], resize = true }}
''')
    status, text = _run(["finetune", "--config", str(tmp_path / "finetune.toml")])
    assert status == 0, text
    models = list((tmp_path / "ft" / "models").glob("*.pt"))
    assert len(models) == 1 and "apply it with pretext3d predict" in text
    assert (tmp_path / "ft" / "model.pt").read_bytes() == models[0].read_bytes()
    model = load_model(models[0])
    assert model.classes == ["background", "box"] and model.record["metric"] == "mean_dice"
    assert model.record["best_epoch"] == 0 and "mean_dice" in model.record["test"]
    status, text = _run(["predict", "--model", str(models[0]), "--input", str(tmp_path / "new"),
                         "--output", str(tmp_path / "pred"), "--device", "cpu"])  # fmt: skip
    assert status == 0, text
    out = nib.load(str(tmp_path / "pred" / "other.nii.gz"))
    assert out.shape == new.shape and np.allclose(out.affine, ORIENTATIONS["permuted"])
    assert set(np.unique(np.asarray(out.dataobj)).tolist()) <= {0, 1}


def test_images_from_finetune_to_predict_on_the_command_line(tmp_path: Path) -> None:
    """A labels.csv folder: pretext3d finetune writes a model; predict writes one CSV row per image."""
    rng = np.random.default_rng(0)
    rows = ["image,label"]
    names = ["bright", "dark"]
    for i in range(16):
        image = rng.integers(0, 60, (20, 24, 3)).astype(np.uint8) + (150 if i % 2 == 0 else 0)
        p3.data.io.write_png(tmp_path / "data" / f"img{i}.png", image.astype(np.uint8))
        rows.append(f"img{i}.png,{names[i % 2]}")
    (tmp_path / "data" / "labels.csv").write_text("\n".join(rows) + "\n")
    for i in range(3):
        p3.data.io.write_png(
            tmp_path / "new" / f"n{i}.PNG", rng.integers(0, 255, (30, 30, 3)).astype(np.uint8)
        )
    status, text = _run([
        "finetune", "--defaults", "--set", f"output_dir={tmp_path / 'ft'}", "--set", "device=cpu",
        "--set", f'data={{kind="labelled-image-folder", path="{tmp_path / "data"}", size=16}}',
        "--set", "train={epochs=1, steps_per_epoch=2, batch_size=4}",
        "--set", "classification={growth_rate=4, block_config=[1, 1], init_features=8}",
    ])  # fmt: skip
    assert status == 0, text
    (model,) = (tmp_path / "ft" / "models").glob("*.pt")
    summary = (tmp_path / "ft" / "summary.md").read_text()
    assert summary.startswith("# Fine-tuning run 'run': 100% of the labelled pool")  # not "Data efficiency"
    assert "stopped by patience" not in summary  # no patience was set: nothing stopped by it
    status, text = _run(["predict", "--model", str(model), "--input", str(tmp_path / "new"),
                         "--output", str(tmp_path / "pred")])  # fmt: skip
    assert status == 0, text
    with open(tmp_path / "pred" / "predictions.csv") as handle:
        table = list(csv.DictReader(handle))
    assert [Path(r["image"]).name for r in table] == ["n0.PNG", "n1.PNG", "n2.PNG"]
    for row in table:
        probabilities = [float(row[f"p_{n}"]) for n in ["bright", "dark"]]
        assert abs(sum(probabilities) - 1) < 1e-4 and row["predicted"] == names[int(np.argmax(probabilities))]


def test_the_chosen_learning_rate_s_model_is_the_run_s(tmp_path: Path) -> None:
    """With a learning-rate search the run keeps the chosen candidate's model, and only it."""
    config = p3.experiments.DataEfficiency(
        data=DataSpec(kind="fundus-phantom", count=24, size=32), output_dir=str(tmp_path / "grid"),
        device="cpu",
        grading=p3.experiments.GradingRecipe(growth_rate=4, block_config=(1, 1), init_features=8),
        experiment=p3.experiments.DataEfficiencyConfig(
            fractions=(1.0,), split_seeds=(0,), lr_search=(1e-4, 1e-2),
            train=p3.finetune.TrainConfig(epochs=2, steps_per_epoch=2)),
        save_models=True,
    )  # fmt: skip
    (row,) = p3.experiments.data_efficiency(config)
    (file,) = (tmp_path / "grid" / "models").glob("*.pt")
    chosen = next(c["lr"] for c in row["lr_search"] if c["chosen"])
    model = load_model(file)
    assert model.record["best_val"] == row["best_val"] and model.record["test"] == row["test"]
    assert row["train"]["lr"] == chosen and not list((tmp_path / "grid" / "checkpoints").iterdir())
    images, _, ids = config.data.labelled()
    test = row["test_cases"]["case_id"]
    picked = torch.tensor([ids.index(c) for c in test])
    grades = model.predict_tensor(images[picked]).argmax(1)  # the saved model scores as the run did
    assert grades.tolist() == [int(g) for g in row["test_cases"]["predicted"]]


def test_a_model_file_is_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_model(tmp_path / "missing.pt")
    p3.models.save_encoder(p3.models.UNetEncoder(3, widths=(4, 8)), tmp_path / "encoder.pt")
    with pytest.raises(ValueError, match="encoder file: fine-tune it first"):
        load_model(tmp_path / "encoder.pt")
    recipe = SegmentationRecipe(widths=(4, 8), crop=None)
    network, _ = recipe.build(1, None)
    p3.experiments.save_model(tmp_path / "seg.pt", network, recipe, DataSpec(kind="ct-phantom"), 1)
    (tmp_path / "pictures").mkdir()
    p3.data.io.write_png(tmp_path / "pictures" / "a.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"holds no scans \(\.nii\.gz"):
        predict(tmp_path / "seg.pt", tmp_path / "pictures", tmp_path / "out")
    with pytest.raises(ValueError, match="window must be"):
        predict(tmp_path / "seg.pt", tmp_path / "pictures", tmp_path / "out", window=0)


def test_a_fraction_that_leaves_classes_unlabelled_is_said_once(tmp_path: Path) -> None:
    """5 % of 24 fundus images labels one image: 1 of 5 grades, said once for the fraction."""
    lines: list[str] = []
    images, grades = p3.data.fundus_phantom_batch(40, size=32)  # SYNTHETIC
    cases = p3.experiments.LabelledCases(images, grades, synthetic=True)
    recipe = p3.experiments.GradingRecipe(growth_rate=4, block_config=(1, 1), init_features=8)
    config = p3.experiments.DataEfficiencyConfig(
        fractions=(0.05, 1.0), split_seeds=(0,), repetitions=(0, 1),
        train=p3.finetune.TrainConfig(epochs=1, steps_per_epoch=1))  # fmt: skip
    p3.experiments.DataEfficiencyGrid(recipe, cases, {"scratch": None}, config, tmp_path, device="cpu",
                                      log=lines.append).run(progress=False)  # fmt: skip
    warned = [line for line in lines if line.startswith("warning: at fraction")]
    assert len(warned) == 1 and "at fraction 0.05" in warned[0] and "of the 5 classes" in warned[0]
