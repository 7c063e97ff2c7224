"""What each pretext task learns on the SYNTHETIC phantoms: shortcut score, pretext accuracy, probe.

For both phantoms (CT: the pancreas reproduction's settings; fundus: the grading one's) and
every task of the reproduction config (``examples/<name>/<mode>.toml``), prints:

* the shortcut score (:func:`pretext3d.diagnostics.shortcut_score`) of the task *without* its
  defences (the options of 0.1: whole-image tiling without normalisation, gap, tile mirroring or
  colour dropping; the 16^3 rotation crop; the exemplar's milder intensity jitter; CPC's
  unnormalised patches) and *with* the configured ones,
  against chance;
* the held-out pretext accuracy after the configured pretraining, against chance;
* a frozen-feature probe (:class:`pretext3d.diagnostics.FeatureProbe`) of the randomly
  initialised encoder and of the pretrained one, on the config's ``probe_images`` labelled
  phantoms of their own seed (:func:`~pretext3d.experiments.reproduce.probe_for`; a validation
  set, no image of the reproduction's splits): fundus, a linear probe of the grade on pooled
  features (accuracy); CT, a linear patch probe of "holds pancreas" on the encoder's feature
  map (patch Dice).

    python benchmarks/pretext_quality.py [--mode quick] [--only fundus] [--probe-images 256]

The figures in docs/tasks/index.md come from ``--mode quick`` on a 2-core CPU (about 6 min).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import pretext3d as p3
from pretext3d.diagnostics import chance_level, shortcut_score
from pretext3d.experiments import Pretraining, load_reproduction, pretrain_encoder
from pretext3d.experiments.reproduce import probe_for
from pretext3d.registry import TASKS
from pretext3d.transforms.affine import ExemplarAugmenter
from pretext3d.transforms.crops import random_crops

EXAMPLES = Path(__file__).parent.parent / "examples"
UNDEFENDED: dict[str, dict[str, Any]] = {  # the options of 0.1 (the augmenter is set below)
    "jigsaw": p3.tasks.NO_DEFENCES,
    "rpl": p3.tasks.NO_DEFENCES,
    "exemplar": {"memory_size": 0},
    "cpc": {"normalize_patches": False},
}


def images_for(pool: Any, count: int, crop: int, d: int) -> torch.Tensor:
    """The first ``count`` pool images, randomly cropped to ``crop`` (0: whole)."""
    x = torch.stack([pool[i] for i in range(count)]).float()
    return random_crops(x, (crop,) * d, 0) if crop and crop < x.shape[-1] else x


def main() -> None:
    """Measure and print a table per phantom."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", default="quick")
    parser.add_argument("--only", choices=("pancreas", "fundus"))
    parser.add_argument("--probe-images", type=int, default=0, help="default: the config's probe_images")
    parser.add_argument("--tasks", nargs="*", default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)
    for name in ("pancreas", "fundus"):
        if args.only and name != args.only:
            continue
        config = load_reproduction(EXAMPLES / name / f"{args.mode}.toml")
        data = config.pretraining_data
        d = data.spatial_dims
        pool = data.unlabelled()
        n = args.probe_images or config.probe_images or (48 if d == 3 else 256)
        probe = probe_for(data, n, config.pretrain.eval_every)
        print(
            f"\n{config.name}: SYNTHETIC phantoms, {args.mode} settings; probe: {probe.metric} on {n} images"
        )
        print(
            "| task | shortcut before (x chance) | shortcut after (x chance) "
            "| held-out pretext acc. (chance) "
            "| probe random | probe pretrained | s |"
        )
        print("|---|---|---|---|---|---|---|")
        for task_name, setting in config.tasks.items():
            if args.tasks and task_name not in args.tasks:
                continue
            start = time.perf_counter()
            crop = setting.crop if setting.crop is not None else config.pretrain.crop
            task = TASKS.get(task_name)(d, **setting.options)
            sample = images_for(pool, 64, crop, d)
            after = shortcut_score(task, sample, batch_size=config.pretrain.batch_size)
            old_crop = 16 if task_name == "rotation" and d == 3 else crop
            old_options = {**setting.options, **UNDEFENDED.get(task_name, {})}
            if task_name == "exemplar":
                old_options["augmenter"] = ExemplarAugmenter(d)
            old = TASKS.get(task_name)(d, **old_options)
            before = shortcut_score(
                old, images_for(pool, 64, old_crop, d), batch_size=config.pretrain.batch_size
            )
            recipe = config.recipe
            train = dataclasses.replace(
                config.pretrain, crop=crop, progress=False, device="cpu", shortcut_check=0
            )
            with tempfile.TemporaryDirectory() as tmp:  # as the reproduction pretrains it
                pretraining = Pretraining(
                    tasks=[p3.TaskSpec(task_name, 1.0, setting.options)], encoder=recipe.encoder,
                    encoder_options=recipe.encoder_options(), data=data, held_out=config.held_out,
                    pretrain=train, output=str(Path(tmp) / "encoder.pt"),
                )  # fmt: skip
                record = pretrain_encoder(pretraining, pool=pool, probe=probe, log=lambda line: None)
            accuracy = record["pretext_accuracy"]
            chance = chance_level(task)
            initial = record["probe"]["initial"][f"probe/{probe.metric}"]
            final = record["probe"]["final"][f"probe/{probe.metric}"]
            print(
                f"| {task_name} | {before.score:.3f} ({before.ratio:.1f}x) "
                f"| {after.score:.3f} ({after.ratio:.1f}x) "
                f"| {accuracy:.3f} ({'-' if chance is None else f'{chance:.3f}'}) "
                f"| {initial:.3f} | {final:.3f} "
                f"| {time.perf_counter() - start:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
