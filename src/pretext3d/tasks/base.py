"""The contract every pretext task keeps, and its three kinds.

One training step works for every task::

    views, targets = task(x, generator)
    loss = task.loss(model(views), targets, generator=generator)

A call is two steps that can be taken apart: :meth:`PretextTask.randomize` draws the
step's parameters (a :class:`TaskParams`) from the generator, and
:meth:`PretextTask.apply_params` builds the views and targets from them without any
randomness, so what the model saw can be rebuilt, inspected and pictured.

The kind of task says what ``targets`` are:

* :class:`ClassificationTask` (rotation, jigsaw, relative patch location): class indices
  ``LongTensor (B,)`` in ``[0, num_classes)``;
* :class:`EmbeddingTask` (exemplar): instance ids ``LongTensor (N,)``, equal for the
  views of one image;
* :class:`PredictiveTask` (CPC): ``None``, since the head predicts codes it also computes
  from the image itself; there is nothing else to compare with;
* :class:`DenseTask` (Models Genesis, masked image modelling): a :class:`Reconstruction`,
  the image ``(B, C, *spatial)`` the head's full-resolution output should restore, where the
  loss counts, and a trivial predictor's output that the task's score is measured against.

``.train()`` / ``.eval()`` mean the same for every task: eval mode switches off the
randomness that is *not* the task (patch jitter, CPC's flips and crops) and freezes the
task's state (the exemplar memory and instance counter); what *defines* the targets (the
rotation, permutation or location drawn, the exemplar's augmented views) is still drawn
from the generator, so a held-out pass measures the task itself.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Generic, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import Self

from pretext3d._checks import check_batch, check_spatial_dims
from pretext3d._random import as_generator
from pretext3d.config import SpatialDims
from pretext3d.heads import ClassifierHead, MultiPatchClassifierHead, ProjectionHead
from pretext3d.objectives import check_embeddings

__all__ = [
    "ClassificationTask",
    "DenseTask",
    "EmbeddingTask",
    "PredictiveTask",
    "PretextTask",
    "Reconstruction",
    "TaskParams",
    "check_classes",
]


@dataclasses.dataclass
class TaskParams:
    """The random parameters of one call of a task: tensors with the batch first.

    Subclasses are dataclasses whose fields are tensors ``(B, ...)``, nested
    :class:`TaskParams`, ``None`` or plain numbers.

    Examples:
        >>> task = p3.tasks.Rotation(spatial_dims=2)
        >>> params = task.randomize(torch.randn(3, 1, 8, 8), generator=0)   # a RotationParams
        >>> len(params), params.to("cpu").rotation.shape
        (3, torch.Size([3]))
    """

    def __len__(self) -> int:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor) or hasattr(value, "to"):
                return len(value)
        raise TypeError(f"{type(self).__name__} holds no per-sample tensor")

    def to(self, device: torch.device | str) -> Self:
        """A copy with every tensor on ``device``."""
        moved = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            # tensors and nested parameter objects (TaskParams, AugmentParams) move; numbers stay
            moved[f.name] = value.to(device) if hasattr(value, "to") else value
        return dataclasses.replace(self, **moved)


P = TypeVar("P", bound=TaskParams)
T = TypeVar("T")


class PretextTask(nn.Module, abc.ABC, Generic[P, T]):
    """Turns an unlabelled batch into pretext views and the targets to predict.

    A task holds no trainable weights. It is an ``nn.Module`` so that ``.to(device)``
    moves its buffers, ``state_dict`` saves its state (permutation sets, memories,
    counters), and ``.train()``/``.eval()`` switch it as described in
    :mod:`pretext3d.tasks.base` (a :class:`~pretext3d.PretextModel` holding it switches
    it too).

    Calls need the batch axis, so that a 2D batch never passes as one 3D sample. One
    sample ``(C, *spatial)``, as a ``Dataset`` has it, goes through :meth:`single`, which
    returns views without the batch axis (and a 0-dim class); an embedding task refuses
    it, since its targets relate samples to each other.

    Attributes:
        spatial_dims: 2 or 3.
        num_patches: ``None`` when views are whole images ``(B, C, *spatial)``; ``P``
            when views are ``(B, P, C, *patch)`` patches that one shared encoder sees
            separately.
        check_finite: reject NaN/inf input (costs one reduction over the batch).

    Examples:
        >>> task = p3.tasks.Rotation(spatial_dims=2)
        >>> x = torch.randn(4, 1, 16, 16)
        >>> views, targets = task(x, generator=0)
        >>> same = task.apply_params(x, task.randomize(x, generator=0))   # the call in two steps
        >>> torch.equal(views, same[0]) and torch.equal(targets, same[1])
        True
        >>> one_view, one_class = task.single(x[0], generator=0)   # one sample, as in a Dataset
        >>> one_view.shape, one_class.dim()
        (torch.Size([1, 16, 16]), 0)

    References:
        - Taleb et al., "3D Self-Supervised Methods for Medical Imaging", NeurIPS 2020.
    """

    params_type: type[P]
    num_patches: int | None = None

    def __init__(self, spatial_dims: SpatialDims, *, check_finite: bool = True) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.check_finite = bool(check_finite)

    def forward(self, x: Tensor, generator: torch.Generator | int | None = None) -> tuple[Tensor, T]:
        """``apply_params(x, randomize(x, generator))``: the views and targets of ``x``.

        Args:
            x: ``(B, C, *spatial)`` float batch (for one sample use :meth:`single`).
            generator: the one source of this step's randomness; a seeded generator makes
                the call reproducible (an int seeds a fresh one). Numbers are drawn on the
                generator's device (the global generator of ``x``'s device if ``None``) and
                moved to ``x``'s.

        Returns:
            ``(views, targets)`` as the task's class documents them.
        """
        batch = self._check(x)
        return self._make_views(batch, self._randomize(batch, as_generator(generator)))

    def single(self, x: Tensor, generator: torch.Generator | int | None = None) -> tuple[Tensor, T]:
        """The views and targets of one sample ``(C, *spatial)`` without a batch axis (for a ``Dataset``).

        Equal to ``task(x[None], generator)`` with the batch axis taken off again (a class
        becomes 0-dim). A method of its own, because a 2D batch given to a 3D task would
        otherwise pass as one sample.
        """
        one, single = check_batch(x, self.spatial_dims, check_finite=False)
        if not single:
            raise ValueError(
                f"single() takes one sample (C, *spatial) with {self.spatial_dims} spatial axes, got "
                f"shape {tuple(x.shape)}; call the task itself on a batch"
            )
        views, targets = self(one, generator)
        return views[0], (targets[0] if isinstance(targets, Tensor) else targets)  # type: ignore[return-value]

    def randomize(self, x: Tensor, generator: torch.Generator | int | None = None) -> P:
        """Draw the parameters of one call on the batch ``x`` (as ``forward`` would)."""
        return self._randomize(self._check(x), as_generator(generator))

    def apply_params(self, x: Tensor, params: P) -> tuple[Tensor, T]:
        """Build the views and targets of ``x`` from ``params``, without randomness.

        ``task(x, g)`` equals ``task.apply_params(x, task.randomize(x, g'))`` for two
        generators in the same state, in either mode.

        Raises:
            TypeError: ``params`` is not this task's parameter type.
            ValueError: ``params`` were drawn for another batch size.
        """
        batch = self._check(x)
        if not isinstance(params, self.params_type):
            raise TypeError(
                f"params must be a {self.params_type.__name__} (from {type(self).__name__}.randomize), "
                f"got {type(params).__name__}"
            )
        if len(params) != batch.shape[0]:
            raise ValueError(
                f"params were drawn for a batch of {len(params)}, but x holds {batch.shape[0]} samples"
            )
        params = params.to(batch.device)
        self._check_params(batch, params)
        return self._make_views(batch, params)

    @abc.abstractmethod
    def loss(self, output: Tensor, targets: T, *, generator: torch.Generator | int | None = None) -> Tensor:
        """The pretext loss of the head's ``output`` (randomness, if any, from ``generator``)."""

    @abc.abstractmethod
    def accuracy(self, output: Tensor, targets: T) -> Tensor:
        """A pretext score to log, at most 1 (0-dim): an accuracy in ``[0, 1]``, or a dense task's skill."""

    @abc.abstractmethod
    def make_head(self, num_features: int) -> nn.Module:
        """The task's default head for an encoder with ``num_features`` output channels."""

    @abc.abstractmethod
    def _randomize(self, x: Tensor, generator: torch.Generator | None) -> P:
        """Parameters for the checked batch ``x``."""

    @abc.abstractmethod
    def _make_views(self, x: Tensor, params: P) -> tuple[Tensor, T]:
        """Views and targets of the checked batch ``x`` (``params`` valid, on ``x``'s device)."""

    def _check_params(self, x: Tensor, params: P) -> None:
        """Raise if user-given ``params`` do not fit the checked batch ``x`` (drawn ones always do)."""

    def _check_input(self, x: Tensor) -> None:
        """Raise ``ValueError`` if the checked batch ``x`` does not fit the task."""

    def _check(self, x: Tensor) -> Tensor:
        batch, _ = check_batch(x, self.spatial_dims, check_finite=self.check_finite, allow_single=False)
        self._check_input(batch)
        return batch


class ClassificationTask(PretextTask[P, Tensor]):
    """A task whose target is a class drawn per sample (rotation, jigsaw, relative patch location).

    Targets are ``LongTensor (B,)`` class indices; the head gives logits
    ``(B, num_classes)``; the loss is cross-entropy.

    Attributes:
        num_classes: the number of pretext classes.

    Examples:
        >>> task = p3.tasks.Rotation(spatial_dims=2)
        >>> views, targets = task(torch.randn(4, 1, 16, 16), generator=0)
        >>> logits = torch.nn.functional.one_hot(targets, task.num_classes).float() * 10   # a perfect head
        >>> float(task.accuracy(logits, targets)), float(task.loss(logits, targets)) < 1e-3
        (1.0, True)
    """

    num_classes: int

    def loss(
        self, output: Tensor, targets: Tensor, *, generator: torch.Generator | int | None = None
    ) -> Tensor:
        """Cross-entropy of the logits ``(B, num_classes)`` against the classes ``(B,)`` (no randomness)."""
        self._check_logits(output, targets)
        return F.cross_entropy(output, targets)

    def accuracy(self, output: Tensor, targets: Tensor) -> Tensor:
        """Fraction of samples whose largest logit is their class (a 0-dim tensor)."""
        self._check_logits(output, targets)
        return (output.argmax(dim=-1) == targets).float().mean()

    def _check_logits(self, output: object, targets: object) -> None:
        if not isinstance(output, Tensor) or output.dim() != 2 or output.shape[1] != self.num_classes:
            shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise ValueError(
                f"{type(self).__name__} scores logits (B, num_classes={self.num_classes}), got {shape}"
            )
        if not isinstance(targets, Tensor) or targets.shape != (output.shape[0],):
            shape = tuple(targets.shape) if isinstance(targets, Tensor) else type(targets).__name__
            raise ValueError(f"targets must be the task's classes ({output.shape[0]},), got {shape}")

    def make_head(self, num_features: int) -> nn.Module:
        """A :class:`~pretext3d.heads.ClassifierHead`, or a multi-patch one for patch views."""
        if self.num_patches is None:
            return ClassifierHead(num_features, self.num_classes)
        return MultiPatchClassifierHead(num_features, self.num_patches, self.num_classes)


class EmbeddingTask(PretextTask[P, Tensor]):
    """A task whose targets are instance ids: views with equal ids show the same image.

    The head gives embeddings ``(N, embedding_dim)``; a metric loss pulls views of one
    instance together and pushes other instances apart.

    Attributes:
        embedding_dim: size of the embeddings the default head produces.
        min_batch_size: images a training batch needs (2: the other images are the negatives;
            with one, every loss is 0).

    Examples:
        >>> task = p3.tasks.Exemplar(spatial_dims=2)
        >>> views, ids = task(torch.randn(3, 1, 16, 16), generator=0)
        >>> ids.tolist()   # two views per image: views with equal ids show the same image
        [0, 1, 2, 0, 1, 2]
        >>> # each view's nearest is its pair
        >>> float(task.accuracy(torch.nn.functional.one_hot(ids).float(), ids))
        1.0
    """

    embedding_dim: int
    min_batch_size: int = 2

    def accuracy(self, output: Tensor, targets: Tensor) -> Tensor:
        """Fraction of embeddings whose nearest other embedding has the same instance id."""
        output, targets = check_embeddings(output, targets)
        dist = torch.cdist(output.detach().float(), output.detach().float())
        dist.fill_diagonal_(float("inf"))
        return (targets[dist.argmin(dim=1)] == targets).float().mean()

    def make_head(self, num_features: int) -> nn.Module:
        """A :class:`~pretext3d.heads.ProjectionHead` to ``embedding_dim``."""
        return ProjectionHead(num_features, self.embedding_dim)

    def single(self, x: Tensor, generator: torch.Generator | int | None = None) -> tuple[Tensor, Tensor]:
        """Refused: an embedding task's targets relate the samples of a batch to each other."""
        raise ValueError(
            f"{type(self).__name__} needs a batch (B, C, *spatial), not one sample: its targets relate "
            "samples to each other"
        )


class PredictiveTask(PretextTask[P, None]):
    """A task whose head predicts parts of the input from other parts (CPC).

    There are no external targets: the call returns ``(views, None)`` and the head's
    output carries both its predictions and what they should match.

    Examples:
        >>> task = p3.tasks.CPC(spatial_dims=2, grid=4, patch=8)
        >>> views, targets = task(torch.randn(2, 1, 32, 32), generator=0)
        >>> views.shape, targets   # no external targets
        (torch.Size([2, 16, 1, 8, 8]), None)
    """


@dataclasses.dataclass
class Reconstruction:
    """The targets of a :class:`DenseTask`: what the head's full-resolution output should restore.

    Attributes:
        target: ``(B, C, *spatial)``: the image (or its normalised patches) to restore.
        weight: ``(B, 1, *spatial)`` weights of the loss (1 where it counts, 0 elsewhere), or
            ``None``: every voxel counts.
        baseline: ``(B, C, *spatial)``: a trivial predictor's output (e.g. the corrupted
            input itself); the task's score is the share of its error that the head removes.

    Examples:
        >>> x = torch.zeros(1, 1, 4, 4)
        >>> r = Reconstruction(x, None, x + 1)
        >>> float(weighted_mse(r.baseline, r.target, r.weight))
        1.0
    """

    target: Tensor
    weight: Tensor | None
    baseline: Tensor

    def __len__(self) -> int:
        return len(self.target)


def weighted_mse(output: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean squared error over the voxels that ``weight`` ``(B, 1, *spatial)`` selects (all if ``None``).

    ``sum(weight * (output - target)**2) / (C * sum(weight))``: unselected voxels of ``output``
    do not change it. 0 when ``weight`` selects nothing.

    Examples:
        >>> out, target = torch.tensor([[[1.0, 5.0]]]), torch.zeros(1, 1, 2)
        >>> float(weighted_mse(out, target)), float(weighted_mse(out, target, torch.tensor([[[1.0, 0.0]]])))
        (13.0, 1.0)
    """
    squared = (output.float() - target.float()) ** 2
    if weight is None:
        return squared.mean()
    weight = weight.float()
    return (squared * weight).sum() / (weight.sum() * output.shape[1]).clamp_min(1e-12)


class DenseTask(PretextTask[P, Reconstruction]):
    """A task whose head restores a full-resolution image: Models Genesis, masked image modelling.

    The views are images ``(B, C, *spatial)`` (corrupted, or partly masked); the head is a
    :class:`~pretext3d.models.DenseHead` that decodes the encoder's multi-scale feature maps
    back to the views' size and channels (a :class:`~pretext3d.PretextModel` builds it from the
    encoder, not from a feature width); targets are a :class:`Reconstruction`. The loss is the
    mean squared error where ``weight`` selects; the score (:meth:`accuracy`, logged beside
    the other tasks' accuracies) is the *reconstruction skill* ``1 - error / baseline error``:
    1 for a perfect restoration, 0 for no better than the trivial predictor the task names
    (its "chance"), below 0 for worse.

    Examples:
        >>> task = p3.tasks.ModelsGenesis(spatial_dims=2)
        >>> x = torch.rand(2, 1, 32, 32)
        >>> views, targets = task(x, generator=0)
        >>> float(task.accuracy(targets.target, targets)), float(task.accuracy(targets.baseline, targets))
        (1.0, 0.0)
    """

    @property
    def baseline(self) -> str:
        """The trivial predictor the score is measured against, in words."""
        return "the task's trivial predictor"

    def loss(
        self, output: Tensor, targets: Reconstruction, *, generator: torch.Generator | int | None = None
    ) -> Tensor:
        """Mean squared error of the restored image ``(B, C, *spatial)`` where ``targets.weight`` counts."""
        self._check_output(output, targets)
        return weighted_mse(output, targets.target, targets.weight)

    def accuracy(self, output: Tensor, targets: Reconstruction) -> Tensor:
        """Reconstruction skill ``1 - error / baseline error`` (0-dim; 0: the trivial predictor's)."""
        self._check_output(output, targets)
        error = weighted_mse(output.detach(), targets.target, targets.weight)
        baseline = weighted_mse(targets.baseline, targets.target, targets.weight)
        return 1 - error / baseline.clamp_min(1e-12)

    def _check_output(self, output: object, targets: object) -> None:
        if not isinstance(targets, Reconstruction):
            raise TypeError(f"targets must be the task's Reconstruction, got {type(targets).__name__}")
        if not isinstance(output, Tensor) or output.shape != targets.target.shape:
            shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise ValueError(
                f"{type(self).__name__} scores a restored image of the views' shape "
                f"{tuple(targets.target.shape)} (a DenseHead's output), got {shape}"
            )

    def make_head(self, num_features: int) -> nn.Module:
        """Refused: a dense head (a :class:`~pretext3d.models.DenseHead`) decodes feature maps."""
        raise TypeError(
            f"{type(self).__name__} needs a head that decodes the encoder's multi-scale feature maps, not "
            "pooled features of a width: pretext3d.models.DenseHead(encoder) (PretextModel builds it)"
        )

    def single(self, x: Tensor, generator: torch.Generator | int | None = None) -> tuple[Tensor, Any]:
        """Refused: a dense task's targets are a :class:`Reconstruction` of the batch."""
        raise ValueError(
            f"{type(self).__name__} makes views on the batch (its targets hold the image and a weight map); "
            "call the task on a batch (B, C, *spatial), as the Pretrainer does"
        )


def check_classes(classes: object, batch: int, num_classes: int, name: str) -> Tensor:
    """Return ``classes`` as a ``LongTensor (batch,)`` of indices in ``[0, num_classes)``, else raise.

    Examples:
        >>> check_classes(torch.tensor([0, 3]), batch=2, num_classes=4, name="rotation")
        tensor([0, 3])
        >>> check_classes(torch.tensor([0, 4]), batch=2, num_classes=4, name="rotation")
        Traceback (most recent call last):
        ValueError: rotation must lie in [0, 4), got values from 0 to 4
    """
    if not isinstance(classes, torch.Tensor) or classes.is_floating_point() or classes.is_complex():
        raise TypeError(f"{name} must be an integer tensor of shape ({batch},), got {classes!r}")
    if classes.shape != (batch,):
        raise ValueError(f"{name} must have shape ({batch},) to match x, got {tuple(classes.shape)}")
    if int(classes.min()) < 0 or int(classes.max()) >= num_classes:
        raise ValueError(
            f"{name} must lie in [0, {num_classes}), got values from {int(classes.min())} "
            f"to {int(classes.max())}"
        )
    return classes.long()
