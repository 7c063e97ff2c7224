"""Other libraries' metric-learning objectives inside the exemplar task.

pytorch-metric-learning (PML) miners and losses: :class:`PMLMiner`, :class:`PMLLoss`;
losses on two views (lightly's ``NTXentLoss``, ``NegativeCosineSimilarity``, ...):
:class:`TwoViewLoss`.

Three ways to combine the two libraries (all tested):

1. a PML miner in the task: ``Exemplar(d, miner=PMLMiner(miners.TripletMarginMiner()))``,
   with a cross-batch memory too (``memory_size``: PML's ``ref_emb``/``ref_labels``);
2. a PML loss as the task's loss: ``Exemplar(d, loss=PMLLoss(losses.ContrastiveLoss()))``
   (it gets the mined triplets as its ``indices_tuple`` and the instance ids as labels);
3. the task's views in your own PML loop: ``views, ids = task(x)``; then
   ``pml_loss(model(views), ids, indices_tuple=miner(embeddings, ids))`` with a PML miner or
   ours (our miners return PML's triplet ``indices_tuple``).

PML itself is optional (``pip install 'pretext3d[metric-learning]'``); these adapters only
call the objects you give them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from pretext3d._checks import check_int
from pretext3d._random import randint
from pretext3d.objectives.miners import Miner, Triplets

__all__ = ["PMLLoss", "PMLMiner", "TwoViewLoss"]


class PMLMiner(Miner):
    """A pytorch-metric-learning miner as a pretext3d :class:`Miner`.

    Triplet miners (``TripletMarginMiner``, ``BatchHardMiner``, ...) give their triplets;
    pair miners (``MultiSimilarityMiner``, ``PairMarginMiner``, ...) give pairs, which are
    combined into triplets sharing an anchor (PML's ``convert_to_triplets``, at most
    ``triplets_per_anchor`` per anchor). With ``num_anchors`` (a cross-batch memory), the
    first ``num_anchors`` rows are PML's ``embeddings`` and all rows its ``ref_emb``.
    A PML miner draws from torch's global generator; given a ``generator``, it runs on a
    forked generator seeded from it, so the call is reproducible and the global state is
    left as it was.

    Args:
        miner: a PML miner (anything called as ``miner(embeddings, labels, ref_emb,
            ref_labels)`` that returns 3 or 4 index tensors).
        triplets_per_anchor: cap when pairs are combined into triplets.
        max_triplets: as for :class:`Miner`.

    Examples:
        >>> from pytorch_metric_learning import miners
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=1)
        >>> labels = torch.tensor([0, 0, 1, 1, 2, 2])
        >>> ours, theirs = p3.objectives.BatchHardMiner(), PMLMiner(miners.BatchHardMiner())
        >>> all(torch.equal(a, b) for a, b in zip(ours(x, labels), theirs(x, labels)))
        True
        >>> task = p3.tasks.Exemplar(2, miner=PMLMiner(miners.TripletMarginMiner(margin=0.2)), memory_size=64)
    """

    def __init__(
        self, miner: Any, *, triplets_per_anchor: int = 100, max_triplets: int | None = None
    ) -> None:
        super().__init__(max_triplets)
        if not callable(miner):
            raise TypeError(f"miner must be a pytorch-metric-learning miner, got {type(miner).__name__}")
        self.miner = miner
        self.triplets_per_anchor = check_int("triplets_per_anchor", triplets_per_anchor, 1)

    def _triplets(
        self, embeddings: Tensor, labels: Tensor, num_anchors: int, generator: torch.Generator | None
    ) -> Triplets:
        """The PML miner's triplets (pairs combined), never a sample as its own positive."""
        n = len(embeddings)
        devices = [embeddings.device] if embeddings.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, enabled=generator is not None):
            if generator is not None:
                torch.manual_seed(int(randint(2**62, (1,), generator, torch.device("cpu"))[0]))
            if num_anchors == n:
                out = tuple(self.miner(embeddings, labels))
            else:
                out = tuple(self.miner(embeddings[:num_anchors], labels[:num_anchors], embeddings, labels))
        if len(out) == 4:  # pairs: (anchor, positive, anchor, negative)
            from pytorch_metric_learning.utils.loss_and_miner_utils import convert_to_triplets

            ref = None if num_anchors == n else labels
            out = tuple(
                convert_to_triplets(out, labels[:num_anchors], ref, t_per_anchor=self.triplets_per_anchor)
            )
        if len(out) != 3:
            raise ValueError(
                f"{type(self.miner).__name__} returned {len(out)} index tensors; a triplet miner gives 3 "
                "(anchor, positive, negative), a pair miner 4"
            )
        a, p, neg = (t.to(embeddings.device).long() for t in out)
        keep = a != p  # with ref_emb PML cannot know that row i of both is one sample: never its own positive
        return a[keep], p[keep], neg[keep]

    def mine(
        self, dist: Tensor, same: Tensor, *, embedding_dim: int, generator: torch.Generator | None
    ) -> Triplets:
        """Not used: the PML miner computes its own distances (call the adapter itself)."""
        raise TypeError("PMLMiner mines through the PML miner: call it as miner(embeddings, labels)")


