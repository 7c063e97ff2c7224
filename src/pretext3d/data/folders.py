"""Datasets over folders of unlabelled scans and fundus images, and the shared loading code."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from pretext3d._checks import check_choice
from pretext3d.data.cache import CaseCache
from pretext3d.data.io import Volume, read_dicom_series, read_rgb, read_volume
from pretext3d.data.preprocess import CTPreprocessing, FundusPreprocessing
from pretext3d.transforms.crops import random_crop

__all__ = ["DicomFolder", "FundusFolder", "UKBiobankName", "VolumeDataset", "VolumeFolder"]

OnError = Literal["raise", "skip"]
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".npy")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


#: the folders label maps lie in (labels/, labelsTr/, labelsTs/ of MSD and nnU-Net datasets)
_LABELS = re.compile(r"^labels(Tr|Ts)?$", re.IGNORECASE)


def is_junk(path: Path) -> bool:
    """MacOS resource forks (``._name``) and other hidden files."""
    return path.name.startswith(".")


def list_files(root: Path, accept: Callable[[Path], bool]) -> list[Path]:
    """Every accepted file under ``root`` (recursively, sorted), hidden files skipped.

    Nothing is skipped silently: a link that points nowhere or a sub-folder that cannot be
    read is an error naming it, since either would quietly shrink the data set. Links are
    followed, each real folder and file once (a link loop or a second link to the same scan
    would repeat scans).
    """

    def refuse(err: OSError) -> None:
        raise ValueError(f"cannot read {err.filename!r} under {str(root)!r}: {err.strerror}") from err

    found: dict[str, Path] = {}  # real path -> the first path naming it
    visited: set[str] = set()
    for folder, dirs, names in os.walk(root, onerror=refuse, followlinks=True):
        visited.add(os.path.realpath(folder))
        # a linked folder is followed once: a link loop (ln -s . loop) or a second link to a
        # folder already walked would list its scans again
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and os.path.realpath(Path(folder) / d) not in visited
        )
        for name in sorted(names):
            path = Path(folder) / name
            if is_junk(path) or not accept(path):
                continue
            if not path.exists():
                raise ValueError(f"{str(path)!r} is a link that points nowhere (to {os.readlink(path)!r})")
            found.setdefault(os.path.realpath(path), path)  # two links to one file: one scan
    return sorted(found.values())


def check_on_error(on_error: str) -> OnError:
    """Validate the ``on_error`` argument."""
    return check_choice("on_error", on_error, ("raise", "skip"))  # type: ignore[return-value]


def labelled_arrays(
    case_id: str,
    image_file: Path,
    label_file: Path,
    preprocessing: CTPreprocessing,
    cache: CaseCache | None,
    *,
    allowed: Collection[int] | None,
    expected: str,
    same_grid: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """A labelled scan's preprocessed ``(image, label)``, from ``cache`` if it holds them (else stored there).

    A label of another shape than its image, off its image's voxel grid (``same_grid``), or
    holding values outside ``allowed`` (the message ends with ``expected``) is an error naming
    the files.
    """
    if cache is not None and cache.has(case_id, label=True):
        image, label = cache.load(case_id, label=True)
        assert label is not None
        return image, label
    volume, seg = read_volume(image_file), read_volume(label_file)
    if seg.array.shape != volume.array.shape:
        raise ValueError(
            f"label {str(label_file)!r} has shape {seg.array.shape}, its image {str(image_file)!r} "
            f"{volume.array.shape}"
        )
    if same_grid and not np.allclose(seg.affine, volume.affine, atol=1e-3 * max(volume.spacing)):
        raise ValueError(
            f"label {str(label_file)!r} and image {str(image_file)!r} differ in geometry (affine, "
            f"spacing {seg.spacing} vs {volume.spacing}): a label must lie on its image's voxel grid"
        )
    values = np.unique(seg.array)
    if allowed is not None and not np.isin(values, list(allowed)).all():
        raise ValueError(f"label {str(label_file)!r} holds values {values.tolist()}, {expected}")
    image, label = preprocessing(volume.array, volume.spacing, seg.array.astype(np.int16))
    assert label is not None
    if cache is not None:
        cache.store(case_id, image, label)
    return image, label


@dataclass
class _Source:
    """One unlabelled scan: a volume file or a DICOM series folder."""

    name: str
    path: Path

    def read(self) -> Volume:
        return read_dicom_series(self.path) if self.path.is_dir() else read_volume(self.path)


class VolumeDataset(Dataset[Tensor]):
    """Unlabelled 3D scans, preprocessed (and cached), optionally randomly cropped.

    Args:
        sources: ``(name, path)`` of each scan: a NIfTI / ``.npy`` file or a DICOM folder.
        preprocessing: a :class:`CTPreprocessing`, or ``None`` to return the raw values
            as float32.
        cache_dir: where to cache preprocessed scans (keyed by the preprocessing).
        patch_size: return a random crop of this size (zero-padded if the scan is
            smaller) instead of the whole scan, for pretraining.
        transform: applied to the returned tensor.

    Returns (``__getitem__``):
        ``(1, X, Y, Z)`` float32 tensor.

    Examples:
        >>> import numpy as np
        >>> np.save("a.npy", np.zeros((40, 40, 20), np.float32))
        >>> # random crops, zero-padded
        >>> scans = VolumeDataset([("case-a", "a.npy")], patch_size=(32, 32, 32))
        >>> scans[0].shape, scans.case_ids
        (torch.Size([1, 32, 32, 32]), ['case-a'])
    """

    def __init__(
        self,
        sources: Sequence[tuple[str, str | os.PathLike[str]]],
        *,
        preprocessing: CTPreprocessing | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        patch_size: Sequence[int] | None = None,
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        if preprocessing is not None and not isinstance(preprocessing, CTPreprocessing):
            raise TypeError(
                f"preprocessing must be a CTPreprocessing (e.g. CTPreprocessing(window=(-96, 215))) or None, "
                f"got {preprocessing!r}"
            )
        self.sources = [_Source(name, Path(path)) for name, path in sources]
        self.preprocessing = preprocessing
        key = preprocessing.key() if preprocessing is not None else "raw"
        self.cache = CaseCache(cache_dir, key) if cache_dir is not None else None
        if patch_size is not None and (len(patch_size) != 3 or min(patch_size) < 1):
            raise ValueError(f"patch_size must be three sizes >= 1, got {patch_size!r}")
        self.patch_size = tuple(patch_size) if patch_size is not None else None
        self.transform = transform

    def __len__(self) -> int:
        return len(self.sources)

    @property
    def case_ids(self) -> list[str]:
        """The scans' names, in order (recorded by pretraining to keep test cases out)."""
        return [s.name for s in self.sources]

    def array(self, index: int) -> np.ndarray:
        """The preprocessed scan ``index`` as an ``(X, Y, Z)`` array (cached if a cache is set)."""
        source = self.sources[index]
        if self.cache is not None and self.cache.has(source.name):
            return self.cache.load(source.name, label=False)[0]
        volume = source.read()
        if self.preprocessing is None:
            image = volume.array.astype(np.float32)
        else:
            try:
                image, _ = self.preprocessing(volume.array, volume.spacing)
            except ValueError as err:  # say which scan
                raise ValueError(f"{str(source.path)!r}: {err}") from err
        if self.cache is not None:
            self.cache.store(source.name, image)
        return image

    def __getitem__(self, index: int) -> Tensor:
        image = self.array(index)
        if self.patch_size is not None:
            image = random_crop(image, self.patch_size)
        out = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
        return self.transform(out) if self.transform is not None else out


