"""Several worker processes on one machine, sharing reproductions' folders.

Reproductions split their work between processes started on the same config: each encoder and
each fine-tuning run is claimed with a lock file (:mod:`pretext3d.experiments.locks`), so N
processes with one CPU thread each finish about N times sooner, with the same results.
:func:`run_workers` starts them and waits; ``pretext3d reproduce --workers N`` and
``examples/verdict.py`` use it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pretext3d._checks import check_int

__all__ = ["run_workers"]


def run_workers(
    commands: Sequence[Sequence[str]],
    logs: Sequence[str | os.PathLike[str] | None],
    *,
    log: Callable[[str], None] = print,
    threads: int = 1,
) -> int:
    """Run each command as a process of its own, wait for all; the worst exit code.

    Every process gets ``OMP_NUM_THREADS=threads`` (torch otherwise starts a thread per core in
    each, and side-by-side processes slow each other several-fold). Ctrl-C interrupts them all
    (each says where it stopped); rerun the same command to resume: nothing finished is lost.

    Args:
        commands: one argument list per worker (e.g. ``[sys.executable, "-m", "pretext3d.cli", ...]``).
        logs: one log file per worker (made with its folder), or ``None``: this process's output.
        log: where the start and end lines go.
        threads: CPU threads per worker.

    Returns:
        ``0`` when every worker succeeded, else the largest exit code.

    Examples:
        >>> import sys
        >>> run_workers([[sys.executable, "-c", "print('one')"], [sys.executable, "-c", "print('two')"]],
        ...             ["w0.log", "w1.log"], log=lambda line: None)
        0
        >>> open("w1.log").read().strip()
        'two'
    """
    if len(commands) != len(logs) or not commands:
        raise ValueError(f"give one log per command, got {len(commands)} commands and {len(logs)} logs")
    check_int("threads", threads, 1)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    processes: list[subprocess.Popen[bytes]] = []
    with contextlib.ExitStack() as files:
        try:
            for k, (command, path) in enumerate(zip(commands, logs, strict=True)):
                out = None
                if path is not None:
                    Path(path).parent.mkdir(parents=True, exist_ok=True)
                    out = files.enter_context(open(path, "a", encoding="utf-8"))
                processes.append(
                    subprocess.Popen(list(command), stdout=out, stderr=subprocess.STDOUT, env=env)
                )
                where = f"; its log: {path}" if path is not None else ""
                log(f"worker {k} started (pid {processes[-1].pid}){where}")
            while any(p.poll() is None for p in processes):
                time.sleep(0.2)
        except KeyboardInterrupt:
            for p in processes:
                if p.poll() is None:
                    p.send_signal(signal.SIGINT)
            for p in processes:
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    p.kill()
            raise
    codes = [int(p.returncode) for p in processes]
    for k, code in enumerate(codes):
        if code:
            log(f"worker {k} failed (exit code {code})" + (f"; see {logs[k]}" if logs[k] is not None else ""))
    return max(codes) if any(codes) else 0
