"""The pretrainer: exact resume after a kill, streaming through workers, several tasks, bf16, records."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

import pretext3d as p3
from pretext3d import engine
from pretext3d.data import PhantomImages, VolumeFolder, write_task07_phantom
from pretext3d.diagnostics import pretext_warning
from pretext3d.models import ConvEncoder
from pretext3d.pretrainer import PretrainConfig, Pretrainer
from pretext3d.tasks import Jigsaw, Rotation
from pretext3d.training import TaskSpec

RUN = {"steps": 6, "batch_size": 4, "crop": 16, "log_every": 1, "eval_every": 3, "checkpoint_every": 2,
       "progress": False, "device": "cpu"}  # fmt: skip


def trainer(tmp: Path, tasks: Any = None, data: Any = None, **options: Any) -> Pretrainer:
    torch.manual_seed(0)
    encoder = ConvEncoder(3, widths=(4, 8))
    data = data if data is not None else PhantomImages("ct", 12, 24, seed=3)
    held = PhantomImages("ct", 4, 24, seed=4)
    config = PretrainConfig(**{**RUN, **options})
    return Pretrainer(encoder, tasks if tasks is not None else Rotation(3), data, config, tmp / "enc.pt",
                      held_out=held, log=lambda line: None)  # fmt: skip


def weights(t: Pretrainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in t.models.state_dict().items()}


def without_timing(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in ("images_per_s", "data_wait")} for r in rows]


def test_a_killed_run_resumes_to_the_same_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    full = trainer(tmp_path / "full")
    full.fit()
    reference = weights(full)
    log = engine.MetricsLog.log

    def kill_at_step_5(self: engine.MetricsLog, row: dict[str, Any]) -> None:
        log(self, row)
        if row["step"] == 5:
            raise KeyboardInterrupt  # as a kill: the last checkpoint is step 4

    monkeypatch.setattr(engine.MetricsLog, "log", kill_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        trainer(tmp_path / "killed").fit()
    monkeypatch.setattr(engine.MetricsLog, "log", log)
    resumed = trainer(tmp_path / "killed")
    lines: list[str] = []
    resumed.log = lines.append
    resumed.fit()
    assert any("resumed from" in line and "at step 4/6" in line for line in lines)
    assert all(torch.equal(reference[k], v) for k, v in weights(resumed).items())
    rows = resumed.metrics.rows()
    assert without_timing(rows) == without_timing(full.metrics.rows())  # the log as if never killed
    # one CSV row per step: the held-out evaluation joins its step's training row
    steps = {r["step"] for r in rows}
    assert len(steps) < len(rows)
    assert (tmp_path / "killed" / "enc.pt.run" / "metrics.csv").read_text().count("\n") == len(steps) + 1


def test_streaming_from_nifti_files_through_two_workers(tmp_path: Path) -> None:
    root = write_task07_phantom(tmp_path / "data", num_train=0, num_test=8, size=24)
    raw = p3.data.CTPreprocessing(spacing=None, crop=None, dtype="float32")
    folder = VolumeFolder(root / "imagesTs", preprocessing=raw)
    two = trainer(tmp_path / "two", data=folder, num_workers=2, steps=3)
    record = two.fit()
    one = trainer(tmp_path / "one", data=folder, num_workers=0, steps=3)
    one.fit()
    # crops are a function of (seed, epoch, index): the workers do not change what the model sees
    assert all(torch.equal(v, weights(one)[k]) for k, v in weights(two).items())
    saved = json.loads((tmp_path / "two" / "enc.pt.json").read_text())
    assert saved["pretraining_cases"][:8] == folder.case_ids and record["tasks"] == ["rotation"]
    assert isinstance(p3.models.load_encoder(tmp_path / "two" / "enc.pt"), ConvEncoder)


def test_several_tasks_on_one_encoder(tmp_path: Path) -> None:
    jigsaw = Jigsaw(3, grid=2, num_permutations=6, jitter=1)
    both = trainer(
        tmp_path / "both", [Rotation(3), TaskSpec(jigsaw, 0.5, name="jigsaw")], steps=20, eval_every=20
    )
    record = both.fit()
    rows = [r for r in both.metrics.rows() if "loss/rotation" in r]
    assert {"loss/rotation", "loss/jigsaw", "accuracy/jigsaw"} <= set(rows[-1])
    assert record["tasks"] == ["rotation", "jigsaw"] and record["task_weights"] == [1.0, 0.5]
    first = sum(r["loss/jigsaw"] for r in rows[:5]) / 5
    last = sum(r["loss/jigsaw"] for r in rows[-5:]) / 5
    assert last < first, (first, last)
    # one task in a list is the single-task run; a second task with weight 0 leaves the first
    # task's trajectory alone (each task draws from its own generator)
    single = trainer(tmp_path / "single", Rotation(3))
    single.fit()
    listed = trainer(tmp_path / "listed", [TaskSpec(Rotation(3), 1.0, name="rotation")])
    listed.fit()
    assert all(torch.equal(v, weights(single)[k]) for k, v in weights(listed).items())
    zero = trainer(
        tmp_path / "zero", [Rotation(3), TaskSpec(Jigsaw(3, grid=2, num_permutations=6, jitter=1), 0.0)]
    )
    zero.fit()
    params = dict(single.models["rotation"].named_parameters())
    assert all(torch.equal(p, params[n]) for n, p in zero.models["rotation"].named_parameters())
    alternating = trainer(
        tmp_path / "alt", [Rotation(3), TaskSpec(jigsaw, 1.0, name="jigsaw")], task_mode="alternate"
    )
    alternating.fit()
    steps = {r["step"]: r for r in alternating.metrics.rows() if "lr" in r}
    assert "loss/rotation" in steps[1] and "loss/jigsaw" not in steps[1] and "loss/jigsaw" in steps[2]


def test_bf16_autocast_on_the_cpu(tmp_path: Path) -> None:
    run = trainer(tmp_path, precision="bf16", steps=3)
    before = weights(run)
    run.fit()
    after = weights(run)
    assert run.precision == "bf16" and any(not torch.equal(before[k], after[k]) for k in before)
    assert all(v.dtype in (torch.float32, torch.int64) for v in after.values())
    assert all(
        r.get("loss/rotation", 0.0) == r.get("loss/rotation", 0.0) for r in run.metrics.rows()
    )  # no NaN


def test_schedule_warmup_then_cosine(tmp_path: Path) -> None:
    run = trainer(tmp_path, steps=10, warmup_steps=2, lr=0.1)
    factors = [run.optim.scheduler.lr_lambdas[0](s) for s in range(10)]  # the schedule the optimizer follows
    assert factors[0] == pytest.approx(1 / 3) and factors[1] == pytest.approx(2 / 3) and factors[2] == 1.0
    assert factors[2] > factors[5] > factors[9] > 0.0
    constant = trainer(tmp_path / "c", steps=10, schedule="constant")
    assert [constant.optim.scheduler.lr_lambdas[0](s) for s in range(10)] == [1.0] * 10


def test_warnings_at_chance_and_when_solved() -> None:
    assert pretext_warning(Rotation(3), 0.11) is not None and "chance" in str(
        pretext_warning(Rotation(3), 0.11)
    )
    assert "solved outright" in str(pretext_warning(Rotation(3), 0.995))
    assert pretext_warning(Rotation(3), 0.6) is None
    # with the held-out size: 8 images cannot tell 0 from chance nor 1.0 from 0.875 (the issue's run)
    assert pretext_warning(Rotation(3), 0.0, count=8) is None
    assert pretext_warning(Rotation(3), 1.0, count=8) is None
    assert pretext_warning(Rotation(3), 1.0, count=15) is None  # below MIN_HELD_OUT = 16
    assert "95 % interval 0.943-1.000" in str(pretext_warning(Rotation(3), 1.0, count=64))
    assert "chance 0.100" in str(pretext_warning(Rotation(3), 0.11, count=64))
    # 0.14 on 400 images: its interval (0.109-0.177) lies above chance: something is learned
    assert pretext_warning(Rotation(3), 0.14, count=400) is None
    assert pretext_warning(Rotation(3), 0.14) is not None  # (without a size: the rule of thumb)


def test_wilson_interval_matches_the_formula() -> None:
    from pretext3d.diagnostics import wilson_interval

    low, high = wilson_interval(0.5, 100)  # a textbook value: 0.404-0.596
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)
    assert wilson_interval(0.0, 10)[0] == 0.0 and wilson_interval(1.0, 10)[1] == 1.0


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"steps": 0}, "steps"),
        ({"steps": None}, "exactly one of steps and epochs"),
        ({"epochs": 2}, "exactly one of steps and epochs"),
        ({"optimizer": "lion"}, "optimizer"),
        ({"lr": float("inf")}, "lr"),
        ({"precision": "fp8"}, "precision"),
        ({"accumulate": 0}, "accumulate"),
        ({"grad_clip": 0.0}, "grad_clip"),
        ({"device": "gpu"}, "device must be 'auto', 'cpu', 'cuda'"),
        ({"schedule": "step"}, "schedule"),
    ],
)
def test_bad_settings_are_named(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PretrainConfig(**options)


def test_a_gpu_config_is_built_anywhere_and_refused_when_it_runs(tmp_path: Path) -> None:
    config = PretrainConfig(
        steps=1, batch_size=2, device="cuda:7", progress=False
    )  # checked for its form only
    assert config.device == "cuda:7"
    with pytest.raises(ValueError, match="device 'cuda:7' is not available"):
        Pretrainer(p3.models.UNetEncoder(3, widths=(4, 8)), Rotation(3), PhantomImages("ct", 4, 16), config,
                   tmp_path / "enc.pt", log=lambda line: None)  # fmt: skip


def test_bad_runs_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="fewer than batch_size=4"):
        trainer(tmp_path, data=PhantomImages("ct", 2, 24))
    with pytest.raises(ValueError, match="task names must differ"):
        trainer(tmp_path, [Rotation(3), Rotation(3)])
    with pytest.raises(ValueError, match="one spatial dimension"):
        trainer(tmp_path, [Rotation(3), TaskSpec(Rotation(2), 1.0, name="r2")])
    with pytest.raises(ValueError, match="differ in shape"):
        trainer(tmp_path, data=_Uneven(), crop=0).fit()
    # an unfinished checkpoint of other settings is refused, not silently continued; a finished
    # run of other settings is replaced by the new one
    log = engine.MetricsLog.log

    def kill(self: engine.MetricsLog, row: dict[str, Any]) -> None:
        log(self, row)
        if row["step"] == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(engine.MetricsLog, "log", kill)
    with pytest.raises(KeyboardInterrupt):
        trainer(tmp_path / "a", steps=4, checkpoint_every=1).fit()
    monkeypatch.setattr(engine.MetricsLog, "log", log)
    with pytest.raises(
        ValueError,
        match=r"holds an unfinished run of other settings or tasks \(changed: checkpoint_every, lr\)",
    ):
        trainer(tmp_path / "a", steps=4, lr=0.5).fit()
    # a finished run of other settings is refused too (it was silently replaced), unless restart
    trainer(tmp_path / "b", steps=2).fit()
    with pytest.raises(
        ValueError, match=r"holds a finished run .*\(changed: lr\).*or more steps to continue it"
    ):
        trainer(tmp_path / "b", steps=2, lr=0.5).fit()
    lines: list[str] = []
    again = trainer(tmp_path / "b", steps=2, lr=0.5, restart=True)
    again.log = lines.append
    assert again.fit()["config"]["lr"] == 0.5
    assert any("(changed: lr); starting over" in line for line in lines)
    assert [r["step"] for r in again.metrics.rows() if "loss/rotation" in r] == [1, 2]  # the new run's only
    resumed: list[str] = []  # restart = true resumes a checkpoint of its own settings
    killed = trainer(tmp_path / "a", steps=4, lr=0.5, restart=True, checkpoint_every=1)
    killed.log = resumed.append
    monkeypatch.setattr(engine.MetricsLog, "log", kill)
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    monkeypatch.setattr(engine.MetricsLog, "log", log)
    again = trainer(tmp_path / "a", steps=4, lr=0.5, restart=True, checkpoint_every=1)
    again.log = resumed.append
    again.fit()
    assert any("resumed from" in line and "at step 2/4" in line for line in resumed), resumed


def test_a_finished_run_given_more_steps_continues_from_its_final_state(tmp_path: Path) -> None:
    short = trainer(tmp_path, steps=4, schedule="cosine", log_every=1)
    short.fit()
    final = weights(short)
    lines: list[str] = []
    longer = trainer(tmp_path, steps=6, schedule="cosine", log_every=1)
    longer.log = lines.append
    longer._resume()
    assert longer.step == 4 and all(torch.equal(v, final[k]) for k, v in weights(longer).items())
    assert longer.optim.lr == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 6)) * 1e-3)  # not 0
    assert any("continuing the finished run of 4 steps to 6 from its final state" in line for line in lines)
    record = longer.fit()
    assert record["steps"] == 6 and record["config"]["steps"] == 6
    assert [r["step"] for r in longer.metrics.rows() if "loss/rotation" in r] == [1, 2, 3, 4, 5, 6]
    with pytest.raises(ValueError, match=r"changed: lr, steps"):  # more steps and anything else: refused
        trainer(tmp_path, steps=8, schedule="cosine", log_every=1, lr=0.3).fit()


class _Uneven(torch.utils.data.Dataset[torch.Tensor]):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.zeros(1, 16 + i, 16, 16)


def test_rerunning_a_finished_run_changes_nothing(tmp_path: Path) -> None:
    first = trainer(tmp_path)
    record = first.fit()
    rows = first.metrics.rows()
    again = trainer(tmp_path)
    assert again.fit()["held_out"] == record["held_out"]
    assert again.metrics.rows() == rows and all(
        torch.equal(v, weights(first)[k]) for k, v in weights(again).items()
    )


# --- round two (issue 26): kills, resumes of other settings, bad runs


def test_a_kill_during_the_log_append_or_a_write_leaves_nothing_a_rerun_does_not_clean_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = engine.MetricsLog.log

    def killed_mid_append(self: engine.MetricsLog, row: dict[str, Any]) -> None:
        if row["step"] == 5:
            with open(self.jsonl, "a") as handle:  # what SIGKILL during the append leaves
                handle.write(json.dumps(row)[:17])
            raise KeyboardInterrupt
        log(self, row)

    monkeypatch.setattr(engine.MetricsLog, "log", killed_mid_append)
    with pytest.raises(KeyboardInterrupt):
        trainer(tmp_path / "killed", steps=6, log_every=1, checkpoint_every=2).fit()
    monkeypatch.setattr(engine.MetricsLog, "log", log)
    run = tmp_path / "killed" / "enc.pt.run"
    assert not (run / "metrics.jsonl").read_text().endswith("\n")  # half a row
    (run / ".checkpoint.pt.999999999.tmp").write_bytes(b"half a checkpoint")  # a killed save
    (tmp_path / "killed" / ".enc.pt.999999999.tmp").write_bytes(b"half an encoder")
    resumed = trainer(tmp_path / "killed", steps=6, log_every=1, checkpoint_every=2)
    resumed.fit()
    assert [r["step"] for r in resumed.metrics.rows() if "loss/rotation" in r] == [1, 2, 3, 4, 5, 6]
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_row_spanning_a_checkpoint_is_logged_as_if_never_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = {"log_every": 3, "checkpoint_every": 2, "eval_every": 6}
    full = trainer(tmp_path / "full", **options)
    full.fit()
    real = Pretrainer._after_step

    def kill_after_step_4(self: Pretrainer) -> dict[str, float]:
        out = real(self)
        if self.step == 4:  # checkpoint at 4, inside the row of steps 4-6
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(Pretrainer, "_after_step", kill_after_step_4)
    with pytest.raises(KeyboardInterrupt):
        trainer(tmp_path / "killed", **options).fit()
    monkeypatch.setattr(Pretrainer, "_after_step", real)
    resumed = trainer(tmp_path / "killed", **options)
    resumed.fit()
    assert without_timing(resumed.metrics.rows()) == without_timing(full.metrics.rows())


def test_a_resume_of_other_settings_names_them_and_other_workers_are_fine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = engine.MetricsLog.log

    def kill(self: engine.MetricsLog, row: dict[str, Any]) -> None:
        log(self, row)
        if row["step"] == 3:
            raise KeyboardInterrupt

    def killed(folder: str, **kwargs: Any) -> Path:
        monkeypatch.setattr(engine.MetricsLog, "log", kill)
        with pytest.raises(KeyboardInterrupt):
            trainer(tmp_path / folder, **kwargs).fit()
        monkeypatch.setattr(engine.MetricsLog, "log", log)
        return tmp_path / folder

    jig = Jigsaw(3, grid=2, num_permutations=4, jitter=1)
    killed("j", tasks=jig)
    with pytest.raises(ValueError, match=r"jigsaw's settings \(jitter=1 -> jitter=2\)"):
        trainer(tmp_path / "j", Jigsaw(3, grid=2, num_permutations=4, jitter=2)).fit()
    killed("r")
    with pytest.raises(ValueError, match=r"rotation's settings \(num_classes=10 rotations='taleb10' -> "):
        trainer(tmp_path / "r", Rotation(3, rotations="cube24")).fit()
    with pytest.raises(ValueError, match=r"data \(other training images: the encoder's record would miss"):
        trainer(tmp_path / "r", data=PhantomImages("ct", 12, 24, seed=5)).fit()
    torch.manual_seed(0)
    wider = Pretrainer(ConvEncoder(3, widths=(8, 16)), Rotation(3), PhantomImages("ct", 12, 24, seed=3),
                       PretrainConfig(**RUN), tmp_path / "r" / "enc.pt", log=lambda line: None)  # fmt: skip
    with pytest.raises(ValueError, match=r"parameter shapes, an encoder or head of other widths \(\d+"):
        wider.fit()
    resumed = trainer(tmp_path / "r", num_workers=1)  # loader processes do not change the result
    lines: list[str] = []
    resumed.log = lines.append
    resumed.fit()
    assert any("resumed from" in line for line in lines)


class _Paths(torch.utils.data.Dataset[str]):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> str:
        return f"scan{i}.nii.gz"


def test_round_two_bad_runs_are_named_before_training(tmp_path: Path) -> None:
    empty = torch.utils.data.TensorDataset(torch.zeros(0, 1))
    with pytest.raises(ValueError, match="held_out must hold at least one image"):
        Pretrainer(ConvEncoder(3, widths=(4, 8)), Rotation(3), PhantomImages("ct", 8, 24),
                   PretrainConfig(**RUN), tmp_path / "e.pt", held_out=empty)  # fmt: skip
    (tmp_path / "dir.pt").mkdir()
    for output in (tmp_path / "dir.pt", Path("")):
        with pytest.raises(ValueError, match="is a directory: give the encoder's file path"):
            Pretrainer(ConvEncoder(3, widths=(4, 8)), Rotation(3), PhantomImages("ct", 8, 24),
                       PretrainConfig(**RUN), output)  # fmt: skip
    with pytest.raises(TypeError, match=r"item 0 is a str, not an image.*VolumeFolder"):
        trainer(tmp_path / "s", data=_Paths()).fit()
    with pytest.raises(ValueError, match=r"batch_size=1 is too small for exemplar: it needs >= 2"):
        trainer(tmp_path / "x", p3.tasks.Exemplar(3), batch_size=1)
    with pytest.raises(ValueError, match=r"task weights are all 0 \(\['rotation'\]\)"):
        trainer(tmp_path / "w", TaskSpec(Rotation(3), 0.0))
    with pytest.raises(ValueError, match=r"crop=64 is larger than the data set's item 0 .* 98 % of each"):
        trainer(tmp_path / "c", data=PhantomImages("ct", 8, 16), crop=64).fit()
    unet = p3.models.UNetEncoder(3, widths=(4, 8, 16, 32))
    with pytest.raises(ValueError, match=r"cannot take jigsaw's views of shape \(4, 27, 1, 5, 5, 5\).*crop"):
        Pretrainer(unet, Jigsaw(3, grid=3, num_permutations=4), PhantomImages("ct", 8, 16),
                   PretrainConfig(**RUN), tmp_path / "j.pt", log=lambda line: None).fit()  # fmt: skip


def test_several_tasks_are_recorded_each_beside_its_chance_level(tmp_path: Path) -> None:
    from pretext3d.experiments import accuracy_summary

    data = p3.data.PhantomImages("ct", count=8, size=24)
    config = PretrainConfig(steps=2, batch_size=2, device="cpu", progress=False, shortcut_check=0)
    tasks = [Rotation(3), p3.tasks.Jigsaw(3, grid=2, num_permutations=24)]
    record = Pretrainer(p3.models.ConvEncoder(3, widths=(4, 8)), tasks, data, config, tmp_path / "e.pt",
                        held_out=p3.data.PhantomImages("ct", count=4, size=24, first=8),
                        log=lambda line: None).fit()  # fmt: skip
    assert record["tasks"] == ["rotation", "jigsaw"]
    assert record["pretext_accuracy"] is None  # one number for two chance levels would mislead
    assert record["chance"] == {"rotation": 0.1, "jigsaw": pytest.approx(1 / 24)}
    held = record["held_out"]
    assert record["pretext_accuracies"] == {n: held[f"held_out_accuracy/{n}"] for n in ("rotation", "jigsaw")}
    summary = accuracy_summary(record)
    assert (
        summary.startswith("rotation ")
        and "(chance 0.100), jigsaw " in summary
        and "(chance 0.042)" in summary
    )


def test_a_resumed_run_tells_tensorboard_to_drop_the_steps_it_logs_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys
    import types

    writers: list[dict[str, Any]] = []

    class Writer:  # stands in for torch.utils.tensorboard.SummaryWriter (tensorboard is an extra)
        def __init__(self, log_dir: str, purge_step: int | None = None) -> None:
            writers.append({"dir": log_dir, "purge_step": purge_step, "steps": []})

        def add_scalar(self, key: str, value: float, step: int) -> None:
            writers[-1]["steps"].append(step)

        def close(self) -> None:
            pass

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    log = engine.MetricsLog(tmp_path, tensorboard=True)
    for step in (1, 2, 3):
        log.log({"step": step, "loss": 1.0})
    resumed = engine.MetricsLog(tmp_path, tensorboard=True)
    resumed.truncate(2)  # the checkpoint was at step 2; step 3 is logged again
    resumed.log({"step": 3, "loss": 0.5})
    assert [(w["purge_step"], w["steps"]) for w in writers] == [(None, [1, 2, 3]), (3, [3])]


def test_a_rotation_shortcut_is_a_note_and_other_tasks_flags_stay_warnings(tmp_path: Path) -> None:
    """Rotation's flagged score is expected (said once, as what it is); a flagged jigsaw still warns."""
    lines: list[str] = []
    data = PhantomImages("ct", 24, 24, seed=3)
    config = PretrainConfig(**{**RUN, "steps": 1, "crop": 0, "shortcut_check": 24})
    undefended = p3.tasks.Jigsaw(3, grid=2, jitter=1, **p3.tasks.NO_DEFENCES)
    for name, task in (("rotation", Rotation(3)), ("jigsaw", undefended)):
        torch.manual_seed(0)
        Pretrainer(ConvEncoder(3, widths=(4, 8)), task, data, config, tmp_path / name / "enc.pt",
                   log=lines.append).fit()  # fmt: skip
    rotation = next(line for line in lines if "shortcut score of Rotation" in line)
    jigsaw = next(line for line in lines if "shortcut score of Jigsaw" in line)
    assert "ABOVE" in rotation and rotation.startswith("note: ") and "expected for rotation" in rotation
    assert "ABOVE" in jigsaw and jigsaw.startswith("warning: ")


