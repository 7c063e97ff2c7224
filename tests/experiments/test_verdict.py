"""The verdict protocol: spread pretraining seeds, learning rates chosen once and frozen, the held-out
block, the cost estimate, the verdict table and figure, chance levels, workers."""

from __future__ import annotations

import dataclasses
import json
import statistics
import struct
from pathlib import Path

import pytest
import torch

import pretext3d as p3
from pretext3d.cli import main
from pretext3d.data import DataSpec
from pretext3d.diagnostics import chance_level
from pretext3d.experiments import (
    DataEfficiencyConfig,
    GradingRecipe,
    Reproduction,
    choose_learning_rates,
    held_out_block,
    holm,
    paired_differences,
    read_runs,
    run_reproduction,
    verdict_rows,
    verdict_table,
)
from pretext3d.experiments.cost import estimate_cost
from pretext3d.experiments.stats import detectable_difference
from pretext3d.finetune import TrainConfig
from pretext3d.pretrainer import PretrainConfig


def _tiny(output: Path, **changes: object) -> Reproduction:
    """A whole verdict protocol in seconds: 2 tasks x 2 pretraining seeds, a control, 3 split seeds."""
    train = TrainConfig(epochs=3, steps_per_epoch=2, batch_size=2, early_stopping_patience=1, min_epochs=1)
    config = Reproduction(
        name="tiny",
        data=DataSpec(kind="fundus-phantom", count=30, size=32),
        pretraining_data=DataSpec(kind="fundus-phantom", count=12, size=32),
        held_out=4,
        pretrain=PretrainConfig(steps=2, batch_size=4, device="cpu", eval_every=2, progress=False),
        tasks={"rotation": p3.TaskSpec(crop=0), "rpl": p3.TaskSpec(steps=3)},
        grading=GradingRecipe(growth_rate=4, block_config=(1, 1), init_features=8),
        pretraining_seeds=2,
        positive_control=16,
        calibration_seeds=(20, 21),
        experiment=DataEfficiencyConfig(
            fractions=(0.5,),
            split_seeds=(0, 1, 2),
            train=train,
            spread_pretraining_seeds=True,
            lr_search=(1e-3, 3e-3),
        ),
        output_dir=str(output),
        device="cpu",
        threads=torch.get_num_threads(),
    )
    for key, value in changes.items():
        setattr(config, key, value)
    return config


def test_choose_learning_rates_takes_the_best_mean_validation_score() -> None:
    def row(method: str, scores: dict[float, float | None]) -> dict[str, object]:
        return {"method": method, "lr_search": [{"lr": lr, "best_val": v} for lr, v in scores.items()]}

    rows = [
        row("scratch", {1e-3: 0.50, 3e-3: 0.70}),
        row("scratch", {1e-3: 0.62, 3e-3: 0.40}),  # means 0.56 and 0.55
        row("rotation", {1e-3: None, 3e-3: 0.1}),  # a failed validation counts as the worst
        row("cpc", {1e-3: 0.3, 3e-3: 0.3}),  # a tie: the first listed
    ]
    chosen = choose_learning_rates(rows)
    assert {m: c["lr"] for m, c in chosen.items()} == {"scratch": 1e-3, "rotation": 3e-3, "cpc": 1e-3}
    assert chosen["scratch"]["mean_val"] == pytest.approx({1e-3: 0.56, 3e-3: 0.55})
    assert chosen["scratch"]["runs"] == 2
    with pytest.raises(ValueError, match="has no lr_search records"):
        choose_learning_rates([{"method": "scratch"}])


