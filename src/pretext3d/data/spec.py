"""Where a command's images come from: a registered data kind (phantoms, Task07, APTOS, folders, yours).

A :class:`DataSpec` names its kind; the kind (:class:`DataKind`, registered in
:data:`pretext3d.registry.DATA_KINDS`) says how many dimensions and channels its images have,
how to read its labelled cases and its unlabelled pool, and which fine-tuning recipe
(:data:`pretext3d.registry.RECIPES`) its labelled cases take.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from pretext3d._checks import check_int
from pretext3d._random import Seeds
from pretext3d.config import ConfigError, Range, SpatialDims, checked
from pretext3d.data.aptos import APTOS
from pretext3d.data.cache import CaseCache
from pretext3d.data.folders import DicomFolder, FundusFolder, VolumeFolder, labelled_arrays
from pretext3d.data.labelled import LabelledImageFolder
from pretext3d.data.msd import Task07Pancreas
from pretext3d.data.phantoms import PhantomImages, ct_phantom_batch, fundus_phantom_batch
from pretext3d.data.preprocess import CTPreprocessing, FundusPreprocessing
from pretext3d.registry import DATA_KINDS, register_data_kind, registered

__all__ = ["UNLABELLED_PHANTOMS", "DataKind", "DataSpec"]

# Pretraining phantoms are drawn from their own range of case seeds, never the labelled ones.
UNLABELLED_PHANTOMS = 50_000


@checked
@dataclass
class DataSpec:
    """Where the images come from.

    Labelled cases (``pretext3d data-efficiency`` / ``finetune``) and the pretraining pool
    (``pretext3d pretrain``) are disjoint by default, so that no validation or test image
    reaches pretraining: phantoms are drawn from another range of case seeds, Task07
    pretrains on ``imagesTs`` (unlabelled) and APTOS on ``test_images`` (unlabelled).

    Attributes:
        kind: ``"ct-phantom"`` / ``"fundus-phantom"`` (built-in, SYNTHETIC), ``"task07"``
            (an MSD Task07 folder), ``"aptos"`` (an APTOS 2019 folder) or
            ``"labelled-volume-folder"`` (your scans and label maps: ``images/`` and
            ``labels/``, or nnU-Net's ``imagesTr/`` and ``labelsTr/``, paired by file name,
            any label set), ``"labelled-image-folder"`` (your PNG/JPEG images for
            classification: a ``labels.csv`` of ``image,label`` or one sub-folder per class;
            :class:`~pretext3d.data.LabelledImageFolder`) or ``"graded-image-folder"`` (the same
            for ordered grades, scored by quadratic weighted kappa); for pretraining only,
            ``"volume-folder"`` (NIfTI/.npy scans), ``"dicom-folder"`` (one DICOM series per
            sub-folder) or ``"fundus-folder"`` (PNG/JPEG photographs).
        path: the folder, for every kind but the phantoms.
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
        preprocessing: scans only (``task07``, ``volume-folder``, ``dicom-folder``): how they
            are prepared (:class:`~pretext3d.data.CTPreprocessing`). ``modality``: ``"ct"``
            (the paper's pipeline: 1.5 x 1.5 x 2.5 mm, body crop, [-96, 215] HU, z-score,
            resized to ``size``; the default of ``task07`` and ``dicom-folder``), ``"mr"`` (no
            resampling, crop or resize; 0.5-99.5 percentiles, z-score) or ``"none"`` (as
            stored); a ``volume-folder`` must name it. Any field of the preset can be changed:
            ``spacing`` (three mm or ``"keep"``), ``window`` (two HU or ``"none"``),
            ``normalize``, ``crop`` (``"body"``, ``"none"`` or three sizes), ``resize``
            (``true``: to ``size`` on every axis), ``interpolation``. Recorded with the data.
        classes: names of the label values 0, 1, ... of a ``labelled-volume-folder``
            (background first; default its ``dataset.json``'s ``labels``) or of a labelled or
            graded image folder (grades lowest first; default from the labels). The recipes
            score each class by name (``<name>_dice``, ``<name>_recall``).
        channels: images read from PNG/JPEG files (``labelled-image-folder``,
            ``graded-image-folder``, ``fundus-folder``, ``aptos``): ``1`` reads them grey (the
            mean of R, G and B), ``3`` as RGB; ``0`` (the default): the kind's (3 for images).

    Examples:
        >>> spec = DataSpec(kind="ct-phantom", count=6, size=32)   # SYNTHETIC
        >>> images, labels, case_ids = spec.labelled()
        >>> images.shape, spec.spatial_dims, case_ids[0]
        (torch.Size([6, 1, 32, 32, 32]), 3, 'ct-phantom-0')
        >>> spec.unlabelled().case_ids[0]   # the pretraining pool: other cases
        'ct-phantom-50000'
    """

    kind: str = "ct-phantom"
    path: str = ""
    count: int = 64
    size: int = 32
    seed: int = 0
    include_labelled: bool = False
    cache_dir: str = ""
    preprocessing: dict[str, Any] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)
    channels: int = 0

    def __post_init__(self) -> None:
        """Check the values."""
        registered(self.kind, DATA_KINDS)
        check_int("data.count", self.count, 1)
        check_int("data.size", self.size, 1)
        check_int("data.seed", self.seed, 0)
        scans = ", ".join(n for n in DATA_KINDS.names() if DATA_KINDS.get(n).caches)
        for name in ("cache_dir", "preprocessing"):
            if getattr(self, name) and not self.info.caches:
                raise ValueError(
                    f"data.{name} applies to CT scans and other resampled scans ({scans}), not to "
                    f"data.kind = {self.kind!r}; remove it"
                )
        if self.info.caches:
            self.volume_preprocessing()  # the table checked before any scan is read
        if isinstance(self.channels, bool) or self.channels not in (0, 1, 3):
            raise ValueError(
                f"data.channels must be 0 (the kind's), 1 (grey) or 3 (RGB), got {self.channels!r}"
            )
        if self.channels and self.kind not in IMAGE_FILES:
            raise ValueError(
                f"data.channels applies to images read from files ({', '.join(IMAGE_FILES)}), not to "
                f"data.kind = {self.kind!r}; remove it"
            )
        if self.classes and self.info.classes is None:
            named = ", ".join(n for n in DATA_KINDS.names() if DATA_KINDS.get(n).classes is not None)
            raise ValueError(f"data.classes names the labels of {named}, not of data.kind = {self.kind!r}")

    def class_names(self) -> list[str]:
        """The names of the label values (``classes``, else what the data name); ``[]`` if none."""
        if self.classes or self.info.classes is None or not self.path:
            return list(self.classes)
        return self.info.classes(self)

    def volume_preprocessing(self) -> CTPreprocessing:
        """The scans' pipeline from :attr:`preprocessing` (see there), for the volume kinds.

        Examples:
            >>> spec = DataSpec(kind="volume-folder", path="scans", size=64,
            ...                 preprocessing={"modality": "mr", "spacing": [1.0, 1.0, 1.0]})
            >>> prep = spec.volume_preprocessing()
            >>> prep.spacing, prep.normalize, prep.resize
            ((1.0, 1.0, 1.0), 'percentile', None)
        """
        options = dict(self.preprocessing)
        modality = options.pop("modality", None)
        if modality is None:
            if self.kind in ("volume-folder", "labelled-volume-folder"):
                raise ConfigError(
                    f'data.preprocessing.modality must be given for a {self.kind}: "ct" (window '
                    '[-96, 215] HU, 1.5 x 1.5 x 2.5 mm, body crop, resized to data.size), "mr" '
                    '(percentiles and z-score, no resampling) or "none" (as stored)'
                )
            modality = "ct"
        resize = options.pop("resize", modality == "ct")
        fields = ("spacing", "window", "normalize", "crop", "interpolation")
        for key, value in options.items():
            if key not in fields:
                close = difflib.get_close_matches(key, [*fields, "modality", "resize"], n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(
                    f"unknown key {key!r} in data.preprocessing{hint} (modality, resize, {', '.join(fields)})"
                )
            if value in ("keep", "none"):  # TOML has no None
                options[key] = None
            elif isinstance(value, list):
                options[key] = tuple(value)
        if not isinstance(resize, bool):
            raise ConfigError(f"data.preprocessing.resize must be true or false, got {resize!r}")
        try:
            return CTPreprocessing.preset(
                modality, resize=(self.size,) * 3 if resize else None, dtype="float32", **options
            )
        except (TypeError, ValueError) as err:
            raise ConfigError(f"data.preprocessing: {err}") from err

    @property
    def info(self) -> DataKind:
        """The registered :class:`DataKind` of ``kind``."""
        kind: DataKind = DATA_KINDS.get(self.kind)
        return kind

    @property
    def spatial_dims(self) -> int:
        """The kind's dimension (3 for CT, 2 for fundus images)."""
        return self.info.spatial_dims

    @property
    def in_channels(self) -> int:
        """The images' channels: :attr:`channels` if set, else the kind's (1 for CT, 3 (RGB) for images)."""
        return self.channels or self.info.in_channels

    def settings(self) -> dict[str, Any]:
        """The fields as a dict for records, ``channels`` only when set (folders made before it continue).

        Examples:
            >>> grey = DataSpec(kind="aptos", path="aptos", channels=1)
            >>> "channels" in DataSpec().settings(), grey.settings()["channels"], grey.in_channels
            (False, 1, 1)
        """
        values = asdict(self)
        if not self.channels:
            del values["channels"]
        return values

    @property
    def synthetic(self) -> bool:
        """Whether these are built-in phantoms (SYNTHETIC data)."""
        return self.info.synthetic

    @property
    def has_labels(self) -> bool:
        """Whether the kind has labelled cases (else it serves pretraining only)."""
        return self.info.labelled is not None

    @property
    def recipe(self) -> str:
        """The registered recipe that fine-tunes the kind's labelled cases."""
        return self.info.recipe

    def labelled(self) -> tuple[Tensor, Tensor, list[str]]:
        """All labelled cases in memory: ``(images, labels, case ids)``."""
        if self.info.labelled is None:
            raise ConfigError(f"data.kind = {self.kind!r} holds unlabelled images: use it to pretrain only")
        return self.info.labelled(self)

    def unlabelled(self) -> Dataset[Tensor]:
        """The pretraining pool as a streaming data set (items ``(C, *spatial)``), with ``case_ids``.

        Nothing is loaded until an item is read: phantoms are drawn per item, scans are read
        (and preprocessed) per item. See :attr:`include_labelled` for what the pool holds.
        """
        return self.info.unlabelled(self)


@checked
@dataclass(frozen=True)
class DataKind:
    """What a ``data.kind`` is: its images' shape, how to read them, which recipe fine-tunes them.

    Register your own with :func:`pretext3d.registry.register_data_kind` and name it in a config
    (``data = { kind = "my-scans", path = "..." }``) like a built-in one.

    Attributes:
        spatial_dims: 2 or 3.
        in_channels: channels of its images.
        unlabelled: ``unlabelled(spec) -> Dataset`` of ``(C, *spatial)`` images (with ``case_ids``
            if it can: the runner matches them against validation and test cases).
        labelled: ``labelled(spec) -> (images, labels, case_ids)`` of all labelled cases, or
            ``None`` for a pool of unlabelled images.
        recipe: the registered recipe (:data:`~pretext3d.registry.RECIPES`) that fine-tunes
            encoders of such images (``"segmentation"``, ``"grading"``, or yours; a pool of
            unlabelled images names the recipe its encoders are meant for: pretraining builds
            that recipe's architecture); ``""``: none.
        synthetic: built-in phantoms (every figure made on them says so).
        caches: ``cache_dir`` applies (resampled scans).
        classes: ``classes(spec) -> names`` of the label values as the data name them
            (``data.classes`` overrides them); ``None``: the kind's classes are not named.

    Examples:
        >>> kind = DataKind(3, 1, unlabelled=lambda spec: p3.data.PhantomImages("ct", spec.count, spec.size))
        >>> _ = p3.registry.register_data_kind("my-ct", kind)
        >>> DataSpec(kind="my-ct", count=2, size=8).unlabelled()[0].shape
        torch.Size([1, 8, 8, 8])
    """

    spatial_dims: SpatialDims
    in_channels: Annotated[int, Range(1)]
    unlabelled: Callable[[DataSpec], Dataset[Tensor]]
    labelled: Callable[[DataSpec], tuple[Tensor, Tensor, list[str]]] | None = None
    recipe: str = ""
    synthetic: bool = False
    caches: bool = False
    classes: Callable[[DataSpec], list[str]] | None = None


def _phantom_labelled(spec: DataSpec) -> tuple[Tensor, Tensor, list[str]]:
    start = Seeds.phantom_case(spec.seed, 0, 0)
    ids = [f"{spec.kind}-{start + i}" for i in range(spec.count)]
    draw = ct_phantom_batch if spec.spatial_dims == 3 else fundus_phantom_batch
    return (*draw(spec.count, spec.size, seed=spec.seed, first=0), ids)


def _phantom_pool(spec: DataSpec) -> Dataset[Tensor]:
    first = 0 if spec.include_labelled else UNLABELLED_PHANTOMS
    return PhantomImages(spec.kind.split("-")[0], spec.count, spec.size, seed=spec.seed, first=first)


def _ct(spec: DataSpec) -> dict[str, Any]:
    return {"preprocessing": spec.volume_preprocessing(), "cache_dir": spec.cache_dir or None}


def _folder(spec: DataSpec) -> str:
    if not spec.path:
        raise ConfigError(f"data.path must name the {spec.kind} folder")
    return spec.path


_IMAGE_FOLDERS = (("images", "labels"), ("imagesTr", "labelsTr"))
#: the kinds that read images from PNG/JPEG files (data.channels applies to them)
IMAGE_FILES = ("labelled-image-folder", "graded-image-folder", "fundus-folder", "aptos")
#: the file names of scans a labelled volume folder pairs (and ``pretext3d predict`` reads)
SCAN_FILE = re.compile(r"(\.nii\.gz|\.nii|\.npy)$", re.IGNORECASE)


def case_stem(name: str) -> str:
    """A scan's case id: its file name without the suffix and nnU-Net's channel suffix ``_0000``.

    Examples:
        >>> case_stem("liver_003_0000.nii.gz"), case_stem("case1.NPY")
        ('liver_003', 'case1')
    """
    stem = SCAN_FILE.sub("", name)
    return stem[:-5] if stem.endswith("_0000") else stem


def _pairs(spec: DataSpec) -> list[tuple[str, Path, Path]]:
    """``(case id, image, label)`` of a labelled folder, paired by name (nnU-Net's ``_0000`` dropped)."""
    root = Path(_folder(spec))
    folders = next(((root / a, root / b) for a, b in _IMAGE_FOLDERS if (root / a).is_dir()), None)
    if folders is None:
        raise ConfigError(
            f"data.path {str(root)!r} holds neither images/ + labels/ nor imagesTr/ + labelsTr/"
        )
    images, labels = folders
    found = {}
    for image in sorted(images.iterdir()):
        if not SCAN_FILE.search(image.name):
            continue
        channel = re.search(r"_(?!0000)\d{4}(\.nii\.gz|\.nii|\.npy)$", image.name)
        if channel and (images / (image.name[: channel.start()] + "_0000" + channel.group(1))).exists():
            raise ConfigError(
                f"{str(image)!r} is a second image channel (nnU-Net's _0001, ...): multi-channel scans are "
                "not supported; keep one channel (_0000) per case in the folder"
            )
        stem = case_stem(image.name)
        candidates = [labels / (stem + ext) for ext in (".nii.gz", ".nii", ".npy")]
        label = next((c for c in candidates if c.exists()), None)
        if label is None:
            raise ConfigError(
                f"image {str(image)!r} has no label map {stem}.nii.gz (.nii, .npy) in {str(labels)!r}"
            )
        found[stem] = (image, label)
    if not found:
        raise ConfigError(f"no scans (.nii.gz, .nii, .npy) in {str(images)!r}")
    return [(stem, image, label) for stem, (image, label) in found.items()]


def _volume_classes(spec: DataSpec) -> list[str]:
    """A labelled volume folder's class names from its ``dataset.json`` (MSD/nnU-Net v1 or v2), if any."""
    meta = Path(spec.path) / "dataset.json"
    if not meta.exists():
        return []
    expected = (
        'its "labels" must map label values to names (MSD, nnU-Net v1: {"0": "background", ...}) or names '
        'to values (nnU-Net v2: {"background": 0, ...}); or give data.classes'
    )
    try:
        labels = json.loads(meta.read_text(encoding="utf-8-sig")).get("labels", {})
    except (ValueError, AttributeError) as err:  # not JSON, or not a JSON object
        raise ConfigError(f"{str(meta)!r} is not a readable dataset.json ({err}): {expected}") from err
    if not isinstance(labels, dict):
        raise ConfigError(f'{str(meta)!r}: "labels" is a {type(labels).__name__}; {expected}')
    try:
        if all(str(k).isdigit() for k in labels):
            return [str(labels[k]) for k in sorted(labels, key=int)]
        if all(isinstance(v, int) and not isinstance(v, bool) for v in labels.values()):  # nnU-Net v2
            return [str(k) for k, _ in sorted(labels.items(), key=lambda kv: int(kv[1]))]
    except (TypeError, ValueError):
        pass
    raise ConfigError(
        f"{str(meta)!r}: labels {labels} are not one value per class (nnU-Net's region labels such as "
        f"[1, 2] are not supported); {expected}"
    )


def _labelled_volumes(spec: DataSpec) -> tuple[Tensor, Tensor, list[str]]:
    prep = spec.volume_preprocessing()
    classes = spec.class_names()
    cache = CaseCache(spec.cache_dir, prep.key()) if spec.cache_dir else None
    expected = f"but the classes name {len(classes)} ({classes})"
    images, labels, ids = [], [], []
    for case, image_file, label_file in _pairs(spec):
        geometry = ".npy" not in (image_file.suffix, label_file.suffix)  # a bare array has none to compare
        image, label = labelled_arrays(
            case, image_file, label_file, prep, cache,
            allowed=range(len(classes)) if classes else None, expected=expected, same_grid=geometry,
        )  # fmt: skip
        images.append(torch.from_numpy(image.astype(np.float32))[None])
        labels.append(torch.from_numpy(label.astype(np.int64)))
        ids.append(case)
    shapes = sorted({tuple(i.shape[1:]) for i in images})
    if len(shapes) > 1:
        raise ConfigError(
            f"the labelled scans have {len(shapes)} shapes after preprocessing ({shapes[:3]}...): labelled "
            "cases are held in one tensor; set data.preprocessing.resize = true (to data.size) or "
            "crop = [x, y, z]"
        )
    return torch.stack(images), torch.stack(labels), ids


def _labelled_pool(spec: DataSpec) -> Dataset[Tensor]:
    """A labelled folder's scans as a pool: only transductively (they are the validation/test cases)."""
    if not spec.include_labelled:
        raise ConfigError(
            "a labelled-volume-folder's scans are the labelled cases: pretrain on other scans "
            '(data = { kind = "volume-folder", ... } in pretext3d pretrain; pretraining_data in a '
            "reproduction), or set include_labelled = true for the transductive setting"
        )
    images, _, ids = _labelled_volumes(spec)
    return _Stacked(images, ids)


class _Stacked(Dataset[Tensor]):
    """Images held in one tensor, with their ``case_ids``."""

    def __init__(self, images: Tensor, ids: list[str]) -> None:
        self.images, self.case_ids = images, ids

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Tensor:
        return self.images[index]


def _fundus(spec: DataSpec) -> FundusPreprocessing:
    return FundusPreprocessing("resize", spec.size, channels=1 if spec.channels == 1 else 3)


def _image_folder(spec: DataSpec, split: str = "labelled") -> LabelledImageFolder:
    return LabelledImageFolder(
        _folder(spec), split, classes=spec.classes or None, ordered=spec.recipe == "grading",
        preprocessing=_fundus(spec),
    )  # fmt: skip


def _labelled_images(spec: DataSpec) -> tuple[Tensor, Tensor, list[str]]:
    images = _image_folder(spec)
    items = [images[i] for i in range(len(images))]
    return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items]), images.case_ids


