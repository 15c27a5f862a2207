"""collate: the host-side copies of the packing (token offsets, view counts) agree with the tensors."""

from itertools import pairwise

import numpy as np
import pytest
import torch

from genrecon.data.batching import collate, token_offsets
from genrecon.geometry.ovoxel import OVoxel


def _item(rng: np.random.Generator, key: str, tokens: int, views: int, size: int = 8) -> dict:
    flat = rng.choice(16**3, size=tokens, replace=False)
    coords = np.stack(np.unravel_index(flat, (16, 16, 16)), axis=1).astype(np.int32)
    latents = {
        "shape_coords": coords,
        "shape_feats": rng.standard_normal((tokens, 32)).astype(np.float32),
        "tex_feats": rng.standard_normal((tokens, 32)).astype(np.float32),
    }
    ovoxel = OVoxel(
        resolution=16,
        coords=coords,
        vertex_offset=rng.random((tokens, 3)),
        intersected=rng.random((tokens, 3)) < 0.5,
    )
    return {
        "key": key,
        "ovoxel": ovoxel,
        "views": rng.integers(0, 255, (views, size, size, 4), dtype=np.uint8),
        "w2c": np.tile(np.eye(4, dtype=np.float32), (views, 1, 1)),
        "intrinsics": np.tile(np.eye(3, dtype=np.float32), (views, 1, 1)),
        "shape_latent": latents,
        "tex_latent": latents,
    }


def _offsets_from_coords(coords: torch.Tensor, batch: int) -> tuple[int, ...]:
    counts = torch.bincount(coords[:, 0].long(), minlength=batch)
    return (0, *(int(x) for x in counts.cumsum(0)))


def test_collate_emits_offsets_consistent_with_the_batch_column() -> None:
    rng = np.random.default_rng(0)
    items = [_item(rng, f"s{i}", tokens, views) for i, (tokens, views) in enumerate([(7, 2), (0, 0), (12, 3), (1, 1)])]
    batch = collate(items)

    for prefix in ("shape", "ovoxel"):
        offsets = batch[f"{prefix}_token_offsets"]
        assert isinstance(offsets, tuple) and all(type(o) is int for o in offsets)
        assert offsets == (0, 7, 7, 19, 20)
        assert offsets == _offsets_from_coords(batch[f"{prefix}_coords"], 4)
        for b, (start, end) in enumerate(pairwise(offsets)):
            assert (batch[f"{prefix}_coords"][start:end, 0] == b).all()
    assert batch["shape_token_offsets"][-1] == len(batch["shape_feats"]) == len(batch["tex_feats"])

    counts = batch["view_counts"]
    assert isinstance(counts, tuple) and counts == (2, 0, 3, 1)
    assert counts == tuple(int(n) for n in batch["view_mask"].sum(1))
    for b, n in enumerate(counts):  # real views first: view_mask[b] == [True] * n + [False] * rest
        assert batch["view_mask"][b, :n].all() and not batch["view_mask"][b, n:].any()


def test_token_offsets() -> None:
    assert token_offsets([]) == (0,)
    assert token_offsets([3, 0, np.int64(2)]) == (0, 3, 3, 5)


def test_voxel_share_rule_drops_views_that_see_nothing_of_the_chunk():
    from genrecon.data.batching import ViewSampling, sample_parts

    rng = np.random.default_rng(0)
    views = ViewSampling(max_views=4, fixed_count=4, min_voxel_share=0.1)
    coverage = np.ones(4)
    chosen = views.choose(coverage, rng, np.array([0.5, 0.0, 0.3, 0.05]))
    assert chosen.tolist() == [0, 2]
    with pytest.raises(ValueError, match="voxel share"):
        views.choose(coverage, rng)
    # The rule reads the occupancy grid, so the loader decodes it even when the fields do not ask for it.
    assert "occupancy" in sample_parts(["ss_latent", "views"], views)
    assert "occupancy" not in sample_parts(["ss_latent", "views"], ViewSampling())
