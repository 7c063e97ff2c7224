"""Bad real-format data: every defect is an error naming the file, never a silent wrong volume."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from pretext3d.data import (
    APTOS,
    CTPreprocessing,
    FundusFolder,
    Task07Pancreas,
    Volume,
    VolumeFolder,
    read_dicom_series,
    read_volume,
    write_aptos_phantom,
    write_task07_phantom,
)
from pretext3d.data.io import check_volume

CT_SMALL = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"
RAW = CTPreprocessing(spacing=None, window=(-1024, 3071), crop=None, dtype="float32")


def series(folder: Path, offsets: list[float], **tags: object) -> Path:
    """Slices of pydicom's CT_small at the given offsets along z, with tags overridden per slice."""
    folder.mkdir(parents=True, exist_ok=True)
    source = pydicom.dcmread(CT_SMALL)
    for i, dz in enumerate(offsets):
        ds = pydicom.dcmread(CT_SMALL)
        ds.ImagePositionPatient = [
            *source.ImagePositionPatient[:2],
            float(source.ImagePositionPatient[2]) + dz,
        ]
        for tag, values in tags.items():
            value = values[i] if isinstance(values, list) else values  # type: ignore[index]
            if value is None:
                delattr(ds, tag)
            else:
                setattr(ds, tag, value)
        ds.save_as(folder / f"slice{i}.dcm")
    return folder


def test_dicom_series_are_validated_not_guessed(tmp_path: Path) -> None:
    good = read_dicom_series(series(tmp_path / "good", [0.0, 2.5, 5.0, 7.5]))
    assert good.spacing[2] == pytest.approx(2.5)
    with pytest.raises(
        ValueError, match=r"not evenly spaced: 5.000 mm between 'slice1.dcm' and 'slice2.dcm'"
    ):
        read_dicom_series(series(tmp_path / "gap", [0.0, 2.5, 7.5, 10.0]))  # slice at 5.0 missing
    with pytest.raises(ValueError, match=r"share the slice position .* duplicate slices"):
        read_dicom_series(series(tmp_path / "dup", [0.0, 2.5, 2.5, 5.0]))
    two = series(
        tmp_path / "two", [0.0, 2.5, 0.0, 2.5], SeriesInstanceUID=["1.2.1", "1.2.1", "1.2.2", "1.2.2"]
    )
    with pytest.raises(ValueError, match=r"mixes 2 series .*'1.2.1': 2, '1.2.2': 2.*pass series_uid"):
        read_dicom_series(two)
    assert read_dicom_series(two, series_uid="1.2.2").array.shape[2] == 2
    with pytest.raises(ValueError, match=r"has no series '9\.9'"):
        read_dicom_series(two, series_uid="9.9")
    tilted = [[1, 0, 0, 0, 1, 0]] * 2 + [[1, 0, 0, 0, 0, 1]]
    with pytest.raises(ValueError, match="one series must have one orientation"):
        read_dicom_series(series(tmp_path / "tilt", [0.0, 2.5, 5.0], ImageOrientationPatient=tilted))
    with pytest.raises(ValueError, match=r"slice1.dcm' has no ImagePositionPatient"):
        read_dicom_series(series(tmp_path / "nopos", [0.0, 2.5], ImagePositionPatient=[[0, 0, 0], None]))


