"""run_reproduction: checks, resume, refusal of a changed folder, outputs; the CLI command."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import pretext3d as p3
from pretext3d.cli import main
from pretext3d.config import ConfigError, from_mapping
from pretext3d.data import DataSpec
from pretext3d.experiments import (
    DataEfficiencyConfig,
    Reproduction,
    SegmentationRecipe,
    pretraining_curves,
    read_runs,
    run_reproduction,
)
from pretext3d.finetune import TrainConfig
from pretext3d.pretrainer import PretrainConfig


def _tiny(output: Path, **changes: object) -> Reproduction:
    train = TrainConfig(epochs=2, steps_per_epoch=2, batch_size=2, early_stopping_patience=1, min_epochs=1)
    config = Reproduction(
        name="tiny",
        data=DataSpec(kind="ct-phantom", count=10, size=16),
        pretraining_data=DataSpec(kind="ct-phantom", count=8, size=16),
        held_out=2,
        pretrain=PretrainConfig(steps=2, batch_size=2, device="cpu", eval_every=2, progress=False),
        tasks={"rotation": p3.TaskSpec(crop=0)},
        segmentation=SegmentationRecipe(crop=8),
        experiment=DataEfficiencyConfig(fractions=(1.0,), split_seeds=(0, 1), train=train),
        output_dir=str(output),
        device="cpu",
        threads=torch.get_num_threads(),
    )
    for key, value in changes.items():
        setattr(config, key, value)
    return config


def test_a_reproduction_writes_everything_and_resumes_without_repeating(tmp_path: Path) -> None:
    out = tmp_path / "out"
    lines: list[str] = []
    assert run_reproduction(_tiny(out), progress=False, log=lines.append) == out
    encoder = out / "encoders" / "rotation_p0.pt"
    for name in ("results.csv", "cases.csv", "summary.md", "config.json", "data_efficiency.png",
                 "learning_curves.png", "pretraining.png"):  # fmt: skip
        assert (out / name).is_file(), name
    info = json.loads((out / "reproduction.json").read_text())
    assert info["config"]["name"] == "tiny" and "output_dir" not in info["config"]
    assert info["environment"]["torch"] == torch.__version__ and info["machine"]["cpu_count"] >= 1
    assert set(info["seconds"]) >= {"pretraining", "fine_tuning_grid", "total"}
    assert lines[-1].startswith(f"results folder: {out}")
    assert any("| scratch |" in line for line in lines)  # the table in the terminal
    rows = read_runs(out)
    assert {r["method"] for r in rows} == {"scratch", "rotation"} and len(rows) == 4
    assert all(r["synthetic"] for r in rows)
    stamp, runs = (
        encoder.stat().st_mtime_ns,
        sorted(p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")),
    )

    lines.clear()
    run_reproduction(_tiny(out), progress=False, log=lines.append)
    assert encoder.stat().st_mtime_ns == stamp  # kept, not pretrained again
    assert sorted(p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")) == runs
    assert any("4 runs, 4 already done" in line for line in lines)


def test_a_folder_of_other_settings_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_reproduction(_tiny(out), progress=False, log=lambda _: None)
    changed = _tiny(out, pretrain=PretrainConfig(steps=3, batch_size=2, device="cpu", progress=False))
    with pytest.raises(ValueError, match=r"other settings \(changed: .*pretrain.steps"):
        run_reproduction(changed, progress=False, log=lambda _: None)


def test_the_pretext_curves_come_from_the_metrics_log(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_reproduction(_tiny(out), progress=False, log=lambda _: None)
    curves = pretraining_curves(out / "encoders" / "rotation_p0.pt")
    assert [step for step, _ in curves["held_out_accuracy/rotation"]] == [2]
    assert 0 <= curves["held_out_accuracy/rotation"][0][1] <= 1
    assert pretraining_curves(tmp_path / "missing.pt") == {}


@pytest.mark.parametrize(("values", "message"), [
    ({"data": {"kind": "fundus-phantom"}}, "pretraining_data ('ct-phantom') must have the same dimensions"),
    ({"data": {"kind": "volume-folder", "preprocessing": {"modality": "mr"}},
      "pretraining_data": {"kind": "volume-folder", "preprocessing": {"modality": "mr"}}},
     "holds unlabelled"),
    ({"data": {"kind": "volume-folder"}}, "data.preprocessing.modality must be given for a volume-folder"),
    ({"data": {"kind": "task07", "preprocessing": {"spacng": "keep"}}}, "did you mean 'spacing'"),
    ({"data": {"kind": "ct-phantom", "preprocessing": {"modality": "mr"}}}, "data.preprocessing applies to"),
    ({"tasks": {}}, "tasks must name at least one pretext task"),
    ({"tasks": {"rotaton": {}}}, "unknown task 'rotaton'; did you mean 'rotation'?"),
    ({"tasks": {"rotation": {"crop": -1}}}, "crop must be an int >= 0"),
    ({"tasks": {"rotation": {"weight": 0.5}}}, "tasks.rotation.weight = 0.5 has no meaning"),
    ({"tasks": {"jigsaw-a": {"task": "jigsaw", "options": {"gird": 3}}}}, "did you mean 'grid'"),
    ({"threads": 0}, "threads must be an int >= 1"),
    ({"pretraining_seeds": 0}, "pretraining_seeds must be an int >= 1"),
    ({"output_dir": " "}, "output_dir must name a folder"),
    ({"data": {"kind": "ct-phantom", "cache_dir": "c"}}, "data.cache_dir applies to CT scans"),
])  # fmt: skip
def test_bad_settings_are_named(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        from_mapping(Reproduction, values)


def test_the_cli_runs_a_reproduction_from_a_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "r.toml"
    config.write_text(
        f'name = "cli"\noutput_dir = "{tmp_path / "out"}"\ndevice = "cpu"\nheld_out = 2\n'
        '[data]\nkind = "ct-phantom"\ncount = 10\nsize = 16\n'
        '[pretraining_data]\nkind = "ct-phantom"\ncount = 8\nsize = 16\n'
        '[pretrain]\nsteps = 2\nbatch_size = 2\ndevice = "cpu"\nprogress = false\n'
        "[tasks.rotation]\ncrop = 0\n[segmentation]\ncrop = 8\n"
        "[experiment]\nfractions = [1.0]\nsplit_seeds = [0, 1]\n"
        "[experiment.train]\nepochs = 1\nsteps_per_epoch = 1\nbatch_size = 2\n"
    )
    assert main(["reproduce", "--config", str(config), "--set", "experiment.split_seeds=[3]"]) == 0
    assert f"results folder: {tmp_path / 'out'}" in capsys.readouterr().out
    assert {r["split_seed"] for r in read_runs(tmp_path / "out")} == {3}
    assert main(["reproduce", "--config", str(config), "--set", "tasks.jigsaw.options.gird=2"]) == 2
    assert "unknown key 'gird'" in capsys.readouterr().err


def test_encoder_files_say_what_wrote_them(tmp_path: Path) -> None:
    encoder = p3.models.UNetEncoder(3, widths=(4, 8))
    p3.models.save_encoder(encoder, tmp_path / "e.pt")
    info = p3.models.encoder_info(tmp_path / "e.pt")
    assert info["format"] == "pretext3d-encoder-v1" and info["pretext3d_version"] == p3.__version__
    assert info["encoder"] == "unet" and info["config"]["widths"] == (4, 8)
    assert info["parameters"] == sum(v.numel() for v in encoder.state_dict().values())


def test_the_positive_control_is_pretrained_with_labels_on_cases_of_its_own(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_reproduction(_tiny(out, positive_control=6), progress=False, log=lambda _: None)
    rows = read_runs(out)
    assert {r["method"] for r in rows} == {"scratch", "rotation", "supervised"}
    record = p3.provenance.read_pretraining_record(out / "encoders" / "supervised_p0.pt")
    assert record is not None and record["positive_control"] and len(record["pretraining_cases"]) == 6
    labelled = {c for r in rows for c in r["labelled_cases"] + r["test_cases"]["case_id"]}
    assert not labelled & set(record["pretraining_cases"])  # separate cases, so the leak check passes
    assert p3.models.encoder_name(out / "encoders" / "supervised_p0.pt") == "unet"
    assert "## Positive control" in (out / "summary.md").read_text()
    with pytest.raises(ConfigError, match="positive_control applies to the phantom data"):
        from_mapping(Reproduction, {"data": {"kind": "task07", "path": "x"}, "positive_control": 4})


@pytest.mark.parametrize(("lead", "verdict"), [(0.2, "beats `scratch` at 5% labels"), (0.0, "does not beat")])
def test_the_summary_says_whether_the_positive_control_transfers(
    tmp_path: Path, lead: float, verdict: str
) -> None:
    from tests.conftest import result_row

    rows = []
    for split in range(4):
        for method, value in (("scratch", 0.3 + 0.01 * split), ("supervised", 0.3 + lead + 0.02 * split)):
            row = result_row(method, 0.05, split, value)
            row.update(seconds=1.0, pretraining_seed=0, train={}, history=[])
            rows.append(row)
    p3.experiments.write_report(rows, tmp_path, "m", synthetic=True)
    summary = (tmp_path / "summary.md").read_text()
    assert "## Positive control" in summary and verdict in summary
    if lead == 0.0:
        assert "say nothing about the pretext tasks" in summary


def test_workers_split_the_encoders_wait_for_a_live_one_and_take_over_a_dead_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    from pretext3d.experiments import reproduce
    from pretext3d.provenance import write_pretraining_record

    made: list[str] = []

    def maker(path: Path) -> Callable[[], object]:
        def make() -> object:
            made.append(path.name)
            path.write_bytes(b"weights")
            return write_pretraining_record(path, case_ids=[])

        return make

    a, b, c = (tmp_path / f"{name}.pt" for name in "abc")
    host = socket.gethostname()
    (tmp_path / "a.pt.lock").write_text(f"{host} {os.getpid()}\n")  # a live worker holds a
    (tmp_path / "c.pt.lock").write_text(f"{host} 999999999\n")  # c's worker died
    lines: list[str] = []

    def other_worker_finishes_a(seconds: float) -> None:  # while this worker waits
        a.write_bytes(b"weights")
        write_pretraining_record(a, case_ids=[])
        (tmp_path / "a.pt.lock").unlink()

    monkeypatch.setattr(reproduce.time, "sleep", other_worker_finishes_a)
    reproduce._make_encoders([(a, maker(a)), (b, maker(b)), (c, maker(c))], lines.append)
    assert made == ["b.pt", "c.pt"]  # a was left to its live worker, c taken over
    assert lines == [
        f"removed {tmp_path / 'c.pt.lock'}, the lock of a killed worker",
        "waiting for 1 encoder(s) that other workers are pretraining",
    ]
    assert not list(tmp_path.glob("*.lock"))
    reproduce._make_encoders([(a, maker(a)), (b, maker(b))], lines.append)  # all made: nothing to do
    assert made == ["b.pt", "c.pt"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_issue_39_an_unavailable_pretraining_device_is_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    config = _tiny(tmp_path / "out")
    config.pretrain = PretrainConfig(steps=2, batch_size=2, device="cuda", eval_every=2, progress=False)
    with pytest.raises(ValueError, match="cuda"):
        run_reproduction(config, progress=False, log=lambda line: None)
    assert not (tmp_path / "out").exists()
