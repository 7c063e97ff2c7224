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
    case_key,
    dice_per_case,
    holm,
    nested_subsets,
    ordinal_decode,
    ordinal_encode,
    paired_differences,
    paper_curves,
    pooled_mean_dice,
    quadratic_weighted_kappa,
    read_runs,
    region_dice,
    run_data_efficiency,
    run_seeds,
    split_cases,
    summarize,
    write_pretraining_record,
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


@given(
    grades=st.lists(st.integers(0, 4), min_size=30, max_size=200),
    seed=st.integers(0, 1000),
)
def test_stratified_splits_and_subsets_keep_every_grade_in_proportion(grades: list[int], seed: int) -> None:
    split = split_cases(len(grades), 0.15, 0.25, seed, strata=grades)
    assert sorted(split.train + split.val + split.test) == list(range(len(grades)))
    for part in (split.val, split.test):  # largest-remainder allocation: within one of the share
        for g in set(grades):
            expected = grades.count(g) * len(part) / len(grades)
            assert abs(sum(grades[i] == g for i in part) - expected) < 1
    pool = [grades[i] for i in split.train]
    subsets = nested_subsets(split.train, (0.25, 0.5, 1.0), seed, strata=pool)
    assert set(subsets[0.25]) <= set(subsets[0.5]) <= set(subsets[1.0])
    strata = len(set(pool))
    for g in set(pool):
        share = pool.count(g) / len(pool)
        # within one of the share, plus the prefix's rounding spread over the strata
        assert (
            abs(sum(grades[i] == g for i in subsets[0.5]) - share * len(subsets[0.5])) <= 1 + strata * share
        )


def test_unstratified_split_misses_a_grade_that_the_stratified_one_keeps() -> None:
    grades = [0] * 90 + [1] * 10
    # some seeds put no grade-1 case in validation when not stratified; stratified always does
    plain = [sum(grades[i] == 1 for i in split_cases(100, 0.1, 0.1, s).val) for s in range(40)]
    strat = [sum(grades[i] == 1 for i in split_cases(100, 0.1, 0.1, s, strata=grades).val) for s in range(40)]
    assert min(plain) == 0 and set(strat) == {1}


# --- statistics ----------------------------------------------------------------------


def _row(method: str, fraction: float, split: int, value: float, rep: int = 0) -> dict[str, object]:
    return {
        "method": method,
        "fraction": fraction,
        "split_seed": split,
        "repetition": rep,
        "test": {"m": value},
    }


def test_paired_differences_by_hand() -> None:
    rows = [_row("scratch", 0.1, s, v) for s, v in enumerate([0.5, 0.6, 0.7])]
    rows += [_row("pre", 0.1, s, v) for s, v in enumerate([0.6, 0.6, 0.9])]
    rows += [_row("pre", 0.1, 2, 0.7)]  # a second pretraining seed on split 2: averaged within the split
    rows += [_row("pre", 1.0, 0, 0.3), _row("scratch", 1.0, 0, float("nan"))]  # no valid pair
    (c,) = paired_differences(rows, "m")
    assert c.method == "pre" and c.fraction == 0.1 and c.n == 3 and c.wins == 2
    diffs = [0.1, 0.0, 0.1]  # split 2: mean of 0.2 and 0.0
    assert c.differences == pytest.approx(diffs)
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    half = 4.302652729911275 * sd / math.sqrt(3)  # t(0.975, 2 degrees of freedom)
    assert (c.mean, c.low, c.high) == pytest.approx((mean, mean - half, mean + half))
    t = mean / (sd / math.sqrt(3))
    assert c.p_value == pytest.approx(2 * (1 - 0.5 * (1 + t / math.sqrt(2 + t * t))))  # Student t, 2 dof
    assert holm([0.01, 0.04, float("nan"), 0.03]) == pytest.approx(
        [0.03, 0.06, float("nan"), 0.06], nan_ok=True
    )
    (one,) = paired_differences([_row("scratch", 0.1, 0, 0.5), _row("pre", 0.1, 0, 0.7)], "m")
    assert one.mean == pytest.approx(0.2) and math.isnan(one.low) and math.isnan(one.p_value)


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
SMALL_GRADING = GradingRecipe(block_config=(1, 1), growth_rate=4, init_features=8)


