"""Pretraining throughput and memory per task x precision x memory layout, through the Pretrainer.

Each cell runs ``--steps`` optimizer steps of :class:`pretext3d.pretrainer.Pretrainer` on
random volumes held in memory (so the loader is not what is measured) and prints
volumes/s over the steps after the first (warm-up, compilation) and the peak memory: CUDA's
``max_memory_allocated`` on a GPU, the growth of the peak RSS of a fresh process on the CPU.

    python benchmarks/pretrain.py                      # CPU: 32^3, batch 4, the small U-Net
    python benchmarks/pretrain.py --size 128 --batch 8 --full --device cuda   # the paper's setting
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

import torch
from torch.utils.data import Dataset

import pretext3d as p3
from pretext3d.pretrainer import PretrainConfig, Pretrainer


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
    }


def cell(
    task: p3.tasks.PretextTask, args: argparse.Namespace, precision: str, layout: bool
) -> tuple[float, float]:  # type: ignore[type-arg]
    widths = (16, 32, 64, 128, 256) if args.full else (8, 16, 32)
    encoder = p3.models.UNetEncoder(3, 1, widths)
    config = PretrainConfig(
        steps=args.steps, batch_size=args.batch, device=args.device, precision=precision,  # type: ignore[arg-type]
        channels_last=layout, log_every=1, eval_every=10**6, checkpoint_every=10**6, progress=False,
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
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)  # task precision layout, in a fresh process
    args = parser.parse_args()
    if args.one:
        task_name, precision, layout = args.one
        rate, peak = cell(tasks(args.size)[task_name], args, precision, layout == "1")
        print(json.dumps({"rate": rate, "peak": peak}))
        return
    device = p3.engine.resolve_device(args.device)
    name = (
        torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    )
    print(f"torch {torch.__version__} on {name}; {args.size}^3, batch {args.batch}, {args.steps} steps, "
          f"{'full-width' if args.full else 'small'} U-Net encoder")  # fmt: skip
    print(f"{'task':10s} {'precision':9s} {'layout':14s} {'volumes/s':>10s} {'peak GiB':>9s}")
    for task_name in tasks(args.size):
        if args.tasks and task_name not in args.tasks:
            continue
        for precision in ("fp32", "bf16"):
            for layout in (False, True):
                # a fresh process per cell, so that the CPU's peak RSS belongs to this cell alone
                command = [
                    sys.executable,
                    __file__,
                    *sys.argv[1:],
                    "--one",
                    task_name,
                    precision,
                    str(int(layout)),
                ]
                result = json.loads(
                    subprocess.run(command, check=True, capture_output=True, text=True).stdout
                )
                rate, peak = result["rate"], result["peak"]
                kind = "channels_last" if layout else "contiguous"
                print(f"{task_name:10s} {precision:9s} {kind:14s} {rate:10.1f} {peak:9.2f}")


if __name__ == "__main__":
    main()
