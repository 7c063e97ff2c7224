"""The ``pretext3d`` command: ``pretrain``, ``finetune`` and ``data-efficiency``.

Each takes a TOML config (``--config``) and ``--set KEY=VALUE`` overrides (dotted keys,
TOML values). Configs are typed: an unknown or misspelled key is an error naming it and
the nearest valid key. ``pretext3d <command> --help`` lists the keys and defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from pretext3d import data as p3data
from pretext3d import tasks as p3tasks
from pretext3d.config import (
    ConfigError,
    check_keywords,
    from_mapping,
    load_toml,
    merge_override,
    parse_override,
)
from pretext3d.finetune.provenance import environment, write_pretraining_record
from pretext3d.finetune.recipes import GradingRecipe, SegmentationRecipe
from pretext3d.finetune.report import write_report
from pretext3d.finetune.runner import DataEfficiencyConfig, run_data_efficiency
from pretext3d.finetune.trainer import TrainConfig
from pretext3d.functional import random_crops
from pretext3d.models import ConvEncoder, DenseNetEncoder, UNetEncoder, save_encoder
from pretext3d.pretext_model import PretextModel

__all__ = ["DataEfficiencyCommand", "DataSpec", "FinetuneCommand", "PretrainCommand", "main"]

TASKS: dict[str, type[p3tasks.PretextTask]] = {
    "rotation": p3tasks.Rotation,
    "jigsaw": p3tasks.Jigsaw,
    "rpl": p3tasks.RelativePatchLocation,
    "exemplar": p3tasks.Exemplar,
    "cpc": p3tasks.CPC,
}
ENCODERS: dict[str, type[nn.Module]] = {"unet": UNetEncoder, "densenet": DenseNetEncoder, "conv": ConvEncoder}
# The recipes' default architectures, so that pretrained weights load into them.
SMALL_ENCODERS: dict[str, dict[str, Any]] = {
    "unet": {"widths": SegmentationRecipe().widths},
    "densenet": {
        "growth_rate": GradingRecipe().growth_rate,
        "block_config": GradingRecipe().block_config,
        "init_features": GradingRecipe().init_features,
    },
}


# Pretraining phantoms are drawn from their own range of case seeds, never the labelled ones.
UNLABELLED_PHANTOMS = 50_000


@dataclass
class DataSpec:
    """Where the images come from.

    Labelled cases (``pretext3d data-efficiency`` / ``finetune``) and the pretraining pool
    (``pretext3d pretrain``) are disjoint by default, so that no validation or test image
    reaches pretraining: phantoms are drawn from another range of case seeds, Task07
    pretrains on ``imagesTs`` (unlabelled) and APTOS on ``test_images`` (unlabelled).

    Attributes:
        kind: ``"ct-phantom"`` / ``"fundus-phantom"`` (built-in, SYNTHETIC), ``"task07"``
            (an MSD Task07 folder) or ``"aptos"`` (an APTOS 2019 folder).
        path: the folder, for ``task07`` and ``aptos``.
        count: number of phantoms to draw (labelled cases, or pretraining images).
        size: edge of the images (phantoms are drawn at it; real data are resized to it).
        seed: phantom seed: case ``i`` is phantom ``seed * 100003 + i`` (labelled) or
            ``seed * 100003 + 50000 + i`` (pretraining pool).
        include_labelled: pretraining only: pretrain on the labelled cases too (phantoms:
            exactly the labelled cases; Task07: ``imagesTr`` as well; APTOS: ``train_images``
            as well). The paper's transductive setting; recorded, and the data-efficiency
            runner refuses such an encoder unless ``experiment.transductive = true``.
    """

    kind: Literal["ct-phantom", "fundus-phantom", "task07", "aptos"] = "ct-phantom"
    path: str = ""
    count: int = 64
    size: int = 32
    seed: int = 0
    include_labelled: bool = False

    def __post_init__(self) -> None:
        """Check the values."""
        for name in ("count", "size"):
            if getattr(self, name) < 1:
                raise ValueError(f"data.{name} must be >= 1, got {getattr(self, name)}")
        if self.seed < 0:
            raise ValueError(f"data.seed must be >= 0, got {self.seed}")

    @property
    def spatial_dims(self) -> int:
        """3 for CT, 2 for fundus images."""
        return 3 if self.kind in ("ct-phantom", "task07") else 2

    @property
    def synthetic(self) -> bool:
        """Whether these are the built-in phantoms."""
        return self.kind.endswith("phantom")

    def _phantoms(self, first: int) -> tuple[Tensor, Tensor, list[str]]:
        start = self.seed * 100_003 + first
        ids = [f"{self.kind}-{start + i}" for i in range(self.count)]
        if self.kind == "ct-phantom":
            return (*p3data.ct_phantom_batch(self.count, self.size, seed=self.seed, first=first), ids)
        return (*p3data.fundus_phantom_batch(self.count, self.size, seed=self.seed, first=first), ids)

    def _folder(self) -> str:
        if not self.path:
            raise ConfigError(f"data.path must name the {self.kind} folder")
        return self.path

    def _ct_preprocessing(self) -> p3data.CTPreprocessing:
        return p3data.CTPreprocessing(resize=(self.size,) * 3, dtype="float32")

    def labelled(self) -> tuple[Tensor, Tensor, list[str]]:
        """All labelled cases in memory: ``(images, labels, case ids)``."""
        if self.synthetic:
            return self._phantoms(0)
        if self.kind == "task07":
            task07 = p3data.Task07Pancreas(self._folder(), preprocessing=self._ct_preprocessing())
            cases = [task07[i] for i in range(len(task07))]
            return torch.stack([c[0] for c in cases]), torch.stack([c[1] for c in cases]), task07.case_ids
        aptos = p3data.APTOS(self._folder(), preprocessing=p3data.FundusPreprocessing("resize", self.size))
        items = [aptos[i] for i in range(len(aptos))]
        return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items]), aptos.case_ids

    def unlabelled(self) -> tuple[Tensor, list[str]]:
        """The pretraining pool in memory: ``(images, case ids)``; see :attr:`include_labelled`."""
        if self.synthetic:
            images, _, ids = self._phantoms(0 if self.include_labelled else UNLABELLED_PHANTOMS)
            return images, ids
        if self.kind == "task07":
            pool = p3data.Task07Pancreas.unlabelled(
                self._folder(), include_training=self.include_labelled, preprocessing=self._ct_preprocessing()
            )
            return torch.stack([pool[i] for i in range(len(pool))]), pool.case_ids
        prep = p3data.FundusPreprocessing("resize", self.size)
        splits = ("test", "train") if self.include_labelled else ("test",)
        photos: list[Tensor] = []
        names: list[str] = []
        for split in splits:
            aptos = p3data.APTOS(self._folder(), split, preprocessing=prep)
            photos += [aptos[i][0] for i in range(len(aptos))]
            names += aptos.case_ids
        if not photos:
            raise ConfigError(f"no unlabelled images in {self.path!r} (test.csv lists none)")
        return torch.stack(photos), names


@dataclass
class PretrainCommand:
    """``pretext3d pretrain``: pretrain an encoder on a pretext task.

    Attributes:
        task: ``rotation``, ``jigsaw``, ``rpl``, ``exemplar`` or ``cpc``.
        task_options: keyword arguments of the task (e.g. ``grid``, ``jitter``).
        encoder: ``unet``, ``densenet`` or ``conv``.
        encoder_options: keyword arguments of the encoder; empty means the small
            configuration the fine-tuning recipes use by default (U-Net widths 8/16/32;
            DenseNet growth 12, blocks 2/2/2, stem 16), so the weights fit them.
        data: the images.
        crop: random crop edge taken from every image before the task (``0``: none).
        steps: optimizer steps.
        batch_size: images per step.
        lr: Adam learning rate.
        seed: randomness of initialisation, crops and tasks.
        held_out: images kept aside to measure the pretext accuracy.
        output: the encoder file (``save_encoder``); ``<output>.json`` records the run.
    """

    task: Literal["rotation", "jigsaw", "rpl", "exemplar", "cpc"] = "rotation"
    task_options: dict[str, Any] = field(default_factory=dict)
    encoder: Literal["unet", "densenet", "conv"] = "unet"
    encoder_options: dict[str, Any] = field(default_factory=dict)
    data: DataSpec = field(default_factory=DataSpec)
    crop: int = 16
    steps: int = 200
    batch_size: int = 8
    lr: float = 1e-3
    seed: int = 0
    held_out: int = 16
    output: str = "encoder.pt"


@dataclass
class DataEfficiencyCommand:
    """``pretext3d data-efficiency``: downstream quality against the fraction of labels.

    Attributes:
        data: the labelled images (CT: segmentation; fundus: grading).
        methods: name -> encoder file from ``pretext3d pretrain``, or a list of them (one
            per pretraining seed); ``""`` = from scratch.
        segmentation: the segmentation recipe (CT data).
        grading: the grading recipe (fundus data).
        experiment: fractions, repetitions, splits and the training settings.
        output_dir: where runs, results, summary and plot go.
        device: ``cpu`` or ``cuda``.
    """

    data: DataSpec = field(default_factory=DataSpec)
    methods: dict[str, str | list[str]] = field(default_factory=lambda: {"scratch": ""})
    segmentation: SegmentationRecipe = field(default_factory=SegmentationRecipe)
    grading: GradingRecipe = field(default_factory=GradingRecipe)
    experiment: DataEfficiencyConfig = field(default_factory=DataEfficiencyConfig)
    output_dir: str = "data-efficiency"
    device: str = "cpu"


@dataclass
class FinetuneCommand:
    """``pretext3d finetune``: one fine-tuning run (one method, one label fraction).

    Attributes:
        data: the labelled images.
        encoder: encoder file from ``pretext3d pretrain`` (``""``: from scratch).
        name: the method's name in the results.
        fraction: share of the training pool that is labelled.
        repetition: which seeded subset and training order.
        split_seed: seed of the fixed validation/test split.
        val_fraction: validation share.
        test_fraction: test share.
        train: the training settings (a from-scratch run never freezes the encoder).
        transductive: allow an encoder pretrained on validation or test images (recorded).
        segmentation: the segmentation recipe (CT data).
        grading: the grading recipe (fundus data).
        output_dir: where the run, its checkpoint and the results go.
        device: ``cpu`` or ``cuda``.
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


