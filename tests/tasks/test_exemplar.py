"""The exemplar task: protocols, instance ids, accuracy, learning."""

from __future__ import annotations

import pytest
import torch

import pretext3d as p3
from pretext3d.objectives import (
    RandomNegativeMiner,
)
from pretext3d.tasks import Exemplar
from pretext3d.transforms import ExemplarAugmenter


def _train(task: Exemplar, steps: int = 60) -> tuple[list[float], list[float]]:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    images = p3.data.toy_images(64, 2, 24, generator=gen)
    model = p3.PretextModel(p3.models.ConvEncoder(2, widths=(8, 16)), task)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses, accuracies = [], []
    for _ in range(steps):
        views, labels = task(images[torch.randint(0, 64, (16,), generator=gen)], gen)
        embeddings = model(views)
        loss = task.loss(embeddings, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        accuracies.append(task.accuracy(embeddings, labels).item())
    return losses, accuracies


GENTLE = {"flip_p": 0.0, "rot90_p": 0.0, "rotate_p": 0.5, "max_angle": 15.0}


def test_two_view_protocol(spatial_dims: int) -> None:
    task = Exemplar(spatial_dims)
    x = torch.randn(3, 1, *[8] * spatial_dims)
    views, labels = task(x, torch.Generator().manual_seed(0))
    assert views.shape == (6, 1, *[8] * spatial_dims)
    assert labels.tolist() == [0, 1, 2, 0, 1, 2]
    _, later = task(x)
    assert later.tolist() == [3, 4, 5, 3, 4, 5]  # unique across calls


def test_original_protocol(spatial_dims: int) -> None:
    task = Exemplar(spatial_dims, protocol="original")
    x = torch.randn(4, 1, *[8] * spatial_dims)
    views, labels = task(x, torch.Generator().manual_seed(1))
    b = 4
    assert torch.equal(views[b : 2 * b], x)  # positives unaugmented
    other = labels[2 * b :]
    assert (other != labels[:b]).all()  # never a volume's own negative
    assert torch.equal(views[2 * b :], x[other])
    a, p, n = task.triplets(torch.randn(12, 3), labels)
    assert a.tolist() == [0, 1, 2, 3] and p.tolist() == [4, 5, 6, 7] and n.tolist() == [8, 9, 10, 11]
    with pytest.raises(ValueError, match="needs at least 2 images per batch"):
        task(x[:1])
    with pytest.raises(ValueError, match="miner, memory_size and gather do not apply"):
        Exemplar(spatial_dims, protocol="original", memory_size=8)


def test_exemplar_accuracy_by_hand() -> None:
    emb = torch.tensor([[0.0], [0.1], [5.0], [5.2], [0.2]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    assert Exemplar(2).accuracy(emb, labels).item() == pytest.approx(4 / 5)


def test_triplet_loss_falls_in_a_short_run() -> None:
    task = Exemplar(2, ExemplarAugmenter(2, **GENTLE), miner=RandomNegativeMiner(), margin=0.5)  # type: ignore[arg-type]
    losses, _ = _train(task)
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.7 * first, f"loss went from {first:.3f} to {last:.3f}"


def test_hard_mining_with_memory_learns_to_retrieve() -> None:
    # Batch-hard mining keeps the loss near the margin by design; retrieval shows the learning.
    task = Exemplar(2, ExemplarAugmenter(2, **GENTLE), margin=0.5, memory_size=64)  # type: ignore[arg-type]
    _, accuracies = _train(task)
    first, last = sum(accuracies[:10]) / 10, sum(accuracies[-10:]) / 10
    assert last > first + 0.2, f"retrieval accuracy went from {first:.2f} to {last:.2f}"


def test_exemplar_rejects_single_samples_and_mismatched_augmenters() -> None:
    with pytest.raises(ValueError, match="Exemplar needs a batch"):
        Exemplar(3).single(torch.randn(1, 8, 8, 8))
    with pytest.raises(ValueError, match="augmenter works in 2D but spatial_dims=3"):
        Exemplar(3, ExemplarAugmenter(2))


def test_instance_ids_come_from_a_saved_counter_that_only_training_advances(spatial_dims: int) -> None:
    task = Exemplar(spatial_dims)
    x = torch.randn(3, 1, *[8] * spatial_dims)
    _, first = task(x)
    _, second = task(x)
    assert first.tolist() == [0, 1, 2] * 2 and second.tolist() == [3, 4, 5] * 2
    assert int(task.instance_counter) == 6 and "instance_counter" in task.state_dict()
    task.eval()
    assert task(x)[1].tolist() == [0, 1, 2] * 2 and int(task.instance_counter) == 6
    restored = Exemplar(spatial_dims)
    restored.load_state_dict(task.state_dict())
    assert restored(x)[1].tolist() == [6, 7, 8] * 2


def test_original_protocol_params_name_the_negative(spatial_dims: int) -> None:
    task = Exemplar(spatial_dims, protocol="original")
    x = torch.randn(4, 1, *[8] * spatial_dims)
    params = task.randomize(x, torch.Generator().manual_seed(0))
    assert params.second is None and params.negative is not None
    assert not bool((params.negative == torch.arange(4)).any())
    views, _ = task.apply_params(x, params)
    assert torch.equal(views[8:], x[params.negative])
    params.negative = torch.arange(4)
    with pytest.raises(ValueError, match="indices of another image for every anchor"):
        task.apply_params(x, params)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_channels_last_input_gives_the_same_views(spatial_dims: int, dtype: torch.dtype) -> None:
    # issue 39 lists channels-last input to the exemplar; the same draws give the same views
    fmt = torch.channels_last if spatial_dims == 2 else torch.channels_last_3d
    task = Exemplar(spatial_dims)
    x = torch.randn(4, 3, *(12,) * spatial_dims).to(dtype)
    params = task.randomize(x, generator=0)
    plain, last = task.apply_params(x, params), task.apply_params(x.contiguous(memory_format=fmt), params)
    assert all(torch.equal(a, b) for a, b in zip(plain, last, strict=True))
