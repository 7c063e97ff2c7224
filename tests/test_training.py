"""The training core: TaskSpec, PretextStep and the one optimisation block."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import pretext3d as p3
from pretext3d.engine import NonFiniteLossError
from pretext3d.training import Optimization, OptimSettings, PretextStep, TaskSpec, lr_factor, task_specs


def _encoder(spatial_dims: int) -> torch.nn.Module:
    return p3.models.UNetEncoder(spatial_dims, widths=(4, 8))


def test_task_spec_names_a_registered_task_or_holds_an_object(spatial_dims: int) -> None:
    by_name = TaskSpec("jigsaw", 0.5, {"grid": 2, "num_permutations": 6})
    task = by_name.build(spatial_dims)
    assert isinstance(task, p3.tasks.Jigsaw) and task.spatial_dims == spatial_dims and task.num_classes == 6
    assert (by_name.label, by_name.registered_name) == ("jigsaw", "jigsaw")
    keyed = TaskSpec(name="rpl")  # a reproduction's [tasks.rpl]: the key names the task
    assert isinstance(keyed.build(spatial_dims), p3.tasks.RelativePatchLocation) and keyed.label == "rpl"
    renamed = TaskSpec("rotation", name="rot-a")
    assert renamed.label == "rot-a" and isinstance(renamed.build(spatial_dims), p3.tasks.Rotation)
    obj = p3.tasks.Rotation(spatial_dims)
    assert TaskSpec(obj).build(99) is obj and TaskSpec(obj).label == "rotation"
    assert [s.label for s in task_specs([obj, TaskSpec("rpl")])] == ["rotation", "rpl"]


def test_task_spec_refuses_what_it_cannot_mean() -> None:
    with pytest.raises(ValueError, match="did you mean 'jigsaw'"):
        TaskSpec("jigsa")
    with pytest.raises(ValueError, match="options apply to a task named by the registry"):
        TaskSpec(p3.tasks.Rotation(2), options={"rotations": "plane4"})
    with pytest.raises(ValueError, match="weight of rotation"):
        TaskSpec("rotation", -1.0)
    with pytest.raises(ValueError, match="names no task"):
        TaskSpec().check("tasks[0].options")
    with pytest.raises(ValueError, match="did you mean 'grid'"):
        TaskSpec("jigsaw", options={"gird": 2}).check("tasks[0].options")
    with pytest.raises(ValueError, match="names must differ"):
        task_specs([TaskSpec("rotation"), TaskSpec("rotation")])
    with pytest.raises(TypeError, match="PretextTask or TaskSpec"):
        task_specs(["rotation"])  # type: ignore[list-item]


def test_pretext_step_loss_is_the_weighted_sum_of_the_task_losses(spatial_dims: int) -> None:
    tasks = [TaskSpec("rotation", 1.0), TaskSpec("rpl", 0.25, {"grid": 3})]
    step = PretextStep(_encoder(spatial_dims), tasks, spatial_dims=spatial_dims, seed=3)
    x = torch.randn(4, 1, *(16,) * spatial_dims)
    states = step.generator_states()
    result = step(x)
    # the same draws by hand: each task's views, its model, its loss; then the weighted sum
    step.set_generator_states(states)
    by_hand = []
    for k, name in enumerate(step.names):
        views, targets = step.tasks[k](x, step.generators[k])
        output = step.models[name](views).float()
        by_hand.append(step.tasks[k].loss(output, targets, generator=step.generators[k]))
    expected = 1.0 * by_hand[0] + 0.25 * by_hand[1]
    torch.testing.assert_close(result.loss, expected)
    assert result.losses == pytest.approx({"rotation": float(by_hand[0]), "rpl": float(by_hand[1])})
    assert all(0.0 <= a <= 1.0 for a in result.accuracies.values())


def test_pretext_step_alternates_and_scales_a_gathering_loss(spatial_dims: int) -> None:
    tasks = [TaskSpec("rotation"), TaskSpec("cpc", 0.5, {"grid": 2, "patch": 8})]
    step = PretextStep(_encoder(spatial_dims), tasks, spatial_dims=spatial_dims)
    assert [step.active(s, "alternate") for s in range(3)] == [[0], [1], [0]]
    assert step.active(5, "sum") == [0, 1]
    step.tasks[1].gather = True  # type: ignore[assignment]  # as a DDP run's CPC would
    x = torch.randn(4, 1, *(16,) * spatial_dims)
    drawn = step.draw(x, [1])
    outputs = step.net({n: v for n, (v, _) in drawn.items()})
    one = step.score(outputs, drawn, world=1)
    for generator, state in zip(step.generators, [g.get_state() for g in step.generators], strict=True):
        generator.set_state(state)
    three = step.score(outputs, drawn, world=3)  # the CPC loss draws nothing from the stream here
    torch.testing.assert_close(three.loss, 3 * one.loss)


def test_pretext_step_checks_each_loss_and_seeds_streams_per_rank() -> None:
    step = PretextStep(_encoder(2), [p3.tasks.Rotation(2)], seed=1)
    other = PretextStep(_encoder(2), [p3.tasks.Rotation(2)], seed=1, rank=1)
    assert not torch.equal(step.generators[0].get_state(), other.generators[0].get_state())
    seen: list[str] = []
    drawn = step.draw(torch.randn(2, 1, 16, 16), [0])
    step.score(
        step.net({n: v for n, (v, _) in drawn.items()}), drawn, check=lambda loss, name: seen.append(name)
    )
    assert seen == ["rotation"]
    with pytest.raises(ValueError, match="give spatial_dims"):
        PretextStep(_encoder(2), [TaskSpec("rotation")])


def test_optimization_steps_like_a_hand_written_adamw_with_warmup_and_clipping() -> None:
    torch.manual_seed(0)
    net, ref = torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)
    ref.load_state_dict(net.state_dict())
    settings = OptimSettings(
        "adamw", lr=0.1, weight_decay=0.01, schedule="cosine", warmup_steps=1, grad_clip=0.5
    )
    block = Optimization(net.parameters(), settings, 4, torch.device("cpu"), "fp32")
    optimizer = torch.optim.AdamW(ref.parameters(), lr=0.1, weight_decay=0.01)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    for step in range(4):
        assert block.lr == pytest.approx(0.1 * lr_factor(step, warmup=1, total=4, cosine=True))
        block.backward(torch.nn.functional.mse_loss(net(x), y))
        block.step()
        for group in optimizer.param_groups:
            group["lr"] = 0.1 * lr_factor(step, warmup=1, total=4, cosine=True)
        torch.nn.functional.mse_loss(ref(x), y).backward()
        torch.nn.utils.clip_grad_norm_(list(ref.parameters()), 0.5)
        optimizer.step()
        optimizer.zero_grad()
    for a, b in zip(net.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    assert all(p.grad is None for p in net.parameters())
    assert lr_factor(0, warmup=1, total=4, cosine=True) == 0.5 and math.isclose(
        lr_factor(4, warmup=1, total=4, cosine=True), 0.0, abs_tol=1e-12
    )


def test_optimization_state_resumes_exactly() -> None:
    def run(steps: int, state: dict | None = None) -> tuple[torch.nn.Module, Optimization]:  # type: ignore[type-arg]
        torch.manual_seed(0)
        net = torch.nn.Linear(3, 1)
        block = Optimization(
            net.parameters(), OptimSettings(schedule="cosine"), 6, torch.device("cpu"), "fp32"
        )
        if state is not None:
            net.load_state_dict(state["net"])
            block.load_state_dict(state)
        for _ in range(steps):
            block.backward(net(torch.ones(2, 3)).pow(2).mean())
            block.step()
        return net, block

    whole, _ = run(6)
    half, block = run(3)
    resumed, _ = run(3, {"net": half.state_dict(), **block.state_dict()})
    for a, b in zip(whole.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_fp16_gets_a_gradient_scaler_and_nan_stops_the_run() -> None:
    net = torch.nn.Linear(2, 1)
    cpu = torch.device("cpu")
    assert Optimization(net.parameters(), OptimSettings(), 1, cpu, "fp16").scaler.is_enabled()
    assert not Optimization(net.parameters(), OptimSettings(), 1, cpu, "bf16").scaler.is_enabled()
    block = Optimization(net.parameters(), OptimSettings(lr=0.5), 1, cpu, "fp32")
    with pytest.raises(NonFiniteLossError, match=r"the rotation loss is nan at step 7; .*now 0.5"):
        block.check_finite(torch.tensor(float("nan")), "rotation loss", "at step 7")


def test_finetuning_trainer_uses_the_scaler_in_fp16() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    config = p3.finetune.TrainConfig(epochs=1, steps_per_epoch=3, precision="fp16")
    trainer = p3.finetune.Trainer(model, torch.nn.functional.cross_entropy, lambda g: (x, y), config)
    assert trainer.optim.scaler.is_enabled() and trainer.optim.precision == "fp16"
    history = trainer.fit()
    assert math.isfinite(history[0]["loss"]) and int(trainer.optimizer.state[model[0].weight]["step"]) == 3


def test_create_task_and_encoder_by_name() -> None:
    task = p3.create_task("rotation", spatial_dims=2, rotations="plane4")
    assert isinstance(task, p3.tasks.Rotation) and task.num_classes == 4
    encoder = p3.create_encoder("conv", spatial_dims=3, in_channels=2, widths=(4, 8))
    assert encoder(torch.randn(1, 2, 16, 16, 16)).shape == (1, 8)
    with pytest.raises(ValueError, match="did you mean 'rotations'"):
        p3.create_task("rotation", spatial_dims=2, rotation="plane4")
    with pytest.raises(ValueError, match="unknown encoder 'unte'; did you mean 'unet'"):
        p3.create_encoder("unte", spatial_dims=2)


def test_a_reproduction_may_pretrain_two_variants_of_one_task() -> None:
    config = p3.experiments.Reproduction(
        tasks={
            "jigsaw": TaskSpec(),
            "jigsaw-0.1": TaskSpec("jigsaw", options={"jitter": 3, **p3.tasks.NO_DEFENCES}),
        }
    )
    defended, plain = (config.tasks[m].build(3) for m in ("jigsaw", "jigsaw-0.1"))
    assert isinstance(plain, p3.tasks.Jigsaw) and config.tasks["jigsaw-0.1"].label == "jigsaw-0.1"
    assert defended.crop_scale is not None and plain.crop_scale is None
    with pytest.raises(ValueError, match=r"tasks\[0\].crop applies to a reproduction's tasks"):
        p3.experiments.Pretraining(tasks=[TaskSpec("rotation", crop=16)])


def test_compile_auto_is_on_for_long_cuda_runs_with_triton_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from pretext3d import engine

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.setattr(engine.importlib.util, "find_spec", lambda name: object())  # Triton "installed"
    assert engine.resolve_compile("auto", cuda, 1000) == (True, "compile on (auto: CUDA, 1000 steps)")
    assert engine.resolve_compile("auto", cuda, 999)[0] is False
    assert "would not repay the warm-up" in engine.resolve_compile("auto", cuda, 999)[1]
    assert engine.resolve_compile("auto", torch.device("mps"), 10**6)[0] is False
    assert engine.resolve_compile(False, cuda, 10**6) == (False, "compile off (compile=False)")
    monkeypatch.setattr(engine.importlib.util, "find_spec", lambda name: None)
    assert engine.resolve_compile("auto", cuda, 10**6) == (
        False, "compile off (auto: Triton, torch's GPU compiler, is not installed)"
    )  # fmt: skip
    assert engine.resolve_compile(True, cpu, 1) == (True, "compile on (compile=True)")


def test_loader_workers_auto_follow_the_cores_of_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    from pretext3d import engine

    cuda = torch.device("cuda")
    for cores, processes, expected in ((16, 1, 8), (16, 4, 3), (2, 1, 1), (1, 1, 0), (64, 8, 7)):
        monkeypatch.setattr(engine.os, "sched_getaffinity", lambda pid, n=cores: set(range(n)), raising=False)
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(processes))
        assert engine.resolve_workers("auto", cuda) == expected, (cores, processes)
    assert engine.resolve_workers("auto", torch.device("cpu")) == 0  # workers would take the step's cores
    assert engine.resolve_workers(5, torch.device("cpu")) == 5
    for bad in (-1, "many", True, 2.0):
        with pytest.raises(ValueError, match='num_workers must be an int >= 0 or "auto"'):
            engine.resolve_workers(bad, cuda)  # type: ignore[arg-type]


def test_pretrainer_says_how_it_runs_and_records_it(tmp_path: Path, spatial_dims: int) -> None:
    from pretext3d.pretrainer import PretrainConfig, Pretrainer

    lines: list[str] = []
    data = p3.data.PhantomImages("ct" if spatial_dims == 3 else "fundus", count=4, size=16)
    config = PretrainConfig(steps=2, batch_size=2, device="cpu", progress=False, shortcut_check=0)
    assert (config.compile, config.num_workers) == ("auto", "auto")
    encoder = p3.models.ConvEncoder(spatial_dims, in_channels=data[0].shape[0], widths=(4, 8))
    trainer = Pretrainer(
        encoder, p3.tasks.Rotation(spatial_dims), data, config, tmp_path / "e.pt", log=lines.append
    )
    record = trainer.fit()
    assert "cpu, fp32, compile off (auto: not on CUDA), 0 loader workers" in lines
    assert (record["compiled"], record["num_workers"]) == (False, 0)
    resumed: list[str] = []  # a finished run says nothing about how it would run
    Pretrainer(
        encoder, p3.tasks.Rotation(spatial_dims), data, config, tmp_path / "e.pt", log=resumed.append
    ).fit()
    assert not any("loader workers" in line for line in resumed)
    with pytest.raises(ValueError, match='num_workers must be an int >= 0 or "auto", got -2'):
        PretrainConfig(num_workers=-2)


def test_a_non_finite_loss_in_bf16_on_the_cpu_names_the_known_cause() -> None:
    net = torch.nn.Linear(2, 1)
    for precision, hint in (("bf16", True), ("fp32", False)):
        block = Optimization(net.parameters(), OptimSettings(), 10, torch.device("cpu"), precision)
        with pytest.raises(NonFiniteLossError, match="is nan at step 1") as err:
            block.check_finite(torch.tensor(float("nan")), "rpl loss", "at step 1")
        assert ("2-voxel feature maps" in str(err.value)) is hint


def test_a_task_object_is_named_as_the_registry_names_its_class() -> None:
    specs = task_specs([p3.tasks.RelativePatchLocation(3), p3.tasks.Rotation(3), p3.tasks.CPC(3)])
    assert [s.label for s in specs] == ["rpl", "rotation", "cpc"]  # as "rpl" in a config, not its class name

    class Mine(p3.tasks.Rotation):  # not registered: its class name
        pass

    assert TaskSpec(Mine(3)).label == "mine"


def test_an_encoder_that_asserts_its_input_size_gets_the_librarys_message(spatial_dims: int) -> None:
    class Fixed(torch.nn.Module):  # as timm's ViT: an assert on the input size
        num_features = 4

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            assert x.shape[-1] == 32, f"Input width ({x.shape[-1]}) doesn't match model (32)."
            return x.flatten(1)[:, :4]

    step = PretextStep(Fixed(), p3.tasks.RelativePatchLocation(spatial_dims), spatial_dims=spatial_dims)
    with pytest.raises(
        ValueError, match=r"the encoder cannot take rpl's views of shape .*doesn't match model"
    ):
        step(torch.randn(2, 1, *(32,) * spatial_dims))
