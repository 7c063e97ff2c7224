"""The training machinery the fine-tuning ``Trainer`` and the ``Pretrainer`` share.

Devices (``"auto"``: CUDA, then MPS, then the CPU), precision (fp32, bf16 autocast, fp16
autocast with a gradient scaler), channels-last layouts, every random state a resumed run
needs, atomic checkpoints that are never trusted blindly, and metric logs (JSON lines and
CSV always, TensorBoard when installed).
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import json
import math
import os
import random
import sys
import warnings
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, NoReturn

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from pretext3d._atomic import atomic_path
from pretext3d._checks import check_count_or_auto, check_device, check_precision
from pretext3d.config import renamed

__all__ = [
    "Callback",
    "LineProgress",
    "MetricsLog",
    "NonFiniteLossError",
    "Precision",
    "autocast",
    "changed_settings",
    "end_process_group",
    "exit_process",
    "grad_scaler",
    "is_main_process",
    "load_checkpoint",
    "process_group",
    "progress",
    "read_metrics",
    "resolve_compile",
    "resolve_device",
    "resolve_precision",
    "resolve_workers",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "to_channels_last",
]

Precision = Literal["auto", "fp32", "bf16", "fp16"]

#: A hook both training loops call with every metric row they produce: the Pretrainer with each
#: logged row (``step``, ``loss/<task>``, ``accuracy/<task>``, ``lr``, ...) and each held-out
#: evaluation (``held_out_loss/<task>``, ...), the fine-tuning Trainer with each epoch's record
#: (``epoch``, ``loss``, ``val``, ``encoder_frozen``, ``seconds``). Log to any tracker, print,
#: or raise to stop the run.
Callback = Callable[[Mapping[str, Any]], None]


def process_group() -> tuple[int, int, bool]:
    """``(rank, world size, started here)`` of this run, starting the process group torchrun describes.

    With an initialised ``torch.distributed`` process group its rank and size; else, under
    ``torchrun`` (``WORLD_SIZE > 1`` in the environment), it initialises one (NCCL with CUDA,
    gloo without) from the environment's rendezvous, and says so: who starts a group ends it
    (:func:`end_process_group`); else ``(0, 1, False)``.

    Examples:
        >>> process_group()   # a plain process: rank 0 of 1, no group started
        (0, 1, False)
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return dist.get_rank(), dist.get_world_size(), True
    return 0, 1, False


