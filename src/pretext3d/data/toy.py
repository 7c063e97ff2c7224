"""Small synthetic images with a known orientation, for demos and tests.

They are not anatomy and not the built-in CT/fundus phantoms: each is a blurred "body"
ellipsoid holding three landmarks that break every mirror symmetry (a bright "spine" at
the back, a dark "gas" pocket at the front, an "organ" on one side) and, in 3D, an
intensity ramp along axis 0, with per-image pose, size, texture and noise. A pretext
task has something real to learn from them, and nothing about medical images follows
from a result on them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pretext3d._checks import check_int, check_spatial_dims

__all__ = ["toy_images"]


def toy_images(
    count: int,
    spatial_dims: int = 3,
    size: int = 32,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Draw ``count`` synthetic single-channel images (see the module docstring).

    Args:
        count: number of images.
        spatial_dims: 2 or 3.
        size: edge length in voxels, ``>= 8``.
        generator: a CPU generator; seeded, the same images every time.
        device: where to put the result.

    Returns:
        ``(count, 1, *[size] * spatial_dims)`` float32, roughly zero mean and unit scale.

    Examples:
        >>> images = toy_images(4, spatial_dims=3, size=16, generator=torch.Generator().manual_seed(0))
        >>> images.shape, images.dtype
        (torch.Size([4, 1, 16, 16, 16]), torch.float32)
    """
    check_int("count", count, 1)
    d = check_spatial_dims(spatial_dims)
    check_int("size", size, 8)

    def rand(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=generator)

    axis = torch.linspace(-1.0, 1.0, size)
    grid = torch.stack(torch.meshgrid(*[axis] * d, indexing="ij"))  # (d, *S)
    expand = (slice(None), slice(None), *[None] * d)
    shift = ((rand(count, d) - 0.5) * 0.2)[expand]
    scale = (1.0 + (rand(count, d) - 0.5) * 0.2)[expand]
    p = (grid[None] - shift) / scale  # (count, d, *S) body coordinates

    back = 1 if d == 3 else 0  # the back/front axis; the last axis is left/right

    def ball(centre: dict[int, float], radius: float) -> Tensor:
        dist2 = torch.stack([(p[:, a] - centre.get(a, 0.0)) ** 2 for a in range(d)]).sum(0)
        return torch.sigmoid((radius**2 - dist2) * 60.0)

    body = torch.sigmoid((1.0 - (p**2 / 0.8**2).sum(1)) * 12.0)
    image = body * (1.0 + 0.3 * p[:, 0]) if d == 3 else body.clone()
    image += 1.5 * ball({back: 0.55}, 0.15)
    image -= 1.0 * ball({back: -0.5, 0: -0.3} if d == 3 else {back: -0.5}, 0.18)
    image += 0.6 * ball({d - 1: -0.45}, 0.25)
    coarse = torch.randn(count, 1, *[4] * d, generator=generator)
    mode = "bilinear" if d == 2 else "trilinear"
    texture = F.interpolate(coarse, size=(size,) * d, mode=mode, align_corners=True)
    image = image.unsqueeze(1) + 0.25 * texture * body.unsqueeze(1)
    image += 0.1 * torch.randn(image.shape, generator=generator)
    return (image - 0.5).to(device)
