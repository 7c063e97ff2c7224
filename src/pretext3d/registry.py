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
import importlib
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Annotated, Any, Generic, TypeVar

from torch import nn

from pretext3d.config import Range, SpatialDims, check_keywords, checked

__all__ = [
    "DATA_KINDS",
    "ENCODERS",
    "RECIPES",
    "TASKS",
    "Registry",
    "create_encoder",
    "create_task",
    "register_data_kind",
    "register_encoder",
    "register_recipe",
    "register_task",
    "registered",
]

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


class _Encoders(Registry[Callable[..., Any]]):
    """The encoder registry, which also knows ``"timm/<model>"`` and ``"monai/<network>"``."""

    def get(self, name: str) -> Callable[..., Any]:
        library, _, model = str(name).partition("/")
        if library in FOREIGN and model and name not in self._entries:
            return _foreign_builder(library, model)
        return super().get(name)

    def __contains__(self, name: object) -> bool:
        library, _, model = str(name).partition("/")
        return (library in FOREIGN and bool(model)) or super().__contains__(name)


#: Pretext task classes by name (``"rotation"``, ``"jigsaw"``, ``"rpl"``, ``"exemplar"``, ``"cpc"``).
TASKS: Registry[Callable[..., Any]] = Registry("task")
#: Encoder builders by name (``"unet"``, ``"densenet"``, ``"conv"``), called as
#: ``builder(spatial_dims=..., in_channels=..., **options)``; ``"timm/<model>"`` and
#: ``"monai/<network>"`` build those libraries' networks (see :func:`create_encoder`).
ENCODERS: Registry[Callable[..., Any]] = _Encoders("encoder")
#: the libraries whose networks ``create_encoder("<library>/<name>")`` builds, and their pip names
FOREIGN = {"timm": "timm", "monai": "monai"}

#: Fine-tuning recipes by name (``"segmentation"``, ``"grading"``): classes of
#: :class:`~pretext3d.experiments.Recipe`, built from a config table of their fields.
RECIPES: Registry[Callable[..., Any]] = Registry("recipe")
#: Data kinds by name (``"ct-phantom"``, ``"task07"``, ``"volume-folder"``, ...):
#: :class:`~pretext3d.data.DataKind` objects saying how a :class:`~pretext3d.data.DataSpec` of
#: that kind reads its images and which recipe fine-tunes them.
DATA_KINDS: Registry[Any] = Registry("data kind")

F = TypeVar("F", bound=Callable[..., Any])


def _checked_if_ours(target: F) -> F:
    """The library's own tasks and encoders check their arguments against their annotations.

    A plugin's are left as they are (decorate them with :func:`pretext3d.config.checked` to
    have the same checks).
    """
    if getattr(target, "__module__", "").startswith("pretext3d."):
        return checked(target)
    return target


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
        cls = _checked_if_ours(cls)
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
        builder = _checked_if_ours(builder)
        ENCODERS.register(name, builder, overwrite=overwrite)
        return builder

    return add


def register_recipe(name: str, *, overwrite: bool = False) -> Callable[[F], F]:
    """Class decorator: register a recipe class (:class:`~pretext3d.experiments.Recipe`) as ``name``.

    A data kind names the recipe that fine-tunes it (:class:`~pretext3d.data.DataKind`).

    Examples:
        >>> RECIPES.get("grading").__name__
        'GradingRecipe'
    """

    def add(cls: F) -> F:
        if not isinstance(cls, type):
            raise TypeError(f"register_recipe({name!r}) takes a class, got {cls!r}")
        RECIPES.register(name, cls, overwrite=overwrite)
        return cls

    return add


def register_data_kind(name: str, kind: Any, *, overwrite: bool = False) -> Any:
    """Register a :class:`~pretext3d.data.DataKind` as ``name`` (``data.kind = name`` in a config).

    Examples:
        >>> DATA_KINDS.get("ct-phantom").spatial_dims
        3
    """
    return DATA_KINDS.register(name, kind, overwrite=overwrite)


