"""Fine-tuning: metrics against MONAI/scikit-learn and by hand, losses, the trainer."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from monai.metrics import DiceMetric
from sklearn.metrics import balanced_accuracy_score, cohen_kappa_score, recall_score
from torch import nn

from pretext3d.finetune import (
    DiceCELoss,
    OrdinalLoss,
    SoftDiceLoss,
    TrainConfig,
    Trainer,
    balanced_accuracy,
    dice_per_case,
    ordinal_decode,
    ordinal_encode,
    pooled_mean_dice,
    quadratic_weighted_kappa,
    recall_per_class,
    region_dice,
)


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


def _crashing(sample: Any, at: int) -> tuple[Any, dict[str, int]]:
    """``sample`` that raises KeyboardInterrupt at its ``at``-th call, and the count of its calls."""
    calls = {"n": 0}

    def crashing(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        calls["n"] += 1
        if calls["n"] == at:
            raise KeyboardInterrupt
        return sample(gen)  # type: ignore[no-any-return]

    return crashing, calls


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
    with pytest.raises(TypeError, match="integer classes"):
        quadratic_weighted_kappa(torch.tensor([0.5]), torch.tensor([1.0]), 5)


@given(seed=st.integers(0, 10_000), n=st.integers(2, 60), classes=st.integers(2, 6))
def test_recall_and_balanced_accuracy_match_scikit_learn(seed: int, n: int, classes: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    pred = torch.randint(classes, (n,), generator=gen)
    target = torch.randint(classes, (n,), generator=gen)
    ours = recall_per_class(pred, target, classes)
    with warnings.catch_warnings():  # scikit-learn warns for a class the target lacks (and gives 0)
        warnings.simplefilter("ignore")
        theirs = recall_score(target.numpy(), pred.numpy(), average=None, labels=list(range(classes)))
        balanced = balanced_accuracy_score(target.numpy(), pred.numpy())
    present = torch.bincount(target, minlength=classes) > 0
    assert ours[present].tolist() == pytest.approx(theirs[present.numpy()].tolist(), abs=1e-12)
    assert bool(ours[~present].isnan().all())  # undefined, not 0
    assert balanced_accuracy(pred, target, classes) == pytest.approx(balanced, abs=1e-12)


def test_balanced_accuracy_by_hand() -> None:
    target = torch.tensor([0] * 8 + [1] * 2)
    majority = torch.zeros(10, dtype=torch.long)  # always the larger class: accuracy 0.8, chance balance
    assert balanced_accuracy(majority, target, 2) == 0.5
    pred = torch.tensor([0] * 6 + [1] * 2 + [1, 0])  # recall 6/8 and 1/2
    assert recall_per_class(pred, target, 3).tolist()[:2] == [0.75, 0.5]
    assert balanced_accuracy(pred, target, 3) == pytest.approx(0.625)  # class 2 is absent: left out


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

    model, encoder, sample = _toy_problem()
    crashing, _ = _crashing(sample, at=8)  # in the third epoch

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

    config = TrainConfig(epochs=6, steps_per_epoch=2, early_stopping_patience=2, lr=0.05, precision="bf16")
    history = Trainer(model, nn.functional.cross_entropy, sample, config, validate=validate).fit()  # type: ignore[arg-type]
    assert len(history) == 4  # best at epoch 1, then two epochs without improvement
    assert torch.equal(model[3].weight, snapshots[1])


def test_a_run_that_never_improves_on_its_first_epoch_trains_to_the_budget() -> None:
    model, _encoder, sample = _toy_problem()
    for scores, expected in (([0.5, 0.4, 0.3, 0.2, 0.1, 0.0], 6), ([0.5, 0.6, 0.4, 0.3, 0.2, 0.1], 4)):
        config = TrainConfig(epochs=6, steps_per_epoch=1, early_stopping_patience=2)
        validate = iter(scores).__next__
        trainer = Trainer(
            model, nn.functional.cross_entropy, sample, config, validate=lambda m, v=validate: v()
        )  # type: ignore[arg-type,misc]
        # the old rule stopped the first after 3 epochs and called it converged
        assert len(trainer.fit()) == expected
    assert trainer.best_epoch == 1 and trainer.stopped_by_patience()


def _scripted(
    scores: list[float], config: TrainConfig, **kwargs: object
) -> tuple[Trainer, list[torch.Tensor]]:
    """A trainer whose validations return ``scores`` in turn; the weights each validation saw."""
    model, _encoder, sample = _toy_problem()
    script, seen = iter(scores), []

    def validate(m: nn.Module) -> float:
        seen.append(m[3].weight.detach().clone())
        return next(script)

    trainer = Trainer(model, nn.functional.cross_entropy, sample, config, validate=validate, **kwargs)  # type: ignore[arg-type]
    return trainer, seen


def test_a_validated_start_that_no_epoch_beats_is_kept_and_ends_the_run_by_patience() -> None:
    # the start (a head fitted to frozen features) scores 0.9; no epoch beats it
    config = TrainConfig(epochs=10, steps_per_epoch=1, early_stopping_patience=3, min_epochs=2, lr=0.05)
    trainer, seen = _scripted([0.9, 0.5, 0.6, 0.7, 0.8, 0.85, 0.88], config, validate_start=True)
    history = trainer.fit()
    assert trainer.start_score == 0.9 and trainer.best_epoch == -1
    assert len(history) == 3 and trainer.stopped_by_patience()  # 3 epochs without beating the start
    assert torch.equal(trainer.model[3].weight, seen[0])  # the starting weights are restored
    # without a validated start, the same epochs never improve on epoch 0 and would not stop
    config = TrainConfig(epochs=6, steps_per_epoch=1, early_stopping_patience=3, min_epochs=2)
    trainer, _ = _scripted([0.5, 0.4, 0.3, 0.2, 0.1, 0.0], config)
    assert len(trainer.fit()) == 6 and trainer.best_epoch == 0
    with pytest.raises(ValueError, match="validate_start=True needs validate"):
        batch = (torch.zeros(1, 2), torch.zeros(1).long())
        Trainer(nn.Linear(2, 2), nn.functional.cross_entropy, lambda g: batch, config, validate_start=True)


def test_an_epoch_within_min_delta_of_the_best_does_not_restart_the_patience() -> None:
    scores = [0.50, 0.60, 0.605, 0.607, 0.609, 0.70, 0.1, 0.1]
    plain, _ = _scripted(scores, TrainConfig(epochs=8, steps_per_epoch=1, early_stopping_patience=2))
    assert len(plain.fit()) == 8  # each creeping step restarts the patience, then 0.70 at epoch 5
    config = TrainConfig(
        epochs=8, steps_per_epoch=1, early_stopping_patience=2, early_stopping_min_delta=0.01
    )
    delta, seen = _scripted(scores, config)
    history = delta.fit()
    assert len(history) == 4  # epoch 1 is the last improvement by more than 0.01; two epochs later it stops
    assert delta.best_epoch == 3 and torch.equal(delta.model[3].weight, seen[3])  # the best weights, still


def test_validation_every_k_epochs_scores_those_and_the_last() -> None:
    config = TrainConfig(epochs=7, steps_per_epoch=1, validate_every=3, early_stopping_patience=6)
    trainer, seen = _scripted([0.1, 0.5, 0.3], config)
    history = trainer.fit()
    assert [h["epoch"] for h in history if "val" in h] == [0, 3, 6] and len(seen) == 3
    assert trainer.best_epoch == 3 and torch.equal(trainer.model[3].weight, seen[1])
    with pytest.raises(ValueError, match="validate_every must be an int >= 1"):
        TrainConfig(validate_every=0)
    with pytest.raises(ValueError, match="early_stopping_min_delta"):
        TrainConfig(early_stopping_min_delta=-0.1)


def test_train_config_errors() -> None:
    with pytest.raises(ValueError, match=r"freeze_encoder_epochs must lie in \[0, epochs=2\]"):
        TrainConfig(epochs=2, freeze_encoder_epochs=3)
    with pytest.raises(ValueError, match=r"optimizer must be one of \['adam', 'adamw'\], got 'sgd'"):
        TrainConfig(optimizer="sgd")  # type: ignore[arg-type]


def test_discriminative_learning_rates_move_the_encoder_by_its_factor() -> None:
    model, encoder, sample = _toy_problem()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    config = TrainConfig(epochs=1, steps_per_epoch=1, lr=0.01, encoder_lr_factor=0.1, grad_clip=None)
    trainer = Trainer(model, nn.functional.cross_entropy, sample, config, encoder=encoder)  # type: ignore[arg-type]
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [0.01, pytest.approx(0.001)]
    trainer.fit()
    # Adam's first step moves every parameter by about lr (its update is lr * g / (|g| + eps))
    conv = float((model[0][0].weight - before["0.0.weight"]).abs().max())
    head = float((model[3].weight - before["3.weight"]).abs().max())
    assert conv == pytest.approx(0.001, rel=1e-3) and head == pytest.approx(0.01, rel=1e-3)
    with pytest.raises(ValueError, match=r"encoder_lr_factor=0\.1 needs the encoder"):
        Trainer(model, nn.functional.cross_entropy, sample, config)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="encoder_lr_factor"):
        TrainConfig(encoder_lr_factor=0.0)


@pytest.mark.parametrize("prefetch", [1, 3])
def test_prefetched_batches_are_the_plain_loops_and_a_resume_continues_their_stream(
    tmp_path: Path, prefetch: int
) -> None:
    config = TrainConfig(epochs=3, steps_per_epoch=4, freeze_encoder_epochs=1, lr=0.05, prefetch=0)
    model, encoder, sample = _toy_problem()
    plain = Trainer(model, nn.functional.cross_entropy, sample, config, encoder=encoder)  # type: ignore[arg-type]
    plain_history = plain.fit()
    reference = {k: v.clone() for k, v in model.state_dict().items()}

    ahead = TrainConfig(**{**config.__dict__, "prefetch": prefetch})
    model, encoder, sample = _toy_problem()
    crashing, calls = _crashing(sample, at=7)  # drawn ahead in the second epoch

    checkpoint = tmp_path / "run.pt"
    with pytest.raises(KeyboardInterrupt):
        Trainer(
            model, nn.functional.cross_entropy, crashing, ahead, encoder=encoder, checkpoint=checkpoint
        ).fit()
    assert 7 <= calls["n"] <= 8  # at most the second epoch's last batch was drawn ahead of the failure
    model, encoder, sample = _toy_problem(seed=99)
    # resumed without prefetching (it may change on resume): the stream goes on where the checkpoint left it
    resumed = Trainer(
        model, nn.functional.cross_entropy, sample, config, encoder=encoder, checkpoint=checkpoint
    )  # type: ignore[arg-type]
    assert resumed.epoch == 1
    history = resumed.fit()
    assert [h["loss"] for h in history] == [h["loss"] for h in plain_history]  # the very same batches
    assert torch.equal(resumed.generator.get_state(), plain.generator.get_state())
    for k, v in model.state_dict().items():
        assert torch.equal(v, reference[k]), k


def test_fast_path_settings_channels_last_compile_and_validation_precision(spatial_dims: int) -> None:
    conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
    torch.manual_seed(0)
    model = nn.Sequential(conv(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(1), nn.LazyLinear(2))
    x = torch.randn(8, 1, *(6,) * spatial_dims)
    y = torch.randint(0, 2, (8,))
    model(x)  # materialise the lazy layer
    seen: list[torch.dtype] = []

    def validate(m: nn.Module) -> float:
        seen.append(m(x).dtype)
        return 0.0

    config = TrainConfig(epochs=1, steps_per_epoch=2, channels_last=True, precision="bf16")
    trainer = Trainer(model, nn.functional.cross_entropy, lambda g: (x, y), config, validate=validate)
    fmt = torch.channels_last if spatial_dims == 2 else torch.channels_last_3d
    assert model[0].weight.is_contiguous(memory_format=fmt)
    assert not trainer.compiled and trainer.compile_reason == "compile off (compile=False)"
    assert trainer.prefetch == 0  # "auto" on the CPU: drawn in the step
    trainer.fit()
    assert seen == [torch.bfloat16]  # validated under the training precision's autocast
    auto = Trainer(model, nn.functional.cross_entropy, lambda g: (x, y), TrainConfig(compile="auto"))
    assert (auto.compiled, auto.compile_reason) == (False, "compile off (auto: not on CUDA)")
    assert not any(
        p.is_contiguous(memory_format=fmt) and not p.is_contiguous() for p in auto.model.parameters()
    )
    with pytest.raises(ValueError, match=r'prefetch must be an int >= 0 or "auto", got -1'):
        TrainConfig(prefetch=-1)
    with pytest.raises(ValueError, match=r"compile must be true or false \(a bool\) or 'auto', got 'yes'"):
        TrainConfig(compile="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize("prefetch", [0, 2])
def test_issue_39_a_sample_that_is_not_a_pair_of_tensors_is_named(prefetch: int) -> None:
    model = nn.Sequential(nn.Flatten(1), nn.Linear(16, 2))
    x, y = torch.randn(4, 1, 4, 4), torch.randint(0, 2, (4,))
    config = TrainConfig(epochs=1, steps_per_epoch=1, prefetch=prefetch)
    for bad, named in [
        (lambda g: (x,), "a tuple of 1"),
        (lambda g: [x.tolist(), y.tolist()], r"\['list', 'list'\]"),
    ]:
        with pytest.raises(TypeError, match=rf"sample\(generator\) must return a pair of tensors.*{named}"):
            Trainer(model, nn.functional.cross_entropy, bad, config).fit()
    assert Trainer(model, nn.functional.cross_entropy, lambda g: [x, y], config).fit() is not None
