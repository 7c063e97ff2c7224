"""A verdict from two blocks of split seeds: learning rates chosen on development, the held-out table.

A verdict protocol develops on one block of split seeds and judges on another that nobody tuned
on (:func:`~pretext3d.experiments.held_out_block`). Between the two, each method's learning rate
is chosen once on validation scores (:func:`choose_learning_rates`) and frozen
(``experiment.learning_rates``), so the held-out block runs every method exactly once per cell;
:func:`verdict_table` then sets the held-out block's paired differences beside the development
block's.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from pretext3d._atomic import write_text
from pretext3d.experiments.report import colour, read_runs
from pretext3d.experiments.stats import PairedComparison, detectable_difference, holm, paired_differences

__all__ = ["choose_learning_rates", "plot_verdict", "verdict_rows", "verdict_table", "write_verdict"]


#: the file in a reproduction's folder with each method's chosen learning rate (``calibration_seeds``)
LEARNING_RATES = "learning_rates.json"


def chosen_learning_rates(folder: str | os.PathLike[str]) -> dict[str, float]:
    """The learning rates a reproduction's calibration chose (its ``learning_rates.json``).

    Examples:
        >>> chosen_learning_rates("a-folder-without-a-calibration")   # none before it ran
        {}
    """
    saved = Path(folder) / LEARNING_RATES
    if not saved.exists():
        return {}
    return {m: float(lr) for m, lr in json.loads(saved.read_text()).get("learning_rates", {}).items()}


def calibration_folder(out: Path, searched: Collection[str], frozen: Collection[str]) -> Path:
    """Where the calibration grid of the ``searched`` methods runs.

    ``<out>/calibration`` when every method is searched; methods searched beside rates frozen
    in the config (e.g. methods added to a finished block) get a folder of their own.

    Examples:
        >>> calibration_folder(Path("runs"), ["scratch", "mim"], []).as_posix()
        'runs/calibration'
        >>> calibration_folder(Path("runs"), ["genesis", "mim"], ["scratch"]).as_posix()
        'runs/calibration-genesis-mim'
    """
    return out / ("calibration" if not frozen else "calibration-" + "-".join(searched))


def choose_learning_rates(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each method's learning rate with the best mean validation score over its searched runs.

    Every run of a grid with ``experiment.lr_search`` records each candidate's best validation
    score (``row["lr_search"]``); per method, the candidate whose mean over the method's runs
    (every split seed, fraction, repetition and pretraining seed) is highest is chosen, the
    first listed on a tie. No test score is read.

    Args:
        rows: the runs of a grid with ``lr_search``.

    Returns:
        ``{method: {"lr": chosen, "mean_val": {lr: mean validation score}, "runs": count}}``.

    Raises:
        ValueError: a run without ``lr_search`` records.

    Examples:
        >>> def row(method, scores):
        ...     search = [{"lr": lr, "best_val": v} for lr, v in scores.items()]
        ...     return {"method": method, "lr_search": search}
        >>> rows = [row("scratch", {1e-3: 0.50, 3e-3: 0.60}), row("scratch", {1e-3: 0.58, 3e-3: 0.52}),
        ...         row("rotation", {1e-3: 0.70, 3e-3: 0.70})]
        >>> chosen = choose_learning_rates(rows)
        >>> chosen["scratch"]["lr"], chosen["rotation"]["lr"]   # 0.56 against 0.54; a tie: the first listed
        (0.003, 0.001)
    """
    scores: dict[str, dict[float, list[float]]] = {}
    for row in rows:
        search = row.get("lr_search")
        if not search:
            raise ValueError(
                f"a run of {row.get('method')!r} has no lr_search records: choose learning rates from a grid "
                "run with experiment.lr_search"
            )
        for candidate in search:
            value = candidate["best_val"]
            score = -math.inf if value is None or math.isnan(value) else float(value)
            scores.setdefault(str(row["method"]), {}).setdefault(float(candidate["lr"]), []).append(score)
    chosen: dict[str, dict[str, Any]] = {}
    for method, by_lr in scores.items():
        means = {lr: statistics.fmean(values) for lr, values in by_lr.items()}
        order = list(by_lr)
        best = max(order, key=lambda lr: (means[lr], -order.index(lr)))
        runs = len(next(iter(by_lr.values())))
        chosen[method] = {"lr": best, "mean_val": means, "runs": runs}
    return chosen


