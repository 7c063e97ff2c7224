"""Data: real formats written by the tests and shipped by packages, preprocessing, cache, phantoms."""

from __future__ import annotations

import dataclasses
import importlib
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from scipy import ndimage

import pretext3d as p3
from pretext3d.data import (
    APTOS,
    CaseCache,
    CTPreprocessing,
    DataSpec,
    DicomFolder,
    FundusFolder,
    FundusPreprocessing,
    Task07Pancreas,
    VolumeFolder,
    ben_graham,
    ct_phantom,
    fundus_phantom,
    read_dicom_series,
    read_nifti,
    task07_cases,
    write_aptos_phantom,
    write_nifti,
    write_task07_phantom,
)
from pretext3d.data._optional import require
from pretext3d.data.phantoms import APTOS_PRIOR
from pretext3d.data.preprocess import resample_to_spacing

NILEARN_DATA = Path(importlib.import_module("nilearn").__file__).parent / "datasets" / "data"  # type: ignore[arg-type]
CT_SMALL = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"
RETINA = Path(importlib.import_module("skimage").__file__).parent / "data" / "retina.jpg"  # type: ignore[arg-type]
MRICRON = Path("/usr/share/mricron/templates")
ITK_T1 = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data/KmeansTest_T1UCharRaw.nii.gz")
RAW = CTPreprocessing(spacing=None, window=(-1024, 3071), crop=None, dtype="float32")


# --- phantoms ------------------------------------------------------------------------


def test_ct_phantom_is_deterministic_and_shaped_like_task07() -> None:
    a, b = ct_phantom(3, 32), ct_phantom(3, 32)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    assert not np.array_equal(a.image, ct_phantom(4, 32).image)
    assert a.image.dtype == np.int16 and a.label.dtype == np.uint8 and a.image.shape == (32, 32, 32)
    assert set(np.unique(a.label)) <= {0, 1, 2}
    assert a.spacing == pytest.approx((400 / 32, 300 / 32, 250 / 32))
    fractions = [ct_phantom(s, 32).label for s in range(12)]
    pancreas = np.mean([(f > 0).mean() for f in fractions])
    assert 0.004 < pancreas < 0.03  # about 1 % of voxels
    assert sum((f == 2).any() for f in fractions) >= 6  # most cases carry a tumour
    # the pancreas is not separable by intensity: its HU range overlaps other tissue
    image, label = a.image, a.label
    pancreas_hu = image[label == 1]
    low, high = np.percentile(pancreas_hu, [10, 90])
    lookalikes = ((image >= low) & (image <= high) & (label == 0)).sum()
    assert lookalikes > 3 * (label == 1).sum()


def test_ct_phantom_anatomy_is_oriented() -> None:
    # RAS+: axis 0 towards the patient's right, 1 anterior, 2 superior
    image = np.mean([ct_phantom(s, 40).image.astype(float) for s in range(3)], axis=0)
    centre = 19.5
    x, y, _ = np.meshgrid(*[np.arange(40)] * 3, indexing="ij")
    organ = (image > 60) & (image < 140)
    upper = np.arange(40)[None, None, :] >= 20
    # the liver (right, cranial) outweighs the spleen (left)
    assert (organ & upper & (x > centre)).sum() > 1.5 * (organ & upper & (x < centre)).sum()
    bone = image > 300
    assert y[bone].mean() < centre - 5  # the spine is posterior
    inner = ((x - centre) / 14) ** 2 + ((y - centre) / 12) ** 2 < 1
    gas = (image < -300) & inner
    assert gas.any() and y[gas].mean() > centre  # stomach gas rises to the front


def test_ct_phantom_contrast_phase_varies_between_cases() -> None:
    # the gland is brighter than the liver in some cases and darker in others, so a few
    # labelled cases cannot teach "pancreas = this intensity"
    x = np.arange(32)[:, None, None]
    brighter = []
    for s in range(12):
        case = ct_phantom(s, 32)
        gland = np.median(case.image[case.label == 1])
        liver = np.median(case.image[(x > 22) & (case.image > 40) & (case.image < 200) & (case.label == 0)])
        brighter.append(gland > liver)
    assert any(brighter) and not all(brighter)


