"""The runner under faults: changed data, failed starts, dead writers, bad checkpoints, several workers."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import pretext3d as p3
from pretext3d.cli import main

TINY = [
    "--set", "data.count=12", "--set", "experiment.fractions=[1.0]", "--set", "experiment.split_seeds=[0]",
    "--set", "experiment.train.epochs=1", "--set", "experiment.train.steps_per_epoch=1",
    "--set", "experiment.train.batch_size=2", "--set", "segmentation.crop=16",
]  # fmt: skip


def test_a_change_of_data_or_encoder_refuses_the_old_results(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = ["--set", f'output_dir="{tmp_path / "de"}"']
    assert main(["data-efficiency", "--defaults", *TINY, *out, "--set", "data.size=16"]) == 0
    assert main(["data-efficiency", "--defaults", *TINY, *out, "--set", "data.size=24"]) == 2
    err = capsys.readouterr().err
    assert "holds runs made with other settings" in err and "data.info.size" in err
    assert (
        main(["data-efficiency", "--defaults", *TINY, *out, "--set", "data.size=16", "--set", "data.seed=1"])
        == 2
    )
    # an encoder pretrained again into the same file is another encoder
    encoder = tmp_path / "enc.pt"
    pretrain = [
        "--set",
        "pretrain.steps=1",
        "--set",
        "pretrain.batch_size=2",
        "--set",
        "data.count=6",
        "--set",
        "data.size=16",
        "--set",
        "held_out=2",
    ]
    pretrain += [
        "--set",
        "pretrain.crop=8",
        "--set",
        "pretrain.progress=false",
        "--set",
        f'output="{encoder}"',
    ]
    assert main(["pretrain", "--defaults", *pretrain]) == 0
    enc_out = ["--set", f'output_dir="{tmp_path / "de2"}"', "--set", f'methods.rotation="{encoder}"']
    assert main(["data-efficiency", "--defaults", *TINY, *enc_out, "--set", "data.size=16"]) == 0
    again = ["--set", "pretrain.seed=1", "--set", "pretrain.restart=true"]  # a finished run: on purpose
    assert main(["pretrain", "--defaults", *pretrain, *again]) == 0
    capsys.readouterr()
    assert main(["data-efficiency", "--defaults", *TINY, *enc_out, "--set", "data.size=16"]) == 2
    assert "methods.rotation" in capsys.readouterr().err


def test_a_failed_start_does_not_lock_the_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = ["--set", f'output_dir="{tmp_path / "de"}"', "--set", "data.size=16"]
    # a crop larger than the volumes fails in the first run, after config.json is written
    assert main(["data-efficiency", "--defaults", *TINY, *out, "--set", "segmentation.crop=32"]) == 2
    assert "crop=32 exceeds the volume shape" in capsys.readouterr().err
    assert main(["data-efficiency", "--defaults", *TINY, *out]) == 0
    assert "held other settings but no finished run; it is replaced" in capsys.readouterr().out


def test_stale_temporaries_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    runs = tmp_path / "de" / "runs"
    runs.mkdir(parents=True)
    dead = runs / ".scratch__p0__s0__r0__f1.json.4194000.tmp"  # no such process
    live = runs / f".other.json.{__import__('os').getpid()}.tmp"
    dead.write_text("half")
    live.write_text("being written")
    out = ["--set", f'output_dir="{tmp_path / "de"}"', "--set", "data.size=16"]
    assert main(["data-efficiency", "--defaults", *TINY, *out]) == 0
    assert not dead.exists() and live.exists()


WORKER = textwrap.dedent("""
    import sys
    import pretext3d as p3
    from pretext3d.experiments import DataEfficiencyConfig, GradingRecipe, run_data_efficiency
    from pretext3d.experiments import runner
    from pretext3d.finetune import TrainConfig

    runner._POLL_SECONDS = 0.2
    images, grades = p3.data.fundus_phantom_batch(24, 32, seed=0)
    recipe = GradingRecipe(block_config=(1, 1), growth_rate=4, init_features=8)
    train = TrainConfig(epochs=2, steps_per_epoch=2, batch_size=2)
    config = DataEfficiencyConfig(fractions=(0.25, 0.5, 1.0), split_seeds=(0, 1), train=train)
    with open(sys.argv[2], "w") as log:
        rows = run_data_efficiency(
            recipe, images, grades, {"scratch": None}, config, sys.argv[1], progress=False,
            log=lambda line: print(line, file=log, flush=True),
        )
    print(len(rows))
