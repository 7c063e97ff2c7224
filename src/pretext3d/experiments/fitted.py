"""Fine-tuned models: written by the fine-tuning runs, loaded, and applied to new images.

A model file rebuilds its network the way its run built it: the registered recipe with its
settings (:meth:`~pretext3d.experiments.Recipe.build`), the weights of the epoch it was
selected on, and the data settings that say how an input is prepared (the scans'
preprocessing, the images' size). :func:`predict` reads new scans or images, prepares them as
the training cases were, and writes what the model says: for segmentation a label map per
scan on the scan's own voxel grid (the preprocessing undone, the input's orientation and
affine), for grading and classification one CSV row per image with the class and each class's
probability.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pretext3d._atomic import atomic_path, load_torch, save_torch, write_text
from pretext3d._version import __version__
from pretext3d.data._optional import require
from pretext3d.data.io import Volume, read_nifti, read_rgb, read_volume, write_nifti
from pretext3d.data.preprocess import FundusPreprocessing, Geometry
from pretext3d.data.spec import SCAN_FILE, DataSpec, case_stem
from pretext3d.engine import resolve_device
from pretext3d.experiments.recipes import GradingRecipe, Recipe, SegmentationRecipe
from pretext3d.registry import RECIPES

__all__ = ["FineTunedModel", "load_model", "predict", "save_model"]

_FORMAT = "pretext3d-model-v1"
_IMAGES = re.compile(r"\.(png|jpe?g)$", re.IGNORECASE)
#: scans with a side longer than this are predicted by sliding windows of it (the paper's 128^3
#: input), unless the recipe sets its inference_window
LARGE = 128


@dataclass
class FineTunedModel:
    """A fine-tuned network with what it needs to be applied: its recipe and its data settings.

    Attributes:
        network: the model, in eval mode, on the CPU.
        recipe: the recipe that built and trained it.
        data: the data settings it was trained on (kind, size, preprocessing, classes).
        in_channels: the channels an input must have.
        record: how it was selected: ``metric``, ``best_val`` (its validation score),
            ``best_epoch``, ``test`` (the run's test metrics), ``method``, ``fraction``,
            ``n_labelled``, ``split_seed``, ``run``, ``encoder`` and ``pretext3d_version``.

    Examples:
        A fine-tuning run writes one (``pretext3d finetune``: ``<output_dir>/model.pt``); here one
        of an untrained U-Net, applied to prepared volumes:

        >>> recipe = p3.experiments.SegmentationRecipe(widths=(4, 8), crop=None)
        >>> network, _ = recipe.build(in_channels=1, encoder_file=None)
        >>> model = FineTunedModel(network, recipe, p3.data.DataSpec(kind="ct-phantom", size=16), 1, {})
        >>> model.classes, model.predict_tensor(torch.randn(2, 1, 16, 16, 16)).shape   # label maps
        (['class0', 'class1', 'class2'], torch.Size([2, 16, 16, 16]))
    """

    network: nn.Module
    recipe: Recipe
    data: DataSpec
    in_channels: int
    record: dict[str, Any]

    @property
    def spatial_dims(self) -> int:
        """2 for images, 3 for scans."""
        return self.data.spatial_dims

    @property
    def classes(self) -> list[str]:
        """The names of the outputs 0, 1, ... (``class<k>`` where the run named none)."""
        names = tuple(getattr(self.recipe, "classes", ()) or ())
        count = int(getattr(self.recipe, "num_classes", len(names)))
        return list(names) if names else [f"class{k}" for k in range(count)]

    @torch.no_grad()
    def predict_tensor(self, images: Tensor, device: torch.device | str = "cpu") -> Tensor:
        """What the model says about prepared images ``(N, C, *spatial)``.

        Returns:
            Segmentation: label maps ``(N, *spatial)`` (int64). Grading and classification:
            class probabilities ``(N, K)`` (softmax; for the ordinal encoding the differences of
            the cumulative probabilities, made monotone first).
        """
        self.network.to(device).eval()
        if isinstance(self.recipe, SegmentationRecipe):
            return self.recipe.predict(self.network, images, device)
        logits = torch.cat(
            [self.network(images[i : i + 32].to(device)).float().cpu() for i in range(0, len(images), 32)]
        )
        if not isinstance(self.recipe, GradingRecipe) or self.recipe.encoding == "ce":
            return logits.softmax(1)
        above = torch.sigmoid(logits).cummin(1).values  # P(grade > k), k = 0..K-2, made monotone
        ones, zeros = torch.ones(len(above), 1), torch.zeros(len(above), 1)
        return torch.cat([ones, above], 1) - torch.cat([above, zeros], 1)


def save_model(
    path: str | os.PathLike[str],
    network: nn.Module,
    recipe: Recipe,
    data: DataSpec,
    in_channels: int,
    record: Mapping[str, Any] | None = None,
) -> None:
    """Write a fine-tuned model that :func:`load_model` rebuilds (atomically).

    Args:
        path: the file (``torch.save`` format, readable with ``weights_only=True``).
        network: the model ``recipe.build(in_channels, None)`` makes, with its trained weights.
        recipe: a registered recipe (:data:`~pretext3d.registry.RECIPES`).
        data: the data settings it was trained on.
        in_channels: its input channels.
        record: how it was selected (see :attr:`FineTunedModel.record`).

    Examples:
        >>> recipe = p3.experiments.GradingRecipe(growth_rate=4, block_config=(1, 1), init_features=8)
        >>> network, _ = recipe.build(in_channels=3, encoder_file=None)
        >>> save_model("grader.pt", network, recipe, p3.data.DataSpec(kind="fundus-phantom", size=32), 3)
        >>> model = load_model("grader.pt")
        >>> probabilities = model.predict_tensor(torch.rand(2, 3, 32, 32))   # (N, classes)
        >>> model.classes, probabilities.shape, torch.allclose(probabilities.sum(1), torch.ones(2))
        (['class0', 'class1', 'class2', 'class3', 'class4'], torch.Size([2, 5]), True)
    """
    name = RECIPES.name_of(type(recipe))
    if name is None:
        raise ValueError(
            "recipe must be a registered recipe (pretext3d.registry.register_recipe) so that the model "
            f"can be rebuilt, got an unregistered {type(recipe).__name__}"
        )
    payload = {
        "format": _FORMAT,
        "pretext3d_version": __version__,
        "recipe": name,
        "recipe_settings": _plain(dataclasses.asdict(recipe)),  # type: ignore[call-overload]
        "data": _plain(dataclasses.asdict(data)),
        "in_channels": int(in_channels),
        "record": _plain(dict(record or {})),
        "state_dict": {k: v.detach().cpu() for k, v in network.state_dict().items()},
    }
    save_torch(path, payload)


def load_model(path: str | os.PathLike[str]) -> FineTunedModel:
    """Rebuild a model written by :func:`save_model` (``pretext3d finetune`` writes one per run).

    Raises:
        ValueError: the file is missing or not a model file, or its recipe or data kind is not
            registered here (import the plugin that registers it first).

    Examples:
        >>> recipe = p3.experiments.GradingRecipe(growth_rate=4, block_config=(1, 1), init_features=8)
        >>> network, _ = recipe.build(in_channels=3, encoder_file=None)
        >>> save_model("graded.pt", network, recipe, p3.data.DataSpec(kind="fundus-phantom", size=32), 3,
        ...            {"metric": "qwk", "best_val": 0.8})
        >>> model = load_model("graded.pt")
        >>> type(model.recipe).__name__, model.in_channels, model.record["best_val"]
        ('GradingRecipe', 3, 0.8)
        >>> load_model("missing.pt")
        Traceback (most recent call last):
        ValueError: model file 'missing.pt' does not exist
    """
    payload = load_torch(path, "model file", "a model file written by pretext3d")
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        hint = " (it is an encoder file: fine-tune it first)" if isinstance(payload, dict) and str(
            payload.get("format", "")).startswith("pretext3d-encoder") else ""  # fmt: skip
        raise ValueError(f"{str(path)!r} is not a model file written by pretext3d's fine-tuning{hint}")
    if payload["recipe"] not in RECIPES.names():
        raise ValueError(
            f"model file {str(path)!r} was made by the recipe {payload['recipe']!r}, which is not registered "
            f"here ({', '.join(RECIPES.names())}): import the plugin that registers it first"
        )
    settings = {k: _tuples(v, k) for k, v in payload["recipe_settings"].items()}
    try:
        recipe = RECIPES.get(payload["recipe"])(**settings)
    except TypeError as err:  # a setting this version's recipe does not have
        raise ValueError(
            f"model file {str(path)!r} was written by pretext3d {payload['pretext3d_version']} with recipe "
            f"settings this version's {payload['recipe']!r} recipe does not take: {err}"
        ) from err
    data = DataSpec(**payload["data"])
    network, _ = recipe.build(payload["in_channels"], None)
    network.load_state_dict(payload["state_dict"])
    network.eval()
    return FineTunedModel(network, recipe, data, int(payload["in_channels"]), dict(payload["record"]))


def predict(
    model: FineTunedModel | str | os.PathLike[str],
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    output_dir: str | os.PathLike[str],
    *,
    device: str = "auto",
    window: int | None = None,
) -> list[Path]:
    """Apply a fine-tuned model to new scans or images; write what it says into ``output_dir``.

    Each input is prepared as the model's training cases were: scans in the closest canonical
    orientation through the data's preprocessing (resampling, crop, resize, intensities),
    images through its resize. Segmentation writes ``<name>.nii.gz`` per scan (``.npy`` for a
    ``.npy`` input): the label map put back on the input's voxel grid (the preprocessing's
    resampling, crop and resize undone by nearest neighbour, then the input's orientation),
    with the input's affine (nnU-Net's channel suffix ``_0000`` dropped from the name, as nnU-Net
    names its predictions). Grading and classification write ``predictions.csv``: ``image``,
    ``predicted`` (the class name) and ``p_<class>`` per class.

    Args:
        model: a :class:`FineTunedModel` or a model file.
        inputs: files, or folders whose scans (``.nii.gz``, ``.nii``, ``.npy``) or images
            (``.png``, ``.jpg``, ``.jpeg``) are all read.
        output_dir: where the predictions go (made if missing).
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:i]"``.
        window: segmentation: predict each scan by Gaussian-weighted sliding windows of this
            edge. ``None``: the recipe's ``inference_window``, else windows of 128 voxels for a
            prepared scan with a longer side, else the whole scan at once.

    Returns:
        The files written.

    Raises:
        ValueError: no input of the model's kind, an input that cannot be read (named), or
            images of the wrong dimension or channels.

    Examples:
        >>> recipe = p3.experiments.ClassificationRecipe(classes=("cat", "dog"), growth_rate=4,
        ...                                              block_config=(1, 1), init_features=8)
        >>> network, _ = recipe.build(in_channels=3, encoder_file=None)
        >>> save_model("pets.pt", network, recipe, p3.data.DataSpec(kind="fundus-phantom", size=32), 3)
        >>> p3.data.io.write_png("new/a.png", np.zeros((40, 40, 3), np.uint8))
        >>> predict("pets.pt", "new", "out", device="cpu")
        [PosixPath('out/predictions.csv')]
        >>> Path("out/predictions.csv").read_text().splitlines()[0]
        'image,predicted,p_cat,p_dog'
    """
    if not isinstance(model, FineTunedModel):
        model = load_model(model)
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise ValueError(f"window must be None or a positive number of voxels, got {window!r}")
    files = _inputs(inputs, SCAN_FILE if model.spatial_dims == 3 else _IMAGES, model.spatial_dims)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = resolve_device(device)
    if model.spatial_dims == 3:
        return [_predict_scan(model, file, out, target, window) for file in files]
    prep = FundusPreprocessing("resize", model.data.size, channels=1 if model.in_channels == 1 else 3)
    rows = []
    for file in files:
        image = torch.from_numpy(prep(read_rgb(file)))[None]
        if image.shape[1] != model.in_channels:
            raise ValueError(
                f"{str(file)!r} has {image.shape[1]} channels, the model takes {model.in_channels}"
            )
        probabilities = model.predict_tensor(image, target)[0]
        names = model.classes
        rows.append(
            {"image": str(file), "predicted": names[int(probabilities.argmax())],
             **{f"p_{n}": f"{float(p):.6f}" for n, p in zip(names, probabilities, strict=True)}}
        )  # fmt: skip
    table = out / "predictions.csv"
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(table, text.getvalue())
    return [table]


def _predict_scan(
    model: FineTunedModel, file: Path, out: Path, device: torch.device, window: int | None
) -> Path:
    """One scan's label map on its own voxel grid."""
    volume, original_affine, orientation = _read_scan(file)
    if model.data.info.caches:  # scans: the data's preprocessing, its geometry kept to undo it
        array, _, geometry = model.data.volume_preprocessing().transform(volume.array, volume.spacing)
    else:  # phantoms: stored as the model sees them
        array, geometry = volume.array.astype(np.float32), Geometry()
    image = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    recipe = model.recipe
    assert isinstance(recipe, SegmentationRecipe)
    edge = window or recipe.inference_window
    if edge is None and max(image.shape[2:]) > LARGE:
        edge = LARGE
    if edge is not None and edge != recipe.inference_window:
        model = dataclasses.replace(model, recipe=dataclasses.replace(recipe, inference_window=edge))
    label = model.predict_tensor(image, device)[0].numpy().astype(np.int16)
    label = geometry.restore(label)
    if orientation is not None:  # back from the canonical orientation to the file's
        nib = require("nibabel")
        ras = nib.orientations.axcodes2ornt(("R", "A", "S"))
        label = nib.orientations.apply_orientation(label, nib.orientations.ornt_transform(ras, orientation))
    stem = case_stem(file.name)  # nnU-Net's channel suffix dropped, as nnU-Net names its outputs
    if file.name.lower().endswith(".npy"):
        target = out / f"{stem}.npy"
        with atomic_path(target) as tmp, open(tmp, "wb") as handle:
            np.save(handle, np.ascontiguousarray(label))
        return target
    target = out / f"{stem}.nii.gz"
    write_nifti(target, np.ascontiguousarray(label), original_affine)
    return target