def test_the_verdict_table_holds_each_blocks_paired_differences_holm_and_detectable_delta() -> None:
    def rows(shift: float) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        for split in range(5):
            for method, lead in (("scratch", 0.0), ("rotation", shift), ("exemplar", -0.02)):
                for fraction in (0.05, 0.25):
                    value = 0.5 + lead + 0.01 * ((split * 7 + len(method)) % 5) + fraction
                    out.append({"method": method, "fraction": fraction, "split_seed": split, "repetition": 0,
                                "pretraining_seed": 0, "test": {"qwk": value}})  # fmt: skip
        return out

    held, development = rows(0.1), rows(0.05)
    table = verdict_table({"held-out": held, "development": development}, "qwk").splitlines()
    assert (
        table[0].startswith("| method − scratch | fraction | held-out: Δ qwk")
        and "development: Δ qwk" in table[0]
    )
    comparisons = paired_differences(held, "qwk")
    adjusted = holm([c.p_value for c in comparisons])
    first = table[2].split(" | ")
    c = comparisons[0]
    assert first[0] == f"| {c.method}" and first[1] == f"{c.fraction:.0%}"
    assert first[2] == f"{c.mean:+.3f} [{c.low:+.3f}, {c.high:+.3f}]" and first[3] == f"{c.wins}/{c.n}"
    assert first[4] == ("< 0.001" if adjusted[0] < 0.001 else f"{adjusted[0]:.3f}")
    assert first[5] == f"±{detectable_difference(c, tests=len(comparisons)):.3f}"
    assert len(table) == 2 + 4  # two methods x two fractions
    only_held = verdict_table({"held-out": held, "development": held[:0]}, "qwk")
    assert "not run" in only_held
    # arms added later as a family of their own: Holm within each family, the first left as it was
    exemplar = [c for c in comparisons if c.method == "exemplar"]
    apart = {(c.method, c.fraction): p for c, p, _ in verdict_rows(held, "qwk", families=[["exemplar"]])}
    for c, p in zip(exemplar, holm([c.p_value for c in exemplar]), strict=True):
        assert apart[(c.method, c.fraction)] == pytest.approx(p)
    rotation = [c for c in comparisons if c.method == "rotation"]
    for c, p in zip(rotation, holm([c.p_value for c in rotation]), strict=True):
        assert apart[(c.method, c.fraction)] == pytest.approx(p)
    with pytest.raises(ValueError, match=r"holm_families\[0\] must list methods"):
        _tiny(Path("unused"), holm_families=(("mim",),)).__post_init__()


def test_spread_pretraining_seeds_give_split_seed_i_the_encoder_i_mod_n() -> None:
    config = DataEfficiencyConfig(split_seeds=(100, 101, 102, 103, 104), spread_pretraining_seeds=True)
    assert [list(config.pretraining_seeds_for(s, 3)) for s in config.split_seeds] == [[0], [1], [2], [0], [1]]
    assert [list(config.pretraining_seeds_for(s, 1)) for s in config.split_seeds[:2]] == [[0], [0]]
    every = DataEfficiencyConfig(split_seeds=(0, 1))
    assert list(every.pretraining_seeds_for(1, 3)) == [0, 1, 2]
    with pytest.raises(ValueError, match=r"learning_rates\['rotation'\] must be a learning rate > 0"):
        DataEfficiencyConfig(learning_rates={"rotation": 0.0})


