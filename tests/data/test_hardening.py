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
        with pytest.raises(ValueError, match="window must be None or finite"):
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


# --- round two (issue 26)


def test_link_loops_and_second_links_list_each_scan_once(tmp_path: Path) -> None:
    folder = tmp_path / "scans"
    (folder / "sub").mkdir(parents=True)
    np.save(folder / "a.npy", np.zeros((4, 4, 4), np.float32))
    np.save(folder / "sub" / "b.npy", np.ones((4, 4, 4), np.float32))
    (folder / "loop").symlink_to(folder)  # ln -s . loop
    (folder / "sub" / "up").symlink_to(folder)
    (folder / "again.npy").symlink_to(folder / "a.npy")  # a second name for a scan
    scans = VolumeFolder(folder, preprocessing=RAW)
    assert len(scans) == 2 and sorted(scans.case_ids) == ["a.npy", "sub__b.npy"]


def test_dicom_series_of_mixed_pixel_spacing_or_another_modality_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"mixes pixel spacings \[\(0\.5, 0\.5\), \(0\.6615, 0\.6615\)\]"):
        spacings = [[0.661468] * 2] * 2 + [[0.5, 0.5]]
        read_dicom_series(series(tmp_path / "px", [0.0, 2.5, 5.0], PixelSpacing=spacings))
    mr = series(tmp_path / "mr", [0.0, 2.5], Modality="MR")
    with pytest.raises(ValueError, match=r"slice0.dcm' is a MR slice, not CT: its values are not Hounsfield"):
        read_dicom_series(mr)
    assert read_dicom_series(mr, modality=None).array.shape[2] == 2  # read as it is when asked


def test_implausible_voxel_sizes_are_refused_not_resampled_to_nothing(tmp_path: Path) -> None:
    tiny = np.diag([0.01, 0.01, 0.01, 1])  # 0.01 mm voxels
    nib.save(nib.Nifti1Image(np.zeros((64, 64, 32), np.float32), tiny), tmp_path / "t.nii")
    message = r"t.nii.*leaves \(1, 1, 1\) voxels: the header's voxel size is implausible"
    with pytest.raises(ValueError, match=message):
        VolumeFolder(tmp_path, preprocessing=CTPreprocessing(crop=None, resize=None))[0]


def test_16_bit_png_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    from PIL import Image

    from pretext3d.data.io import read_rgb

    grey = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(grey).save(tmp_path / "deep.png")
    rgb = read_rgb(tmp_path / "deep.png")
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[..., 0], np.round(grey / 257.0).astype(np.uint8))
    assert (rgb == 255).mean() < 0.01  # not saturated
    with pytest.raises(ValueError, match=r"label_noise must lie in \[0, 1\], got 1.5"):
        write_aptos_phantom(tmp_path / "a", num_train=2, num_test=0, size=16, label_noise=1.5)
    assert not (tmp_path / "a").exists()  # refused before anything was written


def test_a_damaged_cache_file_is_named_removed_and_recomputed(tmp_path: Path) -> None:
    folder = tmp_path / "scans"
    folder.mkdir()
    np.save(folder / "a.npy", np.arange(64, dtype=np.float32).reshape(4, 4, 4))
    scans = VolumeFolder(folder, preprocessing=RAW, cache_dir=tmp_path / "cache")
    first = scans.array(0)
    cached = next((tmp_path / "cache").rglob("*_image.npy"))
    cached.write_bytes(cached.read_bytes()[:-40])  # truncated on disk
    with pytest.raises(ValueError, match=r"cached image of case 'a.npy' \(.*_image.npy'\) cannot be read"):
        scans.array(0)
    assert not cached.exists()
    np.testing.assert_array_equal(scans.array(0), first)  # the next read recomputes it
