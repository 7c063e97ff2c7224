"""The honest data-efficiency benchmark: every pretext task against a fair from-scratch baseline.

For one experiment (``pancreas``: 3D U-Net segmentation of the CT phantoms; ``fundus``:
DenseNet grading of the fundus phantoms), this pretrains an encoder for every pretext task
and pretraining seed on the unlabelled pool (phantoms drawn from their own seed range, so no
labelled, validation or test case is seen), then runs the data-efficiency grid (every task
and the baseline, every label fraction, every split seed) and writes the report: mean ± sd
over split seeds, paired differences against scratch with 95 % intervals and a paired test,
learning curves, provenance.

Both the settings of pretraining (``examples/configs/<experiment>_pretrain.toml``) and of
the grid (``examples/configs/<experiment>_data_efficiency.toml``) are plain ``pretext3d``
configs; this script only loops over tasks and seeds. Modes:

- ``quick``: fractions 5/25/100 %, 5 split seeds, 1 pretraining seed (what ``make curve`` runs).
- ``demo``: fractions 5/10/25/50/100 %, 5 split seeds, 3 pretraining seeds (several hours on a
  2-core CPU; meant for a GPU or an overnight run).

Interrupt it at any point and rerun the same command: finished encoders and runs are kept.
Everything here is SYNTHETIC phantom data and says nothing about real scans.

    python examples/benchmark.py --experiment pancreas --mode quick [--output runs/benchmark]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from pretext3d.cli import main as cli
from pretext3d.experiments import read_pretraining_record

CONFIGS = Path(__file__).parent / "configs"
# Per experiment and task: the random crop taken before the task (0: whole image) and the
# task's options, sized to the phantoms (32^3 CT, 64 px fundus) and the small encoders.
TASK_SETTINGS: dict[str, dict[str, tuple[int, str]]] = {
    "pancreas": {
        "rotation": (16, "{}"),
        "jigsaw": (32, "{grid = 2, num_permutations = 24, jitter = 2}"),
        "rpl": (30, "{grid = 3, jitter = 1}"),
        "exemplar": (24, "{}"),
        "cpc": (32, "{grid = 4, patch = 8, steps = 2, code_dim = 64}"),
    },
    "fundus": {
        "rotation": (48, "{}"),
        "jigsaw": (0, "{grid = 3, num_permutations = 100, jitter = 2}"),
        "rpl": (0, "{grid = 3, jitter = 2}"),
        "exemplar": (48, "{}"),
        "cpc": (0, "{}"),
    },
}
TASKS = tuple(TASK_SETTINGS["pancreas"])  # every registered task (a test checks)
MODES = {
    "quick": {"fractions": "[0.05, 0.25, 1.0]", "split_seeds": "[0, 1, 2, 3, 4]", "pretraining_seeds": 1},
    "demo": {
        "fractions": "[0.05, 0.1, 0.25, 0.5, 1.0]",
        "split_seeds": "[0, 1, 2, 3, 4]",
        "pretraining_seeds": 3,
    },
}


def _run(args: list[str]) -> None:
    code = cli(args)
    if code:
        sys.exit(code)


def pretrain(experiment: str, task: str, seed: int, output: Path) -> Path:
    """Pretrain one encoder unless a finished one (with its record) is already there."""
    encoder = output / "encoders" / f"{task}_p{seed}.pt"
    record = read_pretraining_record(encoder) if encoder.exists() else None
    if record is not None:
        print(f"{encoder} exists (held-out pretext accuracy {record['pretext_accuracy']:.3f}); kept")
        return encoder
    crop, options = TASK_SETTINGS[experiment][task]
    _run(
        [
            "pretrain",
            "--config",
            str(CONFIGS / f"{experiment}_pretrain.toml"),
            "--set",
            f'task="{task}"',
            "--set",
            f"task_options={options}",
            "--set",
            f"train.crop={crop}",
            "--set",
            f"train.seed={seed}",
            "--set",
            f'output="{encoder}"',
        ]
    )
    return encoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", choices=sorted(TASK_SETTINGS), required=True)
    parser.add_argument("--mode", choices=sorted(MODES), default="quick")
    parser.add_argument(
        "--tasks", default=",".join(TASKS), help="comma-separated subset of " + ",".join(TASKS)
    )
    parser.add_argument("--output", type=Path, default=None, help="default runs/<experiment>-<mode>")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (recorded with the results)"
    )
    args = parser.parse_args()
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        parser.error(f"--tasks: unknown {unknown}; choose from {list(TASKS)}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    mode = MODES[args.mode]
    output = args.output or Path("runs") / f"{args.experiment}-{args.mode}"
    start = time.perf_counter()
    methods = {}
    for task in tasks:
        files = [pretrain(args.experiment, task, k, output) for k in range(int(mode["pretraining_seeds"]))]
        methods[task] = "[" + ", ".join(f'"{f}"' for f in files) + "]"
    grid = ["data-efficiency", "--config", str(CONFIGS / f"{args.experiment}_data_efficiency.toml")]
    grid += ["--set", f'output_dir="{output}"']
    grid += [
        "--set",
        f"experiment.fractions={mode['fractions']}",
        "--set",
        f"experiment.split_seeds={mode['split_seeds']}",
    ]
    for task, files in methods.items():
        grid += ["--set", f"methods.{task}={files}"]
    _run(grid)
    print(f"\n{(output / 'summary.md').read_text()}")
    print(f"figures: {output / 'data_efficiency.png'}, {output / 'learning_curves.png'}")
    print(
        f"total {time.perf_counter() - start:.0f} s on {torch.get_num_threads()} threads "
        "[SYNTHETIC phantom data]"
    )


if __name__ == "__main__":
    main()
