"""Progress and hooks: both training loops hand every metric row to callbacks; one clean bar."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import pretext3d as p3
from pretext3d.finetune import TrainConfig, Trainer


def _classifier() -> tuple[torch.nn.Module, Any, Any]:
    torch.manual_seed(0)
    model = p3.models.DenseNet(2, 1, 2, growth_rate=4, block_config=(1,), init_features=8)
    x, y = torch.randn(8, 1, 16, 16), torch.tensor([0, 1] * 4)

    def sample(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.randint(0, 8, (4,), generator=generator)
        return x[index], y[index]

    return model, sample, lambda m: float((m(x).argmax(1) == y).float().mean())


def test_the_trainer_hands_each_epoch_to_callbacks_and_shows_a_bar(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, sample, validate = _classifier()
    rows: list[dict[str, Any]] = []
    config = TrainConfig(epochs=3, steps_per_epoch=2)
    trainer = Trainer(model, torch.nn.functional.cross_entropy, sample, config, validate=validate,
                      callbacks=[lambda r: rows.append(dict(r))], progress=True)  # fmt: skip
    history = trainer.fit()
    assert rows == history and [r["epoch"] for r in rows] == [0, 1, 2] and "val" in rows[0]
    assert "fine-tuning epochs" in capsys.readouterr().err  # the bar (tqdm writes to stderr)

    def stop_after_two(row: Any) -> None:  # a callback stops a run by raising; rerun resumes
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    model, sample, validate = _classifier()
    with pytest.raises(KeyboardInterrupt):
        Trainer(model, torch.nn.functional.cross_entropy, sample, config, validate=validate,
                checkpoint=tmp_path / "run.pt", callbacks=[stop_after_two]).fit()  # fmt: skip
    model, sample, validate = _classifier()
    resumed = Trainer(model, torch.nn.functional.cross_entropy, sample, config, validate=validate,
                      checkpoint=tmp_path / "run.pt").fit()  # fmt: skip
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in history])


def test_the_pretrainer_hands_every_metric_row_to_callbacks(tmp_path: Path) -> None:
    rows: list[dict[str, Any]] = []
    config = p3.pretrainer.PretrainConfig(steps=4, batch_size=2, log_every=2, eval_every=2, device="cpu",
                                          progress=False)  # fmt: skip
    images = p3.data.PhantomImages("ct", 6, 32)
    trainer = p3.pretrainer.Pretrainer(
        p3.models.UNetEncoder(3, widths=(8, 16)), p3.tasks.Rotation(3), images, config, tmp_path / "e.pt",
        held_out=p3.data.PhantomImages("ct", 2, 32, first=10), log=lambda s: None,
        callbacks=[lambda r: rows.append(dict(r))],
    )  # fmt: skip
    trainer.fit()
    assert [r["step"] for r in rows if "loss/rotation" in r] == [2, 4]
    assert [r["step"] for r in rows if "held_out_accuracy/rotation" in r] == [2, 4]
    assert rows == trainer.metrics.rows()  # exactly what the metrics log holds


def test_the_grid_has_one_bar_that_moves_within_runs_and_lines_above_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images, grades = p3.data.fundus_phantom_batch(24, 32)
    recipe = p3.experiments.GradingRecipe(growth_rate=4, block_config=(1, 1), init_features=8)
    config = p3.experiments.DataEfficiencyConfig(
        fractions=(1.0,), split_seeds=(0,), train=TrainConfig(epochs=2, steps_per_epoch=1, batch_size=4)
    )
    p3.experiments.run_data_efficiency(recipe, images, grades, {"scratch": None}, config, tmp_path / "g")
    captured = capsys.readouterr()
    assert "epoch 2/2, val" in captured.err  # the bar's text names the run and its epoch
    assert "scratch__p0__s0__r0__f1: qwk" in captured.out  # the run's line, written above the bar
