"""The report: summary, paired table and the paper's curves."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from pretext3d.experiments import (
    paper_curves,
    summarize,
    write_report,
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


def test_flagged_runs_are_listed_in_the_summary_and_marked_in_the_figures(tmp_path: Path) -> None:
    rows = []
    for split, (flag, best) in enumerate([(None, 5), ("epoch-0", 0), ("budget", 9)]):
        for method in ("scratch", "rotation"):
            row = result_row(method, 0.05, split, 0.1 * (split + 1))
            row.update(
                flag=flag if method == "scratch" else None,
                best_epoch=best,
                epochs_run=10,
                converged=flag is None,
                train={"lr": 0.001, "epochs": 10},
                history=[{"val": 0.1}] * 10,
                seconds=1.0,
                pretraining_seed=0,
            )
            rows.append(row)
    written = write_report(rows, tmp_path, "m", synthetic=True)
    summary = (tmp_path / "summary.md").read_text()
    assert "2 of 6 runs are flagged" in summary
    assert "| `scratch__p0__s1__r0__f0.05` | epoch-0 | 0 / 10 | m 0.200 |" in summary
    assert "| `scratch__p0__s2__r0__f0.05` | budget | 9 / 10 | m 0.300 |" in summary
    assert "1 never improved on their first epoch, 1 more ended at the budget" in summary
    assert (tmp_path / "data_efficiency.png") in written
    clean = [dict(r, flag=None, converged=True) for r in rows]
    write_report(clean, tmp_path / "clean", "m", synthetic=True)
    assert "No run is flagged" in (tmp_path / "clean" / "summary.md").read_text()


def test_titles_name_the_seeds_and_the_overrides(tmp_path: Path) -> None:
    from pretext3d.experiments import load_reproduction
    from pretext3d.experiments.report import seeds_note

    rows = [dict(result_row("a", 0.1, s, 0.5), pretraining_seed=p) for s in (0, 1, 2, 3, 9) for p in (0, 1)]
    assert seeds_note(rows) == "split seeds 0-3, 9 (5); pretraining seeds 0, 1; repetitions 0"
    toml = tmp_path / "r.toml"
    toml.write_text('name = "pancreas, quick mode"\n')
    assert load_reproduction(toml).name == "pancreas, quick mode"
    overridden = load_reproduction(toml, ["experiment.split_seeds=[10, 11]", 'output_dir="x"'])
    assert overridden.name == "pancreas, quick mode [overrides: experiment.split_seeds=[10, 11]]"
    assert load_reproduction(toml, ['name="mine"', "held_out=2"]).name == "mine"