def _pretrain(cfg: PretrainCommand) -> dict[str, Any]:
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    d = cfg.data.spatial_dims
    task_cls, encoder_cls = TASKS[cfg.task], ENCODERS[cfg.encoder]
    check_keywords(task_cls.__name__, cfg.task_options, task_cls, "task_options")
    check_keywords(encoder_cls.__name__, cfg.encoder_options, encoder_cls, "encoder_options")
    encoder_options = cfg.encoder_options or SMALL_ENCODERS.get(cfg.encoder, {})
    images, case_ids = cfg.data.unlabelled()
    if cfg.held_out >= len(images):
        raise ConfigError(f"held_out={cfg.held_out} leaves no training images out of {len(images)}")
    train, held = images[cfg.held_out :], images[: cfg.held_out]
    task = task_cls(d, **cfg.task_options)
    encoder = encoder_cls(spatial_dims=d, in_channels=images.shape[1], **encoder_options)
    model = PretextModel(encoder, task)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)

    def crop(x: Tensor) -> Tensor:
        return random_crops(x, (cfg.crop,) * d, gen) if cfg.crop else x

    start = time.perf_counter()
    for step in range(1, cfg.steps + 1):
        model.train()
        views, labels = task(crop(train[torch.randint(len(train), (cfg.batch_size,), generator=gen)]), gen)
        output = model(views)
        loss = task.loss(output, labels)
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        if step % 50 == 0 or step == cfg.steps:
            print(
                f"pretrain {cfg.task}: step {step}/{cfg.steps} loss {loss.item():.3f} "
                f"accuracy {float(task.accuracy(output.detach(), labels)):.3f}"
            )
    model.eval()
    eval_gen = torch.Generator().manual_seed(cfg.seed + 1)
    with torch.no_grad():
        held_views = random_crops(held, (cfg.crop,) * d, eval_gen) if cfg.crop else held
        views, labels = task(held_views, eval_gen)
        accuracy = float(task.accuracy(model(views), labels))
    out = Path(cfg.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_encoder(model.encoder, out)
    record = {
        "pretext_accuracy": accuracy,
        "task": cfg.task,
        "steps": cfg.steps,
        "seconds": time.perf_counter() - start,
        "synthetic": cfg.data.synthetic,
        "transductive": cfg.data.include_labelled,
        "held_out_cases": case_ids[: cfg.held_out],
        "config": dataclasses.asdict(cfg),
        "environment": environment(),
    }
    write_pretraining_record(out, case_ids=case_ids, **record)
    print(
        f"held-out pretext accuracy {accuracy:.3f}; encoder written to {out}"
        + ("  [SYNTHETIC phantom data]" if cfg.data.synthetic else "")
    )
    return record


def _recipe(
    data: DataSpec, segmentation: SegmentationRecipe, grading: GradingRecipe
) -> SegmentationRecipe | GradingRecipe:
    return segmentation if data.spatial_dims == 3 else grading


def _data_efficiency(cfg: DataEfficiencyCommand) -> list[dict[str, Any]]:
    if cfg.data.include_labelled:
        raise ConfigError(
            "data.include_labelled applies to the pretraining pool (pretext3d pretrain) only; "
            "to allow encoders pretrained on validation/test cases set experiment.transductive = true"
        )
    recipe = _recipe(cfg.data, cfg.segmentation, cfg.grading)
    images, labels, case_ids = cfg.data.labelled()
    methods: dict[str, str | list[str] | None] = {
        name: (path or None) if isinstance(path, str) else list(path) for name, path in cfg.methods.items()
    }
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
            device=cfg.device,
            synthetic=cfg.data.synthetic,
        )
    except ValueError as err:
        raise ConfigError(str(err)) from err
    for path in write_report(rows, cfg.output_dir, recipe.metric, synthetic=cfg.data.synthetic):
        print(f"wrote {path}")
    return rows


