"""What a pretext task can be solved from, and what an encoder's frozen features carry.

A rising pretext accuracy is what a shortcut produces too: a jigsaw whose tiles give their
absolute position away by the field-of-view border, or a rotation of a flat crop. Two checks
say more than the pretext loss:

* :func:`shortcut_score`: how well *trivial statistics* of each view (block means and standard
  deviations per channel, which carry borders, vignetting, colour casts and outlines) predict
  the task's targets, beside chance. A task whose targets follow from them can be solved
  without learning anatomy.
* :class:`FeatureProbe`: a linear (or k-NN) probe on an encoder's frozen features over a
  small labelled set, for classification (pooled features) or segmentation (a linear
  patch probe on the feature map); run on the randomly initialised encoder it gives the
  reference any pretraining has to beat. The :class:`~pretext3d.pretrainer.Pretrainer`
  and the Lightning module run it every few steps; any loop can call it.

Neither needs a new dependency: the classifiers are logistic regressions fitted in torch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretext3d._checks import check_choice, check_int, check_positive, check_unit_interval
from pretext3d.config import Range, checked
from pretext3d.heads import global_pool
from pretext3d.models.base import evaluating
from pretext3d.tasks._grid import GridPatchTask
from pretext3d.tasks.base import (
    ClassificationTask,
    DenseTask,
    EmbeddingTask,
    PredictiveTask,
    PretextTask,
    weighted_mse,
)
from pretext3d.tasks.cpc import CPC
from pretext3d.tasks.exemplar import Exemplar
from pretext3d.tasks.rpl import RelativePatchLocation

__all__ = [
    "FeatureProbe",
    "ShortcutReport",
    "chance_level",
    "fit_logistic",
    "shortcut_score",
    "view_statistics",
]


def view_statistics(views: Tensor, blocks: int = 2) -> Tensor:
    """Trivial statistics of each view: per channel, the mean and std of ``blocks**d`` blocks.

    Args:
        views: ``(N, C, *spatial)`` with 2 or 3 spatial axes (for patches ``(B, P, C,
            *patch)`` pass ``views.flatten(0, 1)``).
        blocks: blocks per axis (adaptive pooling: a view narrower than ``blocks`` along an axis
            repeats its voxels there, so views of any size, a single voxel included, give
            statistics of one length).

    Returns:
        ``(N, C * 2 * blocks**d)``: the block means (row-major), then the block stds.

    Examples:
        >>> x = torch.zeros(1, 1, 4, 4)
        >>> x[..., :2, :] = 1.0   # the top half bright
        >>> view_statistics(x, blocks=2)
        tensor([[1., 1., 0., 0., 0., 0., 0., 0.]])
        >>> view_statistics(torch.full((1, 1, 1, 1), 3.0))   # one voxel: its value in every block
        tensor([[3., 3., 3., 3., 0., 0., 0., 0.]])
    """
    check_int("blocks", blocks, 1)
    if not isinstance(views, Tensor) or views.dim() not in (4, 5):
        raise ValueError(f"views must be (N, C, *spatial) with 2 or 3 spatial axes, got {_shape(views)}")
    flat = views.float()
    pool = F.adaptive_avg_pool2d if flat.dim() == 4 else F.adaptive_avg_pool3d
    mean = pool(flat, blocks)
    var = (pool(flat.square(), blocks) - mean.square()).clamp_min(0)
    return torch.cat([mean.flatten(2), var.sqrt().flatten(2)], dim=2).flatten(1)


def _shape(x: object) -> object:
    return tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__


def fit_logistic(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    *,
    weight_decay: float = 1e-3,
    steps: int = 200,
    balanced: bool = False,
) -> nn.Linear:
    """A multinomial logistic regression on standardised ``features`` (full-batch L-BFGS, deterministic).

    Args:
        features: ``(N, F)`` float.
        labels: ``(N,)`` class indices in ``[0, num_classes)``.
        num_classes: classes.
        weight_decay: L2 penalty on the weights.
        steps: L-BFGS iterations.
        balanced: weigh classes by inverse frequency (for rare classes such as a lesion).

    Returns:
        A linear layer that maps *raw* features to logits (the standardisation folded in).

    Examples:
        >>> x = torch.tensor([[0.0], [1.0], [4.0], [5.0]])
        >>> fit_logistic(x, torch.tensor([0, 0, 1, 1]), 2)(x).argmax(1).tolist()
        [0, 0, 1, 1]
    """
    x = features.detach().float()
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-6)
    z = (x - mean) / std
    # skip_init: no draw from the global generator (a training run's stream stays as it was)
    layer: nn.Linear = torch.nn.utils.skip_init(  # type: ignore[no-untyped-call]
        nn.Linear, x.shape[1], num_classes, device=x.device
    )
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    weight = None
    if balanced:
        counts = torch.bincount(labels, minlength=num_classes).float().clamp_min(1)
        weight = (len(labels) / (num_classes * counts)).to(x.device)
    optimizer = torch.optim.LBFGS(layer.parameters(), lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss: Tensor = (
            F.cross_entropy(layer(z), labels, weight=weight) + weight_decay * layer.weight.square().sum()
        )
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    with torch.enable_grad():
        optimizer.step(closure)  # type: ignore[no-untyped-call]
    with torch.no_grad():  # fold the standardisation into the layer
        layer.weight.div_(std)
        layer.bias.sub_((layer.weight * mean).sum(1))
    return layer


@dataclass(frozen=True)
class ShortcutReport:
    """What trivial statistics of the views predict of a task's targets (see :func:`shortcut_score`).

    Attributes:
        task: the task's class name.
        score: held-out accuracy of the trivial predictor, in the task's own accuracy measure.
        chance: the accuracy of guessing.
        threshold: ``flagged`` when ``score > threshold * chance``.
        task_accuracy: the task's own (held-out) accuracy, if given, for comparison.
        samples: views the score was measured on.
        method: how the trivial predictor works.

    Examples:
        >>> report = ShortcutReport("Jigsaw", score=0.9, chance=0.1, threshold=1.5, samples=64,
        ...                         method="logistic regression")
        >>> report.ratio, report.flagged
        (9.0, True)
    """

    task: str
    score: float
    chance: float
    threshold: float
    samples: int
    method: str
    task_accuracy: float | None = None

    @property
    def ratio(self) -> float:
        """``score / chance``."""
        return round(self.score / self.chance, 6)

    @property
    def flagged(self) -> bool:
        """Trivial statistics predict the targets far above chance."""
        return self.score > self.threshold * self.chance

    def as_dict(self) -> dict[str, Any]:
        """The fields and the derived ``ratio`` and ``flagged``, for a record."""
        return {
            "task": self.task, "score": self.score, "chance": self.chance, "ratio": self.ratio,
            "threshold": self.threshold, "flagged": self.flagged, "samples": self.samples,
            "method": self.method, "task_accuracy": self.task_accuracy,
        }  # fmt: skip

    def __str__(self) -> str:
        own = "" if self.task_accuracy is None else f"; the task's own accuracy {self.task_accuracy:.3f}"
        verdict = (
            f"ABOVE {self.threshold:g} x chance: one view's low-level statistics give the targets away "
            "(see docs/tasks/index.md#shortcuts)"
            if self.flagged
            else f"within {self.threshold:g} x chance"
        )
        if _RESTORED in self.method:  # a dense task: "chance" is a perfect restoration
            verdict = (
                f"ABOVE {self.threshold:g}: the views give the target away "
                "(see docs/tasks/index.md#shortcuts)"
                if self.flagged
                else f"at most {self.threshold:g}: no shortcut"
            )
            return (
                f"shortcut score of {self.task}: {self.method.replace(_RESTORED, '')}restores "
                f"{self.score:.3f} of the target's variance (1: all; {self.samples} views){own}: {verdict}"
            )
        return (
            f"shortcut score of {self.task}: {self.score:.3f} from trivial statistics ({self.method}, "
            f"{self.samples} views) vs chance {self.chance:.3f} ({self.ratio:.1f} x){own}: {verdict}"
        )


@torch.no_grad()
@checked
def shortcut_score(
    task: PretextTask[Any, Any],
    images: Tensor,
    *,
    generator: torch.Generator | int = 0,
    repeats: Annotated[int, Range(1)] = 8,
    blocks: Annotated[int, Range(1)] = 2,
    batch_size: Annotated[int, Range(1)] = 16,
    threshold: Annotated[float, Range(0, low_open=True)] = 1.5,
    task_accuracy: Annotated[float, Range(high=1)] | None = None,
) -> ShortcutReport:
    """How well trivial statistics of a task's views predict its targets, beside chance.

    The task draws views from ``images`` as in training (its training mode, ``repeats`` draws
    per image; its state, e.g. the exemplar counter, is restored afterwards). Each view is
    reduced to :func:`view_statistics` (per channel, block means and stds; per patch for
    patch tasks). Then, by the kind of task:

    * grid tasks (jigsaw, RPL): whether *one tile alone* tells its cell (the absolute
      position that the tasks' targets are made of): a logistic regression
      (:func:`fit_logistic`) from a tile's statistics to its cell, fitted on the views of the
      first half of the images and scored on the other half; chance ``1 / cells`` (RPL: the
      query tile, ``1 / num_classes``). Low-level cues *between* tiles (an edge continued
      across a border) are what jitter and gap are for; they are not scored.
    * other classification tasks (rotation): the same regression from the view's
      statistics to the class; chance ``1 / num_classes``.
    * embedding (exemplar): each view's nearest other view by standardised statistics, in
      batches of ``batch_size`` images, scored as the task's accuracy (the same image?);
      chance ``1 / (views per batch - 1)``.
    * predictive (CPC): a ridge regression from a patch's statistics to those of the patch
      ``k`` rows further down, fitted on the first half of the images; on the other half, the
      candidate nearest to its prediction among every target of a batch of ``batch_size``
      images (the task's accuracy); chance ``1 / candidates``.
    * dense (Models Genesis, masked image modelling): a reconstruction has a shortcut when a
      trivial predictor already restores the target from the views, so that the encoder need
      not learn anything to lower the loss. The trivial predictor is the task's own baseline
      (:class:`~pretext3d.tasks.Reconstruction`: the corrupted view itself for Models Genesis,
      the neighbouring visible patches' mean or each patch's own mean for masked modelling);
      the score is the share of the target's variance (where the loss counts) that it
      restores, ``1 - error / variance``; "chance" is a perfect restoration, 1, and the score
      is flagged above ``0.9`` whatever ``threshold`` says (the views give the target away).

    Args:
        task: the task, as configured for training.
        images: ``(N, C, *spatial)`` images as the task receives them (after any loader crop).
        generator: seed or generator of the draws.
        repeats: draws per image.
        blocks: blocks per axis of the statistics.
        batch_size: images per batch for the embedding and predictive tasks.
        threshold: flag a score above ``threshold * chance``.
        task_accuracy: the task's own accuracy, reported alongside.

    Returns:
        A :class:`ShortcutReport`.

    Examples:
        >>> images = torch.randn(32, 1, 24, 24)
        >>> images[:, :, :2] += 5.0   # a bright top border gives each cell's position away
        >>> whole = p3.tasks.Jigsaw(2, grid=2, num_permutations=4, jitter=0, crop_scale=None,
        ...                         normalize_tiles=False)
        >>> shortcut_score(whole, images).flagged
        True

    References:
        - Doersch et al., "Unsupervised Visual Representation Learning by Context Prediction", ICCV 2015
          (trivial shortcuts: boundary patterns, chromatic aberration).
        - Noroozi & Favaro, "Unsupervised Learning of Visual Representations by Solving Jigsaw Puzzles", ECCV
          2016.
    """
    if not isinstance(task, PretextTask):
        raise TypeError(f"task must be a pretext3d PretextTask, got {type(task).__name__}")
    if not isinstance(images, Tensor) or images.dim() != task.spatial_dims + 2:
        raise ValueError(
            f"images must be a batch (N, C, *spatial) with {task.spatial_dims} spatial axes, "
            f"got {_shape(images)}"
        )
    check_int("repeats", repeats, 1)
    check_int("batch_size", batch_size, 2)
    check_positive("threshold", threshold)
    n = images.shape[0]
    if n < 4:
        raise ValueError(f"images must hold at least 4 images (half to fit, half to score), got {n}")
    gen = torch.Generator().manual_seed(generator) if isinstance(generator, int) else generator
    state = copy.deepcopy(task.state_dict())
    was_training = task.training
    task.train()
    try:
        if isinstance(task, ClassificationTask):
            score, chance, count, method = _classification_shortcut(task, images, gen, repeats, blocks)
        elif isinstance(task, EmbeddingTask):
            score, chance, count, method = _embedding_shortcut(task, images, gen, repeats, blocks, batch_size)
        elif isinstance(task, PredictiveTask):
            score, chance, count, method = _predictive_shortcut(
                task, images, gen, repeats, blocks, batch_size
            )
        elif isinstance(task, DenseTask):
            score, chance, count, method = _dense_shortcut(task, images, gen, repeats, batch_size)
            threshold = DENSE_SHORTCUT
        else:
            raise TypeError(f"{type(task).__name__} is none of the four kinds of task; no shortcut score")
    finally:
        task.load_state_dict(state)
        task.train(was_training)
    return ShortcutReport(type(task).__name__, score, chance, float(threshold), count, method, task_accuracy)


def _stats(task: PretextTask[Any, Any], views: Tensor, blocks: int) -> Tensor:
    if task.num_patches is not None:  # (B, P, C, *patch)
        return view_statistics(views.flatten(0, 1), blocks).reshape(views.shape[0], -1)
    return view_statistics(views, blocks)


def _classification_shortcut(
    task: ClassificationTask[Any], images: Tensor, gen: torch.Generator, repeats: int, blocks: int
) -> tuple[float, float, int, str]:
    half = images.shape[0] // 2
    parts = []
    for part in (images[:half], images[half:]):
        feats, targets = [], []
        for _ in range(repeats):
            views, y = task(part, gen)
            if isinstance(task, GridPatchTask):  # one tile alone: which cell is it?
                cells = task.tile_cells(y)
                keep = slice(1, None) if isinstance(task, RelativePatchLocation) else slice(None)
                feats.append(view_statistics(views[:, keep].flatten(0, 1), blocks))
                targets.append(cells[:, keep].flatten())
            else:
                feats.append(_stats(task, views, blocks))
                targets.append(y)
        parts.append((torch.cat(feats), torch.cat(targets)))
    (train_x, train_y), (test_x, test_y) = parts
    classes = task.num_cells if isinstance(task, GridPatchTask) else task.num_classes
    layer = fit_logistic(train_x, train_y, classes)
    score = float((layer(test_x).argmax(1) == test_y).float().mean())
    if isinstance(task, RelativePatchLocation):
        return score, 1.0 / task.num_classes, len(test_y), "one query tile's cell, logistic regression"
    if isinstance(task, GridPatchTask):
        return score, 1.0 / classes, len(test_y), "one tile's cell, logistic regression"
    return score, 1.0 / classes, len(test_y), "logistic regression, fitted on other images"


def _standardise(x: Tensor) -> Tensor:
    return (x - x.mean(0)) / x.std(0, unbiased=False).clamp_min(1e-6)


def _embedding_shortcut(
    task: EmbeddingTask[Any], images: Tensor, gen: torch.Generator, repeats: int, blocks: int, batch: int
) -> tuple[float, float, int, str]:
    batch = min(batch, images.shape[0])
    scores, chances, count = [], [], 0
    for _ in range(repeats):
        for start in range(0, images.shape[0] - batch + 1, batch):
            views, ids = task(images[start : start + batch], gen)
            scores.append(float(task.accuracy(_standardise(_stats(task, views, blocks)), ids)))
            chances.append(1.0 / (len(ids) - 1))
            count += len(ids)
    return float(sum(scores) / len(scores)), float(sum(chances) / len(chances)), count, "nearest view"


_RESTORED = "(share of variance restored)"

#: a dense task's trivial predictor that restores more of the target's variance than this is flagged
DENSE_SHORTCUT = 0.9


def _dense_shortcut(
    task: DenseTask[Any], images: Tensor, gen: torch.Generator, repeats: int, batch: int
) -> tuple[float, float, int, str]:
    trivial, spread, count = 0.0, 0.0, 0
    for _ in range(repeats):
        for start in range(0, images.shape[0], batch):
            _, targets = task(images[start : start + batch], gen)
            weight = targets.weight
            dims = tuple(range(1, targets.target.dim()))
            if weight is None:
                mean = targets.target.float().mean(dim=dims, keepdim=True)
            else:
                w = weight.float()
                mean = (targets.target.float() * w).sum(dims, keepdim=True) / (
                    w.sum(dims, keepdim=True) * targets.target.shape[1]
                ).clamp_min(1e-12)
            trivial += float(weighted_mse(targets.baseline, targets.target, weight)) * len(targets)
            spread += float(weighted_mse(mean.expand_as(targets.target), targets.target, weight)) * len(
                targets
            )
            count += len(targets)
    method = f"the task's trivial predictor ({task.baseline}) {_RESTORED}"
    return 1 - trivial / max(spread, 1e-12), 1.0, count, method


def _predictive_shortcut(
    task: PredictiveTask[Any], images: Tensor, gen: torch.Generator, repeats: int, blocks: int, batch: int
) -> tuple[float, float, int, str]:
    grid, steps, d = int(getattr(task, "grid")), int(getattr(task, "steps")), task.spatial_dims  # noqa: B009
    half = images.shape[0] // 2
    batch = min(batch, images.shape[0] - half)
    parts = []
    for part in (images[:half], images[half:]):
        z = []
        for _ in range(repeats):
            for start in range(0, len(part) - batch + 1, batch):
                views, _ = task(part[start : start + batch], gen)
                z.append(view_statistics(views.flatten(0, 1), blocks).reshape(len(views), *[grid] * d, -1))
        parts.append(torch.cat(z))
    fit, score = parts
    mean, std = fit.flatten(0, -2).mean(0), fit.flatten(0, -2).std(0, unbiased=False).clamp_min(1e-6)
    fit, score = (fit - mean) / std, (score - mean) / std

    def with_bias(rows: Tensor) -> Tensor:
        flat = rows.flatten(0, -2)
        return torch.cat([flat, flat.new_ones(len(flat), 1)], 1)

    hits, chances = [], []
    for k in range(steps):
        # a ridge regression from a patch's statistics to those of the patch 1 + k rows below it
        x, y = with_bias(fit[:, : grid - 1 - k]), fit[:, 1 + k :].flatten(0, -2)
        w = torch.linalg.solve(x.T @ x + 1e-2 * torch.eye(x.shape[1], device=x.device), x.T @ y)
        for start in range(0, len(score) - batch + 1, batch):
            part = score[start : start + batch]
            predicted = with_bias(part[:, : grid - 1 - k]) @ w
            candidates = part[:, 1 + k :].flatten(0, -2)
            right = torch.arange(len(predicted), device=predicted.device)
            hits.append(float((torch.cdist(predicted, candidates).argmin(1) == right).float().mean()))
            chances.append(1.0 / len(predicted))
    return (
        float(sum(hits) / len(hits)),
        float(sum(chances) / len(chances)),
        len(score),
        "ridge regression to the statistics of the patch below, nearest candidate",
    )


class FeatureProbe:
    """A probe of an encoder's frozen features on a small labelled set (a representation monitor).

    The labelled images are split once, by a seeded permutation, into a part to fit the
    probe on and a part to score it on. Calling the probe with an encoder runs the encoder
    (in eval mode, without gradients, in batches) and returns the held-out score:

    * ``task="classification"``: the encoder's globally pooled features, then a logistic
      regression (``method="linear"``) or a cosine k-NN vote (``method="knn"``, lightly's
      2D habit, here in 2D and 3D); metric ``accuracy``.
    * ``task="segmentation"``: a linear patch probe: the encoder's feature map ``(N, F,
      *s)``; each location's label is whether its patch of the label map holds foreground
      (label > 0); a class-balanced logistic regression on the feature vectors; metric
      ``patch_dice`` (Dice of the predicted foreground locations on the held-out images).
      The feature map is ``encoder.forward_features(x)`` where the encoder has it (the
      library's and timm's encoders), else ``encoder(x)``, which must then be ``(N, F,
      *spatial)``.

    Run it on the randomly initialised encoder for the reference any pretraining must beat;
    the :class:`~pretext3d.pretrainer.Pretrainer` logs that at step 0.

    Args:
        images: ``(N, C, *spatial)`` labelled images (all of one shape).
        labels: ``(N,)`` classes (classification) or ``(N, *spatial)`` label maps
            (segmentation).
        task: ``"classification"`` or ``"segmentation"``.
        method: ``"linear"`` or ``"knn"`` (classification only).
        every: steps between probes in a pretraining loop.
        train_fraction: share of the images the probe is fitted on.
        k: neighbours of the k-NN vote.
        batch_size: images per encoder call.
        seed: of the split.

    Examples:
        >>> images, grades = p3.data.fundus_phantom_batch(16, size=32)   # SYNTHETIC
        >>> probe = FeatureProbe(images, grades, task="classification", every=50)
        >>> encoder = p3.models.DenseNetEncoder(2, 3, growth_rate=4, block_config=(1, 1), init_features=8)
        >>> result = probe(encoder)   # the randomly initialised encoder's score: the reference
        >>> sorted(result), 0.0 <= result["accuracy"] <= 1.0
        (['accuracy'], True)

    References:
        - Kolesnikov et al., "Revisiting Self-Supervised Visual Representation Learning", CVPR 2019
          (linear evaluation of frozen features).
        - Wu et al., "Unsupervised Feature Learning via Non-Parametric Instance Discrimination", CVPR 2018
          (the k-NN monitor).
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        task: Literal["classification", "segmentation"] = "classification",
        method: Literal["linear", "knn"] = "linear",
        every: int = 100,
        train_fraction: float = 0.5,
        k: int = 5,
        batch_size: int = 16,
        seed: int = 0,
    ) -> None:
        self.task = check_choice("task", task, ("classification", "segmentation"))
        self.method = check_choice("method", method, ("linear", "knn"))
        if self.task == "segmentation" and self.method == "knn":
            raise ValueError(
                "method='knn' applies to task='classification'; segmentation uses a linear probe"
            )
        if not isinstance(images, Tensor) or images.dim() not in (4, 5) or not images.is_floating_point():
            raise ValueError(f"images must be a float batch (N, C, *spatial), got {_shape(images)}")
        if not isinstance(labels, Tensor) or labels.is_floating_point() or len(labels) != len(images):
            raise ValueError(
                f"labels must be an integer tensor with one entry per image, got {_shape(labels)}"
            )
        if self.task == "classification" and labels.dim() != 1:
            raise ValueError(f"task='classification' takes labels (N,), got {tuple(labels.shape)}")
        if labels.numel() and int(labels.min()) < 0:
            raise ValueError(
                f"labels must be class numbers >= 0, got {int(labels.min())} (an unlabelled image's -1? "
                "leave unlabelled images out of the probe)"
            )
        if not bool(torch.isfinite(images).all()):
            raise ValueError("images hold NaN or inf values: the probe's features would be NaN")
        if self.task == "segmentation" and tuple(labels.shape[1:]) != tuple(images.shape[2:]):
            raise ValueError(
                f"task='segmentation' takes label maps (N, *spatial) = (N, *{tuple(images.shape[2:])}), "
                f"got {tuple(labels.shape)}"
            )
        self.every = check_int("every", every, 1)
        self.k = check_int("k", k, 1)
        self.batch_size = check_int("batch_size", batch_size, 1)
        check_unit_interval("train_fraction", train_fraction, include_one=False)
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
        cut = round(len(images) * train_fraction)
        if cut < 2 or len(images) - cut < 1:
            raise ValueError(
                f"images hold {len(images)} images; train_fraction={train_fraction} leaves too few on one "
                "side "
                "(at least 2 to fit, 1 to score)"
            )
        self.images, self.labels = images.detach().float(), labels.detach().long()
        self.fit_index, self.score_index = order[:cut], order[cut:]
        self.spatial_dims = images.dim() - 2
        self.metric = "accuracy" if self.task == "classification" else "patch_dice"

    @torch.no_grad()
    def features(self, encoder: nn.Module) -> Tensor:
        """The encoder's features of every image: ``(N, F)`` pooled, or ``(N, F, *s)`` maps (segmentation)."""
        param = next(encoder.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        out = []
        run = getattr(encoder, "forward_features", encoder) if self.task == "segmentation" else encoder
        with evaluating(encoder):
            for start in range(0, len(self.images), self.batch_size):
                f = run(self.images[start : start + self.batch_size].to(device))
                if not isinstance(f, Tensor):
                    raise TypeError(f"the encoder returned a {type(f).__name__}, not a feature tensor")
                out.append((global_pool(f) if self.task == "classification" else f).float().cpu())
        feats = torch.cat(out)
        if self.task == "segmentation" and feats.dim() != self.spatial_dims + 2:
            raise ValueError(
                f"task='segmentation' needs a feature map (N, F, *spatial) from the encoder, got "
                f"{tuple(feats.shape)}"
            )
        return feats

    def __call__(self, encoder: nn.Module) -> dict[str, float]:
        """``{metric: held-out score}`` of a probe fitted on ``encoder``'s frozen features."""
        feats = self.features(encoder)
        if self.task == "classification":
            return {self.metric: self._classify(feats)}
        return {self.metric: self._segment(feats)}

    def _classify(self, feats: Tensor) -> float:
        fit_x, fit_y = feats[self.fit_index], self.labels[self.fit_index]
        score_x, score_y = feats[self.score_index], self.labels[self.score_index]
        if self.method == "knn":
            a, b = F.normalize(score_x, dim=1), F.normalize(fit_x, dim=1)
            nearest = (a @ b.T).topk(min(self.k, len(fit_y)), dim=1).indices
            votes = F.one_hot(fit_y[nearest], int(self.labels.max()) + 1).sum(1)
            predicted = votes.argmax(1)
        else:
            predicted = fit_logistic(fit_x, fit_y, int(self.labels.max()) + 1)(score_x).argmax(1)
        return float((predicted == score_y).float().mean())

    def _segment(self, feats: Tensor) -> float:
        size = tuple(feats.shape[2:])
        fg = (self.labels > 0).float().unsqueeze(1)
        pool = F.adaptive_max_pool2d if self.spatial_dims == 2 else F.adaptive_max_pool3d
        target = pool(fg, size).flatten(1).long()  # (N, locations): does the patch hold foreground?

        def rows(index: Tensor) -> tuple[Tensor, Tensor]:
            x = feats[index].flatten(2).transpose(1, 2).reshape(-1, feats.shape[1])
            return x, target[index].reshape(-1)

        fit_x, fit_y = rows(self.fit_index)
        score_x, score_y = rows(self.score_index)
        if int(fit_y.max()) == 0:
            raise ValueError("the probe's fitting images hold no foreground: use more labelled images")
        predicted = fit_logistic(fit_x, fit_y, 2, balanced=True)(score_x).argmax(1)
        both = float(((predicted == 1) & (score_y == 1)).sum())
        total = float((predicted == 1).sum() + (score_y == 1).sum())
        return 1.0 if total == 0 else 2 * both / total


def chance_level(task: PretextTask[Any, Any], batch_size: int | None = None) -> float | None:
    """The pretext accuracy of guessing: what a held-out accuracy must beat to say the task learned.

    A classification task's is ``1 / num_classes``; a dense task's score is the reconstruction
    skill against its trivial predictor, whose own is 0. The exemplar's and CPC's accuracies pick one
    candidate among a batch's, so theirs depends on ``batch_size`` (the batch the accuracy was
    measured on): the exemplar (two views per image) finds the partner among ``2 B - 1`` other
    views; CPC finds a prediction's target among every target of its step, ``B (g - 1 - k)
    g^(d-1)`` for step ``k`` on a grid of ``g``, averaged over the steps.

    Args:
        task: the task.
        batch_size: the images per measured batch (``None``: only a classification task's).

    Returns:
        The chance accuracy, or ``None`` where it is not fixed by these.

    Examples:
        >>> chance_level(p3.tasks.Rotation(3))
        0.1
        >>> round(chance_level(p3.tasks.Exemplar(3), batch_size=8), 4)   # 1 / 15
        0.0667
        >>> round(chance_level(p3.tasks.CPC(3, grid=4, patch=8, steps=2), batch_size=8), 4)   # 1/384, 1/256
        0.0033
    """
    if isinstance(task, ClassificationTask):
        return 1.0 / task.num_classes
    if isinstance(task, DenseTask):  # its score is a skill against its trivial predictor
        return 0.0
    if batch_size is None:
        return None
    check_int("batch_size", batch_size, 1)
    if isinstance(task, Exemplar) and task.protocol == "two_views":
        return 1.0 / (2 * batch_size - 1) if batch_size > 1 else None
    if isinstance(task, CPC):
        g, d, steps = int(task.grid), int(task.spatial_dims), int(task.steps)
        per_row = g ** (d - 1)
        return float(sum(1.0 / (batch_size * (g - 1 - k) * per_row) for k in range(steps)) / steps)
    return None
