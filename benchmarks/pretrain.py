"""Pretraining throughput and memory per task x configuration, through the Pretrainer.

Each cell runs ``--steps`` optimizer steps of :class:`pretext3d.pretrainer.Pretrainer` on
random volumes held in memory (read through the loader's workers where a configuration has
them) and prints volumes/s over the steps after the first (warm-up, compilation) and the peak
memory: CUDA's ``max_memory_allocated`` on a GPU, the growth of the peak RSS of a fresh process
on the CPU. Configurations (``--configs``):

- ``fp32``, ``fp32-cl``, ``bf16``, ``bf16-cl``: precision x memory layout, eager, no workers;
- ``old-defaults``: what the defaults were before issue 27 (bf16 + channels-last on CUDA, eager,
  no workers);
- ``defaults``: ``PretrainConfig()``'s defaults as a 10,000-step run resolves them (``compile``
  and ``num_workers`` ``"auto"``; the benchmark's own few steps would not switch compile on);
- ``checkpointing``: ``defaults`` with activation checkpointing.

    python benchmarks/pretrain.py                      # CPU: 32^3, batch 4, the small U-Net
    python benchmarks/pretrain.py --size 128 --batch 8 --full --device cuda --steps 30   # the paper's setting
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

import pretext3d as p3
from pretext3d.pretrainer import PretrainConfig, Pretrainer

CONFIGS: dict[str, dict[str, Any]] = {
    "fp32": {"precision": "fp32", "channels_last": False, "compile": False, "num_workers": 0},
    "fp32-cl": {"precision": "fp32", "channels_last": True, "compile": False, "num_workers": 0},
    "bf16": {"precision": "bf16", "channels_last": False, "compile": False, "num_workers": 0},
    "bf16-cl": {"precision": "bf16", "channels_last": True, "compile": False, "num_workers": 0},
    "old-defaults": {"compile": False, "num_workers": 0},
    "defaults": {},
    "checkpointing": {"activation_checkpointing": True},
}


class Volumes(Dataset[torch.Tensor]):
    def __init__(self, count: int, size: int) -> None:
        self.data = torch.randn(count, 1, size, size, size, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.data[i]


def tasks(size: int) -> dict[str, p3.tasks.PretextTask]:  # type: ignore[type-arg]
    grid = 3 if size >= 96 else 2
    return {
        "rotation": p3.tasks.Rotation(3),
        "jigsaw": p3.tasks.Jigsaw(3, grid=grid, num_permutations=24 if grid == 2 else 100, jitter=2),
        "rpl": p3.tasks.RelativePatchLocation(3, grid=3, jitter=1 if size < 96 else 3),
        "exemplar": p3.tasks.Exemplar(3),
        "cpc": p3.tasks.CPC(3, grid=4, patch=size // 4, steps=2),
        "genesis": p3.tasks.ModelsGenesis(3),
        "mim": p3.tasks.MaskedImageModeling(3, patch=max(4, size // 8)),
    }


def cell(task: p3.tasks.PretextTask, args: argparse.Namespace, name: str) -> tuple[float, float]:  # type: ignore[type-arg]
    widths = (16, 32, 64, 128, 256) if args.full else (8, 16, 32)
    encoder = p3.models.UNetEncoder(3, 1, widths)
    settings = dict(CONFIGS[name])
    device = p3.engine.resolve_device(args.device)
    if "compile" not in settings:  # as a 10,000-step run resolves "auto"
        settings["compile"] = p3.engine.resolve_compile("auto", device, 10_000)[0]
    config = PretrainConfig(
        steps=args.steps, batch_size=args.batch, device=args.device, log_every=1, eval_every=10**6,
        checkpoint_every=10**6, progress=False, shortcut_check=0, **settings,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        trainer = Pretrainer(encoder, task, Volumes(args.batch * args.steps, args.size), config,
                             Path(folder) / "enc.pt", log=lambda line: None)  # fmt: skip
        if trainer.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        trainer.fit()
        seconds = time.perf_counter() - start
        rows = [r for r in trainer.metrics.rows() if "images_per_s" in r][1:]  # the first step warms up
        rate = sum(r["images_per_s"] for r in rows) / len(rows) if rows else args.batch * args.steps / seconds
        if trainer.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated() / 2**30
        else:
            peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 2**20  # KiB -> GiB
    return rate, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--full", action="store_true", help="the paper's full-width U-Net encoder")
    parser.add_argument("--tasks", nargs="*", default=None)
    parser.add_argument("--configs", nargs="*", choices=sorted(CONFIGS), default=None,
                        help="default: the four precision x layout cells on the CPU; fp32, old-defaults, "
                        "defaults and checkpointing on CUDA")  # fmt: skip
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # task config, in a fresh process
    args = parser.parse_args()
    if args.one:
        task_name, name = args.one
        rate, peak = cell(tasks(args.size)[task_name], args, name)
        print(json.dumps({"rate": rate, "peak": peak}))
        return
    device = p3.engine.resolve_device(args.device)
    gpu = device.type == "cuda"
    configs = args.configs or (
        ["fp32", "old-defaults", "defaults", "checkpointing"]
        if gpu
        else ["fp32", "fp32-cl", "bf16", "bf16-cl"]
    )
    name = torch.cuda.get_device_name() if gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__} on {name}; {args.size}^3, batch {args.batch}, {args.steps} steps, "
          f"{'full-width' if args.full else 'small'} U-Net encoder")  # fmt: skip
    print(f"{'task':10s} {'config':14s} {'volumes/s':>10s} {'peak GiB':>9s}")
    for task_name in tasks(args.size):
        if args.tasks and task_name not in args.tasks:
            continue
        for config in configs:
            # a fresh process per cell, so that the CPU's peak RSS belongs to this cell alone
            command = [sys.executable, __file__, *sys.argv[1:], "--one", task_name, config]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                print(f"{task_name:10s} {config:14s} failed: {done.stderr.strip().splitlines()[-1:]}")
                continue
            result = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{task_name:10s} {config:14s} {result['rate']:10.1f} {result['peak']:9.2f}")


if __name__ == "__main__":
    main()
