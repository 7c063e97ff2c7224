"""Pretrain an encoder named in the registry on a :class:`~pretext3d.data.DataSpec`'s unlabelled pool.

What ``pretext3d pretrain`` and the reproductions (:mod:`pretext3d.experiments.reproduce`)
run: tasks and encoder by registered name, the pool's first ``held_out`` images kept aside
for the held-out pretext accuracy, the encoder's initialisation seeded by ``train.seed``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from pretext3d._checks import check_positive
from pretext3d.config import ConfigError, check_keywords
from pretext3d.data.spec import DataSpec
from pretext3d.diagnostics import FeatureProbe
from pretext3d.experiments.recipes import GradingRecipe, SegmentationRecipe
from pretext3d.pretrainer import PretrainConfig, Pretrainer, WeightedTask
from pretext3d.registry import ENCODERS, TASKS

__all__ = ["TaskEntry", "pretrain_encoder", "recipe_for"]


def registered(name: str, registry: Any) -> None:
    """Raise ``ValueError`` (with suggestions) unless ``name`` is in ``registry``."""
    try:
        registry.get(name)
    except KeyError as err:
        raise ValueError(f'{err.args[0]} (add your own with plugins = ["your.module"])') from None


@dataclass
class TaskEntry:
    """One task of a ``[[tasks]]`` list.

    Attributes:
        name: a registered task.
        weight: its loss weight.
        options: its keyword arguments.

    Examples:
        >>> tasks = [TaskEntry("rotation"),
        ...          TaskEntry("jigsaw", weight=0.5, options={"grid": 2, "num_permutations": 24})]
        >>> [(t.name, t.weight) for t in tasks]   # a [[tasks]] list of a pretrain config
        [('rotation', 1.0), ('jigsaw', 0.5)]
    """

    name: str = "rotation"
    weight: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Check the name against the registry."""
        registered(self.name, TASKS)
        check_positive("weight", self.weight, allow_zero=True)


def recipe_for(
    data: DataSpec, segmentation: SegmentationRecipe | None = None, grading: GradingRecipe | None = None
) -> SegmentationRecipe | GradingRecipe:
    """The recipe that fine-tunes ``data`` (CT: segmentation, fundus: grading); defaults if not given.

    Examples:
        >>> type(recipe_for(p3.data.DataSpec(kind="ct-phantom"))).__name__
        'SegmentationRecipe'
        >>> type(recipe_for(p3.data.DataSpec(kind="aptos", path="aptos"))).__name__
        'GradingRecipe'
    """
    if data.spatial_dims == 3:
        return segmentation if segmentation is not None else SegmentationRecipe()
    return grading if grading is not None else GradingRecipe()


def pretrain_encoder(
    tasks: Sequence[TaskEntry],
    encoder: str,
    encoder_options: dict[str, Any],
    data: DataSpec,
    held_out: int,
    train: PretrainConfig,
    output: str | os.PathLike[str],
    *,
    record: dict[str, Any] | None = None,
    pool: Dataset[Any] | None = None,
    log: Callable[[str], None] = print,
    probe: FeatureProbe | None = None,
) -> dict[str, Any]:
    """Pretrain (or resume, or keep a finished) encoder and write it with its record.

    Args:
        tasks: the tasks, their weights and options (``spatial_dims`` comes from ``data``).
        encoder: a registered encoder name.
        encoder_options: its keyword arguments; empty: the default architecture of the
            recipe that fine-tunes ``data``, when ``encoder`` is that recipe's family.
        data: the images; its unlabelled pool is used.
        held_out: pool images kept aside for the held-out pretext loss and accuracy.
        train: the loop's settings.
        output: the encoder file (``<output>.json``: its record; ``<output>.run/``: checkpoint
            and metrics).
        record: more fields for the record.
        pool: ``data.unlabelled()`` made earlier, to reuse what it has read (phantoms are drawn
            once per data set object); default: made here.
        log: where progress lines go.
        probe: a frozen-feature probe for the :class:`~pretext3d.pretrainer.Pretrainer`.

    Returns:
        The pretraining record.

    Raises:
        ConfigError: an unknown option of a task or the encoder, a held-out count that leaves
            no training image, or settings the Pretrainer refuses.

    Examples:
        >>> record = pretrain_encoder(
        ...     [TaskEntry("rotation")], "densenet",
        ...     {"growth_rate": 4, "block_config": [1, 1], "init_features": 8},
        ...     p3.data.DataSpec(kind="fundus-phantom", count=8, size=32), held_out=4,
        ...     train=p3.pretrainer.PretrainConfig(steps=2, batch_size=2, device="cpu", progress=False),
        ...     output="encoder.pt", log=lambda line: None)   # rerun: kept (finished) or resumed
        >>> record["tasks"], record["steps"], p3.models.encoder_name("encoder.pt")
        (['rotation'], 2, 'densenet')
    """
    d = data.spatial_dims
    from_data = "pretext3d sets it from the data (data.kind)"
    encoder_cls = ENCODERS.get(encoder)
    for entry in tasks:
        task_cls = TASKS.get(entry.name)
        check_keywords(
            getattr(task_cls, "__name__", entry.name), entry.options, task_cls, "task_options",
            {"spatial_dims": from_data},
        )  # fmt: skip
    check_keywords(
        getattr(encoder_cls, "__name__", encoder), encoder_options, encoder_cls, "encoder_options",
        {"spatial_dims": from_data, "in_channels": from_data},
    )  # fmt: skip
    recipe = recipe_for(data)
    if encoder != recipe.encoder and os.environ.get("RANK", "0") == "0":
        log(
            f"note: {type(recipe).__name__}, which pretext3d data-efficiency uses for these data, "
            f"fine-tunes {recipe.encoder!r} encoders; a {encoder!r} encoder will not load into it"
        )
    options = encoder_options or (recipe.encoder_options() if encoder == recipe.encoder else {})
    pool = data.unlabelled() if pool is None else pool
    size = len(pool)  # type: ignore[arg-type]
    if held_out >= size:
        raise ConfigError(f"held_out={held_out} leaves no training images out of {size}")
    try:
        weighted = [WeightedTask(TASKS.get(e.name)(d, **e.options), e.weight, e.name) for e in tasks]
        torch.manual_seed(train.seed)  # the encoder's initialisation follows the run's seed
        model = encoder_cls(spatial_dims=d, in_channels=data.in_channels, **options)
        trainer = Pretrainer(
            model,
            weighted,
            Subset(pool, range(held_out, size)),
            train,
            output,
            held_out=Subset(pool, range(held_out)) if held_out else None,
            record={
                "task": "+".join(e.name for e in tasks),
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
