"""A task as a dictionary transform, for MONAI pipelines that make views on the CPU."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from torch import Tensor

from pretext3d.tasks.base import DenseTask, EmbeddingTask, PretextTask

__all__ = ["PretextViewsd"]


class PretextViewsd:
    """Put a task's views and target of ``data[key]`` into the dict, as a MONAI dict transform.

    Use it as the last step of a ``monai.transforms.Compose`` when views should be made in
    the data loader's workers instead of on the GPU (the library's default: the tasks are
    batched and run on the device, see :class:`~pretext3d.pretrainer.Pretrainer`); the
    classification and predictive tasks only. Each call
    takes one sample ``(C, *spatial)`` (a ``MetaTensor`` becomes a plain tensor) and adds
    ``views_key`` (the views without a batch axis) and ``targets_key`` (a 0-dim class, or
    ``None`` for CPC); the default collate then stacks a batch as the task itself would
    return it. The exemplar task relates samples to each other and the dense tasks return
    targets of the whole batch: neither runs per sample.

    Randomness: with ``seed`` the draws come from a generator of this transform (reproducible
    in one process); without it from torch's global generator, which the ``DataLoader`` seeds
    differently in every worker (a seeded generator would repeat itself in each worker).

    Args:
        task: a classification or predictive task.
        key: the image's key.
        views_key: where the views go.
        targets_key: where the target goes.
        seed: seed of the transform's own generator (``None``: torch's global generator).

    Examples:
        >>> make_views = PretextViewsd(p3.tasks.Rotation(3), seed=0)
        >>> sample = make_views({"image": torch.randn(1, 16, 16, 16), "case": "pancreas_001"})
        >>> sample["views"].shape, sample["targets"].dim(), sample["case"]
        (torch.Size([1, 16, 16, 16]), 0, 'pancreas_001')
        >>> other = make_views({"image": torch.randn(1, 16, 16, 16), "case": "pancreas_002"})
        >>> batch = torch.utils.data.default_collate([sample, other])
        >>> batch["views"].shape, batch["targets"].shape   # what the task gives for a batch
        (torch.Size([2, 1, 16, 16, 16]), torch.Size([2]))
    """

    def __init__(
        self,
        task: PretextTask[Any, Any],
        key: Hashable = "image",
        *,
        views_key: Hashable = "views",
        targets_key: Hashable = "targets",
        seed: int | None = None,
    ) -> None:
        if not isinstance(task, PretextTask):
            raise TypeError(f"task must be a pretext3d task, got {type(task).__name__}")
        if isinstance(task, (EmbeddingTask, DenseTask)):
            why = (
                "relates the samples of a batch to each other"
                if isinstance(task, EmbeddingTask)
                else ("returns targets of the batch (the image and its weight map)")
            )
            raise ValueError(
                f"{type(task).__name__} {why} and cannot make views per sample; call it on the batch "
                "(on the device), as the Pretrainer does"
            )
        self.task, self.key, self.views_key, self.targets_key = task, key, views_key, targets_key
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """A copy of ``data`` with the views and the target added."""
        if self.key not in data:
            raise KeyError(f"PretextViewsd: no {self.key!r} in the sample (its keys: {list(data)})")
        image = data[self.key]
        image = image.as_subclass(Tensor) if isinstance(image, Tensor) else torch.as_tensor(image)
        views, target = self.task.single(image, self.generator)
        out = dict(data)
        out[self.views_key], out[self.targets_key] = views, target
        return out
