"""Progress and hooks: both training loops hand every metric row to callbacks; one clean bar."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import pretext3d as p3
from pretext3d.finetune import TrainConfig, Trainer
from pretext3d.pretrainer import PretrainConfig, Pretrainer


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


def test_progress_into_a_log_file_is_a_line_every_few_percent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Standard error is not a terminal under pytest, as in a log file: no redraws, 20 lines at most."""
    data = p3.data.PhantomImages("ct", count=4, size=16)
    config = PretrainConfig(steps=100, batch_size=2, device="cpu", shortcut_check=0, progress=True,
                            log_every=50, checkpoint_every=100)  # fmt: skip
    encoder = p3.models.ConvEncoder(3, widths=(2, 4))
    Pretrainer(encoder, p3.tasks.Rotation(3), data, config, tmp_path / "e.pt", log=lambda line: None).fit()
    lines = capsys.readouterr().err.splitlines()
    assert "\r" not in "".join(lines)
    assert [line.split(":")[1].split()[0] for line in lines] == [f"{n}/100" for n in range(5, 101, 5)]
    assert "acc_rotation=" in lines[-1] and "loss=" in lines[-1]  # smoothed values, per task


def test_ctrl_c_says_where_it_stopped_and_how_to_resume(tmp_path: Path, spatial_dims: int) -> None:
    kind = "ct" if spatial_dims == 3 else "fundus"
    data = p3.data.PhantomImages(kind, count=4, size=16)
    config = PretrainConfig(steps=10, batch_size=2, device="cpu", shortcut_check=0, progress=False,
                            log_every=1, checkpoint_every=2)  # fmt: skip

    def interrupt(row: Any) -> None:
        if row["step"] == 5:
            raise KeyboardInterrupt

    lines: list[str] = []
    encoder = p3.models.ConvEncoder(spatial_dims, in_channels=data[0].shape[0], widths=(2, 4))
    run = Pretrainer(encoder, p3.tasks.Rotation(spatial_dims), data, config, tmp_path / "e.pt",
                     log=lines.append, callbacks=[interrupt])  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        run.fit()
    checkpoint = tmp_path / "e.pt.run" / "checkpoint.pt"
    assert lines[-1] == (
        f"stopped at step 5 of 10; the last checkpoint is at step 4 ({checkpoint}); "
        "rerun the same command to resume"
    )
    early: list[str] = []
    config = PretrainConfig(steps=10, batch_size=2, device="cpu", shortcut_check=0, progress=False,
                            log_every=1, checkpoint_every=8)  # fmt: skip
    run = Pretrainer(encoder, p3.tasks.Rotation(spatial_dims), data, config, tmp_path / "f.pt",
                     log=early.append, callbacks=[interrupt])  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        run.fit()
    assert "no checkpoint yet (the first is due at step 8)" in early[-1]


def test_ctrl_c_in_the_command_line_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pretext3d import cli

    def interrupted(config: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "pretrain", (cli.COMMANDS["pretrain"][0], interrupted))
    assert cli.main(["pretrain", "--defaults"]) == 130
    err = capsys.readouterr().err
    assert err == "pretext3d pretrain: interrupted; rerun the same command to resume\n"


def test_the_grid_says_what_a_ctrl_c_kept(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images, grades = p3.data.fundus_phantom_batch(24, 32)
    recipe = p3.experiments.GradingRecipe(growth_rate=4, block_config=(1, 1), init_features=8)
    config = p3.experiments.DataEfficiencyConfig(
        fractions=(0.5, 1.0), split_seeds=(0,), train=TrainConfig(epochs=1, steps_per_epoch=1, batch_size=4)
    )
    runs = {"n": 0}

    def stop_in_the_second(record: Any) -> None:
        runs["n"] += 1
        if runs["n"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "fit", _fit_calling(stop_in_the_second))
        p3.experiments.run_data_efficiency(
            recipe, images, grades, {"scratch": None}, config, tmp_path / "g", progress=False
        )
    out = capsys.readouterr().out
    assert f"stopped: 1 of 2 runs finished and kept in {tmp_path / 'g'}; rerun the same command" in out


def _fit_calling(hook: Any) -> Any:
    fit = Trainer.fit

    def wrapped(self: Trainer) -> Any:
        hook(None)
        return fit(self)

    return wrapped
