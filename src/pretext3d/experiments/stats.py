"""Paired comparisons of a method against the baseline over seeds.

The unit of replication is the split seed: each split seed has its own validation and
test cases, labelled subsets and initialisations, so the split seeds are independent
repeats of the whole experiment. Within a split seed, the difference ``method - baseline``
is taken per (repetition, pretraining seed) on the same subset, initialisation and batch
order, then averaged. The interval is Student's t over split seeds, the test a paired
t-test (and the count of split seeds the method wins). Per-case scores are kept in the
results as a second layer; they are not independent repeats and never give the interval.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from scipy import stats as scipy_stats

__all__ = ["PairedComparison", "detectable_difference", "holm", "paired_differences"]


@dataclass(frozen=True)
class PairedComparison:
    """``method - baseline`` at one label fraction.

    Attributes:
        method: the compared method.
        fraction: the label fraction.
        differences: one mean paired difference per split seed.
        mean: mean of ``differences``.
        low: lower end of the confidence interval (NaN with fewer than two split seeds).
        high: upper end of the confidence interval (NaN likewise).
        p_value: two-sided paired t-test of mean zero (NaN likewise, or when all differences agree).
        wins: split seeds on which the method is ahead.

    Examples:
        >>> rows = [{"method": m, "fraction": 0.1, "split_seed": s, "repetition": 0, "pretraining_seed": 0,
        ...          "test": {"qwk": q}}
        ...         for m, scores in {"scratch": [0.50, 0.60, 0.55], "rotation": [0.58, 0.66, 0.57]}.items()
        ...         for s, q in enumerate(scores)]   # rows as the runner writes them, 3 split seeds
        >>> comparison = paired_differences(rows, "qwk")[0]
        >>> comparison.method, comparison.wins, round(comparison.mean, 3), round(comparison.p_value, 3)
        ('rotation', 3, 0.053, 0.094)
    """

    method: str
    fraction: float
    differences: tuple[float, ...]
    mean: float
    low: float
    high: float
    p_value: float
    wins: int

    @property
    def n(self) -> int:
        """Number of split seeds."""
        return len(self.differences)


def paired_differences(
    rows: Sequence[dict[str, Any]], metric: str, baseline: str = "scratch", confidence: float = 0.95
) -> list[PairedComparison]:
    """Paired differences of every method against ``baseline``, per label fraction.

    Args:
        rows: results of :func:`~pretext3d.experiments.runner.run_data_efficiency` (each with
            ``method``, ``fraction``, ``split_seed``, ``repetition`` and ``test[metric]``).
        metric: the test metric.
        baseline: the method the others are compared against.
        confidence: coverage of the interval.

    Returns:
        One comparison per (method, fraction) with at least one pair, sorted by method
        (in order of appearance) and fraction. Pairs where either score is NaN are left out.

    Examples:
        >>> rows = [{"method": m, "fraction": 0.1, "split_seed": s, "repetition": 0, "pretraining_seed": 0,
        ...          "test": {"qwk": q}}
        ...         for m, scores in {"scratch": [0.50, 0.60, 0.55], "rotation": [0.58, 0.66, 0.57]}.items()
        ...         for s, q in enumerate(scores)]   # rows as the runner writes them, 3 split seeds
        >>> [(c.method, c.fraction, [round(d, 2) for d in c.differences])
        ...  for c in paired_differences(rows, "qwk")]
        [('rotation', 0.1, [0.08, 0.06, 0.02])]
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    base = {
        (r["fraction"], r["split_seed"], r["repetition"]): float(r["test"][metric])
        for r in rows
        if r["method"] == baseline
    }
    pairs: dict[tuple[str, float], dict[int, list[float]]] = {}
    for r in rows:
        if r["method"] == baseline:
            continue
        ref = base.get((r["fraction"], r["split_seed"], r["repetition"]))
        value = float(r["test"][metric])
        if ref is None or math.isnan(ref) or math.isnan(value):
            continue
        cell = pairs.setdefault((r["method"], r["fraction"]), {})
        cell.setdefault(r["split_seed"], []).append(value - ref)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    out = []
    for (method, fraction), by_split in sorted(
        pairs.items(), key=lambda kv: (methods.index(kv[0][0]), kv[0][1])
    ):
        diffs = tuple(statistics.fmean(v) for _, v in sorted(by_split.items()))
        mean = statistics.fmean(diffs)
        low = high = p_value = math.nan
        if len(diffs) > 1:
            sd = statistics.stdev(diffs)
            half = float(scipy_stats.t.ppf(0.5 + confidence / 2, len(diffs) - 1)) * sd / math.sqrt(len(diffs))
            low, high = mean - half, mean + half
            if sd > 0:
                p_value = float(
                    2 * scipy_stats.t.sf(abs(mean) / (sd / math.sqrt(len(diffs))), len(diffs) - 1)
                )
        out.append(
            PairedComparison(method, fraction, diffs, mean, low, high, p_value, sum(d > 0 for d in diffs))
        )
    return out


def detectable_difference(comparison: PairedComparison, tests: int, alpha: float = 0.05) -> float:
    """The smallest mean difference ``comparison``'s split seeds could have called significant after Holm.

    Holm's first step tests the smallest p-value at ``alpha / tests``; a paired t-test over ``n``
    split seeds with the observed spread ``sd`` of the differences reaches it only when
    ``|mean| >= t(1 - alpha / (2 tests), n - 1) * sd / sqrt(n)``. A row whose true effect is
    smaller cannot be a finding of this grid, whatever it shows. NaN with fewer than two seeds.

    Args:
        comparison: one row of :func:`paired_differences`.
        tests: the rows tested together (Holm's ``m``).
        alpha: the family-wise error rate.

    Examples:
        >>> row = PairedComparison("rotation", 0.05, (0.1, -0.1) * 10, 0.0, -0.05, 0.05, 1.0, 10)
        >>> round(detectable_difference(row, tests=25) / statistics.stdev(row.differences), 2)   # 20 seeds
        0.8
        >>> few = PairedComparison("rotation", 0.05, (0.1, -0.1, 0.1, -0.1, 0.1), 0.02, -0.1, 0.1, 1.0, 3)
        >>> round(detectable_difference(few, tests=25) / statistics.stdev(few.differences), 2)   # 5 seeds
        3.21
    """
    if comparison.n < 2:
        return math.nan
    if tests < 1:
        raise ValueError(f"tests must be >= 1, got {tests}")
    sd = statistics.stdev(comparison.differences)
    t = float(scipy_stats.t.ppf(1 - alpha / (2 * tests), comparison.n - 1))
    return t * sd / math.sqrt(comparison.n)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of ``p_values`` for testing them all at once.

    With many (method, fraction) comparisons some reach p < 0.05 by chance; Holm's adjusted
    p-values keep the chance of any false positive at the nominal level. NaN stays NaN and
    does not count as a test.

    Examples:
        >>> holm([0.01, 0.04, 0.03])   # each p-value adjusted for the three tests
        [0.03, 0.06, 0.06]

    References:
        - Holm, "A Simple Sequentially Rejective Multiple Test Procedure", Scandinavian Journal of Statistics
          1979.
    """
    valid = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    out = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(valid):
        running = max(running, min(1.0, (len(valid) - rank) * p))
        out[i] = running
    return out
