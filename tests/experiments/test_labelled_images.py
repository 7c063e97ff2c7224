"""Your labelled 2D images: a labels.csv or class folders, grading or classification, named metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pretext3d.cli import main
from pretext3d.data import DataSpec, FundusPreprocessing, LabelledImageFolder, write_png
from pretext3d.experiments import ClassificationRecipe, GradingRecipe, SegmentationRecipe, recipe_for

pytest.importorskip("PIL")

NAMES = ["circle", "square", "stripes"]


def _image(kind: int, rng: np.random.Generator) -> np.ndarray:
    """Noise with a bright square (0), vertical stripes (1) or horizontal stripes (2)."""
    image = rng.integers(0, 60, (20, 24, 3)).astype(np.uint8)
    if kind == 0:
        image[5:15, 5:15] += 150
    elif kind == 1:
        image[:, ::4] += 150
    else:
        image[::4] += 150
    return image


def _table(root: Path, count: int = 18, unlabelled: int = 3, label: str = "name") -> Path:
    """``images/imgNN.png`` and a labels.csv naming each class (or numbering it); the last rows unlabelled."""
    rng = np.random.default_rng(0)
    rows = ["image,label"]
    for i in range(count + unlabelled):
        write_png(root / "images" / f"img{i:02d}.png", _image(i % 3, rng))
        value = (NAMES[i % 3] if label == "name" else str(i % 3)) if i < count else ""
        rows.append(f"images/img{i:02d}{'.png' if i % 2 else ''},{value}")  # the suffix may be left out
    (root / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8-sig")  # Excel's BOM
    return root


def _class_folders(root: Path, names: list[str], per_class: int = 4) -> Path:
    rng = np.random.default_rng(1)
    for k, name in enumerate(names):
        for i in range(per_class):
            write_png(root / name / f"{i}.png", _image(k % 3, rng))
    return root


def test_a_table_names_classes_numbers_labels_and_keeps_unlabelled_rows_apart(tmp_path: Path) -> None:
    root = _table(tmp_path)
    images = LabelledImageFolder(root, preprocessing=FundusPreprocessing(size=16))
    assert images.classes == NAMES and images.labels == [i % 3 for i in range(18)]
    assert images.case_ids[:2] == ["images/img00.png", "images/img01.png"]
    image, label = images[4]
    assert (
        image.shape == (3, 16, 16) and int(label) == 1 and 0 <= float(image.min()) <= float(image.max()) <= 1
    )
    pool = LabelledImageFolder(root, "unlabelled")
    assert pool.case_ids == ["images/img18.png", "images/img19.png", "images/img20.png"]
    assert pool.labels == [-1, -1, -1] and len(LabelledImageFolder(root, "all")) == 21
    # the table may be named; the classes' order may be given (labels by name or number)
    given = LabelledImageFolder(root / "labels.csv", classes=["stripes", "square", "circle"])
    assert given.labels[:3] == [2, 1, 0]
    numbered = LabelledImageFolder(_table(tmp_path / "numbers", label="number"), classes=NAMES, ordered=True)
    assert numbered.labels == images.labels and numbered.classes == NAMES
    assert LabelledImageFolder(tmp_path / "numbers", ordered=True).classes == ["0", "1", "2"]


def test_class_folders_are_classes_in_number_order_when_numbered(tmp_path: Path) -> None:
    named = LabelledImageFolder(_class_folders(tmp_path / "named", ["owl", "cat", "dog"]))
    assert named.classes == ["cat", "dog", "owl"] and named.labels == [0] * 4 + [1] * 4 + [2] * 4
    assert (
        named.case_ids[0] == "cat/0.png" and len(LabelledImageFolder(tmp_path / "named", "unlabelled")) == 0
    )
    graded = LabelledImageFolder(_class_folders(tmp_path / "graded", ["0", "1", "2", "10"], 1), ordered=True)
    assert graded.classes == [str(k) for k in range(11)]  # grade 10 is 10, not between 1 and 2
    assert graded.labels == [0, 1, 10, 2]
    with pytest.raises(ValueError, match=r"names its grades \(\['cat', 'dog', 'owl'\]\).*lowest first"):
        LabelledImageFolder(tmp_path / "named", ordered=True)
    assert LabelledImageFolder(tmp_path / "named", classes=["owl", "cat", "dog"], ordered=True).labels[0] == 1


def test_what_a_labelled_image_folder_cannot_hold_is_named(tmp_path: Path) -> None:
    root = _table(tmp_path / "t", count=6, unlabelled=0)
    table = root / "labels.csv"
    rows = table.read_text(encoding="utf-8-sig")
    table.write_text(rows + "images/missing.png,circle\n")
    with pytest.raises(ValueError, match=r"row 8: no image file 'images/missing.png'"):
        LabelledImageFolder(root)
    table.write_text(rows + "images/img01.png,square\n")
    with pytest.raises(ValueError, match=r"row 8: image 'images/img01.png' is listed twice"):
        LabelledImageFolder(root)
    table.write_text(rows.replace("square", "sqaure"))
    with pytest.raises(ValueError, match=r"labels \['sqaure'\] that are neither one of the classes"):
        LabelledImageFolder(root, classes=NAMES)
    table.write_text(rows.replace("label", "class", 1))
    with pytest.raises(
        ValueError, match=r"must have the columns 'image' .* and 'label'.*got \['image', 'class'\]"
    ):
        LabelledImageFolder(root)
    table.write_text("image,label\nimages/img00.png,circle\nimages/img01.png,circle\n")
    with pytest.raises(
        ValueError, match=r"holds one class \(\['circle'\]\): classification needs at least two"
    ):
        LabelledImageFolder(root)
    folders = _class_folders(tmp_path / "f", ["cat", "dog"], 1)
    write_png(folders / "stray.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match=r"images outside the class sub-folders \(\['stray.png'\]\)"):
        LabelledImageFolder(folders)
    (folders / "stray.png").unlink()
    (folders / "owl").mkdir()
    with pytest.raises(ValueError, match=r"class folder '.*owl' holds no \.png"):
        LabelledImageFolder(folders)
    with pytest.raises(ValueError, match="does not exist"):
        LabelledImageFolder(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"split must be one of"):
        LabelledImageFolder(root, "train")


def test_the_data_kinds_name_their_recipe_classes_and_pool(tmp_path: Path) -> None:
    root = _table(tmp_path)
    spec = DataSpec(kind="labelled-image-folder", path=str(root), size=16)
    images, labels, ids = spec.labelled()
    assert (
        images.shape == (18, 3, 16, 16) and labels.tolist() == [i % 3 for i in range(18)] and len(ids) == 18
    )
    assert spec.spatial_dims == 2 and spec.in_channels == 3 and spec.class_names() == NAMES
    recipe = recipe_for(spec)
    assert isinstance(recipe, ClassificationRecipe) and recipe.num_classes == 3
    assert recipe.metric == "balanced_accuracy" and recipe.classes == tuple(NAMES)
    pool = spec.unlabelled()
    assert len(pool) == 3 and pool[0].shape == (3, 16, 16) and pool.case_ids[0] == "images/img18.png"  # type: ignore[attr-defined]
    both = DataSpec(kind="labelled-image-folder", path=str(root), size=16, include_labelled=True).unlabelled()
    assert len(both) == 21
    graded = DataSpec(kind="graded-image-folder", path=str(root), classes=["square", "circle", "stripes"])
    recipe = recipe_for(graded)
    assert type(recipe) is GradingRecipe and recipe.metric == "qwk" and recipe.num_classes == 3
    assert graded.labelled()[1][:3].tolist() == [1, 0, 2]  # in the order given
    with pytest.raises(ValueError, match="names its grades"):
        DataSpec(kind="graded-image-folder", path=str(root)).labelled()
    folders = DataSpec(kind="labelled-image-folder", path=str(_class_folders(tmp_path / "f", ["cat", "dog"])))
    with pytest.raises(ValueError, match=r"leaves no image unlabelled.*include_labelled = true"):
        folders.unlabelled()


def test_per_class_recall_balanced_accuracy_and_what_a_recipe_refuses() -> None:
    recipe = ClassificationRecipe(
        classes=("cat", "dog", "owl"), growth_rate=4, block_config=(1,), init_features=4
    )
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    guesses = torch.tensor([0, 0, 0, 1, 1, 1, 0, 0])  # recall 3/4, 2/2, 0/2

    class Fixed(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.one_hot(guesses[: len(x)], 3).float()

    summary, per_case = recipe.score_cases(Fixed(), torch.zeros(8, 3, 8, 8), labels)
    assert summary == pytest.approx(
        {"balanced_accuracy": (0.75 + 1 + 0) / 3, "accuracy": 5 / 8, "cat_recall": 0.75, "dog_recall": 1.0,
         "owl_recall": 0.0}
    )  # fmt: skip
    assert per_case["correct"] == [1, 1, 1, 0, 1, 1, 0, 0] and per_case["label"][-1] == 2
    grading = GradingRecipe(
        classes=("none", "mild", "severe"), growth_rate=4, block_config=(1,), init_features=4
    )
    summary, _ = grading.score_cases(Fixed(), torch.zeros(8, 3, 8, 8), labels)
    assert summary["none_recall"] == 0.75 and summary["severe_recall"] == 0.0 and "qwk" in summary
    with pytest.raises(ValueError, match=r"encoding must be 'ce' for unordered classes.*graded-image-folder"):
        ClassificationRecipe(encoding="ordinal")
    with pytest.raises(ValueError, match=r"num_classes = 4, but the classes name 3 \(cat, dog, owl\)"):
        ClassificationRecipe(num_classes=4, classes=("cat", "dog", "owl"))
    with pytest.raises(ValueError, match=r"num_classes = 2, but the classes name 3"):
        SegmentationRecipe(num_classes=2, classes=("background", "liver", "lesion"))
    with pytest.raises(ValueError, match="each once"):
        GradingRecipe(classes=("mild", "mild"))


@pytest.mark.parametrize("kind", ["labelled-image-folder", "graded-image-folder"])
def test_the_command_line_fine_tunes_a_labelled_image_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    root = _table(tmp_path / "data", count=24, unlabelled=0, label="number")
    table = "classification" if kind == "labelled-image-folder" else "grading"
    out = tmp_path / "grid"
    args = [
        "data-efficiency", "--defaults", "--set", f'output_dir="{out}"',
        "--set", f'data={{kind = "{kind}", path = "{root}", size = 16, classes = {json.dumps(NAMES)}}}',
        "--set", "experiment.fractions=[1.0]", "--set", "experiment.split_seeds=[0]",
        "--set", "experiment.train={epochs = 1, steps_per_epoch = 2, batch_size = 4}",
        "--set", "experiment.baseline_train={epochs = 1, steps_per_epoch = 2, batch_size = 4}",
        "--set", f"{table}={{growth_rate = 4, block_config = [1], init_features = 4}}",
    ]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    results = (out / "results.csv").read_text()
    metric = "balanced_accuracy" if table == "classification" else "qwk"
    assert metric in results and "circle_recall" in results and "stripes_recall" in results
    summary = (out / "summary.md").read_text()
    assert (
        f"Real data (data.kind = '{kind}')." in summary
        and f"(`{metric}`)" in summary
        and "APTOS" not in summary
    )


def test_grey_images_are_read_with_one_channel_end_to_end(tmp_path: Path) -> None:
    """data.channels = 1: grey images, a 1-channel encoder, a model whose predictions read grey files."""
    root = _table(tmp_path / "data")
    spec = DataSpec(kind="labelled-image-folder", path=str(root), size=16, channels=1)
    images, _, _ = spec.labelled()
    rgb, _, _ = DataSpec(kind="labelled-image-folder", path=str(root), size=16).labelled()
    assert images.shape == (18, 1, 16, 16) and spec.in_channels == 1
    assert torch.allclose(images[:, 0], rgb.mean(1), atol=1e-6)  # the mean of R, G and B
    assert (
        "channels" not in DataSpec(kind="labelled-image-folder", path=str(root)).settings()
    )  # old folders continue
    with pytest.raises(ValueError, match=r"data\.channels applies to images read from files"):
        DataSpec(kind="ct-phantom", channels=1)
    with pytest.raises(ValueError, match=r"data\.channels must be 0"):
        DataSpec(kind="aptos", path="a", channels=2)
    out = tmp_path / "ft"
    small = "classification={growth_rate=4, block_config=[1, 1], init_features=8}"
    assert main(["finetune", "--defaults", "--set", f"output_dir={out}", "--set", "device=cpu",
                 "--set", f'data={{kind="labelled-image-folder", path="{root}", size=16, channels=1}}',
                 "--set", "train={epochs=1, steps_per_epoch=1, batch_size=4}",
                 "--set", small]) == 0  # fmt: skip
    assert main(["predict", "--model", str(out / "model.pt"), "--input", str(root / "images"),
                 "--output", str(tmp_path / "pred")]) == 0  # fmt: skip
    assert len((tmp_path / "pred" / "predictions.csv").read_text().splitlines()) == 1 + 21


def test_issue_39_what_was_silent_or_unclear_in_a_labels_table(tmp_path: Path) -> None:
    root = _table(tmp_path / "t", count=4, unlabelled=0, label="number")
    table = root / "labels.csv"
    # every label one value: one class present, where classes 0 and 1 were reported
    table.write_text("image,label\nimages/img00.png,1\nimages/img01.png,1\n")
    with pytest.raises(
        ValueError, match=r"labels every image '1': classification needs images of at least two"
    ):
        LabelledImageFolder(root)
    # i0 for i0.PNG: the suffix is found whatever its case
    (root / "images" / "img02.png").rename(root / "images" / "IMG02.PNG")
    table.write_text("image,label\nimages/img00,0\nimages/IMG02,1\n")
    assert [p.name for p in LabelledImageFolder(root).files] == ["img00.png", "IMG02.PNG"]
    # an absolute path, a path out of the folder, and a root that is a plain file
    table.write_text(f"image,label\n{root / 'images' / 'img00.png'},0\nimages/img01.png,1\n")
    with pytest.raises(ValueError, match=r"row 2: image .* must be a path relative to the table's folder"):
        LabelledImageFolder(root)
    table.write_text("image,label\n../outside.png,0\nimages/img01.png,1\n")
    with pytest.raises(ValueError, match=r"row 2: image '\.\./outside\.png' must be a path relative"):
        LabelledImageFolder(root)
    with pytest.raises(ValueError, match=r"is a file: give the folder"):
        LabelledImageFolder(root / "images" / "img00.png")


def test_issue_39_recipe_classes_that_contradict_the_data_are_refused(tmp_path: Path) -> None:
    root = _class_folders(tmp_path / "f", ["cat", "dog", "owl"], 2)
    spec = DataSpec(kind="labelled-image-folder", path=str(root), size=16)
    assert spec.class_names() == ["cat", "dog", "owl"]
    for given in (("dog", "cat", "owl"), ("a", "b")):  # another order; another count
        with pytest.raises(
            ValueError, match=r"\[classification\] classes = .* numbered as \['cat', 'dog', 'owl'\]"
        ):
            recipe_for(spec, {"classification": ClassificationRecipe(classes=given)})
    assert recipe_for(spec, {"classification": ClassificationRecipe(classes=("cat", "dog", "owl"))}).classes
    numbered = _table(tmp_path / "n", count=6, unlabelled=0, label="number")
    named = recipe_for(
        DataSpec(kind="labelled-image-folder", path=str(numbered), size=16),
        {"classification": ClassificationRecipe(classes=("round", "square", "cross"))},
    )
    assert named.classes == ("round", "square", "cross")  # numbered labels may be named by the recipe
