"""Exemplar networks with a triplet loss.

Dosovitskiy et al., NeurIPS 2014; in 3D with triplets, Taleb et al., NeurIPS 2020.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from torch import Tensor, nn

from pretext3d._checks import check_choice, check_int
from pretext3d._random import as_generator, randint
from pretext3d.config import UNCHECKED, SpatialDims
from pretext3d.objectives.gather import gather_labels, gather_with_grad
from pretext3d.objectives.losses import TripletMarginLoss
from pretext3d.objectives.memory import CrossBatchMemory
from pretext3d.objectives.miners import BatchHardMiner, Miner, Triplets, check_embeddings
from pretext3d.objectives.pml import TwoViewLoss
from pretext3d.registry import register_task
from pretext3d.tasks.base import EmbeddingTask, TaskParams
from pretext3d.transforms.affine import AugmentParams, ExemplarAugmenter

__all__ = ["Exemplar", "ExemplarParams"]

_ID_PERIOD = 2**52  # instance ids wrap here (far beyond any memory's reach)
DEFAULT_MEMORY = 1024  # the cross-batch memory's default size (embeddings)


@dataclass
class ExemplarParams(TaskParams):
    """The parameters of one :class:`Exemplar` call.

    Attributes:
        instance_ids: ``LongTensor (B,)``: each image's instance id (its targets).
        first: the augmentation of the first view (``"two_views"``) or of the anchor
            (``"original"``).
        second: the augmentation of the second view (``"two_views"``; ``None`` otherwise).
        negative: ``LongTensor (B,)``: the other image that is each anchor's negative
            (``"original"``; ``None`` otherwise).

    Examples:
        >>> task = Exemplar(spatial_dims=2)
        >>> x = torch.randn(3, 1, 16, 16)
        >>> params = task.randomize(x, generator=0)
        >>> params.instance_ids.tolist(), params.first.matrix.shape, params.negative is None
        ([0, 1, 2], torch.Size([3, 2, 2]), True)
        >>> views, ids = task.apply_params(x, params)   # no randomness left
        >>> views.shape, ids.tolist()
        (torch.Size([6, 1, 16, 16]), [0, 1, 2, 0, 1, 2])
    """

    instance_ids: Tensor
    first: AugmentParams
    second: AugmentParams | None = None
    negative: Tensor | None = None


@register_task("exemplar")
class Exemplar(EmbeddingTask[ExemplarParams]):
    """Exemplar learning: views of the same image embed close, of other images far.

    ``protocol="two_views"`` (default): two independently augmented views of every
    image, ``views = cat([aug(x), aug(x)])``, targets ``cat([ids, ids])``; triplets come
    from ``miner``. ``protocol="original"``: Taleb et al.'s triplets,
    ``views = cat([aug(x), x, x[negative]])`` (anchor augmented, positive unaugmented,
    negative another unaugmented image), with triplets ``(i, B + i, 2B + i)``; it needs
    two or more images per batch (an image is never its own negative).

    A cross-batch memory of 1024 embeddings is on by default (``memory_size``): a 3D batch
    of a few volumes gives too few negatives, and a loss mined within it sits at its margin.

    Instance ids come from a counter (a buffer, saved with ``state_dict``) and are
    unique across training calls (each training-mode draw, a call or :meth:`randomize`,
    takes the next ``B`` ids), so a :class:`~pretext3d.objectives.CrossBatchMemory`
    (``memory_size > 0``) can mine against earlier batches; ``gather=True`` mines over
    the batches of all ``torch.distributed`` ranks (see
    :mod:`pretext3d.objectives.gather` for the gradients).

    Eval mode: the augmentation still runs (the augmented views *are* the task; without
    them every view would equal its positive), but the state is frozen: ids are
    ``0..B-1`` and the counter does not move, and the loss mines within the batch alone,
    neither reading nor writing the memory, so a validation score does not depend on
    what training left in it.

    Args:
        spatial_dims: 2 or 3.
        augmenter: default ``ExemplarAugmenter(spatial_dims, intensity_p=1.0, brightness=0.4,
            contrast=(0.4, 1.6))``: Taleb et al.'s geometry with stronger intensity jitter on
            every view, since two views of one image otherwise share their intensity
            statistics and are told apart from other images by those alone (Chen et al. 2020
            found colour distortion essential for the same reason); pass
            ``ExemplarAugmenter(spatial_dims)`` for Taleb et al.'s (the default of 0.1).
        protocol: ``"two_views"`` or ``"original"``.
        miner: default :class:`~pretext3d.objectives.BatchHardMiner`.
        margin: of the triplet loss (1 in the paper).
        loss: another loss, called as ``loss(embeddings, triplets, instance_ids)``, e.g. a
            pytorch-metric-learning loss in :class:`~pretext3d.objectives.PMLLoss`;
            default :class:`~pretext3d.objectives.TripletMarginLoss` with ``margin``.
        embedding_dim: output size of the projection head.
        memory_size: embeddings kept by a cross-batch memory (0: none). Default (``None``):
            1024 with ``protocol="two_views"`` and the default or a PML loss, so that a
            batch of a few volumes mines against a thousand earlier ones (Wang et al.
            2020); 0 for ``"original"`` (fixed triplets) and for a
            :class:`~pretext3d.objectives.TwoViewLoss` (which brings its own memory bank).
            Until now (0.1) the default was 0: pass ``memory_size=0`` for in-batch negatives.
        gather: gather embeddings across ranks before mining.
        check_finite: reject NaN/inf input.

    Attributes:
        instance_counter: ``LongTensor ()``: the id the next training image gets.

    Shapes:
        input ``(B, C, *spatial)`` -> views ``(2B, C, *spatial)`` (``(3B, ...)`` for
        ``"original"``), targets ``(2B,)`` (``(3B,)``); the head gives unit embeddings
        ``(2B, embedding_dim)``.

    Examples:
        >>> task = Exemplar(spatial_dims=3)
        >>> views, targets = task(torch.randn(4, 1, 32, 32, 32), generator=0)
        >>> views.shape, targets.tolist()   # two augmented views per volume; targets: instance ids
        (torch.Size([8, 1, 32, 32, 32]), [0, 1, 2, 3, 0, 1, 2, 3])

    References:
        - Dosovitskiy et al., "Discriminative Unsupervised Feature Learning with Convolutional Neural
          Networks", NeurIPS 2014.
        - Taleb et al., "3D Self-Supervised Methods for Medical Imaging", NeurIPS 2020.
        - Wang et al., "Cross-Batch Memory for Embedding Learning", CVPR 2020.
        - Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations", ICML 2020.
    """

    instance_counter: Tensor
    params_type = ExemplarParams

    def __init__(
        self,
        spatial_dims: SpatialDims,
        augmenter: ExemplarAugmenter | None = None,
        *,
        protocol: Literal["two_views", "original"] = "two_views",
        miner: Annotated[Miner | None, UNCHECKED] = None,  # its body names PMLMiner
        margin: float = 1.0,
        loss: Annotated[nn.Module | None, UNCHECKED] = None,  # its body names PMLLoss
        embedding_dim: int = 128,
        memory_size: int | None = None,
        gather: bool = False,
        check_finite: bool = True,
    ) -> None:
        super().__init__(spatial_dims, check_finite=check_finite)
        self.protocol = check_choice("protocol", protocol, ("two_views", "original"))
        self.augmenter = (
            augmenter
            if augmenter is not None
            else ExemplarAugmenter(self.spatial_dims, intensity_p=1.0, brightness=0.4, contrast=(0.4, 1.6))
        )
        if not isinstance(self.augmenter, ExemplarAugmenter):
            raise TypeError(f"augmenter must be an ExemplarAugmenter, got {type(augmenter).__name__}")
        if self.augmenter.spatial_dims != self.spatial_dims:
            raise ValueError(
                f"augmenter works in {self.augmenter.spatial_dims}D but spatial_dims={self.spatial_dims}"
            )
        two_view_loss = isinstance(loss, TwoViewLoss)
        if memory_size is None:
            memory_size = 0 if protocol == "original" or two_view_loss else DEFAULT_MEMORY
        if protocol == "original" and (miner is not None or memory_size or gather):
            raise ValueError(
                "protocol='original' uses its fixed triplets (i, B+i, 2B+i): miner, memory_size and "
                "gather do not apply; use protocol='two_views' to mine"
            )
        if miner is not None and not isinstance(miner, Miner):
            raise TypeError(
                f"miner must be a pretext3d Miner, got {type(miner).__name__}; wrap a pytorch-metric-learning"
                " miner in pretext3d.objectives.PMLMiner"
            )
        self.miner: Miner = miner if miner is not None else BatchHardMiner()
        if loss is not None and margin != 1.0:
            raise ValueError(
                "margin sets the default triplet loss; with loss=... set the margin in that loss"
            )
        if loss is not None and not isinstance(loss, nn.Module):
            raise TypeError(
                f"loss must be an nn.Module called as loss(embeddings, triplets, labels), got "
                f"{type(loss).__name__}; wrap a pytorch-metric-learning loss in pretext3d.objectives.PMLLoss"
            )
        if two_view_loss and (protocol != "two_views" or memory_size or gather):
            raise ValueError(
                "TwoViewLoss takes the two views of protocol='two_views' without memory_size or gather (a "
                "two-view loss brings its own memory bank, e.g. lightly's NTXentLoss(memory_bank_size=...))"
            )
        self.triplet_loss = loss if loss is not None else TripletMarginLoss(margin)
        self.embedding_dim = check_int("embedding_dim", embedding_dim, 1)
        check_int("memory_size", memory_size, 0)
        self.memory = (
            CrossBatchMemory(self.triplet_loss, self.miner, embedding_dim, memory_size)
            if memory_size
            else None
        )
        self.gather = bool(gather)
        self.register_buffer("instance_counter", torch.zeros((), dtype=torch.long))

    def _check_input(self, x: Tensor) -> None:
        if self.protocol == "original" and x.shape[0] < 2:
            raise ValueError(
                "protocol='original' needs at least 2 images per batch: the negative is another "
                f"image, and an image is never its own negative; got a batch of {x.shape[0]}"
            )

    def _randomize(self, x: Tensor, generator: torch.Generator | None) -> ExemplarParams:
        b = x.shape[0]
        if self.training:
            start = int(self.instance_counter)
            ids = (start + torch.arange(b, device=x.device)) % _ID_PERIOD
            self.instance_counter.fill_((start + b) % _ID_PERIOD)
        else:
            ids = torch.arange(b, device=x.device)
        if self.protocol == "two_views":
            first = self.augmenter.randomize(x, generator)
            return ExemplarParams(ids, first, self.augmenter.randomize(x, generator))
        shift = 1 + int(randint(b - 1, (1,), generator, x.device))
        negative = (torch.arange(b, device=x.device) + shift) % b
        return ExemplarParams(ids, self.augmenter.randomize(x, generator), negative=negative)

    def _check_params(self, x: Tensor, params: ExemplarParams) -> None:
        ids = params.instance_ids
        if ids.shape != (x.shape[0],) or ids.is_floating_point():
            raise ValueError(f"params.instance_ids must be an integer tensor ({x.shape[0]},)")
        if self.protocol == "two_views" and params.second is None:
            raise ValueError("protocol='two_views' needs params.second, the second view's augmentation")
        other = params.negative
        if self.protocol == "original" and (
            other is None
            or other.shape != ids.shape
            or bool((other == torch.arange(len(ids), device=x.device)).any())
        ):
            raise ValueError(
                "protocol='original' needs params.negative: (B,) indices of another image for every anchor"
            )

    def _make_views(self, x: Tensor, params: ExemplarParams) -> tuple[Tensor, Tensor]:
        ids = params.instance_ids
        if params.second is not None:  # two views
            views = torch.cat(
                [self.augmenter.apply_params(x, params.first), self.augmenter.apply_params(x, params.second)]
            )
            return views, torch.cat([ids, ids])
        assert params.negative is not None  # the original protocol
        other = params.negative
        views = torch.cat([self.augmenter.apply_params(x, params.first), x, x[other]])
        return views, torch.cat([ids, ids, ids[other]])

    def triplets(
        self, embeddings: Tensor, targets: Tensor, generator: torch.Generator | None = None
    ) -> Triplets:
        """The triplets the loss uses for this batch (without the memory)."""
        if self.protocol == "original":
            if len(targets) % 3:
                raise ValueError(f"protocol='original' expects 3B embeddings, got {len(targets)}")
            i = torch.arange(len(targets) // 3, device=embeddings.device)
            return i, i + len(i), i + 2 * len(i)
        return self.miner(embeddings, targets, generator=generator)

    def loss(
        self, output: Tensor, targets: Tensor, *, generator: torch.Generator | int | None = None
    ) -> Tensor:
        """The task's loss (triplet margin by default) of embeddings ``output (N, D)``, ids ``targets (N,)``.

        Args:
            output: the head's embeddings.
            targets: the instance ids the task returned.
            generator: the randomness of mining (random miners, the triplet cap).
        """
        output, targets = check_embeddings(output, targets)
        generator = as_generator(generator)
        if self.gather:
            output, targets = gather_with_grad(output), gather_labels(targets)
        if self.memory is not None and self.training:
            loss: Tensor = self.memory(output, targets, generator=generator)
            return loss
        loss = self.triplet_loss(output, self.triplets(output, targets, generator), targets)
        return loss

    def extra_repr(self) -> str:
        """The constructor arguments, for ``repr``."""
        return (
            f"spatial_dims={self.spatial_dims}, protocol={self.protocol!r}, miner={type(self.miner).__name__}"
        )