def _small_encoder(path: Path, seed: int, cases: list[str] | None = None) -> Path:
    torch.manual_seed(seed)
    encoder = p3.models.DenseNetEncoder(2, 3, growth_rate=4, block_config=(1, 1), init_features=8)
    p3.models.save_encoder(encoder, path)
    if cases is not None:
        write_pretraining_record(path, case_ids=cases, pretext_accuracy=0.5 + seed / 100)
    return path


@pytest.fixture(scope="module")
def fundus() -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    images, grades = p3.data.fundus_phantom_batch(24, 32, seed=0)
    return images, grades, [f"img{i}" for i in range(24)]


def test_runner_resumes_without_repeating_or_losing_runs(
    tmp_path: Path, fundus: tuple[torch.Tensor, torch.Tensor, list[str]]
) -> None:
    images, grades, ids = fundus
    config = DataEfficiencyConfig(fractions=(0.5, 1.0), split_seeds=(0, 1), train=SMALL_TRAIN)
    pretrained = [_small_encoder(tmp_path / f"enc{k}.pt", k, ["other1", "other2"]) for k in range(2)]
    methods = {"scratch": None, "pre": pretrained}
    kwargs = {"case_ids": ids, "progress": False}

    full = run_data_efficiency(
        SMALL_GRADING, images, grades, methods, config, tmp_path / "full", log=lambda s: None, **kwargs
    )

    finished: list[str] = []

    def crash_after_three(line: str) -> None:
        if ": qwk" in line:
            finished.append(line)
            if len(finished) == 3:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_data_efficiency(
            SMALL_GRADING, images, grades, methods, config, tmp_path / "out", log=crash_after_three, **kwargs
        )
    assert len(list((tmp_path / "out" / "runs").glob("*.json"))) == 3
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out" / "runs").glob("*.json")}
    lines: list[str] = []
    rows = run_data_efficiency(
        SMALL_GRADING, images, grades, methods, config, tmp_path / "out", log=lines.append, **kwargs
    )
    # 2 split seeds x 2 fractions x (scratch + 2 pretraining seeds)
    assert "12 runs, 3 already done" in lines[0]
    keys = {(r["method"], r["pretraining_seed"], r["split_seed"], r["fraction"]) for r in rows}
    assert len(rows) == 12 and len(keys) == 12
    for p in (tmp_path / "out" / "runs").glob("*.json"):  # finished runs were not redone
        if p.name in before:
            assert p.stat().st_mtime_ns == before[p.name]
    assert [r["test"] for r in rows] == [r["test"] for r in full]  # same numbers as without the crash
    assert {r["pretext_accuracy"] for r in rows if r["method"] == "pre"} == {0.5, 0.51}
    # within a (split, repetition, fraction) cell every method gets the same cases and seeds
    for r in rows:
        twin = next(
            q
            for q in rows
            if q["method"] == "scratch"
            and (q["split_seed"], q["fraction"]) == (r["split_seed"], r["fraction"])
        )
        assert r["labelled_cases"] == twin["labelled_cases"] and r["seeds"] == twin["seeds"]
        assert r["test_cases"]["case_id"] == twin["test_cases"]["case_id"]
    # per-case scores behind the summary
    for r in rows:
        assert len(r["test_cases"]["correct"]) == r["n_test"]
        assert r["test"]["accuracy"] == pytest.approx(sum(r["test_cases"]["correct"]) / r["n_test"])
    assert read_runs(tmp_path / "out") == rows  # the same rows, in the grid's order, without running
    files = write_report(rows, tmp_path / "out", "qwk", synthetic=True)
    names = {f.name for f in files}
    assert names == {
        "results.csv",
        "cases.csv",
        "results.json",
        "summary.md",
        "data_efficiency.png",
        "learning_curves.png",
    }
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "SYNTHETIC" in summary and "| pre | 50% |" in summary and "2 split seed(s) [0, 1]" in summary
    assert (
        "encoder frozen for the first 0 epochs" in summary
        and "encoder frozen for the first 1 epochs" in summary
    )
    cases = (tmp_path / "out" / "cases.csv").read_text().splitlines()
    assert len(cases) == 1 + sum(r["n_test"] for r in rows) and cases[0].startswith("method,pretraining_seed")
    with pytest.raises(ValueError, match="holds runs made with other settings"):
        other = DataEfficiencyConfig(fractions=(0.5,), split_seeds=(0, 1), train=SMALL_TRAIN)
        run_data_efficiency(
            SMALL_GRADING, images, grades, methods, other, tmp_path / "out", log=lambda s: None, **kwargs
        )


