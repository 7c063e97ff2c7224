"""Splits and nested label-fraction subsets.

The original took the first k % of files in directory order. Here a fixed seeded split
gives validation and test sets shared by every fraction and method, and each
repetition draws one seeded order of the training pool whose prefixes are the label
fractions, so 5 % ⊂ 10 % ⊂ 25 % ⊂ ... within a repetition.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["Split", "nested_subsets", "split_cases"]


@dataclass(frozen=True)
class Split:
    """Indices of the training pool, validation and test cases."""

    train: list[int]
    val: list[int]
    test: list[int]


def split_cases(count: int, val_fraction: float, test_fraction: float, seed: int = 0) -> Split:
    """Split ``count`` cases at random (seeded) into training pool, validation and test.

    Validation and test get at least one case each when their fraction is positive.
    """
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError(
            "val_fraction and test_fraction must be in [0, 1) and sum below 1, "
            f"got {val_fraction}, {test_fraction}"
        )
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    n_test = max(1, round(test_fraction * count)) if test_fraction else 0
    n_val = max(1, round(val_fraction * count)) if val_fraction else 0
    if n_test + n_val >= count:
        raise ValueError(
            f"{count} cases are too few for {n_val} validation and {n_test} test cases plus training"
        )
    return Split(train=order[n_test + n_val :], val=order[n_test : n_test + n_val], test=order[:n_test])


def nested_subsets(pool: Sequence[int], fractions: Sequence[float], seed: int) -> dict[float, list[int]]:
    """Nested seeded subsets of ``pool``.

    Fraction ``f`` gets the first ``ceil(f * len(pool))`` cases (at least one) of one
    seeded order, so smaller fractions are subsets of larger ones.
    """
    if not pool:
        raise ValueError("the training pool is empty")
    for f in fractions:
        if not 0 < f <= 1:
            raise ValueError(f"fractions must lie in (0, 1], got {f}")
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed)).tolist()
    ranked = [pool[i] for i in order]
    return {f: ranked[: max(1, math.ceil(f * len(pool) - 1e-9))] for f in fractions}
