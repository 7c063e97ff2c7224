"""A lock file per run, so that several workers can share one data-efficiency grid.

A worker claims a run by creating ``<run>.lock`` exclusively (``O_CREAT | O_EXCL``, atomic
on local and NFSv3+ file systems) with its host name, process id and process identity (on
Linux the boot id and the process's start time) in it, and deletes it when the run is written
or fails. A lock whose holder no longer runs on this host is stale (its holder was killed) and
is taken over, also when another process has since been given the holder's pid (after a reboot
or in a container): the identity tells them apart. Where there is no identity (off Linux, or a
lock written by an older version), the holder's heartbeat does: a holder touches its lock every
``_HEARTBEAT_SECONDS``, and a lock without an identity whose live-looking pid has not touched it
for ``_SILENT_SECONDS`` is stale (its pid was given to another process), so a grid never waits
forever. A lock from another host is respected until its holder removes it (delete it by hand if
that machine died).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from pretext3d._atomic import pid_alive, process_identity

__all__ = ["RunLock", "remove_stale_locks", "work_through"]

J = TypeVar("J")

_EMPTY_LOCK_SECONDS = 60.0
_HEARTBEAT_SECONDS = 30.0  # how often a holder touches its lock
_SILENT_SECONDS = 300.0  # a lock without a process identity, untouched this long, is stale
_POLL_SECONDS = 5.0  # how often a worker looks again at jobs that other workers hold


class RunLock:
    """``with RunLock(path) as claimed:``: ``claimed`` says whether this process holds the run.

    Args:
        path: the lock file (beside the run's result file).

    Examples:
        >>> with RunLock("run.lock") as claimed:
        ...     with RunLock("run.lock") as again:   # another worker finds the run taken
        ...         print(claimed, again)
        True False
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.held = False
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def acquire(self) -> bool:
        """Try to take the lock (taking over a stale one); ``True`` when this process holds it."""
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if not self.stale():
                    return False
                self.path.unlink(missing_ok=True)  # a killed holder's: take it over
                continue
            with os.fdopen(fd, "w") as handle:
                pid = os.getpid()
                handle.write(f"{socket.gethostname()} {pid} {process_identity(pid) or '-'}\n")
            self.held = True
            self._stop.clear()
            self._beat = threading.Thread(
                target=self._heartbeat, name=f"heartbeat {self.path.name}", daemon=True
            )
            self._beat.start()
            return True
        return False

    def _heartbeat(self) -> None:
        """Touch the lock while it is held, so that a lock without an identity can still be told stale."""
        while not self._stop.wait(_HEARTBEAT_SECONDS):
            try:
                os.utime(self.path)
            except OSError:  # removed under us: nothing left to keep alive
                return

    def release(self) -> None:
        """Give the lock up (only if this process holds it)."""
        if self.held:
            self._stop.set()
            if self._beat is not None:
                self._beat.join()
                self._beat = None
            self.path.unlink(missing_ok=True)
            self.held = False

    def stale(self) -> bool:
        """Whether the lock file exists and its holder is gone (killed; its pid perhaps reused)."""
        try:
            text = self.path.read_text()
            age = time.time() - self.path.stat().st_mtime
        except OSError:  # already gone
            return False
        if not text.strip():  # being written right now, or its writer died in between
            return age > _EMPTY_LOCK_SECONDS
        parts = text.split()
        if len(parts) < 2 or not parts[1].isdigit():  # not a RunLock's: as if half written
            return age > _EMPTY_LOCK_SECONDS
        host, pid = parts[0], int(parts[1])
        if host != socket.gethostname():
            return False
        if not pid_alive(pid):
            return True
        recorded = parts[2] if len(parts) > 2 and parts[2] != "-" else ""
        if recorded:
            return recorded != process_identity(pid)  # the pid was given to another
        return age > _SILENT_SECONDS  # no identity: a holder that stopped beating is gone

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.release()


def remove_stale_locks(folder: str | os.PathLike[str]) -> list[Path]:
    r"""Delete the ``*.lock`` files in ``folder`` whose holders are gone (see :meth:`RunLock.stale`).

    Returns:
        The locks removed.

    Examples:
        >>> from pathlib import Path
        >>> Path("locks").mkdir(exist_ok=True)
        >>> _ = Path("locks/dead.lock").write_text(f"{socket.gethostname()} 999999999 -\n")   # killed holder
        >>> with RunLock("locks/mine.lock"):   # held by this (live) process
        ...     [p.name for p in remove_stale_locks("locks")]
        ['dead.lock']
    """
    removed = []
    for lock in sorted(Path(folder).glob("*.lock")):
        if RunLock(lock).stale():
            lock.unlink(missing_ok=True)
            removed.append(lock)
    return removed


def work_through(
    jobs: Sequence[J],
    *,
    done: Callable[[J], bool],
    lock: Callable[[J], Path],
    run: Callable[[J], object],
    log: Callable[[str], None],
    waiting: str,
) -> None:
    """Run every job not yet done; workers sharing the folder split them (the one worker loop).

    Each job is claimed with its lock file (:class:`RunLock`) and run unless it was done meanwhile;
    a job a live worker holds is left to it and looked at again every ``_POLL_SECONDS`` (saying
    ``waiting for <n> <waiting>`` when a pass got nowhere), one whose worker died is taken over.

    Args:
        jobs: what to do, in order.
        done: whether a job's result exists.
        lock: its lock file.
        run: does it (writing the result ``done`` looks for).
        log: where the waiting line goes.
        waiting: the jobs in the waiting line, e.g. ``"run(s) that other workers hold"``.

    Examples:
        >>> made = []
        >>> work_through(["a", "b"], done=lambda j: j in made, lock=lambda j: Path(f"{j}.lock"),
        ...              run=made.append, log=print, waiting="job(s)")
        >>> made
        ['a', 'b']
    """
    pending = [job for job in jobs if not done(job)]
    while pending:
        progressed = False
        for job in list(pending):
            if not done(job):
                with RunLock(lock(job)) as claimed:
                    if not claimed:
                        continue
                    if not done(job):
                        run(job)
            pending.remove(job)
            progressed = True
        if pending and not progressed:
            log(f"waiting for {len(pending)} {waiting}")
            time.sleep(_POLL_SECONDS)