def test_scratch_is_never_frozen_and_budgets_match(
    tmp_path: Path, fundus: tuple[torch.Tensor, torch.Tensor, list[str]]
) -> None:
    images, grades, ids = fundus
    config = DataEfficiencyConfig(fractions=(1.0,), split_seeds=(0,), train=SMALL_TRAIN)
    methods = {"scratch": None, "pre": _small_encoder(tmp_path / "enc.pt", 0, [])}
    rows = run_data_efficiency(
        SMALL_GRADING, images, grades, methods, config, tmp_path / "o", case_ids=ids, progress=False,
        log=lambda s: None,
    )  # fmt: skip
    frozen = {r["method"]: [h["encoder_frozen"] for h in r["history"]] for r in rows}
    assert frozen == {"scratch": [False, False], "pre": [True, False]}
    assert {r["method"]: r["train"]["freeze_encoder_epochs"] for r in rows} == {"scratch": 0, "pre": 1}
    # the baseline may have its own schedule, but never a freeze, and the same budget and seed
    own = TrainConfig(epochs=2, steps_per_epoch=2, batch_size=2, lr=3e-3)
    assert DataEfficiencyConfig(train=SMALL_TRAIN, baseline_train=own).settings_for(False).lr == 3e-3
    with pytest.raises(ValueError, match=r"baseline_train\.freeze_encoder_epochs must be 0"):
        DataEfficiencyConfig(train=SMALL_TRAIN, baseline_train=SMALL_TRAIN)
    with pytest.raises(ValueError, match=r"baseline_train\.epochs must equal train\.epochs"):
        DataEfficiencyConfig(train=SMALL_TRAIN, baseline_train=TrainConfig(epochs=5))
    with pytest.raises(ValueError, match="split_seeds must not repeat"):
        DataEfficiencyConfig(split_seeds=(1, 1))


def test_run_seeds_are_separate_streams() -> None:
    a = run_seeds(0, 0, 0)
    assert len({a.subset, a.init, a.order}) == 3
    assert run_seeds(0, 0, 1).subset == a.subset  # the training seed leaves the subset alone
    assert run_seeds(0, 0, 1).init != a.init and run_seeds(0, 0, 1).order != a.order
    assert run_seeds(0, 1, 0).subset != a.subset and run_seeds(1, 0, 0).subset != a.subset
    assert run_seeds(0, 0, 0) == a
    with pytest.raises(ValueError, match="seeds must be >= 0"):
        run_seeds(-1, 0)


def test_changing_train_seed_changes_the_run(
    tmp_path: Path, fundus: tuple[torch.Tensor, torch.Tensor, list[str]]
) -> None:
    images, grades, ids = fundus
    rows = {}
    for seed in (0, 123):
        train = TrainConfig(epochs=1, steps_per_epoch=2, batch_size=2, seed=seed)
        config = DataEfficiencyConfig(fractions=(1.0,), split_seeds=(0,), train=train)
        (row,) = run_data_efficiency(
            SMALL_GRADING, images, grades, {"scratch": None}, config, tmp_path / str(seed), case_ids=ids,
            progress=False, log=lambda s: None,
        )  # fmt: skip
        rows[seed] = row
    assert rows[0]["labelled_cases"] == rows[123]["labelled_cases"]
    assert rows[0]["seeds"]["init"] != rows[123]["seeds"]["init"]
    assert rows[0]["history"][0]["loss"] != rows[123]["history"][0]["loss"]


