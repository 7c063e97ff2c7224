"""Segmentation and grading metrics, done right.

* :func:`dice_per_case`: foreground Dice per case and class, identical to MONAI's
  ``DiceMetric(include_background=False, reduction="none")``.
* :func:`region_dice`: Dice of unions of labels per case (pancreas = {1, 2}, tumour = {2}).
* :func:`pooled_mean_dice`: the paper's figure 3 metric (voxels pooled over all test
  cases, background included, classes averaged), for comparison only: pooling lets large
  cases dominate and background inflates it.
* :func:`quadratic_weighted_kappa`: identical to scikit-learn's
  ``cohen_kappa_score(weights="quadratic", labels=range(num_classes))``, in torch.
* :func:`recall_per_class` and :func:`balanced_accuracy`: identical to scikit-learn's
  ``recall_score(average=None)`` and ``balanced_accuracy_score`` (classes absent from the
  target are NaN, and left out of the balance).

Empty-case rule (MONAI's ``ignore_empty=True``): where a case's target has no voxel of a
class (or region), its Dice is NaN, whatever the prediction, and averages should skip
it (``torch.nanmean``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

__all__ = [
    "PANCREAS_REGIONS",
    "balanced_accuracy",
    "dice_per_case",
    "pooled_mean_dice",
    "quadratic_weighted_kappa",
    "recall_per_class",
    "region_dice",
]

PANCREAS_REGIONS: dict[str, tuple[int, ...]] = {"pancreas": (1, 2), "tumour": (2,)}


def _check_maps(pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    if pred.is_floating_point() or target.is_floating_point():
        raise TypeError(
            "pred and target must be integer label maps (cases, *spatial); take argmax of logits first"
        )
    if pred.dim() < 2:
        raise ValueError(f"pred and target must be (cases, *spatial), got shape {tuple(pred.shape)}")


def _dice(pred_mask: Tensor, target_mask: Tensor) -> Tensor:
    """Dice per case of boolean masks ``(cases, N)``; NaN where the target is empty."""
    inter = (pred_mask & target_mask).sum(1).double()
    sizes = pred_mask.sum(1).double() + target_mask.sum(1).double()
    dice = 2 * inter / sizes
    return torch.where(target_mask.any(1), dice, torch.full_like(dice, float("nan")))


def dice_per_case(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """Foreground Dice per case and class.

    Args:
        pred: ``(cases, *spatial)`` integer label map.
        target: same shape.
        num_classes: classes including background (label 0).

    Returns:
        ``(cases, num_classes - 1)`` float64: column ``c`` is class ``c + 1``; NaN where the
        target has no voxel of that class.

    Examples:
        >>> pred, target = torch.tensor([[[0, 1], [2, 2]]]), torch.tensor([[[0, 1], [2, 0]]])
        >>> dice_per_case(pred, target, num_classes=3)   # (cases, foreground classes)
        tensor([[1.0000, 0.6667]], dtype=torch.float64)

    References:
        - Dice, "Measures of the Amount of Ecologic Association Between Species", Ecology 1945.
    """
    _check_maps(pred, target)
    p, t = pred.flatten(1), target.flatten(1)
    return torch.stack([_dice(p == c, t == c) for c in range(1, num_classes)], dim=1)


def region_dice(
    pred: Tensor, target: Tensor, regions: Mapping[str, Sequence[int]] = PANCREAS_REGIONS
) -> dict[str, Tensor]:
    """Dice per case of each region (a union of labels); NaN where the target region is empty.

    Returns:
        ``{name: (cases,) float64}``.

    Examples:
        >>> target = torch.tensor([[0, 1, 1, 2]])   # background, pancreas, pancreas, tumour
        >>> pred = torch.tensor([[0, 1, 2, 2]])
        >>> {k: v.tolist() for k, v in region_dice(pred, target).items()}   # pancreas = labels 1 and 2
        {'pancreas': [1.0], 'tumour': [0.6666666666666666]}

    References:
        - Dice, "Measures of the Amount of Ecologic Association Between Species", Ecology 1945.
    """
    _check_maps(pred, target)
    p, t = pred.flatten(1), target.flatten(1)
    out = {}
    for name, labels in regions.items():
        values = torch.tensor(list(labels), device=pred.device)
        out[name] = _dice(torch.isin(p, values), torch.isin(t, values))
    return out


def pooled_mean_dice(pred: Tensor, target: Tensor, num_classes: int) -> float:
    """The paper's "Avg Dice", offered for comparison with its figures only.

    All voxels of all cases are pooled and the per-class Dice averaged over every class,
    background included.

    Examples:
        >>> target = torch.tensor([[0, 0, 1, 2]])
        >>> pooled_mean_dice(target, target, num_classes=3)
        1.0
        >>> # background alone
        >>> round(pooled_mean_dice(torch.zeros(1, 4, dtype=torch.long), target, num_classes=3), 4)
        0.2222

    References:
        - Taleb et al., "3D Self-Supervised Methods for Medical Imaging", NeurIPS 2020. (the "Avg Dice" of its
          Figure 3).
    """
    _check_maps(pred, target)
    p, t = pred.flatten(), target.flatten()
    scores = []
    for c in range(num_classes):
        inter = ((p == c) & (t == c)).sum().double()
        size = (p == c).sum().double() + (t == c).sum().double()
        scores.append(float(2 * inter / size) if size > 0 else float("nan"))
    return float(torch.tensor(scores).nanmean())


def _check_labels(pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape or pred.dim() != 1:
        raise ValueError(
            f"pred and target must be (N,) of equal length, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    if pred.is_floating_point() or target.is_floating_point():
        raise TypeError("pred and target must be integer classes, not scores; take argmax of logits first")


def recall_per_class(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """Recall (sensitivity) of each class: the share of its images predicted as it.

    Identical to scikit-learn's ``recall_score(target, pred, average=None,
    labels=range(num_classes))`` except that a class absent from ``target`` is NaN (its recall
    is undefined; scikit-learn reports 0 with a warning).

    Args:
        pred: ``(N,)`` integer classes.
        target: ``(N,)`` integer classes.
        num_classes: number of classes.

    Returns:
        ``(num_classes,)`` float64.

    Examples:
        >>> recall_per_class(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1]), num_classes=3)
        tensor([1.0000, 0.6667,    nan], dtype=torch.float64)
    """
    _check_labels(pred, target)
    k = num_classes
    confusion = torch.bincount(target.long() * k + pred.long(), minlength=k * k).reshape(k, k).double()
    return confusion.diagonal() / confusion.sum(1)  # 0 / 0: NaN for a class the target lacks


def balanced_accuracy(pred: Tensor, target: Tensor, num_classes: int) -> float:
    """The mean recall over the classes in ``target``: chance is ``1 / classes``, whatever their shares.

    Identical to scikit-learn's ``balanced_accuracy_score(target, pred)``.

    Args:
        pred: ``(N,)`` integer classes.
        target: ``(N,)`` integer classes.
        num_classes: number of classes.

    Examples:
        >>> balanced_accuracy(torch.tensor([0, 0, 0, 0]), torch.tensor([0, 0, 0, 1]), num_classes=2)
        0.5

    References:
        - Brodersen et al., "The balanced accuracy and its posterior distribution", ICPR 2010.
    """
    return float(recall_per_class(pred, target, num_classes).nanmean())


def quadratic_weighted_kappa(pred: Tensor, target: Tensor, num_classes: int) -> float:
    """Cohen's kappa with quadratic weights over the labels ``0..num_classes-1``.

    Identical to scikit-learn's ``cohen_kappa_score(target, pred, weights="quadratic",
    labels=range(num_classes))``: NaN when the expected disagreement is zero (e.g. a
    single class in both).

    Args:
        pred: ``(N,)`` integer grades.
        target: ``(N,)`` integer grades.
        num_classes: number of grades.

    Examples:
        >>> pred, target = torch.tensor([0, 1, 2, 3, 4]), torch.tensor([0, 1, 2, 3, 3])
        >>> round(quadratic_weighted_kappa(pred, target, num_classes=5), 4)
        0.9412

    References:
        - Cohen, "Weighted kappa: Nominal scale agreement with provision for scaled disagreement or partial
          credit", Psychological Bulletin 1968.
    """
    _check_labels(pred, target)
    k = num_classes
    confusion = torch.bincount(target.long() * k + pred.long(), minlength=k * k).reshape(k, k).double()
    expected = torch.outer(confusion.sum(1), confusion.sum(0)) / confusion.sum()
    idx = torch.arange(k, dtype=torch.float64)
    weights = (idx[:, None] - idx[None, :]) ** 2
    denominator = (weights * expected).sum()
    if denominator == 0:
        return float("nan")
    return float(1 - (weights * confusion).sum() / denominator)