def _image_classes(spec: DataSpec) -> list[str]:
    return _image_folder(spec).classes


def _image_pool(spec: DataSpec) -> Dataset[Tensor]:
    """The images a labelled image folder leaves unlabelled (and the labelled ones transductively)."""
    pool = _Images(_image_folder(spec, "all" if spec.include_labelled else "unlabelled"))
    if not len(pool):
        raise ConfigError(
            f"{spec.path!r} leaves no image unlabelled (rows of labels.csv with an empty label): pretrain "
            'on other images (data = { kind = "fundus-folder", ... } in pretext3d pretrain, '
            "pretraining_data in a reproduction: any PNG/JPEG), or set include_labelled = true for the "
            "transductive setting"
        )
    return pool


def _task07_labelled(spec: DataSpec) -> tuple[Tensor, Tensor, list[str]]:
    task07 = Task07Pancreas(_folder(spec), **_ct(spec))
    cases = [task07[i] for i in range(len(task07))]
    return torch.stack([c[0] for c in cases]), torch.stack([c[1] for c in cases]), task07.case_ids


def _aptos_labelled(spec: DataSpec) -> tuple[Tensor, Tensor, list[str]]:
    aptos = APTOS(_folder(spec), preprocessing=_fundus(spec))
    items = [aptos[i] for i in range(len(aptos))]
    return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items]), aptos.case_ids


