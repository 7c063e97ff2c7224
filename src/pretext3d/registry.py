"""Named tasks and encoders: the one table the CLI, the configs and :func:`load_encoder` read.

Built-in tasks and encoders register themselves where they are defined; register your
own with :func:`register_task` / :func:`register_encoder` (as a decorator or a call) and
name it in a TOML config like a built-in one (the CLI imports the modules listed under
``plugins`` first, so that their registrations run)::

    @pretext3d.register_encoder("tiny")
    class TinyEncoder(nn.Module):
        def __init__(self, spatial_dims: int, in_channels: int = 1, width: int = 8): ...

An encoder is registered with the class (or factory) that builds it from
``spatial_dims``, ``in_channels`` and keyword options; one that also exposes a ``config``
dict of its constructor arguments can be rebuilt by :func:`~pretext3d.models.load_encoder`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from torch import nn

__all__ = ["ENCODERS", "TASKS", "Registry", "register_encoder", "register_task"]

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object table that refuses duplicates and suggests names on a miss.

    Args:
        kind: what it holds, for messages (``"task"``, ``"encoder"``).

    Examples:
        >>> colours = Registry("colour")
        >>> colours.register("red", 0xFF0000)
        16711680
        >>> colours.get("rd")
        Traceback (most recent call last):
        KeyError: "unknown colour 'rd'; did you mean 'red'? ..."
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, obj: T, *, overwrite: bool = False) -> T:
        """Add ``obj`` under ``name`` and return it.

        Raises:
            ValueError: ``name`` is empty, not a string, or taken (unless ``overwrite``).
        """
        if not isinstance(name, str) or not name.strip() or name != name.strip():
            raise ValueError(
                f"a {self.kind} name must be a non-empty string without spaces around it, got {name!r}"
            )
        if name in self._entries and not overwrite and self._entries[name] is not obj:
            raise ValueError(
                f"{self.kind} {name!r} is already registered (as {self._entries[name]!r}); "
                "pass overwrite=True to replace it"
            )
        self._entries[name] = obj
        return obj

    def get(self, name: str) -> T:
        """The object registered as ``name``; ``KeyError`` naming the nearest names otherwise."""
        if name not in self._entries:
            close = difflib.get_close_matches(str(name), list(self._entries), n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise KeyError(f"unknown {self.kind} {name!r}{hint} Registered: {', '.join(self.names())}")
        return self._entries[name]

    def name_of(self, obj: object) -> str | None:
        """The name ``obj`` is registered under, or ``None``."""
        return next((n for n, o in self._entries.items() if o is obj), None)

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


#: Pretext task classes by name (``"rotation"``, ``"jigsaw"``, ``"rpl"``, ``"exemplar"``, ``"cpc"``).
TASKS: Registry[Callable[..., Any]] = Registry("task")
#: Encoder builders by name (``"unet"``, ``"densenet"``, ``"conv"``), called as
#: ``builder(spatial_dims=..., in_channels=..., **options)``.
ENCODERS: Registry[Callable[..., Any]] = Registry("encoder")

F = TypeVar("F", bound=Callable[..., Any])


def register_task(name: str, *, overwrite: bool = False) -> Callable[[F], F]:
    """Class decorator: register a :class:`~pretext3d.tasks.PretextTask` subclass as ``name``.

    Examples:
        >>> @register_task("rotation-plane")
        ... class PlaneRotation(p3.tasks.Rotation):
        ...     def __init__(self, spatial_dims: int, **options):
        ...         super().__init__(spatial_dims, rotations="plane4", plane=(1, 2), **options)
        >>> TASKS.get("rotation-plane")(3).num_classes   # now a config can say task = "rotation-plane"
        4
    """

    def add(cls: F) -> F:
        # duck-typed: this module sits below the tasks package and never imports it
        if not (
            isinstance(cls, type) and issubclass(cls, nn.Module) and callable(getattr(cls, "loss", None))
        ):
            raise TypeError(f"register_task({name!r}) takes a PretextTask subclass, got {cls!r}")
        TASKS.register(name, cls, overwrite=overwrite)
        return cls

    return add


def register_encoder(name: str, *, overwrite: bool = False) -> Callable[[F], F]:
    """Decorator: register an encoder class or factory as ``name``.

    It is called as ``builder(spatial_dims=..., in_channels=..., **options)``.

    Examples:
        >>> @register_encoder("tiny")
        ... def tiny(spatial_dims: int, in_channels: int = 1, width: int = 8):
        ...     return p3.models.UNetEncoder(spatial_dims, in_channels, widths=(width, 2 * width))
        >>> ENCODERS.get("tiny")(spatial_dims=2, width=4).num_features   # encoder = "tiny" in a config
        8
    """

    def add(builder: F) -> F:
        if not callable(builder):
            raise TypeError(f"register_encoder({name!r}) takes a class or callable, got {builder!r}")
        ENCODERS.register(name, builder, overwrite=overwrite)
        return builder

    return add
