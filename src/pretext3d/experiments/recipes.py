"""The two downstream experiments of Taleb et al.: pancreas segmentation and DR grading.

Your own labelled data take the same recipes (any label set, any encoder), and unordered
classes the classification recipe.

A recipe builds the model (from scratch or around a pretrained encoder), samples
augmented training batches, and evaluates on whole test images. Every method of a
data-efficiency comparison uses the same recipe, so baseline and pretrained encoders get
the same budget, optimizer and augmentation.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretext3d._checks import check_choice, check_int, check_positive, check_unit_interval
from pretext3d.config import check_keywords, checked
from pretext3d.data.spec import DataSpec
from pretext3d.diagnostics import fit_logistic
from pretext3d.finetune.inference import sliding_window_inference
from pretext3d.finetune.losses import DiceCELoss, OrdinalLoss, ordinal_decode
from pretext3d.finetune.metrics import (
    PANCREAS_REGIONS,
    dice_per_case,
    pooled_mean_dice,
    quadratic_weighted_kappa,
    recall_per_class,
    region_dice,
)
from pretext3d.models import (
    DenseNet,
    MultiScaleUNet,
    UNet,
    UNetEncoder,
    encoder_info,
    encoder_name,
    load_decoder,
    load_encoder,
    load_encoder_weights,
)
from pretext3d.models.io import unrecorded_options
from pretext3d.pretext_model import infer_num_features
from pretext3d.registry import ENCODERS, RECIPES, create_encoder, register_recipe, registered
from pretext3d.transforms.crops import foreground_crops

__all__ = [
    "ClassificationRecipe",
    "GradingRecipe",
    "PooledClassifier",
    "Recipe",
    "SegmentationRecipe",
    "recipe_for",
]

Path = str | os.PathLike[str]


def _flip(
    x: Tensor, y: Tensor | None, generator: torch.Generator, spatial_dims: int
) -> tuple[Tensor, Tensor | None]:
    """Flip each sample along each spatial axis with probability 0.5, images and labels alike.

    ``x`` is ``(N, C, *spatial)`` and ``y`` ``(N, *spatial)``: spatial axis ``a`` is dimension
    ``2 + a`` of ``x`` and ``1 + a`` of ``y``.
    """
    for axis in range(spatial_dims):
        flip = torch.rand(x.shape[0], generator=generator) < 0.5
        if flip.any():
            x[flip] = x[flip].flip(2 + axis)
            if y is not None:
                y[flip] = y[flip].flip(1 + axis)
    return x, y


def _label_map(logits: Tensor) -> Tensor:
    """``logits.argmax(1)`` of ``(N, classes, *spatial)`` logits, taken on a channels-last copy.

    The same labels (ties: the first class); the argmax over the channel axis of a contiguous
    ``(N, 3, 32, 32, 32)`` tensor takes about 9x as long on the CPU (measured: 52 ms against 6 ms).
    """
    return logits.movedim(1, -1).contiguous().argmax(-1)


def _adapt_batch_norm(module: nn.Module, batches: Sequence[Tensor], device: torch.device | str) -> None:
    """Replace the running statistics of ``module``'s batch norms by those of ``batches``.

    Each norm's statistics become the average over the batches' (``momentum=None``); nothing
    else changes. Without batch norms this does nothing.
    """
    norms = [
        m
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    if not norms:
        return
    was_training, momenta = module.training, [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches
    module.train()
    with torch.no_grad():
        for batch in batches:
            for i in range(0, len(batch), 32):
                module(batch[i : i + 32].to(device))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    module.train(was_training)


class Recipe(abc.ABC):
    """A downstream experiment: what the data-efficiency runner needs to fine-tune and score a model.

    A recipe builds the model (from scratch or around a pretrained encoder), samples training
    batches, gives the loss, and scores whole test images. Subclass it (a dataclass of its
    settings), register it (:func:`pretext3d.registry.register_recipe`) and name it in a data
    kind (:class:`~pretext3d.data.DataKind`) to fine-tune other data or other tasks (e.g. 3D
    classification).

    Examples:
        The two recipes of the paper are registered:

        >>> recipe = p3.registry.RECIPES.get("grading")(growth_rate=4, block_config=(1, 1), init_features=8)
        >>> model, encoder = recipe.build(in_channels=3, encoder_file=None)   # from scratch
        >>> recipe.metric, model(torch.randn(2, 3, 32, 32)).shape
        ('qwk', torch.Size([2, 5]))
    """

    @property
    def metric(self) -> str:
        """The metric the runner selects epochs on and reports (higher is better)."""
        raise NotImplementedError(f"{type(self).__name__} must define metric")

    #: the registered encoder family (:data:`pretext3d.registry.ENCODERS`) this recipe loads
    encoder: ClassVar[str]

    @abc.abstractmethod
    def encoder_options(self) -> dict[str, Any]:
        """The encoder's keyword arguments of this recipe's architecture (what pretraining builds)."""

    @abc.abstractmethod
    def build(self, in_channels: int, encoder_file: Path | None) -> tuple[nn.Module, nn.Module]:
        """Model and its encoder, the encoder's weights loaded from ``encoder_file`` if given."""

    @abc.abstractmethod
    def loss(self) -> nn.Module:
        """The training loss ``loss(model(x), y)``."""

    @abc.abstractmethod
    def sample(
        self, images: Tensor, labels: Tensor, indices: list[int], batch: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """A training batch of the labelled cases ``indices``."""

    @abc.abstractmethod
    def score_cases(
        self, model: nn.Module, images: Tensor, labels: Tensor, device: torch.device | str = "cpu"
    ) -> tuple[dict[str, float], dict[str, list[float]]]:
        """Metrics on whole images and the per-case scores behind them."""

    def fit_head(
        self,
        model: nn.Module,
        encoder: nn.Module,
        images: Tensor,
        labels: Tensor,
        indices: Sequence[int],
        device: torch.device | str = "cpu",
    ) -> bool:
        """Fit the new head to the frozen encoder's features of the cases ``indices``; whether it did.

        Called by the runner before a pretrained encoder is fine-tuned (the linear-probe step of
        LP-FT, Kumar et al., "Fine-Tuning can Distort Pretrained Features and Underperform
        Out-of-Distribution", ICLR 2022): a head that starts as the best linear readout of the
        pretrained features learns from the first epoch, where a randomly initialised one may
        not move in a short warm-up. This default fits nothing and returns ``False``, for heads
        that are not a linear readout (a U-Net's decoder learns in the frozen epochs).
        """
        return False

    def check_labels(self, labels: Tensor) -> None:
        """Raise ``ValueError`` if ``labels`` hold a class this recipe's model has no output for.

        Called by the runner before anything is written. Recipes without ``num_classes``
        accept any labels.
        """
        classes = getattr(self, "num_classes", None)
        if classes is None or not isinstance(labels, Tensor) or labels.numel() == 0:
            return
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= classes:
            name = next((n for n in RECIPES.names() if RECIPES.get(n) is type(self)), type(self).__name__)
            raise ValueError(
                f"the labels hold classes {low}..{high}, but {type(self).__name__} has num_classes={classes} "
                f"([{name}] num_classes in a config): the labels must lie in 0..{classes - 1}"
            )

    def encoder_kind(self) -> str:
        """The encoder this recipe builds and loads: its ``backbone`` if set, else :attr:`encoder`."""
        return str(getattr(self, "backbone", "") or self.encoder)

    def check_encoder(self, in_channels: int, encoder_file: Path) -> None:
        """Raise ``ValueError`` unless ``encoder_file`` holds an encoder of this recipe's family that fits.

        Called by the runner (and the CLI) before anything runs, so that a pairing that cannot
        load is refused at once rather than after training.
        """
        name = encoder_name(encoder_file)
        kind, wanted = type(self).__name__, self.encoder_kind()
        if name != wanted:
            table = RECIPES.name_of(type(self)) or "recipe"
            raise ValueError(
                f"encoder file {str(encoder_file)!r} holds a {name or 'unregistered'!r} encoder, but "
                f"{kind} fine-tunes {wanted!r} encoders; pretrain with encoder = {wanted!r}, or set "
                f"[{table}] backbone = {name!r} (and its backbone_options) to fine-tune that encoder"
            )
        backbone_options = getattr(self, "backbone_options", None)
        if getattr(self, "backbone", "") and backbone_options is not None:
            config = encoder_info(encoder_file)["config"]
            if config is None:
                raise ValueError(unrecorded_options(encoder_file, wanted))
            recorded = dict(config)
            saved, built = _same_options(recorded, self.encoder_kind(), backbone_options, in_channels)
            if saved != built:
                raise ValueError(
                    f"encoder file {str(encoder_file)!r} was built with options {saved}, but the recipe's "
                    f"backbone_options {dict(backbone_options)} build {built}: the scratch arm must have "
                    "the same architecture; give the pretraining's encoder_options as backbone_options"
                )
        try:
            self.build(in_channels, encoder_file)
        except ValueError as err:
            raise ValueError(
                f"encoder file {str(encoder_file)!r} does not fit {kind}'s model ({err}); pretrain with "
                "the recipe's architecture (its widths / blocks) or change the recipe to match"
            ) from err

    def evaluate(
        self, model: nn.Module, images: Tensor, labels: Tensor, device: torch.device | str = "cpu"
    ) -> dict[str, float]:
        """The metrics of :meth:`score_cases` without the per-case scores."""
        return self.score_cases(model, images, labels, device)[0]


@checked
@dataclass
@register_recipe("segmentation")
class SegmentationRecipe(Recipe):
    """3D U-Net segmentation of the pancreas and its tumour (MSD Task07 or the CT phantoms).

    Attributes:
        num_classes: 3 (background, pancreas, cancer).
        widths: the U-Net encoder's stage widths; must match a pretrained encoder's.
        crop: edge of the random training crops (a multiple of ``2**(len(widths)-1)``),
            ``None`` for whole volumes.
        foreground_oversampling: fraction of crops centred on a labelled voxel.
        flip: random flips along each axis.
        dice_weight: weight of the soft Dice term of the loss.
        ce_weight: weight of the cross-entropy term.
        class_weights: Dice weights of the foreground classes.
        inference_window: evaluate whole volumes window by window, with windows of this
            edge blended by Gaussian weights
            (:func:`~pretext3d.finetune.inference.sliding_window_inference`); ``None``: one
            forward pass per whole volume, padded to the U-Net's size rule. A multiple of
            ``2**(len(widths)-1)``.
        inference_overlap: share of a window that the next one overlaps.
        backbone: ``""``: the library's U-Net of ``widths``; else any encoder name
            (registered, ``"timm/<model>"`` or ``"monai/<network>"``, see
            :func:`~pretext3d.registry.create_encoder`) whose feature maps a
            :class:`~pretext3d.models.MultiScaleUNet` decodes. Pretrained arms load the encoder
            file (which must hold that encoder with ``backbone_options``); the scratch arm
            builds it.
        backbone_options: the backbone's keyword arguments (the pretraining's
            ``encoder_options``).
        decoder_options: with a ``backbone`` (or ``load_decoder``), keyword arguments of its
            :class:`~pretext3d.models.MultiScaleUNet`: ``stages`` (the submodules whose outputs
            are the skips, for an encoder whose feature maps are not found by themselves),
            ``decoder_widths``, ``norm``, ``probe_size``.
        load_decoder: start a pretrained arm's decoder from the one its encoder file keeps (a
            dense task's, :func:`~pretext3d.models.load_decoder`; arms whose file keeps none
            start it anew). Every arm, scratch included, is then a
            :class:`~pretext3d.models.MultiScaleUNet` over the encoder (the dense head's
            layout), so that the arms differ only in their starting weights.
        classes: names of the labels 0, 1, ... (background first), for data other than the
            pancreas: each foreground class is scored by its Dice (``<name>_dice``, per case,
            NaN where the case has none of it) and the metric is their mean (``mean_dice``);
            ``num_classes`` follows (another ``num_classes`` is an error). Empty: the pancreas
            metrics (below). The data's ``classes`` fill it in (:func:`recipe_for`).

    Examples:
        >>> recipe = SegmentationRecipe(widths=(8, 16), crop=16)
        >>> model, encoder = recipe.build(in_channels=1, encoder_file=None)
        >>> images, labels = p3.data.ct_phantom_batch(2, size=32)   # SYNTHETIC
        >>> x, y = recipe.sample(images, labels, [0, 1], batch=2, generator=torch.Generator().manual_seed(0))
        >>> x.shape, model(x).shape   # foreground-oversampled crops, logits of 3 classes
        (torch.Size([2, 1, 16, 16, 16]), torch.Size([2, 3, 16, 16, 16]))
        >>> sorted(recipe.evaluate(model, images, labels))
        ['pancreas_dice', 'pooled_mean_dice_3class', 'tumour_dice', 'tumour_sensitivity',
         'tumour_specificity']

    References:
        - Taleb et al., "3D Self-Supervised Methods for Medical Imaging", NeurIPS 2020. (the 3D U-Net pancreas
          segmentation).
    """

    num_classes: int = 3
    widths: tuple[int, ...] = (8, 16, 32)
    crop: int | None = 24
    foreground_oversampling: float = 0.67
    flip: bool = True
    dice_weight: float = 1.0
    ce_weight: float = 1.0
    class_weights: tuple[float, ...] | None = None
    inference_window: int | None = None
    inference_overlap: float = 0.5
    backbone: str = ""
    backbone_options: dict[str, Any] = field(default_factory=dict)
    decoder_options: dict[str, Any] = field(default_factory=dict)
    classes: tuple[str, ...] = ()
    load_decoder: bool = field(default=False, repr=False)  # shown when set (below)

    def __repr__(self) -> str:
        """The dataclass's, with ``load_decoder`` only when set: grids made before it existed continue."""
        shown = [f for f in fields(self) if f.repr or getattr(self, f.name) != f.default]
        return f"{type(self).__name__}({', '.join(f'{f.name}={getattr(self, f.name)!r}' for f in shown)})"

    def __post_init__(self) -> None:
        """Check the values."""
        if self.backbone:
            registered(self.backbone, ENCODERS)
        if not isinstance(self.load_decoder, bool):
            raise TypeError(f"load_decoder must be true or false, got {self.load_decoder!r}")
        if self.decoder_options:
            if not (self.backbone or self.load_decoder):
                raise ValueError(
                    "decoder_options configure the MultiScaleUNet decoder of a backbone or of load_decoder: "
                    "set backbone or load_decoder too"
                )
            data, recipe = "it follows the data", "the recipe sets it"
            reserved = {"encoder": "it is the backbone", "out_channels": "it follows num_classes",
                        "copy_encoder": recipe, "spatial_dims": data, "in_channels": data}  # fmt: skip
            check_keywords(
                "MultiScaleUNet", self.decoder_options, MultiScaleUNet, "decoder_options", reserved
            )
        if self.classes:
            _count_classes(self, "background and at least one class")
        factor = 1 if self.backbone else 2 ** (len(self.widths) - 1)
        for name in ("crop", "inference_window"):
            value = getattr(self, name)
            if value is not None and (value < 1 or value % factor):
                raise ValueError(
                    f"{name} must be a multiple of {factor} for {len(self.widths)} U-Net stages, got {value}"
                )
        check_unit_interval("inference_overlap", self.inference_overlap, include_one=False)
        check_unit_interval("foreground_oversampling", self.foreground_oversampling)
        check_int("num_classes", self.num_classes, 2)
        check_positive("dice_weight", self.dice_weight, allow_zero=True)
        check_positive("ce_weight", self.ce_weight, allow_zero=True)
        if self.dice_weight == 0 and self.ce_weight == 0:
            raise ValueError("dice_weight and ce_weight must not both be 0: the loss would be 0")
        if self.class_weights is not None:
            if len(self.class_weights) != self.num_classes - 1:
                raise ValueError(
                    f"class_weights must give one weight per foreground class ({self.num_classes - 1}), "
                    f"got {self.class_weights}"
                )
            for i, w in enumerate(self.class_weights):
                check_positive(f"class_weights[{i}]", w, allow_zero=True)

    encoder: ClassVar[str] = "unet"

    @property
    def metric(self) -> str:
        """``"mean_dice"`` of the named classes, or the pancreas's Dice (``"pancreas_dice"``)."""
        return "mean_dice" if self.classes else "pancreas_dice"

    def encoder_options(self) -> dict[str, Any]:
        """Keyword arguments that make a ``"unet"`` encoder (or the backbone) load into this model."""
        return dict(self.backbone_options) if self.backbone else {"widths": self.widths}

    def build(self, in_channels: int, encoder_file: Path | None) -> tuple[nn.Module, nn.Module]:
        """A U-Net (and its encoder), with the encoder's weights loaded from ``encoder_file`` if given.

        With a :attr:`backbone` or :attr:`load_decoder`: a :class:`~pretext3d.models.MultiScaleUNet`
        over the encoder, its decoder loaded too where :attr:`load_decoder` and the file keeps one.
        """
        if self.backbone or self.load_decoder:
            if self.backbone:
                encoder = _backbone(self.backbone, self.backbone_options, 3, in_channels, encoder_file)
            else:
                encoder = UNetEncoder(3, in_channels, self.widths)
                if encoder_file is not None:
                    load_encoder_weights(encoder, encoder_file)
            unet = MultiScaleUNet(encoder, self.num_classes, copy_encoder=False, **self.decoder_options)
            if self.load_decoder and encoder_file is not None and encoder_info(encoder_file)["decoder"]:
                load_decoder(unet, encoder_file)
            return unet, unet.encoder
        model = UNet(3, in_channels, self.num_classes, self.widths)
        if encoder_file is not None:
            load_encoder_weights(model.encoder, encoder_file)
        return model, model.encoder

    def loss(self) -> nn.Module:
        """Soft Dice (foreground, weighted) plus cross-entropy."""
        return DiceCELoss(
            self.num_classes,
            dice_weight=self.dice_weight,
            ce_weight=self.ce_weight,
            class_weights=self.class_weights,
        )

    def sample(
        self, images: Tensor, labels: Tensor, indices: Sequence[int], batch: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """A training batch of (crops of) the cases ``indices``."""
        pick = torch.tensor(indices)[torch.randint(len(indices), (batch,), generator=generator)]
        x, y = images[pick].clone(), labels[pick].clone()
        if self.crop is not None:
            x, y = foreground_crops(x, y, self.crop, self.foreground_oversampling, generator)
        if self.flip:
            x, _ = _flip(x, y, generator, 3)
        return x, y

    @torch.no_grad()
    def predict(
        self, model: nn.Module, images: Tensor, device: torch.device | str = "cpu", batch: int = 8
    ) -> Tensor:
        """Label maps of whole volumes, ``batch`` at a time, padded to the U-Net's size rule.

        Each volume is padded with its own minimum, so the result does not depend on ``batch``.
        With :attr:`inference_window`, each volume is predicted by Gaussian-weighted sliding windows.
        """
        factor = 1 if self.backbone else 2 ** (len(self.widths) - 1)
        model.eval()
        if self.inference_window is not None:
            logits = sliding_window_inference(
                model, images, self.inference_window, overlap=self.inference_overlap, device=device
            )
            return _label_map(logits)
        spatial = images.shape[2:]
        pad = [math.ceil(s / factor) * factor - s for s in spatial]
        out = []
        for chunk in torch.split(images, batch):
            padded = torch.stack(
                [F.pad(v, [p for d in reversed(pad) for p in (0, d)], value=float(v.min())) for v in chunk]
            )
            logits = model(padded.to(device))[:, :, : spatial[0], : spatial[1], : spatial[2]]
            out.append(_label_map(logits).cpu())
        return torch.cat(out)

    def score_cases(
        self, model: nn.Module, images: Tensor, labels: Tensor, device: torch.device | str = "cpu"
    ) -> tuple[dict[str, float], dict[str, list[float]]]:
        """Region Dice per case, tumour detection, and the paper's pooled metric.

        - ``pancreas_dice``: Dice of the whole pancreas region {1, 2}, mean over cases.
        - ``tumour_dice``: Dice of the tumour {2}, mean over the cases whose target has a
          tumour. A case without a tumour has no tumour Dice (NaN, skipped): a false-positive
          tumour there is not penalised by Dice, which is why detection is reported beside it.
        - ``tumour_sensitivity`` / ``tumour_specificity``: case-level detection, a case
          called positive when any voxel is predicted as tumour; NaN when the test set has
          no positive (negative) case.
        - ``pooled_mean_dice_3class``: the paper's Figure 3 metric (voxels pooled over all
          cases, background, pancreas and tumour averaged), for comparison only.

        Returns:
            ``(summary, per_case)``: ``per_case`` holds ``pancreas_dice``, ``tumour_dice``,
            ``tumour_present`` and ``tumour_predicted`` per case, in the order of ``images``.
        """
        pred = self.predict(model, images, device)
        if self.classes:
            dice = dice_per_case(pred, labels, self.num_classes)  # (cases, foreground classes)
            names = [f"{name}_dice" for name in self.classes[1:]]
            summary = {name: float(dice[:, k].nanmean()) for k, name in enumerate(names)}
            summary["mean_dice"] = float(torch.tensor([summary[n] for n in names]).nanmean())
            return summary, {name: dice[:, k].tolist() for k, name in enumerate(names)}
        regions = region_dice(pred, labels, PANCREAS_REGIONS)
        present = (labels == 2).flatten(1).any(1)
        predicted = (pred == 2).flatten(1).any(1)
        summary = {f"{name}_dice": float(values.nanmean()) for name, values in regions.items()}
        summary["tumour_sensitivity"] = (
            float(predicted[present].double().mean()) if present.any() else math.nan
        )
        summary["tumour_specificity"] = (
            float((~predicted[~present]).double().mean()) if (~present).any() else math.nan
        )
        summary["pooled_mean_dice_3class"] = pooled_mean_dice(pred, labels, self.num_classes)
        per_case = {f"{name}_dice": values.tolist() for name, values in regions.items()}
        per_case["tumour_present"] = present.double().tolist()
        per_case["tumour_predicted"] = predicted.double().tolist()
        return summary, per_case


@checked
@dataclass
@register_recipe("grading")
class GradingRecipe(Recipe):
    """DenseNet grading of diabetic retinopathy (APTOS 2019 or the fundus phantoms).

    Attributes:
        num_classes: 5 grades.
        encoding: ``"ce"`` (softmax over grades) or ``"ordinal"`` (the paper's cumulative
            multi-label encoding).
        growth_rate: DenseNet growth rate (32 for DenseNet-121).
        block_config: dense layers per block ((6, 12, 24, 16) for DenseNet-121).
        init_features: stem width (64 for DenseNet-121).
        flip: random horizontal and vertical flips.
        backbone: ``""``: the library's DenseNet; else any encoder name (registered,
            ``"timm/<model>"``, ``"monai/<network>"``) whose pooled features a linear classifier
            reads (:class:`PooledClassifier`). Pretrained arms load the encoder file (which must
            hold that encoder with ``backbone_options``); the scratch arm builds it.
        backbone_options: the backbone's keyword arguments (the pretraining's
            ``encoder_options``).
        classes: names of the grades 0, 1, ... (lowest first), for data other than DR
            grading: each grade's recall is reported by name (``<name>_recall``);
            ``num_classes`` follows (another ``num_classes`` is an error). The data's
            ``classes`` fill it in (:func:`recipe_for`).

    Examples:
        >>> recipe = GradingRecipe(encoding="ordinal", growth_rate=4, block_config=(1, 1), init_features=8)
        >>> model, encoder = recipe.build(in_channels=3, encoder_file=None)
        >>> images, grades = p3.data.fundus_phantom_batch(4, size=32)   # SYNTHETIC
        >>> model(images).shape   # K - 1 cumulative logits
        torch.Size([4, 4])
        >>> sorted(recipe.evaluate(model, images, grades))
        ['accuracy', 'qwk']

    References:
        - Taleb et al., "3D Self-Supervised Methods for Medical Imaging", NeurIPS 2020. (the DenseNet-121 DR
          grading).
    """

    num_classes: int = 5
    encoding: Literal["ce", "ordinal"] = "ce"
    growth_rate: int = 12
    block_config: tuple[int, ...] = (2, 2, 2)
    init_features: int = 16
    flip: bool = True
    backbone: str = ""
    backbone_options: dict[str, Any] = field(default_factory=dict)
    classes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """Check the values."""
        check_choice("encoding", self.encoding, ("ce", "ordinal"))
        if self.backbone:
            registered(self.backbone, ENCODERS)
        if self.classes:
            _count_classes(self, "at least two classes")
        check_int("num_classes", self.num_classes, 2)

    metric = "qwk"
    encoder: ClassVar[str] = "densenet"

    def encoder_options(self) -> dict[str, Any]:
        """Keyword arguments that make a ``"densenet"`` encoder (or the backbone) load into this model."""
        if self.backbone:
            return dict(self.backbone_options)
        return {
            "growth_rate": self.growth_rate,
            "block_config": self.block_config,
            "init_features": self.init_features,
        }

    def build(self, in_channels: int, encoder_file: Path | None) -> tuple[nn.Module, nn.Module]:
        """A DenseNet classifier (and its encoder), the encoder loaded from ``encoder_file`` if given."""
        outputs = self.num_classes if self.encoding == "ce" else self.num_classes - 1
        if self.backbone:
            encoder = _backbone(self.backbone, self.backbone_options, 2, in_channels, encoder_file)
            classifier = PooledClassifier(encoder, outputs, spatial_dims=2)
            return classifier, classifier.encoder
        model = DenseNet(2, in_channels, outputs, self.growth_rate, self.block_config, self.init_features)
        if encoder_file is not None:
            load_encoder_weights(model.encoder, encoder_file)
        return model, model.encoder

    def loss(self) -> nn.Module:
        """Cross-entropy or the ordinal binary cross-entropy."""
        return nn.CrossEntropyLoss() if self.encoding == "ce" else OrdinalLoss(self.num_classes)

    def sample(
        self, images: Tensor, labels: Tensor, indices: Sequence[int], batch: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """A training batch of the images ``indices``."""
        pick = torch.tensor(indices)[torch.randint(len(indices), (batch,), generator=generator)]
        x, y = images[pick].clone(), labels[pick].clone()
        if self.flip:
            x, _ = _flip(x, None, generator, 2)
        return x, y

    def fit_head(
        self,
        model: nn.Module,
        encoder: nn.Module,
        images: Tensor,
        labels: Tensor,
        indices: Sequence[int],
        device: torch.device | str = "cpu",
    ) -> bool:
        """Fit the classifier by logistic regression on the frozen, pooled features of ``indices``.

        First the encoder's batch-norm statistics are estimated again on the training images
        (AdaBN, Li et al., "Revisiting Batch Normalization For Practical Domain Adaptation",
        2016): pretraining's statistics describe its augmented views, not these images, and a
        head fitted to features normalised by them reads garbage once the encoder is unfrozen
        and normalises by batch statistics (the validation kappa fell from 0.6 to 0 at the
        unfreezing epoch on the fundus phantoms). The features are then standardised for the fit
        (pretrained DenseNet features are small and share a large common offset, which a few
        hundred Adam steps on a randomly initialised linear layer do not undo;
        :func:`~pretext3d.diagnostics.fit_logistic`) and the standardisation is folded into the
        weights. The L2 penalty is scikit-learn's default (``C = 1``: ``1 / (2 n)`` on the mean
        loss for ``n`` cases), so that a head fitted to a handful of separable cases is not
        overconfident when fine-tuning starts. With ``encoding="ordinal"`` each cumulative output
        is a binary logistic regression of ``grade > k``. Each image is read in every flip that
        training draws (with ``flip``), the encoder in eval mode (as in the frozen epochs).

        Args:
            model: a :class:`~pretext3d.models.DenseNet` built by :meth:`build`.
            encoder: its encoder (``(N, C, H, W)`` -> pooled ``(N, F)``).
            images: ``(N, C, H, W)`` all labelled images.
            labels: ``(N,)`` grades.
            indices: the training cases.
            device: where to run the encoder.

        Returns:
            ``True`` (the classifier was replaced).
        """
        if not isinstance(model, (DenseNet, PooledClassifier)):
            raise TypeError(f"model must be the recipe's classifier, got {type(model).__name__}")
        if len(indices) == 0:
            raise ValueError(
                "indices names no training case: fit_head needs at least one to fit the classifier"
            )
        was_training = encoder.training
        chosen = torch.as_tensor(list(indices), dtype=torch.long)
        views = [(), (-1,), (-2,), (-2, -1)] if self.flip else [()]  # the flips training draws from
        _adapt_batch_norm(encoder, [images[chosen].flip(axes) for axes in views], device)
        encoder.eval()
        with torch.no_grad():
            features = torch.cat(
                [
                    encoder(images[chosen[i : i + 32]].flip(axes).to(device)).float()
                    for axes in views
                    for i in range(0, len(chosen), 32)
                ]
            )
        encoder.train(was_training)
        grades = labels[chosen].repeat(len(views)).to(features.device)
        decay = 1.0 / (2 * len(grades))
        if self.encoding == "ce":
            layer = fit_logistic(features, grades, self.num_classes, weight_decay=decay)
            weight, bias = layer.weight.detach(), layer.bias.detach()
        else:  # one binary readout per threshold: logit(grade > k) = difference of the two logits
            fits = [
                fit_logistic(features, (grades > k).long(), 2, weight_decay=decay)
                for k in range(self.num_classes - 1)
            ]
            weight = torch.stack([f.weight[1] - f.weight[0] for f in fits])
            bias = torch.stack([f.bias[1] - f.bias[0] for f in fits])
        with torch.no_grad():
            model.classifier.weight.copy_(weight)
            model.classifier.bias.copy_(bias)
        return True

    @torch.no_grad()
    def predict(self, model: nn.Module, images: Tensor, device: torch.device | str = "cpu") -> Tensor:
        """Predicted grades ``(N,)``."""
        model.eval()
        logits = torch.cat([model(images[i : i + 32].to(device)).cpu() for i in range(0, len(images), 32)])
        return logits.argmax(1) if self.encoding == "ce" else ordinal_decode(logits)

    def score_cases(
        self, model: nn.Module, images: Tensor, labels: Tensor, device: torch.device | str = "cpu"
    ) -> tuple[dict[str, float], dict[str, list[float]]]:
        """Quadratic weighted kappa and accuracy, with each image's true and predicted grade.

        With :attr:`classes`, also each grade's recall (``<name>_recall``, NaN for a grade the
        images lack).

        Returns:
            ``(summary, per_case)``: ``per_case`` holds ``grade``, ``predicted`` and
            ``correct`` per image, in the order of ``images``.
        """
        pred = self.predict(model, images, device)
        summary = {
            "qwk": quadratic_weighted_kappa(pred, labels, self.num_classes),
            "accuracy": float((pred == labels).float().mean()),
        }
        if self.classes:
            recall = recall_per_class(pred, labels, self.num_classes).tolist()
            summary.update({f"{name}_recall": r for name, r in zip(self.classes, recall, strict=True)})
        per_case = {
            "grade": labels.double().tolist(),
            "predicted": pred.double().tolist(),
            "correct": (pred == labels).double().tolist(),
        }
        return summary, per_case


@checked
@dataclass
@register_recipe("classification")
class ClassificationRecipe(GradingRecipe):
    """Classification of 2D images into unordered classes (a ``labelled-image-folder``).

    The grading recipe's network, training and head fitting with a softmax over the classes;
    the metric is the balanced accuracy (mean recall over the classes, chance ``1 / classes``
    whatever their shares: plain accuracy rewards predicting the largest class), with the
    accuracy and each class's recall (``<name>_recall``) beside it. Attributes as for
    :class:`GradingRecipe`; ``encoding`` must be ``"ce"`` (the ordinal encoding assumes ordered
    grades).

    Examples:
        >>> recipe = ClassificationRecipe(classes=("cat", "dog", "owl"), growth_rate=4, block_config=(1, 1),
        ...                               init_features=8)
        >>> model, _ = recipe.build(in_channels=3, encoder_file=None)
        >>> images, labels = torch.rand(6, 3, 32, 32), torch.tensor([0, 1, 2, 0, 1, 2])
        >>> recipe.metric, model(images).shape
        ('balanced_accuracy', torch.Size([6, 3]))
        >>> sorted(recipe.evaluate(model, images, labels))
        ['accuracy', 'balanced_accuracy', 'cat_recall', 'dog_recall', 'owl_recall']

    References:
        - Brodersen et al., "The balanced accuracy and its posterior distribution", ICPR 2010.
    """

    def __post_init__(self) -> None:
        """Check the values."""
        if self.encoding != "ce":
            raise ValueError(
                f"encoding must be 'ce' for unordered classes, got {self.encoding!r} (the ordinal encoding "
                "is for grades: use the grading recipe, data.kind = 'graded-image-folder')"
            )
        super().__post_init__()

    metric = "balanced_accuracy"

    def score_cases(
        self, model: nn.Module, images: Tensor, labels: Tensor, device: torch.device | str = "cpu"
    ) -> tuple[dict[str, float], dict[str, list[float]]]:
        """Balanced accuracy, accuracy and each class's recall, with each image's true and predicted class.

        Returns:
            ``(summary, per_case)``: ``summary`` holds ``balanced_accuracy``, ``accuracy`` and
            ``<name>_recall`` (``class<k>_recall`` without :attr:`classes`; NaN for a class the
            images lack); ``per_case`` holds ``label``, ``predicted`` and ``correct`` per image.
        """
        pred = self.predict(model, images, device)
        recall = recall_per_class(pred, labels, self.num_classes)
        names = self.classes or tuple(f"class{k}" for k in range(self.num_classes))
        summary = {
            "balanced_accuracy": float(recall.nanmean()),
            "accuracy": float((pred == labels).float().mean()),
            **{f"{name}_recall": r for name, r in zip(names, recall.tolist(), strict=True)},
        }
        per_case = {
            "label": labels.double().tolist(),
            "predicted": pred.double().tolist(),
            "correct": (pred == labels).double().tolist(),
        }
        return summary, per_case


class PooledClassifier(nn.Module):
    """A linear classifier on an encoder's pooled features (any encoder, for :class:`GradingRecipe`).

    Args:
        encoder: maps ``(N, C, *spatial)`` to ``(N, F)`` pooled features or ``(N, F, *spatial)``
            maps (averaged here).
        num_outputs: logits.
        spatial_dims: the images' dimension (to find ``F`` on a probe).

    Examples:
        >>> head = PooledClassifier(p3.models.ConvEncoder(2, 3, widths=(4, 8)), 5, spatial_dims=2)
        >>> head(torch.randn(2, 3, 32, 32)).shape, head.classifier.in_features
        (torch.Size([2, 5]), 8)
    """

    def __init__(self, encoder: nn.Module, num_outputs: int, *, spatial_dims: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.classifier = nn.Linear(infer_num_features(encoder, spatial_dims), num_outputs)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, num_outputs)``."""
        features: Tensor = self.encoder(x)
        if features.dim() > 2:
            features = features.flatten(2).mean(-1)
        out: Tensor = self.classifier(features)
        return out


def _count_classes(recipe: SegmentationRecipe | GradingRecipe, what: str) -> None:
    """``num_classes`` from ``classes``; a ``num_classes`` set to another count is an error."""
    classes = recipe.classes
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise ValueError(f"classes must name {what}, each once, got {classes}")
    default = next(f.default for f in dataclasses.fields(recipe) if f.name == "num_classes")
    if recipe.num_classes not in (default, len(classes)):
        raise ValueError(
            f"num_classes = {recipe.num_classes}, but the classes name {len(classes)} "
            f"({', '.join(classes)}): leave num_classes out (it follows the classes)"
        )
    recipe.num_classes = len(classes)


def _same_options(
    recorded: Mapping[str, Any], name: str, options: Mapping[str, Any], in_channels: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """An encoder file's recorded options and those ``options`` build, comparable (defaults filled in).

    The scratch arm's encoder is built from ``options``; where it records its constructor
    arguments (the library's encoders, ``create_encoder``'s), those are compared, so that
    defaults and tuples against lists make no difference; else only the keys given.
    """

    def plain(values: Mapping[str, Any]) -> dict[str, Any]:
        out = json.loads(json.dumps(dict(values), default=str))
        return {k: v for k, v in out.items() if k not in ("spatial_dims", "in_channels")}

    saved = plain(recorded)
    spatial_dims = int(recorded.get("spatial_dims", 3))
    try:
        fresh = create_encoder(name, spatial_dims=spatial_dims, in_channels=in_channels, **options)
    except (TypeError, ValueError, ImportError):
        return saved, plain(options)
    built = getattr(fresh, "_pretext3d_build", None)
    config = built["config"] if isinstance(built, Mapping) else getattr(fresh, "config", None)
    if not isinstance(config, Mapping):
        return {k: v for k, v in saved.items() if k in options}, plain(options)
    return saved, plain(config)


def _backbone(
    name: str, options: Mapping[str, Any], spatial_dims: int, in_channels: int, encoder_file: Path | None
) -> nn.Module:
    """The recipe's backbone: loaded from ``encoder_file`` (its recorded builder), or built from scratch."""
    if encoder_file is not None:
        return load_encoder(encoder_file)
    return create_encoder(name, spatial_dims=spatial_dims, in_channels=in_channels, **options)


def recipe_for(data: DataSpec, configured: Mapping[str, Recipe] | None = None) -> Recipe:
    """The recipe that fine-tunes ``data``: the one its kind names, as configured or with its defaults.

    Args:
        data: the labelled data; its kind (:class:`~pretext3d.data.DataKind`) names a
            registered recipe.
        configured: recipes set in a config, by registered name (``{"segmentation": ...,
            "grading": ...}``); a recipe not listed is built with its defaults.

    Examples:
        >>> type(recipe_for(p3.data.DataSpec(kind="ct-phantom"))).__name__
        'SegmentationRecipe'
        >>> aptos = p3.data.DataSpec(kind="aptos", path="aptos")
        >>> recipe_for(aptos, {"grading": GradingRecipe(growth_rate=4)}).growth_rate
        4
    """
    name = data.recipe
    if not name:
        raise ValueError(
            f"data.kind = {data.kind!r} names no fine-tuning recipe (it serves pretraining only)"
        )
    recipe = (configured or {}).get(name)
    if recipe is None:
        recipe = RECIPES.get(name)()
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe {name!r} is a {type(recipe).__name__}, not a pretext3d.experiments.Recipe")
    names = data.class_names()
    if names and hasattr(recipe, "classes") and not recipe.classes:  # the data's class names
        recipe = dataclasses.replace(recipe, classes=tuple(names))  # type: ignore[type-var]
    given = [str(c) for c in getattr(recipe, "classes", ())]
    if names and given and given != names:
        numbered = names == [str(i) for i in range(len(names))]
        if not numbered or len(given) != len(names):  # names of numbered labels are fine, others must agree
            raise ValueError(
                f"[{name}] classes = {given}, but the data's labels are numbered as {names} (data.kind = "
                f"{data.kind!r}): the metrics would carry the wrong names. Leave [{name}] classes out, or "
                "set data.classes (the order the labels are numbered in) and not the recipe's"
            )
    return recipe
