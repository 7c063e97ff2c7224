"""Your labelled 2D images, for grading or classification: a ``labels.csv`` or one sub-folder per class."""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from pretext3d._checks import check_choice
from pretext3d.data.folders import IMAGE_SUFFIXES, is_junk, list_files
from pretext3d.data.io import read_rgb
from pretext3d.data.preprocess import FundusPreprocessing

__all__ = ["LabelledImageFolder"]


class LabelledImageFolder(Dataset[tuple[Tensor, Tensor]]):
    r"""Labelled PNG/JPEG images, from a table or from class sub-folders.

    Two layouts are read:

    - a table, ``labels.csv`` in ``root`` (or ``root`` is the ``.csv`` file), with the columns
      ``image`` (the file's path relative to the table; the suffix may be left out) and
      ``label`` (a class name, or a number ``0..K-1``). A row with an empty label is an
      unlabelled image (``split="unlabelled"``: a pretraining pool beside the labelled ones);
    - without a table, one sub-folder per class (``root/<class>/**.png``, torchvision's
      ``ImageFolder`` layout).

    The classes are ``classes`` in that order (labels may be their names or their numbers),
    else ``"0"``, ``"1"``, ... when every label is a number, else the names sorted. Grades
    (``ordered=True``) must be numbers or named in order in ``classes``: their order is what the
    quadratic weighted kappa weighs. Nothing is guessed or skipped: a missing file, a label
    that is not a class, an image listed twice, images outside every class sub-folder, or
    fewer than two classes are errors naming the file or row.

    Args:
        root: the folder (or the table).
        split: ``"labelled"``, ``"unlabelled"`` (rows with an empty label; label ``-1``) or
            ``"all"`` (both, the labelled ones first).
        classes: names of the classes ``0, 1, ...`` in order; default from the labels.
        ordered: the classes are grades (see above).
        preprocessing: default :class:`~pretext3d.data.FundusPreprocessing` (resize to 224).
        transform: applied to ``(image, label)``.

    Returns (``__getitem__``):
        ``(image (3, size, size) float32 in [0, 1], label int64)``.

    Examples:
        >>> import numpy as np
        >>> for name in "abcd":
        ...     p3.data.write_png(f"photos/{name}.png", np.full((20, 30, 3), 100, np.uint8))
        >>> _ = open("photos/labels.csv", "w").write("image,label\na.png,cat\nb.png,dog\nc,cat\nd.png,\n")
        >>> photos = LabelledImageFolder("photos", preprocessing=p3.data.FundusPreprocessing(size=32))
        >>> photos.classes, photos.labels, photos.case_ids
        (['cat', 'dog'], [0, 1, 0], ['a.png', 'b.png', 'c.png'])
        >>> image, label = photos[1]
        >>> image.shape, int(label), len(LabelledImageFolder("photos", "unlabelled"))
        (torch.Size([3, 32, 32]), 1, 1)
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "labelled",
        *,
        classes: Sequence[str] | None = None,
        ordered: bool = False,
        preprocessing: FundusPreprocessing | None = None,
        transform: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
    ) -> None:
        check_choice("split", split, ("labelled", "unlabelled", "all"))
        if preprocessing is not None and not isinstance(preprocessing, FundusPreprocessing):
            raise TypeError(f"preprocessing must be a FundusPreprocessing or None, got {preprocessing!r}")
        root = Path(root)
        table = root if root.suffix.lower() == ".csv" else root / "labels.csv"
        if table.is_file():
            self.root = table.parent
            entries = _read_table(table)
        elif root.is_dir():
            self.root = root
            entries = _read_class_folders(root)
        elif root.exists():
            raise ValueError(
                f"labelled image folder {str(root)!r} is a file: give the folder (with a labels.csv or one "
                "sub-folder per class) or the .csv table itself"
            )
        else:
            raise ValueError(f"labelled image folder {str(root)!r} does not exist")
        labelled = [(path, label) for path, label in entries if label]
        if not labelled:
            raise ValueError(f"{str(root)!r} labels no image")
        self.classes, numbers = _classes([label for _, label in labelled], classes, ordered, str(root))
        unlabelled = [path for path, label in entries if not label]
        chosen: list[tuple[Path, int]] = []
        if split != "unlabelled":
            chosen += [(path, n) for (path, _), n in zip(labelled, numbers, strict=True)]
        if split != "labelled":
            chosen += [(path, -1) for path in unlabelled]
        self.files = [path for path, _ in chosen]
        self.labels = [n for _, n in chosen]
        self.preprocessing = preprocessing if preprocessing is not None else FundusPreprocessing()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    @property
    def case_ids(self) -> list[str]:
        """The images' paths relative to the folder (``/``-separated), in order."""
        return [p.relative_to(self.root).as_posix() for p in self.files]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = torch.from_numpy(self.preprocessing(read_rgb(self.files[index])))
        out = image, torch.tensor(self.labels[index], dtype=torch.long)
        return self.transform(*out) if self.transform is not None else out


