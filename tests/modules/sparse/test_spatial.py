"""Space-to-channel / channel-to-space: child numbering, cached masks and exact coordinate round trips."""

from __future__ import annotations

import torch

from genrecon.modules.sparse.spatial import ChannelToSpatial, SpatialToChannel, child_mask
from genrecon.modules.sparse.tensor import SparseTensor, feats_at


def _sorted_rows(coords: torch.Tensor) -> torch.Tensor:
    return torch.unique(coords, dim=0)  # sorted unique rows


def _random(gen: torch.Generator, channels: int = 3) -> SparseTensor:
    samples = []
    for n in (50, 35):
        c = torch.unique(torch.randint(0, 8, (n, 3), generator=gen), dim=0)
        samples.append((c, torch.randn(len(c), channels, generator=gen)))
    return SparseTensor.from_list(samples)


def test_child_numbering_and_packing() -> None:
    coords = torch.tensor([[0, 3, 0, 1], [0, 2, 1, 0], [0, 5, 5, 5]], dtype=torch.int32)
    feats = torch.tensor([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]])
    coarse = SpatialToChannel()(SparseTensor(coords, feats))
    assert coarse.coords.tolist() == [[0, 1, 0, 0], [0, 2, 2, 2]]
    mask = child_mask(coarse)
    # (3,0,1): k = 1 + 0 + 4 = 5; (2,1,0): k = 0 + 2 + 0 = 2; (5,5,5): k = 7.
    assert mask.tolist() == [[False, False, True, False, False, True, False, False], [False] * 7 + [True]]
    packed = coarse.feats.view(2, 8, 2)
    assert packed[0, 5].tolist() == [1.0, 10.0] and packed[0, 2].tolist() == [2.0, 20.0]
    assert packed[1, 7].tolist() == [3.0, 30.0]
    assert packed[0, [0, 1, 3, 4, 6, 7]].abs().sum() == 0


def test_round_trip_reproduces_coordinates_and_features() -> None:
    gen = torch.Generator().manual_seed(0)
    x = _random(gen)
    s2c, c2s = SpatialToChannel(), ChannelToSpatial()
    coarse = s2c(x)
    fine = c2s(coarse, child_mask(coarse))
    assert torch.equal(_sorted_rows(fine.coords), _sorted_rows(x.coords))
    assert torch.equal(feats_at(x, fine), fine.feats)
    # Children come out in parent order then k, so a tensor already in that order round-trips exactly.
    coarse2 = s2c(fine)
    again = c2s(coarse2, child_mask(coarse2))
    assert torch.equal(again.coords, fine.coords) and torch.equal(again.feats, fine.feats)


def test_children_in_parent_then_k_order() -> None:
    coarse = SparseTensor(torch.tensor([[0, 0, 0, 0], [0, 4, 1, 2]], dtype=torch.int32), torch.zeros(2, 8))
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[0, [6, 1]] = True
    mask[1, [0, 7]] = True
    fine = ChannelToSpatial()(coarse, mask)
    assert fine.coords.tolist() == [[0, 1, 0, 0], [0, 0, 1, 1], [0, 8, 2, 4], [0, 9, 3, 5]]


def test_batches_never_mix() -> None:
    c = torch.tensor([[0, 0, 0], [1, 1, 1], [2, 0, 0]])
    x = SparseTensor.from_list([(c, torch.ones(3, 1)), (c, 2 * torch.ones(3, 1))])
    coarse = SpatialToChannel()(x)
    assert coarse.coords.tolist() == [[0, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0]]
    assert coarse.batch_size == 2
    assert set(coarse.feats[:2].unique().tolist()) == {0.0, 1.0}
    assert set(coarse.feats[2:].unique().tolist()) == {0.0, 2.0}
    fine = ChannelToSpatial()(coarse, child_mask(coarse))
    assert torch.equal(fine.feats[fine.coords[:, 0] == 1], 2 * torch.ones(3, 1))


def test_gradients_flow_and_plan_is_shared() -> None:
    gen = torch.Generator().manual_seed(1)
    x = _random(gen)
    feats = x.feats.clone().requires_grad_()
    s2c = SpatialToChannel()
    coarse = s2c(x.replace(feats))
    coarse.feats.sum().backward()
    assert torch.equal(feats.grad, torch.ones_like(feats))
    # A second call on the same coordinate set reuses the coarse coordinates and their cache.
    assert s2c(x).coords is coarse.coords
