"""The pretext step: one encoder, weighted tasks and their draw streams -> loss, accuracy, state.

What the :class:`~pretext3d.pretrainer.Pretrainer` and
:class:`~pretext3d.lightning.PretextLightningModule` both run: a :class:`TaskSpec` names a
task (registered or an object) with its loss weight; a :class:`PretextStep` puts every
task's head on the shared encoder (:class:`~pretext3d.PretextModel`), keeps one random
generator per task (views and losses), and turns a batch into the weighted loss.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pretext3d._checks import check_int, check_positive
from pretext3d._random import Seeds
from pretext3d.config import check_keywords, checked
from pretext3d.pretext_model import PretextModel, infer_num_features
from pretext3d.registry import TASKS, registered
from pretext3d.tasks.base import PretextTask

__all__ = [
    "PretextStep",
    "StepResult",
    "TaskHeads",
    "TaskSpec",
    "image_of",
    "switch_checkpointing",
    "task_specs",
]


@checked
@dataclass
class TaskSpec:
    """A pretext task of a run: which task, its options, its loss weight, its name in the logs.

    One type for the Python API (``TaskSpec(p3.tasks.Jigsaw(3), weight=0.5)``) and the configs
    (``[[tasks]]`` tables of ``pretext3d pretrain``, ``[tasks.<name>]`` of a reproduction).

    Attributes:
        task: a registered task name (``"rotation"``, ``"jigsaw"``, ``"rpl"``, ``"exemplar"``,
            ``"cpc"`` or a plugin's) or a task object; ``""``: the task registered as ``name``.
        weight: its loss weight (``>= 0``).
        options: keyword arguments of a registered task (``spatial_dims`` follows the data).
        name: its name in logs, checkpoints and results; ``""``: the registered name (a task
            object: its class name in lower case).
        crop: reproductions only: the edge of the random crop each image gets before this
            task (``None``: the pretraining config's ``crop``).
        steps: reproductions only: the optimizer steps of this task's pretraining (``None``:
            the pretraining config's ``steps``), e.g. more for a cheap task still learning.

    Examples:
        >>> specs = [TaskSpec("rotation"), TaskSpec("jigsaw", 0.5, {"grid": 2, "num_permutations": 24}),
        ...          TaskSpec(p3.tasks.RelativePatchLocation(3), name="rpl-3d")]
        >>> [(s.label, s.weight) for s in specs]
        [('rotation', 1.0), ('jigsaw', 0.5), ('rpl-3d', 1.0)]
        >>> specs[1].build(spatial_dims=2).num_classes
        24
        >>> TaskSpec("jigsa")
        Traceback (most recent call last):
        ValueError: unknown task 'jigsa'; did you mean 'jigsaw'? ...
    """

    task: str | PretextTask[Any, Any] = ""
    weight: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    crop: int | None = None
    steps: int | None = None

    def __post_init__(self) -> None:
        """Check what is given (a reproduction's table gets its name from its key later)."""
        if not isinstance(self.task, (str, PretextTask)):
            raise TypeError(
                f"task must be a registered task name or a PretextTask, got {type(self.task).__name__}"
            )
        if isinstance(self.task, str) and (self.task or self.name):
            registered(self.task or self.name, TASKS)
        if isinstance(self.task, PretextTask) and self.options:
            raise ValueError(
                f"options apply to a task named by the registry; pass them to {type(self.task).__name__} "
                f"itself, got options={self.options}"
            )
        check_positive(f"weight of {self.label or 'a task'}", self.weight, allow_zero=True)
        if self.crop is not None:
            check_int("crop", self.crop, 0)
        if self.steps is not None:
            check_int("steps", self.steps, 1)

    @property
    def label(self) -> str:
        """The task's name in logs: ``name``, else its registered name, else its class name in lower case.

        A task object's registered name is its class's: ``RelativePatchLocation(3)`` is ``rpl``, as
        in a config.
        """
        if self.name:
            return self.name
        if isinstance(self.task, str):
            return self.task
        return TASKS.name_of(type(self.task)) or type(self.task).__name__.lower()

    @property
    def registered_name(self) -> str | None:
        """The registry name this spec builds from (``None`` for a task object)."""
        return None if isinstance(self.task, PretextTask) else (self.task or self.name or None)

    def check(self, where: str) -> None:
        """Raise ``ValueError`` unless the spec names a task that accepts its options (before any data).

        Args:
            where: the config table of the options, for messages (e.g. ``"tasks[0].options"``).
        """
        name = self.registered_name
        if isinstance(self.task, PretextTask):
            return
        if name is None:
            raise ValueError(f'{where}: the task spec names no task; give task = "rotation" (or another)')
        cls = TASKS.get(name)
        check_keywords(
            getattr(cls, "__name__", name), self.options, cls, where,
            {"spatial_dims": "pretext3d sets it from the data (data.kind)"},
        )  # fmt: skip

    def build(self, spatial_dims: int) -> PretextTask[Any, Any]:
        """The task object (a registered one built for ``spatial_dims`` with ``options``)."""
        if isinstance(self.task, PretextTask):
            return self.task
        name = self.registered_name
        if name is None:
            raise ValueError('a TaskSpec must name a task, e.g. TaskSpec("rotation")')
        task = TASKS.get(name)(spatial_dims, **self.options)
        if not isinstance(task, PretextTask):
            raise TypeError(f"task {name!r} built a {type(task).__name__}, not a PretextTask")
        return task


def task_specs(
    tasks: PretextTask[Any, Any] | TaskSpec | Sequence[PretextTask[Any, Any] | TaskSpec],
) -> list[TaskSpec]:
    """``tasks`` as a list of :class:`TaskSpec` with distinct names.

    Examples:
        >>> [s.label for s in task_specs([p3.tasks.Rotation(2), TaskSpec("jigsaw", 0.5)])]
        ['rotation', 'jigsaw']
    """
    items = [tasks] if isinstance(tasks, (PretextTask, TaskSpec)) else list(tasks)
    if not items:
        raise ValueError("tasks must hold at least one task")
    specs = []
    for item in items:
        if isinstance(item, PretextTask):
            item = TaskSpec(item)
        if not isinstance(item, TaskSpec):
            raise TypeError(f"tasks must be PretextTask or TaskSpec objects, got {type(item).__name__}")
        specs.append(item)
    names = [s.label for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"task names must differ, got {names}; give TaskSpec(name=...)")
    if all(float(s.weight) == 0 for s in specs):
        raise ValueError(f"task weights are all 0 ({names}): nothing would be trained; give one a weight > 0")
    return specs


def switch_checkpointing(encoder: nn.Module) -> None:
    """Switch on the encoder's activation checkpointing (its ``checkpointing`` attribute).

    Raises:
        ValueError: the encoder has no such switch.

    Examples:
        >>> encoder = p3.models.UNetEncoder(3, widths=(4, 8))
        >>> switch_checkpointing(encoder)
        >>> encoder.checkpointing
        True
    """
    if not hasattr(encoder, "checkpointing"):
        raise ValueError(
            "activation_checkpointing needs an encoder with a .checkpointing switch; "
            f"{type(encoder).__name__} has none"
        )
    encoder.checkpointing = True  # type: ignore[assignment]


def image_of(item: Any, image_key: str, where: str) -> Any:
    """The image of a data item or batch: a dict's ``image_key``, a tuple's first element, or itself.

    A tensor comes back as a plain ``Tensor`` (a MONAI ``MetaTensor`` loses its metadata).

    Examples:
        >>> image_of({"image": torch.zeros(1, 4, 4), "label": 1}, "image", "an item").shape
        torch.Size([1, 4, 4])
    """
    if isinstance(item, Mapping):  # a MONAI dataset's {"image": ..., ...}
        if image_key not in item:
            raise ValueError(
                f"{where} is a dict without image_key={image_key!r} (its keys: {sorted(item)}); "
                "pass image_key=..."
            )
        item = item[image_key]
    image = item[0] if isinstance(item, (tuple, list)) and item else item
    if isinstance(image, Tensor):
        return image.as_subclass(Tensor)
    if not isinstance(image, np.ndarray):
        raise TypeError(
            f"{where} is a {type(image).__name__}, not an image: items must be tensors or numpy arrays "
            f"(or tuples starting with one, or dicts with image_key={image_key!r}); for files, read them "
            "with a loader such as pretext3d.data.VolumeFolder"
        )
    return image


@dataclass
class StepResult:
    """What one pretext step gives.

    Examples:
        >>> step = PretextStep(p3.models.ConvEncoder(2, widths=(4, 8)), p3.tasks.Rotation(2))
        >>> result = step(torch.randn(2, 1, 16, 16))
        >>> list(result.losses), result.loss.shape
        (['rotation'], torch.Size([]))

    Attributes:
        loss: the weighted sum of the active tasks' losses (to backpropagate; scaled up by the
            world size for a task whose loss gathers across ranks).
        losses: each active task's own loss (detached floats).
        accuracies: each active task's accuracy on the step's views.
    """

    loss: Tensor
    losses: dict[str, float]
    accuracies: dict[str, float]


class TaskHeads(nn.Module):
    """The task models (each task's head on the shared encoder) as one module.

    One forward serves every task of a step, so that one ``DistributedDataParallel`` wraps them.

    Examples:
        >>> step = PretextStep(p3.models.ConvEncoder(2, widths=(4, 8)), p3.tasks.Rotation(2))
        >>> views, _ = step.tasks[0](torch.randn(2, 1, 16, 16), torch.Generator().manual_seed(0))
        >>> step.net({"rotation": views})["rotation"].shape   # one logit per rotation class
        torch.Size([2, 4])
    """

    def __init__(self, models: nn.ModuleDict) -> None:
        super().__init__()
        self.models = models

    def forward(self, views: Mapping[str, Any]) -> dict[str, Tensor]:
        """``{task name: its model's output on its views}``.

        Raises:
            ValueError: the encoder refuses a task's views (e.g. tiles smaller than its
                deepest stage allows); the message names the task, the views' shape and what to
                change.
        """
        out = {}
        for name, v in views.items():
            try:
                out[name] = self.models[name](v)
            except (ValueError, AssertionError) as err:  # timm's models assert their input size
                shape = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
                raise ValueError(
                    f"the encoder cannot take {name}'s views of shape {shape}: {err}. The views are cut "
                    "from the crop the run takes (pretrain.crop, or the task's crop in a reproduction): "
                    "use a larger crop, fewer tiles (grid) or less jitter, or an encoder with fewer stages"
                ) from err
        return out


class PretextStep:
    """One encoder, several pretext tasks with heads, one draw stream per task and rank.

    Args:
        encoder: any encoder (:class:`~pretext3d.PretextModel`'s rules); shared by the tasks.
        tasks: a task, or several (task objects or :class:`TaskSpec`).
        spatial_dims: the data's dimension (needed when every task is named by the registry).
        seed: seeds the heads' initialisation (the global generator, as a model's own
            initialisation does) and the tasks' draw streams.
        rank: this process's rank: ranks draw different views, reruns the same ones.

    Attributes:
        models: one :class:`~pretext3d.PretextModel` per task name (an ``nn.ModuleDict``).
        net: :class:`TaskHeads` over ``models`` (what a loop wraps in DDP or compiles).

    Examples:
        >>> tasks = [p3.tasks.Rotation(3), TaskSpec("jigsaw", 0.5, {"grid": 2, "num_permutations": 24})]
        >>> step = PretextStep(p3.models.UNetEncoder(3, widths=(8, 16)), tasks, spatial_dims=3)
        >>> result = step(torch.randn(2, 1, 16, 16, 16))
        >>> sorted(result.losses), result.loss.requires_grad
        (['jigsaw', 'rotation'], True)
    """

    def __init__(
        self,
        encoder: nn.Module,
        tasks: PretextTask[Any, Any] | TaskSpec | Sequence[PretextTask[Any, Any] | TaskSpec],
        *,
        spatial_dims: int | None = None,
        seed: int = 0,
        rank: int = 0,
    ) -> None:
        self.specs = task_specs(tasks)
        if spatial_dims is None:
            if not all(isinstance(s.task, PretextTask) for s in self.specs):
                raise ValueError("give spatial_dims when a task is named by the registry")
            spatial_dims = self.specs[0].task.spatial_dims  # type: ignore[union-attr]
        self.tasks = [s.build(spatial_dims) for s in self.specs]
        dims = {t.spatial_dims for t in self.tasks}
        if len(dims) != 1:
            raise ValueError(f"all tasks must work in one spatial dimension, got {sorted(dims)}")
        self.spatial_dims = dims.pop()
        self.names = [s.label for s in self.specs]
        self.weights = [float(s.weight) for s in self.specs]
        self.encoder = encoder
        torch.manual_seed(seed)  # the heads' initialisation
        width = infer_num_features(encoder, self.spatial_dims)
        self.models = nn.ModuleDict(
            {
                n: PretextModel(encoder, t, num_features=width)
                for n, t in zip(self.names, self.tasks, strict=True)
            }
        )
        self.net: nn.Module = TaskHeads(self.models)
        self.generators: list[torch.Generator] = []
        self.seed_streams(seed, rank)

    def seed_streams(self, seed: int, rank: int = 0) -> None:
        """One draw stream per task, of ``(seed, task index, rank)``."""
        self.generators = [
            torch.Generator().manual_seed(Seeds.task_views(seed, k, rank)) for k in range(len(self.tasks))
        ]

    def active(self, step: int, mode: str) -> list[int]:
        """The tasks of step ``step``: all (``"sum"``) or one in turn (``"alternate"``)."""
        return list(range(len(self.tasks))) if mode == "sum" else [step % len(self.tasks)]

    def draw(self, x: Tensor, active: Sequence[int]) -> dict[str, tuple[Any, Any]]:
        """Each active task's ``(views, targets)`` of ``x`` from its own stream."""
        return {self.names[k]: self.tasks[k](x, self.generators[k]) for k in active}

    def score(
        self,
        outputs: Mapping[str, Tensor],
        drawn: Mapping[str, tuple[Any, Any]],
        *,
        world: int = 1,
        check: Callable[[Tensor, str], None] | None = None,
    ) -> StepResult:
        """The weighted loss of ``outputs`` against the drawn targets, each task's loss and accuracy.

        Args:
            outputs: the task models' outputs (cast to fp32 here).
            drawn: :meth:`draw`'s views and targets.
            world: processes whose negatives a gathering loss saw (its loss is scaled up by it:
                DDP averages the gradients; see :mod:`pretext3d.objectives.gather`).
            check: ``check(loss, task name)``, called with each task's loss before it is used
                (e.g. the non-finite check of :class:`~pretext3d.training.Optimization`).
        """
        total = torch.zeros((), device=next(iter(outputs.values())).device)
        losses, accuracies = {}, {}
        for name in drawn:
            k = self.names.index(name)
            output, targets = outputs[name].float(), drawn[name][1]
            loss = self.tasks[k].loss(output, targets, generator=self.generators[k])
            if check is not None:
                check(loss, name)
            gathers = bool(getattr(self.tasks[k], "gather", False))
            total = total + self.weights[k] * loss * (world if gathers else 1)
            losses[name] = float(loss.detach())
            accuracies[name] = float(self.tasks[k].accuracy(output.detach(), targets))
        return StepResult(total, losses, accuracies)

    def measure(
        self,
        x: Tensor,
        generators: Sequence[torch.Generator],
        autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    ) -> dict[str, tuple[Tensor, Any]]:
        """Each task's loss and accuracy on ``x``, drawn from ``generators`` (not the training streams).

        What a held-out evaluation measures (call it without gradients, the models in eval mode).

        Args:
            x: a batch ``(B, C, *spatial)``.
            generators: one per task (seeded by the caller, so that an evaluation repeats).
            autocast: the context the views and the models run in (e.g.
                :meth:`Optimization.autocast`); losses are taken in fp32.

        Returns:
            ``{task name: (loss, accuracy)}``.

        Examples:
            >>> step = PretextStep(p3.models.ConvEncoder(2, widths=(4, 8)), p3.tasks.Rotation(2))
            >>> with torch.no_grad():
            ...     measured = step.measure(torch.randn(2, 1, 16, 16), [torch.Generator().manual_seed(0)])
            >>> list(measured), measured["rotation"][0].shape
            (['rotation'], torch.Size([]))
        """
        out = {}
        for k, (name, task) in enumerate(zip(self.names, self.tasks, strict=True)):
            with autocast():
                views, targets = task(x, generators[k])
                output = self.models[name](views).float()
            loss = task.loss(output, targets, generator=generators[k])
            out[name] = (loss, task.accuracy(output, targets))
        return out

    def __call__(self, x: Tensor, step: int = 0, mode: str = "sum") -> StepResult:
        """Draw, run the task models and score in one call (no autocast, no DDP)."""
        drawn = self.draw(x, self.active(step, mode))
        return self.score(self.net({n: v for n, (v, _) in drawn.items()}), drawn)

    def generator_states(self) -> list[Tensor]:
        """The draw streams' states (a checkpoint's)."""
        return [g.get_state() for g in self.generators]

    def set_generator_states(self, states: Sequence[Tensor]) -> None:
        """Restore :meth:`generator_states`."""
        for g, s in zip(self.generators, states, strict=True):
            g.set_state(s)