def test_provenance_is_recorded_and_a_mismatch_refuses_reuse(
    tmp_path: Path, fundus: tuple[torch.Tensor, torch.Tensor, list[str]]
) -> None:
    images, grades, ids = fundus
    config = DataEfficiencyConfig(fractions=(1.0,), split_seeds=(0,), train=SMALL_TRAIN)
    encoder = _small_encoder(tmp_path / "enc.pt", 0, ["x"])
    methods = {"scratch": None, "pre": encoder}

    def run(imgs: torch.Tensor = images, info: dict[str, int] | None = None) -> list[dict[str, object]]:
        return run_data_efficiency(
            SMALL_GRADING, imgs, grades, methods, config, tmp_path / "o", case_ids=ids,
            data_info=info or {"size": 32}, progress=False, log=lambda s: None,
        )  # fmt: skip

    rows = run()
    prov = rows[1]["provenance"]
    assert prov["data"]["info"] == {"size": 32} and len(prov["data"]["sha256"]) == 64
    env = prov["environment"]
    assert env["torch"] == torch.__version__ and env["threads"] == torch.get_num_threads()
    assert env["pretext3d"] == p3.__version__ and env["device"] == "cpu" and "git_commit" in env
    assert rows[1]["encoder"]["sha256"] == p3.finetune.provenance.file_sha256(encoder)
    assert rows[1]["encoder"]["pretraining"]["pretraining_cases"] == ["x"]
    config_json = json.loads((tmp_path / "o" / "config.json").read_text())
    assert config_json["data"]["sha256"] == prov["data"]["sha256"]
    with pytest.raises(ValueError, match=r"changed: data\.info\.size"):
        run(info={"size": 24})
    with pytest.raises(ValueError, match=r"changed: data\.sha256"):
        run(images + 0.01)
    _small_encoder(encoder, 7, ["x"])  # re-pretrained into the same file
    with pytest.raises(ValueError, match=r"methods\.pre"):
        run()


def test_encoders_pretrained_on_test_cases_are_refused(
    tmp_path: Path, fundus: tuple[torch.Tensor, torch.Tensor, list[str]]
) -> None:
    images, grades, ids = fundus
    config = DataEfficiencyConfig(fractions=(1.0,), split_seeds=(0,), train=SMALL_TRAIN)
    split = split_cases(24, 0.15, 0.25, 0, strata=grades.tolist())
    test_case = ids[split.test[0]]
    # a folder loader's name for the same scan matches too
    leaky = _small_encoder(tmp_path / "leaky.pt", 0, ["unrelated", f"train_images__{test_case}.png"])
    with pytest.raises(ValueError, match=r"pretrained on 1 validation/test case\(s\) of split seed 0"):
        run_data_efficiency(
            SMALL_GRADING, images, grades, {"pre": leaky}, config, tmp_path / "a", case_ids=ids,
            progress=False, log=lambda s: None,
        )  # fmt: skip
    allowed = DataEfficiencyConfig(fractions=(1.0,), split_seeds=(0,), train=SMALL_TRAIN, transductive=True)
    (row,) = run_data_efficiency(  # the refused grid left nothing behind: the same folder accepts it now
        SMALL_GRADING, images, grades, {"pre": leaky}, allowed, tmp_path / "a", case_ids=ids,
        progress=False, log=lambda s: None,
    )  # fmt: skip
    assert row["transductive"] is True
    # pretraining on the training pool only is fine
    train_only = [ids[i] for i in split.train]
    fine = _small_encoder(tmp_path / "fine.pt", 0, train_only)
    (row,) = run_data_efficiency(
        SMALL_GRADING, images, grades, {"pre": fine}, config, tmp_path / "c", case_ids=ids,
        progress=False, log=lambda s: None,
    )  # fmt: skip
    assert row["transductive"] is False


