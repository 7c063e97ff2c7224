"""Typed configuration: dataclasses filled from TOML tables, strictly.

An unknown or misspelled key is an error that names it, where it is, and the nearest
valid key (the original silently ignored stale keys); a value of the wrong type names
the key and the type expected.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import sys
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

__all__ = ["ConfigError", "check_keywords", "from_mapping", "load_toml", "merge_override", "parse_override"]

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration that does not fit its schema.

    Examples:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class Train:
        ...     lr: float = 1e-3
        >>> from_mapping(Train, {"lrr": 0.1}, where="train")
        Traceback (most recent call last):
        pretext3d.config.ConfigError: unknown key 'lrr' in [train]; did you mean 'lr'? Valid keys: lr
    """


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{hint} Valid keys: {', '.join(sorted(valid))}"


def check_keywords(
    name: str,
    options: Mapping[str, Any],
    target: Callable[..., Any],
    where: str,
    reserved: Mapping[str, str] | None = None,
) -> None:
    """Check that ``options`` are keyword arguments ``target`` accepts.

    Args:
        name: what ``target`` is, for messages.
        options: the keyword arguments a config gives.
        target: the class or function they go to.
        where: the config table, for messages.
        reserved: arguments the caller sets itself, with why (e.g. ``{"spatial_dims":
            "it follows the data"}``): not offered as valid, refused with the reason.

    Examples:
        >>> check_keywords("rotation", {"rotations": "cube24"}, p3.tasks.Rotation, "task_options")   # fine
        >>> check_keywords("rotation", {"rotation": "cube24"}, p3.tasks.Rotation, "task_options")
        Traceback (most recent call last):
        pretext3d.config.ConfigError: ...'rotation'... did you mean 'rotations'?...
    """
    reserved = dict(reserved or {})
    params = inspect.signature(target).parameters
    valid = [
        p
        for p, v in params.items()
        if v.kind in (v.KEYWORD_ONLY, v.POSITIONAL_OR_KEYWORD) and p != "self" and p not in reserved
    ]
    open_ended = any(v.kind == v.VAR_KEYWORD for v in params.values())  # **options: it checks its own
    for key in options:
        if key in reserved:
            raise ConfigError(f"[{where}] must not set {key!r}: {reserved[key]}")
        if key not in valid and not open_ended:
            raise ConfigError(f"unknown key {key!r} in [{where}] for {name}{_suggest(key, valid)}")


def _convert(value: Any, kind: Any, where: str) -> Any:
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if kind is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(value, option, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {kind}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where} must be one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a table, got {value!r}")
        return from_mapping(typing.cast(type, kind), value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be an array, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where} must have {len(args)} entries, got {len(value)}")
        return tuple(
            _convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be an array, got {value!r}")
        return [_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a table, got {value!r}")
        return {str(k): _convert(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {kind}")


def from_mapping(cls: type[T], values: Mapping[str, Any], where: str = "") -> T:
    """Build the dataclass ``cls`` from a mapping, checking every key and type.

    Args:
        cls: a dataclass.
        values: e.g. a parsed TOML table.
        where: the table's dotted name, for messages.

    Raises:
        ConfigError: an unknown key (with the nearest valid one), a value of the wrong
            type, or a value the dataclass rejects.

    Examples:
        >>> from_mapping(p3.finetune.TrainConfig, {"epochs": 5, "lr": "3e-4"}, where="train")
        Traceback (most recent call last):
        pretext3d.config.ConfigError: train.lr must be a number, got '3e-4'
        >>> from_mapping(p3.finetune.TrainConfig, {"epochs": 5, "lr": 3e-4}, where="train").epochs
        5
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"unknown key {key!r} in [{where or 'top level'}]{_suggest(key, list(fields))}")
        kwargs[key] = _convert(value, hints[key], f"{where}.{key}" if where else key)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"[{where or 'top level'}]: {err}") from err


def _toml_loads(text: str) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ImportError as err:
            raise ImportError(
                "reading TOML on Python 3.10 needs tomli: pip install 'pretext3d[cli]'"
            ) from err
    parsed: dict[str, Any] = tomllib.loads(text)
    return parsed


def load_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file, naming it in the error if it is malformed.

    Examples:
        >>> from pathlib import Path
        >>> _ = Path("run.toml").write_text('''task = "jigsaw"
        ... [train]
        ... steps = 100''')
        >>> load_toml("run.toml")
        {'task': 'jigsaw', 'train': {'steps': 100}}
    """
    path = Path(path)
    try:
        return _toml_loads(path.read_text(encoding="utf-8-sig"))  # a BOM (Windows editors) is fine
    except OSError as err:
        raise ConfigError(f"cannot read config file {str(path)!r}: {err}") from err
    except ValueError as err:  # tomllib.TOMLDecodeError is a ValueError
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {err}") from err


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=1e-3"`` -> ``(["train", "lr"], 0.001)``.

    The value is read as TOML; a bare word that is not TOML is taken as a string.

    Examples:
        >>> parse_override("train.lr=1e-3"), parse_override("task=jigsaw")   # a bare word is a string
        ((['train', 'lr'], 0.001), (['task'], 'jigsaw'))
    """
    if "=" not in text:
        raise ConfigError(f"--set takes KEY=VALUE (e.g. train.lr=0.001), got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = _toml_loads(f"v = {raw}")["v"]
    except ValueError:
        value = raw
    return key.strip().split("."), value


def merge_override(config: dict[str, Any], path: list[str], value: Any) -> None:
    """Set ``config[path[0]][path[1]]... = value`` in place, creating tables as needed.

    Examples:
        >>> config = {"task": "rotation"}
        >>> merge_override(config, ["train", "lr"], 0.001)
        >>> config
        {'task': 'rotation', 'train': {'lr': 0.001}}
    """
    node = config
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {'.'.join(path)}: {part!r} is not a table")
    node[path[-1]] = value
