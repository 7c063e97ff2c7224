"""Fine-tuning losses: soft Dice with real class weights, cross-entropy, and ordinal grading."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DiceCELoss", "OrdinalLoss", "SoftDiceLoss", "ordinal_decode", "ordinal_encode"]


class SoftDiceLoss(nn.Module):
    """``1 - weighted mean over classes of soft Dice`` on softmax probabilities.

    Dice of class ``c`` pools the batch: ``(2 sum p_c t_c + eps) / (sum p_c + sum t_c + eps)``.
    The original's "weighted" Dice had no weights; here ``weights`` really weigh the
    classes (normalised to sum 1).

    Args:
        num_classes: classes including background.
        include_background: count class 0.
        weights: one weight per counted class (default equal).
        eps: smoothing.

    Shapes:
        ``logits (B, K, *spatial)``, ``target (B, *spatial)`` integer -> scalar.

    Examples:
        >>> target = torch.zeros(1, 4, 4, 4, dtype=torch.long)
        >>> target[0, :2] = 1
        >>> perfect = torch.nn.functional.one_hot(target, 2).permute(0, 4, 1, 2, 3).float() * 20
        >>> SoftDiceLoss(num_classes=2)(perfect, target).item() < 1e-6
        True

    References:
        - Milletari et al., "V-Net: Fully Convolutional Neural Networks for Volumetric Medical Image
          Segmentation", 3DV 2016.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        include_background: bool = False,
        weights: Sequence[float] | None = None,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.first = 0 if include_background else 1
        count = num_classes - self.first
        if count < 1:
            raise ValueError("SoftDiceLoss needs at least one class to score")
        w = torch.ones(count) if weights is None else torch.tensor(list(weights), dtype=torch.float32)
        if w.shape != (count,) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(
                f"weights must be {count} non-negative numbers (one per scored class), got {weights}"
            )
        self.register_buffer("weights", w / w.sum())
        self.eps = eps

    weights: Tensor

    def per_class(self, logits: Tensor, target: Tensor) -> Tensor:
        """Soft Dice of each scored class, ``(K - first,)``."""
        if logits.shape[1] != self.num_classes or logits.shape[2:] != target.shape[1:]:
            raise ValueError(
                f"logits must be (B, {self.num_classes}, *spatial) matching target (B, *spatial), "
                f"got {tuple(logits.shape)} and {tuple(target.shape)}"
            )
        probs = logits.float().softmax(1).movedim(1, -1).reshape(-1, self.num_classes)[:, self.first :]
        onehot = F.one_hot(target.long().reshape(-1), self.num_classes).float()[:, self.first :]
        inter = (probs * onehot).sum(0)
        return (2 * inter + self.eps) / (probs.sum(0) + onehot.sum(0) + self.eps)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """The loss."""
        return 1 - (self.weights * self.per_class(logits, target)).sum()


class DiceCELoss(nn.Module):
    """Soft Dice plus cross-entropy (the stable recipe for few labelled volumes).

    Args:
        num_classes: classes including background.
        dice_weight: factor of the Dice term.
        ce_weight: factor of the cross-entropy term.
        class_weights: weights of the Dice classes, as for :class:`SoftDiceLoss`.
        include_background: count class 0 in the Dice term.

    Examples:
        >>> loss = DiceCELoss(num_classes=3)
        >>> loss(torch.randn(2, 3, 8, 8, 8), torch.randint(0, 3, (2, 8, 8, 8))).shape   # a scalar
        torch.Size([])

    References:
        - Isensee et al., "nnU-Net: a self-configuring method for deep learning-based biomedical image
          segmentation", Nature Methods 2021.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
        class_weights: Sequence[float] | None = None,
        include_background: bool = False,
    ) -> None:
        super().__init__()
        self.dice = SoftDiceLoss(num_classes, include_background=include_background, weights=class_weights)
        self.dice_weight, self.ce_weight = dice_weight, ce_weight

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """The loss."""
        dice: Tensor = self.dice(logits, target)
        return self.dice_weight * dice + self.ce_weight * F.cross_entropy(logits.float(), target.long())


def ordinal_encode(grades: Tensor, num_classes: int) -> Tensor:
    """The paper's cumulative multi-label encoding: grade ``g`` -> ``[1] * g + [0] * (K - 1 - g)``.

    Returns:
        ``(N, num_classes - 1)`` float.

    Examples:
        >>> ordinal_encode(torch.tensor([0, 2, 4]), num_classes=5)
        tensor([[0., 0., 0., 0.],
                [1., 1., 0., 0.],
                [1., 1., 1., 1.]])

    References:
        - Taleb et al., "3D Self-Supervised Methods for Medical Imaging", NeurIPS 2020. (the DR grading's
          encoding).
    """
    thresholds = torch.arange(1, num_classes, device=grades.device)
    return (grades[:, None] >= thresholds[None, :]).float()


def ordinal_decode(logits: Tensor) -> Tensor:
    """Grades from cumulative logits: the number of thresholds passed (sigmoid > 0.5).

    Examples:
        >>> ordinal_decode(torch.tensor([[3.0, 2.0, -1.0, -4.0], [-2.0, -3.0, -3.0, -5.0]]))
        tensor([2, 0])
        >>> grades = torch.tensor([0, 1, 4])
        >>> torch.equal(ordinal_decode(ordinal_encode(grades, 5) * 20 - 10), grades)
        True
    """
    return (logits > 0).long().sum(1)


class OrdinalLoss(nn.Module):
    """Binary cross-entropy on the cumulative encoding (K - 1 outputs for K grades).

    Examples:
        >>> grades = torch.tensor([0, 3])
        >>> logits = ordinal_encode(grades, 5) * 20 - 10   # confident and right
        >>> OrdinalLoss(num_classes=5)(logits, grades).item() < 1e-4
        True

    References:
        - Taleb et al., "3D Self-Supervised Methods for Medical Imaging", NeurIPS 2020. (the DR grading's
          encoding).
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, logits: Tensor, grades: Tensor) -> Tensor:
        """The loss of ``logits (N, K - 1)`` against integer ``grades (N,)``."""
        if logits.shape[1] != self.num_classes - 1:
            raise ValueError(f"OrdinalLoss needs {self.num_classes - 1} outputs, got {logits.shape[1]}")
        return F.binary_cross_entropy_with_logits(logits.float(), ordinal_encode(grades, self.num_classes))
