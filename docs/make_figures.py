"""Draw the figures of docs/tasks.md from the built-in SYNTHETIC phantoms (``make docs`` runs it).

Each figure is what a task makes of a phantom, drawn by :mod:`pretext3d.viz` from the task's own
output (seeded, so a rerun draws the same pictures):

- ``rotation.png``: the 10 rotation classes of a CT phantom, three orthogonal central slices each;
- ``jigsaw.png``: a fundus phantom cut into a 3×3 grid, its tiles in the shuffled order, and the
  pairwise Hamming distances of the permutation sets;
- ``rpl.png``, ``exemplar.png``, ``cpc.png``: the views of the other tasks;
- ``preprocessing.png``: a CT and a fundus phantom before and after their preprocessing.

    python docs/make_figures.py
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

import pretext3d as p3

OUT = Path(__file__).parent / "figures" / "tasks"
NOTE = "SYNTHETIC phantom"


def _save(fig: plt.Figure, name: str) -> None:
    fig.savefig(OUT / name, dpi=90, metadata={"Software": None})
    plt.close(fig)
    print(f"wrote {OUT / name}")


def rotation(ct: torch.Tensor) -> None:
    """The 10 classes of one volume, three orthogonal central slices each."""
    task = p3.tasks.Rotation(3, rotations="taleb10")
    volume = ct[:1].expand(task.num_classes, -1, -1, -1, -1)
    views, classes = task.apply_params(volume, p3.tasks.RotationParams(torch.arange(task.num_classes)))
    fig, axes = plt.subplots(3, task.num_classes, figsize=(1.5 * task.num_classes, 4.8))
    for c in range(task.num_classes):
        for axis in range(3):
            ax = axes[axis][c]
            ax.imshow(p3.viz.image_slice(views[c], axis).numpy(), cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
            if axis == 0:
                ax.set_title(f"class {int(classes[c])}", fontsize=8)
        axes[0][0].set_ylabel("axis 0", fontsize=8)
    axes[1][0].set_ylabel("axis 1", fontsize=8)
    axes[2][0].set_ylabel("axis 2", fontsize=8)
    fig.suptitle(f"Rotation (3D, 'taleb10'): the 10 classes of one CT volume, central slices ({NOTE})")
    fig.tight_layout()
    _save(fig, "rotation.png")


def jigsaw(fundus: torch.Tensor) -> None:
    """Shuffled tiles, and the pairwise Hamming distances of two permutation sets."""
    task = p3.tasks.Jigsaw(2, grid=3, num_permutations=100, jitter=2)
    fig = p3.viz.plot_views(task, fundus[:2], generator=0)
    fig.suptitle(f"Jigsaw (2D, 3×3 grid): tiles in shuffled slot order, target = permutation ({NOTE})")
    _save(fig, "jigsaw.png")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3))
    for ax, cells in zip(axes, (9, 27), strict=True):
        perms = p3.permutation_set(cells, 100, seed=0)
        distance = (perms[:, None, :] != perms[None, :, :]).sum(-1)
        pairs = distance[torch.triu_indices(100, 100, 1).unbind()]
        ax.hist(pairs.numpy(), bins=range(int(pairs.min()), cells + 2), color="tab:green", align="left")
        stats = p3.hamming_stats(perms)
        ax.set_title(
            f"100 permutations of {cells} cells: min {stats.min} / mean {stats.mean:.1f}", fontsize=9
        )
        ax.set_xlabel("pairwise Hamming distance")
        ax.set_xticks(range(int(pairs.min()), cells + 1))
    fig.tight_layout()
    _save(fig, "jigsaw_hamming.png")


def preprocessing() -> None:
    """A CT phantom before and after CTPreprocessing; a fundus phantom before and after Ben Graham's."""
    case = p3.data.ct_phantom(3, 64)
    after, label = p3.data.CTPreprocessing(resize=(64, 64, 64), dtype="float32")(
        case.image.astype("float32"), case.spacing, case.label
    )
    photo, grade = p3.data.fundus_phantom(3, 160, grade=3)
    graham = p3.data.FundusPreprocessing("ben_graham", 160)(photo)
    fig, axes = plt.subplots(1, 5, figsize=(15, 3.2))
    middle = case.image.shape[2] // 2
    spacing = "×".join(f"{s:.1f}" for s in case.spacing)
    panels = [
        (case.image[:, :, middle], f"CT as read: HU, {case.image.shape}, {spacing} mm"),
        (after[:, :, 32], "1.5×1.5×2.5 mm, body crop, 64³, window, z-score"),
        (label[:, :, 32], "label (nearest neighbour): 1 pancreas, 2 tumour"),
        (photo, f"fundus as read (grade {grade}), RGB"),
        (p3.viz.image_slice(torch.as_tensor(graham)).numpy(), "Ben Graham: local average subtracted"),
    ]  # fmt: skip
    for ax, (image, title) in zip(axes, panels, strict=True):
        if image.ndim == 3:  # RGB, (H, W, 3)
            ax.imshow(image)
        else:  # a CT slice: x to the right, y up
            ax.imshow(image.T, cmap="gray", origin="lower")
        ax.set_title(title, fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"Preprocessing before and after ({NOTE}s)")
    fig.tight_layout()
    _save(fig, "preprocessing.png")


def views(name: str, task: p3.tasks.PretextTask, images: torch.Tensor, title: str) -> None:  # type: ignore[type-arg]
    """A task's views of two images."""
    fig = p3.viz.plot_views(task, images, generator=0)
    fig.suptitle(f"{title} ({NOTE})")
    _save(fig, f"{name}.png")


def main() -> None:
    """Every figure of docs/tasks.md."""
    OUT.mkdir(parents=True, exist_ok=True)
    ct = torch.stack([p3.data.PhantomImages("ct", 2, 48, seed=0)[i] for i in range(2)])
    fundus = torch.stack([p3.data.PhantomImages("fundus", 2, 96, seed=0)[i] for i in range(2)])
    rotation(ct)
    preprocessing()
    jigsaw(fundus)
    views("rpl", p3.tasks.RelativePatchLocation(2, grid=3, jitter=2), fundus,
          "RPL (2D): the centre and a query tile, target = where the query lies")  # fmt: skip
    views("exemplar", p3.tasks.Exemplar(2), fundus,
          "Exemplar (2D): two augmented views of each image, target = its instance id")  # fmt: skip
    views("cpc", p3.tasks.CPC(2, grid=4, patch=24), fundus,
          "CPC (2D, 4×4 grid): the patches whose codes the context predicts, row by row")  # fmt: skip


if __name__ == "__main__":
    main()
