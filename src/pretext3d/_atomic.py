"""Write files so that an interrupted write never leaves a half-written file behind."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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