class VolumeFolder(VolumeDataset):
    """Every NIfTI (``.nii``, ``.nii.gz``) and ``.npy`` volume under a folder (recursively).

    Hidden files and macOS ``._*`` junk are skipped. Label maps are refused: a folder holding a
    ``labels*`` sub-folder (``labelsTr/`` of an nnU-Net or MSD dataset) is an error that says
    which folder to name instead. Keyword arguments as for
    :class:`VolumeDataset`.

    Examples:
        >>> import numpy as np, os
        >>> os.makedirs("scans/site1")
        >>> np.save("scans/site1/a.npy", np.zeros((16, 16, 16), np.float32))
        >>> p3.data.write_nifti("scans/b.nii.gz", np.zeros((16, 16, 16), np.int16), np.eye(4))
        >>> folder = VolumeFolder("scans", cache_dir="cache")   # preprocessing=None: raw values
        >>> folder.case_ids, folder[0].shape
        (['b.nii.gz', 'site1__a.npy'], torch.Size([1, 16, 16, 16]))
    """

    def __init__(self, root: str | os.PathLike[str], **kwargs: object) -> None:
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"volume folder {str(root)!r} does not exist")
        files = list_files(root, lambda p: p.name.endswith(VOLUME_SUFFIXES))
        if not files:
            raise ValueError(f"no .nii, .nii.gz or .npy files under {str(root)!r}")
        labels = sorted({q for p in files for q in p.relative_to(root).parent.parts if _LABELS.match(q)})
        if labels:
            count = sum(any(_LABELS.match(q) for q in p.relative_to(root).parent.parts) for p in files)
            raise ValueError(
                f"volume folder {str(root)!r} holds label maps ({count} files under {', '.join(labels)}/), "
                "which are not images: a volume-folder pretrains on every scan under it. For an nnU-Net or "
                "MSD dataset point data.path at its unlabelled scans (imagesTs/); its labelled cases are a "
                'kind = "labelled-volume-folder" (pretraining on them too: include_labelled = true)'
            )
        names = [str(p.relative_to(root)).replace(os.sep, "__") for p in files]
        super().__init__(list(zip(names, files, strict=True)), **kwargs)  # type: ignore[arg-type]