def verdict_rows(
    rows: Sequence[Mapping[str, Any]],
    metric: str,
    baseline: str = "scratch",
    families: Sequence[Collection[str]] = (),
) -> list[tuple[PairedComparison, float, float]]:
    """A block's paired differences with their Holm-adjusted p-values and detectable differences.

    Holm adjusts over every row of a family (every method and fraction against ``baseline``):
    the methods of each of ``families`` form one (e.g. arms added to a finished block, tested
    as hypotheses of their own), every other method the first.

    Returns:
        ``(comparison, holm_p, detectable_delta)`` per (method, fraction), as
        :func:`~pretext3d.experiments.stats.paired_differences` orders them.

    Examples:
        >>> rows = [{"method": m, "fraction": 0.05, "split_seed": s, "repetition": 0, "pretraining_seed": 0,
        ...          "test": {"qwk": q}}
        ...         for m, scores in {"scratch": [0.50, 0.60, 0.55], "rotation": [0.58, 0.66, 0.57]}.items()
        ...         for s, q in enumerate(scores)]
        >>> [(c.method, c.wins, round(p, 3), round(d, 3)) for c, p, d in verdict_rows(rows, "qwk")]
        [('rotation', 3, 0.094, 0.076)]
    """
    comparisons = paired_differences([dict(r) for r in rows], metric, baseline)
    family = [next((k + 1 for k, f in enumerate(families) if c.method in f), 0) for c in comparisons]
    out: dict[int, tuple[PairedComparison, float, float]] = {}
    for label in sorted(set(family)):
        members = [i for i, f in enumerate(family) if f == label]
        adjusted = holm([comparisons[i].p_value for i in members])
        for i, p in zip(members, adjusted, strict=True):
            out[i] = (comparisons[i], p, detectable_difference(comparisons[i], tests=len(members)))
    return [out[i] for i in range(len(comparisons))]


def _cell(row: tuple[PairedComparison, float, float] | None) -> str:
    if row is None:
        return "not run |  |  |  | "
    c, p, detectable = row
    ci = "n/a" if math.isnan(c.low) else f"[{c.low:+.3f}, {c.high:+.3f}]"
    shown_p = "n/a" if math.isnan(p) else ("< 0.001" if p < 0.001 else f"{p:.3f}")
    shown_d = "n/a" if math.isnan(detectable) else f"±{detectable:.3f}"
    return f"{c.mean:+.3f} {ci} | {c.wins}/{c.n} | {shown_p} | {shown_d}"


