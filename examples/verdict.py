"""The verdict of both reproductions on the SYNTHETIC phantoms: one block of split seeds, two workers.

Runs the pancreas and the fundus experiments' demo protocol (``examples/*/demo.toml``) on one
block of split seeds with ``--workers`` processes of one CPU thread sharing both folders (worker
``k`` starts on experiment ``k mod 2`` and helps with the other when its own is done), after
printing what is left and about how long it takes (measured here). ``--block development``:
split seeds 0-19, each method's learning rate chosen on validation over the calibration seeds
20-22; ``--block held-out`` (the default, what ``make verdict`` runs): split seeds 100-119, new
pretraining seeds, the learning rates the development block chose (frozen in the configs). The
held-out folders receive ``verdict.md`` and ``verdict.png`` (both blocks side by side) and this
script writes both experiments' into ``runs/verdict/``. Interrupt and rerun: nothing finished is
repeated. docs/results.md has the published run.

    python examples/verdict.py --block development   # first, once: develop, choose the learning rates
    python examples/verdict.py                        # then, once: the held-out block
    python examples/verdict.py --estimate             # only what is left and how long it takes
    python examples/verdict.py --only genesis,mim     # added arms beside scratch, in folders of their own
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from pretext3d.experiments import Reproduction, held_out_block, load_reproduction, run_reproduction
from pretext3d.experiments.cost import estimate_cost
from pretext3d.experiments.verdict import plot_verdict, verdict_table
from pretext3d.experiments.workers import run_workers

HERE = Path(__file__).parent
EXPERIMENTS = ("pancreas", "fundus")


def configs(block: str, overrides: list[str], only: list[str] | None = None) -> dict[str, Reproduction]:
    """Each experiment's demo config for ``block``; ``only``: just these tasks beside scratch."""
    out = {}
    for name in EXPERIMENTS:
        config = load_reproduction(HERE / name / "demo.toml", overrides)
        if only:
            config = only_tasks(config, only)
        out[name] = held_out_block(config) if block == "held-out" else config
    return out


def only_tasks(config: Reproduction, tasks: list[str]) -> Reproduction:
    """``config`` with only ``tasks`` beside scratch (no positive control), in a folder of its own.

    For arms added to a block whose folders are gone (they are not committed, only their report):
    scratch runs again beside them, on the same seeds, so its rows can be checked against the
    published ones.
    """
    unknown = [t for t in tasks if t not in config.tasks]
    if unknown:
        raise SystemExit(
            f"verdict.py: --only {','.join(unknown)}: not a task of {config.name} ({list(config.tasks)})"
        )
    families = tuple(kept for f in config.holm_families if (kept := tuple(m for m in f if m in tasks)))
    return dataclasses.replace(
        config,
        name=f"{config.name} (only {', '.join(tasks)} beside scratch)",
        output_dir=f"{config.output_dir.rstrip('/')}-{'-'.join(tasks)}",
        tasks={t: config.tasks[t] for t in tasks},
        positive_control=0,
        experiment=dataclasses.replace(
            config.experiment,
            learning_rates={
                m: lr for m, lr in config.experiment.learning_rates.items() if m in ("scratch", *tasks)
            },
        ),
        holm_families=families,
    )


def work(block: str, overrides: list[str], worker: int, only: list[str] | None = None) -> None:
    """One worker: both experiments, starting with experiment ``worker mod 2``."""
    torch.set_num_threads(1)
    todo = configs(block, overrides, only)
    order = [*EXPERIMENTS[worker % 2 :], *EXPERIMENTS[: worker % 2]]
    for name in order:
        run_reproduction(todo[name], progress=False, estimate=False)


def report(
    block: str, overrides: list[str], seconds: float | None, workers: int, only: list[str] | None = None
) -> None:
    """Both experiments' blocks side by side: ``runs/verdict[-<only>]/verdict.md`` and ``verdict.png``."""
    out = Path("runs/verdict" + ("-" + "-".join(only) if only else ""))
    out.mkdir(parents=True, exist_ok=True)
    panels, lines = [], ["# The verdict on the SYNTHETIC phantoms (examples/verdict.py)\n"]
    for development in configs("development", overrides, only).values():
        held = held_out_block(development)
        blocks = {}
        for label, config in (("held-out", held), ("development", development)):
            folder = Path(config.output_dir)
            if (folder / "results.json").exists():
                blocks[f"{label} ({folder.name})"] = json.loads((folder / "results.json").read_text())
        if not blocks:
            continue
        metric = development.recipe.metric
        panels.append((development.name, metric, blocks))
        lines += [
            f"## {development.name}\n",
            verdict_table(blocks, metric, families=development.holm_families) + "\n",
        ]
    if seconds is not None:
        lines.append(f"The {block} block took {seconds / 60:.1f} min with {workers} workers here.\n")
    (out / "verdict.md").write_text("\n".join(lines))
    if panels:
        plot_verdict(panels, out / "verdict.png", synthetic=True)
    print("\n".join(lines))
    print(f"wrote {out / 'verdict.md'} and {out / 'verdict.png'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--block", choices=["held-out", "development"], default="held-out")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--estimate", action="store_true", help="print what is left and how long; run nothing"
    )
    parser.add_argument(
        "--report", action="store_true", help="only write runs/verdict/ from the finished folders"
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    parser.add_argument(
        "--only",
        type=lambda text: text.split(","),
        default=None,
        metavar="TASK,...",
        help="only these tasks beside scratch, no positive control, into <output_dir>-<tasks>[-verdict] "
        "(arms added to a block whose folders are gone)",
    )
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        work(args.block, args.set, args.worker, args.only)
        return
    if args.report:
        report(args.block, args.set, None, args.workers, args.only)
        return
    torch.set_num_threads(1)
    total = 0.0
    for name, config in configs(args.block, args.set, args.only).items():
        cost = estimate_cost(config, workers=args.workers, log=print)
        total += cost.seconds()
        print(f"{name} ({config.output_dir}): {cost}")
    print(
        f"{args.block} block, both experiments with {args.workers} workers: about {total / 60:.0f} min",
        flush=True,
    )
    if args.estimate:
        return
    start = time.perf_counter()
    flags = [f"--set={item}" for item in args.set] + ([f"--only={','.join(args.only)}"] if args.only else [])
    commands = [
        [sys.executable, __file__, "--block", args.block, "--worker", str(k), *flags]
        for k in range(args.workers)
    ]
    suffix = "-" + "-".join(args.only) if args.only else ""
    logs = [Path("runs") / f"verdict-{args.block}{suffix}-worker{k}.log" for k in range(args.workers)]
    code = run_workers(commands, logs)
    if code:
        sys.exit(f"verdict.py: a worker failed (exit code {code}); see {', '.join(map(str, logs))}")
    seconds = time.perf_counter() - start
    print(f"{args.block} block: {seconds / 60:.1f} min with {args.workers} workers")
    report(args.block, args.set, seconds, args.workers, args.only)


if __name__ == "__main__":
    main()
