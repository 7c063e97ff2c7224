"""Exemplar augmenter throughput against a per-sample scipy pipeline, and miner cost.

Part 1: volumes/s of :class:`~pretext3d.transforms.ExemplarAugmenter` (default parameters)
on a ``(2, 1, 128, 128, 128)`` batch on the CPU, next to the paper's pipeline style
timed in the same run: per sample, numpy flips and quarter turns, ``scipy.ndimage.rotate``
per plane and ``scipy.ndimage.zoom`` (cropped or padded back), brightness and contrast,
on one core, with the same probabilities. scipy is timed with linear interpolation
(order 1, what the augmenter does) and with its default cubic splines (order 3).

Part 2: time and peak memory of each miner at 256 and 4096 embeddings (128-D, two
views per instance), each in a fresh process.

    python benchmarks/exemplar.py [--size 128] [--batch 2] [--scipy-volumes 8]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import scipy.ndimage as ndi
import torch

from pretext3d.transforms import ExemplarAugmenter


def scipy_augment(volume: np.ndarray, rng: np.random.Generator, order: int) -> np.ndarray:
    """One volume through the per-sample pipeline, with the augmenter's default probabilities."""
    out = volume
    for axis in range(out.ndim):
        if rng.random() < 0.5:
            out = np.flip(out, axis)
    planes = [(0, 1), (0, 2), (1, 2)]
    for plane in planes:
        if rng.random() < 0.5:
            out = np.rot90(out, int(rng.integers(1, 4)), axes=plane)
    for plane in planes:
        if rng.random() < 0.5:
            out = ndi.rotate(out, rng.uniform(-45, 45), axes=plane, reshape=False, order=order)
    if rng.random() < 0.15:
        zoomed = ndi.zoom(out, rng.uniform(0.8, 1.2, size=3), order=order)
        fitted = np.zeros_like(volume)
        region = tuple(slice(0, min(a, b)) for a, b in zip(zoomed.shape, volume.shape, strict=True))
        fitted[region] = zoomed[region]
        out = fitted
    if rng.random() < 0.5:
        mean = out.mean()
        out = (out - mean) * rng.uniform(0.5, 1.5) + mean
    if rng.random() < 0.5:
        out = out + rng.uniform(-0.125, 0.125)
    return np.ascontiguousarray(out)


def miner_run(name: str, size: int) -> dict[str, float]:
    from pretext3d import objectives as miners

    miner = getattr(miners, name)()
    gen = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(size, 128, generator=gen), dim=1)
    labels = torch.arange(size // 2).repeat(2)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(3):
        start = time.perf_counter()
        triplets = miner(emb, labels, generator=gen)
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"ms": 1e3 * min(times), "peak_mib": (peak - before) / 1024, "triplets": len(triplets[0])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scipy-volumes", type=int, default=8)
    parser.add_argument("--miner", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.miner:
        print(json.dumps(miner_run(args.miner[0], int(args.miner[1]))))
        return

    x = torch.randn(args.batch, 1, args.size, args.size, args.size)
    augmenter = ExemplarAugmenter(3)
    gen = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}; batch {tuple(x.shape)} float32")
    threads = torch.get_num_threads()
    for n in sorted({threads, 1}, reverse=True):
        torch.set_num_threads(n)
        augmenter(x, gen)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            augmenter(x, gen)
            times.append(time.perf_counter() - start)
        ours = args.batch / float(np.median(times))
        print(f"ExemplarAugmenter, {n} thread(s): {ours:8.1f} volumes/s")
    torch.set_num_threads(threads)

    rng = np.random.default_rng(0)
    volume = x[0, 0].numpy()
    for order in (1, 3):
        start = time.perf_counter()
        for _ in range(args.scipy_volumes):
            scipy_augment(volume, rng, order)
        rate = args.scipy_volumes / (time.perf_counter() - start)
        print(
            f"scipy per-sample pipeline, order {order}, 1 core: {rate:8.2f} volumes/s "
            f"(augmenter on 1 thread: {ours / rate:4.1f}x this)"
        )

    print("\nminers (128-D unit embeddings, two views per instance):")
    print(f"{'miner':>24} {'embeddings':>10} {'ms':>9} {'peak MiB':>9} {'triplets':>9}")
    for name in ("RandomNegativeMiner", "BatchHardMiner", "SemiHardMiner", "DistanceWeightedMiner"):
        for size in (256, 4096):
            cmd = [sys.executable, __file__, "--miner", name, str(size)]
            r = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
            print(f"{name:>24} {size:>10} {r['ms']:9.1f} {r['peak_mib']:9.1f} {r['triplets']:>9}")


if __name__ == "__main__":
    main()
