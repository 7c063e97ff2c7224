"""Typed configuration and typed arguments: one check, driven by the annotations.

An unknown or misspelled key is an error that names it, where it is, and the nearest
valid key (the original silently ignored stale keys); a value of the wrong type names
the key and the type expected.

The same check guards the Python API: :func:`checked` wraps a constructor, a function or a
config dataclass so that every argument is checked against its annotation before the body
runs: ``bool`` is a bool (the string ``"false"`` is refused, never taken as true), ``int`` an
integer, ``float`` a number, ``str`` a string, ``Literal`` one of its values, tuples and
sequences element by element (and their length), unions any of their members, a class an
instance of it. Ranges are declared once, in the annotation: ``Annotated[float, Range(0, 1)]``.
Every error names the argument, the value and what is accepted.
"""

from __future__ import annotations

import collections.abc as cabc
import dataclasses
import difflib
import functools
import inspect
import numbers
import os
import sys
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

from typing_extensions import get_type_hints

__all__ = [
    "ArgumentError",
    "ConfigError",
    "Range",
    "SpatialDims",
    "check_keywords",
    "check_value",
    "checked",
    "from_mapping",
    "load_toml",
    "merge_override",
    "parse_override",
]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


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


class ArgumentError(TypeError, ValueError):
    """An argument that does not fit its annotation (a ``TypeError`` and a ``ValueError``).

    Examples:
        >>> issubclass(ArgumentError, TypeError) and issubclass(ArgumentError, ValueError)
        True
    """


@dataclasses.dataclass(frozen=True)
class Range:
    """Bounds of a number, declared in its annotation: ``Annotated[float, Range(0, 1)]``.

    Attributes:
        low: the smallest value (``None``: no bound).
        high: the largest value (``None``: no bound).
        low_open: ``low`` itself excluded.
        high_open: ``high`` itself excluded.

    Examples:
        >>> Range(0, 1).describe(), Range(0, low_open=True).describe(), Range(1).describe()
        ('in [0, 1]', '> 0', '>= 1')
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies within the bounds (NaN never does)."""
        if value != value:  # NaN
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def describe(self) -> str:
        """The bounds in words, e.g. ``"in [0, 1)"`` or ``">= 1"``."""
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"in {left}{self.low:g}, {self.high:g}{right}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return "any number"


#: ``Annotated[T, UNCHECKED]``: an argument :func:`checked` leaves to the body, which says more
#: than "must be a T" (e.g. the exemplar's miner: how to wrap another library's).
UNCHECKED = object()

#: ``spatial_dims`` of the public API: 2 or 3.
SpatialDims = Annotated[int, Range(2, 3)]

_SEQUENCES = (list, cabc.Sequence, cabc.Iterable, cabc.Collection)


def describe(hint: Any) -> str:
    """What a value of the annotation ``hint`` is, in words.

    Examples:
        >>> describe(bool), describe(tuple[int, int]), describe(Literal["a", "b"] | None)
        ('true or false (a bool)', 'an array of 2 entries (an integer each)', "one of ['a', 'b'] or None")
    """
    origin, args = get_origin(hint), get_args(hint)
    if hint is type(None) or hint is None:
        return "None"
    if origin is Annotated:
        ranges = " ".join(m.describe() for m in args[1:] if isinstance(m, Range))
        return f"{describe(args[0])} {ranges}".strip()
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(describe(a) for a in args))
    if origin is Literal:
        return repr(args[0]) if len(args) == 1 else f"one of {list(args)}"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"an array ({describe(args[0])} each)"
        if len(set(args)) == 1:
            return f"an array of {len(args)} entries ({describe(args[0])} each)"
        return f"an array of {len(args)} entries ({', '.join(describe(a) for a in args)})"
    if origin in _SEQUENCES:
        return f"an array ({describe(args[0])} each)" if args else "an array"
    if origin in (dict, cabc.Mapping):
        return "a table"
    simple = {bool: "true or false (a bool)", int: "an integer", float: "a number", str: "a string"}
    if hint in simple:
        return simple[hint]
    if origin is cabc.Callable or hint is cabc.Callable:
        return "a callable"
    cls = origin if isinstance(origin, type) else hint
    return f"a {getattr(cls, '__name__', str(cls))}"


def _fail(error: type[Exception], where: str, hint: Any, value: Any) -> Exception:
    shown = f"{value!r}"
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return error(f"{where} must be {describe(hint)}, got {shown} ({type(value).__name__})")


