"""Results of the data-efficiency grid: tables, paired differences, figures.

``write_report`` writes ``results.csv`` (one row per run), ``cases.csv`` (one row per test
case of every run: the second layer, never the error bar), ``results.json``,
``summary.md`` (means over split seeds, paired differences against the baseline with
intervals and tests, convergence, provenance) and, with matplotlib,
``data_efficiency.png`` (our curves; the paired differences; our curve of the paper's metric
beside the paper's real-data numbers, one series per pretraining source, labelled as the
paper's) and ``learning_curves.png``
(every run's validation score per epoch, so that convergence can be seen).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
import textwrap
from collections import Counter
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from pretext3d._atomic import write_text
from pretext3d.experiments.runner import run_name
from pretext3d.experiments.stats import PairedComparison, detectable_difference, holm, paired_differences
from pretext3d.registry import TASKS

__all__ = [
    "PAPER_METRICS",
    "paper_curves",
    "read_runs",
    "seed_ranges",
    "seeds_note",
    "summarize",
    "summary_table",
    "write_report",
]

# One colour per method, shared by our curve and the paper's (the paper's "baseline" is our "scratch").
_BASELINE_COLOUR = "black"
_PALETTE = (
    "tab:blue",
    "tab:orange",
    "tab:green",
    "tab:red",
    "tab:purple",
    "tab:brown",
    "tab:pink",
    "tab:olive",
)
# the built-in tasks keep their colours whatever else is registered (the classic five's as before)
_TASK_COLOURS = dict(
    zip(["cpc", "exemplar", "jigsaw", "rotation", "rpl", "genesis", "mim"], _PALETTE, strict=False)
)
_SPARE = ("tab:cyan", "tab:gray")


def colour(method: str) -> str | None:
    """A method's colour in the figures: black for the baseline, a fixed colour per registered task."""
    if method in ("scratch", "baseline"):
        return _BASELINE_COLOUR
    if method == "supervised":  # the positive control: a colour no task takes
        return _PALETTE[-1]
    if method in _TASK_COLOURS:
        return _TASK_COLOURS[method]
    if method in TASKS:  # a registered plugin task: one of the colours left
        others = [n for n in TASKS.names() if n not in _TASK_COLOURS]
        return _SPARE[others.index(method) % len(_SPARE)]
    return None  # matplotlib's next colour


#: the data kinds the paper's figures are about (the phantoms stand in for them), and their names
_PAPER_DATA = {
    "task07": "MSD Task07",
    "aptos": "APTOS 2019",
    "ct-phantom": "CT phantoms",
    "fundus-phantom": "fundus phantoms",
}


def _data_kind(rows: Sequence[Mapping[str, Any]]) -> str | None:
    """The ``data.kind`` the rows were made on, where their provenance records it."""
    info = ((rows[0].get("provenance") or {}).get("data") or {}).get("info") or {} if rows else {}
    kind = info.get("kind")
    return str(kind) if kind else None


# The paper's figure for each of our metrics with the same definition, and its metric name.
PAPER_METRICS = {
    "pooled_mean_dice_3class": ("fig3", "pooled_mean_dice_3class_incl_background"),
    "qwk": ("fig4", "quadratic_weighted_kappa"),
}
_SOURCES = {
    "pancreas_ct_3d": "pretrained on Task07 CT",
    "ukbiobank_fundus_2d": "pretrained on UK Biobank",
    "aptos2019_fundus_2d": "pretrained on APTOS",
    "none": "from scratch",
}


# What the paper's number is, beside ours in the third panel of data_efficiency.png.
_PAPER_NOTES = {
    "pooled_mean_dice_3class": (
        "Taleb et al. 2020 Fig. 3 (REAL Task07, read off the figure).\n"
        "Metric: voxels pooled over all test cases, mean Dice of background,\n"
        "pancreas and tumour (background Dice near 1 lifts it above per-case Dice)"
    ),
    "qwk": (
        "Taleb et al. 2020 Fig. 4 (REAL APTOS 2019, read off the figure;\n"
        "dashed: pretrained on UK Biobank, dotted: on APTOS). Metric: quadratic weighted kappa"
    ),
}
_NOT_COMPARABLE = "\nOurs: SYNTHETIC phantoms, not comparable in value"


