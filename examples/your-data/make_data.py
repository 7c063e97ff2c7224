"""Write small SYNTHETIC data sets in the real formats, to try examples/your-data/ before your own.

    python examples/your-data/make_data.py [--output data]

- ``data/images/``: PNG images of three classes (a bright square, vertical or horizontal
  stripes) listed in ``labels.csv`` (``image,label``; rows with an empty label are unlabelled:
  the pretraining pool), and ``data/images/new/`` to predict;
- ``data/Dataset001_Box/``: an nnU-Net-layout MR-like data set: ``imagesTr/`` (``_0000``
  channel suffix) with ``labelsTr/`` (0 background, 1 box), ``imagesTs/`` unlabelled, and a
  ``dataset.json`` naming the labels; scans of different shapes, 1 x 1 x 2 mm voxels, stored
  left-right flipped (an LAS affine), as scanners often write them.

Your own data go in the same layouts (docs/data.md); the configs beside this script read these.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from pretext3d.data.io import write_nifti, write_png

CLASSES = ["square", "vertical", "horizontal"]


def image(kind: int, rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """Noise with a bright square (0), vertical stripes (1) or horizontal stripes (2)."""
    out = rng.integers(0, 80, (size, size, 3)).astype(np.uint8)
    start = int(rng.integers(4, size // 2))
    if kind == 0:
        out[start : start + size // 3, start : start + size // 3] += 150
    elif kind == 1:
        out[:, start % 4 :: 6] += 150
    else:
        out[start % 4 :: 6] += 150
    return out


def images(root: Path, labelled: int = 60, unlabelled: int = 60, new: int = 6) -> None:
    """``labels.csv`` with ``labelled`` labelled rows and ``unlabelled`` empty ones; ``new/`` to predict."""
    rng = np.random.default_rng(0)
    rows = ["image,label"]
    for i in range(labelled + unlabelled):
        write_png(root / "photos" / f"img{i:03d}.png", image(i % 3, rng))
        rows.append(f"photos/img{i:03d}.png,{CLASSES[i % 3] if i < labelled else ''}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    for i in range(new):
        write_png(root / "new" / f"new{i}.png", image(i % 3, rng))


def scan(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """MR-like noise with a bright box of random size and place (label 1)."""
    volume = rng.normal(300, 40, size=shape).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    edge = [int(rng.integers(n // 4, n // 2)) for n in shape]
    start = [int(rng.integers(1, n - e - 1)) for n, e in zip(shape, edge, strict=True)]
    label[tuple(slice(s, s + e) for s, e in zip(start, edge, strict=True))] = 1
    volume[label == 1] += 250
    return volume, label


def scans(root: Path, labelled: int = 16, unlabelled: int = 24) -> None:
    """An nnU-Net v2 data set: imagesTr/ + labelsTr/, imagesTs/, dataset.json."""
    rng = np.random.default_rng(1)
    affine = np.diag([-1.0, 1.0, 2.0, 1.0])  # LAS: stored left-right flipped
    for i in range(labelled + unlabelled):
        shape = (int(rng.integers(36, 44)), int(rng.integers(36, 44)), int(rng.integers(16, 22)))
        volume, label = scan(rng, shape)
        if i < labelled:
            write_nifti(root / "imagesTr" / f"box_{i:03d}_0000.nii.gz", volume, affine)
            write_nifti(root / "labelsTr" / f"box_{i:03d}.nii.gz", label, affine)
        else:
            write_nifti(root / "imagesTs" / f"box_{i:03d}_0000.nii.gz", volume, affine)
    meta = {"name": "Box (SYNTHETIC)", "channel_names": {"0": "MR"}, "labels": {"background": 0, "box": 1},
            "numTraining": labelled, "file_ending": ".nii.gz"}  # fmt: skip
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("data"))
    args = parser.parse_args()
    images(args.output / "images")
    scans(args.output / "Dataset001_Box")
    print(f"wrote SYNTHETIC example data into {args.output}/images and {args.output}/Dataset001_Box")


if __name__ == "__main__":
    main()
