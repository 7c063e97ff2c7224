"""Reproductions of Taleb et al.'s data-efficiency figures: pretrain every task, then the fair grid.

One :class:`Reproduction` config holds a whole experiment: the labelled data, the unlabelled
pretraining pool, how each pretext task is pretrained, and the data-efficiency grid.
:func:`run_reproduction` pretrains one encoder per task and pretraining seed (the
:class:`~pretext3d.pretrainer.Pretrainer`), runs every task and the from-scratch baseline
through :func:`~pretext3d.experiments.runner.run_data_efficiency` (fair baseline, decoupled
seeds, paired statistics, no validation or test image in pretraining, provenance), and
writes the report, the pretext curves, the exact config and the machine into one results
folder. Interrupt it at any point and rerun: finished encoders and runs are kept.

``pretext3d reproduce --config examples/pancreas/quick.toml`` runs one; the examples'
``quick``, ``demo`` and ``paper`` configs are the paper's Figure 3 (pancreas, 3D U-Net) and
Figure 4 (diabetic retinopathy, DenseNet) on the phantoms or on the real data.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import torch

from pretext3d import engine
from pretext3d._atomic import write_text
from pretext3d._checks import check_device_name, check_int
from pretext3d._random import Seeds
from pretext3d.config import Range, checked, from_mapping, load_toml, merge_override, parse_override
from pretext3d.data.spec import DataSpec
from pretext3d.diagnostics import FeatureProbe, chance_level
from pretext3d.experiments.cost import estimate_cost
from pretext3d.experiments.locks import remove_stale_locks, work_through
from pretext3d.experiments.pretraining import (
    Pretraining,
    accuracy_summary,
    plot_pretraining,
    pretrain_encoder,
    pretraining_curves,
)
from pretext3d.experiments.recipes import (
    ClassificationRecipe,
    GradingRecipe,
    Recipe,
    SegmentationRecipe,
    recipe_for,
)
from pretext3d.experiments.report import seed_ranges, summary_table, write_report
from pretext3d.experiments.runner import (
    DataEfficiencyConfig,
    DataEfficiencyGrid,
    LabelledCases,
    check_unchanged,
)
from pretext3d.experiments.verdict import (
    LEARNING_RATES,
    calibration_folder,
    choose_learning_rates,
    chosen_learning_rates,
    write_verdict,
)
from pretext3d.finetune.trainer import Trainer
from pretext3d.models.io import save_encoder
from pretext3d.pretrainer import PretrainConfig
from pretext3d.provenance import environment, read_pretraining_record, write_pretraining_record
from pretext3d.registry import TASKS
from pretext3d.training import TaskSpec

__all__ = [
    "LEARNING_RATES",
    "Reproduction",
    "held_out_block",
    "load_reproduction",
    "methods_of",
    "probe_for",
    "run_reproduction",
]


def _every_task() -> dict[str, TaskSpec]:
    return {name: TaskSpec(name=name) for name in TASKS.names()}


@checked
@dataclass
class Reproduction:
    """A data-efficiency reproduction: every pretext task against the from-scratch baseline.

    Complete configs: ``examples/pancreas/{quick,demo,paper}.toml`` and
    ``examples/fundus/{quick,demo,paper}.toml``.

    Attributes:
        name: a title for the report and the figures.
        data: the labelled cases (CT: segmentation, :class:`SegmentationRecipe`; fundus:
            grading, :class:`GradingRecipe`).
        pretraining_data: the unlabelled pretraining pool; by default disjoint from the
            labelled cases (see :class:`~pretext3d.data.DataSpec`), and the runner refuses an
            encoder that saw a validation or test case unless ``experiment.transductive``.
        held_out: pool images kept aside for the held-out pretext accuracy.
        pretrain: the Pretrainer's settings shared by every task (its ``seed`` + k seeds
            pretraining seed k).
        pretraining_seeds: encoders pretrained per task (each a method's pretraining seed).
        probe_images: labelled phantoms of their own seed (never a case of the splits) for a
            frozen-feature probe during pretraining (:class:`~pretext3d.diagnostics.FeatureProbe`:
            CT, a linear patch probe of the pancreas; fundus, a linear probe of the grade), run
            on the random encoder and every ``pretrain.eval_every`` steps and drawn in the
            pretraining figure; phantom data only; ``0``: none.
        positive_control: labelled phantoms of their own seeds (never a case of the splits, nor
            of the probe) on which the recipe's model is trained *with labels*, one per
            pretraining seed; its encoder is the method ``supervised``, a positive control: if it
            does not beat scratch at the smallest fraction, the protocol cannot show a transfer
            and the pretext rows mean nothing (the summary says which). Phantom data only; ``0``:
            no control.
        tasks: method name -> how its encoder is pretrained (:class:`~pretext3d.training.TaskSpec`:
            ``task``, the registered task, defaults to the method name; ``options``; ``crop``,
            the edge of the random crop of this task, default ``pretrain.crop``); each becomes a
            method of the grid.
        segmentation: the segmentation recipe (CT data); its encoder architecture is the one
            pretrained.
        grading: the grading recipe (fundus data, graded image folders).
        classification: the classification recipe (labelled image folders).
        experiment: fractions, split seeds, repetitions and the fine-tuning settings of both
            arms (the baseline's own in ``experiment.baseline_train``).
        output_dir: the results folder.
        device: where fine-tuning runs (``"auto"``: a GPU if there is one; ``"cpu"``,
            ``"cuda[:i]"``), resolved when the run starts; pretraining runs on ``pretrain.device``.
        threads: torch CPU threads (``None``: torch's default); results on the CPU depend on
            it, and it is recorded with every run.
        calibration_seeds: split seeds (none of ``experiment.split_seeds``) on which each
            method's learning rate is chosen *once* from ``experiment.lr_search``, on validation
            scores (:func:`~pretext3d.experiments.choose_learning_rates`; a grid of its own in
            ``<output_dir>/calibration``); the grid then runs every method at its chosen rate
            (written to ``<output_dir>/learning_rates.json`` and printed as the
            ``[experiment.learning_rates]`` table that freezes it for the held-out block). A
            method already in ``experiment.learning_rates`` is not searched. Empty: with
            ``lr_search``, every run searches on its own.
        development_dir: set by :func:`held_out_block`: the development block's folder; when it
            holds runs, the held-out block's folder gets ``verdict.md`` and ``verdict.png`` with
            both blocks' paired differences side by side
            (:func:`~pretext3d.experiments.verdict.write_verdict`).
        holm_families: methods whose comparisons with scratch Holm adjusts among themselves in
            the verdict, e.g. ``[["genesis", "mim"]]`` for arms added to a finished block (a
            family of hypotheses of their own, leaving the block's first family as it was); the
            other methods form one family. Reporting only: not part of the folder's settings.
        plugins: modules to import first (the CLI does), e.g. ones registering your tasks.

    Examples:
        A reproduction small enough for a doctest (the configs in ``examples/`` are the real ones):

        >>> config = Reproduction(
        ...     name="tiny", output_dir="tiny", device="cpu",
        ...     data=p3.data.DataSpec(kind="fundus-phantom", count=24, size=32),   # SYNTHETIC
        ...     pretraining_data=p3.data.DataSpec(kind="fundus-phantom", count=8, size=32), held_out=4,
        ...     pretrain=p3.pretrainer.PretrainConfig(steps=2, batch_size=4, device="cpu", progress=False),
        ...     tasks={"rotation": p3.TaskSpec()},
        ...     grading=GradingRecipe(growth_rate=4, block_config=(1, 1), init_features=8),
        ...     experiment=DataEfficiencyConfig(fractions=(0.5, 1.0), split_seeds=(0,),
        ...                                     train=p3.finetune.TrainConfig(epochs=1, steps_per_epoch=2)))
        >>> folder = run_reproduction(config, progress=False, log=lambda line: None)
        >>> sorted(p.name for p in folder.glob("*.*"))
        ['cases.csv', 'config.json', 'data_efficiency.png', 'learning_curves.png', 'pretraining.png',
         'reproduction.json', 'results.csv', 'results.json', 'summary.md']

    References:
        - Taleb et al., "3D Self-Supervised Methods for Medical Imaging", NeurIPS 2020. Figures 3 and 4.
    """

    name: str = "reproduction"
    data: DataSpec = field(default_factory=DataSpec)
    pretraining_data: DataSpec = field(default_factory=lambda: DataSpec(count=96))
    held_out: int = 16
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    pretraining_seeds: int = 1
    probe_images: int = 0
    positive_control: int = 0
    tasks: dict[str, TaskSpec] = field(default_factory=_every_task)
    segmentation: SegmentationRecipe = field(default_factory=SegmentationRecipe)
    grading: GradingRecipe = field(default_factory=GradingRecipe)
    classification: ClassificationRecipe = field(default_factory=ClassificationRecipe)
    experiment: DataEfficiencyConfig = field(default_factory=DataEfficiencyConfig)
    output_dir: str = "runs/reproduction"
    device: str = "auto"
    threads: int | None = None
    calibration_seeds: tuple[int, ...] = ()
    development_dir: str = ""
    holm_families: tuple[tuple[str, ...], ...] = ()
    plugins: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        """Check what can be checked before any data are read."""
        self._check_calibration()
        methods = methods_of(self)
        for k, family in enumerate(self.holm_families):
            unknown = [m for m in family if m not in methods or m == "scratch"]
            if not family or unknown:
                raise ValueError(
                    f"holm_families[{k}] must list methods of this reproduction other than scratch "
                    f"({', '.join(methods[1:])}), got {list(family)}"
                )
        if self.data.spatial_dims != self.pretraining_data.spatial_dims:
            raise ValueError(
                f"pretraining_data ({self.pretraining_data.kind!r}) must have the same dimensions as data "
                f"({self.data.kind!r}): the pretrained encoder is fine-tuned on data"
            )
        if not self.data.has_labels:
            raise ValueError(
                f"data.kind = {self.data.kind!r} holds unlabelled images; data must be labelled "
                "(ct-phantom, fundus-phantom, task07, aptos); use it as pretraining_data"
            )
        check_device_name("device", self.device)
        check_int("held_out", self.held_out, 0)
        check_int("pretraining_seeds", self.pretraining_seeds, 1)
        for name in ("probe_images", "positive_control"):
            if check_int(name, getattr(self, name), 0) and not self.data.synthetic:
                raise ValueError(
                    f"{name} applies to the phantom data (it draws labelled phantoms of their own); "
                    f"data.kind={self.data.kind!r}: set {name} = 0"
                )
        if "supervised" in self.tasks and self.positive_control:
            raise ValueError("tasks must not name a method 'supervised' beside positive_control (its name)")
        if 0 < self.probe_images < 4:
            raise ValueError(
                f"probe_images must be 0 or at least 4 (half to fit, half to score), got {self.probe_images}"
            )
        if self.threads is not None:
            check_int("threads", self.threads, 1)
        if not self.tasks:
            raise ValueError("tasks must name at least one pretext task, e.g. [tasks.rotation]")
        for method, spec in list(self.tasks.items()):
            if not spec.name:  # the table's key names the method (and the task, unless given)
                spec = self.tasks[method] = dataclasses.replace(spec, name=method)
            spec.check(f"tasks.{method}.options")
            if spec.weight != 1.0:
                raise ValueError(
                    f"tasks.{method}.weight = {spec.weight} has no meaning in a reproduction (each encoder "
                    "is pretrained on one task); remove it"
                )
        if not self.output_dir.strip():
            raise ValueError("output_dir must name a folder, got ''")

    def _check_calibration(self) -> None:
        seeds = self.calibration_seeds
        if not seeds:
            return
        if any(isinstance(k, bool) or not isinstance(k, int) or k < 0 for k in seeds) or len(
            set(seeds)
        ) != len(seeds):
            raise ValueError(f"calibration_seeds must be distinct split seeds >= 0, got {list(seeds)}")
        if not self.experiment.lr_search:
            raise ValueError(
                "calibration_seeds choose each method's learning rate from experiment.lr_search: set "
                "experiment.lr_search (e.g. [0.0003, 0.001, 0.003]) or remove calibration_seeds"
            )
        shared = sorted(set(seeds) & set(self.experiment.split_seeds))
        if shared:
            raise ValueError(
                f"calibration_seeds {shared} are also experiment.split_seeds: choose the learning rates on "
                "split seeds of their own"
            )

    @property
    def recipe(self) -> Recipe:
        """The fine-tuning recipe the data's kind names (segmentation for CT, grading for fundus images)."""
        recipes = {"segmentation": self.segmentation, "grading": self.grading}
        return recipe_for(self.data, {**recipes, "classification": self.classification})


def load_reproduction(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> Reproduction:
    """Read a reproduction config (TOML), with ``KEY=VALUE`` overrides as ``--set`` takes them.

    The overrides (but ``output_dir``) are appended to the config's ``name``, unless one sets the
    name, so that every title of the report says the run was not the file's.

    Raises:
        ConfigError: an unreadable file, an unknown key (with the nearest valid one), or a
            value of the wrong type or range.

    Examples:
        >>> from pathlib import Path
        >>> _ = Path("repro.toml").write_text('''name = "pancreas"
        ... [tasks.rotation]
        ... crop = 32''')
        >>> config = load_reproduction("repro.toml", overrides=["pretrain.steps=50"])
        >>> config.name, list(config.tasks), config.tasks["rotation"].crop, config.pretrain.steps
        ('pancreas [overrides: pretrain.steps=50]', ['rotation'], 32, 50)
    """
    if isinstance(overrides, str) or not all(isinstance(o, str) for o in overrides):
        raise TypeError(f"overrides must be a list of 'KEY=VALUE' strings, got {overrides!r}")
    values = load_toml(Path(path))
    for item in overrides:
        merge_override(values, *parse_override(item))
    shown = [o.strip() for o in overrides if not o.strip().startswith("output_dir=")]
    if shown and not any(o.startswith("name=") for o in shown):
        values["name"] = f"{values.get('name', Reproduction.name)} [overrides: {', '.join(shown)}]"
    return from_mapping(Reproduction, values)


@checked
def held_out_block(config: Reproduction, offset: Annotated[int, Range(1)] = 100) -> Reproduction:
    """The same reproduction on a held-out block of seeds: the one run a verdict comes from.

    Develop (choose settings, read curves) on ``config``'s split seeds, then run this once and
    report it beside them, untuned: every split seed moves up by ``offset`` (new validation and
    test cases and labelled subsets; ``0..19`` becomes ``100..119``) and so does ``pretrain.seed``
    (new pretraining seeds for every task and the positive control's training). The results go to
    ``<output_dir>-verdict`` and the name says which block it is.

    Raises:
        ValueError: a shifted split seed is one of the development seeds (``offset`` too small).

    Examples:
        >>> dev = Reproduction(name="demo", output_dir="runs/demo",
        ...                    experiment=DataEfficiencyConfig(split_seeds=tuple(range(20))))
        >>> block = held_out_block(dev)
        >>> block.experiment.split_seeds[:3], block.pretrain.seed, block.output_dir
        ((100, 101, 102), 100, 'runs/demo-verdict')
        >>> block.name
        'demo [held-out verdict block: split seeds 100-119, pretraining seeds from 100]'
    """
    check_int("offset", offset, 1)
    seeds = tuple(s + offset for s in config.experiment.split_seeds)
    development = set(config.experiment.split_seeds) | set(config.calibration_seeds)
    if set(seeds) & development:
        raise ValueError(
            f"offset={offset} moves split seeds {sorted(config.experiment.split_seeds)} onto development "
            "seeds (split or calibration seeds); the held-out block must not share a split seed with "
            "development: raise offset"
        )
    if offset < config.pretraining_seeds:
        raise ValueError(
            f"offset={offset} would reuse development pretraining seeds (pretrain.seed + 0..."
            f"{config.pretraining_seeds - 1}): raise offset to at least pretraining_seeds = "
            f"{config.pretraining_seeds}"
        )
    experiment = dataclasses.replace(config.experiment, split_seeds=seeds)
    if config.calibration_seeds:  # the learning rates the development block chose, frozen
        rates = {**_chosen_learning_rates(config), **config.experiment.learning_rates}
        experiment = dataclasses.replace(experiment, learning_rates=rates, lr_search=())
    pretrain_seed = config.pretrain.seed + offset
    shown = seed_ranges(seeds)
    block = f"held-out verdict block: split seeds {shown}, pretraining seeds from {pretrain_seed}"
    return dataclasses.replace(
        config,
        name=f"{config.name} [{block}]",
        output_dir=f"{config.output_dir.rstrip('/')}-verdict",
        pretrain=dataclasses.replace(config.pretrain, seed=pretrain_seed),
        experiment=experiment,
        calibration_seeds=(),
        development_dir=config.output_dir,
    )


def methods_of(config: Reproduction) -> list[str]:
    """The methods of a reproduction's grid, in its order: scratch, the tasks, the positive control.

    Examples:
        >>> methods_of(Reproduction(tasks={"rotation": p3.TaskSpec(), "jigsaw": p3.TaskSpec()}))
        ['scratch', 'rotation', 'jigsaw']
    """
    return ["scratch", *config.tasks, *(["supervised"] if config.positive_control else [])]


def _chosen_learning_rates(config: Reproduction) -> dict[str, float]:
    """Every method's frozen learning rate: the config's, else the development block's choice."""
    frozen = dict(config.experiment.learning_rates)
    missing = [m for m in methods_of(config) if m not in frozen]
    saved = Path(config.output_dir) / LEARNING_RATES
    if missing:
        chosen = chosen_learning_rates(config.output_dir)
        frozen.update({m: chosen[m] for m in missing if m in chosen})
        missing = [m for m in missing if m not in frozen]
    if missing:
        raise ValueError(
            f"the held-out block runs every method at the learning rate the development block chose, but "
            f"{missing} have none: run the development block first (it writes {saved}), or freeze them in "
            "[experiment.learning_rates]"
        )
    return frozen


def probe_for(data: DataSpec, count: int, every: int) -> FeatureProbe:
    """A frozen-feature probe on ``count`` labelled phantoms of their own seed (``data.seed + 7919``).

    CT phantoms: a linear patch probe of the pancreas (patch Dice); fundus phantoms: a linear
    probe of the grade (accuracy). The seed keeps them apart from every case of the data's splits.

    Examples:
        >>> probe = probe_for(p3.data.DataSpec(kind="fundus-phantom", size=32), count=8, every=25)
        >>> probe.task, probe.metric, len(probe.images)
        ('classification', 'accuracy', 8)
    """
    if not data.synthetic:
        raise ValueError(f"probe_for draws phantoms; data.kind={data.kind!r} is not a phantom")
    images, labels, _ = dataclasses.replace(
        data, count=count, seed=Seeds.probe_phantoms(data.seed)
    ).labelled()
    if labels.ndim > 1:  # label maps, or grades: what the data kind's labels are
        return FeatureProbe(images, labels, task="segmentation", every=every)
    return FeatureProbe(images, labels, task="classification", every=every)


def _machine(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
    return info


def run_reproduction(
    config: Reproduction,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
    estimate: bool = True,
    workers: int = 1,
) -> Path:
    """Pretrain every task's encoders, run the data-efficiency grid, write the report.

    The results folder (``config.output_dir``) receives ``reproduction.json`` (the exact
    config, versions, machine and the time each phase took), ``encoders/<task>_p<k>.pt``
    with their records and metrics, the runner's ``runs/`` and ``config.json``, and the
    report: ``results.csv``, ``cases.csv``, ``summary.md``, ``data_efficiency.png`` (with
    the paper's numbers beside ours), ``learning_curves.png`` and ``pretraining.png``.

    Several processes started on the same config share the work: each encoder and each
    fine-tuning run is claimed with a lock file, a live worker's is waited for and a dead
    worker's taken over, so N workers (N cores with ``threads = 1``, or several on one GPU)
    finish about N times sooner, with the same results.

    Args:
        config: the reproduction.
        progress: show progress bars (needs tqdm).
        log: where progress lines go.
        estimate: before anything runs, log what is left and about how long it takes
            (:func:`~pretext3d.experiments.cost.estimate_cost`: a few steps measured here).
        workers: processes sharing the folder, for the estimate.

    Returns:
        The results folder.

    Raises:
        ValueError: a folder holding a reproduction of other settings, or what the
            Pretrainer or the runner refuse.

    Examples:
        See :class:`Reproduction` for a whole (tiny) run; from a config file:

        >>> from pathlib import Path
        >>> _ = Path("tiny.toml").write_text('''output_dir = "tiny-from-toml"
        ... device = "cpu"
        ... held_out = 4
        ... data = { kind = "fundus-phantom", count = 24, size = 32 }
        ... pretraining_data = { kind = "fundus-phantom", count = 8, size = 32 }
        ... pretrain = { steps = 2, batch_size = 4, device = "cpu", progress = false }
        ... grading = { growth_rate = 4, block_config = [1, 1], init_features = 8 }
        ... [tasks.rotation]
        ... [experiment]
        ... fractions = [0.5, 1.0]
        ... split_seeds = [0]
        ... train = { epochs = 1, steps_per_epoch = 2 }''')
        >>> folder = run_reproduction(load_reproduction("tiny.toml"), progress=False, log=lambda line: None)
        >>> print(folder.joinpath("summary.md").read_text().splitlines()[0])
        # ...
    """
    if not isinstance(config, Reproduction):
        raise TypeError(
            f"config must be a Reproduction (load_reproduction(path) reads one), got {type(config).__name__}"
        )
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    recipe = config.recipe
    device = engine.resolve_device(config.device)
    if config.pretrain.device != "auto":  # refused before anything is written, as config.device is
        engine.resolve_device(config.pretrain.device)
    out = Path(config.output_dir)
    fingerprint = _fingerprint(config)
    saved = out / "reproduction.json"
    added: list[str] = []
    if saved.exists():
        anything_done = any((out / "encoders").glob("*.pt.json")) or any((out / "runs").glob("*.json"))
        earlier = json.loads(saved.read_text())
        # settings the library gained since the folder was made count at their defaults
        old = _with_defaults(earlier.get("config"), _fingerprint(Reproduction()))
        added = _added_tasks(old, fingerprint)
        if added:  # the other tasks' encoders and runs are kept: only the added ones are made and run
            log(f"adding task(s) {', '.join(added)} to the reproduction in {out}; the rest is kept")
        else:
            check_unchanged(
                old, fingerprint, saved, "a reproduction with other settings", finished=anything_done, log=log
            )
    info: dict[str, Any] = {
        "config": fingerprint,
        "environment": environment(device),
        "machine": _machine(device),
        "seconds": {},
    }
    if saved.exists() and added:
        info["before_tasks_were_added"] = {k: v for k, v in earlier.items() if k != "config"}
    (out / "encoders").mkdir(parents=True, exist_ok=True)
    write_text(out / "reproduction.json", json.dumps(info, indent=2))
    note = "  [SYNTHETIC phantom data]" if config.data.synthetic else ""
    start = time.perf_counter()
    methods: dict[str, list[str] | None] = {"scratch": None}
    probe = (
        probe_for(config.data, config.probe_images, config.pretrain.eval_every)
        if config.probe_images
        else None
    )
    the_pool = functools.cache(config.pretraining_data.unlabelled)  # made once, for every task and seed
    labelled = config.data.labelled()
    if estimate:
        cost = estimate_cost(config, workers=workers, pool=the_pool, labelled=labelled[:2], log=log)
        log(f"{config.name}: {cost}{note}")

    def pretrain_one(task: str, spec: TaskSpec, k: int, encoder: Path) -> object:
        log(f"pretraining {task} (pretraining seed {k}) -> {encoder}{note}")
        return pretrain_encoder(
            _pretraining(config, spec, k, str(encoder), progress),
            record={"reproduction": config.name}, pool=the_pool(), log=log, probe=probe, recipe_note=False,
        )  # fmt: skip

    jobs: list[tuple[Path, Callable[[], object]]] = []
    for task, spec in config.tasks.items():
        files = [out / "encoders" / f"{task}_p{k}.pt" for k in range(config.pretraining_seeds)]
        methods[task] = [str(f) for f in files]
        jobs += [(f, functools.partial(pretrain_one, task, spec, k, f)) for k, f in enumerate(files)]
    if config.positive_control:
        controls = [out / "encoders" / f"supervised_p{k}.pt" for k in range(config.pretraining_seeds)]
        methods["supervised"] = [str(f) for f in controls]
        control = functools.partial(_positive_control, config, device=device, log=log)
        jobs += [(f, functools.partial(control, k, f)) for k, f in enumerate(controls)]
    _make_encoders(jobs, log)
    for task in config.tasks:
        for file in methods[task] or []:
            record = read_pretraining_record(file) or {}
            log(f"{Path(file).name}: held-out pretext accuracy {accuracy_summary(record)}")
    pretrained = time.perf_counter()
    cases = LabelledCases(*labelled, info=config.data.settings(), synthetic=config.data.synthetic)
    experiment = config.experiment
    if config.calibration_seeds:
        experiment = _calibrate(config, cases, methods, device, progress, log)
    calibrated = time.perf_counter()
    rows = DataEfficiencyGrid(recipe, cases, methods, experiment, out, device=device, log=log).run(
        progress=progress
    )
    finished = time.perf_counter()
    written = write_report(rows, out, recipe.metric, synthetic=config.data.synthetic, title=config.name)
    curves = {task: [pretraining_curves(f) for f in files or []] for task, files in methods.items() if files}
    batch = min(config.pretrain.batch_size, config.held_out) or None  # the held-out evaluation's
    chance = {task: chance_level(config.tasks[task].build(config.data.spatial_dims), batch)
              if task in config.tasks else None
              for task in curves}  # fmt: skip
    figure = plot_pretraining(
        curves, out / "pretraining.png", config.name, synthetic=config.data.synthetic, chance=chance
    )
    written += [figure] if figure is not None else []
    if config.development_dir:
        blocks: dict[str, str | os.PathLike[str]] = {
            f"held-out ({seed_ranges(config.experiment.split_seeds)})": out,
            "development": config.development_dir,
        }
        written += write_verdict(
            blocks, out, recipe.metric, title=config.name, synthetic=config.data.synthetic,
            families=config.holm_families,
        )  # fmt: skip
    info["seconds"] = {
        "pretraining": round(pretrained - start, 1),
        "calibration": round(calibrated - pretrained, 1),
        "fine_tuning_grid": round(finished - calibrated, 1),
        "total": round(time.perf_counter() - start, 1),
        "note": "this invocation only: encoders and runs kept from an earlier one took no time here",
    }
    write_text(out / "reproduction.json", json.dumps(info, indent=2))
    log(f"\n{config.name}: test {recipe.metric}, mean ± sd over split seeds{note}\n")
    log(summary_table(rows, recipe.metric))
    log("")
    for path in written:
        log(f"wrote {path}")
    threads = f"{torch.get_num_threads()} CPU thread" + ("s" if torch.get_num_threads() != 1 else "")
    log(f"results folder: {out}  ({info['seconds']['total']:.0f} s, {threads})")
    return out


def _fingerprint(config: Reproduction) -> dict[str, Any]:
    """What a reproduction's folder must have been made with (``reproduction.json``'s ``config``).

    Not the output folder, and not how the learning rates were come by (``lr_search``,
    ``calibration_seeds``, ``learning_rates``): the grids check the rates they ran with, so a
    config that freezes the rates its calibration chose continues the same folder.
    """
    values = {
        k: v
        for k, v in asdict(config).items()
        if k not in ("output_dir", "calibration_seeds", "development_dir", "holm_families")
    }
    values["experiment"] = {
        k: v for k, v in values["experiment"].items() if k not in ("learning_rates", "lr_search")
    }
    fingerprint: dict[str, Any] = json.loads(json.dumps(values))
    return fingerprint


def _added_tasks(old: Any, new: Mapping[str, Any]) -> list[str]:
    """The tasks ``new`` (a fingerprint) adds to ``old``'s when nothing else differs (else ``[]``).

    Settings the library gained after ``old`` was written are compared at their defaults when
    ``old`` comes through :func:`_with_defaults` first, as :func:`run_reproduction` passes it.

    Examples:
        >>> old = {"tasks": {"rotation": {"crop": 24}}, "steps": 10}
        >>> _added_tasks(old, {"tasks": {"rotation": {"crop": 24}, "mim": {"crop": 32}}, "steps": 10})
        ['mim']
        >>> _added_tasks(old, {"tasks": {"rotation": {"crop": 16}, "mim": {"crop": 32}}, "steps": 10})
        []
        >>> gained = {"tasks": {"rotation": {"crop": 24}, "mim": {}}, "steps": 10, "new": 1}
        >>> _added_tasks(old, gained), _added_tasks(_with_defaults(old, {"new": 1}), gained)
        ([], ['mim'])
    """
    if not isinstance(old, Mapping):
        return []
    before, after = dict(old.get("tasks", {})), dict(new.get("tasks", {}))
    added = [name for name in after if name not in before]
    kept = {name: after.get(name) for name in before}
    changed = engine.changed_settings({**old, "tasks": before}, {**new, "tasks": kept})
    return added if added and not changed else []


def _with_defaults(old: Any, default: Mapping[str, Any]) -> Any:
    """``old`` (a saved fingerprint) with the settings it lacks filled in from ``default``.

    The tasks are a table of the folder's own, not settings: they are never filled in.

    Examples:
        >>> _with_defaults({"data": {"size": 32}}, {"data": {"size": 16, "channels": 0}, "threads": None})
        {'data': {'size': 32, 'channels': 0}, 'threads': None}
    """
    if not isinstance(old, Mapping):
        return old
    filled = dict(old)
    for key, value in default.items():
        if key == "tasks":
            continue
        if key not in filled:
            filled[key] = value
        elif isinstance(value, Mapping) and isinstance(filled[key], Mapping):
            filled[key] = _with_defaults(filled[key], value)
    return filled


def _calibrate(
    config: Reproduction,
    cases: LabelledCases,
    methods: Mapping[str, list[str] | None],
    device: torch.device,
    progress: bool,
    log: Callable[[str], None],
) -> DataEfficiencyConfig:
    """Choose each method's learning rate once on the calibration seeds; the grid's settings with them frozen.

    Methods frozen in ``experiment.learning_rates`` are not searched. The choice is written to
    ``<output_dir>/learning_rates.json`` and logged as the TOML table that freezes it.
    """
    experiment, out = config.experiment, Path(config.output_dir)
    frozen = dict(experiment.learning_rates)
    searched = {m: files for m, files in methods.items() if m not in frozen}
    record: dict[str, Any] = {"frozen_in_config": dict(frozen)}
    if searched:
        calibration = dataclasses.replace(experiment, split_seeds=config.calibration_seeds, learning_rates={})
        folder = calibration_folder(out, searched, frozen)
        log(
            f"calibration: each method's learning rate from {list(experiment.lr_search)} on split seeds "
            f"{seed_ranges(config.calibration_seeds)} (validation scores only) -> {folder}"
        )
        rows = DataEfficiencyGrid(
            config.recipe, cases, searched, calibration, folder, device=device, log=log
        ).run(progress=progress)
        picks = choose_learning_rates(rows)
        chosen = {m: float(picks[m]["lr"]) for m in searched}
        record["chosen"] = {
            "calibration_seeds": list(config.calibration_seeds),
            "lr_search": list(experiment.lr_search),
            "mean_val": {m: {f"{lr:g}": v for lr, v in picks[m]["mean_val"].items()} for m in searched},
            "runs_per_method": {m: picks[m]["runs"] for m in searched},
        }
        frozen.update(chosen)
    record["learning_rates"] = frozen
    if (out / LEARNING_RATES).exists():  # an earlier calibration's record (e.g. before methods were added)
        earlier = json.loads((out / LEARNING_RATES).read_text())
        if earlier.get("learning_rates") != frozen:
            record["earlier"] = earlier
    write_text(out / LEARNING_RATES, json.dumps(record, indent=2))
    table = "\n".join(f"{m} = {lr:g}" for m, lr in frozen.items())
    log(
        f"learning rates (in {out / LEARNING_RATES}); to freeze them for the held-out block, in the config:\n"
        f"[experiment.learning_rates]\n{table}"
    )
    return dataclasses.replace(experiment, learning_rates=frozen, lr_search=())


def _made(encoder: Path) -> bool:
    return encoder.exists() and read_pretraining_record(encoder) is not None


def _make_encoders(jobs: Sequence[tuple[Path, Callable[[], object]]], log: Callable[[str], None]) -> None:
    """Make every encoder not yet made; workers sharing the folder split them.

    Each encoder is claimed with a lock file (``<encoder>.lock``, as the grid claims runs), so
    several processes started on the same config (more cores, or a GPU with room for more)
    pretrain different encoders; one that a live worker holds is waited for, one whose worker
    died is taken over (and resumes from its checkpoint).
    """
    for folder in {job[0].parent for job in jobs}:
        for lock in remove_stale_locks(folder):
            log(f"removed {lock}, the lock of a killed worker")
    work_through(
        jobs, done=lambda job: _made(job[0]), lock=lambda job: job[0].with_name(job[0].name + ".lock"),
        run=lambda job: job[1](), log=log, waiting="encoder(s) that other workers are pretraining",
    )  # fmt: skip


def _positive_control(
    config: Reproduction, k: int, encoder_file: Path, device: torch.device, log: Callable[[str], None]
) -> Path:
    """The positive control's encoder: the recipe's model trained with labels on phantoms of their own.

    ``config.positive_control`` labelled cases of the data's kind, drawn from seed
    ``data.seed + 104_729 + k`` (no case of the splits or the probe), trained with the grid's own
    fine-tuning settings (no freeze, no early stopping: no validation set), seeded by
    ``pretrain.seed + k``; its record lists the cases, so the runner's leak check covers it.
    """
    if _made(encoder_file):
        return encoder_file
    recipe, data = config.recipe, config.data
    control = dataclasses.replace(
        data, count=config.positive_control, seed=Seeds.positive_control(data.seed, k)
    )
    images, labels, ids = control.labelled()
    seed = config.pretrain.seed + k
    train = dataclasses.replace(
        config.experiment.train,
        freeze_encoder_epochs=0,
        early_stopping_patience=None,
        min_epochs=0,
        seed=seed,
    )
    log(f"pretraining the positive control with labels (pretraining seed {k}) -> {encoder_file}")
    torch.manual_seed(seed)
    model, encoder = recipe.build(images.shape[1], None)
    cases = list(range(len(images)))
    trainer = Trainer(
        model, recipe.loss(), lambda g: recipe.sample(images, labels, cases, train.batch_size, g), train,
        checkpoint=encoder_file.with_name(encoder_file.name + ".checkpoint"), device=device,
    )  # fmt: skip
    history = trainer.fit()
    save_encoder(encoder, encoder_file)
    write_pretraining_record(
        encoder_file, case_ids=ids, task="supervised", tasks=["supervised"], positive_control=True,
        synthetic=data.synthetic, pretext_accuracy=None, train=dataclasses.asdict(train),
        final_loss=history[-1]["loss"], reproduction=config.name,
    )  # fmt: skip
    encoder_file.with_name(encoder_file.name + ".checkpoint").unlink(missing_ok=True)
    return encoder_file


def _pretraining(config: Reproduction, spec: TaskSpec, k: int, output: str, progress: bool) -> Pretraining:
    """How the encoder of ``spec`` and pretraining seed ``k`` is pretrained."""
    pretrain = dataclasses.replace(
        config.pretrain,
        seed=config.pretrain.seed + k,
        crop=config.pretrain.crop if spec.crop is None else spec.crop,
        steps=config.pretrain.steps if spec.steps is None else spec.steps,
        epochs=config.pretrain.epochs if spec.steps is None else None,
        progress=config.pretrain.progress and progress,
    )
    recipe = config.recipe
    return Pretraining(
        tasks=[dataclasses.replace(spec, weight=1.0, crop=None, steps=None)], encoder=recipe.encoder_kind(),
        encoder_options=recipe.encoder_options(), data=config.pretraining_data, held_out=config.held_out,
        pretrain=pretrain, output=output,
    )  # fmt: skip
