"""Where a result comes from: data and encoder hashes, the pretraining record, the software and machine.

A data-efficiency result depends on more than its settings: the exact images, the
encoder file's contents, the library and torch versions, the device and even the CPU
thread count (float reductions are ordered differently). The runner records all of it in
``config.json`` and in every result row, and refuses to reuse finished runs when any of it
changed.

Pretraining record: ``pretext3d pretrain`` writes ``<encoder file>.json`` beside the
encoder with the task, settings, held-out pretext accuracy and the ids of every image it
saw. The runner reads it to check that no validation or test case reached pretraining.
Who pretrains with their own loop can write the same record with
:func:`write_pretraining_record`.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pretext3d._atomic import write_text
from pretext3d._version import __version__

__all__ = [
    "case_key",
    "environment",
    "file_sha256",
    "overlapping_cases",
    "read_pretraining_record",
    "tensor_sha256",
    "write_pretraining_record",
]

_SUFFIXES = re.compile(r"(\.nii\.gz|\.nii|\.npy|\.png|\.jpe?g)$", re.IGNORECASE)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes (hex).

    Examples:
        >>> _ = open("empty.txt", "wb").write(b"")
        >>> file_sha256("empty.txt")
        'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tensor_sha256(*tensors: Tensor) -> str:
    """SHA-256 over the dtypes, shapes and bytes of ``tensors`` (hex).

    Examples:
        >>> tensor_sha256(torch.zeros(3)) == tensor_sha256(torch.zeros(3))
        True
        >>> tensor_sha256(torch.zeros(3)) == tensor_sha256(torch.zeros(1, 3))   # the shape counts too
        False
    """
    digest = hashlib.sha256()
    for t in tensors:
        array = t.detach().cpu().contiguous().numpy()
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _git_commit() -> str | None:
    """The commit of the pretext3d source tree, ``-dirty`` if it has changes; ``None`` outside git."""
    here = Path(__file__).resolve().parent  # the package folder

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(here), *args], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    # only when the package's own files are tracked (not a wheel inside someone's repository)
    if git("ls-files", "--error-unmatch", "__init__.py") is None:
        return None
    commit = git("rev-parse", "HEAD")
    if commit is None:
        return None
    return commit + ("-dirty" if git("status", "--porcelain", "--", ".") else "")


def environment(device: torch.device | str = "cpu") -> dict[str, Any]:
    """The software and machine a result was computed with.

    Returns:
        ``pretext3d``, ``torch``, ``numpy`` and ``python`` versions, ``git_commit`` of
        the pretext3d source (``None`` when not run from a git checkout), ``device`` (with
        the GPU's name on CUDA), ``threads`` (``torch.get_num_threads()``) and ``platform``.

    Examples:
        >>> env = environment("cpu")
        >>> sorted(env)
        ['device', 'git_commit', 'numpy', 'platform', 'pretext3d', 'python', 'threads', 'torch']
    """
    dev = torch.device(device)
    name = str(dev)
    if dev.type == "cuda" and torch.cuda.is_available():
        name = f"{dev} ({torch.cuda.get_device_name(dev)})"
    return {
        "pretext3d": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "git_commit": _git_commit(),
        "device": name,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


def case_key(case_id: str) -> str:
    """The part of a case id that names the scan, for matching ids across loaders.

    ``"imagesTr__pancreas_001.nii.gz"`` (a :class:`~pretext3d.data.VolumeFolder` name),
    ``"pancreas_001_0000"`` (nnU-Net) and ``"pancreas_001"`` (Task07) all give
    ``"pancreas_001"``: the last path part, without image suffixes and the nnU-Net
    channel suffix ``_0000``.

    Examples:
        >>> [case_key(c) for c in ["imagesTr__pancreas_001.nii.gz", "pancreas_001_0000", "pancreas_001"]]
        ['pancreas_001', 'pancreas_001', 'pancreas_001']
    """
    name = re.split(r"__|/|\\", case_id)[-1]
    return _SUFFIXES.sub("", name).removesuffix("_0000")


def _record_path(encoder_file: str | os.PathLike[str]) -> Path:
    return Path(f"{encoder_file}.json")


def write_pretraining_record(
    encoder_file: str | os.PathLike[str], *, case_ids: Sequence[str], **info: Any
) -> Path:
    """Write ``<encoder_file>.json``: the ids of every image pretraining saw, and ``info``.

    Args:
        encoder_file: the encoder the record describes.
        case_ids: ids of all images used in pretraining (training and held-out).
        info: anything else to record (task, settings, ``pretext_accuracy``, ...); must be
            JSON-serialisable.

    Returns:
        The record's path.

    Examples:
        >>> seen = ["pancreas_001", "pancreas_002"]
        >>> path = write_pretraining_record("encoder.pt", case_ids=seen, task="rotation")
        >>> path.name, read_pretraining_record("encoder.pt")["task"]
        ('encoder.pt.json', 'rotation')
    """
    if isinstance(case_ids, str):
        raise TypeError("case_ids must be a sequence of ids, got one string")
    path = _record_path(encoder_file)
    note = (
        "every image pretraining read, the held-out ones (never trained on) included: the data-efficiency "
        "grid refuses an encoder that saw a validation or test case"
    )
    record = {**info, "pretraining_cases_note": note, "pretraining_cases": list(case_ids)}
    write_text(path, json.dumps(record, indent=2, default=str))
    return path


def read_pretraining_record(encoder_file: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The record beside ``encoder_file``, or ``None`` if there is none.

    Examples:
        >>> read_pretraining_record("never-written.pt") is None
        True
    """
    path = _record_path(encoder_file)
    if not path.exists():
        return None
    try:
        record: dict[str, Any] = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"pretraining record {str(path)!r} is not valid JSON: {err}") from err
    return record


def overlapping_cases(pretraining: Iterable[str], held_out: Iterable[str]) -> list[str]:
    """Ids of ``held_out`` whose scan (by :func:`case_key`) is among ``pretraining``.

    Examples:
        >>> pretrained_on = ["pancreas_001.nii.gz", "pancreas_004.nii.gz"]
        >>> overlapping_cases(pretrained_on, ["pancreas_001", "pancreas_002"])
        ['pancreas_001']
    """
    seen = {case_key(c) for c in pretraining}
    return [c for c in held_out if case_key(c) in seen]
