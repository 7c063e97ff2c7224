"""Fine-tuning: metric parity, losses, subsets, the trainer, the data-efficiency runner, the CLI."""

from __future__ import annotations

import itertools
import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from monai.metrics import DiceMetric
from sklearn.metrics import cohen_kappa_score
from torch import nn

import pretext3d as p3
from pretext3d.cli import main
from pretext3d.finetune import (
    DataEfficiencyConfig,
    DiceCELoss,
    GradingRecipe,
    OrdinalLoss,
    SegmentationRecipe,
    SoftDiceLoss,
    TrainConfig,
    Trainer,
    dice_per_case,
    nested_subsets,
    ordinal_decode,
    ordinal_encode,
    paper_curves,
    pooled_mean_dice,
    quadratic_weighted_kappa,
    region_dice,
    run_data_efficiency,
    split_cases,
    summarize,
    write_report,
)

# --- metrics -------------------------------------------------------------------------


@given(seed=st.integers(0, 10_000), classes=st.integers(2, 4), cases=st.integers(1, 4))
def test_dice_per_case_matches_monai(seed: int, classes: int, cases: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    pred = torch.randint(classes, (cases, 5, 6, 4), generator=gen)
    target = torch.randint(classes, (cases, 5, 6, 4), generator=gen)
    target[0][target[0] == classes - 1] = 0  # an empty class in case 0: NaN in both
    ours = dice_per_case(pred, target, classes)
    onehot = lambda x: torch.nn.functional.one_hot(x, classes).movedim(-1, 1).float()  # noqa: E731
    reference = DiceMetric(include_background=False, reduction="none")(onehot(pred), onehot(target))
    assert ours.shape == (cases, classes - 1)
    assert torch.allclose(ours, reference.double(), equal_nan=True)
    assert torch.isnan(ours[0, -1])


def test_dice_and_regions_by_hand() -> None:
    target = torch.tensor([[0, 1, 1, 2, 2, 0]])
    pred = torch.tensor([[0, 1, 2, 2, 0, 1]])
    dice = dice_per_case(pred, target, 3)
    assert dice[0, 0].item() == pytest.approx(2 * 1 / (2 + 2))  # class 1: |P|=2, |T|=2, overlap 1
    assert dice[0, 1].item() == pytest.approx(2 * 1 / (2 + 2))  # class 2
    regions = region_dice(pred, target)
    assert regions["pancreas"].item() == pytest.approx(2 * 3 / (4 + 4))  # {1,2}: overlap at 1,2,3
    assert regions["tumour"].item() == pytest.approx(0.5)
    # pooled over cases, background included: class 0 |P|=2 |T|=2 overlap 1
    assert pooled_mean_dice(pred, target, 3) == pytest.approx((0.5 + 0.5 + 0.5) / 3)
    assert math.isnan(region_dice(pred, torch.zeros_like(target))["tumour"].item())


@given(seed=st.integers(0, 10_000), n=st.integers(2, 60), classes=st.integers(2, 6))
def test_kappa_matches_scikit_learn(seed: int, n: int, classes: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    pred = torch.randint(classes, (n,), generator=gen)
    target = torch.randint(classes, (n,), generator=gen)
    ours = quadratic_weighted_kappa(pred, target, classes)
    with warnings.catch_warnings():  # scikit-learn warns where it returns NaN
        warnings.simplefilter("ignore")
        theirs = cohen_kappa_score(
            target.numpy(), pred.numpy(), weights="quadratic", labels=list(range(classes))
        )
    assert ours == pytest.approx(theirs, abs=1e-9, nan_ok=True)


def test_kappa_by_hand() -> None:
    assert quadratic_weighted_kappa(torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 2, 3]), 5) == 1.0
    # two raters swapping 0 and 4 disagree maximally
    assert quadratic_weighted_kappa(torch.tensor([4, 0]), torch.tensor([0, 4]), 5) == pytest.approx(-1.0)
    assert math.isnan(quadratic_weighted_kappa(torch.tensor([2, 2]), torch.tensor([2, 2]), 5))
    with pytest.raises(TypeError, match="integer grades"):
        quadratic_weighted_kappa(torch.tensor([0.5]), torch.tensor([1.0]), 5)


