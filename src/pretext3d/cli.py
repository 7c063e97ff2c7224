"""The ``pretext3d`` command: ``pretrain``, ``finetune``, ``data-efficiency`` and ``reproduce``.

Each takes a TOML config (``--config``) and ``--set KEY=VALUE`` overrides (dotted keys,
TOML values). Configs are typed: an unknown or misspelled key is an error naming it and
the nearest valid key. ``pretext3d <command> --help`` lists the keys and defaults.

This module is only the command-line face: tasks and encoders are named through
:mod:`pretext3d.registry`, the images through :class:`~pretext3d.data.DataSpec`, and the
work is done by :mod:`pretext3d.experiments`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pretext3d._checks import check_device, check_int
from pretext3d.config import (
    ConfigError,
    from_mapping,
    load_toml,
    merge_override,
    parse_override,
)
from pretext3d.data.spec import DataSpec
from pretext3d.experiments.locks import RunLock
from pretext3d.experiments.pretraining import TaskEntry, pretrain_encoder, recipe_for, registered
from pretext3d.experiments.recipes import GradingRecipe, SegmentationRecipe
from pretext3d.experiments.report import write_report
from pretext3d.experiments.reproduce import Reproduction, run_reproduction
from pretext3d.experiments.runner import DataEfficiencyConfig, check_methods, run_data_efficiency
from pretext3d.finetune.trainer import TrainConfig
from pretext3d.pretrainer import PretrainConfig
from pretext3d.registry import ENCODERS, TASKS

__all__ = ["DataEfficiencyCommand", "FinetuneCommand", "PretrainCommand", "main"]


def _import_plugins(modules: object) -> None:
    """Import the modules named under ``plugins`` (so that their registrations run)."""
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        raise ConfigError(f"plugins must be a list of module names, got {modules!r}")
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise ConfigError(f"plugins: cannot import {name!r} ({err})") from err


@dataclass
class PretrainCommand:
    """``pretext3d pretrain``: pretrain an encoder on one or several pretext tasks.

    It streams the images (``data``) through the :class:`~pretext3d.pretrainer.Pretrainer`
    on ``train.device`` (``"auto"``: a GPU if there is one), and resumes after a crash when
    rerun with the same settings.

    Attributes:
        task: a registered task: ``rotation``, ``jigsaw``, ``rpl``, ``exemplar``, ``cpc``
            or one a plugin registered (ignored when ``tasks`` is given).
        task_options: keyword arguments of the task (e.g. ``grid``, ``jitter``).
        tasks: several tasks on one encoder: ``[[tasks]]`` tables with ``name``, ``weight``
            and ``options``.
        encoder: a registered encoder: ``unet``, ``densenet``, ``conv`` or a plugin's.
        encoder_options: keyword arguments of the encoder; empty means, for the encoder
            family the data's fine-tuning recipe loads (``unet`` for CT, ``densenet`` for
            fundus), the recipe's default architecture (U-Net widths 8/16/32; DenseNet
            growth 12, blocks 2/2/2, stem 16), so the weights fit it.
        data: the images (``volume-folder``, ``dicom-folder``, ``fundus-folder``,
            ``task07``, ``aptos`` or the phantoms).
        held_out: images of the pool kept aside to measure the pretext loss and accuracy.
        train: the loop's settings (:class:`~pretext3d.pretrainer.PretrainConfig`): steps,
            batch_size, crop, optimizer, lr, schedule, device, precision, num_workers, ...
        output: the encoder file (``save_encoder``); ``<output>.json`` records the run,
            ``<output>.run/`` holds the checkpoint and the metrics.
        plugins: modules to import first, e.g. ones that register your tasks or encoders.

    Examples:
        A config (TOML) is checked key by key against this class:

        >>> from pretext3d.config import from_mapping
        >>> command = from_mapping(PretrainCommand, {"task": "jigsaw", "task_options": {"grid": 3},
        ...                                          "train": {"steps": 5000, "batch_size": 4}})
        >>> command.task, command.train.steps, command.output
        ('jigsaw', 5000, 'encoder.pt')
    """

    task: str = "rotation"
    task_options: dict[str, Any] = field(default_factory=dict)
    tasks: list[TaskEntry] = field(default_factory=list)
    encoder: str = "unet"
    encoder_options: dict[str, Any] = field(default_factory=dict)
    data: DataSpec = field(default_factory=DataSpec)
    held_out: int = 16
    train: PretrainConfig = field(default_factory=PretrainConfig)
    output: str = "encoder.pt"
    plugins: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        """Check the names against the registries, and the numbers."""
        registered(self.task, TASKS)
        registered(self.encoder, ENCODERS)
        check_int("held_out", self.held_out, 0)
        if not self.output.strip():
            raise ValueError("output must name the encoder file to write, got ''")

    def entries(self) -> list[TaskEntry]:
        """The tasks to train: ``tasks``, or the one ``task``."""
        return self.tasks or [TaskEntry(self.task, 1.0, self.task_options)]


@dataclass
class DataEfficiencyCommand:
    """``pretext3d data-efficiency``: downstream quality against the fraction of labels.

    Several workers can share one grid: start it N times on one ``output_dir`` (or under
    ``torchrun --nproc-per-node N``, one GPU each with ``device = "cuda"``); each run is
    claimed by one worker, a killed worker's run is taken over, the report is written once.

    Attributes:
        data: the labelled images (CT: segmentation; fundus: grading).
        methods: name -> encoder file from ``pretext3d pretrain``, or a list of them (one
            per pretraining seed); ``""`` = from scratch.
        segmentation: the segmentation recipe (CT data).
        grading: the grading recipe (fundus data).
        experiment: fractions, repetitions, splits and the training settings.
        output_dir: where runs, results, summary and plot go.
        device: ``cpu`` or ``cuda``.
        plugins: modules to import first.

    Examples:
        >>> from pretext3d.config import from_mapping
        >>> command = from_mapping(DataEfficiencyCommand, {
        ...     "methods": {"scratch": "", "rotation": ["rotation-seed0.pt", "rotation-seed1.pt"]},
        ...     "experiment": {"fractions": [0.05, 0.5], "split_seeds": [0, 1, 2]}})
        >>> command.experiment.fractions, sorted(command.methods)
        ((0.05, 0.5), ['rotation', 'scratch'])
    """

    data: DataSpec = field(default_factory=DataSpec)
    methods: dict[str, str | list[str]] = field(default_factory=lambda: {"scratch": ""})
    segmentation: SegmentationRecipe = field(default_factory=SegmentationRecipe)
    grading: GradingRecipe = field(default_factory=GradingRecipe)
    experiment: DataEfficiencyConfig = field(default_factory=DataEfficiencyConfig)
    output_dir: str = "data-efficiency"
    device: str = "cpu"
    plugins: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        """Check what can be checked before any data are read."""
        if not self.methods:
            raise ValueError('methods must name at least one method, e.g. scratch = ""')
        if not self.output_dir.strip():
            raise ValueError("output_dir must name a folder, got ''")
        check_device(self.device)


@dataclass
class FinetuneCommand:
    """``pretext3d finetune``: one fine-tuning run (one method, one label fraction).

    Attributes:
        data: the labelled images.
        encoder: encoder file from ``pretext3d pretrain`` (``""``: from scratch).
        name: the method's name in the results.
        fraction: share of the training pool that is labelled.
        repetition: which seeded subset and training order (only that one runs).
        split_seed: seed of the fixed validation/test split.
        val_fraction: validation share.
        test_fraction: test share.
        train: the training settings (a from-scratch run never freezes the encoder).
        transductive: allow an encoder pretrained on validation or test images (recorded).
        segmentation: the segmentation recipe (CT data).
        grading: the grading recipe (fundus data).
        output_dir: where the run, its checkpoint and the results go.
        device: ``cpu`` or ``cuda``.
        plugins: modules to import first.

    Examples:
        >>> from pretext3d.config import from_mapping
        >>> command = from_mapping(FinetuneCommand, {"encoder": "encoder.pt", "fraction": 0.1,
        ...                                          "train": {"epochs": 30}})
        >>> command.fraction, command.train.epochs, command.data.kind
        (0.1, 30, 'ct-phantom')
    """

    data: DataSpec = field(default_factory=DataSpec)
    encoder: str = ""
    name: str = "run"
    fraction: float = 1.0
    repetition: int = 0
    split_seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.25
    train: TrainConfig = field(default_factory=TrainConfig)
    transductive: bool = False
    segmentation: SegmentationRecipe = field(default_factory=SegmentationRecipe)
    grading: GradingRecipe = field(default_factory=GradingRecipe)
    output_dir: str = "finetune"
    device: str = "cpu"
    plugins: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        """Check what can be checked before any data are read."""
        if not self.output_dir.strip():
            raise ValueError("output_dir must name a folder, got ''")
        check_device(self.device)
        self.experiment()

    def experiment(self) -> DataEfficiencyConfig:
        """The one-run grid this command runs (its checks name ``fraction``, ``repetition``, ...)."""
        check_int("repetition", self.repetition, 0)
        return DataEfficiencyConfig(
            fractions=(self.fraction,),
            repetitions=(self.repetition,),
            split_seeds=(self.split_seed,),
            val_fraction=self.val_fraction,
            test_fraction=self.test_fraction,
            train=self.train,
            transductive=self.transductive,
        )


def _pretrain(cfg: PretrainCommand) -> dict[str, Any]:
    record = pretrain_encoder(
        cfg.entries(), cfg.encoder, cfg.encoder_options, cfg.data, cfg.held_out, cfg.train, cfg.output,
        record={"command": dataclasses.asdict(cfg)},
    )  # fmt: skip
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks
        accuracy = record["pretext_accuracy"]
        print(
            f"held-out pretext accuracy {'n/a' if accuracy is None else f'{accuracy:.3f}'}; encoder written "
            f"to {cfg.output}" + ("  [SYNTHETIC phantom data]" if cfg.data.synthetic else "")
        )
    return record


def _data_efficiency(cfg: DataEfficiencyCommand) -> list[dict[str, Any]]:
    if cfg.data.include_labelled:
        raise ConfigError(
            "data.include_labelled applies to the pretraining pool (pretext3d pretrain) only; "
            "to allow encoders pretrained on validation/test cases set experiment.transductive = true"
        )
    recipe = recipe_for(cfg.data, cfg.segmentation, cfg.grading)
    methods: dict[str, str | list[str] | None] = {
        name: (path or None) if isinstance(path, str) else list(path) for name, path in cfg.methods.items()
    }
    try:  # refuse an encoder the recipe cannot load now, before reading the data or training
        check_methods(recipe, cfg.data.in_channels, methods)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    images, labels, case_ids = cfg.data.labelled()
    device = cfg.device
    if device == "cuda" and "LOCAL_RANK" in os.environ:  # under torchrun: one GPU per worker
        device = f"cuda:{os.environ['LOCAL_RANK']}"
    try:
        rows = run_data_efficiency(
            recipe,
            images,
            labels,
            methods,
            cfg.experiment,
            cfg.output_dir,
            case_ids=case_ids,
            data_info=dataclasses.asdict(cfg.data),
            device=device,
            synthetic=cfg.data.synthetic,
        )
    except ValueError as err:
        raise ConfigError(str(err)) from err
    # Several workers (torchrun ranks, or processes on one folder) finish together: the report is
    # written once, by the worker that finds it missing or older than the newest run.
    out = Path(cfg.output_dir)
    with RunLock(out / "report.lock") as claimed:
        summary = out / "summary.md"
        newest = max(p.stat().st_mtime for p in (out / "runs").glob("*.json"))
        if claimed and (not summary.exists() or summary.stat().st_mtime < newest):
            for path in write_report(rows, cfg.output_dir, recipe.metric, synthetic=cfg.data.synthetic):
                print(f"wrote {path}")
    return rows


def _finetune(cfg: FinetuneCommand) -> list[dict[str, Any]]:
    command = DataEfficiencyCommand(
        data=cfg.data,
        methods={cfg.name: cfg.encoder},
        segmentation=cfg.segmentation,
        grading=cfg.grading,
        experiment=cfg.experiment(),
        output_dir=cfg.output_dir,
        device=cfg.device,
        plugins=cfg.plugins,
    )
    return _data_efficiency(command)


COMMANDS: dict[str, tuple[type[Any], Any]] = {
    "pretrain": (PretrainCommand, _pretrain),
    "finetune": (FinetuneCommand, _finetune),
    "data-efficiency": (DataEfficiencyCommand, _data_efficiency),
    "reproduce": (Reproduction, run_reproduction),
}


#: a --set example that is valid for each command (tested)
SET_EXAMPLES = {
    "pretrain": "train.lr=0.001",
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
        ... train = { steps = 2, batch_size = 2, device = "cpu", progress = false }''')
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
    args = parser.parse_args(argv)
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
        _import_plugins(values.get("plugins", []))
        config = from_mapping(cls, values)
        run(config)
    except ConfigError as err:
        if args.debug:
            raise
        print(f"pretext3d {args.command}: configuration error: {err}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, OSError, FloatingPointError) as err:  # what a user's input can cause
        if args.debug:
            raise
        print(f"pretext3d {args.command}: error: {type(err).__name__}: {err} (--debug for the traceback)",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
