"""A development pilot of the demo benchmark: 5 % labels only, one pretraining seed, some tasks.

Runs ``examples/<experiment>/demo.toml`` on its 20 development split seeds at 5 % labels with one
pretraining seed and the tasks named (plus scratch and the positive control), into
``runs/pilot-<experiment>``. A cheap look at the protocol while developing (does the positive
control beat scratch?), never a verdict: the verdict comes from the held-out block
(``reproduce.py --mode demo --verdict``; docs/results.md says how). SYNTHETIC phantom data.

    python examples/pilot.py fundus rotation jigsaw rpl exemplar cpc
    python examples/pilot.py pancreas rotation
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from pretext3d.experiments import load_reproduction, run_reproduction

HERE = Path(__file__).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", choices=["pancreas", "fundus"])
    parser.add_argument("tasks", nargs="+", help="pretext tasks to run (at least one)")
    args = parser.parse_args()
    config = load_reproduction(
        HERE / args.experiment / "demo.toml", ["pretraining_seeds=1", "experiment.fractions=[0.05]"]
    )
    unknown = sorted(set(args.tasks) - set(config.tasks))
    if unknown:
        parser.error(f"unknown task(s) {unknown}; the config has {sorted(config.tasks)}")
    config = dataclasses.replace(
        config,
        tasks={name: spec for name, spec in config.tasks.items() if name in args.tasks},
        name=f"{config.name} [pilot: 5 % only, 1 pretraining seed, tasks {', '.join(args.tasks)}]",
        output_dir=f"runs/pilot-{args.experiment}",
    )
    run_reproduction(config, progress=False)


if __name__ == "__main__":
    main()