def verdict_table(
    blocks: Mapping[str, Sequence[Mapping[str, Any]]],
    metric: str,
    baseline: str = "scratch",
    families: Sequence[Collection[str]] = (),
) -> str:
    """A Markdown table of every block's paired differences against ``baseline``, side by side.

    One line per method and fraction; per block: mean Δ with its 95 % interval over split
    seeds, the split seeds ahead, the Holm-adjusted p-value (over the block's rows) and the
    smallest Δ the block could have detected after Holm. The first block leads (the held-out
    block, where the verdict comes from).

    Args:
        blocks: block name -> its runs (e.g. ``{"held-out (100-119)": ..., "development (0-19)": ...}``).
        metric: the test metric.
        baseline: the method the others are compared against.
        families: methods Holm adjusts among themselves (:func:`verdict_rows`).

    Examples:
        >>> rows = [{"method": m, "fraction": 0.05, "split_seed": s, "repetition": 0, "pretraining_seed": 0,
        ...          "test": {"qwk": q}}
        ...         for m, scores in {"scratch": [0.50, 0.60, 0.55], "rotation": [0.58, 0.66, 0.57]}.items()
        ...         for s, q in enumerate(scores)]
        >>> print(verdict_table({"held-out": rows}, "qwk"))   # doctest: +NORMALIZE_WHITESPACE
        | method − scratch | fraction | held-out: Δ qwk [95 % CI] | ahead | p (Holm) | detectable Δ |
        |---|---|---|---|---|---|
        | rotation | 5% | +0.053 [-0.023, +0.129] | 3/3 | 0.094 | ±0.076 |
    """
    per_block = {
        name: {
            (c.method, c.fraction): (c, p, d) for c, p, d in verdict_rows(rows, metric, baseline, families)
        }
        for name, rows in blocks.items()
    }
    keys = list(dict.fromkeys(key for table in per_block.values() for key in table))
    header = f"| method − {baseline} | fraction | " + " | ".join(
        f"{name}: Δ {metric} [95 % CI] | ahead | p (Holm) | detectable Δ" for name in blocks
    )
    lines = [header + " |", "|---|---|" + "---|---|---|---|" * len(blocks)]
    for method, fraction in keys:
        cells = " | ".join(_cell(table.get((method, fraction))) for table in per_block.values())
        lines.append(f"| {method} | {fraction:.0%} | {cells} |")
    return "\n".join(lines)


def _families_note(families: Sequence[Collection[str]]) -> str:
    listed = "; ".join(", ".join(f) for f in families)
    return f" (separately within each family of arms added later: {listed})" if families else ""


