"""Where a command's images come from: the built-in phantoms, a Task07 folder or an APTOS folder."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.data import Dataset

from pretext3d._checks import check_int
from pretext3d.config import ConfigError
from pretext3d.data.aptos import APTOS
from pretext3d.data.folders import DicomFolder, FundusFolder, VolumeFolder
from pretext3d.data.msd import Task07Pancreas
from pretext3d.data.phantoms import PhantomImages, ct_phantom_batch, fundus_phantom_batch
from pretext3d.data.preprocess import CTPreprocessing, FundusPreprocessing

__all__ = ["UNLABELLED_PHANTOMS", "DataSpec"]

# Pretraining phantoms are drawn from their own range of case seeds, never the labelled ones.
UNLABELLED_PHANTOMS = 50_000


@dataclass
class DataSpec:
    """Where the images come from.

    Labelled cases (``pretext3d data-efficiency`` / ``finetune``) and the pretraining pool
    (``pretext3d pretrain``) are disjoint by default, so that no validation or test image
    reaches pretraining: phantoms are drawn from another range of case seeds, Task07
    pretrains on ``imagesTs`` (unlabelled) and APTOS on ``test_images`` (unlabelled).

    Attributes:
        kind: ``"ct-phantom"`` / ``"fundus-phantom"`` (built-in, SYNTHETIC), ``"task07"``
            (an MSD Task07 folder) or ``"aptos"`` (an APTOS 2019 folder); for pretraining
            only, ``"volume-folder"`` (NIfTI/.npy scans), ``"dicom-folder"`` (one DICOM
            series per sub-folder) or ``"fundus-folder"`` (PNG/JPEG photographs).
        path: the folder, for ``task07`` and ``aptos``.
        count: number of phantoms to draw (labelled cases, or pretraining images).
        size: edge of the images (phantoms are drawn at it; real data are resized to it).
        seed: phantom seed: case ``i`` is phantom ``seed * 100003 + i`` (labelled) or
            ``seed * 100003 + 50000 + i`` (pretraining pool).
        include_labelled: pretraining only: pretrain on the labelled cases too (phantoms:
            exactly the labelled cases; Task07: ``imagesTr`` as well; APTOS: ``train_images``
            as well). The paper's transductive setting; recorded, and the data-efficiency
            runner refuses such an encoder unless ``experiment.transductive = true``.
        cache_dir: CT scans only (``task07``, ``volume-folder``, ``dicom-folder``): keep each
            preprocessed scan here (keyed by the preprocessing) and read it from there
            afterwards. Without it every read resamples the scan again (seconds per scan),
            which starves pretraining on real scans; ``""``: no cache.

    Examples:
        >>> spec = DataSpec(kind="ct-phantom", count=6, size=32)   # SYNTHETIC
        >>> images, labels, case_ids = spec.labelled()
        >>> images.shape, spec.spatial_dims, case_ids[0]
        (torch.Size([6, 1, 32, 32, 32]), 3, 'ct-phantom-0')
        >>> spec.unlabelled().case_ids[0]   # the pretraining pool: other cases
        'ct-phantom-50000'
    """

    kind: Literal[
        "ct-phantom", "fundus-phantom", "task07", "aptos", "volume-folder", "dicom-folder", "fundus-folder"
    ] = "ct-phantom"
    path: str = ""
    count: int = 64
    size: int = 32
    seed: int = 0
    include_labelled: bool = False
    cache_dir: str = ""

    def __post_init__(self) -> None:
        """Check the values."""
        check_int("data.count", self.count, 1)
        check_int("data.size", self.size, 1)
        check_int("data.seed", self.seed, 0)
        if self.cache_dir and self.kind not in ("task07", "volume-folder", "dicom-folder"):
            raise ValueError(
                f"data.cache_dir applies to CT scans (task07, volume-folder, dicom-folder), not to "
                f"data.kind = {self.kind!r}; remove it"
            )

    def _cache(self) -> str | None:
        return self.cache_dir or None

    @property
    def spatial_dims(self) -> int:
        """3 for CT, 2 for fundus images."""
        return 3 if self.kind in ("ct-phantom", "task07", "volume-folder", "dicom-folder") else 2

    @property
    def in_channels(self) -> int:
        """1 for CT, 3 (RGB) for fundus images."""
        return 1 if self.spatial_dims == 3 else 3

    @property
    def synthetic(self) -> bool:
        """Whether these are the built-in phantoms."""
        return self.kind.endswith("phantom")

    def _phantoms(self, first: int) -> tuple[Tensor, Tensor, list[str]]:
        start = self.seed * 100_003 + first
        ids = [f"{self.kind}-{start + i}" for i in range(self.count)]
        if self.kind == "ct-phantom":
            return (*ct_phantom_batch(self.count, self.size, seed=self.seed, first=first), ids)
        return (*fundus_phantom_batch(self.count, self.size, seed=self.seed, first=first), ids)

    def _folder(self) -> str:
        if not self.path:
            raise ConfigError(f"data.path must name the {self.kind} folder")
        return self.path

    def _ct_preprocessing(self) -> CTPreprocessing:
        return CTPreprocessing(resize=(self.size,) * 3, dtype="float32")

    def labelled(self) -> tuple[Tensor, Tensor, list[str]]:
        """All labelled cases in memory: ``(images, labels, case ids)``."""
        if self.kind.endswith("-folder"):
            raise ConfigError(f"data.kind = {self.kind!r} holds unlabelled images: use it to pretrain only")
        if self.synthetic:
            return self._phantoms(0)
        if self.kind == "task07":
            task07 = Task07Pancreas(
                self._folder(), preprocessing=self._ct_preprocessing(), cache_dir=self._cache()
            )
            cases = [task07[i] for i in range(len(task07))]
            return torch.stack([c[0] for c in cases]), torch.stack([c[1] for c in cases]), task07.case_ids
        aptos = APTOS(self._folder(), preprocessing=FundusPreprocessing("resize", self.size))
        items = [aptos[i] for i in range(len(aptos))]
        return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items]), aptos.case_ids

    def unlabelled(self) -> Dataset[Tensor]:
        """The pretraining pool as a streaming data set (items ``(C, *spatial)``), with ``case_ids``.

        Nothing is loaded until an item is read: phantoms are drawn per item, scans are read
        (and preprocessed) per item. See :attr:`include_labelled` for what the pool holds.
        """
        if self.synthetic:
            first = 0 if self.include_labelled else UNLABELLED_PHANTOMS
            return PhantomImages(self.kind.split("-")[0], self.count, self.size, seed=self.seed, first=first)
        ct: dict[str, Any] = {"preprocessing": self._ct_preprocessing(), "cache_dir": self._cache()}
        if self.kind == "task07":
            return Task07Pancreas.unlabelled(self._folder(), include_training=self.include_labelled, **ct)
        if self.kind == "volume-folder":
            return VolumeFolder(self._folder(), **ct)
        if self.kind == "dicom-folder":
            return DicomFolder(self._folder(), **ct)
        prep = FundusPreprocessing("resize", self.size)
        if self.kind == "fundus-folder":
            return FundusFolder(self._folder(), preprocessing=prep)
        splits = ("test", "train") if self.include_labelled else ("test",)
        parts = [_Images(APTOS(self._folder(), split, preprocessing=prep)) for split in splits]
        if not sum(len(p) for p in parts):
            raise ConfigError(f"no unlabelled images in {self.path!r} (test.csv lists none)")
        return _Images.concat(parts)


class _Images(Dataset[Tensor]):
    """The images of a labelled data set (its items' first element), keeping ``case_ids``."""

    def __init__(self, data: APTOS) -> None:
        self.parts: list[APTOS] = [data]

    @classmethod
    def concat(cls, parts: list[_Images]) -> _Images:
        out = cls.__new__(cls)
        out.parts = [p for part in parts for p in part.parts]
        return out

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    @property
    def case_ids(self) -> list[str]:
        return [c for p in self.parts for c in p.case_ids]

    def __getitem__(self, index: int) -> Tensor:
        for part in self.parts:
            if index < len(part):
                return part[index][0]
            index -= len(part)
        raise IndexError(index)