def is_main_process() -> bool:
    """Whether this process speaks for the run: rank 0 of a process group or of torchrun, or a plain process.

    Examples:
        >>> is_main_process()
        True
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"


def end_process_group() -> None:
    """Wait for every rank, then shut the process group down.

    A process that exits with the process group's threads still running is aborted.

    Examples:
        >>> rank, world, started = process_group()   # under torchrun: a gloo/NCCL group
        >>> if started:
        ...     end_process_group()   # whoever started the group ends it
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def exit_process(status: int) -> NoReturn:
    """Leave the process with ``status``; under torchrun without the interpreter's teardown.

    Call it last, once every file is written and the process group is shut down
    (:func:`end_process_group`): under torchrun (``WORLD_SIZE > 1``) the output is flushed and
    the process leaves with ``os._exit``, because gloo's background threads can still abort an
    ordinary exit ("terminate called without an active exception": 2 of 61 finished 2-process
    runs on a busy 2-core machine, none of 78 this way), which torchrun reports as a failed run.
    Elsewhere it is ``sys.exit(status)``.

    Examples:
        >>> import os, subprocess, sys
        >>> leave = [sys.executable, "-c", "import pretext3d.engine as e; e.exit_process(3)"]
        >>> subprocess.run(leave, env={**os.environ, "WORLD_SIZE": "2"}).returncode   # as under torchrun
        3
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA if available, else MPS, else CPU; anything else is checked to exist.

    Under torchrun (``LOCAL_RANK`` set) a CUDA device without an index is the process's own
    GPU, ``cuda:<LOCAL_RANK>``: one GPU per process.

    Examples:
        >>> resolve_device("cpu")
        device(type='cpu')
        >>> resolve_device("auto").type in ("cuda", "mps", "cpu")
        True
    """
    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif torch.backends.mps.is_available():
            return torch.device("mps")
        else:
            return torch.device("cpu")
    resolved = check_device(device)
    if resolved.type == "cuda" and resolved.index is None and "LOCAL_RANK" in os.environ:
        resolved = check_device(f"cuda:{int(os.environ['LOCAL_RANK'])}")
    return resolved


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` -> bf16 on a GPU that supports it (the fast path), else fp32.

    Examples:
        >>> resolve_precision("auto", torch.device("cpu")), resolve_precision("bf16", torch.device("cpu"))
        ('fp32', 'bf16')
    """
    check_precision("precision", precision)
    if precision != "auto":
        return precision
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


#: a run of at least this many optimizer steps repays ``torch.compile``'s warm-up (``compile="auto"``).
#: On one H200 compiling lifted rotation at 128³, batch 8, from 89 to 218 volumes/s (about 50 ms saved
#: per step); a warm-up of the order of a minute is repaid after roughly 1,000 steps.
COMPILE_MIN_STEPS = 1000


def resolve_compile(compile: bool | str, device: torch.device, steps: int) -> tuple[bool, str]:
    """Whether to ``torch.compile``, and why (for the log): ``"auto"`` -> on CUDA for long runs.

    ``"auto"`` compiles on a CUDA device where Triton is installed (torch's GPU compiler) for runs
    of at least :data:`COMPILE_MIN_STEPS` optimizer steps; shorter runs, the CPU and MPS run
    eagerly (the warm-up would cost more than it saves). ``True``/``False`` are kept as given.

    Examples:
        >>> resolve_compile("auto", torch.device("cpu"), 5000)
        (False, 'compile off (auto: not on CUDA)')
        >>> resolve_compile(True, torch.device("cpu"), 10)
        (True, 'compile on (compile=True)')
        >>> resolve_compile("yes", torch.device("cpu"), 10)
        Traceback (most recent call last):
        ValueError: compile must be true, false or "auto", got 'yes'
    """
    if isinstance(compile, bool):
        return compile, f"compile {'on' if compile else 'off'} (compile={compile})"
    if compile != "auto":
        raise ValueError(f'compile must be true, false or "auto", got {compile!r}')
    if device.type != "cuda":
        return False, "compile off (auto: not on CUDA)"
    if importlib.util.find_spec("triton") is None:
        return False, "compile off (auto: Triton, torch's GPU compiler, is not installed)"
    if steps < COMPILE_MIN_STEPS:
        return (
            False,
            f"compile off (auto: {steps} steps would not repay the warm-up; {COMPILE_MIN_STEPS}+ do)",
        )
    return True, f"compile on (auto: CUDA, {steps} steps)"


def resolve_workers(num_workers: int | str, device: torch.device) -> int:
    """Loader processes: ``"auto"`` -> on CUDA one per free core, at most 8; elsewhere 0.

    On a GPU the loader (crops, reading files) must keep pace with a compiled step: without
    workers a compiled jigsaw step waited for data 63 % of the time on one H200, with 8 under
    1 %. The cores are this process's (its CPU affinity), shared by the processes of this
    machine under torchrun (``LOCAL_WORLD_SIZE``), one kept for the training loop. On the CPU
    the workers would take cores from the step itself, so ``"auto"`` gives 0 there.

    Examples:
        >>> resolve_workers("auto", torch.device("cpu")), resolve_workers(3, torch.device("cpu"))
        (0, 3)
    """
    if check_count_or_auto("num_workers", num_workers) != "auto":
        return int(num_workers)
    if device.type != "cuda":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    per_process = cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, min(8, per_process - 1))


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """The autocast context of ``precision`` (``fp32``: none).

    Examples:
        >>> with autocast(torch.device("cpu"), "bf16"):
        ...     y = torch.nn.Linear(4, 4)(torch.randn(2, 4))
        >>> y.dtype
        torch.bfloat16
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A gradient scaler, enabled only for fp16 (bf16 and fp32 need none).

    Examples:
        >>> cpu = torch.device("cpu")
        >>> grad_scaler(cpu, "bf16").is_enabled(), grad_scaler(cpu, "fp16").is_enabled()
        (False, True)
    """
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def to_channels_last(
    module: nn.Module,
    spatial_dims: int | None = None,
    *,
    setting: bool | None = True,
    device: torch.device | None = None,
) -> nn.Module:
    """``module`` in the channels-last memory format of its dimension (faster convolutions on GPUs).

    The one rule of the loops' ``channels_last`` setting: ``True`` converts, ``False`` does not,
    ``None`` converts on CUDA only (where it is faster).

    Args:
        module: changed in place.
        spatial_dims: convert the weights of this dimension's convolutions (2: ``(O, I, h, w)``,
            3: ``(O, I, d, h, w)``); ``None``: every 2D and 3D convolution weight, each in its
            own format.
        setting: a loop's ``channels_last`` (``True``, ``False`` or ``None``).
        device: where the module runs (for ``setting=None``).

    Examples:
        >>> conv = to_channels_last(torch.nn.Conv3d(1, 8, 3), spatial_dims=3)
        >>> conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
        True
        >>> cpu = torch.device("cpu")
        >>> to_channels_last(torch.nn.Conv3d(1, 8, 3), 3, setting=None, device=cpu).weight.is_contiguous()
        True
    """
    if not (setting or (setting is None and device is not None and device.type == "cuda")):
        return module
    formats = {4: torch.channels_last, 5: torch.channels_last_3d}
    for param in module.parameters():  # (nn.Module.to takes memory_format, its stubs do not)
        if param.dim() in formats and (spatial_dims is None or param.dim() == spatial_dims + 2):
            param.data = param.data.contiguous(memory_format=formats[param.dim()])
    return module


def rng_state() -> dict[str, Any]:
    """Every global random state a resumed run needs: Python, NumPy, torch CPU and CUDA.

    Examples:
        >>> state = rng_state()
        >>> a = torch.rand(2)
        >>> set_rng_state(state)   # as a resumed run does
        >>> torch.equal(a, torch.rand(2))
        True
    """
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` saved.

    Examples:
        >>> state = rng_state()
        >>> import random
        >>> first = random.random()
        >>> set_rng_state(state)
        >>> random.random() == first
        True
    """
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` with ``torch.save`` atomically (a crash never leaves half a file).

    Examples:
        >>> save_checkpoint("run/last.pt", {"step": 10, "model": torch.nn.Linear(2, 2).state_dict()})
        >>> load_checkpoint("run/last.pt", required=("step", "model"))["step"]
        10
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(dict(payload), tmp)


def load_checkpoint(
    path: str | Path, required: tuple[str, ...], device: torch.device | str = "cpu"
) -> dict[str, Any] | None:
    """The checkpoint at ``path``, or ``None`` (with a warning naming it) if it cannot be used.

    A missing file gives ``None`` silently; a truncated, foreign or incomplete one (lacking a
    key of ``required``) is removed with a warning, since the run it belongs to is unfinished
    by definition and starts over.

    Examples:
        >>> load_checkpoint("missing.pt", required=("step",)) is None   # nothing to resume: start fresh
        True
        >>> _ = open("broken.pt", "wb").write(b"half a file")
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     state = load_checkpoint("broken.pt", required=("step",))
        >>> # removed with a warning; the run starts over
        >>> state is None, "cannot be read" in str(caught[0].message)
        (True, True)
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=False)
        missing = [k for k in required if not isinstance(state, dict) or k not in state]
        if missing:
            raise ValueError(f"not a checkpoint of this kind (missing {missing})")
    except Exception as err:
        warnings.warn(
            f"checkpoint {str(path)!r} cannot be read ({type(err).__name__}: {str(err)[:200]}); "
            "it is removed and the run starts over",
            stacklevel=3,
        )
        path.unlink(missing_ok=True)
        return None
    assert isinstance(state, dict)
    return state