@pytest.mark.parametrize(
    "name", ["imagesTr__pancreas_001.nii.gz", "pancreas_001_0000", "pancreas_001", "a/pancreas_001.npy"]
)
def test_case_key_matches_loader_names(name: str) -> None:
    assert case_key(name) == "pancreas_001"


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
        "tumour_sensitivity",
        "tumour_specificity",
        "pooled_mean_dice_3class",
    }
    # whole volumes go through in batches; each is padded on its own, so the batch size does not matter
    odd = images[:, :, :30, :30, :30]
    assert torch.equal(recipe.predict(model, odd, batch=1), recipe.predict(model, odd, batch=3))
    with pytest.raises(ValueError, match="crop must be a multiple of 4"):
        SegmentationRecipe(crop=18)


class _Fixed(nn.Module):
    """Outputs one-hot logits of fixed label maps, the next ``len(x)`` volumes per call."""

    def __init__(self, maps: torch.Tensor) -> None:
        super().__init__()
        self.maps, self.done = maps, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = nn.functional.one_hot(self.maps[self.done : self.done + len(x)], 3).permute(0, 4, 1, 2, 3)
        self.done += len(x)
        return out.float()


def test_tumour_metrics_count_false_positives_by_detection() -> None:
    target = torch.zeros(4, 8, 8, 8, dtype=torch.long)
    target[:, 2:6, 2:6, 2:6] = 1
    target[0, 3:5, 3:5, 3:5] = 2  # cases 0 and 1 have a tumour, 2 and 3 do not
    target[1, 2:4, 2:4, 2:4] = 2
    pred = target.clone()
    pred[1][pred[1] == 2] = 1  # tumour of case 1 missed
    pred[2, 3:5, 3:5, 3:5] = 2  # false-positive tumour in case 2
    summary, cases = SegmentationRecipe(widths=(4,)).score_cases(
        _Fixed(pred), target[:, None].float(), target
    )
    assert cases["tumour_dice"][0] == 1.0 and cases["tumour_dice"][1] == 0.0
    assert math.isnan(cases["tumour_dice"][2])  # Dice cannot see the false positive ...
    assert summary["tumour_dice"] == pytest.approx(0.5)
    assert summary["tumour_sensitivity"] == 0.5 and summary["tumour_specificity"] == 0.5  # ... detection does
    assert cases["tumour_present"] == [1.0, 1.0, 0.0, 0.0]
    assert cases["tumour_predicted"] == [1.0, 0.0, 1.0, 0.0]
    assert cases["pancreas_dice"] == [1.0] * 4  # the whole region {1, 2} is right in every case


def test_summary_and_paper_curves() -> None:
    rows = [_row("a", 0.1, 0, 0.2), _row("a", 0.1, 0, 0.4, rep=1), _row("a", 0.1, 1, 0.6)]
    rows += [_row("a", 0.1, 2, float("nan")), _row("b", 0.1, 0, 0.5)]
    mean, sd, n = summarize(rows, "m")[("a", 0.1)]  # split 0 averaged first: 0.3, then 0.6
    assert (mean, n) == (pytest.approx(0.45), 2) and sd == pytest.approx(math.sqrt(0.045))
    assert math.isnan(summarize(rows, "m")[("b", 0.1)][1])  # one split seed: no spread, not 0
    fig3 = paper_curves("fig3")
    assert (
        fig3[("rotation", "pancreas_ct_3d")][0] == (0.05, 0.46) and fig3[("baseline", "none")][-1][0] == 1.0
    )
    fig4 = paper_curves("fig4")
    # two rotation series in Figure 4, one per pretraining source, never merged
    assert {src for (m, src) in fig4 if m == "rotation"} == {"ukbiobank_fundus_2d", "aptos2019_fundus_2d"}
    assert all(len(curve) == 5 for curve in fig4.values())
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
split_seeds = [0]
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
    assert (tmp_path / "ft" / "runs" / "rotation__p0__s0__r0__f0.5.json").exists()


