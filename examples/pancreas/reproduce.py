"""Reproduce the pancreas data-efficiency curve (Taleb et al. 2020, Figure 3) in one mode.

Every pretext task and the from-scratch baseline, each pretrained on the unlabelled pool and
fine-tuned on 5-100 % of the labelled cases under the fair protocol
(:mod:`pretext3d.experiments.reproduce`). Modes are the configs beside this script:

- ``quick``: SYNTHETIC CT phantoms, a few minutes on 2 CPU cores (``make demo``);
- ``demo``: SYNTHETIC CT phantoms, built to see an effect: 20 split seeds, 3 pretraining seeds, a
  positive control (about 20 h on 2 CPU cores; workers share the folder);
- ``paper``: the real MSD Task07 data at 128^3 with the full-width U-Net, for a GPU.

Interrupt and rerun: finished encoders and runs are kept. The last line names the results folder.

    python examples/pancreas/reproduce.py --mode quick [--set experiment.split_seeds=[0,1]] [--output DIR]
    python examples/pancreas/reproduce.py --mode demo --verdict   # once, after development
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pretext3d.config import ConfigError
from pretext3d.experiments import held_out_block, load_reproduction, run_reproduction

HERE = Path(__file__).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["quick", "demo", "paper"], default="quick")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    parser.add_argument("--output", help="results folder (default: the config's output_dir)")
    parser.add_argument(
        "--verdict",
        action="store_true",
        help="the held-out block a verdict comes from: every split seed and the pretraining seed + 100, "
        "into <output>-verdict (docs/results.md#how-the-verdict-is-made)",
    )
    args = parser.parse_args()
    overrides = args.set + ([f'output_dir="{args.output}"'] if args.output else [])
    try:
        config = load_reproduction(HERE / f"{args.mode}.toml", overrides)
        run_reproduction(held_out_block(config) if args.verdict else config)
    except (ConfigError, ValueError) as err:
        sys.exit(f"{Path(__file__).name}: {err}")


if __name__ == "__main__":
    main()
