"""SparseTensor: batching, dense round trips, coordinate lookup and the neighbour-map cache."""

from __future__ import annotations

import pytest
import torch

from genrecon.modules.sparse.tensor import SparseTensor, feats_at


def _random_coords(n: int, res: int, gen: torch.Generator) -> torch.Tensor:
    return torch.unique(torch.randint(0, res, (n, 3), generator=gen), dim=0)


def _two_samples(gen: torch.Generator, channels: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    a, b = _random_coords(40, 6, gen), _random_coords(30, 6, gen)
    return [
        (a, torch.randn(len(a), channels, generator=gen)),
        (b, torch.randn(len(b), channels, generator=gen)),
    ]


def test_from_list_to_list_round_trip() -> None:
    gen = torch.Generator().manual_seed(0)
    samples = _two_samples(gen)
    x = SparseTensor.from_list(samples)
    assert x.coords.dtype == torch.int32 and x.coords.shape == (len(samples[0][0]) + len(samples[1][0]), 4)
    assert x.batch_size == 2
    assert x.layout == [slice(0, len(samples[0][0])), slice(len(samples[0][0]), len(x))]
    for (c, f), (c2, f2) in zip(samples, x.to_list(), strict=True):
        assert torch.equal(c.int(), c2) and torch.equal(f, f2)


def test_validation() -> None:
    with pytest.raises(ValueError, match="sorted by batch"):
        SparseTensor(torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0]]), torch.zeros(2, 1))
    with pytest.raises(ValueError, match=r"\[K, 4\]"):
        SparseTensor(torch.zeros(2, 3, dtype=torch.int32), torch.zeros(2, 1))
    with pytest.raises(ValueError, match="rows"):
        SparseTensor(torch.zeros(2, 4, dtype=torch.int32), torch.zeros(3, 1))
    with pytest.raises(ValueError, match="batch_size"):
        SparseTensor(torch.tensor([[1, 0, 0, 0]]), torch.zeros(1, 1), batch_size=1)
    # An empty trailing sample is representable with an explicit batch size.
    x = SparseTensor(torch.tensor([[0, 1, 2, 3]]), torch.ones(1, 2), batch_size=2)
    assert x.layout == [slice(0, 1), slice(1, 1)]
    assert x.to_list()[1][0].shape == (0, 3)


def test_dense_round_trip() -> None:
    gen = torch.Generator().manual_seed(1)
    x = SparseTensor.from_list(_two_samples(gen))
    dense = x.dense(6)
    assert dense.shape == (2, 3, 6, 6, 6)
    mask = torch.zeros(2, 6, 6, 6, dtype=torch.bool)
    c = x.coords.long()
    mask[c[:, 0], c[:, 1], c[:, 2], c[:, 3]] = True
    y = SparseTensor.from_dense(dense, mask)
    assert torch.equal(y.dense(6), dense)
    assert torch.equal(feats_at(x, y), y.feats)
    with pytest.raises(ValueError, match="resolution"):
        x.dense(5)


def test_replace_and_to_share_the_neighbour_cache() -> None:
    gen = torch.Generator().manual_seed(2)
    x = SparseTensor.from_list(_two_samples(gen))
    nmap = x.neighbour_map(3)
    y = x.replace(torch.zeros(len(x), 7))
    assert y.neighbour_map(3) is nmap
    assert x.to(dtype=torch.float64).neighbour_map(3) is nmap
    assert x.to(dtype=torch.float64).feats.dtype == torch.float64


def test_neighbour_map_matches_brute_force_and_never_crosses_samples() -> None:
    gen = torch.Generator().manual_seed(3)
    c = _random_coords(60, 5, gen)
    # The same coordinates in both samples: a neighbour must always come from the voxel's own sample.
    x = SparseTensor.from_list([(c, torch.zeros(len(c), 1)), (c, torch.zeros(len(c), 1))])
    nmap = x.neighbour_map(3)
    index = {tuple(v): i for i, v in enumerate(x.coords.tolist())}
    offsets = [(dx, dy, dz) for dx in (-1, 0, 1) for dy in (-1, 0, 1) for dz in (-1, 0, 1)]
    expected = torch.full((len(x), 27), len(x), dtype=torch.long)
    for i, (b, px, py, pz) in enumerate(x.coords.tolist()):
        for o, (dx, dy, dz) in enumerate(offsets):
            expected[i, o] = index.get((b, px + dx, py + dy, pz + dz), len(x))
    assert torch.equal(nmap.table, expected)
    assert sum(nmap.counts) == int((expected < len(x)).sum()) - len(x)  # pairs exclude the centre
    batch = x.coords[:, 0].long()
    assert torch.equal(batch[nmap.pair_out], batch[nmap.pair_in])


def test_lookup_and_feats_at() -> None:
    gen = torch.Generator().manual_seed(4)
    x = SparseTensor.from_list(_two_samples(gen))
    perm = torch.randperm(len(x), generator=gen)
    assert torch.equal(x.lookup(x.coords[perm]), perm)
    missing = torch.tensor([[0, 100, 0, 0], [1, -1, 0, 0], [5, 0, 0, 0]], dtype=torch.int32)
    assert torch.equal(x.lookup(missing), torch.full((3,), -1))
    # feats_at reorders by coordinate; a permuted copy must map back exactly.
    order = torch.argsort(x.coords[:, 0] * 1000 + perm.int() % 7, stable=True)  # keeps batch sorted
    shuffled = SparseTensor(x.coords[order], x.feats[order])
    assert torch.equal(feats_at(shuffled, x), x.feats)
    other = SparseTensor(torch.tensor([[0, 99, 99, 99]]), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="missing"):
        feats_at(x, other)
