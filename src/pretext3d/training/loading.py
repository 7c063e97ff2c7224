"""Loading for pretraining: seeded random crops of any data set, and resumable micro-batches.

Every random draw is a function of the run's seed: each sample's crop of (seed, epoch,
index), so that workers and resumes do not change it, and each epoch's order of (seed,
epoch), so that a run restarted at any batch sees what an uninterrupted one would.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler, Subset

from pretext3d._random import Seeds
from pretext3d.training.step import image_of
from pretext3d.transforms.crops import random_crop

__all__ = ["ResumableBatches", "SeededCrops", "case_ids", "stack_images"]


class SeededCrops(Dataset[Tensor]):
    """Items of ``data`` (index ``epoch * N + i``), randomly cropped as a function of (seed, epoch, i).

    Args:
        data: items ``(C, *spatial)`` (tensors or arrays), tuples or dicts holding one (see
            :func:`~pretext3d.training.image_of`).
        crop: the crop's edge (``0``: whole images).
        spatial_dims: 2 or 3.
        seed: the run's seed.
        image_key: the image's key in dict items.
        min_std: redraw a crop (up to 8 draws) whose std is below this fraction of its image's.

    Examples:
        >>> crops = SeededCrops(p3.data.PhantomImages("ct", count=4, size=16), crop=8, spatial_dims=3, seed=0)
        >>> crops[1].shape, torch.equal(crops[1], crops[1]), torch.equal(crops[1], crops[4 + 1])
        (torch.Size([1, 8, 8, 8]), True, False)
    """

    def __init__(
        self,
        data: Dataset[Any],
        crop: int,
        spatial_dims: int,
        seed: int,
        image_key: str = "image",
        min_std: float = 0.0,
    ) -> None:
        self.data, self.crop, self.spatial_dims, self.seed = data, crop, spatial_dims, seed
        self.size = len(data)  # type: ignore[arg-type]
        self.image_key, self.min_std = image_key, min_std

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Tensor:
        epoch, i = divmod(index, self.size)
        image = image_of(self.data[i], self.image_key, f"the data set's item {i}")
        if not isinstance(image, Tensor):
            image = torch.as_tensor(np.asarray(image))
        if image.dim() != self.spatial_dims + 1:
            raise ValueError(
                f"the data set's item {i} has shape {tuple(image.shape)}; pretraining needs "
                f"(C, *spatial) images with {self.spatial_dims} spatial axes"
            )
        if self.crop:
            spatial = image.shape[1:]
            inside = math.prod(min(n, self.crop) for n in spatial) / self.crop**self.spatial_dims
            if inside < 0.5:
                raise ValueError(
                    f"crop={self.crop} is larger than the data set's item {i} of spatial shape "
                    f"{tuple(spatial)}: {100 * (1 - inside):.0f} % of each crop would be padding; "
                    "use a crop no larger than the images (or 0 for whole images)"
                )
            generator = torch.Generator().manual_seed(Seeds.loader_crop(self.seed, epoch, i))
            image = torch.from_numpy(self._varied_crop(image.numpy(), generator))
        return image.float().contiguous()

    def _varied_crop(self, array: np.ndarray, generator: torch.Generator) -> np.ndarray:
        """A random crop, drawn again (up to 8 draws) while its std is below ``min_std`` x the image's."""
        size = (self.crop,) * self.spatial_dims
        crop = random_crop(array, size, generator)
        if not self.min_std:
            return crop
        need = self.min_std * float(array.std())
        best, best_std = crop, float(crop.std())
        for _ in range(7):
            if best_std >= need:
                break
            crop = random_crop(array, size, generator)
            if float(crop.std()) > best_std:
                best, best_std = crop, float(crop.std())
        return best


class ResumableBatches(Sampler[list[int]]):
    """Micro-batches ``first, first + 1, ...`` of one rank.

    Epoch ``e`` visits the items in an order of (seed, e) (the same on every rank); global
    batch ``b`` is items ``[b * B * world, (b + 1) * B * world)`` of that order, and rank ``r``
    takes its ``r``-th slice of ``B`` (``DistributedSampler``'s split, with the per-epoch
    reshuffle, in a form that resumes at any batch). Indices are ``epoch * size + item``
    (what :class:`SeededCrops` reads).

    Examples:
        >>> list(ResumableBatches(size=4, batch=2, seed=0, first=2, count=2, shuffle=False))   # epoch 1
        [[4, 5], [6, 7]]
    """

    def __init__(
        self,
        size: int,
        batch: int,
        seed: int,
        first: int,
        count: int,
        shuffle: bool,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.size, self.batch, self.seed, self.shuffle = size, batch, seed, shuffle
        self.first, self.count, self.rank, self.world = first, count, rank, world
        self.per_epoch = max(1, size // (batch * world))

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[list[int]]:
        order: Tensor | None = None
        epoch_of_order = -1
        for b in range(self.first, self.first + self.count):
            epoch, j = divmod(b, self.per_epoch)
            if epoch != epoch_of_order:
                g = torch.Generator().manual_seed(Seeds.batch_order(self.seed, epoch))
                order = torch.randperm(self.size, generator=g) if self.shuffle else torch.arange(self.size)
                epoch_of_order = epoch
            assert order is not None
            start = (j * self.world + self.rank) * self.batch
            yield [epoch * self.size + int(i) for i in order[start : start + self.batch]]


def stack_images(images: list[Tensor]) -> Tensor:
    """The images as one batch; a clear error when they differ in shape.

    Examples:
        >>> stack_images([torch.zeros(1, 4, 4), torch.zeros(1, 4, 4)]).shape
        torch.Size([2, 1, 4, 4])
    """
    shapes = sorted({tuple(x.shape) for x in images})
    if len(shapes) > 1:
        raise ValueError(
            f"the images of a batch differ in shape {shapes[:4]}; set crop (PretrainConfig.crop) to cut "
            "equal random crops, or resize the images in the data set"
        )
    return torch.stack(images)


def case_ids(data: Dataset[Any]) -> list[str]:
    """The ids of a data set's images (``case_ids``, through ``Subset``s); ``[]`` if it has none.

    Examples:
        >>> case_ids(torch.utils.data.Subset(p3.data.PhantomImages("ct", count=4, size=8), [2]))
        ['ct-phantom-2']
    """
    if isinstance(data, Subset):
        ids = case_ids(data.dataset)
        return [ids[i] for i in data.indices] if ids else []
    names = getattr(data, "case_ids", None)
    return [str(i) for i in names] if names is not None else []