def plot_verdict(
    panels: Sequence[tuple[str, str, Mapping[str, Sequence[Mapping[str, Any]]]]],
    path: str | os.PathLike[str],
    *,
    synthetic: bool,
    baseline: str = "scratch",
) -> Path | None:
    """Each block's paired differences against ``baseline``, per method and fraction, side by side.

    One panel per experiment: for every method (x) and fraction (marker), each block's mean Δ with
    its 95 % interval over split seeds, the blocks offset side by side (the first, the held-out
    block, filled; the others open), a line at zero.

    Args:
        panels: ``(title, metric, {block name: runs})`` per experiment.
        path: the PNG to write.
        synthetic: say on the figure that the data are the built-in phantoms.
        baseline: the method the others are compared against.

    Returns:
        ``path``, or ``None`` without matplotlib.

    Examples:
        >>> rows = [{"method": m, "fraction": 0.05, "split_seed": s, "repetition": 0, "pretraining_seed": 0,
        ...          "test": {"qwk": q}}
        ...         for m, scores in {"scratch": [0.50, 0.60, 0.55], "rotation": [0.58, 0.66, 0.57]}.items()
        ...         for s, q in enumerate(scores)]
        >>> plot_verdict([("fundus", "qwk", {"held-out": rows, "development": rows})], "verdict.png",
        ...              synthetic=True).name
        'verdict.png'
    """
    try:
        from matplotlib.figure import Figure  # no pyplot: the caller's backend and figures stay untouched
    except ImportError:
        return None
    fig = Figure(figsize=(6.5 * len(panels), 4.8))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    markers = ("o", "s", "^", "D")
    for ax, (title, metric, blocks) in zip(axes, panels, strict=True):
        tables = {name: verdict_rows(rows, metric, baseline) for name, rows in blocks.items()}
        methods = list(dict.fromkeys(c.method for table in tables.values() for c, _, _ in table))
        fractions = sorted({c.fraction for table in tables.values() for c, _, _ in table})
        width = 0.8 / max(1, len(blocks) * len(fractions))
        for b, table in enumerate(tables.values()):
            for f, fraction in enumerate(fractions):
                for c, _, _ in table:
                    if c.fraction != fraction:
                        continue
                    x = methods.index(c.method) - 0.4 + width * (0.5 + f * len(blocks) + b)
                    low = 0.0 if math.isnan(c.low) else c.mean - c.low
                    high = 0.0 if math.isnan(c.high) else c.high - c.mean
                    ax.errorbar([x], [c.mean], yerr=[[low], [high]], marker=markers[f % len(markers)],
                                color=colour(c.method), mfc=colour(c.method) if b == 0 else "white",
                                capsize=2, ms=5, lw=1)  # fmt: skip
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(range(len(methods)), labels=methods, rotation=20, fontsize=8)
        ax.set_ylabel(f"paired Δ {metric} vs {baseline} (95 % CI over split seeds)")
        blocks_note = ", ".join(f"{name} ({'filled' if b == 0 else 'open'})" for b, name in enumerate(blocks))
        shapes = ", ".join(
            f"{markers[f % len(markers)]} {fraction:.0%}" for f, fraction in enumerate(fractions)
        )
        ax.set_title(f"{title}\n{blocks_note}; {shapes}", fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    note = "SYNTHETIC phantom data: says nothing about real scans" if synthetic else "real data"
    fig.suptitle(f"Verdict: every arm against {baseline}, each block beside the other ({note})", fontsize=10)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    return out


def write_verdict(
    blocks: Mapping[str, str | os.PathLike[str]],
    output_dir: str | os.PathLike[str],
    metric: str,
    *,
    title: str,
    synthetic: bool,
    baseline: str = "scratch",
    families: Sequence[Collection[str]] = (),
) -> list[Path]:
    """``verdict.md`` and ``verdict.png``: the blocks' paired differences side by side, the first leading.

    Args:
        blocks: block name -> its reproduction's folder (the held-out block first); folders
            without runs are left out.
        output_dir: where the two files go.
        metric: the test metric.
        title: the page's title.
        synthetic: the data are the built-in phantoms (said on both files).
        baseline: the method the others are compared against.
        families: methods Holm adjusts among themselves (:func:`verdict_rows`).

    Returns:
        The files written (none when no block has runs).

    Examples:
        >>> images, grades = p3.data.fundus_phantom_batch(24, size=32)   # SYNTHETIC
        >>> recipe = p3.experiments.GradingRecipe(growth_rate=4, block_config=(1, 1), init_features=8)
        >>> train = p3.finetune.TrainConfig(epochs=1, steps_per_epoch=2)
        >>> for seeds, folder in (((0, 1), "development"), ((100, 101), "held-out")):
        ...     config = p3.experiments.DataEfficiencyConfig(fractions=(0.5,), split_seeds=seeds, train=train)
        ...     _ = p3.experiments.run_data_efficiency(recipe, images, grades, {"scratch": None}, config,
        ...                                            folder, synthetic=True, progress=False, log=len)
        >>> [p.name for p in write_verdict({"held-out": "held-out", "development": "development"}, ".", "qwk",
        ...                                title="tiny", synthetic=True)]
        ['verdict.md', 'verdict.png']
    """
    runs = {
        name: read_runs(folder) for name, folder in blocks.items() if (Path(folder) / "config.json").exists()
    }
    runs = {name: rows for name, rows in runs.items() if rows}
    if not runs:
        return []
    out = Path(output_dir)
    note = "SYNTHETIC phantom data: says nothing about real scans." if synthetic else "Real data."
    lines = [
        f"# {title}: the verdict\n",
        f"{note}\n",
        f"Paired differences against `{baseline}` (`{metric}`), per split seed the mean over its runs; 95 % "
        "Student-t interval over split seeds; *ahead*: split seeds on which the arm beats the baseline; Holm "
        f"over every row of a block{_families_note(families)}; *detectable Δ*: the smallest mean difference "
        "the block could have called significant after Holm. The first block is the one the verdict comes "
        "from.\n",
        verdict_table(runs, metric, baseline, families) + "\n",
    ]
    for name, rows in runs.items():
        splits = sorted({int(r["split_seed"]) for r in rows})
        lines.append(f"- {name}: {len(rows)} runs, split seeds {splits[0]}-{splits[-1]} ({len(splits)})")
    write_text(out / "verdict.md", "\n".join(lines) + "\n")
    written = [out / "verdict.md"]
    figure = plot_verdict(
        [(title, metric, runs)], out / "verdict.png", synthetic=synthetic, baseline=baseline
    )
    return written + ([figure] if figure is not None else [])
