"""Random draws that follow the library's convention, and the one table of derived seeds.

Numbers are drawn on the generator's device (a seeded generator reproduces them
wherever the data live), or on the target device with the global generator when none is
given, then moved to the target device.

Every stream a run derives from its one seed is named in :class:`Seeds` (issue 40): the
views of each task, the crops and the batch order of the loader, the held-out draws, the
shortcut check's images, the probe's and the positive control's phantoms, the phantoms' cases.
The constants are those the streams always had, so that every run gives what it gave.
"""

from __future__ import annotations

import torch
from torch import Tensor


class Seeds:
    """The seed of every derived draw stream, from the run's seeds (all ``int -> int``).

    Examples:
        >>> Seeds.task_views(0, task=1, rank=0), Seeds.held_out_crops(3), Seeds.phantom_case(2, 0, 5)
        (2, 7922, 200011)
    """

    #: offsets that keep streams apart (prime, so that seed + offset rarely meets another seed)
    SECOND = 7919
    THIRD = 104_729
    STRIDE = 100_003
    FINE = 1_000_003

    @staticmethod
    def task_views(seed: int, task: int, rank: int) -> int:
        """A task's view draws in training (the pretrainer's and the Lightning module's steps)."""
        return seed * 1000 + task + 1 + Seeds.SECOND * rank

    @staticmethod
    def held_out_crops(seed: int) -> int:
        """The pretrainer's held-out crops (fixed over the run)."""
        return seed + Seeds.SECOND

    @staticmethod
    def held_out_views(task: int) -> int:
        """A task's held-out views in the pretrainer (fixed over the run and across seeds)."""
        return 10**6 + task

    @staticmethod
    def lightning_held_out_views(seed: int, task: int, batch: int) -> int:
        """A task's held-out views of one validation batch in the Lightning module."""
        return seed * 1000 + 500 + 31 * task + batch

    @staticmethod
    def shortcut_crops(seed: int) -> int:
        """The crops the pretrainer's start-up shortcut check scores."""
        return seed + Seeds.THIRD

    @staticmethod
    def loader_crop(seed: int, epoch: int, index: int) -> int:
        """The random crop of one item in one epoch (the same wherever a worker loads it)."""
        return (seed * Seeds.FINE + epoch) * Seeds.FINE + index

    @staticmethod
    def batch_order(seed: int, epoch: int) -> int:
        """The loader's order of the items in one epoch."""
        return seed * Seeds.STRIDE + epoch

    @staticmethod
    def phantom_case(seed: int, first: int, index: int) -> int:
        """A built-in phantom's case: ``first + index`` of the data's ``seed``."""
        return seed * Seeds.STRIDE + first + index

    @staticmethod
    def probe_phantoms(data_seed: int) -> int:
        """The data seed of a reproduction's probe phantoms (no case of the splits)."""
        return data_seed + Seeds.SECOND

    @staticmethod
    def positive_control(data_seed: int, k: int) -> int:
        """The data seed of a reproduction's ``k``-th positive control's labelled images."""
        return data_seed + Seeds.THIRD + k


def as_generator(generator: object, name: str = "generator") -> torch.Generator | None:
    """A ``torch.Generator`` from what a user may pass: a generator, an int seed, or ``None``.

    An int seed gives a fresh CPU generator seeded with it, so the same seed gives the same
    draws every call (pass one generator and keep it for a stream of different draws).
    """
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, int) and not isinstance(generator, bool):
        return torch.Generator().manual_seed(generator)
    raise TypeError(
        f"{name} must be a torch.Generator, an int seed or None, "
        f"got {generator!r} ({type(generator).__name__})"
    )


def _source(generator: torch.Generator | None, device: torch.device | str) -> torch.device | str:
    return generator.device if generator is not None else device


def rand(
    shape: tuple[int, ...],
    generator: torch.Generator | None,
    device: torch.device | str,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Uniform numbers in ``[0, 1)`` on ``device``."""
    return torch.rand(shape, generator=generator, device=_source(generator, device), dtype=dtype).to(device)


def randint(
    high: int,
    shape: tuple[int, ...],
    generator: torch.Generator | None,
    device: torch.device | str,
    low: int = 0,
) -> Tensor:
    """Uniform integers in ``[low, high)`` on ``device``."""
    return torch.randint(low, high, shape, generator=generator, device=_source(generator, device)).to(device)


def randperm(n: int, generator: torch.Generator | None, device: torch.device | str) -> Tensor:
    """A random permutation of ``0..n-1`` on ``device``."""
    return torch.randperm(n, generator=generator, device=_source(generator, device)).to(device)
