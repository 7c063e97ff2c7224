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

__all__ = [
    "Volume",
    "check_volume",
    "read_dicom_series",
    "read_nifti",
    "read_rgb",
    "read_volume",
    "write_nifti",
    "write_png",
]


@dataclass
class Volume:
    """A 3D array with its geometry.

    Attributes:
        array: ``(X, Y, Z)`` voxel values.
        affine: ``4 x 4`` voxel-to-world (mm) matrix.
        spacing: voxel size in mm per array axis.

    Examples:
        >>> import numpy as np
        >>> volume = Volume(np.zeros((4, 4, 2), np.float32), np.diag([0.7, 0.7, 2.5, 1.0]))
        >>> volume.spacing
        (0.7, 0.7, 2.5)
    """

    array: np.ndarray
    affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm per array axis (norms of the affine's columns)."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))


def check_volume(volume: Volume, source: str | Path) -> Volume:
    """Return ``volume`` if its values are finite and its affine is a proper geometry, else raise.

    Raises:
        ValueError: NaN or infinite voxels (counted), or an affine that is not finite or whose
            voxel axes are degenerate (a zero spacing); the message names ``source``.

    Examples:
        >>> import numpy as np
        >>> check_volume(Volume(np.full((2, 2, 2), np.nan), np.eye(4)), "scan.nii.gz")
        Traceback (most recent call last):
        ValueError: 'scan.nii.gz' holds 8 NaN or infinite voxel value(s) of 8; ...
    """
    array = volume.array
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise ValueError(
            f"{str(source)!r} holds {bad} NaN or infinite voxel value(s) of {array.size}; "
            "fix or mask the file (pretext3d does not guess values)"
        )
    affine = volume.affine
    if affine.shape != (4, 4) or not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise ValueError(
            f"{str(source)!r} has no usable geometry: its affine {affine.tolist()} is not finite or "
            f"has a zero voxel size (spacing {volume.spacing})"
        )
    return volume


def read_nifti(path: str | Path, *, canonical: bool = True) -> Volume:
    """Read a ``.nii``/``.nii.gz`` file.

    Args:
        path: the file.
        canonical: reorient to the closest canonical orientation, RAS+ (array axis 0
            runs to the patient's right, 1 anterior, 2 superior), without resampling.

    Raises:
        ValueError: the file is missing, truncated, corrupt or not 3D; the message names it.

    Examples:
        >>> import numpy as np
        >>> las = np.diag([-1.0, 1.0, 1.0, 1.0])   # stored left-to-right flipped
        >>> write_nifti("las.nii.gz", np.arange(8, dtype=np.int16).reshape(2, 2, 2), las)
        >>> read_nifti("las.nii.gz").array[:, 0, 0].tolist()   # reoriented to RAS+: the first axis reversed
        [4, 0]
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
    if array.ndim != 3 and not (array.ndim > 3 and all(n == 1 for n in array.shape[3:])):
        raise ValueError(
            f"NIfTI file {str(path)!r} holds a {array.ndim}-D image of shape {array.shape}, "
            "expected one 3-D volume (split a 4-D series into volumes first)"
        )
    array = array.reshape(array.shape[:3])
    return check_volume(Volume(array, np.asarray(image.affine, dtype=np.float64)), path)


def write_nifti(path: str | Path, array: np.ndarray, affine: np.ndarray) -> None:
    """Write a 3D array as NIfTI (gzip-compressed for ``.nii.gz``), atomically; missing folders are made.

    The file is written under a temporary name in the same folder and renamed, so an
    interrupted write never leaves a half-written file behind.

    Examples:
        >>> import numpy as np
        >>> image = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
        >>> write_nifti("scan.nii.gz", image, np.diag([0.8, 0.8, 2.0, 1.0]))
        >>> volume = read_nifti("scan.nii.gz")
        >>> volume.array.shape, [round(s, 3) for s in volume.spacing]   # NIfTI stores float32
        ((2, 3, 4), [0.8, 0.8, 2.0])
    """
    nib = require("nibabel")
    suffix = ".nii.gz" if Path(path).name.endswith(".nii.gz") else ".nii"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix) as tmp:
        nib.save(nib.Nifti1Image(array, affine), str(tmp))


def read_volume(path: str | Path) -> Volume:
    """Read a NIfTI file or a ``.npy`` array (taken as 1 mm isotropic, RAS+).

    Examples:
        >>> import numpy as np
        >>> np.save("scan.npy", np.zeros((8, 8, 8), np.float32))
        >>> volume = read_volume("scan.npy")   # a bare array: 1 mm isotropic
        >>> volume.array.shape, volume.spacing
        ((8, 8, 8), (1.0, 1.0, 1.0))
    """
    path = Path(path)
    if path.suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except Exception as err:
            raise ValueError(f"cannot read .npy file {str(path)!r}: {err}") from err
        if array.ndim != 3 or array.dtype.kind not in "biuf":
            raise ValueError(
                f".npy file {str(path)!r} holds a {array.ndim}-D {array.dtype} array, "
                "expected a 3-D array of numbers"
            )
        return check_volume(Volume(array, np.eye(4)), path)
    return read_nifti(path)


def read_dicom_series(
    folder: str | Path, *, series_uid: str | None = None, modality: str | None = "CT"
) -> Volume:
    """Read one DICOM series (all ``*.dcm`` files, or all files, of a folder) as a volume in HU.

    Slices are sorted along the slice normal by ``ImagePositionPatient``;
    ``RescaleSlope`` and ``RescaleIntercept`` are applied, so CT values are Hounsfield
    units. The array is ``(X, Y, Z)`` = (columns, rows, slices), the affine LPS-to-RAS
    converted so that it means what a NIfTI affine means.

    The series is validated, never guessed at: one ``SeriesInstanceUID`` (or the one
    named by ``series_uid``), one orientation, one slice size, no two slices at the same
    position, and uniform slice spacing (within 1 % or 0.01 mm), so that a missing slice
    is reported instead of being spread into a wrong uniform spacing.

    Args:
        folder: the series' folder.
        series_uid: which series to read when the folder holds several.
        modality: the ``Modality`` every slice must have where it says ("CT": the values are
            Hounsfield units, which the CT preprocessing windows; an MR series read as CT would
            be windowed into nonsense); ``None``: any (the values are then the scanner's
            rescaled units).

    Raises:
        ValueError: no readable slices, a file that is not DICOM or lacks position,
            orientation or pixel data, several series without ``series_uid``, mixed
            orientations or sizes, duplicate positions, or a gap; the message names the
            folder or file.

    Examples:
        >>> import os, pydicom, pydicom.data
        >>> slice_file = pydicom.data.get_testdata_file("CT_small.dcm")   # a CT slice shipped with pydicom
        >>> os.makedirs("series")
        >>> for i in range(3):   # three slices 5 mm apart
        ...     ds = pydicom.dcmread(slice_file)
        ...     ds.ImagePositionPatient[2] += 5.0 * i
        ...     ds.save_as(f"series/slice{i}.dcm")
        >>> volume = read_dicom_series("series")
        >>> # in HU
        >>> volume.array.shape, [round(s, 3) for s in volume.spacing], float(volume.array.min()) >= -1024
        ((128, 128, 3), [0.661, 0.661, 5.0], True)
    """
    pydicom = require("pydicom")
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise ValueError(f"DICOM folder {str(folder)!r} holds no files")
    slices: list[tuple[Path, Any]] = []
    for f in files:
        try:
            slices.append((f, pydicom.dcmread(str(f))))
        except Exception as err:
            raise ValueError(f"cannot read DICOM file {str(f)!r}: {err}") from err
    by_series: dict[str, list[tuple[Path, Any]]] = {}
    for f, s in slices:
        by_series.setdefault(str(getattr(s, "SeriesInstanceUID", "")), []).append((f, s))
    if series_uid is not None:
        if series_uid not in by_series:
            raise ValueError(
                f"DICOM folder {str(folder)!r} has no series {series_uid!r}; it has {sorted(by_series)}"
            )
        slices = by_series[series_uid]
    elif len(by_series) > 1:
        counts = {uid: len(members) for uid, members in sorted(by_series.items())}
        raise ValueError(
            f"DICOM folder {str(folder)!r} mixes {len(by_series)} series (SeriesInstanceUID: slices) "
            f"{counts}; pass series_uid=... or give each series its own folder"
        )
    for f, s in slices:
        for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "PixelData"):
            if getattr(s, tag, None) is None:
                raise ValueError(f"DICOM file {str(f)!r} has no {tag}; it cannot be placed in a volume")
    for f, s in slices:
        found = getattr(s, "Modality", None)
        if modality is not None and found and found != modality:
            raise ValueError(
                f"DICOM file {str(f)!r} is a {found} slice, not {modality}: its values are not "
                f"{'Hounsfield units' if modality == 'CT' else modality + ' values'}; read it with "
                "modality=None and a preprocessing of its own"
            )
    spacings = {tuple(round(float(v), 4) for v in s.PixelSpacing) for _, s in slices}
    if len(spacings) != 1:
        raise ValueError(f"DICOM series {str(folder)!r} mixes pixel spacings {sorted(spacings)} (mm)")
    orientation = np.array(slices[0][1].ImageOrientationPatient, dtype=np.float64)
    for f, s in slices:
        if not np.allclose(np.array(s.ImageOrientationPatient, dtype=np.float64), orientation, atol=1e-4):
            raise ValueError(
                f"DICOM file {str(f)!r} has orientation {list(s.ImageOrientationPatient)}, the series "
                f"{orientation.tolist()}: one series must have one orientation"
            )
    row, col = orientation[:3], orientation[3:]
    normal = np.cross(row, col)

    def position(s: Any) -> float:
        return float(np.dot(normal, np.array(s.ImagePositionPatient, dtype=np.float64)))

    slices.sort(key=lambda item: position(item[1]))
    shapes = {s.pixel_array.shape for _, s in slices}
    if len(shapes) != 1:
        raise ValueError(f"DICOM series {str(folder)!r} mixes slice sizes {sorted(shapes)}")
    positions = np.array([position(s) for _, s in slices])
    if len(slices) > 1:
        steps = np.diff(positions)
        if steps.min() < 1e-3:
            k = int(steps.argmin())
            raise ValueError(
                f"DICOM files {str(slices[k][0])!r} and {str(slices[k + 1][0])!r} share the slice "
                f"position {positions[k]:.3f} mm: duplicate slices"
            )
        typical = float(np.median(steps))
        off = np.abs(steps - typical) > max(0.01, 0.01 * typical)
        if off.any():
            k = int(np.argmax(off))
            raise ValueError(
                f"DICOM series {str(folder)!r} is not evenly spaced: {steps[k]:.3f} mm between "
                f"{slices[k][0].name!r} and {slices[k + 1][0].name!r} where the slices are "
                f"{typical:.3f} mm apart (a missing slice?)"
            )
    stack = np.stack(
        [
            s.pixel_array.astype(np.float64) * float(getattr(s, "RescaleSlope", 1))
            + float(getattr(s, "RescaleIntercept", 0))
            for _, s in slices
        ],
        axis=-1,
    )  # (rows, cols, slices)
    array = np.transpose(stack, (1, 0, 2))  # (cols = X, rows = Y, slices = Z)
    first = slices[0][1]
    dr, dc = (float(v) for v in first.PixelSpacing)  # row spacing, column spacing
    if len(slices) > 1:
        dz = float(positions[-1] - positions[0]) / (len(slices) - 1)
    else:
        dz = float(getattr(first, "SliceThickness", 1.0) or 1.0)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = row * dc, col * dr, normal * dz
    lps[:3, 3] = np.array(first.ImagePositionPatient, dtype=np.float64)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # LPS (DICOM) -> RAS (NIfTI)
    return check_volume(Volume(array.astype(np.float32), affine), folder)


def read_rgb(path: str | Path) -> np.ndarray:
    """Read a PNG/JPEG as ``(H, W, 3)`` uint8 RGB (16-bit greyscale scaled to 8 bits, grey as RGB).

    Raises:
        ValueError: missing or unreadable file, named in the message.

    Examples:
        >>> import numpy as np
        >>> write_png("photo.png", np.full((4, 6, 3), 200, np.uint8))
        >>> image = read_rgb("photo.png")
        >>> image.shape, image.dtype, int(image.max())
        ((4, 6, 3), dtype('uint8'), 200)
    """
    image_module = require("PIL.Image")
    path = Path(path)
    try:
        with image_module.open(path) as image:
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit greyscale: PIL's RGB clips
                grey = np.asarray(image, dtype=np.float64)  # at 255, so scale to 8 bits here
                scaled = np.clip(np.round(grey / 257.0), 0, 255).astype(np.uint8)
                return np.repeat(scaled[..., None], 3, axis=-1)
            return np.asarray(image.convert("RGB"))
    except Exception as err:
        raise ValueError(f"cannot read image file {str(path)!r}: {err}") from err


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write an ``(H, W, 3)`` uint8 array as PNG, atomically (its folder is made if need be).

    Examples:
        >>> import numpy as np
        >>> image, _ = p3.data.fundus_phantom(0, size=64)   # SYNTHETIC
        >>> write_png("fundus.png", image)
        >>> np.array_equal(read_rgb("fundus.png"), image)   # lossless
        True
    """
    image_module = require("PIL.Image")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, ".png") as tmp:
        image_module.fromarray(image).save(tmp)
