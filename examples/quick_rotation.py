"""Quick demo: pretrain a small 3D encoder by rotation prediction on synthetic CT phantoms.

Runs on a laptop CPU in about a minute, through the library's :class:`~pretext3d.pretrainer.Pretrainer`
(the loop ``pretext3d pretrain`` uses). The volumes are the built-in SYNTHETIC abdominal CT
phantoms (:func:`pretext3d.data.ct_phantom`, windowed to [-96, 215] HU), not patient data: the
point is to show the library's parts working together and the pretext accuracy rising above
chance, not a medical result.

Rotation is predicted on random 16³ sub-crops of the 32³ volumes rather than on whole volumes:
on whole volumes (or 24³ crops) the body outline and spine give the answer away and the task is
solved outright within a few hundred steps, which teaches little (see ``docs/tasks/rotation.md``).

The run is written to ``runs/quick-rotation/`` (encoder, record, metrics); rerunning resumes
(a finished run just reprints its table).

    python examples/quick_rotation.py [--steps 300] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import pretext3d as p3
from pretext3d.pretrainer import PretrainConfig, Pretrainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--crop", type=int, default=16, help="edge of the random sub-crops (<= 32)")
    parser.add_argument("--output", type=Path, default=Path("runs/quick-rotation"))
    args = parser.parse_args()

    train = p3.data.PhantomImages("ct", 128, 32, seed=args.seed)
    held_out = p3.data.PhantomImages("ct", 64, 32, seed=args.seed + 1)
    task = p3.tasks.Rotation(spatial_dims=3, rotations="taleb10")
    config = PretrainConfig(
        steps=args.steps, batch_size=args.batch, crop=args.crop, optimizer="adam", lr=1e-3,
        schedule="constant", weight_decay=0.0, grad_clip=None, device="cpu", precision="fp32",
        eval_every=25, log_every=25, checkpoint_every=100, seed=args.seed, progress=False,
    )  # fmt: skip
    chance = 1 / task.num_classes
    print("pretext3d quick demo: rotation pretext (10 classes, Taleb et al. 2020) on SYNTHETIC CT phantoms")
    print(
        f"{len(train)} training and {len(held_out)} held-out 32^3 phantom volumes, random {args.crop}^3 "
        f"crops; chance accuracy {chance:.0%}"
    )
    torch.manual_seed(args.seed)  # the encoder's initialisation (the Pretrainer seeds the rest)
    trainer = Pretrainer(
        p3.models.ConvEncoder(3, widths=(8, 16, 32)), task, train, config, args.output / "encoder.pt",
        held_out=held_out, log=print,
    )  # fmt: skip
    trainer.fit()
    rows = trainer.metrics.rows()
    train_rows = {r["step"]: r for r in rows if "loss/rotation" in r}
    held_rows = {r["step"]: r for r in rows if "held_out_accuracy/rotation" in r}
    print(f"{'step':>5} {'loss':>7} {'train acc':>9} {'held-out acc':>12} {'volumes/s':>9}")
    for step, row in sorted(train_rows.items()):
        held = held_rows.get(step, {}).get("held_out_accuracy/rotation", float("nan"))
        print(
            f"{step:5d} {row['loss/rotation']:7.3f} {row['accuracy/rotation']:9.1%} {held:12.1%} "
            f"{row['images_per_s']:9.1f}"
        )
    final = held_rows[max(held_rows)]["held_out_accuracy/rotation"]
    verdict = "above" if final > 2 * chance else "NOT above"
    print(
        f"held-out rotation accuracy {final:.1%}, {verdict} twice chance ({2 * chance:.0%}); "
        "synthetic data, not a medical result"
    )


if __name__ == "__main__":
    main()