def changed_settings(old: Any, new: Any, prefix: str = "", *, ignore: Collection[str] = ()) -> list[str]:
    """Dotted keys where two settings (nested dicts, e.g. ``dataclasses.asdict`` of a config) differ.

    What every resume check names when it refuses a checkpoint or a results folder.

    Args:
        old: the saved settings.
        new: the settings of this run.
        prefix: the dotted name of ``old`` and ``new`` themselves.
        ignore: top-level keys that may differ (settings that change how fast a run goes, not
            what it computes).

    Examples:
        >>> changed_settings({"lr": 0.1, "data": {"size": 16}}, {"lr": 0.1, "data": {"size": 24}})
        ['data.size']
        >>> changed_settings({"lr": 0.1, "workers": 0}, {"lr": 0.1, "workers": 8}, ignore=["workers"])
        []
    """
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out = []
        for key in sorted((set(old) | set(new)) - set(ignore)):
            out += changed_settings(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else str(key))
        return out
    return [] if old == new else [prefix or "(all)"]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message says where.

    Examples:
        >>> issubclass(NonFiniteLossError, FloatingPointError)   # catch it to stop a diverging run cleanly
        True
    """


def read_metrics(jsonl: str | os.PathLike[str]) -> list[dict[str, Any]]:
    r"""The rows of a ``metrics.jsonl`` (none if it does not exist).

    A last line that does not parse is what a process killed during its append leaves: it is
    skipped (the run logs that step again when it resumes).

    Raises:
        ValueError: a line before the last does not parse (the file is damaged); names the file
            and the line.

    Examples:
        >>> from pathlib import Path
        >>> _ = Path("m.jsonl").write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "lo')
        >>> read_metrics("m.jsonl")
        [{'step': 1, 'loss': 0.5}]
    """
    path = Path(jsonl)
    if not path.is_file():
        return []
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines):
                break
            raise ValueError(
                f"{str(path)!r} line {number} is not a JSON row ({err}); delete the file or that line"
            ) from err
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            raise ValueError(
                f"{str(path)!r} line {number} is not a metrics row with an int 'step': {line[:80]!r}"
            )
        rows.append(row)
    return rows


class MetricsLog:
    """Metric rows to ``<folder>/metrics.jsonl`` and ``metrics.csv`` (and TensorBoard if installed).

    Each row is a dict with an int ``step``. On resume, :meth:`truncate` drops rows beyond the
    step the run restarts from, so a resumed log equals an uninterrupted one.

    Args:
        folder: where the files go.
        tensorboard: also write TensorBoard events (needs ``pip install tensorboard``).

    Examples:
        >>> log = MetricsLog("run")
        >>> for step in (10, 20, 30):
        ...     log.log({"step": step, "loss": 1.0 / step})
        >>> log.truncate(20)   # resuming from step 20
        >>> [row["step"] for row in log.rows()]
        [10, 20]
        >>> log.close()   # writes run/metrics.csv too
        >>> open("run/metrics.csv").read().splitlines()[0]
        'step,loss'
    """

    def __init__(self, folder: str | Path, *, tensorboard: bool = False) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.jsonl = self.folder / "metrics.jsonl"
        self.csv = self.folder / "metrics.csv"
        self.writer: Any = None  # made at the first row, once a resume has set the purge step
        self._summary_writer: Any = None
        self._purge_step: int | None = None  # a resumed run's first step: TensorBoard drops later events
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:  # pragma: no cover - depends on the extra
                raise ImportError("tensorboard logging needs: pip install 'pretext3d[tensorboard]'") from err
            self._summary_writer = SummaryWriter

    def rows(self) -> list[dict[str, Any]]:
        """Every row logged so far (see :func:`read_metrics`)."""
        return read_metrics(self.jsonl)

    def truncate(self, step: int) -> None:
        """Keep only the rows up to ``step`` (a resumed run logs the rest again).

        TensorBoard's events after ``step`` in earlier event files are dropped too (its
        ``purge_step``), so that a resumed run's curves show each step once.
        """
        self._purge_step = step + 1
        kept = [r for r in self.rows() if r["step"] <= step]
        with atomic_path(self.jsonl) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def log(self, row: Mapping[str, Any]) -> None:
        """Append one row to the JSON lines (the CSV is rewritten by :meth:`flush`).

        A last line that a killed process left half written is dropped first, so the new row
        starts a line of its own.
        """
        if self.jsonl.exists() and self.jsonl.stat().st_size:
            with open(self.jsonl, "rb") as handle:
                handle.seek(-1, os.SEEK_END)
                whole = handle.read() == b"\n"
            if not whole:
                self.truncate(max((r["step"] for r in self.rows()), default=-1))
        with open(self.jsonl, "a") as handle:
            handle.write(json.dumps(dict(row)) + "\n")
        if self.writer is None and self._summary_writer is not None:
            self.writer = self._summary_writer(str(self.folder / "tensorboard"), purge_step=self._purge_step)
        if self.writer is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, row["step"])

    def flush(self) -> None:
        """Write ``metrics.csv`` from the JSON lines, one row per step and the union of all columns.

        The rows of one step (the training row and the held-out evaluation) are merged.
        """
        merged: dict[Any, dict[str, Any]] = {}
        for row in self.rows():
            merged.setdefault(row["step"], {}).update(row)
        self._write_csv(list(merged.values()))

    def _write_csv(self, rows: list[dict[str, Any]]) -> None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        with atomic_path(self.csv) as tmp:
            tmp.write_text(buffer.getvalue())

    def close(self) -> None:
        """Write the CSV and flush TensorBoard."""
        self.flush()
        if self.writer is not None:
            self.writer.close()


@contextlib.contextmanager
def progress(total: int, initial: int, enabled: bool, description: str) -> Iterator[Any]:
    """A tqdm bar if tqdm is installed and ``enabled``; else ``None`` (both loops' bars).

    Examples:
        >>> with progress(total=3, initial=0, enabled=False, description="steps") as bar:
        ...     print(bar)
        None
    """
    bar: Any = None
    if enabled and not sys.stderr.isatty():  # a log file: a line every few percent, no redraws
        bar = LineProgress(total, initial, description)
    elif enabled:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, initial=initial, desc=description, dynamic_ncols=True)
        except ImportError:
            bar = None
    try:
        yield bar
    finally:
        if bar is not None:
            bar.close()


class LineProgress:
    """Progress for a log file: one line per ``every`` share of ``total`` (and the last), no redraws.

    What :func:`progress` gives when standard error is not a terminal: tqdm's redraws in a
    log file were a line per step (130 KB for one quick reproduction). It offers the part of
    tqdm's interface the loops use (``update``, ``set_postfix``, ``set_postfix_str``,
    ``write``, ``close``).

    Examples:
        >>> import io
        >>> out = io.StringIO()
        >>> bar = LineProgress(total=40, initial=0, description="steps", every=0.25, file=out)
        >>> for _ in range(40):
        ...     bar.set_postfix(loss="0.5")
        ...     bar.update(1)
        >>> print(out.getvalue(), end="")
        steps: 10/40 (25%) loss=0.5
        steps: 20/40 (50%) loss=0.5
        steps: 30/40 (75%) loss=0.5
        steps: 40/40 (100%) loss=0.5
    """

    def __init__(
        self, total: int, initial: int, description: str, every: float = 0.05, file: Any = None
    ) -> None:
        self.total, self.n, self.description = max(1, total), initial, description
        self.step = max(1, math.ceil(self.total * every))
        self.file = file
        self.postfix = ""
        self.next = (initial // self.step + 1) * self.step

    def _print(self, text: str) -> None:
        print(text, file=self.file if self.file is not None else sys.stderr, flush=True)

    def update(self, n: int = 1) -> None:
        """Advance by ``n``; print a line when a share of ``every`` (or the end) is reached."""
        self.n += n
        if self.n >= self.next or self.n >= self.total:
            extra = f" {self.postfix}" if self.postfix else ""
            self._print(f"{self.description}: {self.n}/{self.total} ({self.n / self.total:.0%}){extra}")
            self.next = (self.n // self.step + 1) * self.step

    def set_postfix(self, values: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        """What the next line shows after the count (``key=value`` pairs)."""
        self.postfix = ", ".join(f"{k}={v}" for k, v in {**(values or {}), **kwargs}.items())

    def set_postfix_str(self, text: str) -> None:
        """What the next line shows after the count."""
        self.postfix = text

    def write(self, text: str) -> None:
        """A line of its own on standard output, as tqdm's ``write``."""
        print(text, file=self.file if self.file is not None else sys.stdout, flush=True)

    def close(self) -> None:
        """Nothing to clean up (tqdm's ``close``)."""


__getattr__ = renamed({"evaluating": "pretext3d.models.evaluating"}, "pretext3d.engine")