def _read_scan(file: Path) -> tuple[Volume, np.ndarray, np.ndarray | None]:
    """The scan in canonical orientation, its file's affine and orientation (``None``: a ``.npy``)."""
    if file.name.lower().endswith(".npy"):
        volume = read_volume(file)
        return volume, volume.affine, None
    original = read_nifti(file, canonical=False)
    orientation = require("nibabel").io_orientation(original.affine)
    return read_nifti(file), original.affine, orientation


def _inputs(inputs: Any, accept: re.Pattern[str], dims: int) -> list[Path]:
    """The files of ``inputs`` (files, or folders read for files ``accept`` matches), in order."""
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if not items or not all(isinstance(i, (str, os.PathLike)) for i in items):
        raise ValueError(f"inputs must name files or folders, got {inputs!r}")
    what = "scans (.nii.gz, .nii, .npy)" if dims == 3 else "images (.png, .jpg, .jpeg)"
    files: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.is_file() and accept.search(p.name))
            if not found:
                raise ValueError(f"input folder {str(item)!r} holds no {what}: this model reads {what}")
            files += found
        elif not item.exists():
            raise ValueError(f"input {str(item)!r} does not exist")
        elif not accept.search(item.name):
            raise ValueError(f"input {str(item)!r} is not one of the {what} this model reads")
        else:
            files.append(item)
    return files


def _plain(value: Any) -> Any:
    """``value`` with tuples as lists and other objects as strings (what ``weights_only`` loads)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return str(value)


def _tuples(value: Any, key: str) -> Any:
    """A recipe setting as its dataclass holds it: lists back to tuples (options dicts stay dicts)."""
    if isinstance(value, list) and not key.endswith("_options"):
        return tuple(_tuples(v, "") for v in value)
    return value