def check_value(
    value: Any,
    hint: Any,
    where: str,
    *,
    error: type[Exception] = ArgumentError,
    table: Callable[[Any, Mapping[str, Any], str], Any] | None = None,
) -> Any:
    """``value`` checked against the annotation ``hint`` (arrays as tuples, ints as floats for floats).

    Args:
        value: what was given.
        hint: its annotation (resolved; ``Annotated`` ranges kept).
        where: the argument's or key's name, for the message.
        error: the exception raised (:class:`ArgumentError`; the configs raise their ``ConfigError``).
        table: how to build a dataclass from a mapping (the configs' ``from_mapping``); without
            it a dataclass annotation takes only its instances.

    Raises:
        ArgumentError: (or ``error``) naming ``where``, the value and what ``hint`` accepts.

    Examples:
        >>> check_value([1, 2], tuple[int, int], "size")
        (1, 2)
        >>> check_value("false", bool, "tile_flip")
        Traceback (most recent call last):
        pretext3d.config.ArgumentError: tile_flip must be true or false (a bool), got 'false' (str)
    """
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any or hint is object or isinstance(hint, TypeVar):
        return value
    if hint is type(None) or hint is None:
        if value is not None:
            raise _fail(error, where, hint, value)
        return None
    if origin is Annotated:
        if any(meta is UNCHECKED for meta in args[1:]):
            return value
        kinds = {int: numbers.Integral, float: numbers.Real}
        if args[0] in kinds and (isinstance(value, bool) or not isinstance(value, kinds[args[0]])):
            raise _fail(error, where, hint, value)  # say the range too
        value = check_value(value, args[0], where, error=error, table=table)
        for meta in args[1:]:
            if isinstance(meta, Range) and not meta.contains(value):
                raise error(f"{where} must be {describe(hint)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        candidates = [a for a in args if a is not type(None)]
        for option in candidates:
            try:
                return check_value(value, option, where, error=error, table=table)
            except error as err:
                failed = err
        if len(candidates) == 1 and get_origin(candidates[0]) is Annotated:  # a range, not a type, failed
            raise failed
        raise _fail(error, where, hint, value)
    if origin is Literal:
        if not any(value == a and type(value) is type(a) for a in args):
            raise _fail(error, where, hint, value)
        return value
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if isinstance(value, hint):
            return value
        if table is not None and isinstance(value, Mapping):
            return table(hint, value, where)
        raise error(f"{where} must be a {hint.__name__} (in a config file: a table), got {value!r}")
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise _fail(error, where, hint, value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(
                check_value(v, args[0], f"{where}[{i}]", error=error, table=table)
                for i, v in enumerate(value)
            )
        if args and len(value) != len(args):
            raise error(f"{where} must have {len(args)} entries, got {len(value)}: {value!r}")
        return tuple(
            check_value(v, a, f"{where}[{i}]", error=error, table=table)
            for i, (v, a) in enumerate(zip(value, args, strict=False))
        )
    if origin in _SEQUENCES:
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, cabc.Iterable):
            raise _fail(error, where, hint, value)
        if not args or not isinstance(value, (list, tuple)):
            return value  # an iterator or tensor: read once by its user
        return type(value)(
            check_value(v, args[0], f"{where}[{i}]", error=error, table=table) for i, v in enumerate(value)
        )
    if origin in (dict, cabc.Mapping):
        if not isinstance(value, Mapping):
            raise _fail(error, where, hint, value)
        if len(args) == 2:
            return {
                k: check_value(v, args[1], f"{where}.{k}", error=error, table=table) for k, v in value.items()
            }
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise _fail(error, where, hint, value)
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise _fail(error, where, hint, value)
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise _fail(error, where, hint, value)
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise _fail(error, where, hint, value)
        return value
    if origin is cabc.Callable or hint is cabc.Callable:
        if not callable(value):
            raise _fail(error, where, hint, value)
        return value
    if hint is os.PathLike or origin is os.PathLike:
        if not isinstance(value, os.PathLike):
            raise _fail(error, where, hint, value)
        return value
    cls = origin if isinstance(origin, type) else hint
    if isinstance(cls, type) and not getattr(cls, "_is_protocol", False) and not isinstance(value, cls):
        raise _fail(error, where, hint, value)
    return value  # a protocol or a form this check does not know: the body checks it


def _hints(target: Callable[..., Any], owner: type | None = None) -> dict[str, Any]:
    """The resolved annotations of ``target``'s parameters (those that resolve; the rest unchecked)."""
    source: Any = owner if owner is not None and dataclasses.is_dataclass(owner) else target
    try:
        return dict(get_type_hints(source, include_extras=True))
    except Exception:  # an annotation imported only for the type checker: resolve one by one
        module = inspect.getmodule(source)
        namespace = dict(vars(module)) if module is not None else {}
        raw = dict(getattr(source, "__annotations__", {}))
        hints = {}
        for name, annotation in raw.items():
            try:
                hints[name] = eval(annotation, namespace) if isinstance(annotation, str) else annotation
            except Exception:  # left to the body's own checks
                continue
        return hints


def renamed(names: Mapping[str, str], owner: str) -> Callable[[str], Any]:
    """A module's or class's ``__getattr__`` that points a name renamed in 0.2 to its new one.

    Args:
        names: old name -> what replaces it (as the CHANGELOG's migration table says).
        owner: the module or class, for the message.

    Examples:
        >>> lookup = renamed({"Old": "pretext3d.New"}, "pretext3d.mod")
        >>> lookup("Old")
        Traceback (most recent call last):
        AttributeError: pretext3d.mod.Old was renamed in 0.2: use pretext3d.New (CHANGELOG.md, Migration)
    """

    def lookup(name: str) -> Any:
        if name in names:
            raise AttributeError(_renamed_text(f"{owner}.{name}", names[name]))
        raise AttributeError(f"{owner!r} has no attribute {name!r}")

    return lookup


def _renamed_text(old: str, new: str) -> str:
    return f"{old} was renamed in 0.2: use {new} (CHANGELOG.md, Migration)"


def checked(target: F) -> F:
    """Check every argument of a function, a class's ``__init__`` or a dataclass against its annotations.

    Decorate a function, a class (its ``__init__`` is wrapped) or a dataclass (after
    ``@dataclass``: the fields' annotations). The checks run before the body; defaults are not
    checked. Plugin authors can use it on their own encoders and tasks.

    Raises:
        ArgumentError: at call time, naming the argument, the value and what is accepted.

    Examples:
        >>> @checked
        ... def scale(x: float, mode: Literal["up", "down"] = "up") -> float:
        ...     return x
        >>> scale(2, mode="sideways")
        Traceback (most recent call last):
        pretext3d.config.ArgumentError: scale: mode must be one of ['up', 'down'], got 'sideways' (str)
    """
    if isinstance(target, type):
        init = target.__init__  # type: ignore[misc]
        if getattr(init, "__checked__", False) and "__init__" not in vars(target):
            return target  # checked in a base class that does not change the signature
        target.__init__ = _wrap(init, target.__name__, target)  # type: ignore[misc]
        return target
    return typing.cast(F, _wrap(target, getattr(target, "__qualname__", "call"), None))


def _wrap(function: Callable[..., Any], name: str, owner: type | None) -> Callable[..., Any]:
    signature = inspect.signature(function)
    renamed_arguments: Mapping[str, str] = getattr(owner, "_renamed_arguments", {})
    checks: dict[str, Any] | None = None  # the annotated parameters, resolved at the first call

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        nonlocal checks
        if checks is None:
            hints = _hints(function, owner)
            plain = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
            checks = {
                k: hints[k] for k, p in signature.parameters.items() if k in hints and p.kind not in plain
            }
        try:
            bound = signature.bind_partial(*args, **kwargs)
        except TypeError:
            moved = next((key for key in kwargs if key in renamed_arguments), None)
            if moved is not None:
                raise TypeError(_renamed_text(f"{name}({moved}=...)", renamed_arguments[moved])) from None
            return function(*args, **kwargs)  # Python's own message: an unknown argument
        for key, value in bound.arguments.items():
            if key in checks:
                check_value(value, checks[key], f"{name}: {key}")
        return function(*args, **kwargs)

    call.__checked__ = True  # type: ignore[attr-defined]
    return call


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
        pretext3d.config.ConfigError: train.lr must be a number, got '3e-4' (str)
        >>> from_mapping(p3.finetune.TrainConfig, {"epochs": 5, "lr": 3e-4}, where="train").epochs
        5
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    hints = get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"unknown key {key!r} in [{where or 'top level'}]{_suggest(key, list(fields))}")
        kwargs[key] = check_value(
            value, hints[key], f"{where}.{key}" if where else key, error=ConfigError, table=from_mapping
        )
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
