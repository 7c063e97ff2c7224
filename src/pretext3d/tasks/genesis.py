"""Models Genesis: restore the image from a corrupted copy (Zhou et al., MICCAI 2019 / MedIA 2021)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from pretext3d._checks import check_unit_interval
from pretext3d._random import rand, randint
from pretext3d.config import SpatialDims
from pretext3d.registry import register_task
from pretext3d.tasks.base import DenseTask, Reconstruction, TaskParams

__all__ = ["GenesisParams", "ModelsGenesis", "bezier_curve", "local_shuffle", "paint_mask"]

#: points on which each Bézier curve is tabulated before it is interpolated
_CURVE_POINTS = 256
#: boxes drawn per image for in-painting (kept boxes for out-painting)
_BOXES = 5


@dataclass
class GenesisParams(TaskParams):
    """The parameters of one :class:`ModelsGenesis` call.

    Attributes:
        local: ``BoolTensor (B,)``: shuffle voxels inside local blocks.
        block_sizes: ``LongTensor (B, cells, d)``: each cell's block size per axis.
        block_corners: ``LongTensor (B, cells, d)``: the block's corner inside its cell.
        nonlinear: ``BoolTensor (B,)``: map intensities through a Bézier curve.
        control: ``Tensor (B, 2, 2)``: the curve's two inner control points ``(x, y)`` in ``[0, 1]``.
        flipped: ``BoolTensor (B,)``: the curve decreases (1 at 0, 0 at 1).
        paint: ``LongTensor (B,)``: 0 none, 1 in-painting, 2 out-painting.
        box_corners: ``LongTensor (B, 5, d)``: the painting boxes' corners.
        box_sizes: ``LongTensor (B, 5, d)``: their sizes.
        box_on: ``BoolTensor (B, 5)``: which boxes are drawn (the first always, when painting).
        seed: ``LongTensor (B,)``: seeds of the voxel-level draws (each block's shuffle order, the
            painting noise), drawn on the CPU from these seeds wherever the data live.

    Examples:
        >>> x, generator = torch.rand(2, 1, 20, 20, 20), torch.Generator().manual_seed(0)
        >>> params = ModelsGenesis(3).randomize(x, generator)
        >>> params.block_sizes.shape, params.control.shape   # 10^3 cells of 2^3 voxels
        (torch.Size([2, 1000, 3]), torch.Size([2, 2, 2]))
    """

    local: Tensor
    block_sizes: Tensor
    block_corners: Tensor
    nonlinear: Tensor
    control: Tensor
    flipped: Tensor
    paint: Tensor
    box_corners: Tensor
    box_sizes: Tensor
    box_on: Tensor
    seed: Tensor


def bezier_curve(control: Tensor, flipped: Tensor, points: int = _CURVE_POINTS) -> tuple[Tensor, Tensor]:
    """Tabulate Models Genesis's intensity curves: cubic Béziers from (0, 0) to (1, 1), made monotonic.

    The curve through ``(0, 0)``, ``control[:, 0]``, ``control[:, 1]`` and ``(1, 1)`` is
    sampled at ``points`` values of its parameter; its x and y values are each sorted (as the
    reference implementation does), which makes it a monotonic map of ``[0, 1]`` onto ``[0, 1]``;
    a flipped curve takes the y values in descending order (a decreasing map, 1 at 0).

    Args:
        control: ``(B, 2, 2)`` inner control points ``(x, y)``.
        flipped: ``BoolTensor (B,)``.
        points: table size.

    Returns:
        ``(xs, ys)``: ``(B, points)`` each; ``xs`` ascending from 0 to 1.

    Examples:
        >>> xs, ys = bezier_curve(torch.tensor([[[0.2, 0.9], [0.7, 0.1]]]), torch.tensor([False]))
        >>> float(xs[0, 0]), float(xs[0, -1]), float(ys[0, 0]), float(ys[0, -1])
        (0.0, 1.0, 0.0, 1.0)
        >>> bool((ys.diff(dim=1) >= 0).all())   # monotonic
        True
    """
    t = torch.linspace(0, 1, points, device=control.device, dtype=torch.float32)[None, :, None]
    p1, p2 = control.float()[:, None, 0], control.float()[:, None, 1]
    curve = 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3  # P0 = (0, 0), P3 = (1, 1)
    xs = curve[..., 0].sort(dim=1).values
    ys = curve[..., 1].sort(dim=1).values
    ys = torch.where(flipped[:, None], ys.flip(1), ys)
    return xs, ys


def _interpolate(values: Tensor, xs: Tensor, ys: Tensor) -> Tensor:
    """Piecewise-linear ``y(values)`` per sample: ``values`` ``(B, N)`` in ``[0, 1]``, tables ``(B, K)``."""
    index = torch.searchsorted(xs.contiguous(), values.contiguous()).clamp(1, xs.shape[1] - 1)
    x0, x1 = xs.gather(1, index - 1), xs.gather(1, index)
    y0, y1 = ys.gather(1, index - 1), ys.gather(1, index)
    weight = ((values - x0) / (x1 - x0).clamp_min(1e-12)).clamp(0, 1)
    return y0 + weight * (y1 - y0)


def _cells(shape: Sequence[int]) -> tuple[list[int], list[int]]:
    """Cell edge (a tenth of each side, at least 1) and cells per axis of local shuffling."""
    edges = [max(1, s // 10) for s in shape]
    return edges, [s // e for s, e in zip(shape, edges, strict=True)]


def local_shuffle(x: Tensor, sizes: Tensor, corners: Tensor, seeds: Tensor) -> Tensor:
    """Shuffle the voxels inside one block of every cell (Models Genesis's local pixel shuffling).

    The image is cut into cells of a tenth of each side (the reference's largest block); in
    each cell, the block of ``sizes`` at ``corners`` (cell-relative) has its voxels permuted at
    random (all channels alike). Blocks never overlap, so each block keeps its multiset of
    voxels and nothing outside the blocks moves; voxels beyond the last whole cell stay.

    Args:
        x: ``(B, C, *spatial)``.
        sizes: ``LongTensor (B, cells, d)``, each in ``[1, cell edge]``.
        corners: ``LongTensor (B, cells, d)``, ``corner + size <= cell edge``.
        seeds: ``LongTensor (B,)``: seeds of the permutations (drawn on the CPU).

    Returns:
        The shuffled copy of ``x``.

    Examples:
        >>> x = torch.arange(400.0).reshape(1, 1, 20, 20)   # cells of 2 x 2, 100 of them
        >>> y = local_shuffle(x, torch.full((1, 100, 2), 2), torch.zeros(1, 100, 2, dtype=torch.long),
        ...                   torch.tensor([0]))
        >>> y[0, 0, :2, :2].tolist()   # the first cell's four voxels, reordered
        [[20.0, 21.0], [0.0, 1.0]]
        >>> torch.equal(y.flatten().sort().values, x.flatten())
        True
    """
    d = x.dim() - 2
    edges, counts = _cells(x.shape[2:])
    region = [e * n for e, n in zip(edges, counts, strict=True)]
    within = (slice(None), slice(None), *[slice(0, r) for r in region])
    inner = x[within]
    split = inner.reshape(
        x.shape[0], x.shape[1], *[v for pair in zip(counts, edges, strict=True) for v in pair]
    )
    # (B, C, n1, e1, n2, e2, ...) -> (B, n1, n2, ..., C, e1, e2, ...)
    order = [0, *[2 + 2 * a for a in range(d)], 1, *[3 + 2 * a for a in range(d)]]
    cells = split.permute(order).reshape(x.shape[0], -1, x.shape[1], int(torch.tensor(edges).prod()))
    grid = torch.stack(
        torch.meshgrid(*[torch.arange(e, device=x.device) for e in edges], indexing="ij"), dim=-1
    ).reshape(-1, d)  # (W, d) positions inside a cell
    lo, hi = corners[:, :, None, :], (corners + sizes)[:, :, None, :]
    inside = ((grid >= lo) & (grid < hi)).all(-1)  # (B, N, W)
    keys = torch.stack(
        [torch.rand(inside.shape[1:], generator=torch.Generator().manual_seed(int(s))) for s in seeds.cpu()]
    ).to(x.device)
    keys = keys.masked_fill(~inside, 2.0)  # outside the block: after every inside voxel, in order
    source = keys.argsort(dim=-1, stable=True)  # the block's voxels in random order, then the rest
    slots = (
        (~inside).to(torch.uint8).argsort(dim=-1, stable=True)
    )  # the block's voxels in order, then the rest
    take = torch.empty_like(source).scatter_(-1, slots, source)
    shuffled = cells.gather(-1, take[:, :, None, :].expand_as(cells))
    back = [0, d + 1, *[v for a in range(d) for v in (1 + a, d + 2 + a)]]
    restored = shuffled.reshape(x.shape[0], *counts, x.shape[1], *edges).permute(back).reshape(inner.shape)
    out = x.clone()
    out[within] = restored
    return out


def paint_mask(shape: Sequence[int], corners: Tensor, sizes: Tensor, on: Tensor) -> Tensor:
    """``BoolTensor (B, 1, *shape)``: the union of the drawn boxes.

    Examples:
        >>> m = paint_mask((4, 4), torch.tensor([[[1, 1], [0, 0]]]), torch.tensor([[[2, 2], [1, 1]]]),
        ...                torch.tensor([[True, False]]))
        >>> m[0, 0].int().tolist()
        [[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    """
    d = len(shape)
    mask = torch.zeros(corners.shape[0], *shape, dtype=torch.bool, device=corners.device)
    for k in range(corners.shape[1]):
        box = on[:, k].reshape(-1, *[1] * d)
        for a, size in enumerate(shape):
            axis = torch.arange(size, device=corners.device)
            inside = (axis >= corners[:, k, a, None]) & (axis < (corners[:, k, a] + sizes[:, k, a])[:, None])
            box = box & inside.reshape(-1, *[size if b == a else 1 for b in range(d)])
        mask |= box
    return mask[:, None]


@register_task("genesis")
class ModelsGenesis(DenseTask[GenesisParams]):
    """Restore each image from a corrupted copy of it (Models Genesis).

    Each image goes through, in the reference implementation's order and with its
    probabilities (``Genesis_Chest_CT`` config: ``local_rate``, ``nonlinear_rate``,
    ``paint_rate``, ``outpaint_rate``):

    1. **local pixel shuffling** (``local_p = 0.5``): voxels are shuffled inside small blocks;
    2. **non-linear intensity transform** (``nonlinear_p = 0.9``): intensities pass through a
       monotonic cubic Bézier curve with two random control points, flipped (decreasing) with
       probability 0.5 (:func:`bezier_curve`);
    3. **in-painting or out-painting** (``paint_p = 0.9``; then out-painting with
       ``outpaint_p = 0.8``, else in-painting): in-painting fills up to 5 boxes of 1/6-1/3 of
       each side with uniform noise (each further box with probability 0.95); out-painting
       fills everything with noise but up to 5 boxes of 3/7-4/7 of each side.

    The views are the corrupted images; the target is the original; the loss is the mean
    squared error over the whole image (:class:`~pretext3d.tasks.DenseTask`). The trivial
    predictor the score is measured against is the corrupted view itself (the identity).

    Where it differs from the paper and why:

    * intensities: the reference needs images in ``[0, 1]``; here each image is scaled to
      ``[0, 1]`` by its own minimum and maximum for the curve and the noise and scaled back, so
      any normalisation works (the target is the image as given);
    * local shuffling: one block per cell of a tenth of each side, of a random size between
      half the cell and the whole cell, instead of 10,000 overlapping blocks of up to a tenth
      of each side; blocks that do not overlap can be shuffled in one batched call on the
      device, and they cover a share of the image (about 42 % in 3D, 56 % in 2D) closer to the
      reference's dense coverage than blocks of 1 to 6 voxels would;
    * the reference's random flips of image and target (``flip_rate = 0.4``) are data
      augmentation, not part of the task: add them to the data pipeline if wanted.

    Args:
        spatial_dims: 2 or 3.
        local_p: probability of local pixel shuffling.
        nonlinear_p: probability of the intensity curve.
        paint_p: probability of painting.
        outpaint_p: probability that a painted image is out-painted (else in-painted).
        check_finite: reject NaN/inf input.

    Examples:
        >>> task = ModelsGenesis(spatial_dims=3)
        >>> x = torch.rand(2, 1, 32, 32, 32)
        >>> views, targets = task(x, generator=0)
        >>> views.shape, torch.equal(targets.target, x), targets.weight is None
        (torch.Size([2, 1, 32, 32, 32]), True, True)

    References:
        - Zhou et al., "Models Genesis: Generic Autodidactic Models for 3D Medical Image Analysis",
          MICCAI 2019; Medical Image Analysis 67, 2021.
    """

    params_type = GenesisParams

    @property
    def baseline(self) -> str:
        """The trivial predictor the score is measured against: the identity."""
        return "the corrupted view itself"

    def __init__(
        self,
        spatial_dims: SpatialDims,
        *,
        local_p: float = 0.5,
        nonlinear_p: float = 0.9,
        paint_p: float = 0.9,
        outpaint_p: float = 0.8,
        check_finite: bool = True,
    ) -> None:
        super().__init__(spatial_dims, check_finite=check_finite)
        self.local_p = check_unit_interval("local_p", local_p)
        self.nonlinear_p = check_unit_interval("nonlinear_p", nonlinear_p)
        self.paint_p = check_unit_interval("paint_p", paint_p)
        self.outpaint_p = check_unit_interval("outpaint_p", outpaint_p)

    def _check_input(self, x: Tensor) -> None:
        if min(x.shape[2:]) < 8:
            raise ValueError(
                f"ModelsGenesis needs every spatial size >= 8 (its boxes are 1/6-4/7 of a side), got "
                f"{tuple(x.shape[2:])}"
            )

    def _randomize(self, x: Tensor, generator: torch.Generator | None) -> GenesisParams:
        b, d, dev = x.shape[0], self.spatial_dims, x.device
        shape = torch.tensor(x.shape[2:], device=dev)
        edges, counts = _cells(x.shape[2:])
        cells = int(torch.tensor(counts).prod())
        edge = torch.tensor(edges, device=dev)
        low = (edge + 1) // 2
        block_sizes = low + (rand((b, cells, d), generator, dev) * (edge - low + 1)).long().clamp(
            max=edge - low
        )
        block_corners = (rand((b, cells, d), generator, dev) * (edge - block_sizes + 1)).long()
        local = rand((b,), generator, dev) < self.local_p
        nonlinear = rand((b,), generator, dev) < self.nonlinear_p
        control = rand((b, 2, 2), generator, dev)
        flipped = rand((b,), generator, dev) < 0.5
        paints = rand((b,), generator, dev) < self.paint_p
        outpaint = rand((b,), generator, dev) < self.outpaint_p
        paint = torch.where(paints, torch.where(outpaint, 2, 1), 0)
        # box sizes: in-painting 1/6-1/3 of a side; out-painting side - (3/7-4/7 of it)
        u = rand((b, _BOXES, d), generator, dev)
        in_low, in_high = shape // 6, shape // 3
        out_low, out_high = shape - 4 * shape // 7, shape - 3 * shape // 7
        lo = torch.where((paint == 2)[:, None, None], out_low, in_low)
        hi = torch.where((paint == 2)[:, None, None], out_high, in_high)
        box_sizes = (lo + (u * (hi - lo + 1)).long().clamp(max=hi - lo)).clamp(min=1)
        margin = torch.where(shape - box_sizes >= 6, 3, 0)  # the reference keeps 3 voxels from the border
        room = shape - box_sizes - 2 * margin
        box_corners = margin + (rand((b, _BOXES, d), generator, dev) * (room + 1)).long().clamp(max=room)
        box_on = (rand((b, _BOXES), generator, dev) < 0.95).cumprod(dim=1).bool()
        box_on[:, 0] |= paints & (paint == 2)  # out-painting always keeps one box
        seed = randint(2**62, (b,), generator, dev)
        return GenesisParams(
            local,
            block_sizes,
            block_corners,
            nonlinear,
            control,
            flipped,
            paint,
            box_corners,
            box_sizes,
            box_on,
            seed,
        )

    def _check_params(self, x: Tensor, params: GenesisParams) -> None:
        edges, counts = _cells(x.shape[2:])
        cells = (len(x), int(torch.tensor(counts).prod()), self.spatial_dims)
        if params.block_sizes.shape != cells or params.block_corners.shape != cells:
            raise ValueError(
                f"params.block_sizes and block_corners must have shape {cells} for spatial size "
                f"{tuple(x.shape[2:])}, got {tuple(params.block_sizes.shape)} and "
                f"{tuple(params.block_corners.shape)}"
            )
        edge = torch.tensor(edges, device=x.device)
        if bool((params.block_sizes < 1).any()) or bool(
            (params.block_corners + params.block_sizes > edge).any()
        ):
            raise ValueError(f"params' blocks must lie inside their cells of {edges}")

    def _make_views(self, x: Tensor, params: GenesisParams) -> tuple[Tensor, Reconstruction]:
        b = x.shape[0]
        dims = tuple(range(1, x.dim()))
        low = x.amin(dim=dims, keepdim=True)
        span = (x.amax(dim=dims, keepdim=True) - low).clamp_min(1e-12)
        u = ((x - low) / span).float()
        views = u
        chosen = params.local.nonzero().flatten()
        if len(chosen):
            views = views.clone()
            views[chosen] = local_shuffle(
                u[chosen], params.block_sizes[chosen], params.block_corners[chosen], params.seed[chosen]
            )
        xs, ys = bezier_curve(params.control, params.flipped)
        curved = _interpolate(views.reshape(b, -1).clamp(0, 1), xs, ys).reshape(views.shape)
        views = torch.where(params.nonlinear.reshape(-1, *[1] * (x.dim() - 1)), curved, views)
        painted = params.paint.nonzero().flatten()
        if len(painted):
            mask = paint_mask(
                x.shape[2:], params.box_corners[painted], params.box_sizes[painted], params.box_on[painted]
            )
            outpaint = (params.paint[painted] == 2).reshape(-1, *[1] * (x.dim() - 1))
            noisy = mask ^ outpaint  # in-painting: inside the boxes; out-painting: outside them
            noise = torch.stack(
                [
                    torch.rand(x.shape[1:], generator=torch.Generator().manual_seed(int(s) + 1))
                    for s in params.seed[painted].cpu()
                ]
            ).to(x.device)
            views = views.clone()
            views[painted] = torch.where(noisy, noise, views[painted])
        views = (views * span + low).to(x.dtype)
        return views, Reconstruction(x, None, views)

    def extra_repr(self) -> str:
        """The constructor arguments, for ``repr``."""
        return (
            f"spatial_dims={self.spatial_dims}, local_p={self.local_p}, nonlinear_p={self.nonlinear_p}, "
            f"paint_p={self.paint_p}, outpaint_p={self.outpaint_p}"
        )
