"""Splits, nested label-fraction subsets, and the seeds of a data-efficiency run.

The original took the first k % of files in directory order. Here a seeded split gives
validation and test sets shared by every fraction and method of one split seed, and each
repetition draws one seeded order of the training pool whose prefixes are the label
fractions, so 5 % ⊂ 10 % ⊂ 25 % ⊂ ... within a repetition. With class labels (grading)
both are stratified: every grade keeps its share in validation, test and every prefix
(up to rounding).

The randomness of a run comes from separate streams, so that changing one does not
change another (see :func:`run_seeds`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["RunSeeds", "Split", "nested_subsets", "run_seeds", "split_cases"]


@dataclass(frozen=True)
class Split:
    """Indices of the training pool, validation and test cases.

    Examples:
        >>> split = split_cases(20, val_fraction=0.15, test_fraction=0.25, seed=0)
        >>> len(split.train), len(split.val), len(split.test)
        (12, 3, 5)
        >>> sorted(split.train + split.val + split.test) == list(range(20))
        True
    """

    train: list[int]
    val: list[int]
    test: list[int]


def split_cases(
    count: int,
    val_fraction: float,
    test_fraction: float,
    seed: int = 0,
    *,
    strata: Sequence[int] | None = None,
) -> Split:
    """Split ``count`` cases at random (seeded) into training pool, validation and test.

    Validation and test get at least one case each when their fraction is positive. With
    ``strata``, each stratum gets its share of the validation and test cases by the largest
    remainder method (within one case of its exact share), the rest going to the pool.

    Args:
        count: number of cases.
        val_fraction: share for validation.
        test_fraction: share for test.
        seed: the split's seed.
        strata: one class label per case (e.g. the DR grade) to stratify by, or ``None``.

    Examples:
        >>> split = split_cases(20, val_fraction=0.15, test_fraction=0.25, seed=0)
        >>> len(split.train), len(split.val), len(split.test)
        (12, 3, 5)
    """
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError(
            "val_fraction and test_fraction must be in [0, 1) and sum below 1, "
            f"got {val_fraction}, {test_fraction}"
        )
    if strata is not None and len(strata) != count:
        raise ValueError(f"strata must have one label per case ({count}), got {len(strata)}")
    generator = torch.Generator().manual_seed(seed)
    n_test = max(1, round(test_fraction * count)) if test_fraction else 0
    n_val = max(1, round(val_fraction * count)) if val_fraction else 0
    if n_test + n_val >= count:
        raise ValueError(
            f"{count} cases are too few for {n_val} validation and {n_test} test cases plus training"
        )
    if strata is None:
        order = torch.randperm(count, generator=generator).tolist()
        return Split(train=order[n_test + n_val :], val=order[n_test : n_test + n_val], test=order[:n_test])
    labels = torch.as_tensor(list(strata))
    members = {}
    for value in torch.unique(labels).tolist():
        found = torch.nonzero(labels == value).flatten()
        members[value] = found[torch.randperm(len(found), generator=generator)].tolist()
    sizes = {v: len(m) for v, m in members.items()}
    n_test_by = _allocate(n_test, sizes, sizes, generator)
    n_val_by = _allocate(n_val, sizes, {v: sizes[v] - n_test_by[v] for v in sizes}, generator)
    test, val, train = [], [], []
    for v, m in members.items():
        test += m[: n_test_by[v]]
        val += m[n_test_by[v] : n_test_by[v] + n_val_by[v]]
        train += m[n_test_by[v] + n_val_by[v] :]
    shuffle = torch.randperm(len(train), generator=generator).tolist()
    return Split(train=[train[i] for i in shuffle], val=val, test=test)


def _allocate(
    total: int, sizes: dict[int, int], capacity: dict[int, int], generator: torch.Generator
) -> dict[int, int]:
    """Split ``total`` over strata in proportion to ``sizes`` (largest remainder, ties at random)."""
    count = sum(sizes.values())
    quota = {v: total * n / count for v, n in sizes.items()}
    out = {v: min(int(q), capacity[v]) for v, q in quota.items()}
    jitter = dict(zip(sizes, torch.rand(len(sizes), generator=generator).tolist(), strict=True))
    ranked = sorted(sizes, key=lambda v: (quota[v] - out[v], jitter[v]), reverse=True)
    while sum(out.values()) < total:
        progressed = False
        for v in ranked:
            if sum(out.values()) < total and out[v] < capacity[v]:
                out[v] += 1
                progressed = True
        if not progressed:
            break
    return out


def nested_subsets(
    pool: Sequence[int],
    fractions: Sequence[float],
    seed: int,
    *,
    strata: Sequence[int] | None = None,
) -> dict[float, list[int]]:
    """Nested seeded subsets of ``pool``.

    Fraction ``f`` gets the first ``ceil(f * len(pool))`` cases (at least one) of one
    seeded order, so smaller fractions are subsets of larger ones.

    Args:
        pool: case indices.
        fractions: label fractions in (0, 1].
        seed: the order's seed.
        strata: one class label per entry of ``pool`` to stratify the order by, or ``None``.

    Examples:
        >>> subsets = nested_subsets(list(range(12)), (0.25, 0.5, 1.0), seed=0)
        >>> {f: len(s) for f, s in subsets.items()}, set(subsets[0.25]) <= set(subsets[0.5])
        ({0.25: 3, 0.5: 6, 1.0: 12}, True)
    """
    if not pool:
        raise ValueError("the training pool is empty")
    for f in fractions:
        if not 0 < f <= 1:
            raise ValueError(f"fractions must lie in (0, 1], got {f}")
    if strata is not None and len(strata) != len(pool):
        raise ValueError(f"strata must have one label per pool entry ({len(pool)}), got {len(strata)}")
    generator = torch.Generator().manual_seed(seed)
    if strata is None:
        order = torch.randperm(len(pool), generator=generator).tolist()
    else:
        order = _stratified_order(strata, generator)
    ranked = [pool[i] for i in order]
    return {f: ranked[: max(1, math.ceil(f * len(pool) - 1e-9))] for f in fractions}


def _stratified_order(strata: Sequence[int], generator: torch.Generator) -> list[int]:
    """A seeded order of ``range(len(strata))`` whose every prefix holds each stratum in proportion.

    Member ``j`` (in a seeded order) of a stratum of size ``n`` gets the key
    ``(j + u) / n`` with one uniform ``u`` per stratum; sorting by key interleaves the
    strata evenly, so a prefix holds each stratum within one of its share, up to the
    rounding of the prefix's length.
    """
    labels = torch.as_tensor(list(strata))
    keys = torch.empty(len(labels), dtype=torch.float64)
    for value in torch.unique(labels).tolist():
        members = torch.nonzero(labels == value).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        offset = float(torch.rand(1, generator=generator, dtype=torch.float64))
        keys[members] = (torch.arange(len(members), dtype=torch.float64) + offset) / len(members)
    return torch.argsort(keys, stable=True).tolist()


@dataclass(frozen=True)
class RunSeeds:
    """The independent random streams of one fine-tuning run.

    Attributes:
        subset: the order of the training pool (which cases are labelled at each fraction).
        init: the weight initialisation of the parts not loaded from an encoder file.
        order: the batch order and augmentation.

    Examples:
        >>> seeds = run_seeds(split_seed=0, repetition=0)
        >>> # the subset ignores train_seed
        >>> seeds == run_seeds(0, 0), seeds.subset == run_seeds(0, 0, train_seed=1).subset
        (True, True)
    """

    subset: int
    init: int
    order: int


def run_seeds(split_seed: int, repetition: int, train_seed: int = 0) -> RunSeeds:
    """Seeds of run ``(split_seed, repetition)``, each from its own stream (``numpy.random.SeedSequence``).

    The subset depends on the split and the repetition only; initialisation and batch
    order also on ``train_seed``. Every method of a (split, repetition) cell gets the same
    three seeds, so methods differ only in the encoder's starting weights.

    Examples:
        >>> run_seeds(0, 1)
        RunSeeds(subset=3831201730, init=1501029259, order=3720552013)
        >>> run_seeds(0, 1).init != run_seeds(0, 1, train_seed=1).init
        True
    """
    if min(split_seed, repetition, train_seed) < 0:
        raise ValueError(
            f"seeds must be >= 0, got split_seed={split_seed}, repetition={repetition}, "
            f"train_seed={train_seed}"
        )

    def stream(*key: int) -> int:
        return int(np.random.SeedSequence(key).generate_state(1, dtype=np.uint32)[0])

    return RunSeeds(
        subset=stream(0, split_seed, repetition),
        init=stream(1, split_seed, repetition, train_seed),
        order=stream(2, split_seed, repetition, train_seed),
    )
