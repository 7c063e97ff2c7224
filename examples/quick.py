"""``make demo``: both reproductions in quick mode, then both tables and figures.

The pancreas (Figure 3, 3D U-Net) and fundus (Figure 4, DenseNet) data-efficiency curves of
Taleb et al. 2020 for every pretext task against the from-scratch baseline, on the SYNTHETIC
phantoms, in a few minutes on 2 CPU cores (``examples/*/quick.toml``). Rerun to resume.

    python examples/quick.py
"""

from __future__ import annotations

import time
from pathlib import Path

from pretext3d.experiments import load_reproduction, read_runs, run_reproduction, summary_table

EXAMPLES = Path(__file__).parent


def main() -> None:
    start = time.perf_counter()
    configs = [load_reproduction(EXAMPLES / name / "quick.toml") for name in ("pancreas", "fundus")]
    folders = [run_reproduction(config) for config in configs]
    seconds = time.perf_counter() - start
    print(f"\n{'=' * 100}\nBoth quick reproductions, {seconds:.0f} s. SYNTHETIC phantom data: a smoke test")
    print("of the whole protocol on 3 split seeds, not a verdict (see docs/results.md).")
    for config, out in zip(configs, folders, strict=True):
        print(f"\n{config.name}: test {config.recipe.metric}, mean ± sd over split seeds (n)\n")
        print(summary_table(read_runs(out), config.recipe.metric))
        print(f"\nfigure: {out / 'data_efficiency.png'}")
        print(f"summary with the paired differences: {out / 'summary.md'}")


if __name__ == "__main__":
    main()