# --- losses --------------------------------------------------------------------------


def test_soft_dice_by_hand_and_weights() -> None:
    logits = torch.tensor([[[5.0, -5.0], [-5.0, 5.0], [-5.0, -5.0]]]).permute(0, 1, 2)  # (1, 3, 2)
    target = torch.tensor([[0, 1]])
    probs = logits.softmax(1)
    d1 = (2 * probs[0, 1, 1] + 1e-5) / (probs[0, 1].sum() + 1 + 1e-5)
    d2 = (0 + 1e-5) / (probs[0, 2].sum() + 0 + 1e-5)
    assert SoftDiceLoss(3).per_class(logits, target).tolist() == pytest.approx(
        [d1.item(), d2.item()], rel=1e-5
    )
    assert SoftDiceLoss(3)(logits, target).item() == pytest.approx(1 - (d1 + d2).item() / 2, rel=1e-5)
    weighted = SoftDiceLoss(3, weights=[3.0, 1.0])(logits, target).item()
    assert weighted == pytest.approx(1 - (0.75 * d1 + 0.25 * d2).item(), rel=1e-5)
    assert len(SoftDiceLoss(3, include_background=True).per_class(logits, target)) == 3
    both = DiceCELoss(3)(logits, target)
    assert both.item() == pytest.approx(
        SoftDiceLoss(3)(logits, target).item() + nn.functional.cross_entropy(logits, target).item()
    )
    with pytest.raises(ValueError, match="weights must be 2 non-negative numbers"):
        SoftDiceLoss(3, weights=[1.0])


