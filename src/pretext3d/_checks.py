"""Argument checks shared by the public API.

Every failure names the argument, the value it got and what would be accepted
(see ``docs/conventions.md``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
from torch import Tensor


def check_spatial_dims(spatial_dims: object) -> int:
    """Return ``spatial_dims`` if it is 2 or 3, else raise ``ValueError``/``TypeError``."""
    if isinstance(spatial_dims, bool) or not isinstance(spatial_dims, int):
        raise TypeError(
            f"spatial_dims must be the int 2 or 3, got {spatial_dims!r} ({type(spatial_dims).__name__})"
        )
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    return spatial_dims


def check_int(name: str, value: object, minimum: int) -> int:
    """Return ``value`` if it is an int ``>= minimum``, else raise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return value


def check_count_or_auto(name: str, value: object) -> int | str:
    """Return ``value`` if it is an int ``>= 0`` or ``"auto"``, else raise ``ValueError``."""
    if value != "auto" and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValueError(f'{name} must be an int >= 0 or "auto", got {value!r}')
    return value


def check_unit_interval(name: str, value: float, *, include_one: bool = True) -> float:
    """Return ``value`` if it lies in ``[0, 1]`` (or ``[0, 1)``), else raise ``ValueError``."""
    high = "1]" if include_one else "1)"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number in [0, {high}, got {value!r} ({type(value).__name__})")
    if not (0.0 <= value <= 1.0 if include_one else 0.0 <= value < 1.0):
        raise ValueError(f"{name} must lie in [0, {high}, got {value}")
    return value


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise ``ValueError``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def check_batch(
    x: object,
    spatial_dims: int,
    *,
    name: str = "x",
    check_finite: bool = True,
    allow_single: bool = True,
    single_hint: str = "call task.single(x)",
) -> tuple[Tensor, bool]:
    """Validate an image batch and add a batch axis to a single sample.

    Args:
        x: ``(B, C, *spatial)`` or a single sample ``(C, *spatial)``, floating point.
        spatial_dims: 2 or 3.
        name: the argument's name in error messages.
        check_finite: also reject NaN and infinite values. It costs one read of ``x``
            (a reduction, no copy) and, on a GPU, one synchronisation.
        allow_single: accept a single sample; ``False`` requires the batch axis (a 2D batch
            given to a 3D task would otherwise pass as one sample).
        single_hint: what the error tells a caller with one sample to do.

    Returns:
        ``(batch, was_single)``: ``batch`` is ``(B, C, *spatial)``; ``was_single`` says
        whether a batch axis was added.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor (e.g. torch.float32), got dtype {x.dtype}; "
            f"convert it with {name}.float()"
        )
    rank = spatial_dims + 2
    if not allow_single and x.dim() != rank:
        raise ValueError(
            f"{name} must have shape (B, C, *spatial) with {spatial_dims} spatial axes (rank {rank}), "
            f"got shape {tuple(x.shape)} (rank {x.dim()}); for one sample (C, *spatial) {single_hint}"
        )
    if x.dim() not in (rank, rank - 1):
        raise ValueError(
            f"{name} must have shape (B, C, *spatial) with {spatial_dims} spatial axes "
            f"(rank {rank}) or be a single sample (C, *spatial) (rank {rank - 1}); "
            f"got shape {tuple(x.shape)} (rank {x.dim()})"
        )
    single = x.dim() == rank - 1
    if single:
        x = x.unsqueeze(0)
    if x.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(x.shape)}")
    # One reduction instead of an elementwise mask: a finite sum proves every value
    # finite; only a non-finite sum (NaN/inf, or an overflow) needs the exact check.
    if check_finite and not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return x, single


def check_positive(name: str, value: object, *, allow_zero: bool = False) -> float:
    """Return ``value`` if it is a real number ``> 0`` (``>= 0`` with ``allow_zero``), else raise."""
    bound = ">= 0" if allow_zero else "> 0"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number {bound}, got {value!r} ({type(value).__name__})")
    if not (value >= 0 if allow_zero else value > 0) or not math.isfinite(value):  # NaN fails both
        raise ValueError(f"{name} must be a finite number {bound}, got {value}")
    return float(value)


def check_range(name: str, value: tuple[float, float], *, low: float = 0.0) -> tuple[float, float]:
    """Return ``value`` if it is a pair ``(a, b)`` with ``low <= a <= b``, else raise ``ValueError``."""
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        or not all(math.isfinite(v) for v in value)
        or not low <= value[0] <= value[1]
    ):
        raise ValueError(
            f"{name} must be a pair of finite numbers (a, b) with {low} <= a <= b, got {value!r}"
        )
    return float(value[0]), float(value[1])


#: the one precision vocabulary of every config and loop
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def check_precision(name: str, precision: object) -> str:
    """Check that ``precision`` is one of :data:`PRECISIONS` (``"auto"`` is resolved when a run starts).

    Examples:
        >>> check_precision("precision", "bf16")
        'bf16'
        >>> check_precision("precision", "bf16-mixed")
        Traceback (most recent call last):
        ValueError: precision must be one of ['auto', 'fp32', 'bf16', 'fp16'], got 'bf16-mixed'
    """
    return check_choice(name, precision, PRECISIONS)


def check_device_name(name: str, device: object) -> str:
    """Check that ``device`` is a device name a config may hold, without needing the device here.

    ``"auto"``, ``"cpu"``, ``"mps"``, ``"cuda"`` or ``"cuda:<index>"``: a config written for a
    GPU machine loads and validates on any machine; the device is resolved when a run starts
    (:func:`pretext3d.engine.resolve_device`).

    Examples:
        >>> check_device_name("device", "cuda:1")
        'cuda:1'
        >>> check_device_name("device", "gpu")
        Traceback (most recent call last):
        ValueError: device must be 'auto', 'cpu', 'cuda', 'cuda:<index>' or 'mps', got 'gpu'
    """
    if not isinstance(device, str) or not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", device):
        raise ValueError(f"{name} must be 'auto', 'cpu', 'cuda', 'cuda:<index>' or 'mps', got {device!r}")
    return device


def check_device(device: object) -> torch.device:
    """Return ``device`` as a ``torch.device`` that exists here, else raise ``ValueError``."""
    if isinstance(device, torch.device):
        parsed = device
    elif isinstance(device, str):
        try:
            parsed = torch.device(device)
        except RuntimeError as err:
            raise ValueError(
                f"device must be 'cpu', 'cuda', 'cuda:<index>' or 'mps', got {device!r}"
            ) from err
    else:
        raise TypeError(f"device must be a string like 'cpu' or a torch.device, got {device!r}")
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (parsed.index is not None and parsed.index >= count):
            have = (
                "this torch build or machine has no CUDA device" if not count else f"{count} CUDA device(s)"
            )
            raise ValueError(f"device {device!r} is not available: {have}; use device='cpu'")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} is not available here; use device='cpu'")
    return parsed


def shape_of(x: object) -> object:
    """``x``'s shape if it is a tensor, else its type's name (for messages)."""
    return tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
