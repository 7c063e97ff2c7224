"""Keep the pretrained decoder or not? The default of ``segmentation.load_decoder``, chosen on validation.

Models Genesis's authors fine-tune the whole pretrained encoder-decoder for segmentation; the
library's recipes load the encoder only unless ``load_decoder = true``. This script decides the
default on the SYNTHETIC CT phantoms from validation scores only: on the development block's
calibration seeds (20-22, the seeds the learning rates were chosen on; no test score is read),
the dense tasks' encoders of the development block (``runs/pancreas-demo/encoders``) fine-tune
the same network, a :class:`~pretext3d.models.MultiScaleUNet` over the U-Net encoder, once with
the decoder the task pretrained (``load_decoder = true``) and once with a new one (the same
layout through ``backbone = "unet"``), at the learning rate the calibration chose for the task.
It prints and writes ``runs/pancreas-demo-decoder/decoder.md``: the paired difference of the
best validation Dice (kept minus new) per task and fraction, and the rule's answer, fixed before
the run: keep the decoder by default when the mean paired difference over every run of both
tasks is positive and its 95 % interval excludes zero, else load the encoder only.

    python examples/pancreas/reproduce.py --mode demo     # first: the development block
    python examples/pancreas/decoder.py                    # about 10 min with one CPU thread
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from dataclasses import asdict
from pathlib import Path

import torch
from scipy import stats

from pretext3d.experiments import DataEfficiencyGrid, LabelledCases, SegmentationRecipe, load_reproduction

HERE = Path(__file__).parent
TASKS = ("genesis", "mim")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(HERE / "demo.toml"), help="the development block's config")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = load_reproduction(args.config, args.set)
    development = Path(config.output_dir)
    rates = json.loads((development / "learning_rates.json").read_text())["learning_rates"]
    recipe = config.recipe
    if not isinstance(recipe, SegmentationRecipe):
        raise SystemExit(f"{args.config} is not a segmentation reproduction")
    widths = {"widths": list(recipe.widths)}
    variants = {
        "kept": dataclasses.replace(recipe, load_decoder=True),
        "new": dataclasses.replace(recipe, backbone="unet", backbone_options=widths),
    }
    methods = {
        task: [str(development / "encoders" / f"{task}_p{k}.pt") for k in range(config.pretraining_seeds)]
        for task in TASKS
    }
    experiment = dataclasses.replace(
        config.experiment,
        split_seeds=config.calibration_seeds,
        learning_rates={task: float(rates[task]) for task in TASKS},
        lr_search=(),
    )
    images, labels = config.data.labelled()[:2]
    cases = LabelledCases(images, labels, info=asdict(config.data), synthetic=config.data.synthetic)
    out = Path(f"{str(development).rstrip('/')}-decoder")
    best: dict[str, dict[tuple[str, float, int], float]] = {}
    for name, variant in variants.items():
        rows = DataEfficiencyGrid(variant, cases, methods, experiment, out / name).run(progress=False)
        best[name] = {(r["method"], r["fraction"], r["split_seed"]): float(r["best_val"]) for r in rows}
    lines = [
        "# Keep the pretrained decoder? (SYNTHETIC CT phantoms, validation Dice only)\n",
        f"Calibration seeds {list(config.calibration_seeds)}; best validation {recipe.metric} of a "
        "MultiScaleUNet over the pretrained U-Net encoder, its decoder pretrained (kept) or new.\n",
        "| task | fraction | kept | new | kept - new (mean) |",
        "|---|---|---|---|---|",
    ]
    every = []
    for task in TASKS:
        for fraction in experiment.fractions:
            keys = sorted(k for k in best["kept"] if k[0] == task and k[1] == fraction)
            kept, new = [best["kept"][k] for k in keys], [best["new"][k] for k in keys]
            every += [a - b for a, b in zip(kept, new, strict=True)]
            lines.append(
                f"| {task} | {fraction:g} | {statistics.mean(kept):.3f} | {statistics.mean(new):.3f} | "
                f"{statistics.mean(kept) - statistics.mean(new):+.3f} |"
            )
    mean = statistics.mean(every)
    half = float(stats.t.ppf(0.975, len(every) - 1)) * statistics.stdev(every) / len(every) ** 0.5
    low, high = mean - half, mean + half
    keep = low > 0
    lines += [
        "",
        f"Every run ({len(every)} pairs): kept - new = {mean:+.3f} [{low:+.3f}, {high:+.3f}] (95 %).",
        f"Rule (fixed before the run): keep by default if the interval lies above zero. Answer: "
        f"**load_decoder = {'true' if keep else 'false'}** by default.",
    ]
    text = "\n".join(lines) + "\n"
    (out / "decoder.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
