"""The common interface of every pretext task."""

from __future__ import annotations

import abc

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretext3d._checks import check_batch, check_spatial_dims
from pretext3d._random import randint

__all__ = ["ClassificationTask", "PretextTask"]


class PretextTask(nn.Module, abc.ABC):
    """Turns an unlabelled batch into pretext views and the targets to predict.

    A task holds no trainable weights. It is an ``nn.Module`` so that ``.to(device)``
    moves its buffers and ``.train()``/``.eval()`` switch its random augmentation off
    and on (a :class:`~pretext3d.PretextModel` holding it switches it too).

    Attributes:
        spatial_dims: 2 or 3.
        num_classes: number of pretext classes (0 for tasks that are not classifiers).
        num_patches: ``None`` when views are whole images ``(B, C, *spatial)``; ``P``
            when views are ``(B, P, C, *patch)`` patches that one shared encoder sees
            separately.
        check_finite: reject NaN/inf input (costs one reduction over the batch).
    """

    num_classes: int
    num_patches: int | None = None

    def __init__(self, spatial_dims: int, *, check_finite: bool = True) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.check_finite = check_finite

    @abc.abstractmethod
    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``(views, labels)`` for the batch ``x``."""

    @abc.abstractmethod
    def loss(self, output: Tensor, labels: Tensor) -> Tensor:
        """The pretext loss of the head's ``output``."""

    @abc.abstractmethod
    def make_head(self, num_features: int) -> nn.Module:
        """The task's default head for an encoder with ``num_features`` output channels."""

    @staticmethod
    @abc.abstractmethod
    def accuracy(output: Tensor, labels: Tensor) -> Tensor:
        """A pretext accuracy to log, in ``[0, 1]`` (a 0-dim tensor)."""


class ClassificationTask(PretextTask):
    """A task whose label is a class drawn per sample (rotation, jigsaw, relative patch location).

    Calling it on ``(B, C, *spatial)`` returns ``(views, labels)`` on the input's device;
    a single sample ``(C, *spatial)`` gives views without the batch axis and a 0-dim
    label, as a ``Dataset`` would want.
    """

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Draw a label per sample and build its views.

        Args:
            x: ``(B, C, *spatial)`` float batch, or one sample ``(C, *spatial)``.
            generator: source of randomness; a seeded generator makes the call
                reproducible. Labels are drawn on the generator's device (the global
                generator of ``x``'s device if ``None``) and moved to ``x``'s device.

        Returns:
            ``(views, labels)``: views as described by the subclass, ``labels`` a
            ``LongTensor (B,)`` of class indices.
        """
        batch, single = check_batch(x, self.spatial_dims, check_finite=self.check_finite)
        self._check_input(batch)
        labels = randint(self.num_classes, (batch.shape[0],), generator, batch.device)
        views = self._views(batch, labels, generator)
        return (views[0], labels[0]) if single else (views, labels)

    def loss(self, output: Tensor, labels: Tensor) -> Tensor:
        """Cross-entropy of the head's logits ``(B, num_classes)`` against ``labels (B,)``."""
        return F.cross_entropy(output, labels)

    @staticmethod
    def accuracy(output: Tensor, labels: Tensor) -> Tensor:
        """Fraction of samples whose largest logit is the label (a 0-dim tensor)."""
        return (output.argmax(dim=-1) == labels).float().mean()

    def make_head(self, num_features: int) -> nn.Module:
        """The task's default head for an encoder with ``num_features`` output channels."""
        from pretext3d.heads import ClassifierHead, MultiPatchClassifierHead

        if self.num_patches is None:
            return ClassifierHead(num_features, self.num_classes)
        return MultiPatchClassifierHead(num_features, self.num_patches, self.num_classes)

    @abc.abstractmethod
    def _check_input(self, x: Tensor) -> None:
        """Raise ``ValueError`` if ``x`` (a checked ``(B, C, *spatial)`` batch) does not fit."""

    @abc.abstractmethod
    def _views(self, x: Tensor, labels: Tensor, generator: torch.Generator | None) -> Tensor:
        """Views of ``x`` for ``labels``."""
