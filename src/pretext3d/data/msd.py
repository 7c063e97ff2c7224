"""Medical Segmentation Decathlon Task07 (pancreas and pancreatic tumour CT).

Reads the folder as shipped (``Task07_Pancreas/dataset.json``, ``imagesTr/``,
``labelsTr/``, ``imagesTs/``; the JSON's keys as they are, including its spellings
``licence`` and ``relase``; ``./`` paths; macOS ``._*`` files skipped) and the
nnU-Net layout (``imagesTr/pancreas_001_0000.nii.gz`` with ``labelsTr/pancreas_001.nii.gz``).
Labels: 0 background, 1 pancreas, 2 cancer (Simpson et al., "A large annotated medical
image dataset for the development and evaluation of segmentation algorithms", 2019).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from pretext3d._checks import check_choice
from pretext3d.data.cache import CaseCache
from pretext3d.data.folders import OnError, VolumeDataset, check_on_error, is_junk, labelled_arrays
from pretext3d.data.preprocess import CTPreprocessing

__all__ = ["Task07Case", "Task07Pancreas", "task07_cases"]

LABELS = {0: "background", 1: "pancreas", 2: "cancer"}


@dataclass(frozen=True)
class Task07Case:
    """One case: its id, image file and (for training cases) label file.

    Examples:
        >>> root = p3.data.write_task07_phantom("data", num_train=2, num_test=1, size=24)   # SYNTHETIC
        >>> case = task07_cases(root)[0][0]
        >>> case.case_id, case.image.name, case.label.name
        ('pancreas_001', 'pancreas_001.nii.gz', 'pancreas_001.nii.gz')
    """

    case_id: str
    image: Path
    label: Path | None


def _case_id(path: Path) -> str:
    name = path.name.removesuffix(".nii.gz").removesuffix(".nii")
    return name.removesuffix("_0000")


def task07_cases(
    root: str | os.PathLike[str], split: Literal["train", "test"] = "train", on_error: OnError = "raise"
) -> tuple[list[Task07Case], list[tuple[str, str]]]:
    """List the cases of a Task07 folder.

    Args:
        root: ``Task07_Pancreas/`` (with ``dataset.json``) or an nnU-Net raw folder.
        split: ``"train"`` (labelled) or ``"test"`` (``imagesTs``, unlabelled).
        on_error: ``"raise"`` on a missing image or label, or ``"skip"`` the case.

    Returns:
        ``(cases, skipped)``: ``skipped`` lists ``(file, reason)``.

    Examples:
        >>> root = p3.data.write_task07_phantom("data", num_train=2, num_test=1, size=24)   # SYNTHETIC
        >>> cases, skipped = task07_cases(root, "test")
        >>> [c.case_id for c in cases], cases[0].label, skipped   # test cases have no label
        (['pancreas_003'], None, [])
    """
    root = Path(root)
    check_on_error(on_error)
    check_choice("split", split, ("train", "test"))
    if not root.is_dir():
        raise ValueError(f"Task07 folder {str(root)!r} does not exist")
    manifest = root / "dataset.json"
    if manifest.exists():
        try:
            meta = json.loads(manifest.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"cannot parse {str(manifest)!r}: {err}") from err
        key = "training" if split == "train" else "test"
        entries = meta.get(key) if isinstance(meta, dict) else None
        if not isinstance(entries, list):
            raise ValueError(f"{str(manifest)!r} has no list under {key!r}")
        pairs = []
        for n, e in enumerate(entries):
            if split == "train" and not (isinstance(e, dict) and isinstance(e.get("image"), str)
                                         and isinstance(e.get("label"), str)):  # fmt: skip
                raise ValueError(
                    f"{str(manifest)!r}: entry {n} of {key!r} must be an object with 'image' and "
                    f"'label' paths, got {e!r}"
                )
            if split == "test" and not isinstance(e, str):
                raise ValueError(f"{str(manifest)!r}: entry {n} of {key!r} must be a file path, got {e!r}")
            pairs.append((root / e["image"], root / e["label"]) if split == "train" else (root / e, None))
        images = [os.path.normpath(image) for image, _ in pairs]
        repeated = sorted({i for i in images if images.count(i) > 1})
        if repeated:
            raise ValueError(f"{str(manifest)!r} lists {key!r} images more than once: {repeated[:5]}")
    else:
        folder = root / ("imagesTr" if split == "train" else "imagesTs")
        images = sorted(p for p in folder.glob("*_0000.nii*")) if folder.is_dir() else []
        if not images:
            raise ValueError(
                f"{str(root)!r} has neither dataset.json nor nnU-Net images ({folder.name}/*_0000.nii.gz)"
            )
        pairs = [
            (p, root / "labelsTr" / (_case_id(p) + ".nii.gz") if split == "train" else None) for p in images
        ]
    cases, skipped = [], []
    for image, label in pairs:
        image = Path(os.path.normpath(image))
        if is_junk(image):
            continue
        problem = None
        if not image.exists():
            problem = (str(image), "image file is missing")
        elif label is not None and not Path(label).exists():
            problem = (str(label), f"label file for image {image.name} is missing")
        if problem is not None:
            if on_error == "raise":
                raise ValueError(f"{problem[0]!r}: {problem[1]}")
            skipped.append(problem)
            continue
        cases.append(
            Task07Case(_case_id(image), image, None if label is None else Path(os.path.normpath(label)))
        )
    return cases, skipped


class Task07Pancreas(Dataset[tuple[Tensor, Tensor]]):
    """Labelled Task07 training cases, preprocessed and cached.

    Args:
        root: ``Task07_Pancreas/`` or an nnU-Net raw folder.
        preprocessing: the CT pipeline (default :class:`CTPreprocessing`).
        cache_dir: where to cache preprocessed cases (keyed by the preprocessing).
        transform: applied to ``(image, label)``.
        on_error: ``"raise"`` (default) or ``"skip"`` cases whose files are missing; with
            ``"skip"``, :meth:`prepare` also drops cases that fail to load. Skipped files
            and reasons are in :attr:`skipped`.

    Returns (``__getitem__``):
        ``(image (1, X, Y, Z) float32, label (X, Y, Z) int64)``.

    Examples:
        >>> root = p3.data.write_task07_phantom("data", num_train=2, num_test=1, size=24)   # SYNTHETIC
        >>> pipeline = p3.data.CTPreprocessing(resize=(32, 32, 32))
        >>> dataset = Task07Pancreas(root, preprocessing=pipeline, cache_dir="cache")
        >>> image, label = dataset[0]   # resampled, windowed, body-cropped, resized; then read from the cache
        >>> image.shape, label.shape, dataset.case_ids
        (torch.Size([1, 32, 32, 32]), torch.Size([32, 32, 32]), ['pancreas_001', 'pancreas_002'])

    References:
        - Simpson et al., "A large annotated medical image dataset for the development and evaluation of
          segmentation algorithms" (the Medical Segmentation Decathlon), 2019.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        preprocessing: CTPreprocessing | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        transform: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
        on_error: OnError = "raise",
    ) -> None:
        self.on_error = check_on_error(on_error)
        self.cases, self.skipped = task07_cases(root, "train", on_error)
        self.preprocessing = preprocessing if preprocessing is not None else CTPreprocessing()
        self.cache = CaseCache(cache_dir, self.preprocessing.key()) if cache_dir is not None else None
        self.transform = transform

    def __len__(self) -> int:
        return len(self.cases)

    @property
    def case_ids(self) -> list[str]:
        """The cases' ids (``pancreas_001``, ...), in order."""
        return [c.case_id for c in self.cases]

    def arrays(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Preprocessed ``(image, label)`` arrays of case ``index``."""
        case = self.cases[index]
        assert case.label is not None
        return labelled_arrays(
            case.case_id, case.image, case.label, self.preprocessing, self.cache,
            allowed=LABELS, expected="expected 0, 1, 2", same_grid=True,
        )  # fmt: skip

    def prepare(self) -> Task07Pancreas:
        """Preprocess (and cache) every case now; with ``on_error="skip"`` drop the failures."""
        kept = []
        for i, case in enumerate(self.cases):
            try:
                self.arrays(i)
                kept.append(case)
            except ValueError as err:
                if self.on_error == "raise":
                    raise
                self.skipped.append((str(case.image), str(err)))
        self.cases = kept
        return self

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image, label = self.arrays(index)
        out = torch.from_numpy(image.astype(np.float32))[None], torch.from_numpy(label.astype(np.int64))
        return self.transform(*out) if self.transform is not None else out

    @staticmethod
    def unlabelled(
        root: str | os.PathLike[str],
        *,
        include_training: bool = False,
        preprocessing: CTPreprocessing | None = None,
        **kwargs: object,
    ) -> VolumeDataset:
        """The pretraining pool: ``imagesTs`` and, optionally, the training images.

        Keyword arguments go to :class:`~pretext3d.data.folders.VolumeDataset`
        (``cache_dir``, ``patch_size``, ``transform``).
        """
        cases, _ = task07_cases(root, "test")
        if include_training:
            cases += task07_cases(root, "train")[0]
        return VolumeDataset(
            [(c.case_id, c.image) for c in cases],
            preprocessing=preprocessing if preprocessing is not None else CTPreprocessing(),
            **kwargs,  # type: ignore[arg-type]
        )
