from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import pretext3d as p3
from pretext3d import permutations as perm_mod


def brute_hamming(perms: torch.Tensor) -> tuple[int, float]:
    rows = perms.tolist()
    dists = [sum(a != b for a, b in zip(r, s, strict=True)) for r, s in itertools.combinations(rows, 2)]
    return min(dists), sum(dists) / len(dists)


def assert_valid(perms: torch.Tensor, count: int, cells: int) -> None:
    assert perms.dtype == torch.long and perms.shape == (count, cells)
    assert torch.equal(perms.sort(dim=1).values, torch.arange(cells).expand(count, cells))
    assert len(torch.unique(perms, dim=0)) == count


@pytest.mark.parametrize(
    ("cells", "count", "target"),
    [(27, 100, 26), (9, 100, 7), (8, 100, 6), (9, 72, 8), (64, 100, 63), (16, 100, 15), (4, 12, 3)],
)
def test_reaches_proven_maximum_min_distance(cells: int, count: int, target: int) -> None:
    perms = p3.permutations.permutation_set(cells, count)
    assert_valid(perms, count, cells)
    stats = p3.permutations.hamming_stats(perms)
    assert stats.min == target
    assert (stats.min, stats.mean) == pytest.approx(brute_hamming(perms))


def test_beats_the_original_random_sets() -> None:
    # The original's random 3D set had minimum distance 19, its 2D file 2.
    assert p3.permutations.hamming_stats(p3.permutations.permutation_set(27, 100, method="random")).min < 26
    assert p3.permutations.hamming_stats(p3.permutations.permutation_set(27, 100)).min == 26


def test_hamming_stats_by_hand() -> None:
    stats = p3.permutations.hamming_stats(torch.tensor([[0, 1, 2], [1, 0, 2], [2, 1, 0]]))
    assert stats.min == 2
    assert stats.mean == pytest.approx(7 / 3)


def test_deterministic_per_seed_and_cached_copies_are_independent() -> None:
    a = p3.permutations.permutation_set(27, 100, seed=3)
    assert torch.equal(a, p3.permutations.permutation_set(27, 100, seed=3))
    assert not torch.equal(a, p3.permutations.permutation_set(27, 100, seed=4))
    a[0] = 0  # mutating a result must not reach the cache
    assert_valid(p3.permutations.permutation_set(27, 100, seed=3), 100, 27)


@pytest.mark.parametrize("q", [2, 3, 4, 5, 7, 8, 9, 16, 25, 27])
def test_field_tables_are_a_field(q: int) -> None:
    add, mul = perm_mod._field_tables(q)
    elems = np.arange(q)
    assert (np.sort(add, axis=1) == elems).all()  # every row of + is a permutation
    assert (np.sort(mul[1:, 1:], axis=1) == elems[1:]).all()  # nonzero elements invert
    assert (add[0] == elems).all() and (mul[1] == elems).all() and (mul[0] == 0).all()
    a, b, c = np.meshgrid(elems, elems, elems, indexing="ij")
    assert (mul[a, add[b, c]] == add[mul[a, b], mul[a, c]]).all()  # distributive
    assert (mul[a, mul[b, c]] == mul[mul[a, b], c]).all()  # associative


@pytest.mark.parametrize("q", [3, 4, 5, 7, 8, 9])
def test_mobius_group_is_sharply_three_transitive(q: int) -> None:
    group = perm_mod._mobius_group(q)
    assert group.shape == ((q + 1) * q * (q - 1), q + 1)
    assert_valid(torch.from_numpy(group), len(group), q + 1)
    # sharply 3-transitive: every ordered triple of distinct points is hit exactly once
    images = {tuple(row[:3]) for row in group.tolist()}
    assert len(images) == len(group)
    assert p3.permutations.hamming_stats(group).min == q - 1


@pytest.mark.parametrize("cells", [6, 10, 12])
def test_greedy_fallback_beats_random(cells: int) -> None:
    greedy = p3.permutations.permutation_set(cells, 40, method="greedy")
    assert_valid(greedy, 40, cells)
    assert (
        p3.permutations.hamming_stats(greedy).min
        >= p3.permutations.hamming_stats(p3.permutations.permutation_set(cells, 40, method="random")).min
    )


def test_fallback_where_no_group_fits() -> None:
    perms = p3.permutations.permutation_set(36, 50)  # 36 and 35 are not prime powers
    assert_valid(perms, 50, 36)
    assert p3.permutations.hamming_stats(perms).min >= 30


def test_all_permutations_of_small_sets() -> None:
    perms = p3.permutations.permutation_set(4, 24)
    assert_valid(perms, 24, 4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_cells": 4, "count": 25}, "count must be <= num_cells! = 24"),
        ({"num_cells": 1, "count": 1}, "num_cells must be an int >= 2"),
        ({"num_cells": 9, "count": 0}, "count must be an int >= 1"),
        ({"num_cells": 9, "count": 5, "method": "best"}, "method must be one of"),
        ({"num_cells": 10, "count": 5, "method": "affine"}, "method='affine' needs num_cells"),
        ({"num_cells": 9, "count": 100, "method": "affine"}, "gives 72 permutations"),
        ({"num_cells": 7, "count": 5, "method": "mobius"}, "method='mobius' needs num_cells - 1"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        p3.permutations.permutation_set(**kwargs)  # type: ignore[arg-type]


def test_types_are_checked() -> None:
    with pytest.raises(TypeError, match="count must be an int"):
        p3.permutations.permutation_set(9, 10.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("one_based", [False, True])
def test_load_npy(tmp_path: Path, one_based: bool) -> None:
    perms = p3.permutations.permutation_set(9, 30)
    path = tmp_path / "perms.npy"
    np.save(path, perms.numpy() + int(one_based))
    assert torch.equal(p3.permutations.load_permutation_set(path, num_cells=9), perms)


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.array([[0, 1, 1], [1, 0, 2]]), "every row must be a permutation"),
        (np.array([[0, 1, 2], [0, 1, 2]]), "repeated rows"),
        (np.array([0, 1, 2]), "2-D integer array"),
        (np.array([[0.5, 1, 2]]), "2-D integer array"),
        (np.array([[0, 1, 2, 3]]), "permutes 4 cells, but num_cells=3"),
    ],
)
def test_load_rejects_bad_files(tmp_path: Path, array: np.ndarray, match: str) -> None:
    path = tmp_path / "bad.npy"
    np.save(path, array)
    with pytest.raises(ValueError, match=match):
        p3.permutations.load_permutation_set(path, num_cells=3)


def test_count_limit_uses_factorial() -> None:
    assert len(p3.permutations.permutation_set(5, math.factorial(5))) == 120
