"""Pictures of images and of the views a pretext task makes of them (needs matplotlib).

For notebooks and docs: what the model sees. A 3D volume is shown by its central slice
along the first spatial axis (or three orthogonal central slices); an RGB image as colour.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from pretext3d.tasks.base import PretextTask, Reconstruction

__all__ = ["image_slice", "plot_images", "plot_views"]


def image_slice(image: Tensor, axis: int = 0) -> Tensor:
    """A displayable 2D picture of one image ``(C, *spatial)``.

    Returns:
        ``(H, W)`` for one channel, ``(H, W, 3)`` in ``[0, 1]`` for RGB; a 3D image gives its
        central slice along spatial ``axis``.

    Examples:
        >>> image_slice(torch.randn(1, 8, 16, 32)).shape   # the central slice of a volume
        torch.Size([16, 32])
        >>> picture = image_slice(torch.randn(3, 16, 16))   # RGB, scaled to [0, 1]
        >>> picture.shape, float(picture.min()), float(picture.max())
        (torch.Size([16, 16, 3]), 0.0, 1.0)
    """
    if image.ndim not in (3, 4):
        raise ValueError(f"image must be (C, H, W) or (C, D, H, W), got shape {tuple(image.shape)}")
    image = image.detach().float().cpu()
    if image.ndim == 4:
        image = image.select(1 + axis, image.shape[1 + axis] // 2)
    if image.shape[0] == 3:
        low, high = image.amin(), image.amax()
        return ((image - low) / (high - low).clamp(min=1e-8)).permute(1, 2, 0)
    return image[0]


def _plt() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError("pictures need matplotlib: pip install 'pretext3d[plots]'") from err
    return plt


def _show(ax: Any, image: Tensor, title: str = "", axis: int = 0) -> None:
    picture = image_slice(image, axis)
    ax.imshow(picture.numpy(), cmap="gray" if picture.ndim == 2 else None)
    ax.set_title(title, fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_images(images: Tensor, titles: list[str] | None = None, *, orthogonal: bool = False) -> Any:
    """A row of images ``(N, C, *spatial)`` (3D: central slices; ``orthogonal``: all three axes).

    Returns:
        The matplotlib figure.

    Examples:
        >>> images, _ = p3.data.ct_phantom_batch(2, size=32)
        >>> figure = plot_images(images, ["case 0", "case 1"], orthogonal=True)
        >>> len(figure.axes)   # two rows of three orthogonal slices
        6
        >>> figure.savefig("phantoms.png")
    """
    plt = _plt()
    rows = 3 if orthogonal and images.ndim == 5 else 1
    fig, axes = plt.subplots(rows, len(images), figsize=(1.8 * len(images), 1.9 * rows), squeeze=False)
    for i, image in enumerate(images):
        for r in range(rows):
            title = (titles[i] if titles else f"case {i}") if r == 0 else ""
            _show(axes[r][i], image, title, axis=r)
    fig.tight_layout()
    return fig


@torch.no_grad()
def plot_views(
    task: PretextTask[Any, Any], images: Tensor, generator: torch.Generator | int = 0, max_views: int = 9
) -> Any:
    """What ``task`` makes of ``images``: one row per image, the input first, then its views.

    Whole-image views (rotation, exemplar) are shown with their target; a dense task's view
    (Models Genesis, masked modelling) beside the target it restores (where it is scored); patch
    views (jigsaw, RPL, CPC) slot by slot, up to ``max_views`` of them (3D patches by their central slice).
    The task's state (the exemplar counter and memory) is left as it was.

    Args:
        task: any pretext task.
        images: ``(N, C, *spatial)``, a few images.
        generator: the draw (a seed or a generator).
        max_views: most views shown per image.

    Returns:
        The matplotlib figure.

    Examples:
        >>> images, _ = p3.data.ct_phantom_batch(2, size=36)
        >>> jigsaw = p3.tasks.Jigsaw(3, grid=3, num_permutations=24, jitter=2)
        >>> figure = plot_views(jigsaw, images, max_views=4)
        >>> len(figure.axes)   # per image: the input and 4 of its 27 patches
        10
    """
    plt = _plt()
    state = {k: v.clone() for k, v in task.state_dict().items()}
    views, targets = task(images, generator)
    task.load_state_dict(state)  # a picture must not advance the task (the exemplar counter, say)
    n = len(images)
    per_image: list[list[tuple[Tensor, str]]] = []
    for i in range(n):
        if views.ndim == images.ndim + 1:  # patches (B, P, C, *patch)
            shown = [(patch, f"slot {p}") for p, patch in enumerate(views[i][:max_views])]
            if targets is not None:
                shown[0] = (shown[0][0], f"slot 0 (target {int(targets[i])})")
        elif isinstance(targets, Reconstruction):  # a dense task: the view and what it restores
            target = targets.target[i] if targets.weight is None else targets.target[i] * targets.weight[i]
            shown = [(views[i], "view"), (target, "target" if targets.weight is None else "target (scored)")]
        else:  # whole images: B views, or k views per image stacked as (kB, ...)
            k = len(views) // n
            shown = [(views[j * n + i], f"view {j}") for j in range(k)]
            if targets is not None:
                shown = [(v, f"{t} (target {int(targets[j * n + i])})") for j, (v, t) in enumerate(shown)]
        per_image.append(shown)
    cols = 1 + max(len(s) for s in per_image)
    # constrained layout: titles and a suptitle set later (however long its lines) get their room
    fig, axes = plt.subplots(n, cols, figsize=(1.6 * cols, 1.9 * n), squeeze=False, layout="constrained")
    for i in range(n):
        _show(axes[i][0], images[i], "input")
        for j in range(1, cols):
            if j - 1 < len(per_image[i]):
                _show(axes[i][j], *per_image[i][j - 1])
            else:
                axes[i][j].axis("off")
    fig.suptitle(f"{type(task).__name__}: the views of {n} image(s)", fontsize=9)
    return fig
