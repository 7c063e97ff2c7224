"""A small in-memory pretraining loop: what ``pretext3d pretrain`` runs.

It trains on a tensor of images already in memory, on the CPU, with Adam, and writes the
encoder with its pretraining record (:mod:`~pretext3d.experiments.provenance`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pretext3d._checks import check_int, check_positive
from pretext3d.experiments.provenance import environment, write_pretraining_record
from pretext3d.models.io import save_encoder
from pretext3d.pretext_model import PretextModel
from pretext3d.tasks.base import PretextTask
from pretext3d.transforms.crops import random_crops

__all__ = ["pretrain_in_memory"]


def pretrain_in_memory(
    task: PretextTask[Any, Any],
    encoder: nn.Module,
    images: Tensor,
    case_ids: Sequence[str],
    output: str | PathLike[str],
    *,
    steps: int = 200,
    batch_size: int = 8,
    lr: float = 1e-3,
    crop: int = 0,
    held_out: int = 16,
    seed: int = 0,
    record: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Pretrain ``encoder`` on ``task`` and save it with its pretraining record.

    The first ``held_out`` images are kept aside; each step draws ``batch_size`` of the
    others, takes a random ``crop`` (edge; 0: whole images), makes the task's views and
    takes an Adam step on ``task.loss``; every random draw comes from one generator
    seeded with ``seed``. At the end the held-out images (cropped by another seeded
    generator) give the pretext accuracy in eval mode (NaN when ``held_out`` is 0).

    Args:
        task: the pretext task.
        encoder: the network to pretrain (any module, see :class:`~pretext3d.PretextModel`).
        images: ``(N, C, *spatial)`` unlabelled images.
        case_ids: one id per image, written to the pretraining record.
        output: the encoder file (:func:`~pretext3d.models.save_encoder`); the record goes
            beside it.
        steps: optimizer steps.
        batch_size: images per step.
        lr: Adam learning rate.
        crop: random crop edge taken from every image before the task (0: none).
        held_out: images kept aside to measure the pretext accuracy.
        seed: of initialisation (``torch.manual_seed``), sampling, crops and views.
        record: more fields for the record (e.g. the command's config).
        log: where progress lines go.

    Returns:
        The record written (``pretext_accuracy``, ``seconds``, ...).
    """
    check_int("steps", steps, 1)
    check_int("batch_size", batch_size, 1)
    check_positive("lr", lr)
    check_int("crop", crop, 0)
    if len(case_ids) != len(images):
        raise ValueError(f"case_ids must hold one id per image ({len(images)}), got {len(case_ids)}")
    if not 0 <= held_out < len(images):
        raise ValueError(f"held_out={held_out} leaves no training images out of {len(images)}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    d = task.spatial_dims
    train, held = images[held_out:], images[:held_out]
    model = PretextModel(encoder, task)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)

    def cropped(x: Tensor, generator: torch.Generator) -> Tensor:
        return random_crops(x, (crop,) * d, generator) if crop else x

    start = time.perf_counter()
    model.train()
    for step in range(1, steps + 1):
        views, targets = task(
            cropped(train[torch.randint(len(train), (batch_size,), generator=gen)], gen), gen
        )
        output_ = model(views)
        loss = task.loss(output_, targets, generator=gen)
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        if step % 50 == 0 or step == steps:
            accuracy = float(task.accuracy(output_.detach(), targets))
            name = type(task).__name__
            log(f"pretrain {name}: step {step}/{steps} loss {loss.item():.3f} accuracy {accuracy:.3f}")
    model.eval()
    eval_gen = torch.Generator().manual_seed(seed + 1)
    accuracy = float("nan")
    if held_out:
        with torch.no_grad():
            views, targets = task(cropped(held, eval_gen), eval_gen)
            accuracy = float(task.accuracy(model(views), targets))
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_encoder(model.encoder, out)
    written = {
        "pretext_accuracy": accuracy,
        "steps": steps,
        "seconds": time.perf_counter() - start,
        "held_out_cases": list(case_ids[:held_out]),
        **(record or {}),
        "environment": environment(),
    }
    write_pretraining_record(out, case_ids=case_ids, **written)
    return written