def test_issue_39_one_voxel_tiles_pass_the_start_up_shortcut_check(tmp_path: Path) -> None:
    # RPL tiles of one voxel into a one-stage encoder: trained with shortcut_check=0 before, but the
    # default start-up check died on "views smaller than blocks=2"
    task = p3.tasks.RelativePatchLocation(3, jitter=0, **p3.tasks.NO_DEFENCES)
    run = trainer(tmp_path, tasks=task, crop=3, steps=2, eval_every=2, checkpoint_every=2, shortcut_check=8)
    run.fit()
    scores = json.loads((run.run_dir / "shortcuts.json").read_text())
    assert scores["rpl"]["chance"] == pytest.approx(1 / 26)


def test_issue_39_a_probe_of_other_dimensions_is_named(tmp_path: Path) -> None:
    probe = p3.diagnostics.FeatureProbe(torch.rand(8, 1, 16, 16), torch.tensor([0, 1] * 4))
    with pytest.raises(ValueError, match=r"probe holds 2D images, but the tasks are 3D"):
        Pretrainer(
            ConvEncoder(3, widths=(4, 8)), Rotation(3), PhantomImages("ct", 8, 16), PretrainConfig(**RUN),
            tmp_path / "e.pt", probe=probe, log=lambda line: None,
        )  # fmt: skip
