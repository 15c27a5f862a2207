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
