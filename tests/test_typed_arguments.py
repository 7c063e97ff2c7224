"""One argument check from the annotations (issue 39): walk the public API and feed it wrong types."""

from __future__ import annotations

import collections.abc as cabc
import dataclasses
import importlib
import inspect
import pkgutil
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, Literal

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from typing_extensions import get_type_hints

import pretext3d as p3
from pretext3d.config import ArgumentError, Range, check_value, checked

# Arguments a target needs before a wrong one can be tried (valid values, by name).
REQUIRED: dict[str, Any] = {
    "spatial_dims": 2,
    "in_channels": 1,
    "unlabelled": lambda spec: [],
    "num_classes": 2,
    "name": "x",
    "output_dir": "runs/x",
}
# Configs and entry points that must be checked (the walk below must find every one).
MUST_BE_CHECKED = {
    "PretrainConfig", "TrainConfig", "OptimSettings", "TaskSpec", "Pretraining", "DataEfficiency",
    "Finetuning", "DataEfficiencyConfig", "Reproduction", "SegmentationRecipe", "GradingRecipe",
    "ClassificationRecipe", "CTPreprocessing", "FundusPreprocessing", "DataSpec", "DataKind",
    "shortcut_score", "wilson_interval", "pretext_warning", "held_out_block",
}  # fmt: skip


def _public_checked() -> dict[str, Callable[..., Any]]:
    """Every public class or function of the package whose arguments are checked, by name."""
    found: dict[str, Callable[..., Any]] = {}
    modules = [p3] + [
        importlib.import_module(m.name)
        for m in pkgutil.walk_packages(p3.__path__, "pretext3d.")
        if m.name.split(".")[1] not in ("lightning", "cli")
    ]
    for module in modules:
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name, None)
            target = obj.__init__ if isinstance(obj, type) else obj
            if getattr(target, "__checked__", False):
                found[name] = obj
    for registry in (p3.registry.TASKS, p3.registry.ENCODERS):
        for name in registry.names():
            obj = registry.get(name)
            target = obj.__init__ if isinstance(obj, type) else obj
            if getattr(obj, "__module__", "").startswith("pretext3d.") and getattr(
                target, "__checked__", False
            ):
                found[f"{registry.kind}:{name}"] = obj
    return found


TARGETS = _public_checked()


def test_the_walk_finds_every_task_encoder_and_config() -> None:
    library = [
        f"{registry.kind}:{name}"
        for registry in (p3.registry.TASKS, p3.registry.ENCODERS)
        for name in registry.names()
        if getattr(registry.get(name), "__module__", "").startswith("pretext3d.")
    ]
    assert set(library) <= set(TARGETS), sorted(set(library) - set(TARGETS))
    assert set(TARGETS) >= MUST_BE_CHECKED, sorted(MUST_BE_CHECKED - set(TARGETS))


# The reference: which Python types each simple annotation takes (written by hand, not the checker's).
_TAKES: dict[Any, tuple[type, ...]] = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}
WRONG = ["false", "no", 1.5, True, 0, 7, None, (1, 2), object()]


