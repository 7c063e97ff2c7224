"""The ``pretext3d`` command: ``pretrain``, ``finetune``, ``data-efficiency`` and ``reproduce``.

Each takes a TOML config (``--config``) and ``--set KEY=VALUE`` overrides (dotted keys,
TOML values). Configs are typed: an unknown or misspelled key is an error naming it and
the nearest valid key. ``pretext3d <command> --help`` lists the keys and defaults.

This module only parses: each command is a config class and one library function of
:mod:`pretext3d.experiments` (:func:`~pretext3d.experiments.pretrain`,
:func:`~pretext3d.experiments.finetune`, :func:`~pretext3d.experiments.data_efficiency`,
:func:`~pretext3d.experiments.run_reproduction`).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pretext3d import engine
from pretext3d._checks import check_device_name
from pretext3d.config import ConfigError, from_mapping, load_toml, merge_override, parse_override
from pretext3d.experiments import (
    DataEfficiency,
    Finetuning,
    Pretraining,
    Reproduction,
    data_efficiency,
    finetune,
    held_out_block,
    predict,
    pretrain,
    run_reproduction,
)
from pretext3d.experiments.cost import estimate_cost
from pretext3d.experiments.workers import run_workers

__all__ = ["COMMANDS", "main"]


def _import_plugins(modules: object, folder: Path | None = None) -> None:
    """Import the modules named under ``plugins`` (so that their registrations run).

    ``folder`` (the config file's) is searched first, so that a ``my_tasks.py`` beside the
    config imports as ``plugins = ["my_tasks"]`` without ``PYTHONPATH``.
    """
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        raise ConfigError(f"plugins must be a list of module names, got {modules!r}")
    if modules and folder is not None and str(folder.resolve()) not in sys.path:
        sys.path.insert(0, str(folder.resolve()))
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise ConfigError(f"plugins: cannot import {name!r} ({err})") from err
        except Exception as err:  # a plugin with a syntax error, or one that raises at import
            where = f" ({err.filename}, line {err.lineno})" if isinstance(err, SyntaxError) else ""
            raise ConfigError(
                f"plugins: importing {name!r} failed: {type(err).__name__}: {err}{where}; run "
                f"python -c 'import {name}' to see the traceback"
            ) from err


#: each command's config class and the library function that runs it
COMMANDS: dict[str, tuple[type[Any], Callable[[Any], Any]]] = {
    "pretrain": (Pretraining, pretrain),
    "finetune": (Finetuning, finetune),
    "data-efficiency": (DataEfficiency, data_efficiency),
    "reproduce": (Reproduction, run_reproduction),
}


#: a --set example that is valid for each command (tested)
SET_EXAMPLES = {
    "pretrain": "pretrain.lr=0.001",
    "finetune": "train.lr=0.001",
    "data-efficiency": "experiment.train.lr=0.001",
    "reproduce": "pretrain.lr=0.001",
}


def _plain(text: str) -> str:
    """Docstring markup as plain text: ``x`` -> x, :class:`~a.B` -> B, :func:`a.f` -> a.f."""
    text = re.sub(r":[a-z]+:`~[\w.]*?\.?(\w+)`", r"\1", text)
    text = re.sub(r":[a-z]+:`([^`]+)`", r"\1", text)
    return re.sub(r"``([^`]+)``", r"\1", text)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items() if v is not None)
        return "{ " + items + " }" if items else "{}"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _toml_value(dataclasses.asdict(value))
    return json.dumps(str(value))  # a TOML basic string


def _toml_defaults(obj: Any, table: str = "") -> list[str]:
    """The settings of the dataclass ``obj`` as TOML (unset values as comments: TOML has no null)."""
    lines, tables = [], []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            tables.append((f.name, value))
        elif value is None:
            lines.append(f"# {f.name} = (unset)")
        else:
            lines.append(f"{f.name} = {_toml_value(value)}")
    for name, value in tables:
        full = f"{table}.{name}" if table else name
        lines += ["", f"[{full}]", *_toml_defaults(value, full)]
    return lines


def _describe(name: str, cls: type[Any]) -> str:
    doc = (cls.__doc__ or "").split("\n    Examples:")[0].strip()  # the Python examples are for the API docs
    defaults = "\n".join(_toml_defaults(cls()))
    return (
        f"{_plain(doc)}\n\nDefaults, as a TOML config (write the ones you change to a file for --config, "
        f"or one at a time with --set, e.g. --set {SET_EXAMPLES[name]}):\n\n{defaults}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pretext3d`` console script.

    Examples:
        >>> from pathlib import Path
        >>> _ = Path("pretrain.toml").write_text('''task = "rotation"
        ... encoder = "unet"
        ... encoder_options = { widths = [8, 16] }
        ... data = { kind = "ct-phantom", count = 12, size = 32 }
        ... held_out = 4
        ... pretrain = { steps = 2, batch_size = 2, device = "cpu", progress = false }''')
        >>> import contextlib, io
        >>> with contextlib.redirect_stdout(io.StringIO()):
        ...     status = main(["pretrain", "--config", "pretrain.toml", "--set", "output=enc.pt"])
        >>> status, Path("enc.pt").exists()
        (0, True)
    """
    parser = argparse.ArgumentParser(prog="pretext3d", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (cls, _) in COMMANDS.items():
        p = sub.add_parser(
            name,
            help=_plain((cls.__doc__ or "").splitlines()[0]),
            description=_describe(name, cls),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("--config", type=Path, help="TOML file with the settings")
        p.add_argument(
            "--defaults",
            action="store_true",
            help="run with the defaults (and --set) when no --config is given",
        )
        p.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help=f"override a setting, e.g. --set {SET_EXAMPLES[name]} (repeatable)",
        )
        if name == "reproduce":
            p.add_argument(
                "--verdict",
                action="store_true",
                help="the held-out block a verdict comes from (every split seed and the pretraining seed "
                "+ 100, the development block's learning rates frozen) into <output_dir>-verdict",
            )
            p.add_argument(
                "--estimate",
                action="store_true",
                help="print what is left and about how long it takes; run nothing",
            )
            p.add_argument(
                "--workers",
                type=int,
                default=1,
                metavar="N",
                help="N processes of one CPU thread share the folder (about N times sooner; logs beside it)",
            )
            p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one of --workers N
    p = sub.add_parser(
        "predict",
        help="apply a fine-tuned model to new scans or images",
        description="Apply a model written by pretext3d finetune (or data-efficiency with save_models) to "
        "new scans or images, prepared as its training cases were. Segmentation: a label map per scan "
        "(<name>.nii.gz) on the scan's own grid, with its affine; grading and classification: "
        "predictions.csv (the class and each class's probability per image).",
    )
    p.add_argument(
        "--model",
        required=True,
        type=Path,
        help="the model file (finetune's <output_dir>/model.pt, or a grid's models/<run>.pt)",
    )
    p.add_argument("--input", required=True, nargs="+", help="scans or images, or folders of them")
    p.add_argument("--output", required=True, type=Path, help="folder for the predictions")
    p.add_argument("--device", default="auto", help='"auto", "cpu" or "cuda[:i]"')
    p.add_argument(
        "--window", type=int, help="segmentation: sliding windows of this edge (default: see docs)"
    )
    p.add_argument("--plugin", action="append", default=[], help="a module to import first (repeatable)")
    p.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    args = parser.parse_args(argv)
    if args.command == "predict":
        return _predict(args)
    cls, run = COMMANDS[args.command]
    if args.config is None and not args.defaults:
        print(
            f"pretext3d {args.command}: no --config given. Pass --config FILE (--help lists every setting "
            "and its default), or --defaults to run the defaults (with any --set) on "
            "purpose: they use the built-in SYNTHETIC phantoms and write into the current folder.",
            file=sys.stderr,
        )
        return 2
    try:
        values = load_toml(args.config) if args.config is not None else {}
        for item in args.set:
            merge_override(values, *parse_override(item))
        _import_plugins(values.get("plugins", []), args.config.parent if args.config is not None else None)
        config = from_mapping(cls, values)
        if args.command == "reproduce":
            return _reproduce(config, args, sys.argv[1:] if argv is None else list(argv))
        run(config)
    except ConfigError as err:
        if args.debug:
            raise
        print(f"pretext3d {args.command}: configuration error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: the loops have said where they stopped
        if args.debug:
            raise
        print(f"pretext3d {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, FloatingPointError) as err:  # what a user's input can cause
        if args.debug:
            raise
        print(f"pretext3d {args.command}: error: {type(err).__name__}: {err} (--debug for the traceback)",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


def _predict(args: argparse.Namespace) -> int:
    """``pretext3d predict --model M --input ... --output DIR``."""
    try:
        _import_plugins(args.plugin)
        check_device_name("--device", args.device)
        written = predict(args.model, args.input, args.output, device=args.device, window=args.window)
    except (ConfigError, ValueError, TypeError, OSError) as err:
        if args.debug:
            raise
        print(f"pretext3d predict: error: {err} (--debug for the traceback)", file=sys.stderr)
        return 1
    print(f"wrote {len(written)} prediction file(s) into {args.output}")
    return 0


def _reproduce(config: Reproduction, args: argparse.Namespace, argv: list[str]) -> int:
    """``pretext3d reproduce`` with its own flags: ``--verdict``, ``--estimate``, ``--workers N``."""
    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    if args.verdict:
        config = held_out_block(config)
    if args.estimate:
        print(f"{config.name}: {estimate_cost(config, workers=args.workers, log=print)}")
        return 0
    if args.workers == 1:
        run_reproduction(config, estimate=not args.worker)
        return 0
    print(f"{config.name}: {estimate_cost(config, workers=args.workers, log=print)}")
    rest, skip = [], False
    for item in argv:  # every argument but --workers N
        if skip or item == "--workers":
            skip = not skip
            continue
        if not item.startswith("--workers="):
            rest.append(item)
    out = Path(config.output_dir)
    commands = [[sys.executable, "-m", "pretext3d.cli", *rest, "--worker"] for _ in range(args.workers)]
    logs = [None, *(out.with_name(f"{out.name}-worker{k}.log") for k in range(1, args.workers))]
    return run_workers(commands, logs, threads=config.threads or 1)


def console() -> None:
    """The ``pretext3d`` command: :func:`main`, then :func:`~pretext3d.engine.exit_process`."""
    engine.exit_process(main())


if __name__ == "__main__":  # pragma: no cover
    console()
