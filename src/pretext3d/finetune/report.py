"""Results of the data-efficiency grid: CSV/JSON, a mean ± sd table, and a plot next to the paper's curves."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from pretext3d._atomic import write_text

__all__ = ["PAPER_METRICS", "paper_curves", "summarize", "write_report"]

# One colour per method, shared by our curve and the paper's (the paper's "baseline" is our "scratch").
_COLOURS = {
    "scratch": "black",
    "baseline": "black",
    "rotation": "tab:blue",
    "jigsaw": "tab:orange",
    "rpl": "tab:green",
    "exemplar": "tab:red",
    "cpc": "tab:purple",
}
# Our metric comparable to each of the paper's figures (same definition).
PAPER_METRICS = {
    "pooled_mean_dice_3class": ("fig3", "pooled_mean_dice_3class_incl_background"),
    "qwk": ("fig4", "quadratic_weighted_kappa"),
}


def paper_curves(figure: str) -> dict[str, list[tuple[float, float]]]:
    """The paper's data-efficiency numbers (read off its Figures 3 and 4, about ±0.01).

    Args:
        figure: ``"fig3"`` (pancreas, pooled 3-class Dice incl. background) or ``"fig4"``
            (APTOS, quadratic weighted kappa).

    Returns:
        ``{method: [(fraction, value), ...]}`` sorted by fraction.
    """
    text = resources.files("pretext3d.resources").joinpath("paper_figures.csv").read_text()
    rows = csv.DictReader(line for line in io.StringIO(text) if not line.startswith("#"))
    curves: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        if row["figure"] == figure:
            curves.setdefault(row["method"], []).append(
                (float(row["percent_labelled"]) / 100, float(row["value"]))
            )
    if not curves:
        raise ValueError(f"figure must be 'fig3' or 'fig4', got {figure!r}")
    return {m: sorted(points) for m, points in curves.items()}


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: row[k] for k in ("method", "fraction", "repetition", "seed", "n_labelled", "n_test", "steps")}
    out.update({f"test_{k}": v for k, v in row["test"].items()})
    out.update(
        pretext_accuracy=row.get("pretext_accuracy"),
        best_val=row.get("best_val"),
        seconds=round(row["seconds"], 2),
        synthetic=row.get("synthetic", False),
    )
    return out


def summarize(
    rows: Sequence[dict[str, Any]], metric: str
) -> dict[tuple[str, float], tuple[float, float, int]]:
    """``(method, fraction) -> (mean, sd, runs)`` of a test metric (NaN runs skipped; sd 0 for one run)."""
    groups: dict[tuple[str, float], list[float]] = {}
    for row in rows:
        value = row["test"][metric]
        if not math.isnan(value):
            groups.setdefault((row["method"], row["fraction"]), []).append(value)
    return {
        key: (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v))
        for key, v in groups.items()
    }


def _table(rows: Sequence[dict[str, Any]], metric: str) -> str:
    stats = summarize(rows, metric)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fractions = sorted({r["fraction"] for r in rows})
    lines = [
        f"| {metric} | " + " | ".join(f"{f:.0%}" for f in fractions) + " |",
        "|---" * (len(fractions) + 1) + "|",
    ]
    for m in methods:
        cells = []
        for f in fractions:
            if (m, f) in stats:
                mean, sd, n = stats[(m, f)]
                cells.append(f"{mean:.3f} ± {sd:.3f} (n={n})")
            else:
                cells.append("—")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(
    rows: Sequence[dict[str, Any]], output_dir: str | os.PathLike[str], metric: str, *, synthetic: bool
) -> list[Path]:
    """Write ``results.csv``, ``results.json``, ``summary.md`` and, with matplotlib, ``data_efficiency.png``.

    Every file made from the built-in phantoms says so (``synthetic``).

    Returns:
        The files written.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    flat = [_flat(r) for r in rows]
    columns = list(dict.fromkeys(k for r in flat for k in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(flat)
    for name, text in (
        ("results.csv", buffer.getvalue()),
        ("results.json", json.dumps(list(rows), indent=2)),
    ):
        write_text(out / name, text)
        written.append(out / name)
    note = "SYNTHETIC phantom data: says nothing about real scans." if synthetic else "Real data."
    metrics = [metric] + [m for m in (rows[0]["test"] if rows else {}) if m != metric]
    summary = [
        f"# Data efficiency\n\n{note}\n",
        f"Main metric: `{metric}` (test set, mean ± sd over repetitions).\n",
    ]
    summary += [_table(rows, m) + "\n" for m in metrics]
    write_text(out / "summary.md", "\n".join(summary))
    written.append(out / "summary.md")
    plot = _plot(rows, out / "data_efficiency.png", metric, note)
    if plot is not None:
        written.append(plot)
    return written


def _plot(rows: Sequence[dict[str, Any]], path: Path, metric: str, note: str) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    comparable = next((m for m in PAPER_METRICS if rows and m in rows[0]["test"]), None)
    panels = [metric] + ([comparable] if comparable and comparable != metric else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, name in zip(axes[0], panels, strict=True):
        stats = summarize(rows, name)
        for method in dict.fromkeys(r["method"] for r in rows):
            points = sorted((f, *stats[(m, f)][:2]) for (m, f) in stats if m == method)
            if points:
                xs, means, sds = zip(*points, strict=True)
                ax.errorbar(
                    [100 * x for x in xs],
                    means,
                    yerr=sds,
                    marker="o",
                    capsize=3,
                    color=_COLOURS.get(method),
                    label=f"{method} (ours)",
                )
        if name in PAPER_METRICS:
            figure, _ = PAPER_METRICS[name]
            for method, curve in paper_curves(figure).items():
                ax.plot(
                    [100 * f for f, _ in curve],
                    [v for _, v in curve],
                    "--",
                    alpha=0.6,
                    color=_COLOURS.get(method),
                    label=f"{method} (paper)",
                )
        ax.set_xscale("log")
        ax.set_xticks([5, 10, 25, 50, 100], labels=["5", "10", "25", "50", "100"])
        ax.set_xlabel("% of labelled training cases")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Data efficiency: {note}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