def _takes(hint: Any, value: Any) -> bool | None:
    """Whether ``hint`` takes ``value`` by its type (``None``: not a simple annotation)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return value is None
    if origin is Annotated:
        return _takes(args[0], value)
    if origin in (typing.Union, types.UnionType):
        answers = [_takes(a, value) for a in args]
        return None if None in answers else any(answers)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin in (tuple, list, cabc.Sequence):
        return isinstance(
            value, (list, tuple)
        )  # entries and length: test_check_value_against_hand_written_cases
    if hint in _TAKES:
        if isinstance(value, bool) and hint is not bool:
            return False
        return isinstance(value, _TAKES[hint])
    return None


def _simple_parameters(target: Callable[..., Any]) -> list[tuple[str, Any]]:
    owner = target if isinstance(target, type) else None
    source = (
        owner
        if owner is not None and dataclasses.is_dataclass(owner)
        else (
            target.__init__ if owner is not None else target  # type: ignore[misc]
        )
    )
    try:
        hints = get_type_hints(source, include_extras=True)
    except Exception:
        return []
    signature = inspect.signature(target)
    return [
        (name, hints[name])
        for name, parameter in signature.parameters.items()
        if name in hints
        and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
        and _takes(hints[name], 0) is not None
    ]


CASES = [
    (label, name, hint) for label, target in TARGETS.items() for name, hint in _simple_parameters(target)
]


def test_the_walk_reaches_many_arguments() -> None:
    assert len(CASES) > 150 and {"Jigsaw", "task:jigsaw"} & {label for label, _, _ in CASES}


@pytest.mark.parametrize(("label", "argument", "hint"), CASES, ids=[f"{c[0]}.{c[1]}" for c in CASES])
@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(value=st.sampled_from(WRONG))
def test_a_wrong_type_is_refused_naming_the_argument(
    label: str, argument: str, hint: Any, value: Any
) -> None:
    assume(_takes(hint, value) is False)
    target = TARGETS[label]
    signature = inspect.signature(target)
    arguments = {
        name: REQUIRED[name]
        for name, parameter in signature.parameters.items()
        if parameter.default is parameter.empty
        and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
        and name in REQUIRED
    }
    arguments[argument] = value
    with pytest.raises(ArgumentError, match=rf"\b{argument}\b"):
        target(**arguments)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_bool_options_are_bools_not_strings(spatial_dims: int) -> None:
    with pytest.raises(
        ArgumentError, match=r"Jigsaw: tile_flip must be true or false \(a bool\), got 'false'"
    ):
        p3.tasks.Jigsaw(spatial_dims, tile_flip="false")  # type: ignore[arg-type]
    with pytest.raises(ArgumentError, match="normalize_tiles"):
        p3.tasks.RelativePatchLocation(spatial_dims, normalize_tiles="no")  # type: ignore[arg-type]
    with pytest.raises(ArgumentError, match="restart"):
        p3.PretrainConfig(restart="yes")  # type: ignore[arg-type]
    assert p3.tasks.Jigsaw(spatial_dims, tile_flip=False).tile_flip is False


def test_ranges_are_declared_in_the_annotation() -> None:
    from pretext3d.diagnostics import pretext_warning, wilson_interval

    for call, named in [
        (lambda: wilson_interval(0.5, 0), "count must be an integer >= 1, got 0"),
        (lambda: wilson_interval(0.5, -3), "count"),
        (lambda: wilson_interval(1.5, 8), r"proportion must be a number in \[0, 1\], got 1.5"),
        (lambda: pretext_warning(p3.tasks.Rotation(2), 1.7, 100), "accuracy"),
        (
            lambda: p3.diagnostics.shortcut_score(
                p3.tasks.Rotation(2), torch.rand(4, 1, 8, 8), task_accuracy=2.0
            ),
            "task_accuracy",
        ),
        (
            lambda: p3.data.DataKind(4, 1, unlabelled=lambda spec: []),
            "spatial_dims must be an integer in \\[2, 3\\]",
        ),
        (lambda: p3.create_encoder("monai/resnet10", spatial_dims=3, in_channels=0), "in_channels"),
        (lambda: p3.create_encoder("monai/resnet10", spatial_dims=4), "spatial_dims"),
        (lambda: p3.experiments.held_out_block("a/path.toml"), "config must be a Reproduction"),  # type: ignore[arg-type]
    ]:
        with pytest.raises(ArgumentError, match=named):
            call()
    with pytest.raises(TypeError, match="by keyword"):
        p3.create_task("jigsaw", 3)
    assert wilson_interval(1.0, 8)[0] == pytest.approx(0.676, abs=1e-3)  # unchanged where valid


def test_check_value_against_hand_written_cases() -> None:
    assert check_value([1, 2], tuple[int, int], "size") == (1, 2)
    assert check_value(3, float, "lr") == 3.0 and isinstance(check_value(3, float, "lr"), float)
    assert check_value(None, int | None, "n") is None
    assert check_value(0.5, Annotated[float, Range(0, 1, high_open=True)], "p") == 0.5
    for value, hint, message in [
        (1.0, Annotated[float, Range(0, 1, high_open=True)], r"in \[0, 1\)"),
        (float("nan"), Annotated[float, Range(0, 1)], "nan"),
        ([1, 2, 3], tuple[int, int], "2 entries"),
        ([1, "a"], tuple[int, ...], r"size\[1\]"),
        ("abc", list[str], "an array"),
        ("up", Literal["down"], "must be 'down'"),
        ("up", Literal["down", "left"], r"one of \['down', 'left'\]"),
    ]:
        with pytest.raises(ArgumentError, match=message):
            check_value(value, hint, "size")


def test_checked_functions_and_plugin_classes() -> None:
    @checked
    class Plugin:
        def __init__(self, width: int, mode: Literal["a", "b"] = "a") -> None:
            self.width = width

    assert Plugin(3).width == 3
    with pytest.raises(ArgumentError, match="Plugin: mode"):
        Plugin(3, mode="c")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="width"):  # Python's own message for a missing argument
        Plugin()  # type: ignore[call-arg]


def test_renamed_names_point_to_their_new_ones() -> None:
    import pretext3d.engine
    import pretext3d.pretrainer

    for get, new in [
        (lambda: pretext3d.pretrainer.WeightedTask, "TaskSpec"),
        (lambda: p3.experiments.TaskEntry, "TaskSpec"),
        (lambda: pretext3d.engine.evaluating, "pretext3d.models.evaluating"),
    ]:
        with pytest.raises(AttributeError, match=rf"renamed in 0\.2: use .*{new}"):
            get()
    with pytest.raises(TypeError, match=r"TrainConfig\(autocast=...\) was renamed in 0\.2: use precision"):
        p3.finetune.TrainConfig(autocast="bf16")  # type: ignore[call-arg]
    with pytest.raises(
        AttributeError, match=r"Pretrainer\.optimizer was renamed in 0\.2: use Pretrainer\.optim"
    ):
        p3.Pretrainer.optimizer.fget(object())  # type: ignore[attr-defined]
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        pretext3d.engine.nothing  # noqa: B018
