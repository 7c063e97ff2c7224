"""Label-fraction subsets, stratified splits and seed streams."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pretext3d.experiments import (
    nested_subsets,
    run_seeds,
    split_cases,
)


@given(count=st.integers(8, 200), seed=st.integers(0, 1000), split_seed=st.integers(0, 1000))
def test_subsets_are_nested_and_the_test_set_is_fixed(count: int, seed: int, split_seed: int) -> None:
    split = split_cases(count, 0.15, 0.25, split_seed)
    assert sorted(split.train + split.val + split.test) == list(range(count))
    assert split == split_cases(count, 0.15, 0.25, split_seed)  # fixed across methods and fractions
    fractions = (0.05, 0.1, 0.25, 0.5, 1.0)
    subsets = nested_subsets(split.train, fractions, seed)
    for small, large in itertools.pairwise(fractions):
        assert set(subsets[small]) <= set(subsets[large])
    assert sorted(subsets[1.0]) == sorted(split.train)
    assert all(len(s) >= 1 for s in subsets.values())
    assert not set(subsets[1.0]) & (set(split.val) | set(split.test))


@given(
    grades=st.lists(st.integers(0, 4), min_size=30, max_size=200),
    seed=st.integers(0, 1000),
)
def test_stratified_splits_and_subsets_keep_every_grade_in_proportion(grades: list[int], seed: int) -> None:
    split = split_cases(len(grades), 0.15, 0.25, seed, strata=grades)
    assert sorted(split.train + split.val + split.test) == list(range(len(grades)))
    for part in (split.val, split.test):  # largest-remainder allocation: within one of the share
        for g in set(grades):
            expected = grades.count(g) * len(part) / len(grades)
            assert abs(sum(grades[i] == g for i in part) - expected) < 1
    pool = [grades[i] for i in split.train]
    subsets = nested_subsets(split.train, (0.25, 0.5, 1.0), seed, strata=pool)
    assert set(subsets[0.25]) <= set(subsets[0.5]) <= set(subsets[1.0])
    strata = len(set(pool))
    for g in set(pool):
        share = pool.count(g) / len(pool)
        # within one of the share, plus the prefix's rounding spread over the strata
        assert (
            abs(sum(grades[i] == g for i in subsets[0.5]) - share * len(subsets[0.5])) <= 1 + strata * share
        )


def test_unstratified_split_misses_a_grade_that_the_stratified_one_keeps() -> None:
    grades = [0] * 90 + [1] * 10
    # some seeds put no grade-1 case in validation when not stratified; stratified always does
    plain = [sum(grades[i] == 1 for i in split_cases(100, 0.1, 0.1, s).val) for s in range(40)]
    strat = [sum(grades[i] == 1 for i in split_cases(100, 0.1, 0.1, s, strata=grades).val) for s in range(40)]
    assert min(plain) == 0 and set(strat) == {1}


def test_run_seeds_are_separate_streams() -> None:
    a = run_seeds(0, 0, 0)
    assert len({a.subset, a.init, a.order}) == 3
    assert run_seeds(0, 0, 1).subset == a.subset  # the training seed leaves the subset alone
    assert run_seeds(0, 0, 1).init != a.init and run_seeds(0, 0, 1).order != a.order
    assert run_seeds(0, 1, 0).subset != a.subset and run_seeds(1, 0, 0).subset != a.subset
    assert run_seeds(0, 0, 0) == a
    with pytest.raises(ValueError, match="seeds must be >= 0"):
        run_seeds(-1, 0)
