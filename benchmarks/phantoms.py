"""Seconds per built-in phantom (what large unlabelled pools and realistic-size smoke data cost).

python benchmarks/phantoms.py [--count 3]
"""

from __future__ import annotations

import argparse
import time

from pretext3d.data.phantoms import ct_phantom, fundus_phantom


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=3)
    args = parser.parse_args()
    cells = {
        "CT 96 x 96 x 64": lambda i: ct_phantom(i, (96, 96, 64)),
        "CT 128^3": lambda i: ct_phantom(i, 128),
        "fundus 224 px": lambda i: fundus_phantom(i, 224),
    }
    print("| phantom | seconds each |\n|---|---|")
    for name, draw in cells.items():
        start = time.perf_counter()
        for i in range(args.count):
            draw(i)
        print(f"| {name} | {(time.perf_counter() - start) / args.count:.2f} |")


if __name__ == "__main__":
    main()
