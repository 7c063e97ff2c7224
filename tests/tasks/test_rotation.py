from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from pretext3d.functional.rotation import rotation_group
from pretext3d.tasks import Rotation, RotationParams

SETS = {2: ["plane4"], 3: ["plane4", "taleb10", "cube24"]}
SIZES = {"plane4": 4, "taleb10": 10, "cube24": 24}


def rotate(task: Rotation, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """The deterministic half of a call: rotate sample ``i`` by class ``classes[i]``."""
    return task.apply_params(x, RotationParams(classes.reshape(-1)))[0]


def all_sets() -> list[tuple[int, str]]:
    return [(d, name) for d, names in SETS.items() for name in names]


def reference_rot90(spatial_dims: int, rotations: str) -> list[tuple[tuple[int, int], int]]:
    """(plane, quarter turns) of each class, straight from the documentation."""
    if rotations == "plane4":
        plane = (0, 1) if spatial_dims == 2 else (1, 2)
        return [(plane, q) for q in range(4)]
    classes = [((0, 1), 0)]
    for axis in range(3):
        classes += [(((axis + 1) % 3, (axis + 2) % 3), q) for q in (1, 2, 3)]
    return classes


@pytest.mark.parametrize(("spatial_dims", "rotations"), all_sets())
def test_matrices_are_distinct_proper_signed_permutations(spatial_dims: int, rotations: str) -> None:
    task = Rotation(spatial_dims, rotations)  # type: ignore[arg-type]
    mats = task.matrices
    assert task.num_classes == SIZES[rotations] == len(mats)
    assert len(torch.unique(mats, dim=0)) == len(mats)
    assert torch.equal(mats[0], torch.eye(spatial_dims, dtype=torch.long))
    assert ((mats != 0).sum(1) == 1).all() and ((mats != 0).sum(2) == 1).all()
    assert torch.allclose(torch.linalg.det(mats.double()), torch.ones(len(mats), dtype=torch.float64))
    eye = torch.eye(spatial_dims, dtype=torch.long).expand_as(mats)
    assert torch.equal(mats[task.inverse_classes] @ mats, eye)


def test_cube24_is_the_closed_rotation_group_and_extends_taleb10() -> None:
    cube = Rotation(3, "cube24").matrices
    assert torch.equal(cube[:10], Rotation(3, "taleb10").matrices)
    products = (cube[:, None] @ cube[None, :]).reshape(-1, 3, 3)
    assert len(torch.unique(products, dim=0)) == 24
    assert torch.equal(torch.unique(products, dim=0), torch.unique(cube, dim=0))
    assert torch.equal(torch.unique(rotation_group(3), dim=0), torch.unique(cube, dim=0))
    assert len(rotation_group(2)) == 4


@pytest.mark.parametrize(("spatial_dims", "rotations"), all_sets())
@pytest.mark.parametrize("size", [5, 48], ids=["small", "large"])
def test_apply_matches_documented_rot90(spatial_dims: int, rotations: str, size: int) -> None:
    # "large" samples (>= 65536 voxels in 3D) take the per-run and tiled paths.
    side = size if spatial_dims == 3 else size * 6
    task = Rotation(spatial_dims, rotations)  # type: ignore[arg-type]
    reference = reference_rot90(spatial_dims, rotations)
    labels = torch.arange(task.num_classes).repeat_interleave(2)[torch.randperm(2 * task.num_classes)]
    x = torch.randn(len(labels), 2, *[side] * spatial_dims)
    out = rotate(task, x, labels)
    for i, k in enumerate(labels.tolist()):
        if k < len(reference):
            (a, b), q = reference[k]
            expected = torch.rot90(x[i], q, dims=(1 + a, 1 + b))
        else:  # cube24 beyond taleb10: check against the matrix itself below
            continue
        assert torch.equal(out[i], expected), f"class {k}"


@pytest.mark.parametrize(("spatial_dims", "rotations"), all_sets())
def test_matrix_moves_each_voxel_as_documented(spatial_dims: int, rotations: str) -> None:
    # A one-hot voxel at centred coordinate v must land at M v.
    task = Rotation(spatial_dims, rotations)  # type: ignore[arg-type]
    n = 5
    for k, mat in enumerate(task.matrices):
        for flat in (0, 7, 31, n**spatial_dims - 1):
            pos = torch.tensor([(flat // n ** (spatial_dims - 1 - a)) % n for a in range(spatial_dims)])
            x = torch.zeros(1, 1, *[n] * spatial_dims)
            x[(0, 0, *pos.tolist())] = 1.0
            moved = mat @ (pos - n // 2) + n // 2
            out = rotate(task, x, torch.tensor([k]))
            assert out[(0, 0, *moved.tolist())] == 1.0 and out.sum() == 1.0


@given(
    batch=st.integers(1, 12),
    channels=st.integers(1, 3),
    side=st.integers(1, 9),
    seed=st.integers(0, 2**31 - 1),
    which=st.sampled_from(all_sets()),
)
def test_inverse_restores_input_and_call_agrees_with_apply(
    batch: int, channels: int, side: int, seed: int, which: tuple[int, str]
) -> None:
    spatial_dims, rotations = which
    task = Rotation(spatial_dims, rotations)  # type: ignore[arg-type]
    x = torch.randn(batch, channels, *[side] * spatial_dims, generator=torch.Generator().manual_seed(seed))
    views, labels = task(x, generator=torch.Generator().manual_seed(seed))
    assert views.shape == x.shape and labels.shape == (batch,) and labels.dtype == torch.long
    assert torch.equal(views, rotate(task, x, labels))
    assert torch.equal(rotate(task, views, task.inverse_classes[labels]), x)


def test_same_seed_same_output_other_seed_other_labels(spatial_dims: int) -> None:
    task = Rotation(spatial_dims)
    x = torch.randn(64, 1, *[6] * spatial_dims)
    v1, l1 = task(x, generator=torch.Generator().manual_seed(1))
    v2, l2 = task(x, generator=torch.Generator().manual_seed(1))
    _, l3 = task(x, generator=torch.Generator().manual_seed(2))
    assert torch.equal(v1, v2) and torch.equal(l1, l2)
    assert not torch.equal(l1, l3)
    assert set(l1.tolist()) == set(range(task.num_classes))  # 64 draws cover every class


def test_single_sample_and_device(spatial_dims: int, device: torch.device) -> None:
    task = Rotation(spatial_dims).to(device)
    x = torch.randn(2, *[6] * spatial_dims, device=device)
    view, label = task.single(x)
    assert view.shape == x.shape and label.shape == () and view.device == x.device
    assert torch.equal(view, rotate(task, x[None], label)[0])


def test_plane4_needs_only_a_square_plane() -> None:
    task = Rotation(3, "plane4", plane=(0, 2))
    x = torch.randn(3, 1, 6, 4, 6)
    out = rotate(task, x, torch.tensor([1, 2, 3]))
    assert torch.equal(out[0], torch.rot90(x[0], 1, dims=(1, 3)))
    assert torch.equal(out[2], torch.rot90(x[2], 3, dims=(1, 3)))


def test_non_contiguous_input() -> None:
    x = torch.randn(4, 1, 8, 8, 8).transpose(2, 4)
    labels = torch.tensor([1, 4, 7, 1])
    task = Rotation(3)
    assert torch.equal(rotate(task, x, labels), rotate(task, x.contiguous(), labels))


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: Rotation(4), ValueError, r"spatial_dims must be an integer in \[2, 3\], got 4"),
        (lambda: Rotation("3"), TypeError, r"spatial_dims must be an integer in \[2, 3\]"),  # type: ignore[arg-type]
        (
            lambda: Rotation(2, "taleb10"),
            ValueError,
            r"rotations \(for spatial_dims=2\) must be one of \['plane4'\]",
        ),
        (lambda: Rotation(3, "cube"), ValueError, "must be one of"),  # type: ignore[arg-type]
        (lambda: Rotation(3, "taleb10", plane=(0, 1)), ValueError, "plane only applies"),
        (lambda: Rotation(3, "plane4", plane=(1, 1)), ValueError, "two distinct spatial axes"),
        (lambda: Rotation(2, plane=(0, 2)), ValueError, r"spatial axes in 0..1"),
    ],
)
def test_bad_construction(make: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        make()  # type: ignore[operator]


@pytest.mark.parametrize(
    ("x", "error", "match"),
    [
        ([[1.0]], TypeError, "x must be a torch.Tensor, got list"),
        (torch.ones(2, 1, 4, 4, 4, dtype=torch.int64), TypeError, "floating-point tensor"),
        (torch.ones(4, 4, 4), ValueError, r"\(rank 5\), got shape \(4, 4, 4\) \(rank 3\)"),
        (torch.ones(1, 1, 1, 4, 4, 4), ValueError, r"got shape \(1, 1, 1, 4, 4, 4\) \(rank 6\)"),
        (torch.ones(0, 1, 4, 4, 4), ValueError, "must not be empty"),
        (torch.ones(2, 1, 4, 4, 5), ValueError, "needs equal sizes there"),
        (torch.full((2, 1, 4, 4, 4), float("nan")), ValueError, "NaN or infinite"),
    ],
)
def test_bad_input(x: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        Rotation(3)(x)  # type: ignore[arg-type]


def test_bad_params() -> None:
    task = Rotation(3)
    x = torch.ones(2, 1, 4, 4, 4)
    with pytest.raises(ValueError, match=r"params.rotation must lie in \[0, 10\)"):
        rotate(task, x, torch.tensor([0, 10]))
    with pytest.raises(ValueError, match=r"params were drawn for a batch of 3, but x holds 2"):
        rotate(task, x, torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match=r"params.rotation must be an integer tensor"):
        rotate(task, x, torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError, match=r"params must be a RotationParams \(from Rotation.randomize\)"):
        task.apply_params(x, torch.tensor([0, 1]))  # type: ignore[arg-type]


def test_finite_check_can_be_switched_off() -> None:
    x = torch.full((1, 1, 4, 4, 4), float("nan"))
    views, _ = Rotation(3, check_finite=False)(x)
    assert views.isnan().all()
