"""Paired statistics by hand."""

from __future__ import annotations

import math

import pytest

from pretext3d.experiments import (
    holm,
    paired_differences,
)
from tests.conftest import result_row


def test_paired_differences_by_hand() -> None:
    rows = [result_row("scratch", 0.1, s, v) for s, v in enumerate([0.5, 0.6, 0.7])]
    rows += [result_row("pre", 0.1, s, v) for s, v in enumerate([0.6, 0.6, 0.9])]
    rows += [
        result_row("pre", 0.1, 2, 0.7)
    ]  # a second pretraining seed on split 2: averaged within the split
    rows += [result_row("pre", 1.0, 0, 0.3), result_row("scratch", 1.0, 0, float("nan"))]  # no valid pair
    (c,) = paired_differences(rows, "m")
    assert c.method == "pre" and c.fraction == 0.1 and c.n == 3 and c.wins == 2
    diffs = [0.1, 0.0, 0.1]  # split 2: mean of 0.2 and 0.0
    assert c.differences == pytest.approx(diffs)
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    half = 4.302652729911275 * sd / math.sqrt(3)  # t(0.975, 2 degrees of freedom)
    assert (c.mean, c.low, c.high) == pytest.approx((mean, mean - half, mean + half))
    t = mean / (sd / math.sqrt(3))
    assert c.p_value == pytest.approx(2 * (1 - 0.5 * (1 + t / math.sqrt(2 + t * t))))  # Student t, 2 dof
    assert holm([0.01, 0.04, float("nan"), 0.03]) == pytest.approx(
        [0.03, 0.06, float("nan"), 0.06], nan_ok=True
    )
    (one,) = paired_differences([result_row("scratch", 0.1, 0, 0.5), result_row("pre", 0.1, 0, 0.7)], "m")
    assert one.mean == pytest.approx(0.2) and math.isnan(one.low) and math.isnan(one.p_value)


def test_detectable_difference_is_the_holm_threshold_of_a_paired_t_test() -> None:
    from pretext3d.experiments import PairedComparison, detectable_difference

    diffs = tuple([1.0, -1.0] * 10)  # 20 split seeds, sd = sqrt(20/19)
    row = PairedComparison("rotation", 0.05, diffs, 0.0, -1.0, 1.0, 1.0, 10)
    sd = math.sqrt(20 / 19)
    # t(0.975, 19) = 2.093 (tables): one row tested alone
    assert detectable_difference(row, tests=1) == pytest.approx(2.093 * sd / math.sqrt(20), abs=1e-3)
    # 25 rows: t(1 - 0.001, 19) = 3.579 (tables)
    assert detectable_difference(row, tests=25) == pytest.approx(3.579 * sd / math.sqrt(20), abs=2e-3)
    assert math.isnan(
        detectable_difference(PairedComparison("r", 0.05, (0.1,), 0.1, math.nan, math.nan, math.nan, 1), 5)
    )
    with pytest.raises(ValueError, match="tests must be >= 1"):
        detectable_difference(row, tests=0)
