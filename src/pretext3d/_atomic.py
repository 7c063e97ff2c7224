"""Write files so that an interrupted write never leaves a half-written file behind.

Also ``torch.save`` files written so, and their reading back with errors that name the file.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch


@contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block succeeds.

    Args:
        path: the file to write.
        suffix: ending of the temporary name, for writers that choose a format by it
            (``".nii.gz"``, ``".png"``).
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp{suffix}")
    try:
        yield tmp
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_torch(path: str | os.PathLike[str], payload: Any) -> None:
    """``torch.save`` ``payload`` to ``path`` atomically, serialised in memory first.

    torch names the archive's folder after the file it writes, so saving to the temporary name
    directly would make equal payloads give unequal files (and unequal SHA-256 in the
    data-efficiency provenance).
    """
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def load_torch(path: str | os.PathLike[str], what: str, written_by: str) -> Any:
    """What a ``torch.save`` file holds, read with ``weights_only=True`` onto the CPU.

    Raises:
        ValueError: ``"<what> '<path>' does not exist"``, or ``"'<path>' is not <written_by>
            (torch.load failed: ...)"``: torch's unpickling errors say much, but not which file.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise ValueError(f"{what} {str(path)!r} does not exist") from err
    except Exception as err:
        raise ValueError(
            f"{str(path)!r} is not {written_by} (torch.load failed: {str(err).splitlines()[0][:200]})"
        ) from err


_TMP = re.compile(r"^\..+\.(\d+)\.tmp")


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (ours included)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, but belongs to someone else
        return True
    return True


def process_identity(pid: int) -> str:
    """What tells process ``pid`` from a later one that reuses its number: ``"<boot id>:<start>"``.

    On Linux, the kernel's boot id and the process's start time (clock ticks since boot, field
    22 of ``/proc/<pid>/stat``); elsewhere, or for a process that does not run, ``""`` (then
    only the pid can be compared).
    """
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat[stat.rindex(")") + 2 :].split()  # the name may hold spaces and parentheses
    return f"{boot}:{fields[19]}"  # fields from 3 on: starttime is field 22


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporaries of :func:`atomic_path` that a killed process left in ``folder``.

    A temporary ``.<name>.<pid>.tmp...`` is stale when no process ``pid`` runs on this
    machine; those of live processes (another worker writing now) are kept.

    Returns:
        The files removed.
    """
    removed: list[Path] = []
    root = Path(folder)
    if not root.is_dir():
        return removed
    for path in root.iterdir():
        match = _TMP.match(path.name)
        if match and path.is_file() and not pid_alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
