"""Triplet miners: choose ``(anchor, positive, negative)`` index triplets from a batch.

Miners are stateless: everything a call needs arrives with the call, and every random
draw comes from its ``generator``.

A miner sees embeddings ``(N, D)`` and labels ``(N,)`` (samples with equal labels belong
together) and returns three ``LongTensor``s of equal length; a loss such as
:class:`~pretext3d.objectives.TripletMarginLoss` consumes them (the split of
pytorch-metric-learning). Every miner works on the ``(N, N)`` distance matrix, or on
``(pairs, N)`` rows of it, never on ``(N, N, N)`` masks.

Guarantees of every built-in miner, tested: the anchor and positive share a label, the
anchor and negative do not, and no index is paired with itself. A batch in which an
anchor has no positive or no negative yields no triplet for it, never a false one (the
original code made a sample its own negative in a batch of one).

Write your own by subclassing :class:`Miner` and implementing :meth:`Miner.mine`::

    class HardestPairMiner(Miner):
        def mine(self, dist, same, *, embedding_dim, generator):
            a, p = self.positive_pairs(same)
            neg_dist = dist[a].masked_fill(same[a], float("inf"))
            n = neg_dist.argmin(dim=1)
            keep = torch.isfinite(neg_dist[torch.arange(len(a)), n])
            return a[keep], p[keep], n[keep]
"""

from __future__ import annotations

import abc
import math

import torch
from torch import Tensor

from pretext3d._checks import check_int, check_positive
from pretext3d._random import as_generator, rand, randperm

__all__ = [
    "BatchHardMiner",
    "DistanceWeightedMiner",
    "Miner",
    "RandomNegativeMiner",
    "SemiHardMiner",
    "Triplets",
    "check_embeddings",
]

Triplets = tuple[Tensor, Tensor, Tensor]


def check_embeddings(embeddings: object, labels: object) -> tuple[Tensor, Tensor]:
    """Validate ``(N, D)`` float embeddings and ``(N,)`` integer labels.

    Examples:
        >>> check_embeddings(torch.zeros(4, 8), torch.tensor([0, 0, 1]))
        Traceback (most recent call last):
        ValueError: embeddings and labels must have the same length, got 4 and 3
    """
    if not isinstance(embeddings, Tensor) or not embeddings.is_floating_point():
        raise TypeError(
            f"embeddings must be a floating-point torch.Tensor (N, D), got {type(embeddings).__name__}"
        )
    if embeddings.dim() != 2:
        raise ValueError(
            f"embeddings must have shape (N, D); got {tuple(embeddings.shape)}. Pool or flatten "
            "feature maps first (the projection head does)."
        )
    if not isinstance(labels, Tensor) or labels.is_floating_point() or labels.dim() != 1:
        raise TypeError(
            f"labels must be a 1-D integer tensor (N,), got "
            f"{tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__}"
        )
    if len(labels) != len(embeddings):
        raise ValueError(
            f"embeddings and labels must have the same length, got {len(embeddings)} and {len(labels)}"
        )
    return embeddings, labels


