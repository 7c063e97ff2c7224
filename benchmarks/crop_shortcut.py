"""What the grid tasks' crop defends, by crop range: one tile's cell from its statistics (SYNTHETIC).

Prints the shortcut score (:func:`pretext3d.diagnostics.shortcut_score`, as a multiple of
chance; the flag is 1.5x) of ``Jigsaw(grid=2, num_permutations=4)`` with its other defaults,
for crops of 40-70 % up to none, on noise images with a bright border at the start of every
axis (the worst case: the border names every cell). It is why the crop is not raised for
small images (issue 38; docs/tasks/index.md, "Small images").

    python benchmarks/crop_shortcut.py
"""

from __future__ import annotations

import torch

import pretext3d as p3
from pretext3d.diagnostics import shortcut_score

RANGES: list[tuple[float, float] | None] = [(0.4, 0.7), (0.5, 0.8), (0.6, 0.9), (0.7, 1.0), (0.8, 1.0), None]


def bordered(spatial_dims: int, size: int, count: int = 32) -> torch.Tensor:
    """``(count, 1, *size)`` noise with a bright 2-voxel border at the start of every axis."""
    x = torch.rand(count, 1, *(size,) * spatial_dims, generator=torch.Generator().manual_seed(0))
    for axis in range(spatial_dims):
        index = [slice(None)] * (2 + spatial_dims)
        index[2 + axis] = slice(0, 2)
        x[tuple(index)] += 4.0
    return x


def main() -> None:
    torch.set_num_threads(1)
    print("shortcut score / chance, SYNTHETIC bordered noise, Jigsaw(grid=2, num_permutations=4):")
    print(
        f"{'images (tile)':16s}"
        + "".join(f"{'none' if r is None else f'{r[0]:.0%}-{r[1]:.0%}':>10s}" for r in RANGES)
    )
    for spatial_dims, size in [(2, 16), (2, 32), (3, 24)]:
        images = bordered(spatial_dims, size)
        scores = []
        for crop_scale in RANGES:
            task = p3.tasks.Jigsaw(spatial_dims, grid=2, num_permutations=4, crop_scale=crop_scale)
            report = shortcut_score(task, images)
            scores.append(report.score / report.chance)
        tile = p3.tasks.Jigsaw(spatial_dims, grid=2, num_permutations=4).geometry((size,) * spatial_dims)[1][
            0
        ]
        label = f"{spatial_dims}D {size} ({tile})"
        print(f"{label:16s}" + "".join(f"{s:9.2f}x" for s in scores))


if __name__ == "__main__":
    main()
