"""Exemplar: augmenter, triplet loss, miners, cross-batch memory, the task."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import pretext3d as p3
from pretext3d.losses import CrossBatchMemory, TripletMarginLoss
from pretext3d.miners import BatchHardMiner, DistanceWeightedMiner, Miner, RandomNegativeMiner, SemiHardMiner
from pretext3d.tasks import AugmentParams, Exemplar, ExemplarAugmenter

MINERS = [RandomNegativeMiner(), BatchHardMiner(), SemiHardMiner(margin=0.5), DistanceWeightedMiner()]


def off(spatial_dims: int, **on: float) -> ExemplarAugmenter:
    """An augmenter with every component off except those given."""
    probs = {"flip_p": 0.0, "rot90_p": 0.0, "rotate_p": 0.0, "zoom_p": 0.0, "intensity_p": 0.0}
    probs.update(on)
    return ExemplarAugmenter(spatial_dims, **probs)  # type: ignore[arg-type]


# --- augmenter -----------------------------------------------------------------------


def test_flips_and_quarter_turns_are_exact(spatial_dims: int) -> None:
    x = torch.randn(6, 2, *[8] * spatial_dims)
    aug = off(spatial_dims, flip_p=1.0)
    assert torch.equal(aug(x), x.flip(list(range(2, 2 + spatial_dims))))
    turns = off(spatial_dims, rot90_p=1.0)
    params = turns.sample_params(6, torch.Generator().manual_seed(0))
    out = turns.transform(x, params)
    for i in range(6):
        # find the quarter turns per plane whose product is the drawn matrix, then apply
        # them one after the other with torch.rot90
        for qs in itertools.product(range(4), repeat=len(turns.planes)):
            m = torch.eye(spatial_dims, dtype=torch.long)
            for plane, q in zip(turns.planes, qs, strict=True):
                m = p3.functional.plane_rotation_matrix(spatial_dims, plane, q) @ m
            if torch.equal(m.double(), params.matrix[i]):
                break
        expected = x[i]
        for (a, b), q in zip(turns.planes, qs, strict=True):
            expected = torch.rot90(expected, q, dims=(1 + a, 1 + b))
        assert torch.equal(out[i], expected)


def test_quarter_turn_matches_rot90(spatial_dims: int) -> None:
    x = torch.randn(1, 1, *[6] * spatial_dims)
    aug = off(spatial_dims)
    plane = (0, 1)
    params = AugmentParams.identity(1, spatial_dims)
    params.matrix[0] = p3.functional.plane_rotation_matrix(spatial_dims, plane, 1).double()
    assert torch.equal(aug.transform(x, params), torch.rot90(x, 1, dims=(2, 3)))


def test_identity_parameters_give_the_input_back(spatial_dims: int) -> None:
    x = torch.randn(3, 2, *[7] * spatial_dims)
    aug = ExemplarAugmenter(spatial_dims)
    assert torch.equal(aug.transform(x, AugmentParams.identity(3, spatial_dims)), x)
    assert torch.equal(off(spatial_dims)(x), x)


def test_resampling_path_agrees_with_exact_path_on_quarter_turns(spatial_dims: int) -> None:
    # grid_sample at a quarter turn lands on voxel centres: same values as the exact path
    x = torch.randn(2, 1, *[8] * spatial_dims)
    aug = off(spatial_dims)
    params = AugmentParams.identity(2, spatial_dims)
    params.matrix[:] = p3.functional.plane_rotation_matrix(spatial_dims, (0, 1), 1).double()
    exact = aug.transform(x, params)
    resampled = aug._resample(x, params.matrix)
    assert torch.allclose(resampled, exact, atol=1e-5)


def test_free_rotation_and_zoom_move_a_blob_where_the_matrix_says(spatial_dims: int) -> None:
    n = 33
    coords = torch.stack(
        torch.meshgrid(*[torch.arange(n, dtype=torch.float64)] * spatial_dims, indexing="ij")
    )
    centre = torch.tensor([20.0, 12.0, 16.0][:spatial_dims], dtype=torch.float64)
    blob = torch.exp(-((coords - centre.view(-1, *[1] * spatial_dims)) ** 2).sum(0) / 4).float()
    x = blob[None, None]
    aug = off(spatial_dims)
    params = AugmentParams.identity(1, spatial_dims)
    angle = math.radians(30)
    m = torch.eye(spatial_dims, dtype=torch.float64)
    m[0, 0], m[0, 1], m[1, 0], m[1, 1] = math.cos(angle), -math.sin(angle), math.sin(angle), math.cos(angle)
    params.matrix[0] = torch.diag(torch.tensor([1.1] + [0.9] * (spatial_dims - 1), dtype=torch.float64)) @ m
    out = aug.transform(x, params)[0, 0].double()
    expected = params.matrix[0] @ (centre - (n - 1) / 2) + (n - 1) / 2
    found = (coords * out).flatten(1).sum(1) / out.sum()
    assert torch.allclose(found, expected, atol=0.3)


def test_intensity(spatial_dims: int) -> None:
    x = torch.randn(2, 1, *[5] * spatial_dims)
    params = AugmentParams.identity(2, spatial_dims)
    params.contrast[0], params.brightness[0] = 1.5, 0.1
    out = off(spatial_dims).transform(x, params)
    mean = x[0].mean()
    assert torch.allclose(out[0], (x[0] - mean) * 1.5 + mean + 0.1, atol=1e-6)
    assert torch.equal(out[1], x[1])


@given(
    spatial_dims=st.sampled_from([2, 3]),
    batch=st.integers(1, 4),
    shape=st.lists(st.integers(4, 9), min_size=3, max_size=3),
    seed=st.integers(0, 1000),
)
def test_shapes_determinism_and_exact_fraction(
    spatial_dims: int, batch: int, shape: list[int], seed: int
) -> None:
    x = torch.randn(batch, 2, *shape[:spatial_dims])
    aug = ExemplarAugmenter(spatial_dims)
    a = aug(x, torch.Generator().manual_seed(seed))
    b = aug(x, torch.Generator().manual_seed(seed))
    assert a.shape == x.shape and torch.equal(a, b) and torch.isfinite(a).all()


def test_augmenter_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"flip_p must lie in \[0, 1\], got 1.5"):
        ExemplarAugmenter(3, flip_p=1.5)
    with pytest.raises(ValueError, match="zoom_range must be"):
        ExemplarAugmenter(3, zoom_range=(1.2, 0.8))
    with pytest.raises(ValueError, match="mode must be one of"):
        ExemplarAugmenter(3, mode="bicubic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"params.matrix must have shape \(2, 3, 3\)"):
        ExemplarAugmenter(3).transform(torch.randn(2, 1, 4, 4, 4), AugmentParams.identity(3, 3))


# --- triplet loss --------------------------------------------------------------------


def test_triplet_loss_matches_a_loop() -> None:
    torch.manual_seed(0)
    emb = torch.randn(10, 4)
    a, p, n = torch.tensor([0, 1, 2, 3]), torch.tensor([5, 6, 7, 8]), torch.tensor([9, 2, 4, 0])
    expected = 0.0
    for i, j, k in zip(a.tolist(), p.tolist(), n.tolist(), strict=True):
        d_ap = math.sqrt(sum((emb[i, c] - emb[j, c]).item() ** 2 for c in range(4)))
        d_an = math.sqrt(sum((emb[i, c] - emb[k, c]).item() ** 2 for c in range(4)))
        expected += max(0.0, d_ap - d_an + 0.7)
    assert TripletMarginLoss(0.7)(emb, (a, p, n)).item() == pytest.approx(expected / 4, rel=1e-5)


def test_no_triplets_give_a_zero_that_keeps_the_graph() -> None:
    emb = torch.randn(3, 4, requires_grad=True)
    empty = torch.zeros(0, dtype=torch.long)
    loss = TripletMarginLoss()(emb, (empty, empty, empty))
    assert loss.item() == 0.0
    loss.backward()
    assert emb.grad is not None and torch.equal(emb.grad, torch.zeros(3, 4))


def test_identical_anchor_and_positive_give_finite_gradients() -> None:
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    TripletMarginLoss(1.0)(emb, (torch.tensor([0]), torch.tensor([1]), torch.tensor([2]))).backward()
    assert emb.grad is not None and torch.isfinite(emb.grad).all()


def test_loss_bad_input() -> None:
    with pytest.raises(ValueError, match="margin must be > 0, got 0"):
        TripletMarginLoss(0)
    with pytest.raises(ValueError, match="differ in length"):
        TripletMarginLoss()(torch.randn(3, 2), (torch.tensor([0]), torch.tensor([1, 2]), torch.tensor([2])))


# --- miners --------------------------------------------------------------------------


def test_batch_hard_on_hand_built_embeddings() -> None:
    # two instances on a line: A at 0 and 1, B at 1.5 and 5
    emb = torch.tensor([[0.0], [1.0], [1.5], [5.0]])
    labels = torch.tensor([0, 0, 1, 1])
    a, p, n = BatchHardMiner()(emb, labels)
    assert a.tolist() == [0, 1, 2, 3]
    assert p.tolist() == [1, 0, 3, 2]  # the only positive each
    assert n.tolist() == [2, 2, 1, 1]  # nearest of the other instance


def test_semi_hard_on_hand_built_embeddings() -> None:
    emb = torch.tensor([[0.0], [1.0], [1.2], [1.4], [3.0], [3.1]])
    labels = torch.tensor([0, 0, 1, 2, 3, 3])
    a, p, n = SemiHardMiner(margin=0.5)(emb, labels)
    triplets = set(zip(a.tolist(), p.tolist(), n.tolist(), strict=True))
    # anchor 0, positive 1 (d=1): semi-hard negatives lie in (1, 1.5): cells 2 (1.2) and 3 (1.4) -> nearest 2
    assert (0, 1, 2) in triplets
    # anchor 1, positive 0 (d=1): negatives at 0.2, 0.4 (too close), 2.0, 2.1 (beyond 1.5) -> none
    assert not any(t[:2] == (1, 0) for t in triplets)
    # anchor 4, positive 5 (d=0.1): negatives in (0.1, 0.6): none (nearest at 1.6)
    assert not any(t[0] == 4 for t in triplets)


def test_random_negative_miner_covers_all_pairs_and_other_instances() -> None:
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    emb = torch.randn(6, 3)
    a, p, n = RandomNegativeMiner()(emb, labels, generator=torch.Generator().manual_seed(0))
    assert sorted(zip(a.tolist(), p.tolist(), strict=True)) == [
        (0, 3),
        (1, 4),
        (2, 5),
        (3, 0),
        (4, 1),
        (5, 2),
    ]
    assert (labels[n] != labels[a]).all()


@pytest.mark.parametrize("miner", MINERS, ids=lambda m: type(m).__name__)
def test_single_instance_batch_gives_no_triplets(miner: Miner) -> None:
    a, p, n = miner(torch.randn(2, 8), torch.tensor([7, 7]))
    assert len(a) == len(p) == len(n) == 0


@given(
    labels=st.lists(st.integers(0, 5), min_size=1, max_size=30),
    seed=st.integers(0, 10_000),
    which=st.integers(0, len(MINERS) - 1),
    anchors=st.floats(0.0, 1.0),
)
def test_miner_invariants(labels: list[int], seed: int, which: int, anchors: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    lab = torch.tensor(labels)
    emb = torch.nn.functional.normalize(torch.randn(len(labels), 8, generator=gen), dim=1)
    num_anchors = round(anchors * len(labels))
    a, p, n = MINERS[which](emb, lab, num_anchors=num_anchors, generator=gen)
    assert len(a) == len(p) == len(n)
    assert (a < num_anchors).all()
    assert (lab[a] == lab[p]).all() and (lab[a] != lab[n]).all()
    assert (a != p).all() and (a != n).all()


def test_cap_and_distance_weighted_prefers_no_far_negatives() -> None:
    gen = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(64, 16, generator=gen), dim=1)
    labels = torch.arange(32).repeat(2)
    a, _, _ = BatchHardMiner(max_triplets=10)(emb, labels, generator=gen)
    assert len(a) == 10
    a, _, n = DistanceWeightedMiner(nonzero_loss_cutoff=1.3)(emb, labels, generator=gen)
    assert len(a) > 0 and ((emb[a] - emb[n]).norm(dim=1) < 1.3).all()


def test_miner_bad_input() -> None:
    with pytest.raises(ValueError, match="embeddings and labels must have the same length, got 3 and 2"):
        BatchHardMiner()(torch.randn(3, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"embeddings must have shape \(N, D\); got \(3, 2, 2\)"):
        BatchHardMiner()(torch.randn(3, 2, 2), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="margin must be > 0"):
        SemiHardMiner(margin=-1.0)
    with pytest.raises(ValueError, match="max_triplets must be None or an int >= 1"):
        RandomNegativeMiner(max_triplets=0)


# --- memory --------------------------------------------------------------------------


def test_cross_batch_memory_mines_against_earlier_batches() -> None:
    memory = CrossBatchMemory(TripletMarginLoss(), BatchHardMiner(), embedding_dim=2, size=4)
    first = torch.tensor([[0.0, 0.0], [0.0, 0.1]])
    memory(first, torch.tensor([0, 0]))  # one instance: no triplet yet, but remembered
    assert memory.filled == 2
    second = torch.tensor([[0.0, 0.05], [5.0, 5.0]], requires_grad=True)
    loss = memory(second, torch.tensor([1, 0]))
    # anchor 0 (label 1) has no positive; anchor 1 (label 0) finds positives in memory
    expected = TripletMarginLoss()(
        torch.cat([second, first]), (torch.tensor([1]), torch.tensor([2]), torch.tensor([0]))
    )
    assert loss.item() == pytest.approx(expected.item())
    loss.backward()
    assert second.grad is not None
    memory(torch.randn(3, 2), torch.tensor([5, 6, 7]))
    # a ring of 4: [0, 0] then [1, 0] filled it; [5, 6, 7] overwrote the three oldest
    assert memory.filled == 4 and memory.memory_labels.tolist() == [5, 6, 7, 0]


# --- the task ------------------------------------------------------------------------


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
    with pytest.raises(ValueError, match="needs at least 2 volumes per batch"):
        task(x[:1])
    with pytest.raises(ValueError, match="miner, memory_size and gather do not apply"):
        Exemplar(spatial_dims, protocol="original", memory_size=8)


def test_exemplar_accuracy_by_hand() -> None:
    emb = torch.tensor([[0.0], [0.1], [5.0], [5.2], [0.2]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    assert Exemplar.accuracy(emb, labels).item() == pytest.approx(4 / 5)


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
        Exemplar(3)(torch.randn(1, 8, 8, 8))
    with pytest.raises(ValueError, match="augmenter works in 2D but spatial_dims=3"):
        Exemplar(3, ExemplarAugmenter(2))


def test_the_documented_custom_miner_works() -> None:
    import pretext3d.miners as miners_module

    namespace: dict[str, object] = {"Miner": Miner, "torch": torch}
    source = miners_module.__doc__.split("::", 1)[1]  # type: ignore[union-attr]
    exec("\n".join(line[4:] for line in source.splitlines()), namespace)
    miner = namespace["HardestPairMiner"]()  # type: ignore[operator]
    emb = torch.tensor([[0.0], [1.0], [1.5], [5.0]])
    a, p, n = miner(emb, torch.tensor([0, 0, 1, 1]))
    assert a.tolist() == [0, 1, 2, 3] and p.tolist() == [1, 0, 3, 2] and n.tolist() == [2, 2, 1, 1]
