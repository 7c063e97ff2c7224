"""Shared fixtures and the hypothesis profile (small example counts keep the suite fast)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "pretext3d", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("pretext3d")

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.fixture(params=[2, 3], ids=["2d", "3d"])
def spatial_dims(request: pytest.FixtureRequest) -> int:
    """Every task test runs in 2D and 3D."""
    return int(request.param)


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    """The CPU, and CUDA where present."""
    return torch.device(request.param)


def coordinate_image(batch: int, channels: int, shape: tuple[int, ...]) -> torch.Tensor:
    """A float batch whose every voxel holds its own flat index in the batch (all distinct)."""
    return torch.arange(batch * channels * int(torch.tensor(shape).prod()), dtype=torch.float64).reshape(
        batch, channels, *shape
    )


def result_row(method: str, fraction: float, split: int, value: float, rep: int = 0) -> dict[str, object]:
    """A data-efficiency result row with test metric ``m``, for the statistics and report tests."""
    return {
        "method": method,
        "fraction": fraction,
        "split_seed": split,
        "repetition": rep,
        "test": {"m": value},
    }