def _aptos_pool(spec: DataSpec) -> Dataset[Tensor]:
    prep = _fundus(spec)
    splits = ("test", "train") if spec.include_labelled else ("test",)
    parts = [_Images(APTOS(_folder(spec), split, preprocessing=prep)) for split in splits]
    if not sum(len(p) for p in parts):
        raise ConfigError(f"no unlabelled images in {spec.path!r} (test.csv lists none)")
    return _Images.concat(parts)


class _Images(Dataset[Tensor]):
    """The images of a labelled data set (its items' first element), keeping ``case_ids``."""

    def __init__(self, data: APTOS | LabelledImageFolder) -> None:
        self.parts: list[APTOS | LabelledImageFolder] = [data]

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


for _name, _kind in {
    "ct-phantom": DataKind(3, 1, _phantom_pool, _phantom_labelled, "segmentation", synthetic=True),
    "fundus-phantom": DataKind(2, 3, _phantom_pool, _phantom_labelled, "grading", synthetic=True),
    "task07": DataKind(
        3, 1, lambda spec: Task07Pancreas.unlabelled(_folder(spec), include_training=spec.include_labelled,
                                                    **_ct(spec)),
        _task07_labelled, "segmentation", caches=True,
    ),
    "aptos": DataKind(2, 3, _aptos_pool, _aptos_labelled, "grading"),
    "labelled-volume-folder": DataKind(
        3, 1, _labelled_pool, _labelled_volumes, "segmentation", caches=True,
        classes=_volume_classes,
    ),
    "labelled-image-folder": DataKind(
        2, 3, _image_pool, _labelled_images, "classification", classes=_image_classes
    ),
    "graded-image-folder": DataKind(2, 3, _image_pool, _labelled_images, "grading", classes=_image_classes),
    "volume-folder": DataKind(
        3, 1, lambda spec: VolumeFolder(_folder(spec), **_ct(spec)), recipe="segmentation", caches=True
    ),
    "dicom-folder": DataKind(
        3, 1, lambda spec: DicomFolder(_folder(spec), **_ct(spec)), recipe="segmentation", caches=True
    ),
    "fundus-folder": DataKind(2, 3, lambda spec: FundusFolder(_folder(spec), preprocessing=_fundus(spec)),
                              recipe="grading"),
}.items():  # fmt: skip
    register_data_kind(_name, _kind)
