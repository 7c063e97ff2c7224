"""Every ``>>>`` example in a docstring of the library runs and prints what it says."""

from __future__ import annotations

import doctest
import importlib
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
    module: ModuleType = importlib.import_module(name)
    torch.manual_seed(0)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, name, globs={"torch": torch, "p3": p3, **vars(module)}):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples of {name} failed"


def test_the_core_api_has_examples() -> None:
    """The names a new user meets first each show a runnable example."""
    core = [
        p3.tasks.Rotation, p3.tasks.Jigsaw, p3.tasks.RelativePatchLocation, p3.tasks.Exemplar, p3.tasks.CPC,
        p3.PretextModel, p3.models.UNetEncoder, p3.models.UNet, p3.models.DenseNet121, p3.permutation_set,
        p3.objectives.TripletMarginLoss, p3.objectives.InfoNCELoss, p3.objectives.BatchHardMiner,
        p3.transforms.random_crops, p3.finetune.sliding_window_inference, p3.finetune.dice_per_case,
        p3.finetune.quadratic_weighted_kappa, p3.models.save_encoder, p3.pretrainer.Pretrainer,
        p3.heads.ClassifierHead, p3.heads.MultiPatchClassifierHead, p3.heads.ProjectionHead,
        p3.transforms.ExemplarAugmenter, p3.data.ct_phantom, p3.data.fundus_phantom,
        p3.experiments.split_cases, p3.experiments.nested_subsets, p3.experiments.holm,
        p3.finetune.DiceCELoss, p3.models.DenseNetEncoder, p3.models.ConvEncoder,
        p3.models.load_encoder_weights,
    ]  # fmt: skip
    missing = [getattr(o, "__qualname__", str(o)) for o in core if ">>>" not in (o.__doc__ or "")]
    assert not missing, f"no example in the docstring of {missing}"