def registered(name: str, registry: Registry[Any]) -> None:
    """Raise ``ValueError`` (with the nearest names) unless ``name`` is in ``registry``.

    Examples:
        >>> registered("jigsaw", TASKS)   # fine
        >>> registered("jigsa", TASKS)
        Traceback (most recent call last):
        ValueError: unknown task 'jigsa'; did you mean 'jigsaw'? ...
    """
    try:
        registry.get(name)
    except KeyError as err:
        raise ValueError(f'{err.args[0]} (add your own with plugins = ["your.module"])') from None


def create_task(name: str, *args: Any, **options: Any) -> Any:
    """The registered task ``name`` built with ``options`` (timm's ``create_model`` habit).

    Args:
        name: a registered task (``"rotation"``, ``"jigsaw"``, ``"rpl"``, ``"exemplar"``,
            ``"cpc"`` or one you registered).
        args: refused: the options go by keyword (``create_task("jigsaw", 3)`` says so).
        options: its keyword arguments, ``spatial_dims`` included.

    Raises:
        ValueError: an unknown name or option (with the nearest valid one).
        TypeError: a positional option.

    Examples:
        >>> task = p3.create_task("jigsaw", spatial_dims=3, grid=2, num_permutations=24)
        >>> type(task).__name__, task.num_classes
        ('Jigsaw', 24)
    """
    if args:
        raise TypeError(
            f"create_task({name!r}, ...) takes the task's options by keyword, got positional "
            f"argument(s) {args!r}: e.g. create_task({name!r}, spatial_dims=3)"
        )
    registered(name, TASKS)
    cls = TASKS.get(name)
    check_keywords(getattr(cls, "__name__", name), options, cls, f"create_task({name!r})")
    return cls(**options)


def create_encoder(name: str, **options: Any) -> nn.Module:
    """The registered encoder ``name`` built with ``options`` (``spatial_dims``, ``in_channels``, ...).

    The module records its name and every argument (defaults included), so that
    :func:`~pretext3d.models.save_encoder` writes them and
    :func:`~pretext3d.models.load_encoder` rebuilds it, for a plugin's encoder too.
    ``"timm/<model>"`` builds ``timm.create_model(model, num_classes=0, in_chans=in_channels,
    **options)`` (2D only; pooled features), ``"monai/<network>"`` builds
    ``monai.networks.nets.<network>`` with ``spatial_dims`` and the input channels (a MONAI
    ResNet with ``feed_forward=False``: pooled features; other networks as they come). Both
    are imported only then (an error says what to install) and built untrained; an encoder
    file written by :func:`~pretext3d.models.save_encoder` records the name and options, so
    :func:`~pretext3d.models.load_encoder` and a config's ``encoder = "timm/resnet18"`` rebuild
    it.

    Examples:
        >>> encoder = p3.create_encoder("unet", spatial_dims=2, in_channels=3, widths=(8, 16))
        >>> encoder.num_features
        16
        >>> resnet = p3.create_encoder("monai/resnet10", spatial_dims=3, in_channels=1, widen_factor=0.25)
        >>> resnet(torch.randn(2, 1, 16, 16, 16)).shape   # MONAI's ResNet-10, pooled features
        torch.Size([2, 128])
    """
    registered(name, ENCODERS)
    builder = ENCODERS.get(name)
    check_keywords(getattr(builder, "__name__", name), options, builder, f"create_encoder({name!r})")
    module = builder(**options)
    if not isinstance(module, nn.Module):
        raise TypeError(f"encoder {name!r} built a {type(module).__name__}, not an nn.Module")
    if not isinstance(getattr(module, "config", None), Mapping) and not hasattr(module, "_pretext3d_build"):
        # what save_encoder records, so that load_encoder and the recipes rebuild it: every argument
        # the builder took, its defaults included (a class that keeps a config dict records that)
        arguments = dict(options)
        try:
            signature = inspect.signature(builder)
        except (TypeError, ValueError):  # no signature to read: the options as given
            signature = None
        if signature is not None:
            bound = signature.bind(**options)
            bound.apply_defaults()
            arguments = {}
            for key, value in bound.arguments.items():
                kind = signature.parameters[key].kind
                if kind is inspect.Parameter.VAR_KEYWORD:
                    arguments.update(value)
                elif kind is not inspect.Parameter.VAR_POSITIONAL:
                    arguments[key] = value
        module._pretext3d_build = {"encoder": name, "config": arguments}  # type: ignore[assignment]
    return module


