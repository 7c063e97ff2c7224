"""The report: summary, paired table and the paper's curves."""

from __future__ import annotations

import math

import pytest

from pretext3d.experiments import (
    paper_curves,
    summarize,
)
from tests.conftest import result_row


def test_summary_and_paper_curves() -> None:
    rows = [result_row("a", 0.1, 0, 0.2), result_row("a", 0.1, 0, 0.4, rep=1), result_row("a", 0.1, 1, 0.6)]
    rows += [result_row("a", 0.1, 2, float("nan")), result_row("b", 0.1, 0, 0.5)]
    mean, sd, n = summarize(rows, "m")[("a", 0.1)]  # split 0 averaged first: 0.3, then 0.6
    assert (mean, n) == (pytest.approx(0.45), 2) and sd == pytest.approx(math.sqrt(0.045))
    assert math.isnan(summarize(rows, "m")[("b", 0.1)][1])  # one split seed: no spread, not 0
    fig3 = paper_curves("fig3")
    assert (
        fig3[("rotation", "pancreas_ct_3d")][0] == (0.05, 0.46) and fig3[("baseline", "none")][-1][0] == 1.0
    )
    fig4 = paper_curves("fig4")
    # two rotation series in Figure 4, one per pretraining source, never merged
    assert {src for (m, src) in fig4 if m == "rotation"} == {"ukbiobank_fundus_2d", "aptos2019_fundus_2d"}
    assert all(len(curve) == 5 for curve in fig4.values())
    with pytest.raises(ValueError, match="figure must be 'fig3' or 'fig4'"):
        paper_curves("fig5")