class Miner(abc.ABC):
    """Base class: validation, the distance matrix, the triplet cap.

    Args:
        max_triplets: keep at most this many triplets, chosen at random (``None``: all).

    Examples:
        A miner that takes, for each positive pair, the first sample of another instance:

        >>> class FirstNegativeMiner(Miner):
        ...     def mine(self, dist, same, *, embedding_dim, generator):
        ...         a, p = self.positive_pairs(same)
        ...         return a, p, (~same[a]).float().argmax(dim=1)
        >>> a, p, n = FirstNegativeMiner()(torch.randn(4, 3), torch.tensor([0, 0, 1, 1]))
        >>> a.tolist(), p.tolist(), n.tolist()
        ([0, 1, 2, 3], [1, 0, 3, 2], [2, 2, 0, 0])
    """

    def __init__(self, max_triplets: int | None = None) -> None:
        if max_triplets is not None:
            check_int("max_triplets", max_triplets, 1)
        self.max_triplets = max_triplets

    def __call__(
        self,
        embeddings: Tensor,
        labels: Tensor,
        *,
        num_anchors: int | None = None,
        generator: torch.Generator | int | None = None,
    ) -> Triplets:
        """Mine triplets.

        Args:
            embeddings: ``(N, D)``.
            labels: ``(N,)``; equal labels mark views of the same instance.
            num_anchors: only the first ``num_anchors`` rows are anchors (the rest are
                candidates only, e.g. a memory of earlier batches); default all.
            generator: randomness of random miners and of the cap.

        Returns:
            ``(anchor, positive, negative)`` index tensors of equal length.
        """
        embeddings, labels = check_embeddings(embeddings, labels)
        generator = as_generator(generator)
        n = len(embeddings)
        num_anchors = n if num_anchors is None else num_anchors
        if isinstance(num_anchors, bool) or not isinstance(num_anchors, int) or not 0 <= num_anchors <= n:
            raise ValueError(f"num_anchors must be an int in [0, {n}], got {num_anchors!r}")
        if num_anchors == 0:  # nothing to anchor (an empty batch): no triplet
            empty = torch.zeros(0, dtype=torch.long, device=embeddings.device)
            return empty, empty, empty
        with torch.no_grad():
            a, p, neg = self._triplets(embeddings, labels, num_anchors, generator)
        if self.max_triplets is not None and len(a) > self.max_triplets:
            keep = randperm(len(a), generator, a.device)[: self.max_triplets]
            a, p, neg = a[keep], p[keep], neg[keep]
        return a, p, neg

    def _triplets(
        self, embeddings: Tensor, labels: Tensor, num_anchors: int, generator: torch.Generator | None
    ) -> Triplets:
        """The triplets of checked inputs, before the cap: the distances, then :meth:`mine`."""
        dist = torch.cdist(embeddings[:num_anchors].float(), embeddings.float())
        same = labels[:num_anchors, None] == labels[None, :]
        return self.mine(dist, same, embedding_dim=int(embeddings.shape[1]), generator=generator)

    @abc.abstractmethod
    def mine(
        self, dist: Tensor, same: Tensor, *, embedding_dim: int, generator: torch.Generator | None
    ) -> Triplets:
        """Choose triplets.

        Args:
            dist: ``(A, N)`` Euclidean distances from each of the ``A`` anchors (the first
                ``A`` samples) to every sample.
            same: ``(A, N)`` bool, ``True`` where labels are equal (the diagonal
                ``same[i, i]`` included: exclude it yourself, or use :meth:`positive_pairs`).
            embedding_dim: ``D``, the embeddings' dimension.
            generator: the source of all randomness.

        Returns:
            ``(anchor, positive, negative)`` index tensors.
        """

    @staticmethod
    def positive_pairs(same: Tensor) -> tuple[Tensor, Tensor]:
        """All ``(anchor, positive)`` pairs of an ``(A, N)`` label-equality matrix (distinct indices)."""
        pos = same.clone()
        diagonal = torch.arange(same.shape[0], device=same.device)
        pos[diagonal, diagonal] = False
        a, p = torch.nonzero(pos, as_tuple=True)
        return a, p


class RandomNegativeMiner(Miner):
    """Every positive pair with one negative drawn uniformly from the other instances.

    The protocol of the original exemplar code, done right: a sample is never its own
    negative, and an instance alone in the batch gives no triplet.

    Examples:
        >>> labels = torch.tensor([0, 0, 1, 1, 2, 2])
        >>> a, p, n = RandomNegativeMiner()(torch.randn(6, 8), labels, generator=0)
        >>> len(a), bool((labels[a] == labels[p]).all() and (labels[a] != labels[n]).all())
        (6, True)
    """

    def mine(
        self, dist: Tensor, same: Tensor, *, embedding_dim: int, generator: torch.Generator | None
    ) -> Triplets:
        """Draw one negative per positive pair."""
        a, p = self.positive_pairs(same)
        scores = rand((len(a), same.shape[1]), generator, dist.device).masked_fill(same[a], -1.0)
        n = scores.argmax(dim=1)
        keep = scores[torch.arange(len(a), device=a.device), n] >= 0
        return a[keep], p[keep], n[keep]


class BatchHardMiner(Miner):
    """Per anchor, its farthest positive and its nearest negative (Hermans et al., 2017).

    Examples:
        >>> x = torch.randn(6, 8, generator=torch.Generator().manual_seed(0))
        >>> embeddings = torch.nn.functional.normalize(x, dim=1)
        >>> anchors, positives, negatives = BatchHardMiner()(embeddings, torch.tensor([0, 0, 1, 1, 2, 2]))
        >>> anchors.tolist(), positives.tolist()   # every sample, with the farthest one of its instance
        ([0, 1, 2, 3, 4, 5], [1, 0, 3, 2, 5, 4])

    References:
        - Hermans et al., "In Defense of the Triplet Loss for Person Re-Identification", arXiv:1703.07737,
          2017.
    """

    def mine(
        self, dist: Tensor, same: Tensor, *, embedding_dim: int, generator: torch.Generator | None
    ) -> Triplets:
        """One triplet per anchor that has a positive and a negative."""
        rows = torch.arange(dist.shape[0], device=dist.device)
        pos_dist = dist.masked_fill(~same, -1.0)
        pos_dist[rows, rows] = -1.0
        neg_dist = dist.masked_fill(same, math.inf)
        p = pos_dist.argmax(dim=1)
        n = neg_dist.argmin(dim=1)
        keep = (pos_dist[rows, p] >= 0) & torch.isfinite(neg_dist[rows, n])
        return rows[keep], p[keep], n[keep]


