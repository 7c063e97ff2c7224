"""Training-step time of MultiScaleUNet against MONAI's FlexibleUNet on the same ResNet-10.

One optimizer step (forward, mean-square loss, backward, Adam) of each model at ``--size``³,
batch ``--batch``, on the CPU by default; the best of ``--repeats`` steps after one warm-up.
The encoder is MONAI's ``resnet10`` as FlexibleUNet builds it (7³ stem of stride 2, then max
pooling); the MultiScaleUNet rows read its stem and four stages. "old widths" is the default
before issue 28 (each skip's channels: 64 at the finest scale).

    python benchmarks/multiscale.py [--size 64] [--batch 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import time

import torch
from monai.networks.nets import FlexibleUNet, resnet10
from torch import nn

from pretext3d.models import MultiScaleUNet


def step_seconds(model: nn.Module, x: torch.Tensor, repeats: int) -> float:
    optimizer = torch.optim.Adam(model.parameters())
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        model(x).float().pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    return min(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    x = torch.randn(args.batch, 1, *(args.size,) * 3)
    stages = ["act", "layer1", "layer2", "layer3", "layer4"]

    def encoder() -> nn.Module:
        torch.manual_seed(0)
        return resnet10(spatial_dims=3, n_input_channels=1, feed_forward=False, conv1_t_stride=2)

    models = {
        "FlexibleUNet (MONAI)": FlexibleUNet(
            in_channels=1, out_channels=3, backbone="resnet10", spatial_dims=3
        ),
        "MultiScaleUNet, default widths": MultiScaleUNet(encoder(), 3, stages=stages),
        "MultiScaleUNet, old widths": MultiScaleUNet(
            encoder(), 3, stages=stages, decoder_widths=[64, 64, 128, 256]
        ),
    }
    reference = None
    print(f"{args.size}^3, batch {args.batch}, {torch.get_num_threads()} CPU threads")
    print("| model | decoder widths | parameters (M) | step (s) | x FlexibleUNet |\n|---|---|---|---|---|")
    for name, model in models.items():
        seconds = step_seconds(model, x, args.repeats)
        reference = reference or seconds
        widths = [s[0].out_channels for s in model.stages] if isinstance(model, MultiScaleUNet) else "16-256"
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"| {name} | {widths} | {params:.2f} | {seconds:.2f} | {seconds / reference:.2f} |")


if __name__ == "__main__":
    main()
