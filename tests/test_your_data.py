"""examples/your-data/: both own-data scenarios from the docs' commands, pretraining to predictions."""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
from pathlib import Path

import numpy as np
import pytest

from pretext3d.cli import main
from pretext3d.experiments import load_model

nib = pytest.importorskip("nibabel")
pytest.importorskip("PIL")

HERE = Path(__file__).parent.parent / "examples" / "your-data"
spec = importlib.util.spec_from_file_location("make_data", HERE / "make_data.py")
assert spec is not None and spec.loader is not None
make_data = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_data)

#: a tiny budget for the check that the configs run (the configs' own is for a laptop)
TINY = {
    "pretrain": ["pretrain.steps=2", "pretrain.batch_size=2", "held_out=2"],
    "data-efficiency": [
        "experiment.train={epochs=1, steps_per_epoch=1, batch_size=2}",
        "experiment.split_seeds=[0]",
    ],
    "finetune": ["train={epochs=1, steps_per_epoch=1, batch_size=2}"],
}


def _cli(args: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        status = main(args)
    assert status == 0, out.getvalue()
    return out.getvalue()


def _steps(scenario: str) -> None:
    for command in ("pretrain", "data-efficiency", "finetune"):
        config = HERE / scenario / f"{command}.toml"
        _cli([command, "--config", str(config), "--set", "pretrain.device=cpu" if command == "pretrain" else
              "device=cpu", *[f"--set={item}" for item in TINY[command]]])  # fmt: skip


def test_your_images_from_labels_csv_to_predictions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    make_data.images(Path("data/images"), labelled=24, unlabelled=6, new=3)
    _steps("images")
    model = load_model("runs/your-images/finetune/model.pt")
    assert model.classes == ["horizontal", "square", "vertical"]  # the names sorted
    assert (
        len(list(Path("runs/your-images/data-efficiency/models").glob("*.pt"))) == 4
    )  # 2 methods x 2 fractions
    _cli(["predict", "--model", "runs/your-images/finetune/model.pt", "--input", "data/images/new",
          "--output", "runs/your-images/predictions"])  # fmt: skip
    with open("runs/your-images/predictions/predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [Path(r["image"]).name for r in rows] == ["new0.png", "new1.png", "new2.png"]
    assert all(r["predicted"] in ("horizontal", "square", "vertical") for r in rows)


def test_your_scans_from_an_nnunet_folder_to_label_maps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    make_data.scans(Path("data/Dataset001_Box"), labelled=6, unlabelled=4)
    _steps("scans")
    model = load_model("runs/your-scans/finetune/model.pt")
    assert model.classes == ["background", "box"] and model.record["metric"] == "mean_dice"
    model_file, scans = "runs/your-scans/finetune/model.pt", "data/Dataset001_Box/imagesTs"
    _cli(["predict", "--model", model_file, "--input", scans, "--output", "runs/your-scans/predictions"])
    for scan in sorted(Path("data/Dataset001_Box/imagesTs").iterdir()):
        given = nib.load(str(scan))
        predicted = nib.load(str(Path("runs/your-scans/predictions") / scan.name.replace("_0000", "")))
        assert predicted.shape == given.shape and np.allclose(predicted.affine, given.affine)
        assert set(np.unique(np.asarray(predicted.dataobj)).tolist()) <= {0, 1}