def test_non_finite_voxels_and_degenerate_geometry_name_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "vols"
    folder.mkdir()
    array = np.zeros((8, 8, 8), np.float32)
    array[3, 3, 3] = np.nan
    np.save(folder / "bad.npy", array)
    with pytest.raises(ValueError, match=r"bad.npy' holds 1 NaN or infinite voxel value\(s\) of 512"):
        VolumeFolder(folder, preprocessing=RAW)[0]
    flat = Volume(np.zeros((4, 4, 4), np.float32), np.diag([1.0, 0.0, 1.0, 1.0]))  # nibabel won't write it
    with pytest.raises(ValueError, match=r"flat.nii' has no usable geometry.*zero voxel size"):
        check_volume(flat, "flat.nii")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.float32), np.eye(4)), tmp_path / "series.nii")
    with pytest.raises(ValueError, match=r"series.nii' holds a 4-D image of shape \(4, 4, 4, 2\)"):
        read_volume(tmp_path / "series.nii")
    np.save(tmp_path / "objects.npy", np.array(["a", "b"]))
    with pytest.raises(ValueError, match="expected a 3-D array of numbers"):
        read_volume(tmp_path / "objects.npy")
    for window in [(float("nan"), 215.0), (-96.0, float("inf")), (5.0, 5.0)]:
        with pytest.raises(ValueError, match="window must be finite"):
            CTPreprocessing(window=window)
    with pytest.raises(ValueError, match="spacing must be None or three finite sizes > 0"):
        CTPreprocessing(spacing=(0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="spacing must be three finite voxel sizes > 0"):
        CTPreprocessing()(np.zeros((8, 8, 8)), (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="image holds 1 NaN or infinite values"):
        RAW(array, (1.0, 1.0, 1.0))


def test_labels_must_lie_on_their_images_grid(tmp_path: Path) -> None:
    root = write_task07_phantom(tmp_path, num_train=1, num_test=0, size=16)
    label = root / "labelsTr" / "pancreas_001.nii.gz"
    image = nib.load(root / "imagesTr" / "pancreas_001.nii.gz")
    mirrored = image.affine @ np.diag([-1.0, 1.0, 1.0, 1.0])
    nib.save(nib.Nifti1Image(np.asarray(nib.load(label).dataobj), mirrored), label)
    with pytest.raises(ValueError, match=r"pancreas_001.nii.gz' and image .* differ in geometry"):
        Task07Pancreas(root, preprocessing=RAW)[0]


def test_dataset_json_defects(tmp_path: Path) -> None:
    root = write_task07_phantom(tmp_path, num_train=2, num_test=0, size=16)
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"].append(meta["training"][0])
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="lists 'training' images more than once"):
        Task07Pancreas(root)
    meta["training"] = [{"image": "./imagesTr/pancreas_001.nii.gz"}]
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="entry 0 of 'training' must be an object with 'image' and 'label'"):
        Task07Pancreas(root)


def test_a_pool_and_the_labelled_set_can_share_one_cache(tmp_path: Path) -> None:
    root = write_task07_phantom(tmp_path, num_train=2, num_test=1, size=16)
    cache = tmp_path / "cache"
    pool = Task07Pancreas.unlabelled(root, include_training=True, preprocessing=RAW, cache_dir=cache)
    assert len([pool[i] for i in range(len(pool))]) == 3  # caches training images without labels
    labelled = Task07Pancreas(root, preprocessing=RAW, cache_dir=cache)
    image, label = labelled[0]
    assert image.shape[1:] == label.shape and int(label.max()) >= 1


def test_aptos_tables(tmp_path: Path) -> None:
    root = write_aptos_phantom(tmp_path, num_train=4, num_test=1, size=16)
    table = root / "train.csv"
    rows = table.read_text().splitlines()
    # an Excel-style BOM and an upper-case suffix are fine
    table.write_text("\ufeff" + "\n".join(rows) + "\n", encoding="utf-8")
    first = rows[1].split(",")[0]
    (root / "train_images" / f"{first}.png").rename(root / "train_images" / f"{first}.PNG")
    assert len(APTOS(root)) == 4
    table.write_text("\n".join([*rows, f"{first},3"]) + "\n")
    with pytest.raises(ValueError, match=rf"lists image ids more than once: \['{first}'\]"):
        APTOS(root)
    table.write_text(rows[0] + "\n")
    with pytest.raises(ValueError, match=r"lists no images \(a header without rows\)"):
        APTOS(root)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every folder")
def test_folders_never_skip_silently(tmp_path: Path) -> None:
    root = write_aptos_phantom(tmp_path, num_train=2, num_test=0, size=16) / "train_images"
    locked = root / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        with pytest.raises(ValueError, match=r"cannot read '.*locked'"):
            FundusFolder(root)
    finally:
        locked.chmod(0o755)


def test_dangling_links_are_reported(tmp_path: Path) -> None:
    folder = tmp_path / "vols"
    folder.mkdir()
    np.save(folder / "a.npy", np.zeros((4, 4, 4), np.float32))
    (folder / "b.npy").symlink_to(tmp_path / "missing.npy")
    with pytest.raises(ValueError, match=r"b.npy' is a link that points nowhere"):
        VolumeFolder(folder)
    images = write_aptos_phantom(tmp_path, num_train=2, num_test=0, size=16) / "train_images"
    (images / "gone.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(ValueError, match=r"gone.png' is a link that points nowhere"):
        FundusFolder(images)
    # a folder that cannot be listed is an error, not an empty data set (root can list anything,
    # so a file stands in for an unreadable folder here)
    from pretext3d.data.folders import list_files

    with pytest.raises(ValueError, match=r"cannot read '.*a.npy'"):
        list_files(folder / "a.npy", lambda p: True)
