"""Jigsaw and relative patch location: slots, jitter, eval crops, permutation sets, errors."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

import pretext3d as p3
from pretext3d.tasks import Jigsaw, RelativePatchLocation
from tests.conftest import coordinate_image

# the tiles as cut, without the shortcut defences (tested in test_defences.py): the geometry below
RAW = p3.tasks.NO_DEFENCES


def reference_patch(
    x: torch.Tensor,
    cell: int,
    grid: int,
    cell_size: tuple[int, ...],
    patch: tuple[int, ...],
    offset: tuple[int, ...],
) -> torch.Tensor:
    """Patch of cell ``cell`` (row-major) of one sample ``(C, *spatial)``, by hand."""
    d = len(cell_size)
    position = [(cell // grid ** (d - 1 - a)) % grid for a in range(d)]
    region = tuple(
        slice(p * c + o, p * c + o + s) for p, c, o, s in zip(position, cell_size, offset, patch, strict=True)
    )
    return x[(slice(None), *region)]


@pytest.mark.parametrize("shape_extra", [0, 2], ids=["exact", "remainder"])
def test_jigsaw_slots_hold_documented_cells(spatial_dims: int, shape_extra: int) -> None:
    grid, cell = 3, 4
    shape = tuple(grid * cell + shape_extra + a for a in range(spatial_dims))  # non-cubic
    x = coordinate_image(5, 2, shape)
    task = Jigsaw(spatial_dims, grid=grid, num_permutations=20, jitter=0, **RAW)
    views, labels = task(x, generator=torch.Generator().manual_seed(0))
    cell_size = tuple(s // grid for s in shape)
    assert views.shape == (5, grid**spatial_dims, 2, *cell_size)
    for b in range(5):
        perm = task.permutations[labels[b]].tolist()
        for slot, c in enumerate(perm):
            expected = reference_patch(x[b], c, grid, cell_size, cell_size, (0,) * spatial_dims)
            assert torch.equal(views[b, slot], expected)
    # undoing the shuffle gives the cells in row-major order
    order = task.permutations[labels].argsort(dim=1)
    unshuffled = views[torch.arange(5)[:, None], order]
    cells = torch.arange(grid**spatial_dims)
    two = torch.stack([cells, cells.flip(0)])
    in_order = Jigsaw(spatial_dims, grid=grid, jitter=0, permutations=two, num_permutations=2, **RAW)
    params = in_order.randomize(x, torch.Generator().manual_seed(0))
    params.permutation = torch.zeros_like(params.permutation)  # every sample's tiles in row-major order
    assert torch.equal(unshuffled, in_order.apply_params(x, params)[0])


@pytest.mark.parametrize("task_cls", [Jigsaw, RelativePatchLocation])
def test_jittered_patches_stay_inside_their_cell(spatial_dims: int, task_cls: type) -> None:
    grid, jitter, cell = 3, 3, 7
    shape = (grid * cell,) * spatial_dims
    x = coordinate_image(16, 1, shape)
    task = task_cls(spatial_dims, grid=grid, jitter=jitter, **RAW)
    views, labels = task(x, generator=torch.Generator().manual_seed(1))
    patch = cell - jitter
    cells = (
        task.permutations[labels]
        if task_cls is Jigsaw
        else torch.stack([torch.full_like(labels, task.centre), task.query_cells(labels)], 1)
    )
    offsets_seen = set()
    for b, slot in itertools.product(range(16), range(cells.shape[1])):
        # the patch's first voxel tells its corner; the rest must be the block from there
        flat = int(views[(b, slot, 0, *[0] * spatial_dims)]) - b * cell**spatial_dims * grid**spatial_dims
        corner = [
            (flat // (grid * cell) ** (spatial_dims - 1 - a)) % (grid * cell) for a in range(spatial_dims)
        ]
        position = [
            (int(cells[b, slot]) // grid ** (spatial_dims - 1 - a)) % grid for a in range(spatial_dims)
        ]
        offset = tuple(c - p * cell for c, p in zip(corner, position, strict=True))
        assert all(0 <= o <= jitter for o in offset)
        offsets_seen.add(offset)
        expected = reference_patch(
            x[b], int(cells[b, slot]), grid, (cell,) * spatial_dims, (patch,) * spatial_dims, offset
        )
        assert torch.equal(views[b, slot], expected)
    assert len(offsets_seen) > 10  # offsets really vary per patch


@pytest.mark.parametrize("task_cls", [Jigsaw, RelativePatchLocation])
def test_eval_mode_takes_centre_crops(spatial_dims: int, task_cls: type) -> None:
    grid, jitter, cell = 3, 3, 6
    x = coordinate_image(4, 1, (grid * cell,) * spatial_dims)
    task = task_cls(spatial_dims, grid=grid, jitter=jitter, **RAW).eval()
    a, la = task(x, generator=torch.Generator().manual_seed(0))
    b, _ = task(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    cells = task.permutations[la] if task_cls is Jigsaw else task.query_cells(la)[:, None]
    slot = 0 if task_cls is Jigsaw else 1
    expected = reference_patch(
        x[0],
        int(cells[0, 0]),
        grid,
        (cell,) * spatial_dims,
        (cell - jitter,) * spatial_dims,
        (jitter // 2,) * spatial_dims,
    )
    assert torch.equal(a[0, slot], expected)


def test_rpl_labels_skip_the_centre(spatial_dims: int) -> None:
    task = RelativePatchLocation(spatial_dims, grid=3, jitter=0, **RAW)
    assert task.num_classes == (8 if spatial_dims == 2 else 26)
    centre = task.centre
    assert centre == (4 if spatial_dims == 2 else 13)
    labels = torch.arange(task.num_classes)
    cells = task.query_cells(labels)
    assert cells.tolist() == [c for c in range(3**spatial_dims) if c != centre]
    x = coordinate_image(600, 1, (9,) * spatial_dims)
    views, drawn = task(x, generator=torch.Generator().manual_seed(0))
    assert views.shape == (600, 2, 1, *[3] * spatial_dims)
    assert set(drawn.tolist()) == set(range(task.num_classes))
    for b in range(5):
        centre_patch = reference_patch(
            x[b], centre, 3, (3,) * spatial_dims, (3,) * spatial_dims, (0,) * spatial_dims
        )
        query = reference_patch(
            x[b],
            int(task.query_cells(drawn[b])),
            3,
            (3,) * spatial_dims,
            (3,) * spatial_dims,
            (0,) * spatial_dims,
        )
        assert torch.equal(views[b, 0], centre_patch) and torch.equal(views[b, 1], query)


@pytest.mark.parametrize("task_cls", [Jigsaw, RelativePatchLocation])
def test_determinism_per_seed(spatial_dims: int, task_cls: type) -> None:
    task = task_cls(spatial_dims)
    x = torch.randn(6, 1, *[15] * spatial_dims)
    v1, l1 = task(x, generator=torch.Generator().manual_seed(5))
    v2, l2 = task(x, generator=torch.Generator().manual_seed(5))
    v3, _ = task(x, generator=torch.Generator().manual_seed(6))
    assert torch.equal(v1, v2) and torch.equal(l1, l2) and not torch.equal(v1, v3)


@pytest.mark.parametrize("task_cls", [Jigsaw, RelativePatchLocation])
def test_single_sample_and_device(spatial_dims: int, task_cls: type, device: torch.device) -> None:
    task = task_cls(spatial_dims).to(device)
    view, label = task.single(torch.randn(1, *[15] * spatial_dims, device=device))
    patch = task.geometry((15,) * spatial_dims)[1]  # 5 - 0 - 0: jitter and gap are 10 % of 5, rounded down
    assert view.shape == (task.num_patches, 1, *patch) and patch == (5,) * spatial_dims
    assert label.shape == () and view.device.type == device.type


def test_jigsaw_default_set_and_distances(spatial_dims: int) -> None:
    task = Jigsaw(spatial_dims)
    cells = 3**spatial_dims
    assert torch.equal(task.permutations, p3.permutations.permutation_set(cells, 100, seed=0))
    assert task.hamming.min == (26 if spatial_dims == 3 else 7)
    assert task.num_classes == 100 and task.num_patches == cells
    assert "permutations" in task.state_dict()


def test_jigsaw_external_sets(tmp_path: Path) -> None:
    perms = p3.permutations.permutation_set(9, 10, seed=7)
    path = tmp_path / "perms.npy"
    np.save(path, perms.numpy() + 1)
    from_file = Jigsaw(2, num_permutations=10, permutations=path)
    from_tensor = Jigsaw(2, num_permutations=10, permutations=perms)
    assert torch.equal(from_file.permutations, perms) and torch.equal(from_tensor.permutations, perms)
    with pytest.raises(ValueError, match="holds 10 permutations but num_permutations=100"):
        Jigsaw(2, permutations=perms)
    with pytest.raises(ValueError, match=r"integer tensor \(count, 9\)"):
        Jigsaw(2, num_permutations=2, permutations=torch.arange(27)[None].repeat(2, 1))
    with pytest.raises(ValueError, match=r"must be a permutation of 0\.\.8"):
        Jigsaw(2, num_permutations=2, permutations=torch.zeros(2, 9, dtype=torch.long))


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: Jigsaw(3, jitter=-1), ValueError, "jitter must be an int >= 0, got -1"),
        (lambda: Jigsaw(2, grid=2, num_permutations=25), ValueError, r"num_permutations must be <= 4! = 24"),
        (lambda: Jigsaw(3, grid=1), ValueError, "grid must be an int >= 2, got 1"),
        (lambda: Jigsaw(5), ValueError, r"spatial_dims must be an integer in \[2, 3\], got 5"),
        (lambda: RelativePatchLocation(3, grid=4), ValueError, "grid must be odd"),
        (
            lambda: RelativePatchLocation(2, jitter=1.5),
            ValueError,
            r"jitter as a float is a fraction .* \[0, 1\)",
        ),
        (lambda: RelativePatchLocation(2, jitter="3"), TypeError, "jitter must be an int"),
    ],
)
def test_bad_construction(make: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        make()  # type: ignore[operator]


@pytest.mark.parametrize(("grid", "count"), [(2, 24), (3, 100)])
def test_jigsaw_s_default_set_fits_its_grid(spatial_dims: int, grid: int, count: int) -> None:
    """Left out, the permutation set is 100, or every permutation a smaller grid has (2D grid 2: 4! = 24)."""
    task = Jigsaw(spatial_dims, grid=grid)
    expected = count if spatial_dims == 2 else 100  # 8! and 27! permutations: 100 of them
    assert task.num_classes == expected and len(torch.unique(task.permutations, dim=0)) == expected


@pytest.mark.parametrize("task_cls", [Jigsaw, RelativePatchLocation])
def test_too_small_volume(spatial_dims: int, task_cls: type) -> None:
    task = task_cls(spatial_dims, grid=3, jitter=3, gap=0)
    assert task.smallest_size() == 12  # 3 * (3 + 0 + 1)
    with pytest.raises(
        ValueError, match=r"too small for grid=3, jitter=3 and gap=0: .*needs at least 12 voxels"
    ):
        task(torch.randn(2, 1, *[11] * spatial_dims))
    task(torch.randn(2, 1, *[12] * spatial_dims))  # the size it names works
    with pytest.raises(TypeError, match="floating-point"):
        task(torch.ones(2, 1, *[12] * spatial_dims, dtype=torch.uint8))
