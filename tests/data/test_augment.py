import pytest
import torch

from genrecon.data.augment import VoxelAugmentation, augment_voxels


def _grid(resolution: int = 8, samples: int = 3, per_sample: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    coords, feats = [], []
    for b in range(samples):
        flat = torch.randperm(resolution**3, generator=gen)[:per_sample]
        xyz = torch.stack([flat // resolution**2, flat // resolution % resolution, flat % resolution], dim=1)
        coords.append(torch.cat([torch.full((per_sample, 1), b), xyz], dim=1))
        feats.append(torch.rand(per_sample, 6, generator=gen))
    return torch.cat(coords).int(), torch.cat(feats)


def _as_dict(coords: torch.Tensor, feats: torch.Tensor) -> dict[tuple, tuple]:
    return {tuple(c.tolist()): tuple(f.tolist()) for c, f in zip(coords, feats)}


def test_each_sample_gets_a_symmetry_of_the_square_and_z_is_kept() -> None:
    coords, feats = _grid()
    r = 8
    out, out_feats = augment_voxels(coords, feats, r, torch.Generator().manual_seed(3),
                                    VoxelAugmentation(permute_rgb=False))
    assert out.dtype == coords.dtype and out.shape == coords.shape
    assert torch.equal(out[:, 0], coords[:, 0]) and torch.equal(out[:, 3], coords[:, 3])
    assert torch.equal(out_feats, feats)
    assert int(out[:, 1:].min()) >= 0 and int(out[:, 1:].max()) < r
    for b in range(3):
        rows = coords[:, 0] == b
        x, y = coords[rows, 1], coords[rows, 2]
        t = r - 1
        candidates = [(x, y), (t - y, x), (t - x, t - y), (y, t - x)]
        candidates += [(t - cx, cy) for cx, cy in candidates]
        got = (out[rows, 1], out[rows, 2])
        # One transform of the 8 maps every voxel of the sample (the same map for all its rows).
        assert any(torch.equal(got[0], cx) and torch.equal(got[1], cy) for cx, cy in candidates)
        assert len({tuple(c.tolist()) for c in out[rows]}) == int(rows.sum())  # still unique


def test_draws_cover_all_turns_and_mirrors() -> None:
    coords = torch.tensor([[b, 1, 0, 0] for b in range(64)], dtype=torch.int32)
    feats = torch.zeros(64, 6)
    out, _ = augment_voxels(coords, feats, 4, torch.Generator().manual_seed(0))
    # (1, 0) has 8 distinct images under the symmetries of a 4-grid's square.
    assert len({tuple(c.tolist()) for c in out[:, 1:3]}) == 8


def test_rgb_permutation_keeps_each_voxels_colours_and_other_channels() -> None:
    coords, feats = _grid()
    out_coords, out = augment_voxels(coords, feats, 8, torch.Generator().manual_seed(1),
                                     VoxelAugmentation(rotate=False, flip=False))
    assert torch.equal(out_coords, coords)
    assert torch.equal(out[:, 3:], feats[:, 3:])
    assert torch.equal(out[:, :3].sort(dim=1).values, feats[:, :3].sort(dim=1).values)
    # Within a sample every voxel gets the same permutation; across 3 samples and seeds some differ.
    changed = False
    for b in range(3):
        rows = coords[:, 0] == b
        perm = [int((feats[rows][0, :3] == v).nonzero()[0]) for v in out[rows][0, :3]]
        assert torch.equal(out[rows, :3], feats[rows][:, perm])
        changed |= perm != [0, 1, 2]
    assert changed


def test_same_generator_seed_gives_same_result_and_inputs_are_untouched() -> None:
    coords, feats = _grid()
    before = (coords.clone(), feats.clone())
    a = augment_voxels(coords, feats, 8, torch.Generator().manual_seed(7))
    b = augment_voxels(coords, feats, 8, torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(coords, before[0]) and torch.equal(feats, before[1])
    assert _as_dict(*a) != _as_dict(coords, feats)


def _chunk_batch(b: int = 3, r: int = 8, n: int = 2, size: int = 6) -> dict:
    g = torch.Generator().manual_seed(1)
    w2c = torch.eye(4).repeat(b, n, 1, 1)
    w2c[..., :3, 3] = torch.randn(b, n, 3, generator=g)
    K = torch.tensor([[0.9, 0.01, 0.45], [0.0, 0.9, 0.52], [0.0, 0.0, 1.0]]).repeat(b, n, 1, 1)
    occ = (torch.rand(b, 1, r, r, r, generator=g) > 0.7).float()
    return {"occupancy": occ, "views": torch.rand(b, n, 3, size, size, generator=g), "w2c": w2c,
            "intrinsics": K, "ss_latent": torch.randn(b, 2, r // 2, r // 2, r // 2, generator=g),
            "view_counts": (n,) * b}


def _encode(occ: torch.Tensor) -> torch.Tensor:
    """A stand-in for the SS-VAE encoder that is not equivariant: its output changes when the chunk turns."""
    pooled = torch.nn.functional.avg_pool3d(occ, 2)  # [M, 1, r/2, r/2, r/2]
    ramp = torch.arange(pooled.shape[-3], dtype=occ.dtype).view(1, 1, -1, 1, 1)
    return torch.cat([pooled, pooled * ramp], dim=1)


def test_chunk_batch_moves_grids_views_and_cameras_together_and_re_encodes_the_latent() -> None:
    from genrecon.data.augment import augment_chunk_batch
    from genrecon.geometry.chunk_symmetry import transform_cameras, transform_grid

    batch = _chunk_batch()
    before = {k: v.clone() for k, v in batch.items() if torch.is_tensor(v)}
    out = augment_chunk_batch(batch, turns=[0, 1, 2], mirror=[False, False, True], encode=_encode)
    # the identity element leaves chunk 0 exactly as it was, the stored latent included
    for key in ("occupancy", "views", "w2c", "intrinsics", "ss_latent"):
        assert torch.equal(out[key][0], batch[key][0]), key
    for i, (t, m) in ((1, (1, False)), (2, (2, True))):
        assert torch.equal(out["occupancy"][i], transform_grid(batch["occupancy"][i], t, m))
        assert torch.equal(out["ss_latent"][i], _encode(out["occupancy"][i:i + 1])[0])
        assert not torch.equal(out["ss_latent"][i], batch["ss_latent"][i])
        w2c, K = transform_cameras(batch["w2c"][i], batch["intrinsics"][i], t, m)
        assert torch.equal(out["w2c"][i], w2c) and torch.equal(out["intrinsics"][i], K)
    assert torch.equal(out["views"][1], batch["views"][1])  # a turn moves no pixel
    assert torch.equal(out["views"][2], batch["views"][2].flip(-1))  # a mirror mirrors every image
    assert out["view_counts"] == batch["view_counts"]
    for key, value in before.items():  # the input batch is not modified
        assert torch.equal(batch[key], value), key


def test_chunk_batch_refuses_a_latent_it_cannot_re_encode() -> None:
    from genrecon.data.augment import augment_chunk_batch

    batch = _chunk_batch()
    with pytest.raises(ValueError, match="re-encode"):
        augment_chunk_batch(batch, turns=[1, 0, 0], mirror=[False] * 3)
    assert augment_chunk_batch(batch, turns=[0, 4, 0], mirror=[False] * 3)["ss_latent"] is batch["ss_latent"]
