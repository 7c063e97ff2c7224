"""Draw the figures of the task pages (docs/tasks/) from the SYNTHETIC phantoms (``make docs`` runs it).

Each figure is what a task makes of a phantom, drawn by :mod:`pretext3d.viz` from the task's own
output (seeded, so a rerun draws the same pictures):

- ``rotation.png``: the 10 rotation classes of a CT phantom, three orthogonal central slices each;
- ``jigsaw.png``: a fundus phantom cut into a 3×3 grid, its tiles in the shuffled order, and the
  pairwise Hamming distances of the permutation sets;
- ``rpl.png``: the 3×3 grid with the centre and query cells framed, and the two patches;
- ``exemplar.png``: two augmented views of each image;
- ``cpc.png``: the 4×4 patch grid, the context rows and the rows they predict;
- ``genesis.png``: Models Genesis's four transformations, each alone and all composed, on a CT
  phantom's central slice (3D) and a fundus phantom (2D);
- ``mim.png``: masked image modelling's masked input, the scored patches and the normalised
  target, on the same two phantoms;
- ``preprocessing.png``: a CT and a fundus phantom before and after their preprocessing.

    python docs/make_figures.py
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

import pretext3d as p3

OUT = Path(__file__).parent / "figures" / "tasks"
NOTE = "SYNTHETIC phantom"
# the grid tasks' shortcut defences off: the figures show the geometry of the cells
RAW = p3.tasks.NO_DEFENCES


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
    task = p3.tasks.Jigsaw(2, grid=3, num_permutations=100, jitter=2, **RAW)
    fig = p3.viz.plot_views(task, fundus[:2], generator=0)
    _title(
        fig,
        f"Jigsaw (2D, 3×3 grid): tiles in shuffled slot order, target = permutation; shortcut defences off "
        f"to show the geometry ({NOTE})",
    )
    _save(fig, "jigsaw.png")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3))
    for ax, cells in zip(axes, (9, 27), strict=True):
        perms = p3.permutations.permutation_set(cells, 100, seed=0)
        distance = (perms[:, None, :] != perms[None, :, :]).sum(-1)
        pairs = distance[torch.triu_indices(100, 100, 1).unbind()]
        ax.hist(pairs.numpy(), bins=range(int(pairs.min()), cells + 2), color="tab:green", align="left")
        stats = p3.permutations.hamming_stats(perms)
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


def _frame(ax: plt.Axes, corner: tuple[int, int], size: int, colour: str, label: str = "") -> None:
    """A square outline on an image axis (corner as (row, column))."""
    from matplotlib.patches import Rectangle

    row, col = corner
    ax.add_patch(Rectangle((col - 0.5, row - 0.5), size, size, fill=False, edgecolor=colour, linewidth=2))
    if label:
        ax.text(col + 1, row + 4, label, color=colour, fontsize=7, fontweight="bold")


def _plain(ax: plt.Axes) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def rpl(fundus: torch.Tensor) -> None:
    """The grid on the image, the centre and the query cell framed, and the two patches."""
    task = p3.tasks.RelativePatchLocation(2, grid=3, jitter=2, **RAW).eval()  # centred patches
    image = fundus[:1]
    cell, _ = task.geometry(tuple(image.shape[2:]))
    fig, axes = plt.subplots(1, 5, figsize=(12, 2.9))
    for k, location in enumerate((0, 4)):  # the top-left neighbour, then the right-hand one
        views, target = task.apply_params(
            image, p3.tasks.RelativePatchLocationParams(torch.tensor([location]), torch.ones(1, 2, 2).long())
        )
        query = location if location < 4 else location + 1  # the cell index, the centre (4) skipped
        ax = axes[0] if k == 0 else axes[3]
        ax.imshow(p3.viz.image_slice(image[0]).numpy())
        for c in range(9):
            _frame(ax, (c // 3 * cell[0], c % 3 * cell[1]), cell[0], "white")
        _frame(ax, (cell[0], cell[1]), cell[0], "tab:blue", "centre")
        _frame(ax, (query // 3 * cell[0], query % 3 * cell[1]), cell[0], "tab:orange", "query")
        ax.set_title(f"3×3 grid; target class {int(target[0])}", fontsize=8)
        _plain(ax)
        slots = (("slot 0: centre", "tab:blue"), ("slot 1: query", "tab:orange"))
        for slot, (title, colour) in enumerate(slots):
            ax = axes[1 + slot] if k == 0 else axes[4]
            if k == 1 and slot == 0:
                continue
            ax.imshow(p3.viz.image_slice(views[0, slot]).numpy())
            ax.set_title(title, fontsize=8, color=colour)
            _plain(ax)
    fig.suptitle(
        f"Relative patch location (2D): which of the 8 neighbours is the query? (defences off; {NOTE})",
        fontsize=10,
    )
    fig.tight_layout()
    _save(fig, "rpl.png")


def cpc(fundus: torch.Tensor) -> None:
    """The patch grid: the context rows a prediction sees, and the rows it predicts."""
    task = p3.tasks.CPC(2, grid=4, patch=28, overlap=0.25, steps=2).eval()
    image = fundus[:1]
    patch, stride, offset = task.geometry(tuple(image.shape[2:]))
    views, _ = task(image, generator=0)
    fig = plt.figure(figsize=(11, 4.2))
    ax = fig.add_subplot(1, 3, 1)
    ax.imshow(p3.viz.image_slice(image[0]).numpy())
    row = 1  # the context of row 1 predicts rows 2 and 3
    for c in range(task.grid**2):
        r, col = divmod(c, task.grid)
        colour = "tab:blue" if r <= row else "tab:orange"
        if col == 1:
            _frame(ax, (offset[0] + r * stride, offset[1] + col * stride), patch, colour)
    ax.set_title("4×4 grid of 28 px patches, 25 % overlap;\none column framed", fontsize=8)
    _plain(ax)
    grid = fig.add_gridspec(task.grid, task.grid, left=0.40, right=0.98, top=0.86, bottom=0.04)
    for c in range(task.grid**2):
        r, col = divmod(c, task.grid)
        ax = fig.add_subplot(grid[r, col])
        ax.imshow(p3.viz.image_slice(views[0, c]).numpy())
        _plain(ax)
        colour = "tab:blue" if r <= row else "tab:orange"
        for spine in ax.spines.values():
            spine.set_edgecolor(colour)
            spine.set_linewidth(2.5)
        if col == 0:
            ax.set_ylabel(f"row {r}", fontsize=8, color=colour)
    blue = "blue: rows 0-1, the context a GRU summarises down each column;"
    orange = "orange: rows 2-3, whose codes it predicts (steps = 2) against every other patch"
    fig.text(0.40, 0.935, blue, color="tab:blue", fontsize=9)
    fig.text(0.40, 0.895, orange, color="tab:orange", fontsize=9)
    fig.suptitle(f"CPC (2D): context rows and predicted rows ({NOTE})", fontsize=10, x=0.5, y=0.995)
    _save(fig, "cpc.png")


def _show(ax: plt.Axes, image: torch.Tensor, title: str) -> None:
    """One image: a 2D ``(C, H, W)`` (RGB if 3 channels) or a 3D ``(1, D, H, W)``'s central slice."""
    if image.dim() == 4:
        image = image[:, image.shape[1] // 2]
    shown = image.permute(1, 2, 0) if image.shape[0] == 3 else image[0]
    low, high = float(shown.min()), float(shown.max())
    ax.imshow(((shown - low) / max(high - low, 1e-6)).numpy(), cmap="gray")
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def genesis(ct: torch.Tensor, fundus: torch.Tensor) -> None:
    """Models Genesis's transformations, one by one and together, in 3D and 2D."""
    alone = {
        "local shuffling": {"local_p": 1.0, "nonlinear_p": 0.0, "paint_p": 0.0},
        "intensity curve": {"local_p": 0.0, "nonlinear_p": 1.0, "paint_p": 0.0},
        "in-painting": {"local_p": 0.0, "nonlinear_p": 0.0, "paint_p": 1.0, "outpaint_p": 0.0},
        "out-painting": {"local_p": 0.0, "nonlinear_p": 0.0, "paint_p": 1.0, "outpaint_p": 1.0},
        "all together": {"local_p": 1.0, "nonlinear_p": 1.0, "paint_p": 1.0},
    }
    fig, axes = plt.subplots(2, 1 + len(alone), figsize=(2.1 * (1 + len(alone)), 5.0), layout="constrained")
    for row, image in enumerate((ct[:1], fundus[:1])):
        d = image.dim() - 2
        _show(axes[row, 0], image[0], f"original ({d}D)")
        for col, (what, options) in enumerate(alone.items(), start=1):
            views, _ = p3.tasks.ModelsGenesis(d, **options)(image, generator=1)
            _show(axes[row, col], views[0], what)
    _title(fig, f"Models Genesis: the views (the target is the original) ({NOTE})")
    _save(fig, "genesis.png")


def mim(ct: torch.Tensor, fundus: torch.Tensor) -> None:
    """Masked image modelling's input, scored patches and normalised target, in 3D and 2D."""
    fig, axes = plt.subplots(2, 4, figsize=(9.6, 5.2), layout="constrained")
    for row, image in enumerate((ct[:1], fundus[:1])):
        d = image.dim() - 2
        task = p3.tasks.MaskedImageModeling(d, patch=8 if d == 3 else 12)
        views, targets = task(image, generator=0)
        _show(axes[row, 0], image[0], f"original ({d}D)")
        _show(axes[row, 1], views[0], f"input: 60 % of {task.patch}-px patches masked")
        _show(axes[row, 2], targets.weight[0], "where the loss counts")
        _show(axes[row, 3], targets.target[0] * targets.weight[0], "target: each patch normalised")
    _title(fig, f"Masked image modelling ({NOTE})")
    _save(fig, "mim.png")


def views(name: str, task: p3.tasks.PretextTask, images: torch.Tensor, title: str) -> None:  # type: ignore[type-arg]
    """A task's views of two images."""
    fig = p3.viz.plot_views(task, images, generator=0)
    _title(fig, f"{title} ({NOTE})")
    _save(fig, f"{name}.png")


def _title(fig: plt.Figure, text: str) -> None:
    """A suptitle wrapped to the figure's width (a narrow figure clipped a long one)."""
    fig.suptitle(textwrap.fill(text, width=max(30, int(fig.get_figwidth() * 11))), fontsize=10)


def main() -> None:
    """Every figure of the task and data pages."""
    OUT.mkdir(parents=True, exist_ok=True)
    ct = torch.stack([p3.data.PhantomImages("ct", 2, 48, seed=0)[i] for i in range(2)])
    fundus = torch.stack([p3.data.PhantomImages("fundus", 2, 96, seed=0)[i] for i in range(2)])
    rotation(ct)
    preprocessing()
    jigsaw(fundus)
    rpl(fundus)
    views("exemplar", p3.tasks.Exemplar(2), fundus,
          "Exemplar (2D): two augmented views of each image, target = its instance id")  # fmt: skip
    cpc(fundus)
    genesis(ct, fundus)
    mim(ct, fundus)


if __name__ == "__main__":
    main()
