"""APTOS 2019 Blindness Detection (diabetic-retinopathy grades 0-4) and EyePACS-style folders.

``train.csv`` with ``id_code,diagnosis`` and ``train_images/<id_code>.png``; ``test.csv``
with ``id_code`` and ``test_images/``. The EyePACS (Kaggle 2015) layout, ``image,level``
with ``<image>.jpeg``, is read too.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from pretext3d._checks import check_choice
from pretext3d.data.folders import IMAGE_SUFFIXES, OnError, check_on_error
from pretext3d.data.io import read_rgb
from pretext3d.data.preprocess import FundusPreprocessing

__all__ = ["APTOS", "GRADES"]

GRADES = {0: "no DR", 1: "mild", 2: "moderate", 3: "severe", 4: "proliferative DR"}


class APTOS(Dataset[tuple[Tensor, Tensor]]):
    """Graded fundus photographs.

    Args:
        root: the competition folder.
        split: ``"train"`` (``train.csv`` + ``train_images``, labelled) or ``"test"``
            (``test.csv`` + ``test_images``, labels ``-1``).
        preprocessing: default :class:`FundusPreprocessing` (resize to 224, as the paper).
        transform: applied to ``(image, grade)``.
        on_error: ``"raise"`` on a CSV row whose image is missing or whose grade is not
            0-4, or ``"skip"`` it (listed in :attr:`skipped`). An unreadable image raises
            when loaded, naming the file.

    Returns (``__getitem__``):
        ``(image (3, size, size) float32 in [0, 1], grade int64)``.

    Examples:
        >>> root = p3.data.write_aptos_phantom("data", num_train=4, num_test=2, size=32)   # SYNTHETIC
        >>> train = APTOS(root, preprocessing=p3.data.FundusPreprocessing(method="ben_graham", size=64))
        >>> image, grade = train[0]
        >>> image.shape, grade.dtype, len(APTOS(root, "test"))
        (torch.Size([3, 64, 64]), torch.int64, 2)

    References:
        - APTOS 2019 Blindness Detection, Kaggle (Asia Pacific Tele-Ophthalmology Society), 2019.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        *,
        preprocessing: FundusPreprocessing | None = None,
        transform: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
        on_error: OnError = "raise",
    ) -> None:
        root = Path(root)
        check_on_error(on_error)
        check_choice("split", split, ("train", "test"))
        table = root / f"{split}.csv"
        folder = root / f"{split}_images"
        if not table.exists():
            raise ValueError(f"{str(table)!r} does not exist")
        with open(table, newline="", encoding="utf-8-sig") as handle:  # a BOM (Excel's) is fine
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            rows = list(reader)
        if "id_code" in columns:
            id_col, grade_col = "id_code", "diagnosis" if "diagnosis" in columns else None
        elif "image" in columns:
            id_col, grade_col = "image", "level" if "level" in columns else None
        else:
            raise ValueError(
                f"{str(table)!r} must have columns 'id_code,diagnosis' (APTOS) or 'image,level' (EyePACS), "
                f"got {columns}"
            )
        if split == "train" and grade_col is None:
            raise ValueError(f"{str(table)!r} has no grade column ('diagnosis' or 'level')")
        if not rows:
            raise ValueError(f"{str(table)!r} lists no images (a header without rows)")
        # image files by name without suffix; suffixes in any case (.png, .PNG, .jpeg)
        by_stem = (
            {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
            if folder.is_dir()
            else {}
        )
        idents = [(row.get(id_col) or "").strip() for row in rows]
        repeated = sorted({i for i in idents if idents.count(i) > 1})
        if repeated:
            raise ValueError(f"{str(table)!r} lists image ids more than once: {repeated[:5]}")
        self.files: list[Path] = []
        self.grades: list[int] = []
        self.skipped: list[tuple[str, str]] = []
        for line, row in enumerate(rows, start=2):
            ident = (row.get(id_col) or "").strip()
            path = by_stem.get(ident)
            grade = -1
            problem = None
            if path is None:
                problem = (str(folder / f"{ident}.png"), f"image for row {line} of {table.name} is missing")
            elif grade_col is not None:
                try:
                    grade = int(row[grade_col])
                except (TypeError, ValueError):
                    grade = -2
                if grade not in GRADES:
                    problem = (str(table), f"row {line} has grade {row[grade_col]!r}, expected 0-4")
            if problem is not None:
                if on_error == "raise":
                    raise ValueError(f"{problem[0]!r}: {problem[1]}")
                self.skipped.append(problem)
                continue
            assert path is not None
            self.files.append(path)
            self.grades.append(grade)
        self.preprocessing = preprocessing if preprocessing is not None else FundusPreprocessing()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    @property
    def case_ids(self) -> list[str]:
        """The images' ids (file names without suffix), in order."""
        return [p.stem for p in self.files]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = torch.from_numpy(self.preprocessing(read_rgb(self.files[index])))
        out = image, torch.tensor(self.grades[index], dtype=torch.long)
        return self.transform(*out) if self.transform is not None else out

    def label_distribution(self) -> np.ndarray:
        """Fraction of images per grade 0-4."""
        counts = np.bincount([g for g in self.grades if g >= 0], minlength=5)
        fractions: np.ndarray = counts / max(1, counts.sum())
        return fractions