def _read_table(table: Path) -> list[tuple[Path, str]]:
    """``(image file, label or "")`` per row of a ``labels.csv``."""
    with open(table, newline="", encoding="utf-8-sig") as handle:  # a BOM (Excel's) is fine
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        rows = list(reader)
    if "image" not in columns or "label" not in columns:
        raise ValueError(
            f"{str(table)!r} must have the columns 'image' (a path relative to the table) and 'label' (a "
            f"class name or number; empty: unlabelled), got {columns}"
        )
    if not rows:
        raise ValueError(f"{str(table)!r} lists no images (a header without rows)")
    entries, seen = [], set()
    listings: dict[Path, dict[str, list[Path]]] = {}  # folder -> stem -> its image files, read once
    for line, row in enumerate(rows, start=2):
        name = (row["image"] or "").strip()
        path = table.parent / name
        if Path(name).is_absolute() or not path.resolve().is_relative_to(table.parent.resolve()):
            raise ValueError(
                f"{str(table)!r} row {line}: image {name!r} must be a path relative to the table's folder "
                f"{str(table.parent)!r} and inside it"
            )
        if not path.is_file() and not path.suffix:
            path = _with_image_suffix(path, listings)
        if not name or not path.is_file():
            raise ValueError(f"{str(table)!r} row {line}: no image file {name!r} in {str(table.parent)!r}")
        if path in seen:
            raise ValueError(f"{str(table)!r} row {line}: image {name!r} is listed twice")
        seen.add(path)
        entries.append((path, (row["label"] or "").strip()))
    return entries


def _with_image_suffix(path: Path, listings: dict[Path, dict[str, list[Path]]]) -> Path:
    """``path`` with the image suffix (any case: ``.PNG``, ``.jpg``) of the one file it names, else itself.

    ``listings`` keeps each folder's image files by stem, so that a table lists a folder once.
    """
    if not path.parent.is_dir():
        return path
    if path.parent not in listings:
        by_stem: dict[str, list[Path]] = {}
        for file in path.parent.iterdir():
            if file.suffix.lower() in IMAGE_SUFFIXES:
                by_stem.setdefault(file.stem, []).append(file)
        listings[path.parent] = by_stem
    found = listings[path.parent].get(path.name, [])
    if len(found) > 1:
        raise ValueError(
            f"image {str(path)!r} without a suffix names {len(found)} files "
            f"({sorted(p.name for p in found)}): give the suffix in labels.csv"
        )
    return found[0] if found else path


def _read_class_folders(root: Path) -> list[tuple[Path, str]]:
    """``(image file, class)`` of every image in a class sub-folder of ``root``."""
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not is_junk(p))
    stray = [p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not folders:
        raise ValueError(f"{str(root)!r} holds neither a labels.csv nor class folders (<class>/<image>.png)")
    if stray:
        raise ValueError(
            f"{str(root)!r} holds images outside the class sub-folders ({sorted(stray)[:3]}): move them into "
            "the folder of their class, or list every image in a labels.csv"
        )
    entries = []
    for folder in folders:
        files = list_files(folder, lambda p: p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"class folder {str(folder)!r} holds no .png, .jpg or .jpeg images")
        entries += [(path, folder.name) for path in files]
    return entries


def _classes(
    labels: list[str], given: Sequence[str] | None, ordered: bool, where: str
) -> tuple[list[str], list[int]]:
    """The class names and each label's class number."""
    if given:
        names = [str(n) for n in given]
        if len(set(names)) != len(names):
            raise ValueError(f"classes name a class twice: {names}")
        lookup = {name: i for i, name in enumerate(names)}
        lookup.update({str(i): i for i in range(len(names)) if str(i) not in lookup})
        unknown = sorted({label for label in labels if label not in lookup})
        if unknown:
            raise ValueError(
                f"{where!r} has labels {unknown[:5]} that are neither one of the classes {names} nor a "
                f"number 0..{len(names) - 1}"
            )
        numbers = [lookup[label] for label in labels]
    elif all(label.isdigit() for label in labels):
        numbers = [int(label) for label in labels]
        names = [str(i) for i in range(max(numbers) + 1)]
    elif ordered:
        raise ValueError(
            f"{where!r} names its grades ({sorted(set(labels))[:5]}): their order is not in the names, so "
            "give it with classes=[...] (data.classes in a config), lowest first, or label them 0, 1, ..."
        )
    else:
        names = sorted(set(labels))
        numbers = [names.index(label) for label in labels]
    if len(names) < 2:
        raise ValueError(f"{where!r} holds one class ({names}): classification needs at least two")
    present = sorted(set(numbers))
    if len(present) < 2:
        raise ValueError(
            f"{where!r} labels every image {names[present[0]]!r}: classification needs images of at least "
            f"two classes (of {names})"
        )
    return names, numbers
