"""The data-efficiency runner: resume, fair baseline, seeds, provenance, pretraining records."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import pytest
import torch

import pretext3d as p3
from pretext3d.experiments import (
    DataEfficiencyConfig,
    GradingRecipe,
    read_runs,
    run_data_efficiency,
    split_cases,
    write_report,
)
from pretext3d.finetune import (
    TrainConfig,
)
from pretext3d.provenance import case_key, write_pretraining_record

SMALL_TRAIN = TrainConfig(epochs=2, steps_per_epoch=2, batch_size=2, freeze_encoder_epochs=1)


SMALL_GRADING = GradingRecipe(block_config=(1, 1), growth_rate=4, init_features=8)


def _small_encoder(path: Path, seed: int, cases: list[str] | None = None) -> Path:
    torch.manual_seed(seed)
    encoder = p3.models.DenseNetEncoder(2, 3, growth_rate=4, block_config=(1, 1), init_features=8)
    p3.models.save_encoder(encoder, path)
    if cases is not None:
        write_pretraining_record(path, case_ids=cases, pretext_accuracy=0.5 + seed / 100)
    return path


@pytest.fixture(scope="module")
def fundus() -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    images, grades = p3.data.fundus_phantom_batch(24, 32, seed=0)
    return images, grades, [f"img{i}" for i in range(24)]


def test_runner_resumes_without_repeating_or_losing_runs(
    tmp_path: Path, fundus: tuple[torch.Tensor, torch.Tensor, list[str]]
) -> None:
    images, grades, ids = fundus
    config = DataEfficiencyConfig(fractions=(0.5, 1.0), split_seeds=(0, 1), train=SMALL_TRAIN)
    pretrained = [_small_encoder(tmp_path / f"enc{k}.pt", k, ["other1", "other2"]) for k in range(2)]
    methods = {"scratch": None, "pre": pretrained}
    kwargs = {"case_ids": ids, "progress": False}

    full = run_data_efficiency(
        SMALL_GRADING, images, grades, methods, config, tmp_path / "full", log=lambda s: None, **kwargs
    )

    finished: list[str] = []

    def crash_after_three(line: str) -> None:
        if ": qwk" in line:
            finished.append(line)
            if len(finished) == 3:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_data_efficiency(
            SMALL_GRADING, images, grades, methods, config, tmp_path / "out", log=crash_after_three, **kwargs
        )
    assert len(list((tmp_path / "out" / "runs").glob("*.json"))) == 3
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out" / "runs").glob("*.json")}
    lines: list[str] = []
    rows = run_data_efficiency(
        SMALL_GRADING, images, grades, methods, config, tmp_path / "out", log=lines.append, **kwargs
    )
    # 2 split seeds x 2 fractions x (scratch + 2 pretraining seeds)
    assert "12 runs, 3 already done" in lines[0]
    keys = {(r["method"], r["pretraining_seed"], r["split_seed"], r["fraction"]) for r in rows}
    assert len(rows) == 12 and len(keys) == 12
    for p in (tmp_path / "out" / "runs").glob("*.json"):  # finished runs were not redone
        if p.name in before:
            assert p.stat().st_mtime_ns == before[p.name]
    assert [r["test"] for r in rows] == [r["test"] for r in full]  # same numbers as without the crash
    assert {r["pretext_accuracy"] for r in rows if r["method"] == "pre"} == {0.5, 0.51}
    # within a (split, repetition, fraction) cell every method gets the same cases and seeds
    for r in rows:
        twin = next(
            q
            for q in rows
            if q["method"] == "scratch"
            and (q["split_seed"], q["fraction"]) == (r["split_seed"], r["fraction"])
        )
        assert r["labelled_cases"] == twin["labelled_cases"] and r["seeds"] == twin["seeds"]
        assert r["test_cases"]["case_id"] == twin["test_cases"]["case_id"]
    # per-case scores behind the summary
    for r in rows:
        assert len(r["test_cases"]["correct"]) == r["n_test"]
        assert r["test"]["accuracy"] == pytest.approx(sum(r["test_cases"]["correct"]) / r["n_test"])
    assert read_runs(tmp_path / "out") == rows  # the same rows, in the grid's order, without running
    files = write_report(rows, tmp_path / "out", "qwk", synthetic=True)
    names = {f.name for f in files}
    assert names == {
        "results.csv",
        "cases.csv",
        "results.json",
        "summary.md",
        "data_efficiency.png",
        "learning_curves.png",
    }
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "SYNTHETIC" in summary and "| pre | 50% |" in summary and "2 split seed(s) [0, 1]" in summary
    assert (
        "encoder frozen for the first 0 epochs" in summary
        and "encoder frozen for the first 1 epochs" in summary
    )
    cases = (tmp_path / "out" / "cases.csv").read_text().splitlines()
    assert len(cases) == 1 + sum(r["n_test"] for r in rows) and cases[0].startswith("method,pretraining_seed")
    with pytest.raises(ValueError, match="holds runs made with other settings"):
        other = DataEfficiencyConfig(fractions=(0.5,), split_seeds=(0, 1), train=SMALL_TRAIN)
        run_data_efficiency(
            SMALL_GRADING, images, grades, methods, other, tmp_path / "out", log=lambda s: None, **kwargs
        )


def test_scratch_is_never_frozen_and_budgets_match(
    tmp_path: Path, fundus: tuple[torch.Tensor, torch.Tensor, list[str]]
) -> None:
    images, grades, ids = fundus
    config = DataEfficiencyConfig(fractions=(1.0,), split_seeds=(0,), train=SMALL_TRAIN)
    methods = {"scratch": None, "pre": _small_encoder(tmp_path / "enc.pt", 0, [])}
    rows = run_data_efficiency(
        SMALL_GRADING, images, grades, methods, config, tmp_path / "o", case_ids=ids, progress=False,
        log=lambda s: None,
    )  # fmt: skip
    frozen = {r["method"]: [h["encoder_frozen"] for h in r["history"]] for r in rows}
    assert frozen == {"scratch": [False, False], "pre": [True, False]}
    assert {r["method"]: r["train"]["freeze_encoder_epochs"] for r in rows} == {"scratch": 0, "pre": 1}
    # the pretrained arm's head starts as a linear probe of its features; scratch's never does
    assert {r["method"]: r["head_fitted"] for r in rows} == {"scratch": False, "pre": True}
    write_report(rows, tmp_path / "o", "qwk", synthetic=True)
    protocol = (tmp_path / "o" / "summary.md").read_text().split("## Protocol")[1].split("\n- ")
    fitted = "head fitted to the frozen features first in 1 of 1 runs"
    assert [fitted in line for line in protocol[1:3]] == [False, True]  # scratch, pre
    unfitted = dataclasses.replace(config, fit_head=False)
    again = run_data_efficiency(
        SMALL_GRADING, images, grades, methods, unfitted, tmp_path / "n", case_ids=ids, progress=False,
        log=lambda s: None,
    )  # fmt: skip
    assert {r["method"]: r["head_fitted"] for r in again} == {"scratch": False, "pre": False}
    by = {r["method"]: r["history"][0]["loss"] for r in again}
    assert by["pre"] != {r["method"]: r["history"][0]["loss"] for r in rows}["pre"]
    # the baseline may have its own schedule, but never a freeze, and the same budget and seed
    own = TrainConfig(epochs=2, steps_per_epoch=2, batch_size=2, lr=3e-3)
    assert DataEfficiencyConfig(train=SMALL_TRAIN, baseline_train=own).settings_for(False).lr == 3e-3
    with pytest.raises(ValueError, match=r"baseline_train\.freeze_encoder_epochs must be 0"):
        DataEfficiencyConfig(train=SMALL_TRAIN, baseline_train=SMALL_TRAIN)
    with pytest.raises(ValueError, match=r"baseline_train\.epochs must equal train\.epochs"):
        DataEfficiencyConfig(train=SMALL_TRAIN, baseline_train=TrainConfig(epochs=5))
    with pytest.raises(ValueError, match="split_seeds must not repeat"):
        DataEfficiencyConfig(split_seeds=(1, 1))


def test_changing_train_seed_changes_the_run(
    tmp_path: Path, fundus: tuple[torch.Tensor, torch.Tensor, list[str]]
) -> None:
    images, grades, ids = fundus
    rows = {}
    for seed in (0, 123):
        train = TrainConfig(epochs=1, steps_per_epoch=2, batch_size=2, seed=seed)
        config = DataEfficiencyConfig(fractions=(1.0,), split_seeds=(0,), train=train)
        (row,) = run_data_efficiency(
            SMALL_GRADING, images, grades, {"scratch": None}, config, tmp_path / str(seed), case_ids=ids,
            progress=False, log=lambda s: None,
        )  # fmt: skip
        rows[seed] = row
    assert rows[0]["labelled_cases"] == rows[123]["labelled_cases"]
    assert rows[0]["seeds"]["init"] != rows[123]["seeds"]["init"]
    assert rows[0]["history"][0]["loss"] != rows[123]["history"][0]["loss"]


def test_provenance_is_recorded_and_a_mismatch_refuses_reuse(
    tmp_path: Path, fundus: tuple[torch.Tensor, torch.Tensor, list[str]]
) -> None:
    images, grades, ids = fundus
    config = DataEfficiencyConfig(fractions=(1.0,), split_seeds=(0,), train=SMALL_TRAIN)
    encoder = _small_encoder(tmp_path / "enc.pt", 0, ["x"])
    methods = {"scratch": None, "pre": encoder}

    def run(imgs: torch.Tensor = images, info: dict[str, int] | None = None) -> list[dict[str, object]]:
        return run_data_efficiency(
            SMALL_GRADING, imgs, grades, methods, config, tmp_path / "o", case_ids=ids,
            data_info=info or {"size": 32}, progress=False, log=lambda s: None,
        )  # fmt: skip

    rows = run()
    prov = rows[1]["provenance"]
    assert prov["data"]["info"] == {"size": 32} and len(prov["data"]["sha256"]) == 64
    env = prov["environment"]
    assert env["torch"] == torch.__version__ and env["threads"] == torch.get_num_threads()
    assert env["pretext3d"] == p3.__version__ and env["device"] == "cpu"
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(p3.__file__).parent
    )
    if head.returncode == 0:  # run from a git checkout (as in CI): the commit of the library's source
        assert env["git_commit"] in (head.stdout.strip(), head.stdout.strip() + "-dirty")
    assert rows[1]["encoder"]["sha256"] == p3.provenance.file_sha256(encoder)
    assert rows[1]["encoder"]["pretraining"]["pretraining_cases"] == ["x"]
    config_json = json.loads((tmp_path / "o" / "config.json").read_text())
    assert config_json["data"]["sha256"] == prov["data"]["sha256"]
    with pytest.raises(ValueError, match=r"changed: data\.info\.size"):
        run(info={"size": 24})
    with pytest.raises(ValueError, match=r"changed: data\.sha256"):
        run(images + 0.01)
    _small_encoder(encoder, 7, ["x"])  # re-pretrained into the same file
    with pytest.raises(ValueError, match=r"methods\.pre"):
        run()


def test_encoders_pretrained_on_test_cases_are_refused(
    tmp_path: Path, fundus: tuple[torch.Tensor, torch.Tensor, list[str]]
) -> None:
    images, grades, ids = fundus
    config = DataEfficiencyConfig(fractions=(1.0,), split_seeds=(0,), train=SMALL_TRAIN)
    split = split_cases(24, 0.15, 0.25, 0, strata=grades.tolist())
    test_case = ids[split.test[0]]
    # a folder loader's name for the same scan matches too
    leaky = _small_encoder(tmp_path / "leaky.pt", 0, ["unrelated", f"train_images__{test_case}.png"])
    with pytest.raises(ValueError, match=r"pretrained on 1 validation/test case\(s\) of split seed 0"):
        run_data_efficiency(
            SMALL_GRADING, images, grades, {"pre": leaky}, config, tmp_path / "a", case_ids=ids,
            progress=False, log=lambda s: None,
        )  # fmt: skip
    allowed = DataEfficiencyConfig(fractions=(1.0,), split_seeds=(0,), train=SMALL_TRAIN, transductive=True)
    (row,) = run_data_efficiency(  # the refused grid left nothing behind: the same folder accepts it now
        SMALL_GRADING, images, grades, {"pre": leaky}, allowed, tmp_path / "a", case_ids=ids,
        progress=False, log=lambda s: None,
    )  # fmt: skip
    assert row["transductive"] is True
    # pretraining on the training pool only is fine
    train_only = [ids[i] for i in split.train]
    fine = _small_encoder(tmp_path / "fine.pt", 0, train_only)
    (row,) = run_data_efficiency(
        SMALL_GRADING, images, grades, {"pre": fine}, config, tmp_path / "c", case_ids=ids,
        progress=False, log=lambda s: None,
    )  # fmt: skip
    assert row["transductive"] is False


@pytest.mark.parametrize(
    "name", ["imagesTr__pancreas_001.nii.gz", "pancreas_001_0000", "pancreas_001", "a/pancreas_001.npy"]
)
def test_case_key_matches_loader_names(name: str) -> None:
    assert case_key(name) == "pancreas_001"


def test_arms_with_different_step_budgets_are_refused_unless_asked_for() -> None:
    train = TrainConfig(epochs=4, steps_per_epoch=10, batch_size=4, freeze_encoder_epochs=1)
    with pytest.raises(ValueError, match=r"step budget .* = 80 images\) differs from train's \(160\)"):
        DataEfficiencyConfig(
            train=train, baseline_train=TrainConfig(epochs=4, steps_per_epoch=5, batch_size=4)
        )
    with pytest.raises(ValueError, match="differs from train's"):
        DataEfficiencyConfig(
            train=train, baseline_train=TrainConfig(epochs=4, steps_per_epoch=10, batch_size=2)
        )
    config = DataEfficiencyConfig(
        train=train,
        baseline_train=TrainConfig(epochs=4, steps_per_epoch=5, batch_size=4),
        different_budgets=True,
    )
    assert config.different_budgets and config.settings_for(False).steps_per_epoch == 5
    assert DataEfficiencyConfig(
        train=train, baseline_train=TrainConfig(epochs=4, steps_per_epoch=20, batch_size=2)
    )


def test_run_flags() -> None:
    from pretext3d.experiments.runner import run_flag

    assert run_flag(0, False) == "epoch-0" and run_flag(0, None) is None  # no validation: nothing to judge
    assert run_flag(4, False) == "budget" and run_flag(4, True) is None


def test_the_learning_rate_search_chooses_on_validation_for_every_arm(tmp_path: Path) -> None:
    images, grades = p3.data.fundus_phantom_batch(24, size=32, seed=3)
    train = TrainConfig(
        epochs=2, steps_per_epoch=2, batch_size=4, freeze_encoder_epochs=1, encoder_lr_factor=0.5
    )
    config = DataEfficiencyConfig(fractions=(1.0,), split_seeds=(0,), train=train, lr_search=(1e-4, 3e-3))
    assert config.settings_for(False).encoder_lr_factor == 1.0  # the random encoder is not slowed
    rows = run_data_efficiency(SMALL_GRADING, images, grades, {"scratch": None}, config, tmp_path,
                               progress=False, log=lambda _: None)  # fmt: skip
    search = rows[0]["lr_search"]
    assert [c["lr"] for c in search] == [1e-4, 3e-3] and sum(c["chosen"] for c in search) == 1
    chosen = next(c for c in search if c["chosen"])
    assert chosen["best_val"] == max(c["best_val"] for c in search) == rows[0]["best_val"]
    assert rows[0]["train"]["lr"] == chosen["lr"]
    assert not list((tmp_path / "checkpoints").iterdir())  # the candidates' files are gone
    write_report(rows, tmp_path, "qwk", synthetic=True)
    assert "lr chosen on validation from [0.0001, 0.003] in each run" in (tmp_path / "summary.md").read_text()
    with pytest.raises(ValueError, match="lr_search chooses on validation cases"):
        DataEfficiencyConfig(lr_search=(1e-3,), val_fraction=0.0)
    with pytest.raises(ValueError, match="distinct learning rates > 0"):
        DataEfficiencyConfig(lr_search=(1e-3, 1e-3))


def test_an_interrupted_learning_rate_search_repeats_no_finished_candidate(tmp_path: Path) -> None:
    images, grades = p3.data.fundus_phantom_batch(24, size=32, seed=3)
    train = TrainConfig(epochs=1, steps_per_epoch=2, batch_size=4)
    config = DataEfficiencyConfig(fractions=(1.0,), split_seeds=(0,), train=train, lr_search=(1e-4, 3e-3))
    run = lambda: run_data_efficiency(SMALL_GRADING, images, grades, {"scratch": None}, config, tmp_path,  # noqa: E731
                                      progress=False, log=lambda _: None)  # fmt: skip
    row = run()[0]
    # as if killed after the second candidate finished: its result is kept, the run's row not written
    finished = {k: v for k, v in row.items() if k != "lr_search"} | {"best_val": 2.0}
    (tmp_path / "checkpoints" / "scratch__p0__s0__r0__f1.lr0.003.json").write_text(json.dumps(finished))
    (tmp_path / "runs" / "scratch__p0__s0__r0__f1.json").unlink()
    again = run()[0]
    assert again["best_val"] == 2.0  # the kept candidate, not a rerun of it
    assert [c["chosen"] for c in again["lr_search"]] == [False, True]
    assert not list((tmp_path / "checkpoints").iterdir())
