"""Random draws that follow the library's convention.

Numbers are drawn on the generator's device (a seeded generator reproduces them
wherever the data live), or on the target device with the global generator when none is
given, then moved to the target device.
"""

from __future__ import annotations

import torch
from torch import Tensor


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
