"""Forward+backward time and peak memory of the paper's 3D U-Net on the CPU.

For each volume size, runs one training step (forward, Dice-free mean-square loss,
backward) of the full-width 3D U-Net (widths 16-256, 5.6 M parameters) in a fresh
process per configuration: plain, with activation checkpointing, with bf16 autocast,
and with both. Peak memory is the process's peak resident size minus its size before
the step (model, input and optimizer-free weights already allocated), so it measures
the step's activations and gradients. "Saved" is the memory of the tensors autograd keeps
for backward at the end of the forward pass (the activation memory that checkpointing
trades for recomputation), counted exactly with ``saved_tensors_hooks``.

    python benchmarks/backbones.py [--sizes 64 128] [--batch 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def run_one(size: int, batch: int, repeats: int, checkpointing: bool, autocast: bool) -> dict[str, float]:
    """One configuration, measured in this process (call it in a fresh one)."""
    import contextlib

    import torch

    from pretext3d.models import UNet

    torch.manual_seed(0)
    model = UNet(3, 1, 3, checkpointing=checkpointing)
    x = torch.randn(batch, 1, size, size, size)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    times = []
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    for i in range(repeats):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        cast = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        hooks = (
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
            if i == 0
            else contextlib.nullcontext()
        )
        with cast, hooks:
            out = model(x)
        out.float().square().mean().backward()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "seconds": min(times),
        "peak_mib": (peak - before) / 1024,
        "saved_mib": sum(saved.values()) / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        size, ckpt, cast = json.loads(args.one)
        print(json.dumps(run_one(size, args.batch, args.repeats, ckpt, cast)))
        return

    import torch

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; 3D U-Net 16-256, batch {args.batch}"
    )
    print(
        f"{'size':>5} {'checkpointing':>13} {'bf16 autocast':>13} {'step s':>8} {'time x':>7} "
        f"{'saved MiB':>9} {'saved /':>8} {'peak MiB':>9} {'peak /':>7}"
    )
    for size in args.sizes:
        base: dict[str, float] = {}
        for ckpt, cast in [(False, False), (True, False), (False, True), (True, True)]:
            cmd = [
                sys.executable,
                __file__,
                "--batch",
                str(args.batch),
                "--repeats",
                str(args.repeats),
                "--one",
                json.dumps([size, ckpt, cast]),
            ]
            result = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
            base = base or result
            print(
                f"{size:>4}^3 {ckpt!s:>13} {cast!s:>13} {result['seconds']:8.2f} "
                f"{result['seconds'] / base['seconds']:7.2f} {result['saved_mib']:9.0f} "
                f"{base['saved_mib'] / result['saved_mib']:8.2f} {result['peak_mib']:9.0f} "
                f"{base['peak_mib'] / result['peak_mib']:7.2f}"
            )


if __name__ == "__main__":
    main()
