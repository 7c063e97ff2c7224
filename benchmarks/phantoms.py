"""Seconds per built-in phantom (what large unlabelled pools and realistic-size smoke data cost).

python benchmarks/phantoms.py [--count 3]

Drawn in memory, and drawn and written as a NIfTI image and label (``.nii.gz``, needs nibabel),
as a script that fills an unlabelled pool would.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pretext3d.data import write_nifti
from pretext3d.data.phantoms import ct_phantom, fundus_phantom


def _written(folder: Path, i: int) -> None:
    case = ct_phantom(i, (96, 96, 64))
    write_nifti(folder / f"case{i}.nii.gz", case.image, case.affine)
    write_nifti(folder / f"case{i}_label.nii.gz", case.label, case.affine)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        cells: dict[str, Callable[[int], object]] = {
            "CT 96 x 96 x 64": lambda i: ct_phantom(i, (96, 96, 64)),
            "CT 96 x 96 x 64, written as .nii.gz": lambda i: _written(Path(folder), i),
            "CT 128^3": lambda i: ct_phantom(i, 128),
            "fundus 224 px": lambda i: fundus_phantom(i, 224),
        }
        print("| phantom | seconds each |\n|---|---|")
        for name, draw in cells.items():
            start = time.perf_counter()
            for i in range(args.count):
                draw(i)
            print(f"| {name} | {(time.perf_counter() - start) / args.count:.4f} |")


if __name__ == "__main__":
    main()
