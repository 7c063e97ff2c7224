"""Every ``>>>`` example in a docstring of the library runs and prints what it says."""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest
import torch

import pretext3d as p3

MODULES = sorted(
    m.name for m in pkgutil.walk_packages(p3.__path__, "pretext3d.") if not m.name.endswith("__main__")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str, tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # type: ignore[arg-type]
    # an example may register its own
    for registry in (p3.registry.TASKS, p3.registry.ENCODERS, p3.registry.RECIPES, p3.registry.DATA_KINDS):
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
    module: ModuleType = importlib.import_module(name)
    torch.manual_seed(0)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, name, globs={"torch": torch, "p3": p3, **vars(module)}):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples of {name} failed"


def _public_names() -> dict[str, object]:
    """Every public class and function, by qualified name (each once, where it is defined)."""
    names: dict[str, object] = {}
    for name in MODULES:
        module = importlib.import_module(name)
        for attr in getattr(module, "__all__", []):
            obj = getattr(module, attr)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                names.setdefault(f"{obj.__module__}.{obj.__qualname__}", obj)
    return names


def test_every_public_name_has_an_example() -> None:
    names = _public_names()
    assert len(names) > 150  # the walk found the library
    missing = [n for n, obj in names.items() if ">>>" not in (obj.__doc__ or "")]
    assert not missing, f"no example in the docstring of {missing}"


def test_what_comes_from_a_paper_cites_it() -> None:
    """The tasks, heads, losses, miners, models, metrics and statistics name their papers."""
    cited = [
        p3.tasks.Rotation, p3.tasks.Jigsaw, p3.tasks.RelativePatchLocation, p3.tasks.Exemplar, p3.tasks.CPC,
        p3.permutations.permutation_set, p3.heads.MultiPatchClassifierHead, p3.heads.CPCHead,
        p3.heads.ProjectionHead,
        p3.objectives.TripletMarginLoss, p3.objectives.InfoNCELoss, p3.objectives.BinaryCPCLoss,
        p3.objectives.BatchHardMiner, p3.objectives.SemiHardMiner, p3.objectives.DistanceWeightedMiner,
        p3.objectives.CrossBatchMemory, p3.transforms.ExemplarAugmenter, p3.transforms.foreground_crops,
        p3.models.UNetEncoder, p3.models.UNet, p3.models.DenseNetEncoder, p3.models.DenseNet,
        p3.finetune.dice_per_case, p3.finetune.quadratic_weighted_kappa, p3.finetune.DiceCELoss,
        p3.finetune.SoftDiceLoss, p3.finetune.OrdinalLoss, p3.finetune.sliding_window_inference,
        p3.finetune.pooled_mean_dice, p3.experiments.holm, p3.experiments.run_data_efficiency,
        p3.experiments.Reproduction, p3.experiments.SegmentationRecipe, p3.experiments.GradingRecipe,
        p3.data.ben_graham, p3.data.CTPreprocessing, p3.data.Task07Pancreas, p3.data.APTOS,
    ]  # fmt: skip
    missing = [o.__qualname__ for o in cited if "References:" not in (o.__doc__ or "")]  # type: ignore[attr-defined]
    assert not missing, f"no References section in the docstring of {missing}"
