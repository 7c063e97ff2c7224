"""Tune the from-scratch baseline's learning rate on validation data only.

A fair comparison gives the baseline its own best schedule. This runs the from-scratch
arm of an experiment's grid (``examples/configs/<experiment>_data_efficiency.toml``) for
each candidate learning rate and prints the mean best *validation* score per rate and
label fraction (test scores are never looked at). Write the chosen rate into
``[experiment.baseline_train]`` of the config, with the table, as the configs do.

    python examples/tune_baseline.py --experiment pancreas --lrs 0.0003,0.001,0.003
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from pretext3d.cli import main as cli

CONFIGS = Path(__file__).parent / "configs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", choices=["pancreas", "fundus"], required=True)
    parser.add_argument("--lrs", default="0.0003,0.001,0.003")
    parser.add_argument("--fractions", default="0.05,1.0")
    parser.add_argument("--split-seeds", default="0,1")
    parser.add_argument("--output", type=Path, default=None, help="default runs/<experiment>-tuning")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (recorded with the results)"
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    output = args.output or Path("runs") / f"{args.experiment}-tuning"
    table: dict[float, dict[float, float]] = {}
    for lr in (float(v) for v in args.lrs.split(",")):
        folder = output / f"lr{lr:g}"
        code = cli(
            [
                "data-efficiency",
                "--config",
                str(CONFIGS / f"{args.experiment}_data_efficiency.toml"),
                "--set",
                'methods={scratch = ""}',
                "--set",
                f"experiment.baseline_train.lr={lr}",
                "--set",
                f"experiment.fractions=[{args.fractions}]",
                "--set",
                f"experiment.split_seeds=[{args.split_seeds}]",
                "--set",
                f'output_dir="{folder}"',
            ]
        )
        if code:
            sys.exit(code)
        rows = json.loads((folder / "results.json").read_text())
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
    print(f"best: lr = {best:g}  [SYNTHETIC phantom data]")


if __name__ == "__main__":
    main()
