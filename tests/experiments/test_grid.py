"""The grid as objects, and registries for recipes and data kinds: a user's 3D classification."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import pretext3d as p3
from pretext3d.data import DataKind, DataSpec
from pretext3d.experiments import (
    DataEfficiency,
    DataEfficiencyConfig,
    DataEfficiencyGrid,
    LabelledCases,
    Recipe,
    RunCell,
    data_efficiency,
    recipe_for,
)
from pretext3d.finetune import TrainConfig
from pretext3d.registry import register_data_kind, register_recipe


@register_recipe("classification3d-test", overwrite=True)
@dataclass
class Classification3D(Recipe):
    """A 3D classification recipe a user might add: a conv encoder and a linear head."""

    metric = "accuracy"
    encoder = "conv"
    widths: tuple[int, ...] = (4, 8)

    def encoder_options(self) -> dict[str, Any]:
        return {"widths": list(self.widths)}

    def build(self, in_channels: int, encoder_file: Any) -> tuple[nn.Module, nn.Module]:
        encoder = p3.models.ConvEncoder(3, in_channels, self.widths)
        if encoder_file is not None:
            p3.models.load_encoder_weights(encoder, encoder_file)
        return nn.Sequential(encoder, nn.Linear(self.widths[-1], 2)), encoder

    def loss(self) -> nn.Module:
        return nn.CrossEntropyLoss()

    def sample(
        self, images: Tensor, labels: Tensor, indices: list[int], batch: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        pick = torch.tensor(indices)[torch.randint(len(indices), (batch,), generator=generator)]
        return images[pick], labels[pick]

    def score_cases(
        self, model: nn.Module, images: Tensor, labels: Tensor, device: torch.device | str = "cpu"
    ) -> tuple[dict[str, float], dict[str, list[float]]]:
        with torch.no_grad():
            correct = (model(images.to(device)).argmax(1).cpu() == labels).float()
        return {"accuracy": float(correct.mean())}, {"correct": correct.tolist()}


def _bright_or_dark(spec: DataSpec) -> tuple[Tensor, Tensor, list[str]]:
    labels = torch.arange(spec.count) % 2
    images = torch.randn(
        spec.count, 1, spec.size, spec.size, spec.size, generator=torch.Generator().manual_seed(0)
    )
    return images + 2.0 * labels.view(-1, 1, 1, 1, 1), labels, [f"vol{i}" for i in range(spec.count)]


register_data_kind(
    "bright-or-dark-test",
    DataKind(
        3,
        1,
        unlabelled=lambda spec: _bright_or_dark(spec)[0],
        labelled=_bright_or_dark,
        recipe="classification3d-test",
    ),
    overwrite=True,
)


def test_a_registered_data_kind_names_its_recipe_and_the_command_runs_it(tmp_path: Path) -> None:
    spec = DataSpec(kind="bright-or-dark-test", count=20, size=8)
    assert (spec.spatial_dims, spec.in_channels, spec.recipe, spec.has_labels) == (
        3,
        1,
        "classification3d-test",
        True,
    )
    assert isinstance(recipe_for(spec), Classification3D)
    train = TrainConfig(epochs=2, steps_per_epoch=3, batch_size=4, lr=0.05)
    config = DataEfficiency(
        data=spec, methods={"scratch": ""}, output_dir=str(tmp_path / "grid"), device="cpu",
        experiment=DataEfficiencyConfig(fractions=(0.5, 1.0), split_seeds=(0, 1), train=train),
    )  # fmt: skip
    rows = data_efficiency(config)
    assert [(r["split_seed"], r["fraction"]) for r in rows] == [(0, 0.5), (0, 1.0), (1, 0.5), (1, 1.0)]
    assert all(
        0.0 <= r["test"]["accuracy"] <= 1.0 and r["test_cases"]["case_id"][0].startswith("vol") for r in rows
    )
    saved = json.loads((tmp_path / "grid" / "config.json").read_text())
    assert saved["recipe"].startswith("Classification3D(") and (tmp_path / "grid" / "summary.md").exists()


def test_unknown_data_kind_and_pretraining_only_kinds_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown data kind 'ct-phantm'; did you mean 'ct-phantom'"):
        DataSpec(kind="ct-phantm")
    pool_only = DataSpec(
        kind="volume-folder", path="scans", preprocessing={"modality": "ct"}
    )  # its encoders are fine-tuned by segmentation
    assert not pool_only.has_labels and pool_only.spatial_dims == 3 and pool_only.recipe == "segmentation"
    register_data_kind("no-recipe-test", DataKind(2, 1, unlabelled=lambda spec: []), overwrite=True)
    with pytest.raises(ValueError, match="names no fine-tuning recipe"):
        recipe_for(DataSpec(kind="no-recipe-test"))


def test_the_grid_plans_cells_claims_them_and_collects(tmp_path: Path) -> None:
    images, labels, ids = _bright_or_dark(DataSpec(kind="bright-or-dark-test", count=12, size=8))
    cases = LabelledCases(images, labels, ids, synthetic=False)
    config = DataEfficiencyConfig(
        fractions=(1.0,), split_seeds=(3,), repetitions=(0, 2), train=TrainConfig(epochs=1, steps_per_epoch=1)
    )
    grid = DataEfficiencyGrid(Classification3D(), cases, {"scratch": None}, config, tmp_path, device="cpu",
                              log=lambda line: None)  # fmt: skip
    plan = grid.plan()
    assert plan == [RunCell("scratch", 0, 3, 0, 1.0), RunCell("scratch", 0, 3, 2, 1.0)]
    assert [c.name for c in plan] == ["scratch__p0__s3__r0__f1", "scratch__p0__s3__r2__f1"]
    grid.prepare()
    with grid.claim(plan[0]) as claimed:
        assert claimed
        row = grid.run_one(plan[0])
    assert grid.done(plan[0]) and not grid.done(plan[1]) and row["repetition"] == 0
    rows = grid.run(progress=False)  # the first is kept, the second is run
    assert [r["repetition"] for r in rows] == [0, 2] and rows[0] == row
