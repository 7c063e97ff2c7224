"""Readers and writers for the formats the paper's data ship in.

NIfTI (nibabel), DICOM series (pydicom) and PNG/JPEG (pillow) are optional extras,
imported only when a function here is called. Every read failure is re-raised as a
``ValueError`` that names the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pretext3d._atomic import atomic_path
from pretext3d.data._optional import require

__all__ = ["Volume", "read_dicom_series", "read_nifti", "read_rgb", "read_volume", "write_nifti", "write_png"]


@dataclass
class Volume:
    """A 3D array with its geometry.

    Attributes:
        array: ``(X, Y, Z)`` voxel values.
        affine: ``4 x 4`` voxel-to-world (mm) matrix.
        spacing: voxel size in mm per array axis.
    """

    array: np.ndarray
    affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm per array axis (norms of the affine's columns)."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))


def read_nifti(path: str | Path, *, canonical: bool = True) -> Volume:
    """Read a ``.nii``/``.nii.gz`` file.

    Args:
        path: the file.
        canonical: reorient to the closest canonical orientation, RAS+ (array axis 0
            runs to the patient's right, 1 anterior, 2 superior), without resampling.

    Raises:
        ValueError: the file is missing, truncated, corrupt or not 3D; the message names it.
    """
    nib = require("nibabel")
    path = Path(path)
    try:
        image = nib.load(str(path))
        if canonical:
            image = nib.as_closest_canonical(image)
        array = np.asanyarray(image.dataobj)
    except Exception as err:  # nibabel raises many types for broken files
        raise ValueError(f"cannot read NIfTI file {str(path)!r}: {err}") from err
    array = np.squeeze(array, axis=tuple(range(3, array.ndim))) if array.ndim > 3 else array
    if array.ndim != 3:
        raise ValueError(f"NIfTI file {str(path)!r} holds a {array.ndim}-D image, expected 3-D")
    return Volume(array, np.asarray(image.affine, dtype=np.float64))


def write_nifti(path: str | Path, array: np.ndarray, affine: np.ndarray) -> None:
    """Write a 3D array as NIfTI (gzip-compressed for ``.nii.gz``), atomically.

    The file is written under a temporary name in the same folder and renamed, so an
    interrupted write never leaves a half-written file behind.
    """
    nib = require("nibabel")
    suffix = ".nii.gz" if Path(path).name.endswith(".nii.gz") else ".nii"
    with atomic_path(path, suffix) as tmp:
        nib.save(nib.Nifti1Image(array, affine), str(tmp))


def read_volume(path: str | Path) -> Volume:
    """Read a NIfTI file or a ``.npy`` array (taken as 1 mm isotropic, RAS+)."""
    path = Path(path)
    if path.suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except Exception as err:
            raise ValueError(f"cannot read .npy file {str(path)!r}: {err}") from err
        if array.ndim != 3:
            raise ValueError(f".npy file {str(path)!r} holds a {array.ndim}-D array, expected 3-D")
        return Volume(array, np.eye(4))
    return read_nifti(path)


def read_dicom_series(folder: str | Path) -> Volume:
    """Read one DICOM series (all ``*.dcm`` files, or all files, of a folder) as a volume in HU.

    Slices are sorted along the slice normal by ``ImagePositionPatient``;
    ``RescaleSlope`` and ``RescaleIntercept`` are applied, so CT values are Hounsfield
    units. The array is ``(X, Y, Z)`` = (columns, rows, slices), the affine LPS-to-RAS
    converted so that it means what a NIfTI affine means.

    Raises:
        ValueError: no readable slices, mixed sizes, or a file that is not DICOM.
    """
    pydicom = require("pydicom")
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise ValueError(f"DICOM folder {str(folder)!r} holds no files")
    slices: list[Any] = []
    for f in files:
        try:
            slices.append(pydicom.dcmread(str(f)))
        except Exception as err:
            raise ValueError(f"cannot read DICOM file {str(f)!r}: {err}") from err
    orientation = np.array(slices[0].ImageOrientationPatient, dtype=np.float64)
    row, col = orientation[:3], orientation[3:]
    normal = np.cross(row, col)
    slices.sort(key=lambda s: float(np.dot(normal, np.array(s.ImagePositionPatient, dtype=np.float64))))
    shapes = {s.pixel_array.shape for s in slices}
    if len(shapes) != 1:
        raise ValueError(f"DICOM series {str(folder)!r} mixes slice sizes {sorted(shapes)}")
    stack = np.stack(
        [
            s.pixel_array.astype(np.float64) * float(getattr(s, "RescaleSlope", 1))
            + float(getattr(s, "RescaleIntercept", 0))
            for s in slices
        ],
        axis=-1,
    )  # (rows, cols, slices)
    array = np.transpose(stack, (1, 0, 2))  # (cols = X, rows = Y, slices = Z)
    dr, dc = (float(v) for v in slices[0].PixelSpacing)  # row spacing, column spacing
    if len(slices) > 1:
        first = np.array(slices[0].ImagePositionPatient, dtype=np.float64)
        last = np.array(slices[-1].ImagePositionPatient, dtype=np.float64)
        dz = float(np.dot(normal, last - first)) / (len(slices) - 1)
    else:
        dz = float(getattr(slices[0], "SliceThickness", 1.0) or 1.0)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = row * dc, col * dr, normal * dz
    lps[:3, 3] = np.array(slices[0].ImagePositionPatient, dtype=np.float64)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # LPS (DICOM) -> RAS (NIfTI)
    return Volume(array.astype(np.float32), affine)


def read_rgb(path: str | Path) -> np.ndarray:
    """Read a PNG/JPEG as ``(H, W, 3)`` uint8 RGB.

    Raises:
        ValueError: missing or unreadable file, named in the message.
    """
    image_module = require("PIL.Image")
    path = Path(path)
    try:
        with image_module.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except Exception as err:
        raise ValueError(f"cannot read image file {str(path)!r}: {err}") from err


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write an ``(H, W, 3)`` uint8 array as PNG, atomically."""
    image_module = require("PIL.Image")
    with atomic_path(path, ".png") as tmp:
        image_module.fromarray(image).save(tmp)