class PMLLoss(nn.Module):
    """A pytorch-metric-learning loss as the exemplar task's loss.

    It is called as the task calls its loss, ``loss(embeddings, triplets, labels)``, and
    hands PML the instance ids as ``labels`` and the mined triplets as ``indices_tuple``
    (``use_triplets=False``: no ``indices_tuple``, the PML loss forms its own pairs or
    triplets from the labels, as PML does without a miner).

    Args:
        loss: a PML loss (``TripletMarginLoss``, ``ContrastiveLoss``, ``NTXentLoss``, ...).
        use_triplets: pass the task's mined triplets to it.

    Shapes:
        ``embeddings (N, D)``, triplets three ``(T,)`` index tensors, ``labels (N,)`` -> scalar.

    Examples:
        >>> from pytorch_metric_learning import losses, reducers
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=1)
        >>> labels = torch.tensor([0, 0, 1, 1, 2, 2])
        >>> triplets = p3.objectives.BatchHardMiner()(x, labels)
        >>> theirs = PMLLoss(losses.TripletMarginLoss(margin=0.2, reducer=reducers.MeanReducer()))
        >>> ours = p3.objectives.TripletMarginLoss(margin=0.2)
        >>> torch.allclose(theirs(x, triplets, labels), ours(x, triplets))   # the same loss
        True
        >>> task = p3.tasks.Exemplar(2, loss=PMLLoss(losses.ContrastiveLoss()))
    """

    def __init__(self, loss: Any, *, use_triplets: bool = True) -> None:
        super().__init__()
        if not callable(loss):
            raise TypeError(f"loss must be a pytorch-metric-learning loss, got {type(loss).__name__}")
        self.loss = loss
        self.use_triplets = bool(use_triplets)

    def forward(self, embeddings: Tensor, triplets: Triplets, labels: Tensor | None = None) -> Tensor:
        """The PML loss of ``embeddings`` with ``labels`` (required) and the ``triplets``."""
        if labels is None:
            raise ValueError(
                "PMLLoss needs the labels (instance ids): call loss(embeddings, triplets, labels)"
            )
        indices = tuple(triplets) if self.use_triplets else None
        if indices is not None and len(indices[0]) == 0:
            return embeddings.sum() * 0.0  # nothing mined: no signal, as the task's own loss
        out: Tensor = self.loss(embeddings, labels, indices)
        return out


class TwoViewLoss(nn.Module):
    """A loss on two views, ``loss(z0, z1)`` (lightly's style), as the exemplar task's loss.

    The exemplar task's ``"two_views"`` protocol stacks the first views of the ``B`` images
    and then their second views, with instance ids ``cat([ids, ids])``; this adapter splits
    the embeddings there and calls ``loss(z[:B], z[B:])``. The mined triplets are not used
    (a SimCLR-style loss takes the other images of the batch as negatives itself). It
    refuses embeddings in any other layout (the ``"original"`` protocol, a cross-batch
    memory, gathered ranks): use the two-view loss's own memory bank instead.

    Args:
        loss: the two-view loss, e.g. ``lightly.loss.NTXentLoss()``.

    Shapes:
        ``embeddings (2B, D)``, ``labels (2B,)`` with ``labels[:B] == labels[B:]`` -> scalar.

    Examples:
        >>> def cosine_loss(z0, z1):   # any loss(z0, z1), e.g. lightly.loss.NTXentLoss()
        ...     return -torch.nn.functional.cosine_similarity(z0, z1).mean()
        >>> task = p3.tasks.Exemplar(2, loss=TwoViewLoss(cosine_loss))
        >>> model = p3.PretextModel(p3.models.ConvEncoder(2, widths=(8, 16)), task)
        >>> views, ids = task(torch.randn(4, 1, 24, 24), generator=0)
        >>> task.loss(model(views), ids).item() >= -1.0
        True
    """

    def __init__(self, loss: Any) -> None:
        super().__init__()
        if not callable(loss):
            raise TypeError(f"loss must be a callable loss(z0, z1), got {type(loss).__name__}")
        self.loss = loss

    def forward(self, embeddings: Tensor, triplets: Triplets, labels: Tensor | None = None) -> Tensor:
        """``loss(first views, second views)``; ``triplets`` are not used."""
        half = len(embeddings) // 2
        if labels is None or len(embeddings) % 2 or not torch.equal(labels[:half], labels[half:]):
            raise ValueError(
                "TwoViewLoss takes the exemplar task's two views as (2B, D) embeddings with ids "
                "cat([ids, ids]); use protocol='two_views' without memory_size or gather (a two-view loss "
                "brings its own memory bank, e.g. NTXentLoss(memory_bank_size=...))"
            )
        out: Tensor = self.loss(embeddings[:half], embeddings[half:])
        return out