""")


def test_two_workers_share_one_grid_without_repeating_a_run(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    workers = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / "grid"), str(tmp_path / f"log{k}.txt")],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for k in range(2)
    ]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0]
    assert [o.strip() for o in outputs] == ["6", "6"]  # each returns the whole grid
    ran = [
        line.split(":")[0]
        for k in range(2)
        for line in (tmp_path / f"log{k}.txt").read_text().splitlines()
        if ": qwk" in line
    ]
    assert sorted(ran) == sorted(set(ran)) and len(ran) == 6, ran  # every run exactly once
    assert not list((tmp_path / "grid" / "runs").glob("*.lock"))


def test_a_lock_of_a_dead_worker_is_taken_over(tmp_path: Path) -> None:
    from pretext3d.experiments.locks import RunLock

    path = tmp_path / "run.lock"
    path.write_text(f"{__import__('socket').gethostname()} 4194001\n")  # a killed holder
    with RunLock(path) as claimed:
        assert claimed and path.read_text().split()[1] == str(__import__("os").getpid())
        with RunLock(path) as again:
            assert not again  # held by a live process (this one)
    assert not path.exists()
    path.write_text("elsewhere 1\n")  # another machine's: respected
    with RunLock(path) as claimed:
        assert not claimed


def test_a_lock_whose_pid_was_given_to_another_process_is_taken_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import socket

    from pretext3d import _atomic
    from pretext3d.experiments import locks
    from pretext3d.experiments.locks import RunLock

    # the real identities: stable for a running process, none for a pid that runs nothing
    assert _atomic.process_identity(os.getpid()) == _atomic.process_identity(os.getpid())
    assert _atomic.process_identity(999_999_999) == ""
    # identities as Linux gives them (boot id : start time), on any system
    now = {os.getpid(): "boot-1:500", os.getppid(): "boot-1:100"}
    monkeypatch.setattr(locks, "process_identity", lambda pid: now.get(pid, ""))
    path, host, parent = tmp_path / "run.lock", socket.gethostname(), os.getppid()
    # the parent process runs, but it is not the process that wrote this lock (another start
    # time: what a pid reused after a reboot or in a new container looks like)
    path.write_text(f"{host} {parent} boot-0:100\n")
    with RunLock(path) as claimed:
        assert claimed  # taken over, not waited for forever
        assert path.read_text().split()[2] == "boot-1:500"  # this process's identity recorded
    path.write_text(f"{host} {parent} boot-1:100\n")  # the live holder itself
    with RunLock(path) as claimed:
        assert not claimed
    path.write_text(f"{host} {parent}\n")  # without identity (older, or off Linux): the pid and its beat
    with RunLock(path) as claimed:
        assert not claimed  # a live pid that touched its lock lately: a holder at work
    os.utime(path, (0, time.time() - locks._SILENT_SECONDS - 1))
    with RunLock(path) as claimed:
        assert (
            claimed
        )  # issue 39: a live pid whose lock went silent is another process; waited forever before
    path.write_text("garbage\n")  # not a lock's text: left alone for a minute, as a half-written one
    with RunLock(path) as claimed:
        assert not claimed
    os.utime(path, (0, 0))
    with RunLock(path) as claimed:
        assert claimed


def test_a_held_lock_beats_so_that_it_is_never_taken_for_a_silent_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from pretext3d.experiments import locks

    monkeypatch.setattr(locks, "_HEARTBEAT_SECONDS", 0.05)
    monkeypatch.setattr(locks, "process_identity", lambda pid: "")  # as off Linux
    path = tmp_path / "run.lock"
    with locks.RunLock(path) as claimed:
        assert claimed
        os.utime(path, (0, 0))  # as if silent for ever ...
        deadline = time.time() + 5
        while path.stat().st_mtime < time.time() - 60 and time.time() < deadline:
            time.sleep(0.02)
        assert not locks.RunLock(path).stale()  # ... until the holder's next beat
    assert not path.exists()


def test_corrupt_checkpoints_are_named_and_recomputed(tmp_path: Path) -> None:
    import torch

    from pretext3d.finetune import TrainConfig, Trainer

    def build() -> Trainer:
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)

        def sample(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
            return torch.randn(4, 3, generator=g), torch.randint(0, 2, (4,), generator=g)

        config = TrainConfig(epochs=2, steps_per_epoch=2, batch_size=4)
        return Trainer(model, torch.nn.CrossEntropyLoss(), sample, config, checkpoint=tmp_path / "ck.pt")

    reference = build()
    reference.fit()
    weights = reference.model.weight.detach().clone()
    (tmp_path / "ck.pt").write_bytes(b"truncated by a crash")
    with pytest.warns(UserWarning, match=r"checkpoint '.*ck.pt' cannot be read .* starts over"):
        trainer = build()
    trainer.fit()
    assert torch.equal(trainer.model.weight, weights)


def test_a_non_finite_loss_stops_the_run_naming_the_step() -> None:
    import torch

    from pretext3d.finetune import NonFiniteLossError, TrainConfig, Trainer

    calls = {"n": 0}

    def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return out.sum() * (float("nan") if calls["n"] == 3 else 1.0)

    def sample(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(2, 3, generator=g), torch.zeros(2)

    trainer = Trainer(torch.nn.Linear(3, 1), loss, sample, TrainConfig(epochs=2, steps_per_epoch=2))
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 1, step 0 of 2"):
        trainer.fit()


def test_bad_experiment_settings_are_refused_before_anything_runs(tmp_path: Path) -> None:
    from pretext3d.experiments import DataEfficiencyConfig

    with pytest.raises(ValueError, match="distinct to 6 significant digits"):
        DataEfficiencyConfig(fractions=(0.1, 0.1000001))
    images, labels, _ = p3.data.DataSpec(count=8, size=16).labelled()
    recipe = p3.experiments.SegmentationRecipe(crop=16)
    with pytest.raises(ValueError, match="output_dir must name a folder"):
        p3.experiments.run_data_efficiency(recipe, images, labels, {"s": None}, DataEfficiencyConfig(), "")
    with pytest.raises(ValueError, match="device 'cuda' is not available"):
        p3.experiments.run_data_efficiency(
            recipe, images, labels, {"s": None}, DataEfficiencyConfig(), tmp_path / "x", device="cuda"
        )
    assert not (tmp_path / "x").exists()
    assert json.dumps({}) == "{}"


def test_a_killed_worker_leaves_its_run_to_another(tmp_path: Path) -> None:
    import os
    import signal
    import time

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(script), str(tmp_path / "grid")]
    first = subprocess.Popen(
        [*command, str(tmp_path / "log0.txt")], stdout=subprocess.PIPE, text=True, env=env
    )
    runs = tmp_path / "grid" / "runs"
    deadline = time.time() + 120
    while not list(runs.glob("*.lock")) and time.time() < deadline:  # until it holds a run
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    held = [p.stem for p in runs.glob("*.lock")]
    assert held, "the first worker held no run when killed"
    second = subprocess.run([*command, str(tmp_path / "log1.txt")], capture_output=True, text=True, env=env,
                            timeout=300, check=True)  # fmt: skip
    assert second.stdout.strip() == "6"
    finished = sorted(p.stem for p in runs.glob("*.json"))
    assert len(finished) == 6 and not list(runs.glob("*.lock"))
    done_by_second = [
        line.split(":")[0] for line in (tmp_path / "log1.txt").read_text().splitlines() if ": qwk" in line
    ]
    assert set(held) <= set(done_by_second)  # the killed worker's run was taken over


def test_workers_on_one_folder_write_the_report_once(tmp_path: Path) -> None:
    import os

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [
        sys.executable,
        "-m",
        "pretext3d.cli",
        "data-efficiency",
        "--defaults",
        *TINY,
        "--set",
        "data.size=16",
    ]
    args += ["--set", f'output_dir="{tmp_path / "de"}"', "--set", "experiment.fractions=[0.5, 1.0]"]
    workers = [subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0]
    assert sum("summary.md" in o for o in outputs) == 1, outputs
    assert len(list((tmp_path / "de" / "runs").glob("*.json"))) == 2


def test_what_killed_workers_left_beside_finished_runs_is_removed(tmp_path: Path) -> None:
    import socket

    import pretext3d as p3
    from pretext3d.experiments import DataEfficiencyConfig, GradingRecipe, run_data_efficiency
    from pretext3d.finetune import TrainConfig

    images, grades = p3.data.fundus_phantom_batch(24, 32, seed=0)
    recipe = GradingRecipe(block_config=(1, 1), growth_rate=4, init_features=8)
    config = DataEfficiencyConfig(
        fractions=(1.0,), split_seeds=(0,), train=TrainConfig(epochs=1, steps_per_epoch=1, batch_size=2)
    )

    def run(log: list[str]) -> None:
        run_data_efficiency(recipe, images, grades, {"scratch": None}, config, tmp_path, progress=False,
                            log=log.append)  # fmt: skip

    run([])
    runs, checkpoints = tmp_path / "runs", tmp_path / "checkpoints"
    (runs / "scratch__p0__s0__r0__f1.lock").write_text(f"{socket.gethostname()} 999999999 -\n")
    (checkpoints / "scratch__p0__s0__r0__f1.pt").write_bytes(b"killed after the row was written")
    lines: list[str] = []
    run(lines)
    assert not list(runs.glob("*.lock")) and not list(checkpoints.iterdir())
    assert any("the lock of a killed worker" in line for line in lines)
    assert any("left by a run that had finished" in line for line in lines)


def test_a_method_added_to_a_finished_grid_runs_alone(tmp_path: Path) -> None:
    images, grades = p3.data.fundus_phantom_batch(24, 32)
    recipe = p3.experiments.GradingRecipe(growth_rate=4, block_config=(1, 1), init_features=8)
    config = p3.experiments.DataEfficiencyConfig(
        fractions=(1.0,),
        split_seeds=(0,),
        train=p3.finetune.TrainConfig(epochs=1, steps_per_epoch=1, batch_size=4),
    )
    folder = tmp_path / "grid"
    p3.experiments.run_data_efficiency(
        recipe, images, grades, {"scratch": None}, config, folder, progress=False
    )
    scratch = folder / "runs" / "scratch__p0__s0__r0__f1.json"
    first = scratch.read_text()
    p3.models.save_encoder(recipe.build(3, None)[1], tmp_path / "enc.pt")
    lines: list[str] = []
    methods = {"scratch": None, "other": [str(tmp_path / "enc.pt")]}
    rows = p3.experiments.run_data_efficiency(
        recipe, images, grades, methods, config, folder, progress=False, log=lines.append
    )
    assert [r["method"] for r in rows] == ["scratch", "other"]
    assert scratch.read_text() == first  # kept, not run again
    assert any("adding method(s) other to the grid" in line for line in lines)
    assert not any(line.startswith("scratch__") for line in lines)  # only the new run ran
    changed = p3.experiments.DataEfficiencyConfig(
        fractions=(1.0,),
        split_seeds=(0,),
        train=p3.finetune.TrainConfig(epochs=1, steps_per_epoch=2, batch_size=4),
    )
    with pytest.raises(
        ValueError, match=r"changed: config\.train\.steps_per_epoch"
    ):  # anything else: refused
        p3.experiments.run_data_efficiency(
            recipe,
            images,
            grades,
            {**methods, "third": [str(tmp_path / "enc.pt")]},
            changed,
            folder,
            progress=False,
        )
