"""A smoke run of the pancreas paper configuration: time and peak memory per phase, projected to the full run.

Writes SYNTHETIC CT phantoms in the MSD Task07 layout at a realistic size (by default 40 scans
of 512 x 512 x 80-120 voxels in HU, 0.8 x 0.6 x 2.5 mm), then runs
``examples/pancreas/paper.toml`` on them with every phase shortened: the preprocessing and its
cache, each task's pretraining for ``--steps`` steps, and one fraction x one split
seed of the data-efficiency grid fine-tuned for ``--epochs`` epochs with sliding-window
validation. It prints seconds and peak memory per phase (CUDA's ``max_memory_allocated``, reset
per phase; on the CPU the process's peak resident memory so far) and the full run's time
projected from the measured rates: the preprocessing per scan x 420 scans, each task's
images/s over the paper's 10,000 steps of batch 8, and the seconds per fine-tuning epoch x the
paper's 100 epochs (the budget: early stopping can only shorten it) x every run of the grid.
The phantoms' Dice says nothing (a few epochs on synthetic data); only times and memory are read.

    python benchmarks/paper_smoke.py                       # one GPU: the realistic size (<= 8 min)
    python benchmarks/paper_smoke.py --tiny --device cpu   # a few minutes on a CPU (what the tests run)

Needs nibabel (``pip install 'pretext3d[nifti]'``) to write and read the NIfTI files.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pretext3d import engine
from pretext3d.data.io import write_nifti
from pretext3d.data.phantoms import ct_phantom
from pretext3d.experiments import load_reproduction, run_reproduction

PAPER = Path(__file__).resolve().parents[1] / "examples" / "pancreas" / "paper.toml"
#: MSD Task07: 281 labelled training scans and 139 unlabelled test scans
TASK07_SCANS = 281 + 139

#: what --tiny changes besides the phantoms' size: a CPU-sized model, tasks and budgets
TINY = [
    "data.size=32", "pretraining_data.size=32", "held_out=2", "pretrain.batch_size=2",
    "segmentation.widths=[4, 8, 16]", "segmentation.crop=32", "segmentation.inference_window=32",
    'tasks.jigsaw.options={grid = 2, num_permutations = 24, jitter = 1}',
    'tasks.rpl.options={grid = 3, jitter = 1}', 'tasks.cpc.options={grid = 4, patch = 8}',
    "experiment.train.steps_per_epoch=2", "experiment.baseline_train.steps_per_epoch=2",
]  # fmt: skip


def write_scan(folder: Path, i: int, labelled: bool, shape: tuple[int, int, int]) -> None:
    """Scan ``i``: a phantom drawn at a coarse grid, resampled to ``shape`` with its depth varied.

    The depth is 80-120 % of ``shape[2]`` by scan; the field of view stays 400 x 300 x 250 mm, so
    the spacing is realistic (0.8 x 0.6 x 2.5 mm at 512 x 512 x 100).
    """
    torch.set_num_threads(1)  # one scan per process
    coarse = tuple(max(16, n // 4) for n in shape)
    target = (shape[0], shape[1], max(8, round(shape[2] * (0.8 + 0.4 * ((i * 7) % 11) / 10))))
    case = ct_phantom(10_000 + i, coarse)
    image = F.interpolate(
        torch.from_numpy(case.image.astype(np.float32))[None, None], target, mode="trilinear"
    )
    label = F.interpolate(torch.from_numpy(case.label)[None, None].float(), target, mode="nearest")
    spacing = [s * c / t for s, c, t in zip(case.spacing, coarse, target, strict=True)]
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -np.array(spacing) * (np.array(target) - 1) / 2
    name = f"pancreas_{i + 1:03d}.nii.gz"
    hu = image[0, 0].round().to(torch.int16).numpy()
    write_nifti(folder / ("imagesTr" if labelled else "imagesTs") / name, hu, affine)
    if labelled:
        write_nifti(folder / "labelsTr" / name, label[0, 0].to(torch.uint8).numpy(), affine)


def write_scans(root: Path, count: int, shape: tuple[int, int, int], log: Any) -> Path:
    """``count`` phantoms in the Task07 layout, half labelled (imagesTr), half unlabelled (imagesTs).

    One process per core writes them (about 1.4 s per 512 x 512 x 100 scan on one core).
    """
    folder = root / "Task07_Pancreas"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    labelled = [i < count // 2 for i in range(count)]
    with ProcessPoolExecutor(min(count, os.cpu_count() or 1)) as pool:
        list(pool.map(write_scan, [folder] * count, range(count), labelled, [shape] * count))
    names = [(f"pancreas_{i + 1:03d}.nii.gz", i < count // 2) for i in range(count)]
    training = [{"image": f"./imagesTr/{n}", "label": f"./labelsTr/{n}"} for n, tr in names if tr]
    test = [f"./imagesTs/{n}" for n, tr in names if not tr]
    meta = {
        "name": "Pancreas", "description": "SYNTHETIC phantom in the layout of MSD Task07 (smoke run)",
        "tensorImageSize": "3D", "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "pancreas", "2": "cancer"},
        "numTraining": len(training), "numTest": len(test), "training": training, "test": test,
    }  # fmt: skip
    (folder / "dataset.json").write_text(json.dumps(meta, indent=2))
    log(f"wrote {count} SYNTHETIC scans of {shape[0]} x {shape[1]} x ~{shape[2]} to {folder}")
    return folder


class Phases:
    """Seconds and peak memory of each phase, marked by the reproduction's log lines."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.rows, self.name, self.start = device, [], "", time.perf_counter()

    def peak_gib(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**30
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux

    def begin(self, name: str) -> None:
        if self.name:
            self.rows.append({"phase": self.name, "seconds": time.perf_counter() - self.start,
                              "peak_gib": self.peak_gib()})  # fmt: skip
        self.name, self.start = name, time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def log(self, line: str) -> None:
        """The reproduction's log: a new encoder or the grid starts a phase."""
        print(line, flush=True)
        if line.startswith("pretraining ") and " -> " in line:
            self.begin("pretraining " + line.split()[1])
        elif "held-out pretext accuracy" in line and not self.name.startswith("fine-tuning"):
            self.begin("fine-tuning (1 fraction x 1 split seed, every method)")


def projection(out: Path, paper: Any, smoke: Any, rows: list[dict[str, Any]]) -> dict[str, float]:
    """The full paper run's seconds per phase, from the smoke's measured rates."""
    seconds: dict[str, float] = {}
    prep = next(r for r in rows if r["phase"].startswith("preprocessing"))
    seconds["preprocessing"] = prep["seconds"] / prep["scans"] * TASK07_SCANS
    images = paper.pretrain.steps * paper.pretrain.batch_size
    for task in paper.tasks:
        metrics = engine.read_metrics(out / "encoders" / f"{task}_p0.pt.run" / "metrics.jsonl")
        rates = [r["images_per_s"] for r in metrics if "images_per_s" in r]
        rates = rates[1:] or rates  # after the first row (warm-up, compilation) where there are more
        if rates:
            seconds[f"pretraining {task}"] = images / statistics.median(rates) * paper.pretraining_seeds
    epochs = [h["seconds"] for f in sorted((out / "runs").glob("*.json"))
              for h in json.loads(f.read_text()).get("history", [])]  # fmt: skip
    if epochs:
        scale = paper.experiment.train.steps_per_epoch / smoke.experiment.train.steps_per_epoch
        runs = len(paper.experiment.fractions) * len(paper.experiment.split_seeds) * (1 + len(paper.tasks))
        runs *= max(1, len(paper.experiment.lr_search or []))
        seconds["fine-tuning (budget, no early stop)"] = (
            statistics.median(epochs) * scale * paper.experiment.train.epochs * runs
        )
    return seconds


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", default="runs/paper-smoke", help="folder for the scans, cache and runs")
    parser.add_argument("--scans", type=int, default=40)
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 512, 100])
    parser.add_argument("--steps", type=int, default=200, help="pretraining steps per task")
    parser.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs per run")
    parser.add_argument("--fraction", type=float, default=0.25)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--tiny", action="store_true", help="CPU-sized: 12 scans of 48 x 48 x 24, small model"
    )
    parser.add_argument("--set", action="append", default=[], help="more overrides of paper.toml")
    args = parser.parse_args(argv)
    scans, shape = (12, (48, 48, 24)) if args.tiny else (args.scans, tuple(args.shape))
    out = Path(args.output)
    device = engine.resolve_device(args.device)
    phases = Phases(device)
    phases.begin("writing phantoms")
    folder = write_scans(out / "data", scans, shape, print)  # type: ignore[arg-type]
    steps, epochs = args.steps if not args.tiny else min(args.steps, 3), args.epochs
    overrides = [
        f"output_dir={str(out / 'run')!r}", f"device={device.type!r}", f"pretrain.device={device.type!r}",
        f"data.path={str(folder)!r}", f"pretraining_data.path={str(folder)!r}",
        f"data.cache_dir={str(out / 'cache')!r}", f"pretraining_data.cache_dir={str(out / 'cache')!r}",
        f"pretrain.steps={steps}", f"pretrain.eval_every={steps}", f"pretrain.checkpoint_every={steps}",
        "pretrain.warmup_steps=0", f"experiment.fractions=[{args.fraction}]", "experiment.split_seeds=[0]",
        *[f"experiment.{t}.{k}={v}" for t in ("train", "baseline_train")
          for k, v in (("epochs", epochs), ("min_epochs", 0))],
        f"experiment.train.freeze_encoder_epochs={min(1, epochs)}",
        *(TINY if args.tiny else []), *args.set,
    ]  # fmt: skip
    config = load_reproduction(PAPER, overrides)
    paper = load_reproduction(PAPER)
    phases.begin("preprocessing + cache (every scan)")
    config.data.labelled()
    config.pretraining_data.unlabelled()
    run_reproduction(config, progress=False, log=phases.log)
    phases.begin("")
    rows = phases.rows
    rows[1]["scans"] = scans
    projected = projection(out / "run", paper, config, rows)
    unit = "GiB (CUDA max allocated)" if device.type == "cuda" else "GiB (process peak RSS so far)"
    print(f"\nPaper-mode smoke on {device} (SYNTHETIC phantoms: times and memory only)\n")
    print(f"| phase | seconds | peak {unit} |\n|---|---|---|")
    for row in rows:
        print(f"| {row['phase']} | {row['seconds']:.1f} | {row['peak_gib']:.2f} |")
    print("\nProjected full paper run (the paper's steps, epochs and runs at the measured rates):\n")
    print("| phase | hours |\n|---|---|")
    for name, value in projected.items():
        print(f"| {name} | {value / 3600:.2f} |")
    total = sum(projected.values())
    print(f"| total | {total / 3600:.2f} |")
    result = {"device": str(device), "scans": scans, "shape": list(shape), "phases": rows,
              "projected_seconds": projected, "projected_total_hours": total / 3600}  # fmt: skip
    (out / "smoke.json").write_text(json.dumps(result, indent=2))
    if not all(math.isfinite(r["seconds"]) for r in rows):
        sys.exit(1)
    return result


if __name__ == "__main__":
    main()