def _curves(ax: Any, rows: Sequence[dict[str, Any]], metric: str, label: str = "{}") -> None:
    """Mean ± sd over split seeds per method and fraction, as error bars."""
    stats = summarize(rows, metric)
    for method in dict.fromkeys(r["method"] for r in rows):
        points = sorted((f, *stats[(m, f)][:2]) for (m, f) in stats if m == method)
        if points:
            xs, means, sds = zip(*points, strict=True)
            ax.errorbar(
                [100 * x for x in xs], means, yerr=[0 if math.isnan(s) else s for s in sds],
                marker="o", capsize=3, color=colour(method), label=label.format(method),
            )  # fmt: skip


def _mark_flagged(ax: Any, rows: Sequence[dict[str, Any]], metric: str) -> None:
    """Each flagged run's own test score as a ✗ in its method's colour."""
    flagged = [r for r in rows if r.get("flag") and metric in r["test"]]
    for r in flagged:
        ax.plot(100 * r["fraction"], r["test"][metric], "x", ms=5, color=colour(r["method"]), alpha=0.8)
    if flagged:
        ax.plot([], [], "x", color="grey", label=f"flagged run ({len(flagged)})")


def paper_curves(figure: str) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """The paper's data-efficiency numbers (read off its Figures 3 and 4, about ±0.01).

    Args:
        figure: ``"fig3"`` (pancreas, pooled 3-class Dice incl. background) or ``"fig4"``
            (APTOS, quadratic weighted kappa).

    Returns:
        ``{(method, pretrained_on): [(fraction, value), ...]}`` sorted by fraction; Figure 4
        has two series per task (pretrained on UK Biobank and on APTOS itself).

    Examples:
        >>> curves = paper_curves("fig4")   # APTOS kappa; "fig3": pancreas Dice
        >>> curves[("baseline", "none")][0], sorted({source for _, source in curves})
        ((0.05, 0.01), ['aptos2019_fundus_2d', 'none', 'ukbiobank_fundus_2d'])

    References:
        - Taleb et al., "3D Self-Supervised Methods for Medical Imaging", NeurIPS 2020. Figures 3 and 4.
    """
    text = resources.files("pretext3d.resources").joinpath("paper_figures.csv").read_text()
    rows = csv.DictReader(line for line in io.StringIO(text) if not line.startswith("#"))
    curves: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for row in rows:
        if row["figure"] == figure:
            curves.setdefault((row["method"], row["pretrained_on"]), []).append(
                (float(row["percent_labelled"]) / 100, float(row["value"]))
            )
    if not curves:
        raise ValueError(f"figure must be 'fig3' or 'fig4', got {figure!r}")
    return {key: sorted(points) for key, points in curves.items()}


