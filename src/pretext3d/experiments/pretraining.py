"""Pretrain an encoder named in the registry on a :class:`~pretext3d.data.DataSpec`'s unlabelled pool.

What ``pretext3d pretrain`` (:func:`pretrain`) and the reproductions
(:mod:`pretext3d.experiments.reproduce`) run: tasks and encoder by registered name, the
pool's first ``held_out`` images kept aside for the held-out pretext accuracy, the
encoder's initialisation seeded by ``pretrain.seed``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from pretext3d import engine
from pretext3d._checks import check_int
from pretext3d.config import ConfigError, check_keywords, checked
from pretext3d.data.spec import DataSpec
from pretext3d.diagnostics import FeatureProbe
from pretext3d.experiments.recipes import recipe_for
from pretext3d.experiments.report import colour
from pretext3d.pretrainer import PretrainConfig, Pretrainer
from pretext3d.registry import ENCODERS, RECIPES, TASKS, create_encoder, registered
from pretext3d.training import TaskSpec

__all__ = ["Pretraining", "accuracy_summary", "pretrain", "pretrain_encoder"]


@checked
@dataclass
class Pretraining:
    """``pretext3d pretrain``: pretrain an encoder on one or several pretext tasks.

    It streams the images (``data``) through the :class:`~pretext3d.pretrainer.Pretrainer`
    on ``pretrain.device`` (``"auto"``: a GPU if there is one), and resumes after a crash when
    rerun with the same settings.

    Attributes:
        task: a registered task: ``rotation``, ``jigsaw``, ``rpl``, ``exemplar``, ``cpc``
            or one a plugin registered (ignored when ``tasks`` is given).
        task_options: keyword arguments of the task (e.g. ``grid``, ``jitter``).
        tasks: several tasks on one encoder: ``[[tasks]]`` tables with ``task`` (or ``name``),
            ``weight`` and ``options`` (:class:`~pretext3d.training.TaskSpec`).
        encoder: a registered encoder: ``unet``, ``densenet``, ``conv``, ``timm/<model>``,
            ``monai/<network>`` or a plugin's. ``""`` (the default): the family the data's
            fine-tuning recipe loads (:meth:`encoder_name`): ``unet`` for scans (segmentation),
            ``densenet`` for images (grading and classification).
        encoder_options: keyword arguments of the encoder; empty means, for the encoder
            family the data's fine-tuning recipe loads, the recipe's default architecture
            (U-Net widths 8/16/32; DenseNet growth 12, blocks 2/2/2, stem 16), so the weights
            fit it.
        data: the images (``volume-folder``, ``dicom-folder``, ``fundus-folder``,
            ``task07``, ``aptos``, the phantoms, or a registered data kind).
        held_out: images of the pool kept aside to measure the pretext loss and accuracy.
        pretrain: the loop's settings (:class:`~pretext3d.pretrainer.PretrainConfig`): steps,
            batch_size, crop, optimizer, lr, schedule, device, precision, num_workers, ... (the
            ``[pretrain]`` table, as in a reproduction; ``[train]`` is always fine-tuning's).
        output: the encoder file (``save_encoder``); ``<output>.json`` records the run,
            ``<output>.run/`` holds the checkpoint and the metrics.
        plugins: modules to import first, e.g. ones that register your tasks or encoders.

    Examples:
        A config (TOML) is checked key by key against this class:

        >>> from pretext3d.config import from_mapping
        >>> config = from_mapping(Pretraining, {"task": "jigsaw", "task_options": {"grid": 3},
        ...                                     "pretrain": {"steps": 5000, "batch_size": 4}})
        >>> config.task, config.pretrain.steps, config.output
        ('jigsaw', 5000, 'encoder.pt')
    """

    task: str = "rotation"
    task_options: dict[str, Any] = field(default_factory=dict)
    tasks: list[TaskSpec] = field(default_factory=list)
    encoder: str = ""
    encoder_options: dict[str, Any] = field(default_factory=dict)
    data: DataSpec = field(default_factory=DataSpec)
    held_out: int = 16
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    output: str = "encoder.pt"
    plugins: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        """Check the names against the registries, and the numbers."""
        registered(self.task, TASKS)
        if self.encoder:
            registered(self.encoder, ENCODERS)
        check_int("held_out", self.held_out, 0)
        if not self.output.strip():
            raise ValueError("output must name the encoder file to write, got ''")
        for i, spec in enumerate(self.specs()):
            spec.check(f"tasks[{i}].options" if self.tasks else "task_options")
            for key in ("crop", "steps"):
                if getattr(spec, key) is not None:
                    raise ValueError(
                        f"tasks[{i}].{key} applies to a reproduction's tasks; every task of one pretraining "
                        f"run shares its {key}: set pretrain.{key}"
                    )

    def encoder_name(self) -> str:
        """The encoder to pretrain: :attr:`encoder`, else the one the data's recipe fine-tunes.

        Examples:
            >>> Pretraining(data=p3.data.DataSpec(kind="fundus-phantom")).encoder_name()   # grading
            'densenet'
            >>> Pretraining(encoder="conv").encoder_name()
            'conv'
        """
        if self.encoder:
            return self.encoder
        recipe = RECIPES.get(self.data.recipe) if self.data.recipe else None
        return str(getattr(recipe, "encoder", "") or "unet")

    def specs(self) -> list[TaskSpec]:
        """The tasks to train: ``tasks``, or the one ``task``."""
        return self.tasks or [TaskSpec(self.task, 1.0, self.task_options)]


def pretrain_encoder(
    config: Pretraining,
    *,
    record: dict[str, Any] | None = None,
    pool: Dataset[Any] | None = None,
    log: Callable[[str], None] = print,
    probe: FeatureProbe | None = None,
    recipe_note: bool = True,
) -> dict[str, Any]:
    """Pretrain (or resume, or keep a finished) encoder and write it with its record.

    Args:
        config: the tasks, encoder, data, held-out count, loop settings and output file.
        record: more fields for the record.
        pool: ``config.data.unlabelled()`` made earlier, to reuse what it has read (phantoms
            are drawn once per data set object); default: made here.
        log: where progress lines go.
        probe: a frozen-feature probe for the :class:`~pretext3d.pretrainer.Pretrainer`.
        recipe_note: say when the data's fine-tuning recipe loads another encoder family by
            default (a reproduction, whose recipe names the encoder, does not).

    Returns:
        The pretraining record.

    Raises:
        ConfigError: an unknown option of a task or the encoder, a held-out count that leaves
            no training image, or settings the Pretrainer refuses.

    Examples:
        >>> record = pretrain_encoder(Pretraining(
        ...     task="rotation", encoder="densenet",
        ...     encoder_options={"growth_rate": 4, "block_config": [1, 1], "init_features": 8},
        ...     data=p3.data.DataSpec(kind="fundus-phantom", count=8, size=32), held_out=4,
        ...     pretrain=PretrainConfig(steps=2, batch_size=2, device="cpu", progress=False),
        ...     output="encoder.pt"), log=lambda line: None)   # rerun: kept (finished) or resumed
        >>> record["tasks"], record["steps"], p3.models.encoder_name("encoder.pt")
        (['rotation'], 2, 'densenet')
    """
    data, d = config.data, config.data.spatial_dims
    from_data = "pretext3d sets it from the data (data.kind)"
    name = config.encoder_name()
    encoder_cls = ENCODERS.get(name)
    specs = config.specs()
    check_keywords(
        getattr(encoder_cls, "__name__", name), config.encoder_options, encoder_cls,
        "encoder_options", {"spatial_dims": from_data, "in_channels": from_data},
    )  # fmt: skip
    options = config.encoder_options
    recipe_cls = RECIPES.get(data.recipe) if data.recipe else None
    family = getattr(recipe_cls, "encoder", None)
    if recipe_note and family is not None and name != family and engine.is_main_process():
        log(
            f"note: {recipe_cls.__name__}, which pretext3d data-efficiency uses for these data, "  # type: ignore[union-attr]
            f"fine-tunes {family!r} encoders by default; to fine-tune this {name!r} encoder, set "
            f"its backbone = {name!r} and backbone_options = the encoder_options"
        )
    if not options and family == name:
        options = recipe_for(data).encoder_options()
    pool = data.unlabelled() if pool is None else pool
    size = len(pool)  # type: ignore[arg-type]
    if config.held_out >= size:
        raise ConfigError(f"held_out={config.held_out} leaves no training images out of {size}")
    try:
        # the tasks are built before the encoder is seeded, as a user's script would
        tasks = [TaskSpec(s.build(d), s.weight, name=s.label) for s in specs]
        torch.manual_seed(config.pretrain.seed)  # the encoder's initialisation follows the run's seed
        model = create_encoder(name, spatial_dims=d, in_channels=data.in_channels, **options)
        held = config.held_out
        trainer = Pretrainer(
            model,
            tasks,
            Subset(pool, range(held, size)),
            config.pretrain,
            config.output,
            held_out=Subset(pool, range(held)) if held else None,
            record={
                "task": "+".join(s.label for s in specs),
                "synthetic": data.synthetic,
                "transductive": data.include_labelled,
                **(record or {}),
            },
            log=log,
            probe=probe,
        )
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err)) from err
    return trainer.fit()


def pretrain(config: Pretraining) -> dict[str, Any]:
    """``pretext3d pretrain``: :func:`pretrain_encoder` with the config in the record, and a summary line.

    The pretext curves (held-out accuracy, loss, the probe where one ran) are drawn into
    ``<output>.run/pretraining.png`` (with matplotlib).

    Examples:
        >>> record = pretrain(Pretraining(
        ...     task="rotation", encoder="conv", encoder_options={"widths": [4, 8]},
        ...     data=p3.data.DataSpec(kind="ct-phantom", count=6, size=16), held_out=2,
        ...     pretrain=PretrainConfig(steps=1, batch_size=2, device="cpu", progress=False),
        ...     output="enc.pt"))
        note: ...
        held-out pretext accuracy ...; encoder written to enc.pt, its curves to ...  [SYNTHETIC phantom data]
    """
    record = pretrain_encoder(config, record={"command": asdict(config)})
    if engine.is_main_process():  # under torchrun, rank 0 speaks
        figure = plot_pretraining(
            {name: [pretraining_curves(config.output)] for name in record.get("tasks", [])},
            Path(f"{config.output}.run") / "pretraining.png", Path(config.output).name,
            synthetic=config.data.synthetic, chance=record.get("chance"),
        )  # fmt: skip
        print(
            f"held-out pretext accuracy {accuracy_summary(record)}; encoder written to {config.output}"
            + (f", its curves to {figure}" if figure is not None else "")
            + ("  [SYNTHETIC phantom data]" if config.data.synthetic else "")
        )
    return record


def accuracy_summary(record: Mapping[str, Any]) -> str:
    """Each task's held-out pretext accuracy beside its chance level, from a pretraining record.

    Examples:
        >>> accuracy_summary({"pretext_accuracies": {"rotation": 0.625, "jigsaw": 0.125},
        ...                   "chance": {"rotation": 0.1, "jigsaw": 0.01}})
        'rotation 0.625 (chance 0.100), jigsaw 0.125 (chance 0.010)'
        >>> accuracy_summary({"pretext_accuracies": {}})
        'n/a (no held-out images)'
    """
    accuracies = record.get("pretext_accuracies")
    if accuracies is None and record.get("pretext_accuracy") is not None:  # a record of 0.1
        return f"{record['pretext_accuracy']:.3f}"
    if not accuracies:
        return "n/a (no held-out images)"
    chance = record.get("chance") or {}
    return ", ".join(
        f"{name} {value:.3f}" + (f" (chance {chance[name]:.3f})" if chance.get(name) is not None else "")
        for name, value in accuracies.items()
    )


def pretraining_curves(encoder_file: str | os.PathLike[str]) -> dict[str, list[tuple[int, float]]]:
    """An encoder's pretext curves from its run's metrics log.

    Returns:
        ``{"held_out_accuracy/<task>": [(step, value), ...], "loss/<task>": [...], ...}``;
        empty when there is no log.

    Examples:
        >>> _ = pretrain_encoder(p3.experiments.Pretraining(
        ...     task="rotation", encoder="densenet",
        ...     encoder_options={"growth_rate": 4, "block_config": [1, 1], "init_features": 8},
        ...     data=p3.data.DataSpec(kind="fundus-phantom", count=8, size=32), held_out=4,
        ...     pretrain=p3.pretrainer.PretrainConfig(steps=2, batch_size=2, device="cpu", progress=False,
        ...                                           eval_every=1),
        ...     output="curves.pt"), log=lambda line: None)
        >>> curves = pretraining_curves("curves.pt")
        >>> sorted(curves), [step for step, _ in curves["held_out_accuracy/rotation"]]
        (['accuracy/rotation', 'held_out_accuracy/rotation', 'held_out_loss/rotation', 'loss/rotation'],
         [1, 2])
    """
    curves: dict[str, list[tuple[int, float]]] = {}
    for row in engine.read_metrics(Path(f"{encoder_file}.run") / "metrics.jsonl"):
        for key, value in row.items():
            if "/" in key and isinstance(value, (int, float)):
                curves.setdefault(key, []).append((int(row["step"]), float(value)))
    return curves


def plot_pretraining(
    curves: Mapping[str, Sequence[Mapping[str, list[tuple[int, float]]]]],
    path: Path,
    title: str,
    *,
    synthetic: bool,
    chance: Mapping[str, float | None] | None = None,
) -> Path | None:
    """Held-out pretext accuracy (with its chance level) and training loss per step, one colour per task.

    When the runs logged a frozen-feature probe (``probe/<metric>``, see
    :class:`~pretext3d.diagnostics.FeatureProbe`), a third panel draws it, from the randomly
    initialised encoder at step 0 on.

    Args:
        curves: task -> one :func:`pretraining_curves` per pretraining seed.
        path: the PNG to write.
        title: the figure's title.
        synthetic: say on the figure that the data are the built-in phantoms.
        chance: task -> the pretext accuracy of guessing (dashed), where the kind of task fixes it.

    Returns:
        ``path``, or ``None`` without matplotlib.
    """
    try:
        from matplotlib.figure import Figure  # no pyplot: the caller's backend and figures stay untouched
    except ImportError:
        return None
    probes = sorted(
        {key for seeds in curves.values() for c in seeds for key in c if key.startswith("probe/")}
    )
    fig = Figure(figsize=(15 if probes else 10, 3.8))
    axes = fig.subplots(1, 3 if probes else 2)
    for task, seeds in curves.items():
        for k, seed_curves in enumerate(seeds):
            keys = [f"held_out_accuracy/{task}", f"loss/{task}", *probes[:1]]
            for ax, key in zip(axes, keys, strict=False):
                points = seed_curves.get(key, [])
                if points:
                    steps, values = zip(*points, strict=True)
                    marker = "." if not key.startswith("loss") else None
                    ax.plot(steps, values, color=colour(task), alpha=0.9 if k == 0 else 0.4, marker=marker,
                            label=task if k == 0 else None)  # fmt: skip
        level = (chance or {}).get(task)
        if level is not None:
            axes[0].axhline(level, color=colour(task), linestyle="--", linewidth=0.8, alpha=0.7)
    axes[0].set_ylabel("held-out pretext accuracy (dashed: chance)")
    axes[1].set_ylabel("training loss")
    axes[1].set_yscale("log")
    if probes:
        axes[2].set_ylabel(f"frozen-feature probe: {probes[0].split('/', 1)[1]}")
        axes[2].set_title("step 0: the randomly initialised encoder", fontsize=8)
    for ax in axes:
        ax.set_xlabel("pretraining step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    note = "SYNTHETIC phantom data" if synthetic else "real data"
    fig.suptitle(
        f"{title}: pretext tasks while pretraining ({note})\n"
        "held-out accuracy of rotation, jigsaw and RPL: of the class; of exemplar and CPC: top-1 among a "
        "batch's candidates",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
