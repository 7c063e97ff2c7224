"""Your labelled scans: a labelled volume folder, class names, per-class metrics, an honest report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import pretext3d as p3
from pretext3d.data import DataSpec
from pretext3d.data.io import write_nifti
from pretext3d.experiments import SegmentationRecipe, recipe_for
from pretext3d.finetune import TrainConfig

pytest.importorskip("nibabel")


def _folder(root: Path, cases: int = 8, nnunet: bool = False, names: dict[str, int] | None = None) -> Path:
    """Cases of MR-like noise with a bright cube (label 1) and a dark one (label 2)."""
    rng = np.random.default_rng(0)
    images, labels = ("imagesTr", "labelsTr") if nnunet else ("images", "labels")
    for i in range(cases):
        image = rng.normal(300, 30, size=(20, 20, 12)).astype(np.float32)
        label = np.zeros(image.shape, np.uint8)
        a, b = 2 + i % 5, 10 + i % 4
        label[a : a + 5, a : a + 5, 3:8], label[b : b + 5, b : b + 5, 3:8] = 1, 2
        image[label == 1] += 200
        image[label == 2] -= 150
        suffix = "_0000" if nnunet else ""
        write_nifti(root / images / f"case{i:02d}{suffix}.nii.gz", image, np.diag([1.0, 1.0, 2.0, 1.0]))
        write_nifti(root / labels / f"case{i:02d}.nii.gz", label, np.diag([1.0, 1.0, 2.0, 1.0]))
    if names is not None:
        (root / "dataset.json").write_text(json.dumps({"labels": names}))
    return root


@pytest.mark.parametrize("nnunet", [False, True])
def test_a_labelled_volume_folder_pairs_scans_and_names_its_classes(tmp_path: Path, nnunet: bool) -> None:
    names = {"background": 0, "liver": 1, "lesion": 2} if nnunet else None  # nnU-Net v2's dataset.json
    root = _folder(tmp_path, nnunet=nnunet, names=names)
    classes = [] if nnunet else ["background", "liver", "lesion"]
    spec = DataSpec(kind="labelled-volume-folder", path=str(root), classes=classes,
                    preprocessing={"modality": "mr"})  # fmt: skip
    assert spec.class_names() == ["background", "liver", "lesion"]
    images, labels, ids = spec.labelled()
    assert images.shape == (8, 1, 20, 20, 12) and labels.shape == (
        8,
        20,
        20,
        12,
    )  # not resampled, not resized
    assert ids == [f"case{i:02d}" for i in range(8)] and sorted(labels.unique().tolist()) == [0, 1, 2]
    recipe = recipe_for(spec, {"segmentation": SegmentationRecipe(widths=(4, 8), crop=None)})
    assert recipe.classes == ("background", "liver", "lesion") and recipe.metric == "mean_dice"


def test_per_class_dice_by_hand_and_a_report_that_names_the_data(tmp_path: Path) -> None:
    recipe = SegmentationRecipe(widths=(4, 8), crop=None, classes=("background", "liver", "lesion"))
    labels = torch.zeros(2, 8, 8, 4, dtype=torch.long)
    labels[0, :4], labels[1, :4], labels[0, 4:, :2] = 1, 1, 2  # case 1 has no lesion
    perfect = torch.nn.functional.one_hot(labels, 3).permute(0, 4, 1, 2, 3).float() * 10

    class Oracle(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return perfect[: len(x)]

    summary, per_case = recipe.score_cases(Oracle(), torch.zeros(2, 1, 8, 8, 4), labels)
    assert summary == {"liver_dice": 1.0, "lesion_dice": 1.0, "mean_dice": 1.0}
    assert per_case["lesion_dice"][0] == 1.0 and np.isnan(per_case["lesion_dice"][1])  # no lesion: no Dice
    root = _folder(tmp_path / "data", names={"0": "background", "1": "liver", "2": "lesion"})
    spec = DataSpec(kind="labelled-volume-folder", path=str(root), preprocessing={"modality": "mr"})
    images, labels, _ = spec.labelled()
    config = p3.experiments.DataEfficiencyConfig(
        fractions=(1.0,), split_seeds=(0,), train=TrainConfig(epochs=1, steps_per_epoch=1, batch_size=2)
    )
    out = tmp_path / "grid"
    rows = p3.experiments.run_data_efficiency(
        recipe_for(spec, {"segmentation": SegmentationRecipe(widths=(4, 8), crop=None)}), images, labels,
        {"scratch": None}, config, out, data_info={"kind": spec.kind, "path": spec.path}, progress=False,
    )  # fmt: skip
    assert sorted(rows[0]["test"]) == ["lesion_dice", "liver_dice", "mean_dice"]
    p3.experiments.write_report(rows, out, "mean_dice", synthetic=False)
    summary_md = (out / "summary.md").read_text()
    assert "Real data (data.kind = 'labelled-volume-folder')." in summary_md and "Task07" not in summary_md


def test_what_a_labelled_folder_cannot_hold_is_named(tmp_path: Path) -> None:
    root = _folder(tmp_path, cases=2)
    (root / "images" / "orphan.nii.gz").write_bytes((root / "images" / "case00.nii.gz").read_bytes())
    spec = DataSpec(kind="labelled-volume-folder", path=str(root), preprocessing={"modality": "mr"})
    with pytest.raises(ValueError, match=r"orphan\.nii\.gz' has no label map orphan\.nii\.gz"):
        spec.labelled()
    (root / "images" / "orphan.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"holds values \[0, 1, 2\], but the classes name 2"):
        DataSpec(kind="labelled-volume-folder", path=str(root), preprocessing={"modality": "mr"},
                 classes=["background", "liver"]).labelled()  # fmt: skip
    with pytest.raises(ValueError, match="pretrain on other scans"):
        spec.unlabelled()
    with pytest.raises(ValueError, match=r"data\.classes names the labels of labelled-volume-folder, "):
        DataSpec(kind="ct-phantom", classes=["background", "pancreas"])


def test_a_volume_folder_at_an_nnunet_root_refuses_its_label_maps(tmp_path: Path) -> None:
    """Pointed at a dataset root, a volume-folder would pretrain on labelsTr/ as images: refused, by name."""
    root = _folder(tmp_path / "Dataset001", nnunet=True)
    write_nifti(root / "imagesTs" / "new_0000.nii.gz", np.zeros((20, 20, 12), np.float32), np.eye(4))
    spec = DataSpec(kind="volume-folder", path=str(root), preprocessing={"modality": "mr"})
    with pytest.raises(ValueError, match=r"holds label maps \(8 files under labelsTr/\).*imagesTs/"):
        spec.unlabelled()
    pool = DataSpec(
        kind="volume-folder", path=str(root / "imagesTs"), preprocessing={"modality": "mr"}
    ).unlabelled()
    assert len(pool) == 1  # the unlabelled scans, as the message says


@pytest.mark.parametrize("change", ["shifted", "coarser"])
def test_issue_39_a_label_off_its_image_grid_is_refused(tmp_path: Path, change: str) -> None:
    root = _folder(tmp_path, cases=2)
    label = root / "labels" / "case01.nii.gz"
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    if change == "shifted":
        affine[0, 3] = 10.0  # 10 mm off
    else:
        affine[:3, :3] *= 2  # 2 mm voxels over the 1 mm image, the same shape
    write_nifti(label, p3.data.io.read_volume(label).array, affine)
    spec = DataSpec(kind="labelled-volume-folder", path=str(root), preprocessing={"modality": "mr"})
    with pytest.raises(ValueError, match=r"case01\.nii\.gz' and image .* differ in geometry"):
        spec.labelled()


def test_issue_39_a_labelled_volume_folder_needs_its_modality(tmp_path: Path) -> None:
    root = str(_folder(tmp_path, cases=2))
    with pytest.raises(ValueError, match=r"modality must be given for a labelled-volume-folder"):
        DataSpec(kind="labelled-volume-folder", path=root)


def test_issue_39_a_dataset_json_or_channel_it_cannot_read_is_named(tmp_path: Path) -> None:
    for text, named in [
        (json.dumps({"labels": {"background": 0, "whole": [1, 2]}}), "region labels"),
        (json.dumps({"labels": ["background", "box"]}), '"labels" is a list'),
        ('{"labels": {"0": "background"', "is not a readable dataset.json"),
    ]:
        root = _folder(tmp_path / named.replace(" ", "_").replace('"', ""), cases=2)
        (root / "dataset.json").write_text(text)
        spec = DataSpec(kind="labelled-volume-folder", path=str(root), preprocessing={"modality": "mr"})
        with pytest.raises(ValueError, match=rf"dataset\.json.*{named}"):
            spec.class_names()
    root = _folder(tmp_path / "channels", cases=2, nnunet=True)
    second = root / "imagesTr" / "case00_0001.nii.gz"
    second.write_bytes((root / "imagesTr" / "case00_0000.nii.gz").read_bytes())
    spec = DataSpec(kind="labelled-volume-folder", path=str(root), preprocessing={"modality": "mr"})
    with pytest.raises(ValueError, match=r"case00_0001\.nii\.gz' is a second image channel"):
        spec.labelled()
