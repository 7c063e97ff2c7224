"""The statistics the diagnostics share.

Trivial view statistics, a logistic regression fitted in torch, chance levels, the Wilson
interval, and the pretrainer's at-chance / solved warning.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretext3d._checks import check_int, check_unit_interval, shape_of
from pretext3d.config import Range, checked
from pretext3d.tasks.base import (
    ClassificationTask,
    DenseTask,
    PretextTask,
)
from pretext3d.tasks.cpc import CPC
from pretext3d.tasks.exemplar import Exemplar

__all__ = [
    "MIN_HELD_OUT",
    "chance_level",
    "fit_logistic",
    "pretext_warning",
    "view_statistics",
    "wilson_interval",
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
        raise ValueError(f"views must be (N, C, *spatial) with 2 or 3 spatial axes, got {shape_of(views)}")
    flat = views.float()
    pool = F.adaptive_avg_pool2d if flat.dim() == 4 else F.adaptive_avg_pool3d
    mean = pool(flat, blocks)
    var = (pool(flat.square(), blocks) - mean.square()).clamp_min(0)
    return torch.cat([mean.flatten(2), var.sqrt().flatten(2)], dim=2).flatten(1)


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


@checked
def pretext_warning(
    task: PretextTask[Any, Any],
    accuracy: Annotated[float, Range(high=1)],
    count: Annotated[int, Range(0)] | None = None,
) -> str | None:
    """A warning when a held-out pretext accuracy says the task teaches little.

    At chance (classification: below 1.5 x chance, and the accuracy's 95 % Wilson interval
    reaches chance; a dense task: a reconstruction skill of 0 or less, no better than its
    trivial predictor) the encoder learns nothing from it; at 0.99 or more (and the interval's
    lower end at 0.9 or more) the task is solved outright, often from a shortcut (see
    docs/tasks/rotation.md). With ``count`` held-out images below :data:`MIN_HELD_OUT` no
    warning is given: 8 images cannot tell 0.875 from 1.0 or 0 from chance.

    Args:
        task: the pretext task.
        accuracy: its held-out accuracy.
        count: held-out images it was measured on (``None``: no interval).

    Examples:
        >>> pretext_warning(p3.tasks.Rotation(3), 0.11, count=64)   # 10 classes: chance is 0.1
        'is at chance (held-out accuracy 0.110 on 64 images, 95 % interval 0.054-0.210; chance 0.100)'
        >>> pretext_warning(p3.tasks.Rotation(3), 0.0, count=8) is None   # too few images to tell
        True
        >>> pretext_warning(p3.tasks.Rotation(3), 0.6) is None
        True
    """
    if count is not None and count < MIN_HELD_OUT:
        return None
    if isinstance(task, DenseTask):  # a skill, not a proportion: no interval
        if accuracy <= 0:
            return (
                f"is no better than its trivial predictor (held-out reconstruction skill {accuracy:.3f}; "
                "0 is the trivial predictor's)"
            )
        return None
    check_unit_interval("accuracy (of a classification task)", accuracy)
    interval = wilson_interval(accuracy, count) if count is not None else None
    on = f" on {count} images, 95 % interval {interval[0]:.3f}-{interval[1]:.3f}" if interval else ""
    if accuracy >= 0.99 and (interval is None or interval[0] >= 0.9):
        return f"is solved outright (held-out accuracy {accuracy:.3f}{on}): it may be too easy to teach much"
    chance = chance_level(task)
    if chance is not None and accuracy < 1.5 * chance and (interval is None or interval[0] <= chance):
        return f"is at chance (held-out accuracy {accuracy:.3f}{on}; chance {chance:.3f})"
    return None


#: fewer held-out images than this give no at-chance or solved warning (see :func:`pretext_warning`)
MIN_HELD_OUT = 16


@checked
def wilson_interval(
    proportion: Annotated[float, Range(0, 1)],
    count: Annotated[int, Range(1)],
    z: Annotated[float, Range(0, low_open=True)] = 1.96,
) -> tuple[float, float]:
    """The Wilson score interval of a proportion measured on ``count`` trials (95 % for ``z=1.96``).

    Examples:
        >>> [round(v, 3) for v in wilson_interval(1.0, 8)]   # 8 of 8 right: still possibly 0.68
        [0.676, 1.0]
    """
    n = count
    centre = (proportion + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(proportion * (1 - proportion) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)