def _finetune(cfg: FinetuneCommand) -> list[dict[str, Any]]:
    experiment = DataEfficiencyConfig(
        fractions=(cfg.fraction,),
        repetitions=cfg.repetition + 1,
        split_seeds=(cfg.split_seed,),
        val_fraction=cfg.val_fraction,
        test_fraction=cfg.test_fraction,
        train=cfg.train,
        transductive=cfg.transductive,
    )
    command = DataEfficiencyCommand(
        data=cfg.data,
        methods={cfg.name: cfg.encoder},
        segmentation=cfg.segmentation,
        grading=cfg.grading,
        experiment=experiment,
        output_dir=cfg.output_dir,
        device=cfg.device,
    )
    return _data_efficiency(command)


COMMANDS: dict[str, tuple[type[Any], Any]] = {
    "pretrain": (PretrainCommand, _pretrain),
    "finetune": (FinetuneCommand, _finetune),
    "data-efficiency": (DataEfficiencyCommand, _data_efficiency),
}


def _describe(cls: type[Any]) -> str:
    doc = (cls.__doc__ or "").strip()
    defaults = json.dumps(dataclasses.asdict(cls()), indent=2, default=str)
    return f"{doc}\n\nDefaults (as JSON; write them as TOML):\n{defaults}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pretext3d`` console script."""
    parser = argparse.ArgumentParser(prog="pretext3d", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (cls, _) in COMMANDS.items():
        p = sub.add_parser(
            name,
            help=(cls.__doc__ or "").splitlines()[0],
            description=_describe(cls),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("--config", type=Path, help="TOML file with the settings")
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a setting, e.g. --set train.lr=0.001 (repeatable)",
        )
    args = parser.parse_args(argv)
    cls, run = COMMANDS[args.command]
    try:
        values = load_toml(args.config) if args.config is not None else {}
        for item in args.set:
            merge_override(values, *parse_override(item))
        config = from_mapping(cls, values)
        run(config)
    except ConfigError as err:
        print(f"pretext3d {args.command}: configuration error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
