"""Tune the from-scratch baseline's learning rate on validation data only.

A fair comparison may give the baseline its own best schedule. This runs the from-scratch arm
of a reproduction's grid (``examples/<experiment>/<mode>.toml``) for each candidate learning
rate and prints the mean best *validation* score per rate and label fraction (test scores are
never looked at). Write the chosen rate into ``[experiment.baseline_train]`` of the config, with
this table, and say so in the results. The shipped configs give both arms the same untuned rate.

    python examples/tune_baseline.py --experiment pancreas --mode quick --lrs 0.0003,0.001,0.003
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
from pathlib import Path

from pretext3d.experiments import load_reproduction, run_data_efficiency

EXAMPLES = Path(__file__).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", choices=["pancreas", "fundus"], required=True)
    parser.add_argument("--mode", choices=["quick", "demo", "paper"], default="quick")
    parser.add_argument("--lrs", default="0.0003,0.001,0.003")
    parser.add_argument("--fractions", default="0.1,1.0")
    parser.add_argument("--split-seeds", default="0,1")
    args = parser.parse_args()
    config = load_reproduction(EXAMPLES / args.experiment / f"{args.mode}.toml")
    images, labels, case_ids = config.data.labelled()
    table: dict[float, dict[float, float]] = {}
    for lr in (float(v) for v in args.lrs.split(",")):
        grid = dataclasses.replace(
            config.experiment,
            fractions=tuple(float(f) for f in args.fractions.split(",")),
            split_seeds=tuple(int(s) for s in args.split_seeds.split(",")),
            baseline_train=dataclasses.replace(config.experiment.settings_for(pretrained=False), lr=lr),
        )
        rows = run_data_efficiency(
            config.recipe, images, labels, {"scratch": None}, grid,
            Path(config.output_dir).with_name(f"{Path(config.output_dir).name}-tuning") / f"lr{lr:g}",
            case_ids=case_ids, synthetic=config.data.synthetic, progress=False,
        )  # fmt: skip
        by_fraction: dict[float, list[float]] = {}
        for row in rows:
            by_fraction.setdefault(row["fraction"], []).append(row["best_val"])
        table[lr] = {f: statistics.fmean(v) for f, v in sorted(by_fraction.items())}
    fractions = sorted({f for scores in table.values() for f in scores})
    print("\nmean best validation score of the from-scratch baseline (validation only):")
    print("| lr | " + " | ".join(f"{f:.0%}" for f in fractions) + " | mean |")
    print("|---" * (len(fractions) + 2) + "|")
    for lr, scores in table.items():
        cells = " | ".join(f"{scores[f]:.3f}" for f in fractions)
        print(f"| {lr:g} | {cells} | {statistics.fmean(scores.values()):.3f} |")
    best = max(table, key=lambda lr: statistics.fmean(table[lr].values()))
    note = "  [SYNTHETIC phantom data]" if config.data.synthetic else ""
    print(f"best: lr = {best:g}{note}")


if __name__ == "__main__":
    main()
