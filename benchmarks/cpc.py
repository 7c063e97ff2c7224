"""CPC on 128³ volumes on the CPU: examples/s and peak memory.

The paper's 3D setting: a 4x4x4 grid of 32³ patches per 128³ volume, the full-width
3D U-Net encoder (3.5 M parameters) over all 64 patches per volume in one call, the
GRU context and InfoNCE over every position and volume of the batch. Prints the
throughput of the task alone (patch cutting and per-patch augmentation) and of whole
training steps, with the step's peak resident memory.

    python benchmarks/cpc.py [--batch 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

import pretext3d as p3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 1, 128, 128, 128)
    task = p3.tasks.CPC(3)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {tuple(x.shape)}")
    print(f"CPC({task.extra_repr()})")

    task(x, gen)
    start = time.perf_counter()
    for _ in range(args.repeats):
        task(x, gen)
    rate = args.batch * args.repeats / (time.perf_counter() - start)
    print(f"task alone (cut 64 patches + augment): {rate:8.1f} volumes/s")

    model = p3.PretextModel(p3.models.UNetEncoder(3, 1), task)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        views, targets = task(x, gen)
        loss = task.loss(model(views), targets, generator=gen)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step = min(times)
    print(
        f"training step (task + U-Net encoder + CPC head + InfoNCE): {step:6.2f} s, "
        f"{args.batch / step:6.2f} volumes/s, peak memory +{(peak - before) / 1024:.0f} MiB"
    )


if __name__ == "__main__":
    main()