def _foreign_builder(library: str, model: str) -> Callable[..., nn.Module]:
    """A builder ``(spatial_dims, in_channels, **options) -> module`` of ``library``'s ``model``."""
    name = f"{library}/{model}"

    def build(
        spatial_dims: SpatialDims = 2,
        in_channels: Annotated[int, Range(1)] = 1,
        **options: Any,
    ) -> nn.Module:
        try:
            package = importlib.import_module(library)
        except ImportError as err:
            raise ValueError(
                f"encoder {name!r} needs {library}, which is not installed: pip install {FOREIGN[library]}"
            ) from err
        module = (_timm if library == "timm" else _monai)(package, model, spatial_dims, in_channels, options)
        # what save_encoder records, so that load_encoder and configs rebuild it
        module._pretext3d_build = {  # type: ignore[assignment]
            "encoder": name, "config": {"spatial_dims": spatial_dims, "in_channels": in_channels, **options},
        }  # fmt: skip
        return module

    build.__name__ = build.__qualname__ = name
    return checked(build)


def _unknown(what: str, model: str, names: list[str]) -> ValueError:
    """``<what> 'model'; did you mean ...?`` with up to three near names."""
    close = difflib.get_close_matches(model, names, n=3, cutoff=0.6)
    return ValueError(
        f"{what} {model!r}" + (f"; did you mean {', '.join(map(repr, close))}?" if close else "")
    )


def _timm(timm: Any, model: str, spatial_dims: int, in_channels: int, options: dict[str, Any]) -> nn.Module:
    if spatial_dims != 2:
        raise ValueError(
            f"timm's networks are 2D: encoder 'timm/{model}' needs 2D images, got spatial_dims={spatial_dims}"
        )
    models = timm.list_models()
    if model not in models:
        raise _unknown("timm has no model", model, models)
    module: nn.Module = timm.create_model(model, num_classes=0, in_chans=in_channels, **options)
    return module


def _monai(monai: Any, model: str, spatial_dims: int, in_channels: int, options: dict[str, Any]) -> nn.Module:
    nets = importlib.import_module("monai.networks.nets")
    builder = getattr(nets, model, None)
    if not callable(builder):
        names = [n for n in dir(nets) if not n.startswith("_") and callable(getattr(nets, n))]
        raise _unknown("MONAI has no network", model, names)
    params = inspect.signature(builder).parameters
    open_ended = any(p.kind == p.VAR_KEYWORD for p in params.values())
    if model.lower().startswith("resnet"):  # its feature extractor: pooled features, no classifier
        options = {"n_input_channels": in_channels, "feed_forward": False, **options}
    elif "in_channels" in params or open_ended:  # else a network's own name for them, in options
        options = {"in_channels": in_channels, **options}
    if "spatial_dims" in params or open_ended:
        options = {"spatial_dims": spatial_dims, **options}
    module: nn.Module = builder(**options)
    conv = next((m for m in module.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))), None)
    if conv is not None and conv.weight.dim() - 2 != spatial_dims:
        raise ValueError(
            f"MONAI's {model} is a {conv.weight.dim() - 2}D network here, but the data are {spatial_dims}D"
            + ("" if "spatial_dims" in params or open_ended else " (it takes no spatial_dims)")
        )
    if conv is not None and conv.in_channels != in_channels:
        named = [p for p in params if "chan" in p]
        raise ValueError(
            f"MONAI's {model} reads {conv.in_channels} channel(s), but the data have {in_channels}: set its "
            f"channel argument ({', '.join(named) or 'none found'}) in the encoder's options"
        )
    return module
