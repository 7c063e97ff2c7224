"""Throughput of the tasks that rebuild whole volumes against the copy limit, and permutation-set quality.

Prints volumes/s for each task on a ``(batch, 1, size, size, size)`` float32 batch on
the CPU next to a plain ``clone()`` of the same batch (the cost of touching every voxel
once, allocation included), then the time and Hamming distances of permutation sets.

With the default allocator, a fresh 64 MB output costs about 16 ms of page faults on
first touch, more than the copy itself (1.4 ms); run with ``THP_MEM_ALLOC_ENABLE=1``
(PyTorch's switch for huge pages on the CPU) to see the kernels' own cost.

The grid tasks are also timed beside a NumPy jigsaw cut the way the original 3D code cuts it
(Python loops over volumes and cells, one jittered slice per cell, no defences): ours, defended,
should be at least as fast.

    python benchmarks/tasks.py [--size 128] [--batch 8] [--repeats 15] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

import pretext3d as p3


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median of ``repeats`` timed calls after one warm-up call.

    The median, not the minimum: each task call draws new labels, and the cost of a
    rotation depends on which classes were drawn.
    """
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def numpy_jigsaw(
    volumes: np.ndarray, permutations: np.ndarray, rng: np.random.Generator, grid: int = 3, jitter: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """A 3D jigsaw as the original's NumPy code cuts it: per volume and cell a jittered slice, shuffled.

    Args:
        volumes: ``(B, C, D, H, W)``.
        permutations: ``(classes, grid**3)`` cell orders.
        rng: the random draws (labels and jitter).
        grid: cells per axis.
        jitter: the largest offset of a patch in its cell (patches are ``cell - jitter``).

    Returns:
        ``(tiles (B, grid**3, C, *patch), labels (B,))``.
    """
    cell = [n // grid for n in volumes.shape[2:]]
    patch = [k - jitter for k in cell]
    labels = rng.integers(len(permutations), size=len(volumes))
    tiles = np.empty((len(volumes), grid**3, volumes.shape[1], *patch), volumes.dtype)
    for i, volume in enumerate(volumes):
        for slot, index in enumerate(permutations[labels[i]]):
            corner = [
                k * c + int(o)
                for k, c, o in zip(
                    np.unravel_index(index, (grid,) * 3), cell, rng.integers(jitter + 1, size=3), strict=True
                )
            ]
            tiles[i, slot] = volume[
                :,
                corner[0] : corner[0] + patch[0],
                corner[1] : corner[1] + patch[1],
                corner[2] : corner[2] + patch[2],
            ]
    return tiles, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    x = torch.randn(args.batch, 1, args.size, args.size, args.size)
    gen = torch.Generator().manual_seed(0)
    huge_pages = os.environ.get("THP_MEM_ALLOC_ENABLE", "0") == "1"
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {tuple(x.shape)} float32, "
        f"THP_MEM_ALLOC_ENABLE={int(huge_pages)} (huge pages {'on' if huge_pages else 'off'})"
    )

    copy = median_seconds(x.clone, args.repeats)
    print(f"{'clone() (copy limit)':34s} {args.batch / copy:8.1f} volumes/s   1.00x copy")
    tasks: dict[str, p3.tasks.PretextTask[Any, Any]] = {
        "Rotation taleb10": p3.tasks.Rotation(3, "taleb10"),
        "Rotation cube24": p3.tasks.Rotation(3, "cube24"),
        "Rotation plane4": p3.tasks.Rotation(3, "plane4"),
        "Jigsaw 3x3x3, 100 perms (defaults)": p3.tasks.Jigsaw(3),
        "Jigsaw, defences off (jitter 3)": p3.tasks.Jigsaw(3, jitter=3, **p3.tasks.NO_DEFENCES),
        "RelativePatchLocation 3x3x3 (defaults)": p3.tasks.RelativePatchLocation(3),
        "RelativePatchLocation, defences off": p3.tasks.RelativePatchLocation(
            3, jitter=3, **p3.tasks.NO_DEFENCES
        ),
        "ModelsGenesis (defaults)": p3.tasks.ModelsGenesis(3),
        "MaskedImageModeling (patch 16)": p3.tasks.MaskedImageModeling(3, patch=16),
    }
    for name, task in tasks.items():
        for check in (True, False):
            task.check_finite = check
            seconds = median_seconds(lambda task=task: task(x, generator=gen), args.repeats)
            label = name + ("" if check else " (no NaN check)")
            print(f"{label:34s} {args.batch / seconds:8.1f} volumes/s   {copy / seconds:4.2f}x copy")

    volumes, rng = x.numpy(), np.random.default_rng(0)
    permutations = p3.tasks.Jigsaw(3).permutations.numpy()
    seconds = median_seconds(lambda: numpy_jigsaw(volumes, permutations, rng), args.repeats)
    label = "NumPy jigsaw, the original's way"
    print(f"{label:34s} {args.batch / seconds:8.1f} volumes/s   {copy / seconds:4.2f}x copy")

    print("\npermutation sets (first call, uncached):")
    for cells, count, method in [
        (27, 100, "auto"),
        (27, 100, "random"),
        (9, 100, "auto"),
        (9, 100, "random"),
        (8, 100, "auto"),
        (64, 100, "auto"),
        (27, 1000, "auto"),
    ]:
        p3.permutations._cached_set.cache_clear()
        start = time.perf_counter()
        perms = p3.permutations.permutation_set(cells, count, method=method)  # type: ignore[arg-type]
        seconds = time.perf_counter() - start
        stats = p3.permutations.hamming_stats(perms)
        print(
            f"  {count:5d} of {cells:3d} cells, {method:6s}: min distance {stats.min:3d}, "
            f"mean {stats.mean:7.3f}, {seconds * 1e3:8.1f} ms"
        )


if __name__ == "__main__":
    main()
