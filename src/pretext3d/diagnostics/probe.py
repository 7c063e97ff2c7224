"""What an encoder's frozen features carry: :class:`FeatureProbe`."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretext3d._checks import check_choice, check_int, check_unit_interval, shape_of
from pretext3d.diagnostics.stats import fit_logistic
from pretext3d.heads import global_pool
from pretext3d.models.base import evaluating

__all__ = ["FeatureProbe"]


class FeatureProbe:
    """A probe of an encoder's frozen features on a small labelled set (a representation monitor).

    The labelled images are split once, by a seeded permutation, into a part to fit the
    probe on and a part to score it on. Calling the probe with an encoder runs the encoder
    (in eval mode, without gradients, in batches) and returns the held-out score:

    * ``task="classification"``: the encoder's globally pooled features, then a logistic
      regression (``method="linear"``) or a cosine k-NN vote (``method="knn"``, lightly's
      2D habit, here in 2D and 3D); metric ``accuracy``.
    * ``task="segmentation"``: a linear patch probe: the encoder's feature map ``(N, F,
      *s)``; each location's label is whether its patch of the label map holds foreground
      (label > 0); a class-balanced logistic regression on the feature vectors; metric
      ``patch_dice`` (Dice of the predicted foreground locations on the held-out images).
      The feature map is ``encoder.forward_features(x)`` where the encoder has it (the
      library's and timm's encoders), else ``encoder(x)``, which must then be ``(N, F,
      *spatial)``.

    Run it on the randomly initialised encoder for the reference any pretraining must beat;
    the :class:`~pretext3d.pretrainer.Pretrainer` logs that at step 0.

    Args:
        images: ``(N, C, *spatial)`` labelled images (all of one shape).
        labels: ``(N,)`` classes (classification) or ``(N, *spatial)`` label maps
            (segmentation).
        task: ``"classification"`` or ``"segmentation"``.
        method: ``"linear"`` or ``"knn"`` (classification only).
        every: steps between probes in a pretraining loop.
        train_fraction: share of the images the probe is fitted on.
        k: neighbours of the k-NN vote.
        batch_size: images per encoder call.
        seed: of the split.

    Examples:
        >>> images, grades = p3.data.fundus_phantom_batch(16, size=32)   # SYNTHETIC
        >>> probe = FeatureProbe(images, grades, task="classification", every=50)
        >>> encoder = p3.models.DenseNetEncoder(2, 3, growth_rate=4, block_config=(1, 1), init_features=8)
        >>> result = probe(encoder)   # the randomly initialised encoder's score: the reference
        >>> sorted(result), 0.0 <= result["accuracy"] <= 1.0
        (['accuracy'], True)

    References:
        - Kolesnikov et al., "Revisiting Self-Supervised Visual Representation Learning", CVPR 2019
          (linear evaluation of frozen features).
        - Wu et al., "Unsupervised Feature Learning via Non-Parametric Instance Discrimination", CVPR 2018
          (the k-NN monitor).
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        task: Literal["classification", "segmentation"] = "classification",
        method: Literal["linear", "knn"] = "linear",
        every: int = 100,
        train_fraction: float = 0.5,
        k: int = 5,
        batch_size: int = 16,
        seed: int = 0,
    ) -> None:
        self.task = check_choice("task", task, ("classification", "segmentation"))
        self.method = check_choice("method", method, ("linear", "knn"))
        if self.task == "segmentation" and self.method == "knn":
            raise ValueError(
                "method='knn' applies to task='classification'; segmentation uses a linear probe"
            )
        if not isinstance(images, Tensor) or images.dim() not in (4, 5) or not images.is_floating_point():
            raise ValueError(f"images must be a float batch (N, C, *spatial), got {shape_of(images)}")
        if not isinstance(labels, Tensor) or labels.is_floating_point() or len(labels) != len(images):
            raise ValueError(
                f"labels must be an integer tensor with one entry per image, got {shape_of(labels)}"
            )
        if self.task == "classification" and labels.dim() != 1:
            raise ValueError(f"task='classification' takes labels (N,), got {tuple(labels.shape)}")
        if labels.numel() and int(labels.min()) < 0:
            raise ValueError(
                f"labels must be class numbers >= 0, got {int(labels.min())} (an unlabelled image's -1? "
                "leave unlabelled images out of the probe)"
            )
        if not bool(torch.isfinite(images).all()):
            raise ValueError("images hold NaN or inf values: the probe's features would be NaN")
        if self.task == "segmentation" and tuple(labels.shape[1:]) != tuple(images.shape[2:]):
            raise ValueError(
                f"task='segmentation' takes label maps (N, *spatial) = (N, *{tuple(images.shape[2:])}), "
                f"got {tuple(labels.shape)}"
            )
        self.every = check_int("every", every, 1)
        self.k = check_int("k", k, 1)
        self.batch_size = check_int("batch_size", batch_size, 1)
        check_unit_interval("train_fraction", train_fraction, include_one=False)
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
        cut = round(len(images) * train_fraction)
        if cut < 2 or len(images) - cut < 1:
            raise ValueError(
                f"images hold {len(images)} images; train_fraction={train_fraction} leaves too few on one "
                "side "
                "(at least 2 to fit, 1 to score)"
            )
        self.images, self.labels = images.detach().float(), labels.detach().long()
        self.fit_index, self.score_index = order[:cut], order[cut:]
        self.spatial_dims = images.dim() - 2
        self.metric = "accuracy" if self.task == "classification" else "patch_dice"

    @torch.no_grad()
    def features(self, encoder: nn.Module) -> Tensor:
        """The encoder's features of every image: ``(N, F)`` pooled, or ``(N, F, *s)`` maps (segmentation)."""
        param = next(encoder.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        out = []
        run = getattr(encoder, "forward_features", encoder) if self.task == "segmentation" else encoder
        with evaluating(encoder):
            for start in range(0, len(self.images), self.batch_size):
                f = run(self.images[start : start + self.batch_size].to(device))
                if not isinstance(f, Tensor):
                    raise TypeError(f"the encoder returned a {type(f).__name__}, not a feature tensor")
                out.append((global_pool(f) if self.task == "classification" else f).float().cpu())
        feats = torch.cat(out)
        if self.task == "segmentation" and feats.dim() != self.spatial_dims + 2:
            raise ValueError(
                f"task='segmentation' needs a feature map (N, F, *spatial) from the encoder, got "
                f"{tuple(feats.shape)}"
            )
        return feats

    def __call__(self, encoder: nn.Module) -> dict[str, float]:
        """``{metric: held-out score}`` of a probe fitted on ``encoder``'s frozen features."""
        feats = self.features(encoder)
        if self.task == "classification":
            return {self.metric: self._classify(feats)}
        return {self.metric: self._segment(feats)}

    def _classify(self, feats: Tensor) -> float:
        fit_x, fit_y = feats[self.fit_index], self.labels[self.fit_index]
        score_x, score_y = feats[self.score_index], self.labels[self.score_index]
        if self.method == "knn":
            a, b = F.normalize(score_x, dim=1), F.normalize(fit_x, dim=1)
            nearest = (a @ b.T).topk(min(self.k, len(fit_y)), dim=1).indices
            votes = F.one_hot(fit_y[nearest], int(self.labels.max()) + 1).sum(1)
            predicted = votes.argmax(1)
        else:
            predicted = fit_logistic(fit_x, fit_y, int(self.labels.max()) + 1)(score_x).argmax(1)
        return float((predicted == score_y).float().mean())

    def _segment(self, feats: Tensor) -> float:
        size = tuple(feats.shape[2:])
        fg = (self.labels > 0).float().unsqueeze(1)
        pool = F.adaptive_max_pool2d if self.spatial_dims == 2 else F.adaptive_max_pool3d
        target = pool(fg, size).flatten(1).long()  # (N, locations): does the patch hold foreground?

        def rows(index: Tensor) -> tuple[Tensor, Tensor]:
            x = feats[index].flatten(2).transpose(1, 2).reshape(-1, feats.shape[1])
            return x, target[index].reshape(-1)

        fit_x, fit_y = rows(self.fit_index)
        score_x, score_y = rows(self.score_index)
        if int(fit_y.max()) == 0:
            raise ValueError("the probe's fitting images hold no foreground: use more labelled images")
        predicted = fit_logistic(fit_x, fit_y, 2, balanced=True)(score_x).argmax(1)
        both = float(((predicted == 1) & (score_y == 1)).sum())
        total = float((predicted == 1).sum() + (score_y == 1).sum())
        return 1.0 if total == 0 else 2 * both / total