def test_fundus_phantom_is_not_symmetric_top_to_bottom() -> None:
    # the fovea lies below the disc (image rows grow downwards), so a 180° turn is visible:
    # mirror every image so its disc is on the right, average, then find disc and fovea
    aligned = []
    for s in range(40):
        image = fundus_phantom(s, 64, grade=0)[0].astype(float).sum(-1)
        disc_col = np.unravel_index(np.argmax(ndimage.gaussian_filter(image, 2)), image.shape)[1]
        aligned.append(image if disc_col >= 32 else image[:, ::-1])
    mean = ndimage.gaussian_filter(np.mean(aligned, 0), 1.5)
    disc_row, disc_col = np.unravel_index(np.argmax(mean), mean.shape)
    centre = mean[20:44, 20:40]  # the macula lies temporal to the disc, near the centre
    fovea_row = np.unravel_index(np.argmin(centre), centre.shape)[0] + 20
    assert disc_col > 40 and fovea_row >= disc_row + 3


def test_fundus_phantom() -> None:
    image, grade = fundus_phantom(0, 64)
    again, grade2 = fundus_phantom(0, 64)
    assert np.array_equal(image, again) and grade == grade2
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert (image[0, 0] == 0).all()  # outside the circular field of view
    grades = np.array([fundus_phantom(s, 16)[1] for s in range(400)])
    observed = np.bincount(grades, minlength=5) / len(grades)
    assert np.allclose(observed, APTOS_PRIOR, atol=0.06)
    # more lesions, more red blobs: grade 4 differs from grade 0 more than grade 1 does
    base = fundus_phantom(7, 64, grade=0)[0].astype(float)
    assert (
        np.abs(fundus_phantom(7, 64, grade=4)[0] - base).sum()
        > np.abs(fundus_phantom(7, 64, grade=1)[0] - base).sum()
    )
    noisy = [fundus_phantom(s, 16, grade=2, label_noise=1.0)[1] for s in range(20)]
    assert set(noisy) == {1, 3}
    with pytest.raises(ValueError, match="grade must be 0-4"):
        fundus_phantom(0, 16, grade=5)


