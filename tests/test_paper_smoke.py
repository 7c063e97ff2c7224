"""benchmarks/paper_smoke.py at its tiny size: every phase runs, is timed, and is projected."""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest

from pretext3d.data.io import read_nifti

pytest.importorskip("nibabel")
ROOT = Path(__file__).resolve().parents[1]


def test_the_paper_smoke_times_every_phase_and_projects_the_full_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = importlib.util.spec_from_file_location("paper_smoke", ROOT / "benchmarks" / "paper_smoke.py")
    assert spec is not None and spec.loader is not None
    smoke = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "paper_smoke", smoke)  # its scan writers pickle it by name
    spec.loader.exec_module(smoke)
    result = smoke.main(["--tiny", "--device", "cpu", "--output", str(tmp_path)])

    tasks = ["rotation", "jigsaw", "rpl", "exemplar", "cpc", "genesis", "mim"]
    assert [r["phase"] for r in result["phases"]] == [
        "writing phantoms", "preprocessing + cache (every scan)", *[f"pretraining {t}" for t in tasks],
        "fine-tuning (1 fraction x 1 split seed, every method)",
    ]  # fmt: skip
    assert all(r["seconds"] > 0 and r["peak_gib"] > 0 for r in result["phases"])
    # the scans are in the Task07 layout, in HU, half of them labelled, with the field of view kept
    folder = tmp_path / "data" / "Task07_Pancreas"
    assert len(list((folder / "imagesTr").iterdir())) == len(list((folder / "imagesTs").iterdir())) == 6
    volume = read_nifti(folder / "imagesTr" / "pancreas_001.nii.gz")
    assert volume.array.shape[:2] == (48, 48) and 19 <= volume.array.shape[2] <= 29
    np.testing.assert_allclose(np.array(volume.spacing) * volume.array.shape, [400, 300, 250], rtol=1e-4)
    assert volume.array.min() <= -900 and volume.array.max() >= 0  # air and soft tissue in HU

    projected = result["projected_seconds"]
    prep = result["phases"][1]
    assert projected["preprocessing"] == pytest.approx(prep["seconds"] / 12 * 420)
    assert [k for k in projected if k.startswith("pretraining")] == [f"pretraining {t}" for t in tasks]
    epochs = [h["seconds"] for f in (tmp_path / "run" / "runs").glob("*.json")
              for h in json.loads(f.read_text())["history"]]  # fmt: skip
    # 8 methods x 5 fractions x 5 split seeds, 100 epochs of 50 steps (2 in the smoke)
    expected = statistics.median(epochs) * 8 * 25 * 100 * 25
    assert projected["fine-tuning (budget, no early stop)"] == pytest.approx(expected)
    assert result["projected_total_hours"] == pytest.approx(sum(projected.values()) / 3600)
    assert json.loads((tmp_path / "smoke.json").read_text())["scans"] == 12
