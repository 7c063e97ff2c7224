"""The pretrainer under torch.distributed: 2 gloo processes on the CPU against one process."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pretext3d.data import PhantomImages
from pretext3d.models import ConvEncoder
from pretext3d.pretrainer import PretrainConfig, Pretrainer
from pretext3d.tasks import CPC, Exemplar, Rotation
from pretext3d.transforms import ExemplarAugmenter


def make_task(name: str) -> Any:
    if name == "rotation":
        return Rotation(3)
    if name == "exemplar":  # negatives gathered over both ranks
        return Exemplar(3, ExemplarAugmenter(3, rotate_p=0.0, zoom_p=0.0), gather=True)
    return CPC(3, grid=2, patch=8, steps=1, code_dim=8, gather=True)


def build(folder: Path, task: Any, steps: int) -> Pretrainer:
    torch.manual_seed(0)
    encoder = ConvEncoder(3, widths=(4, 8), norm="group")  # per-sample norm: ranks = one process
    # SGD: an update linear in the gradient. Adam's first step, g / (|g| + eps), is a full step of
    # either sign for a gradient of float noise, whose digits differ between DDP and one process
    # (and between machines), so one Adam step cannot be compared within a tolerance.
    config = PretrainConfig(
        steps=steps, batch_size=2, crop=16, log_every=1, eval_every=10**6, checkpoint_every=2,
        grad_clip=None, progress=False, device="cpu", shortcut_check=0,  # the views recorded are training's
        optimizer="sgd",
    )  # fmt: skip
    return Pretrainer(
        encoder, task, PhantomImages("ct", 8, 24, seed=3), config, folder / "enc.pt", log=lambda s: None
    )


def _worker(rank: int, init: str, folder: str, name: str, steps: int, kill_at: int) -> None:
    torch.set_num_threads(1)  # two processes on a 2-core machine
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2, timeout=timedelta(seconds=60))
    try:
        task = make_task(name)
        seen: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        forward = task.forward

        def recording(x: torch.Tensor, generator: Any = None) -> Any:
            views, targets = forward(x, generator)
            seen.append((views.detach().clone(), None if targets is None else targets.clone()))
            return views, targets

        task.forward = recording
        trainer = build(Path(folder), task, steps)
        initial = {k: v.clone() for k, v in trainer.models.state_dict().items()}
        if kill_at:
            mean = trainer._mean_over_ranks  # runs on every rank after every step (log_every=1)

            def mean_then_die(row: dict[str, Any]) -> dict[str, Any]:
                out = mean(row)
                if rank == 1 and row["step"] == kill_at:
                    os._exit(3)  # a killed rank
                return out

            trainer._mean_over_ranks = mean_then_die  # type: ignore[method-assign]
        trainer.fit()
        torch.save({"views": seen, "initial": initial, "final": trainer.models.state_dict()},
                   Path(folder) / f"rank{rank}.pt")  # fmt: skip
        dist.barrier()  # no rank leaves while another still talks to it
    except BaseException:
        dist.destroy_process_group()
        raise
    # Leave without running gloo's C++ teardown at interpreter exit, which now and then aborts a
    # process whose work is done and saved (the library ends a group it starts after a barrier).
    os._exit(0)


def run(folder: Path, name: str, steps: int, kill_at: int = 0) -> list[dict[str, Any]]:
    folder.mkdir(parents=True, exist_ok=True)
    init = f"file://{folder / f'store{kill_at}'}"
    mp.spawn(_worker, args=(init, str(folder), name, steps, kill_at), nprocs=2, join=True)
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.parametrize("name", ["rotation", "exemplar", "cpc"])
def test_one_ddp_step_equals_one_step_on_the_concatenated_batch(tmp_path: Path, name: str) -> None:
    ranks = run(tmp_path / "ddp", name, steps=1)
    assert all(torch.equal(v, ranks[1]["final"][k]) for k, v in ranks[0]["final"].items())  # in sync
    (v0, t0), (v1, t1) = ranks[0]["views"][0], ranks[1]["views"][0]
    assert not torch.equal(v0, v1)  # the ranks drew different views
    single = build(tmp_path / "one", make_task(name), steps=1)
    assert all(torch.equal(v, ranks[0]["initial"][k]) for k, v in single.models.state_dict().items())
    targets = None
    if t0 is not None:  # instance ids are made unique per rank when gathered: l * world + rank
        targets = torch.cat([t0 * 2, t1 * 2 + 1]) if name == "exemplar" else torch.cat([t0, t1])
    model = single.models[single.names[0]].train()
    loss = single.core.tasks[0].loss(model(torch.cat([v0, v1])), targets)
    loss.backward()
    single.optim.optimizer.step()
    for key, value in single.models.state_dict().items():
        if value.is_floating_point():  # (not the exemplar's instance counter: no views were drawn here)
            torch.testing.assert_close(value, ranks[0]["final"][key], rtol=1e-4, atol=1e-5, msg=key)


def test_a_killed_rank_resumes_to_the_same_weights(tmp_path: Path) -> None:
    reference = run(tmp_path / "ref", "rotation", steps=4)
    with pytest.raises((mp.ProcessExitedException, mp.ProcessRaisedException)):
        run(tmp_path / "killed", "rotation", steps=4, kill_at=3)  # rank 1 dies after step 3
    resumed = run(tmp_path / "killed", "rotation", steps=4)  # every rank resumes from step 2
    for r in range(2):
        assert all(torch.equal(v, resumed[r]["final"][k]) for k, v in reference[r]["final"].items())
        # each rank's view stream after the checkpoint is the one an unbroken run drew
        assert len(resumed[r]["views"]) == 2
        for (a, _), (b, _) in zip(reference[r]["views"][2:], resumed[r]["views"], strict=True):
            assert torch.equal(a, b)


def test_pretext3d_pretrain_runs_under_torchrun(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    args = [
        "data.count=12",
        "data.size=24",
        "held_out=2",
        "pretrain.steps=4",
        "pretrain.batch_size=2",
        "pretrain.log_every=1",
    ]
    args += ["pretrain.crop=16", "pretrain.progress=false", 'pretrain.device="cpu"']
    args += [f'output="{tmp_path / "enc.pt"}"']
    args += ['tasks=[{name = "rotation"}, {name = "rpl", weight = 0.5, options = {grid = 3, jitter = 0}}]']
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "-m",
        "pretext3d.cli",
        "pretrain",
        "--defaults",
    ]
    for arg in args:
        command += ["--set", arg]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-6000:]  # the rank's own error comes before torchrun's
    assert result.stdout.count("encoder written to") == 1  # rank 0 speaks
    record = json.loads((tmp_path / "enc.pt.json").read_text())
    assert record["tasks"] == ["rotation", "rpl"] and record["steps"] == 4  # two tasks under DDP
    rows = [json.loads(line) for line in (tmp_path / "enc.pt.run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "loss/rotation" in r]
    assert steps == [1, 2, 3, 4]  # one row per step: rank 0 logs, the others do not