def test_ordinal_encoding() -> None:
    grades = torch.tensor([0, 1, 2, 3, 4])
    codes = ordinal_encode(grades, 5)
    assert codes.tolist() == [[0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    assert torch.equal(ordinal_decode(codes * 20 - 10), grades)
    logits = torch.randn(5, 4)
    expected = nn.functional.binary_cross_entropy_with_logits(logits, codes)
    assert OrdinalLoss(5)(logits, grades).item() == pytest.approx(expected.item())


# --- subsets -------------------------------------------------------------------------


@given(count=st.integers(8, 200), seed=st.integers(0, 1000), split_seed=st.integers(0, 1000))
def test_subsets_are_nested_and_the_test_set_is_fixed(count: int, seed: int, split_seed: int) -> None:
    split = split_cases(count, 0.15, 0.25, split_seed)
    assert sorted(split.train + split.val + split.test) == list(range(count))
    assert split == split_cases(count, 0.15, 0.25, split_seed)  # fixed across methods and fractions
    fractions = (0.05, 0.1, 0.25, 0.5, 1.0)
    subsets = nested_subsets(split.train, fractions, seed)
    for small, large in itertools.pairwise(fractions):
        assert set(subsets[small]) <= set(subsets[large])
    assert sorted(subsets[1.0]) == sorted(split.train)
    assert all(len(s) >= 1 for s in subsets.values())
    assert not set(subsets[1.0]) & (set(split.val) | set(split.test))


# --- trainer -------------------------------------------------------------------------


def _toy_problem(seed: int = 0) -> tuple[nn.Module, nn.Module, object]:
    torch.manual_seed(seed)
    encoder = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
    model = nn.Sequential(encoder, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    x = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(1234))  # the same data always
    y = (x.mean((1, 2, 3)) > 0).long()

    def sample(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(32, (8,), generator=gen)
        return x[idx], y[idx]

    return model, encoder, sample


def test_freeze_schedule_really_freezes() -> None:
    model, encoder, sample = _toy_problem()
    config = TrainConfig(epochs=4, steps_per_epoch=3, freeze_encoder_epochs=2, lr=0.05)
    trainer = Trainer(model, nn.functional.cross_entropy, sample, config, encoder=encoder)  # type: ignore[arg-type]
    start = {k: v.clone() for k, v in encoder.state_dict().items()}
    head_start = model[3].weight.clone()
    trainer.config = TrainConfig(epochs=2, steps_per_epoch=3, freeze_encoder_epochs=2, lr=0.05)
    trainer.fit()
    for k, v in encoder.state_dict().items():  # weights and batch-norm statistics untouched
        assert torch.equal(v, start[k]), k
    assert not torch.equal(model[3].weight, head_start)
    assert all(h["encoder_frozen"] for h in trainer.history)
    trainer.config = config
    trainer.fit()
    assert not torch.equal(encoder[0].weight, start["0.weight"])
    assert not torch.equal(encoder[1].running_mean, start["1.running_mean"])
    assert [h["encoder_frozen"] for h in trainer.history] == [True, True, False, False]
    # Adam's moments of the encoder start at unfreezing: 6 steps, not 12
    assert int(trainer.optimizer.state[encoder[0].weight]["step"]) == 6
    assert int(trainer.optimizer.state[model[3].weight]["step"]) == 12


def test_resume_after_a_crash_gives_the_same_weights(tmp_path: Path) -> None:
    config = TrainConfig(epochs=4, steps_per_epoch=3, freeze_encoder_epochs=1, lr=0.05)
    model, encoder, sample = _toy_problem()
    Trainer(model, nn.functional.cross_entropy, sample, config, encoder=encoder).fit()  # type: ignore[arg-type]
    reference = {k: v.clone() for k, v in model.state_dict().items()}

    calls = {"n": 0}
    model, encoder, sample = _toy_problem()

    def crashing(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        calls["n"] += 1
        if calls["n"] == 8:  # in the third epoch
            raise KeyboardInterrupt
        return sample(gen)  # type: ignore[operator,no-any-return]

    checkpoint = tmp_path / "run.pt"
    with pytest.raises(KeyboardInterrupt):
        Trainer(
            model, nn.functional.cross_entropy, crashing, config, encoder=encoder, checkpoint=checkpoint
        ).fit()
    model, encoder, sample = _toy_problem(seed=99)  # a fresh process: other random weights
    resumed = Trainer(
        model, nn.functional.cross_entropy, sample, config, encoder=encoder, checkpoint=checkpoint
    )  # type: ignore[arg-type]
    assert resumed.epoch == 2
    history = resumed.fit()
    assert [h["epoch"] for h in history] == [0, 1, 2, 3]
    for k, v in model.state_dict().items():
        assert torch.allclose(v.float(), reference[k].float()), k
    with pytest.raises(ValueError, match="written with other settings"):
        Trainer(model, nn.functional.cross_entropy, sample, TrainConfig(epochs=5), checkpoint=checkpoint)  # type: ignore[arg-type]


def test_early_stopping_restores_the_best_weights() -> None:
    model, _encoder, sample = _toy_problem()
    scores = iter([0.5, 0.9, 0.4, 0.3, 0.2, 0.1])
    snapshots: list[torch.Tensor] = []

    def validate(m: nn.Module) -> float:
        snapshots.append(m[3].weight.clone())
        return next(scores)

    config = TrainConfig(epochs=6, steps_per_epoch=2, early_stopping_patience=2, lr=0.05, autocast="bf16")
    history = Trainer(model, nn.functional.cross_entropy, sample, config, validate=validate).fit()  # type: ignore[arg-type]
    assert len(history) == 4  # best at epoch 1, then two epochs without improvement
    assert torch.equal(model[3].weight, snapshots[1])


def test_train_config_errors() -> None:
    with pytest.raises(ValueError, match=r"freeze_encoder_epochs must lie in \[0, epochs=2\]"):
        TrainConfig(epochs=2, freeze_encoder_epochs=3)
    with pytest.raises(ValueError, match="optimizer must be 'adam' or 'adamw'"):
        TrainConfig(optimizer="sgd")  # type: ignore[arg-type]


# --- the runner ----------------------------------------------------------------------

SMALL_TRAIN = TrainConfig(epochs=2, steps_per_epoch=2, batch_size=2, freeze_encoder_epochs=1)


def test_runner_resumes_without_repeating_or_losing_runs(tmp_path: Path) -> None:
    images, grades = p3.data.fundus_phantom_batch(24, 32, seed=0)
    recipe = GradingRecipe(block_config=(1, 1), growth_rate=4, init_features=8)
    config = DataEfficiencyConfig(fractions=(0.5, 1.0), repetitions=2, train=SMALL_TRAIN)
    encoder = p3.models.DenseNetEncoder(2, 3, growth_rate=4, block_config=(1, 1), init_features=8)
    p3.models.save_encoder(encoder, tmp_path / "enc.pt")
    (tmp_path / "enc.pt.json").write_text(json.dumps({"pretext_accuracy": 0.5}))
    methods = {"scratch": None, "pre": tmp_path / "enc.pt"}

    full = run_data_efficiency(
        recipe, images, grades, methods, config, tmp_path / "full", progress=False, log=lambda s: None
    )

    finished: list[str] = []

    def crash_after_three(line: str) -> None:
        if ":" in line and "__" in line:
            finished.append(line)
            if len(finished) == 3:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_data_efficiency(
            recipe, images, grades, methods, config, tmp_path / "out", progress=False, log=crash_after_three
        )
    runs = sorted(p.name for p in (tmp_path / "out" / "runs").glob("*.json"))
    assert len(runs) == 3
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out" / "runs").glob("*.json")}
    lines: list[str] = []
    rows = run_data_efficiency(
        recipe, images, grades, methods, config, tmp_path / "out", progress=False, log=lines.append
    )
    assert "8 runs, 3 already done" in lines[0]
    assert len(rows) == 8 and len({(r["method"], r["fraction"], r["repetition"]) for r in rows}) == 8
    for p in (tmp_path / "out" / "runs").glob("*.json"):  # finished runs were not redone
        if p.name in before:
            assert p.stat().st_mtime_ns == before[p.name]
    assert [r["test"] for r in rows] == [r["test"] for r in full]  # same numbers as without the crash
    assert {r["pretext_accuracy"] for r in rows if r["method"] == "pre"} == {0.5}
    # same budget and subsets for every method: within a cell only the encoder differs
    cell = {(r["fraction"], r["repetition"]): r["n_labelled"] for r in rows if r["method"] == "scratch"}
    assert all(cell[(r["fraction"], r["repetition"])] == r["n_labelled"] for r in rows)
    assert {r["steps"] for r in rows} == {4}
    files = write_report(rows, tmp_path / "out", "qwk", synthetic=True)
    assert {f.name for f in files} >= {"results.csv", "results.json", "summary.md", "data_efficiency.png"}
    assert "SYNTHETIC" in (tmp_path / "out" / "summary.md").read_text()
    with pytest.raises(ValueError, match="holds runs of other settings"):
        other = DataEfficiencyConfig(fractions=(0.5,), repetitions=1, train=SMALL_TRAIN)
        run_data_efficiency(
            recipe, images, grades, methods, other, tmp_path / "out", progress=False, log=lambda s: None
        )


def test_segmentation_recipe_samples_foreground_and_evaluates() -> None:
    images, labels = p3.data.ct_phantom_batch(4, 32, seed=1)
    recipe = SegmentationRecipe(crop=16, foreground_oversampling=1.0)
    gen = torch.Generator().manual_seed(0)
    x, y = recipe.sample(images, labels, [0, 1, 2, 3], 6, gen)
    assert x.shape == (6, 1, 16, 16, 16) and y.shape == (6, 16, 16, 16)
    assert all((yi > 0).any() for yi in y)  # every crop holds pancreas
    model, _ = recipe.build(1, None)
    metrics = recipe.evaluate(model, images[:2, :, :30, :30, :30], labels[:2, :30, :30, :30])  # padded to 32
    assert set(metrics) == {
        "pancreas_dice",
        "tumour_dice",
        "class1_dice",
        "class2_dice",
        "pooled_mean_dice_3class",
    }
    with pytest.raises(ValueError, match="crop must be a multiple of 4"):
        SegmentationRecipe(crop=18)


def test_summary_and_paper_curves() -> None:
    rows = [
        {"method": "a", "fraction": 0.1, "test": {"m": 0.2}},
        {"method": "a", "fraction": 0.1, "test": {"m": 0.4}},
        {"method": "a", "fraction": 0.1, "test": {"m": float("nan")}},
    ]
    mean, sd, n = summarize(rows, "m")[("a", 0.1)]
    assert (mean, n) == (pytest.approx(0.3), 2) and sd == pytest.approx(math.sqrt(0.02))
    fig3 = paper_curves("fig3")
    assert fig3["rotation"][0] == (0.05, 0.46) and fig3["baseline"][-1][0] == 1.0
    assert paper_curves("fig4")["baseline"][0][0] == 0.05
    with pytest.raises(ValueError, match="figure must be 'fig3' or 'fig4'"):
        paper_curves("fig5")


# --- the CLI -------------------------------------------------------------------------


def test_cli_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    encoder = tmp_path / "rotation.pt"
    assert (
        main(
            [
                "pretrain",
                "--set",
                "steps=4",
                "--set",
                "data.count=12",
                "--set",
                "held_out=4",
                "--set",
                "batch_size=2",
                "--set",
                f'output="{encoder}"',
            ]
        )
        == 0
    )
    record = json.loads(Path(f"{encoder}.json").read_text())
    assert 0 <= record["pretext_accuracy"] <= 1 and record["synthetic"] is True
    config = tmp_path / "de.toml"
    config.write_text(f"""
output_dir = "{tmp_path / "de"}"
[data]
kind = "ct-phantom"
count = 12
[methods]
scratch = ""
rotation = "{encoder}"
[segmentation]
crop = 16
[experiment]
fractions = [0.5, 1.0]
repetitions = 1
[experiment.train]
epochs = 1
steps_per_epoch = 1
batch_size = 2
""")
    assert main(["data-efficiency", "--config", str(config)]) == 0
    assert len(list((tmp_path / "de" / "runs").glob("*.json"))) == 4
    assert "SYNTHETIC" in (tmp_path / "de" / "summary.md").read_text()
    assert (
        main(
            [
                "finetune",
                "--set",
                "data.count=12",
                "--set",
                "fraction=0.5",
                "--set",
                "train.epochs=1",
                "--set",
                "train.steps_per_epoch=1",
                "--set",
                f'output_dir="{tmp_path / "ft"}"',
                "--set",
                f'encoder="{encoder}"',
                "--set",
                'name="rotation"',
            ]
        )
        == 0
    )
    assert (tmp_path / "ft" / "runs" / "rotation__f0.5__r0.json").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["data-efficiency", "--set", "experiment.train.lrr=0.1"],
            "unknown key 'lrr' in [experiment.train]; did you mean 'lr'?",
        ),
        (["pretrain", "--set", "stpes=3"], "unknown key 'stpes' in [top level]; did you mean 'steps'?"),
        (
            ["pretrain", "--set", "task_options.gird=2", "--set", 'task="jigsaw"'],
            "unknown key 'gird' in [task_options] for Jigsaw; did you mean 'grid'?",
        ),
        (["pretrain", "--set", 'task="rotaton"'], "task must be one of"),
        (["finetune", "--set", 'train.epochs="ten"'], "train.epochs must be an integer"),
    ],
)
def test_cli_config_errors_name_the_key(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_example_configs_are_valid() -> None:
    from pretext3d.cli import DataEfficiencyCommand, PretrainCommand
    from pretext3d.config import from_mapping, load_toml

    folder = Path(__file__).parent.parent / "examples" / "configs"
    pre = from_mapping(PretrainCommand, load_toml(folder / "pancreas_pretrain_rotation.toml"))
    grid = from_mapping(DataEfficiencyCommand, load_toml(folder / "pancreas_data_efficiency.toml"))
    assert grid.methods["rotation"] == pre.output
    assert grid.experiment.fractions == (0.05, 0.1, 0.25, 0.5, 1.0)