class DicomFolder(VolumeDataset):
    """One DICOM series per sub-folder of ``root`` (read with pydicom, in HU).

    Keyword arguments as for :class:`VolumeDataset`.

    Examples:
        >>> import os, pydicom, pydicom.data
        >>> for case in ("patient1", "patient2"):   # one series per sub-folder
        ...     os.makedirs(f"dicom/{case}")
        ...     pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm")).save_as(f"dicom/{case}/1.dcm")
        >>> folder = DicomFolder("dicom")
        >>> folder.case_ids, folder[0].shape
        (['patient1', 'patient2'], torch.Size([1, 128, 128, 1]))
    """

    def __init__(self, root: str | os.PathLike[str], **kwargs: object) -> None:
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"DICOM folder {str(root)!r} does not exist")
        series = sorted(p for p in root.iterdir() if p.is_dir() and not is_junk(p))
        if not series:
            raise ValueError(f"no series sub-folders under {str(root)!r}")
        super().__init__([(p.name, p) for p in series], **kwargs)  # type: ignore[arg-type]


@dataclass(frozen=True)
class UKBiobankName:
    """The parts of a UK Biobank image name ``{eid}_{field}_{instance}_{array}.png``.

    Examples:
        >>> import numpy as np, os
        >>> os.makedirs("ukb")
        >>> p3.data.write_png("ukb/1000017_21015_0_0.png", np.zeros((32, 32, 3), np.uint8))
        >>> FundusFolder("ukb", ukbiobank=True).names
        [UKBiobankName(eid=1000017, field=21015, instance=0, array=0)]
    """

    eid: int
    field: int
    instance: int
    array: int


_UKB = re.compile(r"^(\d+)_(\d+)_(\d+)_(\d+)\.(png|jpe?g)$", re.IGNORECASE)


class FundusFolder(Dataset[Tensor]):
    """Every PNG/JPEG fundus image under a folder (unlabelled).

    Args:
        root: the folder (searched recursively; hidden files skipped).
        preprocessing: applied to each image (default: resize to 224).
        ukbiobank: require UK Biobank names ``{eid}_{field}_{instance}_{array}.png`` and
            parse them into :attr:`names`.
        transform: applied to the returned tensor.

    Returns (``__getitem__``):
        ``(3, size, size)`` float32 in ``[0, 1]``.

    Examples:
        >>> root = p3.data.write_aptos_phantom("data", num_train=3, num_test=0, size=32)   # SYNTHETIC
        >>> photos = FundusFolder(root / "train_images", preprocessing=p3.data.FundusPreprocessing(size=64))
        >>> len(photos), photos[0].shape
        (3, torch.Size([3, 64, 64]))
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        preprocessing: FundusPreprocessing | None = None,
        ukbiobank: bool = False,
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        if preprocessing is not None and not isinstance(preprocessing, FundusPreprocessing):
            raise TypeError(f"preprocessing must be a FundusPreprocessing or None, got {preprocessing!r}")
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"image folder {str(root)!r} does not exist")
        self.root = root
        self.files = list_files(root, lambda p: p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise ValueError(f"no .png, .jpg or .jpeg files under {str(root)!r}")
        self.names: list[UKBiobankName] | None = None
        if ukbiobank:
            self.names = []
            for p in self.files:
                match = _UKB.match(p.name)
                if match is None:
                    raise ValueError(
                        f"{str(p)!r} is not named like a UK Biobank image "
                        "'{eid}_{field}_{instance}_{array}.png'; pass ukbiobank=False"
                    )
                self.names.append(UKBiobankName(*(int(g) for g in match.groups()[:4])))
        self.preprocessing = preprocessing if preprocessing is not None else FundusPreprocessing()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    @property
    def case_ids(self) -> list[str]:
        """The images' paths relative to the folder, in order."""
        return [str(p.relative_to(self.root)) for p in self.files]

    def __getitem__(self, index: int) -> Tensor:
        out = torch.from_numpy(self.preprocessing(read_rgb(self.files[index])))
        return self.transform(out) if self.transform is not None else out
