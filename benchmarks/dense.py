"""What a dense task costs in a pretraining step: view generation's share and the dense head's step time.

For rotation, Models Genesis and masked image modelling on a ``(batch, 1, size, size, size)``
batch with the paper's full-width U-Net encoder (16-256) on the CPU (or ``--device``), one
optimizer step (views, forward, loss, backward, Adam) is timed after a warm-up, split into the
view generation and the rest. Prints seconds per step, the views' share of it, and each step's
time against rotation's (whose head is a small classifier): issue 37's targets are a share of at
most 10 % and a dense step of at most 1.5x rotation's. The last row is masked modelling with a
slimmer decoder (a quarter of the default's widths, ``DenseHead(decoder_widths=...)``).

    python benchmarks/dense.py                      # 128^3, batch 8, full width: the paper's setting
    python benchmarks/dense.py --size 64 --batch 4  # quicker
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

import pretext3d as p3

WIDTHS = (16, 32, 64, 128, 256)  # the paper's full-width U-Net encoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    x = torch.rand(args.batch, 1, *[args.size] * 3, generator=torch.Generator().manual_seed(0)).to(device)
    mim = p3.tasks.MaskedImageModeling(3, patch=16)
    # (task, the dense head's decoder widths: None the default, else a slimmer decoder)
    tasks: dict[str, tuple[p3.tasks.PretextTask[Any, Any], tuple[int, ...] | None]] = {
        "rotation": (p3.tasks.Rotation(3), None),
        "genesis": (p3.tasks.ModelsGenesis(3), None),
        "mim": (mim, None),
        "mim, decoder 1/4": (mim, tuple(w // 4 for w in WIDTHS[:-1])),
    }
    print(
        f"torch {torch.__version__} on {device} ({torch.get_num_threads()} threads); {args.size}^3, batch "
        f"{args.batch}, full-width U-Net encoder; median of {args.repeats} steps after one warm-up"
    )
    print(f"{'task':18s} {'views s':>8s} {'step s':>8s} {'views share':>12s} {'step / rotation':>16s}")
    rotation_step = None
    for name, (task, decoder_widths) in tasks.items():
        torch.manual_seed(0)
        encoder = p3.models.UNetEncoder(3, widths=WIDTHS)
        head = None if decoder_widths is None else p3.models.DenseHead(encoder, decoder_widths=decoder_widths)
        model = p3.PretextModel(encoder, task, head=head).to(device)
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)
        generator = torch.Generator().manual_seed(0)
        views_s, steps_s = [], []
        for repeat in range(args.repeats + 1):
            start = time.perf_counter()
            views, targets = task(x, generator)
            if device.type == "cuda":
                torch.cuda.synchronize()
            made = time.perf_counter()
            loss = task.loss(model(views), targets)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            done = time.perf_counter()
            if repeat:  # the first is the warm-up
                views_s.append(made - start)
                steps_s.append(done - start)
        view, step = statistics.median(views_s), statistics.median(steps_s)
        rotation_step = rotation_step or step
        print(f"{name:18s} {view:8.2f} {step:8.2f} {100 * view / step:11.1f}% {step / rotation_step:15.2f}x")


if __name__ == "__main__":
    main()
