"""The one task contract, for every registered task in 2D and 3D on every device.

Every task: ``views, targets = task(x, generator)`` keeps dtype and device; targets are
what its kind says; the same generator state gives the same step; ``apply_params``
rebuilds ``task(x)`` from ``randomize``; eval mode is deterministic and leaves the task's
state alone; single samples follow the documented rule; ``state_dict`` carries all state;
and the documented training step lowers the loss.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch

import pretext3d as p3
from pretext3d.objectives import RandomNegativeMiner
from pretext3d.tasks import (
    CPC,
    ClassificationTask,
    DenseTask,
    EmbeddingTask,
    Exemplar,
    Jigsaw,
    MaskedImageModeling,
    ModelsGenesis,
    PredictiveTask,
    PretextTask,
    Reconstruction,
    RelativePatchLocation,
    Rotation,
)
from pretext3d.transforms import ExemplarAugmenter

Task = PretextTask[Any, Any]

# name -> (factory, input edge per spatial_dims); small enough to be fast, large enough to learn
TASKS: dict[str, tuple[Callable[[int], Task], dict[int, int]]] = {
    "rotation": (lambda d: Rotation(d), {2: 16, 3: 12}),
    "jigsaw": (lambda d: Jigsaw(d, grid=3 if d == 2 else 2, num_permutations=10, jitter=2), {2: 36, 3: 24}),
    "rpl": (lambda d: RelativePatchLocation(d, grid=3, jitter=1), {2: 36, 3: 24}),
    "exemplar": (
        lambda d: Exemplar(
            d,
            ExemplarAugmenter(d, flip_p=0.0, rot90_p=0.0, max_angle=15.0),
            miner=RandomNegativeMiner(),
            margin=0.5,
            memory_size=16,
        ),
        {2: 16, 3: 12},
    ),
    "cpc": (lambda d: CPC(d, grid=3, patch=6, overlap=0.0, steps=1, code_dim=16), {2: 24, 3: 18}),
    "genesis": (lambda d: ModelsGenesis(d), {2: 32, 3: 16}),
    "mim": (lambda d: MaskedImageModeling(d, patch=4), {2: 32, 3: 16}),
}
NAMES = list(TASKS)


def make(name: str, spatial_dims: int, device: torch.device | str = "cpu") -> tuple[Task, torch.Tensor]:
    factory, sizes = TASKS[name]
    x = p3.data.toy_images(4, spatial_dims, sizes[spatial_dims], generator=torch.Generator().manual_seed(7))
    return factory(spatial_dims).to(device), x.to(device)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def same(a: object, b: object) -> bool:
    if a is None or b is None:
        return a is b
    if isinstance(a, Reconstruction) and isinstance(b, Reconstruction):
        return same(a.target, b.target) and same(a.weight, b.weight) and same(a.baseline, b.baseline)
    assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
    return a.shape == b.shape and bool(torch.equal(a, b))


def test_every_registered_task_is_covered() -> None:
    assert set(p3.registry.TASKS) == set(TASKS)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_dtype_device_and_targets_by_kind(
    name: str, spatial_dims: int, device: torch.device, dtype: torch.dtype
) -> None:
    task, x = make(name, spatial_dims, device)
    x = x.to(dtype)
    views, targets = task(x, gen())
    assert views.dtype == dtype and views.device == x.device
    b = len(x)
    if task.num_patches is None:
        assert views.shape[1:] == x.shape[1:]
    else:
        assert views.shape[:3] == (b, task.num_patches, x.shape[1]) and views.dim() == x.dim() + 1
    if isinstance(task, ClassificationTask):
        assert targets.shape == (b,) and targets.dtype == torch.long and targets.device == x.device
        assert int(targets.min()) >= 0 and int(targets.max()) < task.num_classes
    elif isinstance(task, EmbeddingTask):
        assert targets.shape == (len(views),) and targets.dtype == torch.long and targets.device == x.device
        # every image's views share one id, and images have distinct ids
        assert targets.unique().numel() == b
    elif isinstance(task, DenseTask):
        assert isinstance(targets, Reconstruction) and targets.target.shape == x.shape
        assert targets.baseline.shape == x.shape and targets.target.device == x.device
        assert targets.weight is None or targets.weight.shape == (b, 1, *x.shape[2:])
    else:
        assert isinstance(task, PredictiveTask) and targets is None
    out = p3.PretextModel(p3.models.ConvEncoder(spatial_dims, widths=(4,)), task).to(device, dtype)(views)
    loss = task.loss(out, targets, generator=gen())
    assert loss.dim() == 0 and torch.isfinite(loss) and loss.device == x.device
    accuracy = task.accuracy(out, targets)
    # an accuracy in [0, 1]; a dense task's skill at most 1 (below 0: worse than its trivial predictor)
    assert accuracy.dim() == 0 and float(accuracy) <= 1.0
    assert isinstance(task, DenseTask) or float(accuracy) >= 0.0


@pytest.mark.parametrize("name", NAMES)
def test_one_generator_makes_a_step_reproducible(name: str, spatial_dims: int, device: torch.device) -> None:
    task, x = make(name, spatial_dims, device)
    twin = copy.deepcopy(task)
    model = p3.PretextModel(p3.models.ConvEncoder(spatial_dims, widths=(4,)), task).to(device)
    first = [*task(x, gen(1))]
    second = [*twin(x, gen(1))]
    assert all(same(a, b) for a, b in zip(first, second, strict=True))
    # the loss's own draws (mining, the memory, binary CPC negatives) follow the generator too
    out = model(first[0])
    assert torch.equal(
        task.loss(out, first[1], generator=gen(2)), twin.loss(out, second[1], generator=gen(2))
    )
    other = task(x, gen(3))[0]
    assert not same(first[0], other), "another seed should give other views"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_randomize_then_apply_is_the_call(
    name: str, spatial_dims: int, device: torch.device, mode: str
) -> None:
    task, x = make(name, spatial_dims, device)
    task.train(mode == "train")
    twin = copy.deepcopy(task)
    views, targets = task(x, gen(4))
    params = twin.randomize(x, gen(4))
    assert isinstance(params, task.params_type) and len(params) == len(x)
    state = copy.deepcopy(twin.state_dict())
    again = twin.apply_params(x, params)
    assert same(again[0], views) and same(again[1], targets)
    # apply_params draws nothing and changes no state: the same params give the same views
    assert same(twin.apply_params(x, params)[0], views)
    assert all(torch.equal(v, twin.state_dict()[k]) for k, v in state.items())
    # params travel across devices
    assert same(twin.apply_params(x, params.to("cpu"))[0], views)


@pytest.mark.parametrize("name", NAMES)
def test_eval_is_deterministic_and_freezes_state(name: str, spatial_dims: int, device: torch.device) -> None:
    task, x = make(name, spatial_dims, device)
    model = p3.PretextModel(p3.models.ConvEncoder(spatial_dims, widths=(4,)), task).to(device)
    for seed in range(2):  # fill any memory / advance any counter in training first
        views, targets = task(x, gen(seed))
        task.loss(model(views), targets, generator=gen(seed)).backward()
    model.eval()
    state = copy.deepcopy(task.state_dict())
    a = task(x, gen(5))
    b = task(x, gen(5))
    assert same(a[0], b[0]) and same(a[1], b[1])
    with torch.no_grad():
        loss_a = task.loss(model(a[0]), a[1], generator=gen(6))
        loss_b = task.loss(model(b[0]), b[1], generator=gen(6))
    assert torch.equal(loss_a, loss_b)
    assert all(torch.equal(v, task.state_dict()[k]) for k, v in state.items()), (
        "eval changed the task's state"
    )


@pytest.mark.parametrize("name", NAMES)
def test_single_sample_rule(name: str, spatial_dims: int, device: torch.device) -> None:
    task, x = make(name, spatial_dims, device)
    # the call needs the batch axis, so that a 2D batch never passes as one 3D sample
    with pytest.raises(ValueError, match=r"must have shape \(B, C, \*spatial\).*call task.single\(x\)"):
        task(x[0], gen())
    if isinstance(task, EmbeddingTask):
        with pytest.raises(ValueError, match=r"needs a batch \(B, C, \*spatial\)"):
            task.single(x[0], gen())
        return
    if isinstance(task, DenseTask):
        with pytest.raises(ValueError, match=r"call the task on a batch"):
            task.single(x[0], gen())
        return
    with pytest.raises(ValueError, match=r"single\(\) takes one sample"):
        task.single(x, gen())
    twin = copy.deepcopy(task)
    view, target = task.single(x[0], gen(8))
    views, targets = twin(x[:1], gen(8))
    assert torch.equal(view, views[0])
    if targets is None:
        assert target is None
    else:
        assert target.shape == () and torch.equal(target, targets[0])


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(name: str, spatial_dims: int, device: torch.device) -> None:
    task, x = make(name, spatial_dims, device)
    model = p3.PretextModel(p3.models.ConvEncoder(spatial_dims, widths=(4,)), task).to(device)
    for seed in range(3):
        views, targets = task(x, gen(seed))
        task.loss(model(views), targets, generator=gen(seed)).backward()
    fresh, _ = make(name, spatial_dims, device)
    fresh.load_state_dict(task.state_dict())
    assert task.state_dict().keys() == fresh.state_dict().keys()
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in task.state_dict().items())
    a, b = task(x, gen(9)), fresh(x, gen(9))
    assert same(a[0], b[0]) and same(a[1], b[1])
    out = model(a[0])
    assert torch.equal(task.loss(out, a[1], generator=gen(10)), fresh.loss(out, b[1], generator=gen(10)))


@pytest.mark.parametrize("name", NAMES)
def test_the_documented_training_step_lowers_the_loss(name: str, spatial_dims: int) -> None:
    torch.manual_seed(0)
    g = gen(0)
    factory, sizes = TASKS[name]
    task = factory(spatial_dims)
    if isinstance(task, Exemplar):
        # a filling memory adds negatives and so raises the loss while the model learns; the
        # memory's own learning test is in test_exemplar.py
        task.memory = None
    if isinstance(task, (Jigsaw, RelativePatchLocation)):
        # the toy images' cells differ only by position: without the crop and the tile mirroring
        # (the shortcut defences, which make that position unknowable) the task is learnable
        task.crop_scale, task.tile_flip = None, False
    images = p3.data.toy_images(32, spatial_dims, sizes[spatial_dims], generator=g)
    model = p3.PretextModel(p3.models.ConvEncoder(spatial_dims, widths=(8, 16)), task)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(80):
        views, targets = task(images[torch.randint(0, 32, (16,), generator=g)], g)
        loss = task.loss(model(views), targets, generator=g)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.8 * first, f"loss went from {first:.3f} to {last:.3f}"


@pytest.mark.parametrize("name", NAMES)
def test_views_of_an_input_that_requires_grad_carry_its_gradient(name: str, spatial_dims: int) -> None:
    task, x = make(name, spatial_dims)
    x = x.clone().requires_grad_()
    views, _ = task(x, gen(11))
    views.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape and bool(x.grad.abs().sum() > 0)
    # and the values are those of the no-grad path
    assert torch.equal(views.detach(), task(x.detach(), gen(11))[0])