def read_runs(
    output_dir: str | os.PathLike[str], methods: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """The finished runs in a data-efficiency folder, in the grid's order.

    Reads ``runs/*.json`` without running anything, so a report can be rewritten (or written
    for a grid still in progress) after the code or the software changed, which would make
    :func:`~pretext3d.experiments.runner.run_data_efficiency` refuse the folder.

    Args:
        output_dir: the folder.
        methods: the order of the methods; default the grid's (``config.json``).

    Examples:
        >>> images, grades = p3.data.fundus_phantom_batch(24, size=32)   # SYNTHETIC
        >>> recipe = p3.experiments.GradingRecipe(growth_rate=4, block_config=(1, 1), init_features=8)
        >>> config = p3.experiments.DataEfficiencyConfig(
        ...     fractions=(0.25, 1.0), split_seeds=(0,),
        ...     train=p3.finetune.TrainConfig(epochs=1, steps_per_epoch=2, batch_size=4))
        >>> _ = p3.experiments.run_data_efficiency(recipe, images, grades, {"scratch": None}, config, "grid",
        ...                                        progress=False,
        ...                         log=lambda line: None)
        >>> # also the finished part of an interrupted grid
        >>> [(r["method"], r["fraction"]) for r in read_runs("grid")]
        [('scratch', 0.25), ('scratch', 1.0)]
    """
    folder = Path(output_dir)
    config = folder / "config.json"
    if not config.exists():
        raise ValueError(f"{str(folder)!r} holds no data-efficiency runs (no config.json)")
    if methods is None:
        saved = json.loads(config.read_text())
        methods = saved.get("method_order") or sorted(saved.get("methods", {}))
    rows = [json.loads(p.read_text()) for p in sorted((folder / "runs").glob("*.json"))]

    def order(row: dict[str, Any]) -> tuple[Any, ...]:
        rank = methods.index(row["method"]) if row["method"] in methods else len(methods)
        return (row["split_seed"], row["repetition"], row["fraction"], rank, row["pretraining_seed"])

    return sorted(rows, key=order)


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("method", "pretraining_seed", "split_seed", "repetition", "fraction", "n_labelled", "n_test")
    out = {k: row.get(k) for k in keys}
    out.update({f"test_{k}": v for k, v in row["test"].items()})
    encoder = row.get("encoder") or {}
    env = _env(row)
    out.update(
        best_val=row.get("best_val"),
        best_epoch=row.get("best_epoch"),
        epochs_run=row.get("epochs_run"),
        converged=row.get("converged"),
        flag=row.get("flag"),
        lr=row.get("train", {}).get("lr"),
        freeze_encoder_epochs=row.get("train", {}).get("freeze_encoder_epochs"),
        pretext_accuracy=row.get("pretext_accuracy"),
        encoder_sha256=encoder.get("sha256"),
        data_sha256=row.get("provenance", {}).get("data", {}).get("sha256"),
        transductive=row.get("transductive"),
        seconds=round(row["seconds"], 2),
        synthetic=row.get("synthetic", False),
        pretext3d=env.get("pretext3d"),
        torch=env.get("torch"),
        git_commit=env.get("git_commit"),
        device=env.get("device"),
        threads=env.get("threads"),
    )
    return out


def _case_rows(row: dict[str, Any]) -> list[dict[str, Any]]:
    cases = row.get("test_cases") or {}
    ids = cases.get("case_id", [])
    keys = ("method", "pretraining_seed", "split_seed", "repetition", "fraction")
    return [
        {**{k: row.get(k) for k in keys}, **{name: values[i] for name, values in cases.items()}}
        for i in range(len(ids))
    ]


def summarize(
    rows: Sequence[dict[str, Any]], metric: str
) -> dict[tuple[str, float], tuple[float, float, int]]:
    """``(method, fraction) -> (mean, sd, n)`` of a test metric over split seeds.

    Runs of one split seed (repetitions, pretraining seeds) are averaged first, so ``n`` is
    the number of split seeds and ``sd`` the spread between them; ``sd`` is NaN for one
    split seed (no spread to estimate). NaN runs are skipped.

    Examples:
        >>> rows = [{"method": m, "fraction": 0.1, "split_seed": s, "repetition": 0, "pretraining_seed": 0,
        ...          "test": {"qwk": q}}
        ...         for m, scores in {"scratch": [0.50, 0.60, 0.55], "rotation": [0.58, 0.66, 0.57]}.items()
        ...         for s, q in enumerate(scores)]   # rows as the runner writes them, 3 split seeds
        >>> {k: (round(mean, 3), round(sd, 3), n) for k, (mean, sd, n) in summarize(rows, "qwk").items()}
        {('scratch', 0.1): (0.55, 0.05, 3), ('rotation', 0.1): (0.603, 0.049, 3)}
    """
    groups: dict[tuple[str, float], dict[int, list[float]]] = {}
    for row in rows:
        value = row["test"][metric]
        if not math.isnan(value):
            groups.setdefault((row["method"], row["fraction"]), {}).setdefault(row["split_seed"], []).append(
                value
            )
    out = {}
    for key, by_split in groups.items():
        means = [statistics.fmean(v) for v in by_split.values()]
        out[key] = (
            statistics.fmean(means),
            statistics.stdev(means) if len(means) > 1 else math.nan,
            len(means),
        )
    return out


def _num(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def summary_table(rows: Sequence[dict[str, Any]], metric: str) -> str:
    """A Markdown table of a test metric: method × fraction, mean ± sd over split seeds (n).

    Examples:
        >>> rows = [{"method": m, "fraction": 0.1, "split_seed": s, "repetition": 0, "pretraining_seed": 0,
        ...          "test": {"qwk": q}}
        ...         for m, scores in {"scratch": [0.50, 0.60, 0.55], "rotation": [0.58, 0.66, 0.57]}.items()
        ...         for s, q in enumerate(scores)]   # rows as the runner writes them, 3 split seeds
        >>> print(summary_table(rows, "qwk"))
        | qwk | 10% |
        |---|---|
        | scratch | 0.550 ± 0.050 (n=3) |
        | rotation | 0.603 ± 0.049 (n=3) |
    """
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
                cells.append(f"{mean:.3f} ± {_num(sd)} (n={n})")
            else:
                cells.append("—")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _paired_table(comparisons: Sequence[PairedComparison], baseline: str) -> str:
    if not comparisons:
        return f"No method to compare with `{baseline}`."
    adjusted = holm([c.p_value for c in comparisons])
    lines = [
        f"| method − {baseline} | fraction | mean Δ | 95 % CI | p (paired t) | p (Holm, all rows) "
        "| detectable Δ (Holm) | ahead on | per split seed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c, p_holm in zip(comparisons, adjusted, strict=True):
        ci = "n/a" if math.isnan(c.low) else f"[{c.low:+.3f}, {c.high:+.3f}]"
        each = " ".join(f"{d:+.3f}" for d in c.differences)
        detectable = detectable_difference(c, tests=len(comparisons))
        lines.append(
            f"| {c.method} | {c.fraction:.0%} | {c.mean:+.3f} | {ci} | {_num(c.p_value)} | {_num(p_holm)} "
            f"| {'n/a' if math.isnan(detectable) else f'±{detectable:.3f}'} | {c.wins}/{c.n} | {each} |"
        )
    return "\n".join(lines)


def _env(row: dict[str, Any]) -> dict[str, Any]:
    env: dict[str, Any] = row.get("provenance", {}).get("environment", {})
    return env


def seed_ranges(seeds: Sequence[int]) -> str:
    """Seeds as ranges, for titles and names.

    Examples:
        >>> seed_ranges([5, 0, 1, 2]), seed_ranges(range(100, 120))
        ('0-2, 5', '100-119')
    """
    runs: list[list[int]] = []
    for seed in sorted(set(seeds)):
        if runs and runs[-1][-1] == seed - 1:
            runs[-1].append(seed)
        else:
            runs.append([seed])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 2 else ", ".join(map(str, r)) for r in runs)


def seeds_note(rows: Sequence[dict[str, Any]]) -> str:
    """Which seeds a report's rows come from, for its titles.

    Examples:
        >>> seeds_note([{"split_seed": s, "pretraining_seed": 0, "repetition": 0} for s in (0, 1, 2, 7)])
        'split seeds 0-2, 7 (4); pretraining seeds 0; repetitions 0'
    """
    splits = [int(r["split_seed"]) for r in rows]
    pretraining = [int(r.get("pretraining_seed", 0)) for r in rows]
    repetitions = [int(r.get("repetition", 0)) for r in rows]
    return (
        f"split seeds {seed_ranges(splits)} ({len(set(splits))}); "
        f"pretraining seeds {seed_ranges(pretraining)}; repetitions {seed_ranges(repetitions)}"
    )


def _control_verdict(
    comparisons: Sequence[PairedComparison], metric: str, baseline: str, control: str | None
) -> list[str]:
    """The summary's positive-control paragraph (none without the control)."""
    mine = [c for c in comparisons if c.method == control]
    if not mine:
        return []
    first = min(mine, key=lambda c: c.fraction)
    numbers = (
        f"Δ {metric} {first.mean:+.3f} [{first.low:+.3f}, {first.high:+.3f}], ahead on {first.wins} of "
        f"{len(first.differences)} split seeds"
    )
    what = f"The positive control (`{control}`: the encoder of a model trained with labels on separate cases)"
    if not math.isnan(first.low) and first.low > 0:
        text = (
            f"{what} beats `{baseline}` at {first.fraction:.0%} labels ({numbers}): the protocol can "
            "transfer pretrained features, and the pretext rows can be read against it."
        )
    else:
        text = (
            f"**{what} does not beat `{baseline}` at {first.fraction:.0%} labels** ({numbers}): this "
            "protocol cannot show that it transfers pretrained features, so the pretext rows say nothing "
            "about the pretext tasks."
        )
    return ["## Positive control\n", text + "\n"]


def _flag_counts(runs: Sequence[dict[str, Any]]) -> str:
    failed = sum(r.get("flag") == "epoch-0" for r in runs)
    budget = sum(r.get("flag") == "budget" for r in runs)
    return f" ({failed} never improved on their first epoch, {budget} more ended at the budget)"


def _flagged(rows: Sequence[dict[str, Any]], metric: str) -> list[str]:
    """The summary's list of runs that failed to learn or ran out of budget."""
    flagged = [r for r in rows if r.get("flag")]
    if not flagged:
        stopped = (
            "and stopped by patience"
            if all(r.get("converged") is not None for r in rows)
            else "(convergence is tracked only where an early-stopping patience is set)"
        )
        return [f"No run is flagged: every run improved on its first epoch {stopped}.\n"]
    lines = [
        f"{len(flagged)} of {len(rows)} runs are flagged (✗ in the figures): `epoch-0`, the best validation "
        "score is the first epoch's (the run never improved: a failed run, whatever its test score); "
        "`budget`, still improving when the epochs ran out (not converged). Their scores are in every "
        "table above; read rows that hold many with care.\n",
        "| run | flag | best epoch / epochs run | test |",
        "|---|---|---|---|",
    ]
    for r in flagged:
        name = run_name(
            r["method"], r["split_seed"], r["repetition"], r["fraction"], r.get("pretraining_seed", 0)
        )
        score = f"{metric} {r['test'][metric]:.3f}"
        lines.append(f"| `{name}` | {r['flag']} | {r.get('best_epoch')} / {r.get('epochs_run')} | {score} |")
    return [*lines, ""]


def _protocol(rows: Sequence[dict[str, Any]]) -> list[str]:
    lines = []
    for method in dict.fromkeys(r["method"] for r in rows):
        runs = [r for r in rows if r["method"] == method]
        train = runs[0].get("train", {})
        converged = [r.get("converged") for r in runs]
        known = [c for c in converged if c is not None]
        budget = (
            f"{train.get('epochs')} epochs × {train.get('steps_per_epoch')} steps "
            f"× batch {train.get('batch_size')}"
        )
        searched = [r["lr_search"] for r in runs if r.get("lr_search")]
        lr = f"lr {train.get('lr')}"
        if searched:
            chosen = Counter(c["lr"] for search in searched for c in search if c["chosen"])
            tried = [c["lr"] for c in searched[0]]
            lr = (
                f"lr chosen on validation from {tried} in each run (chosen: "
                + ", ".join(f"{k:g} in {v}" for k, v in sorted(chosen.items()))
                + ")"
            )
        factor = train.get("encoder_lr_factor", 1.0)
        lr += f", encoder at {factor:g} x lr" if factor != 1.0 else ""
        fitted = sum(bool(r.get("head_fitted")) for r in runs)
        lr += f", head fitted to the frozen features first in {fitted} of {len(runs)} runs" if fitted else ""
        kept = sum(r.get("best_epoch") == -1 for r in runs)
        lr += f" ({kept} kept the fitted head: no fine-tuning epoch beat it on validation)" if kept else ""
        lines.append(
            f"- `{method}`: {lr}, encoder frozen for the first "
            f"{train.get('freeze_encoder_epochs')} epochs, at most {budget}, early stopping patience "
            f"{train.get('early_stopping_patience')} (not before epoch {train.get('min_epochs', 0)}); "
            + (
                f"converged (stopped by patience) in {sum(known)} of {len(known)} runs" + _flag_counts(runs)
                if known
                else "convergence not tracked (no patience set)"
            )
            + _pretext_side(runs)
        )
    return lines


def _pretext_side(runs: Sequence[dict[str, Any]]) -> str:
    """A method's pretext-side measures, from its encoders' records: held-out accuracy, the probe.

    Means over the method's distinct encoder files (pretraining seeds).
    """
    records = {
        (r.get("encoder") or {}).get("sha256"): (r.get("encoder") or {}).get("pretraining") or {}
        for r in runs
    }
    records.pop(None, None)
    parts = []
    accuracies = [
        rec["pretext_accuracy"] for rec in records.values() if rec.get("pretext_accuracy") is not None
    ]
    if accuracies:
        chance = [c for rec in records.values() for c in (rec.get("chance") or {}).values() if c is not None]
        shown = f" (chance {statistics.fmean(chance):.3f})" if chance else ""
        parts.append(f"mean held-out pretext accuracy {statistics.fmean(accuracies):.3f}{shown}")
    probes = [rec["probe"] for rec in records.values() if rec.get("probe")]
    keys = [k for k in (probes[0]["final"] if probes else {}) if k.startswith("probe/")]
    if keys:
        key = keys[0]
        before = statistics.fmean(p["initial"][key] for p in probes)
        after = statistics.fmean(p["final"][key] for p in probes)
        parts.append(
            f"frozen-feature probe ({key.split('/', 1)[1]}) {before:.3f} random → {after:.3f} pretrained"
        )
    return "".join(f"; {p}" for p in parts) + f" ({len(records)} encoders)" if parts else ""


def write_report(
    rows: Sequence[dict[str, Any]],
    output_dir: str | os.PathLike[str],
    metric: str,
    *,
    synthetic: bool,
    baseline: str = "scratch",
    title: str = "Data efficiency",
    control: str | None = "supervised",
) -> list[Path]:
    """Write the report files (see the module docstring).

    Every file made from the built-in phantoms says so (``synthetic``).

    Args:
        rows: the runs (:func:`~pretext3d.experiments.runner.run_data_efficiency`).
        output_dir: where the files go.
        metric: the main test metric.
        synthetic: the data are the built-in phantoms.
        baseline: the method the others are compared against.
        title: the summary's and the figures' title.
        control: the positive control's method (an encoder pretrained with labels); when the rows
            hold it, the summary says whether it beats ``baseline`` at the smallest fraction, and
            if it does not, that the protocol cannot show a transfer.

    Returns:
        The files written.

    Examples:
        >>> images, grades = p3.data.fundus_phantom_batch(24, size=32)   # SYNTHETIC
        >>> recipe = p3.experiments.GradingRecipe(growth_rate=4, block_config=(1, 1), init_features=8)
        >>> config = p3.experiments.DataEfficiencyConfig(
        ...     fractions=(0.25, 1.0), split_seeds=(0,),
        ...     train=p3.finetune.TrainConfig(epochs=1, steps_per_epoch=2, batch_size=4))
        >>> rows = p3.experiments.run_data_efficiency(recipe, images, grades, {"scratch": None}, config,
        ...                                           "grid", progress=False,
        ...                            log=lambda line: None)
        >>> [p.name for p in write_report(rows, "grid", "qwk", synthetic=True)]
        ['results.csv', 'cases.csv', 'results.json', 'summary.md', 'data_efficiency.png',
         'learning_curves.png']
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, records in (
        ("results.csv", [_flat(r) for r in rows]),
        ("cases.csv", [c for r in rows for c in _case_rows(r)]),
    ):
        columns = list(dict.fromkeys(k for r in records for k in r))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(records)
        write_text(out / name, buffer.getvalue())
        written.append(out / name)
    write_text(out / "results.json", json.dumps(list(rows), indent=2))
    written.append(out / "results.json")
    kind = _data_kind(rows)
    note = (
        "SYNTHETIC phantom data: says nothing about real scans."
        if synthetic
        else f"Real data ({_PAPER_DATA.get(kind, f'data.kind = {kind!r}')})."
        if kind
        else "Real data."
    )
    metrics = [metric] + [m for m in (rows[0]["test"] if rows else {}) if m != metric]
    env = _env(rows[0]) if rows else {}
    splits = sorted({r["split_seed"] for r in rows})
    comparisons, seeds = paired_differences(rows, metric, baseline), seeds_note(rows)
    summary = [
        f"# {title}\n\n{note}\n",
        f"Seeds: {seeds}.\n",
        f"Test metrics over {len(splits)} split seed(s) {splits}: runs of one split seed (repetitions, "
        "pretraining seeds) are averaged first; ± is the sd between split seeds (n/a for one).\n",
        "## Protocol\n",
        *_protocol(rows),
        "",
        f"Transductive (encoders pretrained on validation/test images allowed): "
        f"{any(r.get('transductive') for r in rows)}.",
        f"Environment: pretext3d {env.get('pretext3d')}, torch {env.get('torch')}, commit(s) "
        f"{', '.join(sorted({str(_env(r).get('git_commit')) for r in rows}))}, device {env.get('device')}, "
        f"{env.get('threads')} threads.\n",
        *_control_verdict(comparisons, metric, baseline, control),
        "## Flagged runs\n",
        *_flagged(rows, metric),
        f"## Paired differences against `{baseline}` (`{metric}`)\n",
        "Per split seed, the mean of (method − baseline) over runs with the same subset, "
        "initialisation and batch order; 95 % Student-t interval and paired t-test over split seeds. "
        "The intervals and the plain p-values are per row: with many rows some reach p < 0.05 by "
        "chance; the Holm-adjusted p-values account for testing every row. *Detectable Δ* is the smallest "
        "mean difference the row could have called significant after Holm (at its strictest step, "
        "α = 0.05 / rows, given the row's spread over split seeds): a true effect below it cannot be a "
        "finding of this grid.\n",
        _paired_table(comparisons, baseline) + "\n",
        "## Test metrics\n",
    ]
    summary += [summary_table(rows, m) + "\n" for m in metrics]
    write_text(out / "summary.md", "\n".join(summary))
    written.append(out / "summary.md")
    written += _plots(rows, comparisons, out, metric, f"{title}: {note}\n{seeds}", baseline)
    return written


def chance_of(rows: Sequence[dict[str, Any]], metric: str) -> float | None:
    """The score of guessing, where the metric fixes it: kappa 0, balanced accuracy 1 / classes.

    Examples:
        >>> chance_of([{"test": {"balanced_accuracy": 0.7, "cat_recall": 0.6, "dog_recall": 0.8}}],
        ...           "balanced_accuracy")
        0.5
        >>> chance_of([{"test": {"qwk": 0.4}}], "qwk"), chance_of([{"test": {"mean_dice": 0.5}}], "mean_dice")
        (0.0, None)
    """
    if metric == "qwk":
        return 0.0
    if metric == "balanced_accuracy" and rows:
        classes = [k for k in rows[0]["test"] if k.endswith("_recall")]
        return 1 / len(classes) if classes else None
    return None


def _plots(
    rows: Sequence[dict[str, Any]],
    comparisons: Sequence[PairedComparison],
    out: Path,
    metric: str,
    note: str,
    baseline: str,
) -> list[Path]:
    try:
        from matplotlib.figure import Figure  # no pyplot: the caller's backend and figures stay untouched
        from matplotlib.lines import Line2D
    except ImportError:
        return []
    kind = _data_kind(rows)
    comparable = next(
        (m for m in PAPER_METRICS if rows and m in rows[0]["test"] and (kind is None or kind in _PAPER_DATA)),
        None,
    )  # the paper's panel for the paper's data (and its phantoms) only
    ours = comparable is not None and comparable != metric  # our curve of the paper's metric, if another
    panels = 2 + (comparable is not None) + ours
    width = 5.2 * panels + (2.5 if comparable is not None else 0)  # room for the paper's legend
    fig = Figure(figsize=(width, 4.6))
    axes = fig.subplots(1, panels, squeeze=False)
    ax = axes[0][0]
    _curves(ax, rows, metric)
    _mark_flagged(ax, rows, metric)
    level = chance_of(rows, metric)
    if level is not None:
        ax.axhline(level, color="grey", linestyle="--", lw=0.9, label=f"chance ({level:.2f})")
    ax.set_ylabel(f"test {metric}")
    ax.set_title("ours: mean ± sd over split seeds", fontsize=9)
    ax = axes[0][1]
    for method in dict.fromkeys(c.method for c in comparisons):
        mine = [c for c in comparisons if c.method == method]
        where = [100 * c.fraction for c in mine]
        low = [0 if math.isnan(c.low) else c.mean - c.low for c in mine]
        high = [0 if math.isnan(c.high) else c.high - c.mean for c in mine]
        ax.errorbar(where, [c.mean for c in mine], yerr=[low, high], marker="o", capsize=3,
                    color=colour(method), label=method)  # fmt: skip
    ax.axhline(0, color="black", lw=0.8)
    ax.set_ylabel(f"paired Δ {metric} vs {baseline}")
    ax.set_title("ours: paired difference, 95 % CI over split seeds", fontsize=9)
    if ours and comparable is not None:  # ours on the paper's metric (when it is not the first panel's)
        ax = axes[0][2]
        _curves(ax, rows, comparable)
        _mark_flagged(ax, rows, comparable)
        ax.set_ylabel(f"test {comparable}")
        ax.set_title(f"ours: the paper's metric ({comparable})", fontsize=9)
    if comparable is not None:  # the paper's numbers on axes of their own
        ax = axes[0][-1]
        figure = PAPER_METRICS[comparable][0]
        sources = list(dict.fromkeys(src for (_, src) in paper_curves(figure)))
        for (method, source), curve in paper_curves(figure).items():
            ax.plot(
                [100 * f for f, _ in curve],
                [v for _, v in curve],
                ["--", ":", "-."][sources.index(source) % 3],
                marker="x",
                ms=4,
                lw=0.9,
                color=colour(method),
                label=f"{method} ({_SOURCES.get(source, source)})",
            )
        ax.set_ylabel(f"paper: test {comparable}")
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0))
        caveat = _NOT_COMPARABLE if "SYNTHETIC" in note else ""
        ax.set_title(
            "the paper's numbers (real data), not ours\n" + _PAPER_NOTES[comparable] + caveat, fontsize=7
        )
    fractions = sorted({r["fraction"] for r in rows})
    ticks = [100 * f for f in fractions]
    for k, ax in enumerate(axes[0]):
        ax.set_xscale("log")
        shown = [5, 10, 25, 50, 100] if k == len(axes[0]) - 1 and comparable is not None else ticks
        ax.set_xticks(
            shown, labels=[f"{t:g}" for t in shown]
        )  # the fractions that ran (the paper's: its own)
        ax.minorticks_off()
        ax.set_xlabel("% of labelled training cases")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0] and ax.get_legend() is None:
            ax.legend(fontsize=6)
    fig.suptitle(note, fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "data_efficiency.png", dpi=110)

    fig = Figure(figsize=(max(6.4, 3.2 * len(fractions)), 3.6))
    axes = fig.subplots(1, len(fractions), squeeze=False, sharey=True)
    for ax, fraction in zip(axes[0], fractions, strict=True):
        runs = [r for r in rows if r["fraction"] == fraction]
        alpha = min(0.9, max(0.35, 8 / max(1, len(runs))))  # few runs: solid lines
        for r in runs:
            scores = [h.get("val") for h in r.get("history", [])]
            style = "--" if r.get("flag") else "-"  # flagged runs dashed
            ax.plot(range(1, len(scores) + 1), scores, style, color=colour(r["method"]), alpha=alpha, lw=1.1)
        if level is not None:
            ax.axhline(level, color="grey", linestyle="--", lw=0.9)
        ax.set_title(f"{fraction:.0%} labelled", fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"validation {metric}")
    methods = dict.fromkeys(r["method"] for r in rows)
    handles = [Line2D([], [], color=colour(m), label=m) for m in methods]
    axes[0][-1].legend(handles=handles, fontsize=6)
    grey = "; grey: chance" if level is not None else ""
    text = f"Validation score per epoch, every run (flagged runs dashed{grey}). {note}"
    lines = textwrap.wrap(text.replace("\n", " "), width=int(16 * fig.get_figwidth()))
    fig.suptitle("\n".join(lines), fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "learning_curves.png", dpi=100)
    return [out / "data_efficiency.png", out / "learning_curves.png"]
