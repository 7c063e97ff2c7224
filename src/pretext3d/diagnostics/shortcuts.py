"""What a pretext task can be solved from: :func:`shortcut_score` and its report."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Annotated, Any

import torch
from torch import Tensor

from pretext3d._checks import check_int, check_positive, shape_of
from pretext3d.config import Range, checked
from pretext3d.diagnostics.stats import fit_logistic, view_statistics
from pretext3d.tasks._grid import GridPatchTask
from pretext3d.tasks.base import (
    ClassificationTask,
    DenseTask,
    EmbeddingTask,
    PredictiveTask,
    PretextTask,
    weighted_mse,
)
from pretext3d.tasks.rpl import RelativePatchLocation

__all__ = ["DENSE_SHORTCUT", "ShortcutReport", "shortcut_score"]


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
            f"got {shape_of(images)}"
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
