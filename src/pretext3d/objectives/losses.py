"""Losses that score a head's output: the triplet margin loss, InfoNCE and the binary CPC loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretext3d._checks import check_positive
from pretext3d._random import as_generator, randint
from pretext3d.objectives import gather
from pretext3d.objectives.miners import Triplets

__all__ = ["BinaryCPCLoss", "InfoNCELoss", "TripletMarginLoss"]


class TripletMarginLoss(nn.Module):
    """Mean over the given triplets of ``relu(d(a, p) - d(a, n) + margin)``.

    ``d`` is the Euclidean distance between the embeddings as given (normalise them
    first if you want distances on the sphere, as the projection head does). The
    exemplar network of Dosovitskiy et al. (2014) in the triplet form of Taleb et al.
    (NeurIPS 2020), who used margin 1.

    With no triplets the loss is a zero that still depends on ``embeddings``, so a
    training step never crashes on a batch without valid triplets.

    Args:
        margin: ``> 0``.

    Shapes:
        ``embeddings (N, D)``, triplets three ``(T,)`` index tensors -> scalar.

    Examples:
        >>> x = torch.randn(6, 8, generator=torch.Generator().manual_seed(0))
        >>> embeddings = torch.nn.functional.normalize(x, dim=1)
        >>> triplets = p3.objectives.BatchHardMiner()(embeddings, torch.tensor([0, 0, 1, 1, 2, 2]))
        >>> round(TripletMarginLoss(margin=1.0)(embeddings, triplets).item(), 4)
        1.5219

    References:
        - Schroff et al., "FaceNet: A Unified Embedding for Face Recognition and Clustering", CVPR 2015.
        - Taleb et al., "3D Self-Supervised Methods for Medical Imaging", NeurIPS 2020.
    """

    def __init__(self, margin: float = 1.0) -> None:
        super().__init__()
        self.margin = check_positive("margin", margin)

    def forward(self, embeddings: Tensor, triplets: Triplets, labels: Tensor | None = None) -> Tensor:
        """The loss of ``triplets`` (anchor, positive, negative indices into ``embeddings``).

        ``labels`` is part of the task-loss interface (a :class:`~pretext3d.objectives.PMLLoss`
        needs them); the triplets alone define this loss.
        """
        if embeddings.dim() != 2:
            raise ValueError(f"embeddings must have shape (N, D), got {tuple(embeddings.shape)}")
        a, p, n = triplets
        if not len(a) == len(p) == len(n):
            raise ValueError(f"triplet index tensors differ in length: {len(a)}, {len(p)}, {len(n)}")
        if len(a) == 0:
            return embeddings.sum() * 0.0
        d_ap = torch.linalg.vector_norm(embeddings[a] - embeddings[p], dim=1)
        d_an = torch.linalg.vector_norm(embeddings[a] - embeddings[n], dim=1)
        return torch.relu(d_ap - d_an + self.margin).mean()


def _check_pairs(queries: Tensor, keys: Tensor) -> None:
    if queries.dim() != 2 or keys.dim() != 2 or queries.shape[1] != keys.shape[1]:
        raise ValueError(
            f"queries and keys must be (Q, D) and (K, D) with the same D, got "
            f"{tuple(queries.shape)} and {tuple(keys.shape)}"
        )
    if len(keys) < len(queries):
        raise ValueError(
            f"keys must hold at least one key per query (the positives first), got {len(keys)} keys "
            f"for {len(queries)} queries"
        )


class InfoNCELoss(nn.Module):
    """InfoNCE (van den Oord et al., "Representation Learning with Contrastive Predictive Coding", 2018).

    Query ``i``'s positive is key ``i``; every other key is a negative. The loss is the
    cross-entropy of ``queries @ keys.T / temperature`` against ``arange(Q)``:
    ``-mean_i log(exp(q_i·k_i / t) / sum_j exp(q_i·k_j / t))``. Normalise queries and
    keys first for cosine similarities (the CPC head does).

    Args:
        temperature: ``> 0``.
        gather: gather queries and keys of all ``torch.distributed`` ranks, so that
            every rank computes the loss of the global batch (every key a negative for
            every query); this rank's slices keep their gradient, as described in
            :mod:`pretext3d.objectives.gather`.

    Shapes:
        ``queries (Q, D)``, ``keys (K, D)`` with ``K >= Q`` (keys beyond ``Q`` are extra
        negatives) -> scalar.

    Examples:
        >>> codes = torch.nn.functional.normalize(torch.eye(4, 8) + 0.01, dim=1)
        >>> InfoNCELoss(temperature=0.1)(codes, codes).item() < 1e-3   # each query finds its own key
        True

    References:
        - van den Oord et al., "Representation Learning with Contrastive Predictive Coding", arXiv:1807.03748,
          2018.
    """

    def __init__(self, temperature: float = 0.1, *, gather: bool = False) -> None:
        super().__init__()
        self.temperature = check_positive("temperature", temperature)
        self.gather = gather

    def logits(self, queries: Tensor, keys: Tensor) -> tuple[Tensor, Tensor]:
        """``(logits (Q', K'), targets (Q',))``, over all ranks' queries and keys if gathering."""
        _check_pairs(queries, keys)
        target = torch.arange(len(queries), device=queries.device)
        world = gather.world_size() if self.gather else 1
        if world > 1:
            # rank r's query j pairs with rank r's key j, at r * K + j among the gathered keys
            offsets = torch.arange(world, device=queries.device)[:, None] * len(keys)
            target = (offsets + target[None, :]).flatten()
            queries, keys = gather.gather_with_grad(queries), gather.gather_with_grad(keys)
        return queries @ keys.T / self.temperature, target

    def forward(self, queries: Tensor, keys: Tensor) -> Tensor:
        """The mean InfoNCE loss of the queries."""
        logits, target = self.logits(queries, keys)
        return F.cross_entropy(logits, target)


class BinaryCPCLoss(nn.Module):
    """The original 3D CPC's loss: one negative per positive, binary cross-entropy.

    For each query, its positive key ``i`` and one key drawn uniformly among the others
    are scored with ``q·k / temperature`` and classified as positive and negative. Kept
    to compare with :class:`InfoNCELoss`, which uses every other key as a negative.

    Args:
        temperature: ``> 0``.

    Shapes:
        ``queries (Q, D)``, ``keys (K, D)``, ``K >= max(Q, 2)`` -> scalar.

    Examples:
        >>> codes = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])   # each key is the other query's negative
        >>> # positives score 10, negatives -10
        >>> BinaryCPCLoss(temperature=0.1)(codes, codes, generator=0).item() < 1e-3
        True

    References:
        - Taleb et al., "3D Self-Supervised Methods for Medical Imaging", NeurIPS 2020.
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        self.temperature = check_positive("temperature", temperature)

    def forward(
        self, queries: Tensor, keys: Tensor, *, generator: torch.Generator | int | None = None
    ) -> Tensor:
        """Mean binary cross-entropy over positives and negatives drawn from ``generator``."""
        _check_pairs(queries, keys)
        generator = as_generator(generator)
        if len(keys) < 2:
            raise ValueError("BinaryCPCLoss needs at least 2 keys: one positive and one negative")
        q = len(queries)
        shift = randint(len(keys), (q,), generator, queries.device, low=1)
        negative = (torch.arange(q, device=queries.device) + shift) % len(keys)
        pos = (queries * keys[:q]).sum(1) / self.temperature
        neg = (queries * keys[negative]).sum(1) / self.temperature
        scores = torch.cat([pos, neg])
        labels = torch.cat([torch.ones_like(pos), torch.zeros_like(neg)])
        return F.binary_cross_entropy_with_logits(scores, labels)