def test_calibration_chooses_each_methods_rate_once_and_the_held_out_block_runs_it_frozen(
    tmp_path: Path,
) -> None:
    out = tmp_path / "demo"
    lines: list[str] = []
    run_reproduction(_tiny(out), progress=False, log=lines.append)
    saved = json.loads((out / "learning_rates.json").read_text())
    rates = saved["learning_rates"]
    assert saved["frozen_in_config"] == {} and saved["chosen"]["calibration_seeds"] == [20, 21]
    assert set(rates) == {"scratch", "rotation", "rpl", "supervised"} and set(rates.values()) <= {1e-3, 3e-3}
    # chosen on the calibration seeds' validation scores alone
    calibration = read_runs(out / "calibration")
    assert {r["split_seed"] for r in calibration} == {20, 21} and all(r["lr_search"] for r in calibration)
    assert {m: c["lr"] for m, c in choose_learning_rates(calibration).items()} == rates
    assert any(
        line.startswith("learning rates (in") and "[experiment.learning_rates]" in line for line in lines
    )
    # the grid: every run at its method's rate, one pretraining seed per split seed (i mod 2), no search
    rows = read_runs(out)
    assert all(r["train"]["lr"] == rates[r["method"]] and "lr_search" not in r for r in rows)
    assert {(r["split_seed"], r["pretraining_seed"]) for r in rows if r["method"] == "rotation"} == {
        (0, 0), (1, 1), (2, 0)
    }  # fmt: skip
    assert all(r["pretraining_seed"] == 0 for r in rows if r["method"] == "scratch") and len(rows) == 12
    # the rpl encoder pretrained for its own steps
    record = p3.provenance.read_pretraining_record(out / "encoders" / "rpl_p0.pt")
    assert record is not None and record["steps"] == 3
    # freezing the chosen rates in the config continues the same folder: nothing runs again
    frozen = _tiny(out)
    frozen.experiment = dataclasses.replace(frozen.experiment, learning_rates=rates)
    stamps = sorted(p.stat().st_mtime_ns for p in (out / "runs").glob("*.json"))
    run_reproduction(frozen, progress=False, log=lambda _: None)
    assert sorted(p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")) == stamps

    held = held_out_block(_tiny(out))
    assert held.experiment.learning_rates == rates and held.experiment.lr_search == ()
    assert held.calibration_seeds == () and held.experiment.split_seeds == (100, 101, 102)
    run_reproduction(held, progress=False, log=lambda _: None)
    held_rows = read_runs(held.output_dir)
    assert all(r["train"]["lr"] == rates[r["method"]] for r in held_rows)
    assert not Path(held.output_dir, "calibration").exists()
    verdict = Path(held.output_dir, "verdict.md").read_text()
    assert "held-out (100-102): Δ qwk" in verdict and "development: Δ qwk" in verdict
    assert Path(held.output_dir, "verdict.png").is_file()


def test_the_held_out_block_needs_the_frozen_rates_and_new_pretraining_seeds(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"have none: run the development block first"):
        held_out_block(_tiny(tmp_path / "never-run"))
    frozen = _tiny(tmp_path / "x")
    frozen.experiment = DataEfficiencyConfig(
        split_seeds=(0, 10),
        lr_search=(1e-3,),
        learning_rates={m: 1e-3 for m in ("scratch", "rotation", "rpl", "supervised")},
    )
    assert held_out_block(frozen).experiment.learning_rates["rpl"] == 1e-3
    with pytest.raises(ValueError, match="would reuse development pretraining seeds"):
        held_out_block(frozen, offset=1)
    with pytest.raises(ValueError, match=r"calibration_seeds \[0\] are also experiment.split_seeds"):
        Reproduction(
            experiment=DataEfficiencyConfig(split_seeds=(0, 1), lr_search=(1e-3,)), calibration_seeds=(0,)
        )
    with pytest.raises(ValueError, match=r"set experiment\.lr_search"):
        Reproduction(calibration_seeds=(20,))


def test_the_cost_estimate_counts_what_is_left_and_measures_it_here(tmp_path: Path) -> None:
    config = _tiny(tmp_path / "cost")
    cost = estimate_cost(config, workers=2)
    # 2 tasks x 2 pretraining seeds + 2 controls; calibration: 2 seeds x 4 methods x 2 rates; grid: 3 x 4
    assert (cost.encoders, cost.calibration_runs, cost.grid_runs, cost.done_runs) == (6, 16, 12, 0)
    assert cost.epoch_seconds > 0 and cost.pretraining_seconds > 0 and cost.epochs == (1, 2, 3)
    assert cost.seconds("fewest") <= cost.seconds() <= cost.seconds("most")
    assert cost.seconds() == pytest.approx(
        (cost.pretraining_seconds + (16 + 12) * 2 * cost.epoch_seconds) / 2
    )  # fmt: skip
    assert "to do: 6 encoder(s)" in str(cost) and "with 2 workers" in str(cost)
    run_reproduction(config, progress=False, log=lambda _: None)
    done = estimate_cost(config)
    assert (done.encoders, done.calibration_runs, done.grid_runs, done.done_runs) == (0, 0, 0, 12)
    assert done.seconds() == 0
    # a block after it (the held-out one) takes its likely run from the finished runs' seconds
    later = dataclasses.replace(config, output_dir=str(tmp_path / "later"), development_dir=config.output_dir)
    informed = estimate_cost(later)
    seconds = [float(r["seconds"]) for r in read_runs(config.output_dir)]
    assert informed.measured_runs == 12 and informed.run_seconds == pytest.approx(statistics.fmean(seconds))
    assert "the mean of 12 finished runs" in str(informed)


def test_the_cli_estimates_and_runs_a_reproduction_with_two_workers_as_one_would(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (
        'name = "cli"\ndevice = "cpu"\nheld_out = 2\nthreads = 1\n'
        '[data]\nkind = "fundus-phantom"\ncount = 20\nsize = 32\n'
        '[pretraining_data]\nkind = "fundus-phantom"\ncount = 8\nsize = 32\n'
        '[pretrain]\nsteps = 2\nbatch_size = 2\ndevice = "cpu"\nprogress = false\n'
        "[grading]\ngrowth_rate = 4\nblock_config = [1, 1]\ninit_features = 8\n"
        "[tasks.rotation]\ncrop = 0\n[tasks.rpl]\n"
        "[experiment]\nfractions = [0.5, 1.0]\nsplit_seeds = [0, 1]\n"
        "[experiment.train]\nepochs = 2\nsteps_per_epoch = 2\nbatch_size = 2\n"
    )
    config = tmp_path / "r.toml"
    config.write_text(text)
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["reproduce", "--config", str(config), "--set", f'output_dir="{one}"', "--estimate"]) == 0
    assert "to do: 2 encoder(s)" in capsys.readouterr().out and not one.exists()
    assert main(["reproduce", "--config", str(config), "--set", f'output_dir="{one}"']) == 0
    assert main(["reproduce", "--config", str(config), "--set", f'output_dir="{two}"', "--workers", "2"]) == 0
    assert "worker 1 started" in capsys.readouterr().out
    assert (tmp_path / "two-worker1.log").is_file()
    first, second = read_runs(one), read_runs(two)
    assert [(r["method"], r["split_seed"], r["fraction"]) for r in first] == [
        (r["method"], r["split_seed"], r["fraction"]) for r in second
    ]
    assert [r["test"] for r in first] == [r["test"] for r in second]  # the same results, by other workers
    assert main(["reproduce", "--config", str(config), "--workers", "0"]) == 2


def test_chance_levels_of_the_exemplar_and_cpc_match_guessing() -> None:
    generator = torch.Generator().manual_seed(0)
    task = p3.tasks.Exemplar(2)
    batch = 6
    targets = torch.arange(batch).repeat(2)  # two views per image, as the task's targets
    embeddings = [torch.randn(2 * batch, 8, generator=generator) for _ in range(3000)]
    hits = [float(task.accuracy(torch.nn.functional.normalize(e, dim=1), targets)) for e in embeddings]
    assert sum(hits) / len(hits) == pytest.approx(chance_level(task, batch), abs=0.01)
    assert chance_level(task, batch) == pytest.approx(1 / 11)
    cpc = p3.tasks.CPC(3, grid=4, patch=8, steps=2, code_dim=16)
    output = torch.randn(
        2, batch, 2, 3, 4, 4, 16, generator=generator
    )  # the head's (2, B, steps, g-1, g, g, D)
    candidates = [len(t) for _, t in cpc.pairs(output)]
    assert candidates == [batch * 3 * 16, batch * 2 * 16]
    assert chance_level(cpc, batch) == pytest.approx(sum(1 / c for c in candidates) / 2)
    guesses = [
        float(cpc.accuracy(torch.randn(2, batch, 2, 3, 4, 4, 16, generator=generator))) for _ in range(200)
    ]
    assert sum(guesses) / len(guesses) == pytest.approx(chance_level(cpc, batch), rel=0.5)
    assert chance_level(p3.tasks.Rotation(3), batch) == 0.1 and chance_level(task) is None


def _png_width(path: Path) -> int:
    with path.open("rb") as f:
        header = f.read(24)
    return int(struct.unpack(">I", header[16:20])[0])


def test_the_figure_draws_our_curve_of_the_papers_metric_only_when_it_is_not_the_first_panel(
    tmp_path: Path,
) -> None:
    from tests.conftest import result_row

    figures = {}
    for metric, extra in (("qwk", {}), ("pancreas_dice", {"pooled_mean_dice_3class": 0.5})):
        rows = []
        for split in range(3):
            for method in ("scratch", "rotation"):
                row = result_row(method, 0.05, split, 0.4 + 0.01 * split)
                row["test"] = {metric: 0.4 + 0.01 * split, **extra}
                row.update(seconds=1.0, pretraining_seed=0, train={}, history=[])
                rows.append(row)
        folder = tmp_path / metric
        p3.experiments.write_report(rows, folder, metric, synthetic=True)
        figures[metric] = _png_width(folder / "data_efficiency.png")
    # kappa: three panels (ours, the differences, the paper's); the pancreas: ours in the paper's metric too
    assert figures["qwk"] == round((5.2 * 3 + 2.5) * 110)
    assert figures["pancreas_dice"] == round((5.2 * 4 + 2.5) * 110)


def test_the_verdict_protocol_runs_on_your_labelled_images_with_your_encoder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("PIL")
    from tests.experiments.test_labelled_images import _table

    root = _table(tmp_path / "photos", count=30, unlabelled=8)
    config = tmp_path / "mine.toml"
    config.write_text(
        f'name = "my photographs"\noutput_dir = "{tmp_path / "mine"}"\ndevice = "cpu"\nthreads = 1\n'
        "held_out = 2\npretraining_seeds = 2\ncalibration_seeds = [20]\n"
        f'[data]\nkind = "labelled-image-folder"\npath = "{root}"\nsize = 16\n'
        f'[pretraining_data]\nkind = "labelled-image-folder"\npath = "{root}"\nsize = 16\n'
        '[pretrain]\nsteps = 2\nbatch_size = 2\ndevice = "cpu"\nprogress = false\n'
        '[classification]\nbackbone = "conv"\nbackbone_options = { widths = [4, 8] }\n'
        "[tasks.rotation]\n"
        "[experiment]\nfractions = [0.5]\nsplit_seeds = [0, 1]\nspread_pretraining_seeds = true\n"
        "lr_search = [0.001, 0.003]\n"
        "[experiment.train]\nepochs = 2\nsteps_per_epoch = 2\nbatch_size = 2\n"
    )
    assert main(["reproduce", "--config", str(config)]) == 0
    assert main(["reproduce", "--config", str(config), "--verdict"]) == 0
    out = capsys.readouterr().out
    assert "to do:" in out and "[experiment.learning_rates]" in out
    held = read_runs(tmp_path / "mine-verdict")
    assert {r["split_seed"] for r in held} == {100, 101} and {r["method"] for r in held} == {
        "scratch",
        "rotation",
    }
    rates = json.loads((tmp_path / "mine" / "learning_rates.json").read_text())["learning_rates"]
    assert all(r["train"]["lr"] == rates[r["method"]] for r in held)
    assert "balanced_accuracy" in (tmp_path / "mine-verdict" / "verdict.md").read_text()
