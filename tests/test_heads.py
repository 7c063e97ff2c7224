"""Heads: pooling, classifier and multi-patch heads, the CPC head's causality."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from pretext3d.heads import ClassifierHead, CPCHead, MultiPatchClassifierHead, global_pool
from pretext3d.tasks import Jigsaw


def test_context_never_sees_its_targets(spatial_dims: int) -> None:
    torch.manual_seed(0)
    grid, feats = 4, 6
    head = CPCHead(feats, spatial_dims, grid, steps=2, code_dim=5, context_dim=7)
    features = torch.randn(2 * grid**spatial_dims, feats)
    z = head.codes(features)
    contexts = head.contexts(z)
    for row in range(1, grid):
        changed = features.view(2, *[grid] * spatial_dims, feats).clone()
        changed[:, row] += 10.0  # change every patch of one row
        new = head.contexts(head.codes(changed.view(-1, feats)))
        assert torch.allclose(new[:, :row], contexts[:, :row])  # rows above: untouched
        assert not torch.allclose(new[:, row], contexts[:, row])  # the row itself: changed


def test_head_targets_are_the_rows_below(spatial_dims: int) -> None:
    torch.manual_seed(0)
    grid = 4
    head = CPCHead(3, spatial_dims, grid, steps=3, code_dim=5)
    features = torch.randn(2 * grid**spatial_dims, 3)
    out = head(features)
    assert out.shape == (2, 2, 3, grid - 1, *[grid] * (spatial_dims - 1), 5)
    z = torch.nn.functional.normalize(head.codes(features), dim=-1)
    for k, r in itertools.product(range(3), range(grid - 1)):
        target = out[1, :, k, r]
        if r + 1 + k < grid:
            assert torch.allclose(target, z[:, r + 1 + k])
        else:
            assert torch.equal(target, torch.zeros_like(target))
    assert torch.allclose(out[0].norm(dim=-1), torch.ones(()))  # unit predictions


def test_global_pool_means_over_space(spatial_dims: int) -> None:
    f = torch.randn(3, 5, *[4] * spatial_dims)
    assert torch.allclose(global_pool(f), f.mean(dim=tuple(range(2, 2 + spatial_dims))))
    assert torch.equal(
        global_pool(f[:, :, 0, 0] if spatial_dims == 2 else f[:, :, 0, 0, 0]), f.flatten(2)[..., 0]
    )
    with pytest.raises(ValueError, match=r"must be \(N, F\) or \(N, F, \*spatial\)"):
        global_pool(torch.randn(5))


def test_classifier_head_shapes() -> None:
    head = ClassifierHead(16, 10)
    assert head(torch.randn(4, 16)).shape == (4, 10)
    assert head(torch.randn(4, 16, 3, 3, 3)).shape == (4, 10)
    assert isinstance(ClassifierHead(16, 10, hidden=0).mlp[-1], nn.Linear)
    with pytest.raises(ValueError, match="dropout must lie in"):
        ClassifierHead(16, 10, dropout=1.0)


def test_multi_patch_head_concatenates_in_slot_order() -> None:
    torch.manual_seed(0)
    head = MultiPatchClassifierHead(8, num_patches=3, num_classes=5)
    feats = torch.randn(2 * 3, 8, 2, 2)
    out = head(feats)
    assert out.shape == (2, 5)
    swapped = feats.view(2, 3, 8, 2, 2)[:, [1, 0, 2]].reshape(6, 8, 2, 2)
    assert not torch.allclose(head(swapped), out)  # slot order matters (no pooling over slots)
    # each sample's logits depend only on its own patches
    other = feats.clone()
    other[3:] = torch.randn(3, 8, 2, 2)
    assert torch.allclose(head(other)[0], out[0]) and not torch.allclose(head(other)[1], out[1])
    with pytest.raises(ValueError, match="B \\* num_patches = B \\* 3 rows, got 5"):
        head(torch.randn(5, 8))


def test_jigsaw_head_is_small() -> None:
    # The original put 16-36 M parameters into its heads on a 3.5 M encoder.
    head = Jigsaw(3).make_head(256)
    assert sum(p.numel() for p in head.parameters()) < 600_000