class SemiHardMiner(Miner):
    """Negatives farther than the positive but within the margin (Schroff et al., FaceNet 2015).

    For every positive pair, the nearest negative ``n`` with
    ``d(a, p) < d(a, n) < d(a, p) + margin``; pairs without one give no triplet.

    Args:
        margin: the triplet margin, ``> 0``.
        max_triplets: as for :class:`Miner`.

    Examples:
        >>> embeddings = torch.tensor([[0.0], [0.1], [0.5], [3.0]])
        >>> a, p, n = SemiHardMiner(margin=1.0)(embeddings, torch.tensor([0, 0, 1, 2]))
        >>> # negatives farther than the positive, within the margin
        >>> list(zip(a.tolist(), p.tolist(), n.tolist()))
        [(0, 1, 2), (1, 0, 2)]

    References:
        - Schroff et al., "FaceNet: A Unified Embedding for Face Recognition and Clustering", CVPR 2015.
    """

    def __init__(self, margin: float = 1.0, max_triplets: int | None = None) -> None:
        super().__init__(max_triplets)
        self.margin = check_positive("margin", margin)

    def mine(
        self, dist: Tensor, same: Tensor, *, embedding_dim: int, generator: torch.Generator | None
    ) -> Triplets:
        """One semi-hard negative per positive pair, where one exists."""
        a, p = self.positive_pairs(same)
        d_ap = dist[a, p].unsqueeze(1)
        d_an = dist[a]
        ok = ~same[a] & (d_an > d_ap) & (d_an < d_ap + self.margin)
        candidates = d_an.masked_fill(~ok, math.inf)
        n = candidates.argmin(dim=1)
        keep = torch.isfinite(candidates[torch.arange(len(a), device=a.device), n])
        return a[keep], p[keep], n[keep]


class DistanceWeightedMiner(Miner):
    """Negatives sampled by inverse density of distances on the sphere (Wu et al., ICCV 2017).

    For L2-normalised embeddings in ``D`` dimensions, pairwise distances of uniformly
    spread points have density ``q(d) ∝ d^(D-2) (1 - d²/4)^((D-3)/2)``. Drawing each
    negative with probability ``∝ 1 / q(d)`` spreads the chosen negatives over all
    distances instead of the crowded middle. Distances are clipped below at ``cutoff``
    (which bounds the weights), and negatives at ``d >= nonzero_loss_cutoff`` (which
    cannot contribute to a margin loss) are never drawn.

    Args:
        cutoff: lower clip of distances (0.5 in the paper).
        nonzero_loss_cutoff: largest distance a negative may have (1.4 in the paper).
        max_triplets: as for :class:`Miner`.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.nn.functional.normalize(torch.randn(8, 16, generator=g), dim=1)
        >>> labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
        >>> a, p, n = DistanceWeightedMiner()(x, labels, generator=0)
        >>> len(a), bool((labels[a] != labels[n]).all())
        (8, True)

    References:
        - Wu et al., "Sampling Matters in Deep Embedding Learning", ICCV 2017.
    """

    def __init__(
        self, cutoff: float = 0.5, nonzero_loss_cutoff: float = 1.4, max_triplets: int | None = None
    ) -> None:
        super().__init__(max_triplets)
        if not 0 < cutoff < nonzero_loss_cutoff <= 2:
            raise ValueError(
                f"need 0 < cutoff < nonzero_loss_cutoff <= 2, got cutoff={cutoff}, "
                f"nonzero_loss_cutoff={nonzero_loss_cutoff}"
            )
        self.cutoff = cutoff
        self.nonzero_loss_cutoff = nonzero_loss_cutoff

    def mine(
        self, dist: Tensor, same: Tensor, *, embedding_dim: int, generator: torch.Generator | None
    ) -> Triplets:
        """One distance-weighted negative per positive pair."""
        dim = max(embedding_dim, 4)
        a, p = self.positive_pairs(same)
        d = dist[a].clamp(min=self.cutoff, max=2.0 - 1e-4)
        log_q = (dim - 2) * torch.log(d) + (dim - 3) / 2 * torch.log1p(-(d**2) / 4)
        allowed = ~same[a] & (dist[a] < self.nonzero_loss_cutoff)
        log_w = (-log_q).masked_fill(~allowed, -math.inf)
        log_w = log_w - log_w.max(dim=1, keepdim=True).values.nan_to_num(neginf=0.0)
        # Gumbel-max draws one index per row with probability proportional to exp(log_w).
        gumbel = -torch.log(
            -torch.log(rand(tuple(log_w.shape), generator, log_w.device).clamp(1e-12, 1 - 1e-7))
        )
        scores = log_w + gumbel
        n = scores.argmax(dim=1)
        keep = allowed[torch.arange(len(a), device=a.device), n]
        return a[keep], p[keep], n[keep]