def test_cli_pretraining_pool_is_disjoint_from_the_labelled_cases(tmp_path: Path) -> None:
    from pretext3d.cli import DataSpec

    spec = DataSpec(kind="fundus-phantom", count=6, size=16)
    _, _, labelled = spec.labelled()
    _, pool = spec.unlabelled()
    assert not set(labelled) & set(pool)
    transductive = DataSpec(kind="fundus-phantom", count=6, size=16, include_labelled=True)
    assert transductive.unlabelled()[1] == labelled
    # an encoder pretrained on the labelled cases is refused by data-efficiency unless transductive
    encoder = tmp_path / "enc.pt"
    args = ["--set", "data.count=12", "--set", "data.include_labelled=true", "--set", "held_out=4"]
    args += ["--set", "steps=1", "--set", "batch_size=2", "--set", f'output="{encoder}"']
    assert main(["pretrain", *args]) == 0
    assert json.loads(Path(f"{encoder}.json").read_text())["transductive"] is True
    common = ["--set", "data.count=12", "--set", "train.epochs=1", "--set", "train.steps_per_epoch=1"]
    common += ["--set", f'encoder="{encoder}"', "--set", f'output_dir="{tmp_path / "ft"}"']
    assert main(["finetune", *common]) == 2
    assert (
        main(["finetune", *common, "--set", f'output_dir="{tmp_path / "ft2"}"', "--set", "transductive=true"])
        == 0
    )


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
        (
            ["finetune", "--set", "data.include_labelled=true"],
            "data.include_labelled applies to the pretraining",
        ),
        (["pretrain", "--set", "data.count=0"], "data.count must be >= 1, got 0"),
    ],
)
def test_cli_config_errors_name_the_key(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("experiment", ["pancreas", "fundus"])
def test_example_configs_are_valid_and_fair(experiment: str) -> None:
    from pretext3d.cli import DataEfficiencyCommand, DataSpec, PretrainCommand
    from pretext3d.config import from_mapping, load_toml

    folder = Path(__file__).parent.parent / "examples" / "configs"
    pre = from_mapping(PretrainCommand, load_toml(folder / f"{experiment}_pretrain.toml"))
    grid = from_mapping(DataEfficiencyCommand, load_toml(folder / f"{experiment}_data_efficiency.toml"))
    assert len(grid.experiment.split_seeds) >= 5
    base = grid.experiment.settings_for(pretrained=False)
    assert base.freeze_encoder_epochs == 0 and base.epochs == grid.experiment.train.epochs
    assert base.early_stopping_patience is not None
    # the pretraining pool never holds a labelled case, whatever the sizes
    labelled = DataSpec(kind=grid.data.kind, count=grid.data.count, size=8, seed=grid.data.seed)
    pool = DataSpec(kind=pre.data.kind, count=pre.data.count, size=8, seed=pre.data.seed)
    assert not pool.include_labelled
    assert not set(labelled.labelled()[2]) & set(pool.unlabelled()[1])


@pytest.mark.parametrize("experiment", ["pancreas", "fundus"])
def test_benchmark_task_settings_run_a_step(experiment: str) -> None:
    """Every task setting of examples/benchmark.py builds and trains one step on its phantoms."""
    import importlib.util

    from pretext3d.cli import ENCODERS, SMALL_ENCODERS, TASKS
    from pretext3d.config import parse_override
    from pretext3d.functional import random_crops

    path = Path(__file__).parent.parent / "examples" / "benchmark.py"
    spec = importlib.util.spec_from_file_location("benchmark", path)
    assert spec is not None and spec.loader is not None
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    dims, encoder_name = (3, "unet") if experiment == "pancreas" else (2, "densenet")
    if dims == 3:
        images = p3.data.ct_phantom_batch(4, 32, seed=5)[0]
    else:
        images = p3.data.fundus_phantom_batch(4, 64, seed=5)[0]
    gen = torch.Generator().manual_seed(0)
    assert set(benchmark.TASK_SETTINGS[experiment]) == set(TASKS)
    for name, (crop, options) in benchmark.TASK_SETTINGS[experiment].items():
        task = TASKS[name](dims, **parse_override(f"options={options}")[1])
        encoder = ENCODERS[encoder_name](
            spatial_dims=dims, in_channels=images.shape[1], **SMALL_ENCODERS[encoder_name]
        )
        model = p3.PretextModel(encoder, task)
        batch = random_crops(images, (crop,) * dims, gen) if crop else images
        views, targets = task(batch, gen)
        loss = task.loss(model(views), targets)
        loss.backward()
        assert torch.isfinite(loss), name