# --- MSD Task07 ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def task07(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_task07_phantom(tmp_path_factory.mktemp("msd"), num_train=3, num_test=2, size=24)
    (root / "imagesTr" / "._pancreas_001.nii.gz").write_bytes(b"\x00\x05\x16\x07 mac junk")
    # a real MRI (nilearn's MNI152 template) as one more labelled case: argmax of background/GM/WM
    t1 = nib.load(NILEARN_DATA / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    gm = np.asarray(
        nib.load(NILEARN_DATA / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz").dataobj, float
    )
    wm = np.asarray(
        nib.load(NILEARN_DATA / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz").dataobj, float
    )
    label = np.argmax(np.stack([np.full_like(gm, 64), gm, wm]), axis=0).astype(np.uint8)
    step = 4  # keep the test fast: every 4th voxel, 4 mm
    affine = t1.affine @ np.diag([step, step, step, 1])
    write_nifti(root / "imagesTr" / "mni_001.nii.gz", np.asarray(t1.dataobj)[::step, ::step, ::step], affine)
    write_nifti(root / "labelsTr" / "mni_001.nii.gz", label[::step, ::step, ::step], affine)
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"].append({"image": "./imagesTr/mni_001.nii.gz", "label": "./labelsTr/mni_001.nii.gz"})
    meta["training"].append(
        {"image": "./imagesTr/._pancreas_001.nii.gz", "label": "./labelsTr/pancreas_001.nii.gz"}
    )
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_task07_round_trip(task07: Path) -> None:
    meta = json.loads((task07 / "dataset.json").read_text())
    assert {"licence", "relase", "training", "test", "labels"} <= set(meta)
    data = Task07Pancreas(task07, preprocessing=RAW)
    assert [c.case_id for c in data.cases] == ["pancreas_001", "pancreas_002", "pancreas_003", "mni_001"]
    image, label = data[0]
    original = ct_phantom(0, 24)
    assert image.shape == (1, 24, 24, 24) and image.dtype == torch.float32
    assert torch.equal(label, torch.from_numpy(original.label.astype(np.int64)))
    hu = original.image.astype(np.float32)
    assert torch.allclose(image[0], torch.from_numpy((hu - hu.mean()) / hu.std()), atol=1e-5)
    raw = CTPreprocessing(spacing=None, window=(-1024, 3071), normalize="minmax", crop=None, dtype="float32")
    image, _ = Task07Pancreas(task07, preprocessing=raw)[0]
    assert torch.allclose(
        image[0], torch.from_numpy((original.image.astype(np.float32) + 1024) / 4095), atol=1e-6
    )
    mri, mri_label = data[3]
    assert mri.shape[1:] == mri_label.shape and set(mri_label.unique().tolist()) == {0, 1, 2}
    test_cases, _ = task07_cases(task07, "test")
    assert [c.case_id for c in test_cases] == ["pancreas_004", "pancreas_005"]
    pool = Task07Pancreas.unlabelled(
        task07, include_training=True, preprocessing=RAW, patch_size=(16, 16, 16)
    )
    assert len(pool) == 6 and pool[0].shape == (1, 16, 16, 16)


def test_nnunet_layout(task07: Path, tmp_path: Path) -> None:
    root = tmp_path / "Dataset007_Pancreas"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for name in ("pancreas_001", "pancreas_002"):
        shutil.copy(task07 / "imagesTr" / f"{name}.nii.gz", root / "imagesTr" / f"{name}_0000.nii.gz")
        shutil.copy(task07 / "labelsTr" / f"{name}.nii.gz", root / "labelsTr" / f"{name}.nii.gz")
    (root / "imagesTr" / "._pancreas_003_0000.nii.gz").write_bytes(b"junk")
    cases, _ = task07_cases(root)
    assert [c.case_id for c in cases] == ["pancreas_001", "pancreas_002"]
    assert torch.equal(
        Task07Pancreas(root, preprocessing=RAW)[1][1], Task07Pancreas(task07, preprocessing=RAW)[1][1]
    )


def test_preprocessing_keeps_labels_exact_and_extent_within_a_voxel(task07: Path) -> None:
    target = (6.0, 6.0, 6.0)
    seg = read_nifti(task07 / "labelsTr" / "mni_001.nii.gz")
    resampled = resample_to_spacing(seg.array, seg.spacing, target, label=True)
    assert set(np.unique(resampled)) <= set(np.unique(seg.array))
    for n, s, m, t in zip(seg.array.shape, seg.spacing, resampled.shape, target, strict=True):
        assert abs(n * s - m * t) <= t / 2 + 1e-9
    # the original interpolated labels linearly: spurious 1s around a 2 in a background of 0
    toy = np.zeros((20, 20, 20), dtype=np.int16)
    toy[8:12, 8:12, 8:12] = 2
    assert 1 not in np.unique(resample_to_spacing(toy, (1.0, 1.0, 1.0), (0.7, 0.7, 0.7), label=True))
    data = Task07Pancreas(task07, preprocessing=CTPreprocessing(spacing=target, crop="body"))
    image, label = data[3]
    assert image.shape[1:] == label.shape and torch.isfinite(image).all()
    assert abs(float(image.mean())) < 1e-2 and abs(float(image.std()) - 1) < 1e-2  # z-scored
    resized = Task07Pancreas(task07, preprocessing=CTPreprocessing(resize=(32, 32, 32), crop=None))[0]
    assert resized[0].shape == (1, 32, 32, 32) and set(resized[1].unique().tolist()) <= {0, 1, 2}


def test_cache_key_changes_with_every_argument_and_survives_a_crash(task07: Path, tmp_path: Path) -> None:
    base = CTPreprocessing()
    changed = {
        "spacing": (2.0, 2.0, 2.0),
        "interpolation": "cubic",
        "window": (-100.0, 200.0),
        "normalize": "minmax",
        "crop": None,
        "resize": (64, 64, 64),
        "dtype": "float32",
    }
    assert set(changed) == {f.name for f in dataclasses.fields(CTPreprocessing)}
    keys = {base.key()} | {dataclasses.replace(base, **{k: v}).key() for k, v in changed.items()}
    assert len(keys) == len(changed) + 1
    cached = Task07Pancreas(
        task07, preprocessing=CTPreprocessing(spacing=(6.0, 6.0, 6.0)), cache_dir=tmp_path
    )
    first = cached[0]
    folder = tmp_path / CTPreprocessing(spacing=(6.0, 6.0, 6.0)).key()
    assert (folder / "pancreas_001_image.npy").exists()
    assert np.load(folder / "pancreas_001_image.npy").dtype == np.float16
    assert np.load(folder / "pancreas_001_label.npy").dtype == np.int16
    assert torch.equal(cached[0][0], first[0])
    # a crash after the label but before the image: the case does not count and is redone
    (folder / "pancreas_002_image.npy").unlink(missing_ok=True)
    cached.arrays(1)
    (folder / "pancreas_002_image.npy").unlink()
    (folder / ".pancreas_002_image.npy.123.tmp").write_bytes(b"half")
    assert not CaseCache(tmp_path, CTPreprocessing(spacing=(6.0, 6.0, 6.0)).key()).has("pancreas_002")
    assert torch.equal(
        cached[1][1], Task07Pancreas(task07, preprocessing=CTPreprocessing(spacing=(6.0, 6.0, 6.0)))[1][1]
    )


def test_bad_task07_files(task07: Path, tmp_path: Path) -> None:
    root = tmp_path / "bad"
    shutil.copytree(task07, root)
    good = (root / "imagesTr" / "pancreas_003.nii.gz").read_bytes()
    (root / "imagesTr" / "pancreas_003.nii.gz").write_bytes(good[: len(good) // 2])  # truncated
    data = Task07Pancreas(root, preprocessing=RAW)
    with pytest.raises(ValueError, match=r"cannot read NIfTI file '.*pancreas_003.nii.gz'"):
        data[2]
    skipping = Task07Pancreas(root, preprocessing=RAW, on_error="skip").prepare()
    assert len(skipping) == 3 and "pancreas_003" in skipping.skipped[0][0]
    (root / "labelsTr" / "pancreas_002.nii.gz").unlink()
    with pytest.raises(
        ValueError, match=r"pancreas_002.nii.gz': label file for image pancreas_002.nii.gz is missing"
    ):
        Task07Pancreas(root)
    case = ct_phantom(0, 24)
    write_nifti(root / "labelsTr" / "pancreas_002.nii.gz", case.label[:20], case.affine)
    with pytest.raises(ValueError, match=r"label '.*pancreas_002.nii.gz' has shape \(20, 24, 24\)"):
        Task07Pancreas(root, preprocessing=RAW)[1]
    write_nifti(root / "labelsTr" / "pancreas_002.nii.gz", case.label + 3, case.affine)
    with pytest.raises(ValueError, match=r"holds values .* expected 0, 1, 2"):
        Task07Pancreas(root, preprocessing=RAW)[1]
    with pytest.raises(ValueError, match=r"neither dataset\.json nor nnU-Net images"):
        task07_cases(tmp_path)


def test_orientation_is_made_canonical(tmp_path: Path) -> None:
    case = ct_phantom(1, 16)
    flipped_affine = np.diag([-case.spacing[0], case.spacing[1], case.spacing[2], 1.0])  # LAS
    write_nifti(tmp_path / "las.nii.gz", case.image[::-1], flipped_affine)
    volume = read_nifti(tmp_path / "las.nii.gz")
    assert np.array_equal(volume.array, case.image)
    assert nib.aff2axcodes(volume.affine) == ("R", "A", "S")
    assert volume.spacing == pytest.approx(case.spacing)


# --- DICOM ---------------------------------------------------------------------------


def test_dicom_series_in_hounsfield_units(tmp_path: Path) -> None:
    series = tmp_path / "series" / "ct"
    series.mkdir(parents=True)
    source = pydicom.dcmread(CT_SMALL)
    for i, dz in enumerate([10.0, 0.0, 5.0]):  # written out of order
        ds = pydicom.dcmread(CT_SMALL)
        ds.ImagePositionPatient = [
            *source.ImagePositionPatient[:2],
            float(source.ImagePositionPatient[2]) + dz,
        ]
        ds.save_as(series / f"slice{i}.dcm")
    volume = read_dicom_series(series)
    assert volume.array.shape == (128, 128, 3)
    expected = source.pixel_array.astype(np.float32).T * float(source.RescaleSlope) + float(
        source.RescaleIntercept
    )
    assert np.array_equal(volume.array[:, :, 0], expected)
    assert volume.spacing == pytest.approx((0.661468, 0.661468, 5.0))
    assert volume.array.min() >= -1024 and volume.array.max() > 0  # HU
    folder = DicomFolder(tmp_path / "series")
    assert folder[0].shape == (1, 128, 128, 3)
    (series / "broken.dcm").write_bytes(b"not dicom")
    with pytest.raises(ValueError, match=r"cannot read DICOM file '.*broken.dcm'"):
        read_dicom_series(series)


def test_pretraining_pools_exclude_labelled_cases_by_default(task07: Path, tmp_path: Path) -> None:
    from pretext3d.provenance import overlapping_cases

    labelled = Task07Pancreas(task07, preprocessing=RAW).case_ids
    pool = Task07Pancreas.unlabelled(task07, preprocessing=RAW).case_ids
    assert pool == ["pancreas_004", "pancreas_005"] and not overlapping_cases(pool, labelled)
    everything = Task07Pancreas.unlabelled(task07, include_training=True, preprocessing=RAW).case_ids
    assert set(labelled) <= set(everything)
    # a folder pointed at imagesTr names the same scans; the runner's check matches them
    folder = VolumeFolder(task07 / "imagesTr", preprocessing=RAW).case_ids
    assert overlapping_cases(folder, labelled) == labelled
    aptos = write_aptos_phantom(tmp_path, num_train=4, num_test=2, size=16)
    train, test = APTOS(aptos).case_ids, APTOS(aptos, "test").case_ids
    assert len(train) == 4 and len(test) == 2 and not set(train) & set(test)
    assert FundusFolder(aptos / "train_images").case_ids == [f"{c}.png" for c in sorted(train)]


# --- APTOS and fundus folders --------------------------------------------------------


def test_aptos_round_trip_and_eyepacs(tmp_path: Path) -> None:
    root = write_aptos_phantom(tmp_path, num_train=6, num_test=2, size=48)
    data = APTOS(root, preprocessing=FundusPreprocessing("resize", 32))
    image, grade = data[0]
    assert image.shape == (3, 32, 32) and float(image.min()) >= 0 and float(image.max()) <= 1
    expected = fundus_phantom(0, 48)[1]
    assert int(grade) == expected and data.label_distribution().sum() == pytest.approx(1.0)
    test = APTOS(root, "test")
    assert len(test) == 2 and int(test[0][1]) == -1
    eyepacs = tmp_path / "eyepacs"
    (eyepacs / "train_images").mkdir(parents=True)
    lines = ["image,level"]
    for i, path in enumerate(data.files[:3]):
        Image.open(path).save(eyepacs / "train_images" / f"{i}_left.jpeg")
        lines.append(f"{i}_left,{data.grades[i]}")
    (eyepacs / "train.csv").write_text("\n".join(lines) + "\n")
    assert APTOS(eyepacs).grades == data.grades[:3]


def test_bad_aptos_files(tmp_path: Path) -> None:
    root = write_aptos_phantom(tmp_path, num_train=3, num_test=0, size=32)
    with open(root / "train.csv", "a") as handle:
        handle.write("ghost,2\n")
    with pytest.raises(ValueError, match=r"ghost.png': image for row 5 of train.csv is missing"):
        APTOS(root)
    skipping = APTOS(root, on_error="skip")
    assert len(skipping) == 3 and "ghost" in skipping.skipped[0][0]
    (root / "train.csv").write_text("id_code,diagnosis\n" + f"{skipping.files[0].stem},7\n")
    with pytest.raises(ValueError, match="row 2 has grade '7', expected 0-4"):
        APTOS(root)
    (root / "train.csv").write_text("id_code,diagnosis\n" + f"{skipping.files[0].stem},1\n")
    skipping.files[0].write_bytes(b"\x89PNG broken")
    with pytest.raises(ValueError, match=r"cannot read image file '.*\.png'"):
        APTOS(root)[0]
    (root / "train.csv").write_text("name,grade\nx,1\n")
    with pytest.raises(ValueError, match="must have columns 'id_code,diagnosis'"):
        APTOS(root)


def test_fundus_preprocessing_on_a_real_photograph() -> None:
    photo = np.asarray(Image.open(RETINA).convert("RGB"))
    out = ben_graham(photo, 128)
    assert out.shape == (128, 128, 3) and out.dtype == np.float32
    assert (out[0, 0] == 128).all() and (out[-1, -1] == 128).all()  # outside the circle
    centre = out[40:88, 40:88]
    assert abs(float(centre.mean()) - 128) < 20  # local mean subtracted
    assert float(centre.std()) > 5  # vessels and texture kept
    resized = FundusPreprocessing("resize", 224)(photo)
    assert resized.shape == (3, 224, 224) and resized.max() <= 1


def test_fundus_folder_with_uk_biobank_names(tmp_path: Path) -> None:
    image, _ = fundus_phantom(0, 32)
    Image.fromarray(image).save(tmp_path / "1000017_21015_0_0.png")
    Image.fromarray(image).save(tmp_path / "1000017_21016_0_0.png")
    (tmp_path / "._1000017_21015_0_0.png").write_bytes(b"junk")
    folder = FundusFolder(tmp_path, preprocessing=FundusPreprocessing("resize", 16), ukbiobank=True)
    assert len(folder) == 2 and folder.names is not None and folder.names[1].field == 21016
    assert folder[0].shape == (3, 16, 16)
    Image.fromarray(image).save(tmp_path / "left_eye.png")
    with pytest.raises(ValueError, match="is not named like a UK Biobank image"):
        FundusFolder(tmp_path, ukbiobank=True)


# --- unlabelled volumes, DataLoader ---------------------------------------------------


def test_volume_folder_with_random_crops_in_a_dataloader(tmp_path: Path) -> None:
    for i in range(3):
        case = ct_phantom(i, 20)
        write_nifti(tmp_path / f"scan{i}.nii.gz", case.image, case.affine)
    np.save(tmp_path / "scan3.npy", ct_phantom(3, 20).image)
    (tmp_path / "._scan0.nii.gz").write_bytes(b"junk")
    folder = VolumeFolder(
        tmp_path, preprocessing=CTPreprocessing(spacing=None, crop=None), patch_size=(16, 16, 16)
    )
    assert len(folder) == 4
    loader = torch.utils.data.DataLoader(folder, batch_size=4, num_workers=2)
    batch = next(iter(loader))
    assert batch.shape == (4, 1, 16, 16, 16) and batch.dtype == torch.float32
    views, labels = p3.tasks.Rotation(3)(batch)
    assert views.shape == batch.shape and labels.shape == (4,)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no \.nii, \.nii\.gz or \.npy files"):
        VolumeFolder(tmp_path / "empty")


def test_optional_readers_say_which_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = importlib.import_module

    def fake_import(name: str, *args: object) -> object:
        if name.startswith("nibabel"):
            raise ImportError("No module named 'nibabel'")
        return real_import(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib, "import_module", fake_import)
    with pytest.raises(ImportError, match=r"pip install 'pretext3d\[nifti\]'"):
        require("nibabel")


# --- optional: Debian's real brain templates where installed --------------------------


@pytest.mark.skipif(not (MRICRON / "ch2.nii.gz").exists(), reason="Debian package mricron-data not installed")
def test_colin27_with_the_aal_atlas() -> None:
    t1, atlas = read_nifti(MRICRON / "ch2.nii.gz"), read_nifti(MRICRON / "aal.nii.gz")
    assert t1.array.shape == atlas.array.shape
    resampled = resample_to_spacing(atlas.array, atlas.spacing, (3.0, 3.0, 3.0), label=True)
    assert set(np.unique(resampled)) <= set(np.unique(atlas.array))
    assert len(np.unique(resampled)) > 100  # the AAL regions survive 3 mm


@pytest.mark.skipif(not ITK_T1.exists(), reason="Debian package insighttoolkit5-examples not installed")
def test_itk_head_t1_is_reoriented() -> None:
    raw = nib.load(ITK_T1)
    assert nib.aff2axcodes(raw.affine) != ("R", "A", "S")
    volume = read_nifti(ITK_T1)
    assert nib.aff2axcodes(volume.affine) == ("R", "A", "S")
    assert sorted(volume.array.shape) == sorted(raw.shape) and sorted(volume.spacing) == [2.0, 2.0, 3.0]


def test_write_nifti_makes_the_folders_it_needs(tmp_path: Path) -> None:
    array = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    path = tmp_path / "new" / "deeper" / "scan.nii.gz"
    write_nifti(path, array, np.diag([0.8, 0.8, 2.0, 1.0]))
    np.testing.assert_array_equal(p3.data.read_nifti(path).array, array)


def test_modality_presets_by_hand() -> None:
    rng = np.random.default_rng(0)
    mr = rng.gamma(2.0, 300.0, size=(20, 18, 12)).astype(np.float32)  # MR-like: no absolute scale
    mr[0, 0, 0] = 1e6  # a hot voxel
    image, _ = CTPreprocessing.preset("mr", dtype="float32")(mr, (1.0, 1.0, 3.0))
    low, high = np.percentile(mr, [0.5, 99.5])
    clipped = np.clip(mr, low, high)
    expected = (clipped - clipped.mean()) / clipped.std()
    assert image.shape == mr.shape  # no resampling, crop or resize
    np.testing.assert_allclose(image, expected, rtol=1e-4, atol=1e-4)
    untouched, _ = CTPreprocessing.preset("none", dtype="float32")(mr, (1.0, 1.0, 3.0))
    np.testing.assert_array_equal(untouched, mr)
    with pytest.raises(ValueError, match='normalize="minmax" scales the window'):
        CTPreprocessing(window=None, normalize="minmax")


def test_a_volume_folder_keeps_what_its_preprocessing_does_not_ask_to_change(tmp_path: Path) -> None:
    mr = np.random.default_rng(1).normal(500, 100, size=(96, 96, 64)).astype(np.float32)
    write_nifti(tmp_path / "scans" / "mr_001.nii.gz", mr, np.diag([1.0, 1.0, 2.0, 1.0]))
    spec = DataSpec(kind="volume-folder", path=str(tmp_path / "scans"), size=48,
                    preprocessing={"modality": "mr"})  # fmt: skip
    image = spec.unlabelled()[0]
    assert image.shape == (1, 96, 96, 64)  # the CT pipeline made it 48^3
    assert abs(float(image.mean())) < 1e-3 and abs(float(image.std()) - 1) < 1e-2
    options = {"modality": "mr", "spacing": [2.0, 2.0, 2.0], "resize": False}
    resampled = DataSpec(kind="volume-folder", path=str(tmp_path / "scans"), size=48, preprocessing=options)
    assert resampled.unlabelled()[0].shape == (1, 48, 48, 64)
    # the paper's CT pipeline is still Task07's default (and its cache key unchanged)
    task07 = DataSpec(kind="task07", path="data/Task07_Pancreas", size=128)
    assert task07.volume_preprocessing() == CTPreprocessing(resize=(128, 128, 128), dtype="float32")


def test_the_phantoms_tube_distance_is_the_plain_formula_bit_for_bit() -> None:
    from pretext3d.data.phantoms import _tube

    rng = np.random.default_rng(0)
    coords = rng.uniform(-1, 1, size=(3, 30, 20, 17))  # 10,200 voxels: more than one block
    curve, radius = rng.uniform(-0.3, 0.3, size=(24, 3)), rng.uniform(0.05, 0.2, size=24)
    flat = coords.reshape(3, -1).T
    d2 = ((flat[:, None, :] - curve[None, :, :]) ** 2).sum(-1)  # the phantoms' formula before the speed-up
    nearest = d2.argmin(1)
    ratio = (np.sqrt(d2[np.arange(len(flat)), nearest]) / radius[nearest]).reshape(30, 20, 17)
    got = _tube(coords, curve, radius)
    measured = np.isfinite(got)  # the voxels near the curve's box; the others are outside the tube
    np.testing.assert_array_equal(got[measured], ratio[measured])
    assert (ratio[~measured] > 1).all() and 0 < measured.mean() < 0.5 and (got < 1).any()


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_the_phantoms_smooth_noise_is_scipys_cubic_zoom(spatial_dims: int) -> None:
    from pretext3d.data.phantoms import _smooth_noise

    shape = (37, 20, 9)[:spatial_dims]
    for coarse in (3, 4, 8):
        grid = np.random.default_rng(coarse).standard_normal((coarse,) * spatial_dims)
        zoomed = ndimage.zoom(grid, [n / coarse for n in shape], order=3, grid_mode=True, mode="nearest")
        field = _smooth_noise(np.random.default_rng(coarse), shape, coarse)  # draws the same grid
        assert field.shape == shape
        np.testing.assert_allclose(field, zoomed, rtol=0, atol=1e-12)  # the same field, to rounding


def test_the_phantoms_are_the_same_images_as_before_the_speed_up() -> None:
    """Pinned: these digests are of the phantoms as drawn before issue 28 (the speed-ups change no voxel)."""
    import hashlib

    def digest(*arrays: np.ndarray) -> str:
        return hashlib.sha256(b"".join(a.tobytes() for a in arrays)).hexdigest()[:16]

    cases = {(0, 24): "e2b611830357595e", (1, (40, 36, 20)): "656ad010c014feb8", (2, 32): "a72620b67344d4a7"}
    for (seed, size), expected in cases.items():
        case = ct_phantom(seed, size)
        assert digest(case.image, case.label) == expected, (seed, size)
    photos = [  # seed k, grade min(k, 4); seed 5 draws laser scars
        "8cd11942a2787377",
        "bed068257c7058c0",
        "1ab93fe1bb71a80d",
        "8ed4f5983c365cb9",
        "89004e91479cca18",
        "89c5916b1ef0deb5",
    ]
    for seed, expected in enumerate(photos):
        assert digest(fundus_phantom(seed, 96, grade=min(seed, 4))[0]) == expected, seed
