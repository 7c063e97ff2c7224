"""Triplet miners: hand-built cases, invariants, the documented custom miner."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from pretext3d.objectives import (
    BatchHardMiner,
    DistanceWeightedMiner,
    Miner,
    RandomNegativeMiner,
    SemiHardMiner,
)

MINERS = [RandomNegativeMiner(), BatchHardMiner(), SemiHardMiner(margin=0.5), DistanceWeightedMiner()]


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
    with pytest.raises(ValueError, match="margin must be a finite number > 0"):
        SemiHardMiner(margin=-1.0)
    with pytest.raises(ValueError, match="max_triplets must be an int >= 1"):
        RandomNegativeMiner(max_triplets=0)


def test_the_documented_custom_miner_works() -> None:
    import pretext3d.objectives.miners as miners_module

    namespace: dict[str, object] = {"Miner": Miner, "torch": torch}
    source = miners_module.__doc__.split("::", 1)[1]  # type: ignore[union-attr]
    exec("\n".join(line[4:] for line in source.splitlines()), namespace)
    miner = namespace["HardestPairMiner"]()  # type: ignore[operator]
    emb = torch.tensor([[0.0], [1.0], [1.5], [5.0]])
    a, p, n = miner(emb, torch.tensor([0, 0, 1, 1]))
    assert a.tolist() == [0, 1, 2, 3] and p.tolist() == [1, 0, 3, 2] and n.tolist() == [2, 2, 1, 1]


@pytest.mark.parametrize("miner", MINERS, ids=lambda m: type(m).__name__)
def test_miners_are_stateless_and_follow_the_generator(miner: Miner) -> None:
    emb = torch.nn.functional.normalize(torch.randn(12, 5, generator=torch.Generator().manual_seed(0)), dim=1)
    labels = torch.arange(6).repeat(2)
    before = dict(vars(miner))
    first = miner(emb, labels, generator=torch.Generator().manual_seed(1))
    again = miner(emb, labels, generator=torch.Generator().manual_seed(1))
    assert vars(miner) == before, "a call must leave no state on the miner"
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


@pytest.mark.parametrize("miner", MINERS, ids=lambda m: type(m).__name__)
def test_an_empty_batch_gives_no_triplets(miner: Miner) -> None:
    a, p, n = miner(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert len(a) == len(p) == len(n) == 0
