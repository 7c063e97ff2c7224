"""pytorch-metric-learning inside the exemplar task, and the task's views in a PML loop."""

from __future__ import annotations

import pytest
import torch

import pretext3d as p3
from pretext3d.objectives import PMLLoss, PMLMiner

pml = pytest.importorskip("pytorch_metric_learning")
from pytorch_metric_learning import losses, miners, reducers  # noqa: E402

LABELS = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])


def _embeddings(seed: int = 0, n: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, 16, generator=g), dim=1)


def _set(triplets: tuple[torch.Tensor, ...]) -> set[tuple[int, int, int]]:
    return set(zip(*(t.tolist() for t in triplets), strict=True))


def test_pml_triplet_miners_agree_with_ours() -> None:
    x = _embeddings()
    ours = p3.objectives.BatchHardMiner()(x, LABELS)
    theirs = PMLMiner(miners.BatchHardMiner())(x, LABELS)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
    # PML keeps every semi-hard triplet; ours (FaceNet's) the hardest semi-hard negative per pair
    semi = _set(PMLMiner(miners.TripletMarginMiner(margin=0.3, type_of_triplets="semihard"))(x, LABELS))
    ours_semi = _set(p3.objectives.SemiHardMiner(margin=0.3)(x, LABELS))
    assert ours_semi <= semi and {t[:2] for t in ours_semi} == {t[:2] for t in semi}
    dist = torch.cdist(x, x)
    for a, p, n in ours_semi:
        assert dist[a, n] == min(dist[a, m] for aa, pp, m in semi if (aa, pp) == (a, p))


def test_pair_miners_give_valid_triplets_and_memory_rows_are_references() -> None:
    x = _embeddings()
    a, p, n = PMLMiner(miners.MultiSimilarityMiner(epsilon=1.0))(x, LABELS)
    assert len(a) > 0
    assert (LABELS[a] == LABELS[p]).all() and (LABELS[a] != LABELS[n]).all() and (a != p).all()
    # with a memory, only the first rows anchor; positives and negatives come from every row
    a, p, n = PMLMiner(miners.TripletMarginMiner(margin=0.5))(x, LABELS, num_anchors=3)
    assert a.max() < 3 and max(p.max(), n.max()) >= 3 and (a != p).all()
    assert (LABELS[a] == LABELS[p]).all() and (LABELS[a] != LABELS[n]).all()
    capped = PMLMiner(miners.TripletMarginMiner(margin=1.0), max_triplets=3)
    first, again = capped(x, LABELS, generator=0), capped(x, LABELS, generator=0)
    assert len(first[0]) == 3 and all(torch.equal(u, v) for u, v in zip(first, again, strict=True))


def test_a_pml_miner_and_loss_train_the_exemplar_task_with_a_memory() -> None:
    encoder = p3.models.ConvEncoder(2, widths=(8, 16))
    task = p3.tasks.Exemplar(2, miner=PMLMiner(miners.TripletMarginMiner(margin=0.2)), memory_size=32)
    model = p3.PretextModel(encoder, task)
    state = torch.get_rng_state()
    for step in range(3):
        views, ids = task(torch.randn(4, 1, 24, 24, generator=torch.Generator().manual_seed(step)), step)
        loss = task.loss(model(views), ids, generator=step)
        loss.backward()
        assert torch.isfinite(loss)
    assert int(task.memory.filled) == 24  # type: ignore[union-attr]
    assert torch.equal(torch.get_rng_state(), state)  # the PML miner ran on a forked generator
    # a PML loss as the task's loss, fed the mined triplets and the instance ids
    task = p3.tasks.Exemplar(2, loss=PMLLoss(losses.ContrastiveLoss()))
    model = p3.PretextModel(p3.models.ConvEncoder(2, widths=(8, 16)), task)
    views, ids = task(torch.randn(4, 1, 24, 24), generator=0)
    loss = task.loss(model(views), ids, generator=0)
    loss.backward()
    assert loss > 0 and all(p.grad is not None for p in model.encoder.parameters())


def test_a_pml_loss_equals_ours_on_the_same_triplets() -> None:
    x = _embeddings()
    triplets = p3.objectives.BatchHardMiner()(x, LABELS)
    pml_loss = losses.TripletMarginLoss(margin=0.2, reducer=reducers.MeanReducer())
    theirs = PMLLoss(pml_loss)(x, triplets, LABELS)
    assert torch.allclose(theirs, p3.objectives.TripletMarginLoss(margin=0.2)(x, triplets))
    # the third way: the task's views and ids in a PML loop, our miner's triplets as indices_tuple
    loss = pml_loss(x, LABELS, triplets)
    assert torch.allclose(loss, theirs)


def test_what_does_not_fit_is_refused() -> None:
    with pytest.raises(
        TypeError, match=r"wrap a pytorch-metric-learning miner in pretext3d\.objectives\.PMLMiner"
    ):
        p3.tasks.Exemplar(2, miner=miners.BatchHardMiner())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"wrap a pytorch-metric-learning loss in .*PMLLoss"):
        p3.tasks.Exemplar(2, loss=lambda e, t, ids: e.sum())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="margin sets the default triplet loss"):
        p3.tasks.Exemplar(2, loss=PMLLoss(losses.ContrastiveLoss()), margin=0.5)
    with pytest.raises(ValueError, match="needs the labels"):
        PMLLoss(losses.ContrastiveLoss())(
            _embeddings(), p3.objectives.BatchHardMiner()(_embeddings(), LABELS)
        )
    with pytest.raises(TypeError, match="call it as miner"):
        PMLMiner(miners.BatchHardMiner()).mine(torch.zeros(2, 2), torch.eye(2, dtype=torch.bool),
                                               embedding_dim=2, generator=None)  # fmt: skip
