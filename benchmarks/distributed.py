"""Pretraining steps/s with 1 and 2 processes (gloo on the CPU, NCCL on GPUs) and the cost of gathering.

Each process runs ``--steps`` steps of the :class:`~pretext3d.pretrainer.Pretrainer` on random
volumes in memory with a per-process batch of ``--batch``; the table gives optimizer steps/s
and images/s over all processes, for rotation (gradients all-reduced only) and for exemplar
with and without gathering its embeddings across processes.

    python benchmarks/distributed.py                 # CPU, gloo
    python benchmarks/distributed.py --device cuda   # one GPU per process, NCCL
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pretrain import Volumes  # benchmarks/pretrain.py, beside this script

import pretext3d as p3
from pretext3d.pretrainer import PretrainConfig, Pretrainer


def task(name: str) -> Any:
    if name == "rotation":
        return p3.tasks.Rotation(3)
    return p3.tasks.Exemplar(3, gather=name == "exemplar+gather")


def measure(rank: int, world: int, args: dict[str, Any], name: str, out: str) -> None:
    if world > 1:
        torch.set_num_threads(max(1, torch.get_num_threads() // world))
        backend = "nccl" if args["device"] == "cuda" else "gloo"
        dist.init_process_group(backend, init_method=args["init"], rank=rank, world_size=world,
                                timeout=timedelta(seconds=120))  # fmt: skip
    try:
        torch.manual_seed(0)
        encoder = p3.models.UNetEncoder(3, 1, (8, 16, 32))
        steps = args["steps"]
        config = PretrainConfig(steps=steps, batch_size=args["batch"], device=args["device"], progress=False,
                                eval_every=10**6, checkpoint_every=10**6, log_every=10**6)  # fmt: skip
        with tempfile.TemporaryDirectory() as folder:
            data = Volumes(args["batch"] * world * steps, args["size"])
            trainer = Pretrainer(encoder, task(name), data, config, Path(folder) / "e.pt", log=lambda s: None)
            start = time.perf_counter()
            trainer.fit()
            seconds = time.perf_counter() - start
        if rank == 0:
            Path(out).write_text(json.dumps({"seconds": seconds}))
    finally:
        if world > 1:
            p3.engine.end_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    args = vars(parser.parse_args())
    head = f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args['size']}^3, "
    print(
        head
        + f"batch {args['batch']} per process, {args['steps']} steps, small U-Net, device {args['device']}"
    )
    print(f"{'task':18s} {'processes':>9s} {'steps/s':>8s} {'images/s':>9s}")
    for name in ("rotation", "exemplar", "exemplar+gather"):
        for world in (1, 2):
            with tempfile.TemporaryDirectory() as folder:
                out = str(Path(folder) / "result.json")
                run = {**args, "init": f"file://{Path(folder) / 'store'}"}
                if world == 1:
                    measure(0, 1, run, name, out)
                else:
                    mp.spawn(measure, args=(world, run, name, out), nprocs=world, join=True)
                seconds = json.loads(Path(out).read_text())["seconds"]
            rate = args["steps"] / seconds
            print(f"{name:18s} {world:9d} {rate:8.2f} {rate * args['batch'] * world:9.1f}")


if __name__ == "__main__":
    main()
