"""Depths from points (``genrecon.models.point_depth``): which points a view sees, the simulated
structure-from-motion points, and the depth cue's logits made from them."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from genrecon.models.depth_cue import histogram_logits, patch_depth_targets
from genrecon.models.flow_transformer import DenseFlowTransformer
from genrecon.models.point_depth import (
    SimulatedPoints,
    draw_keep,
    seen_points,
    simulate_sfm_points,
    snap_to_occupancy,
)
from genrecon.models.projection import Projection

CELLS = 8


def _camera(n: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One sample, ``n`` identical cameras 2 units behind the origin looking along +z."""
    w2c = torch.eye(4).repeat(1, n, 1, 1)
    w2c[..., 2, 3] = 2.0
    K = torch.tensor([[1.0, 0, 0.5], [0, 1.0, 0.5], [0, 0, 1]]).repeat(1, n, 1, 1)
    return w2c, K, torch.ones(1, n, dtype=torch.bool)


def _plane(z: float, half: float, steps: int = 24) -> torch.Tensor:
    s = torch.linspace(-half, half, steps)
    x, y = torch.meshgrid(s, s, indexing="ij")
    return torch.stack([x.flatten(), y.flatten(), torch.full((steps * steps,), z)], dim=1)


def test_a_front_plane_hides_the_back_plane_where_it_covers_it() -> None:
    front, back = _plane(-0.2, 0.15), _plane(0.3, 0.45)
    points = torch.cat([front, back])
    w2c, K, mask = _camera()
    idx = torch.zeros(len(points), dtype=torch.long)
    u, v, valid, depth = Projection.project(points, idx, w2c, K, mask)
    seen = seen_points(u, v, depth, valid, idx, 1, CELLS, tolerance=0.05)
    assert seen[: len(front)].all()
    # Back points in a cell the front plane covers are hidden; those beyond its silhouette are seen.
    uf, vf = u[: len(front), 0], v[: len(front), 0]
    ub, vb = u[len(front):, 0], v[len(front):, 0]
    def cell(a, b):
        return (a * CELLS).floor().long() * CELLS + (b * CELLS).floor().long()
    covered = torch.isin(cell(ub, vb), cell(uf, vf))
    assert covered.any() and (~covered).any()
    assert not seen[len(front):][covered].any()
    assert seen[len(front):][~covered].all()
    # A second camera from behind sees the back plane everywhere.
    w2c2, K2, mask2 = _camera(2)
    w2c2[0, 1] = torch.diag(torch.tensor([-1.0, 1.0, -1.0, 1.0]))
    w2c2[0, 1, 2, 3] = 2.0
    u, v, valid, depth = Projection.project(points, idx, w2c2, K2, mask2)
    assert seen_points(u, v, depth, valid, idx, 1, CELLS, tolerance=0.05)[len(front):].all()


def test_simulated_points_keep_their_share_of_the_seen_ones_and_their_jitter() -> None:
    gen = torch.Generator().manual_seed(0)
    points = torch.rand(40000, 3, generator=gen)
    batch_idx = torch.arange(2).repeat_interleave(20000)
    seen = torch.rand(40000, generator=gen) < 0.5
    out, idx = simulate_sfm_points(points, batch_idx, seen, torch.tensor([1.0, 0.25]), 0.0, gen)
    assert (idx == 0).sum() == seen[:20000].sum()  # keep 1: every seen point, no other
    share = float((idx == 1).sum()) / float(seen[20000:].sum())
    assert share == pytest.approx(0.25, abs=0.02)
    kept = out[idx == 0]
    torch.testing.assert_close(kept, points[:20000][seen[:20000]])
    jittered, idx2 = simulate_sfm_points(points, batch_idx, seen, torch.ones(2), 0.01,
                                         torch.Generator().manual_seed(1))
    assert torch.equal(idx2, batch_idx[seen])
    assert float((jittered - points[seen]).std()) == pytest.approx(0.01, rel=0.05)


def test_simulated_outliers_move_their_share_and_leave_the_rest() -> None:
    gen = torch.Generator().manual_seed(0)
    points = torch.rand(40000, 3, generator=gen)
    batch_idx = torch.zeros(40000, dtype=torch.long)
    seen = torch.ones(40000, dtype=torch.bool)
    plain, _ = simulate_sfm_points(points, batch_idx, seen, torch.ones(1), 0.0, torch.Generator().manual_seed(1))
    same, _ = simulate_sfm_points(points, batch_idx, seen, torch.ones(1), 0.0, torch.Generator().manual_seed(1),
                                  outliers=0.0, outlier_noise=0.5)
    torch.testing.assert_close(same, plain)  # no outliers: the same draws as before
    out, _ = simulate_sfm_points(points, batch_idx, seen, torch.ones(1), 0.0, torch.Generator().manual_seed(1),
                                 outliers=0.2, outlier_noise=0.5)
    moved = (out - points).norm(dim=1) > 1e-6
    assert float(moved.float().mean()) == pytest.approx(0.2, abs=0.01)
    assert float((out - points)[moved].std()) == pytest.approx(0.5, rel=0.05)
    with pytest.raises(ValueError, match="outliers"):
        SimulatedPoints(outliers=1.5)


def test_keep_shares_are_log_uniform_in_training_and_fixed_in_evaluation() -> None:
    cfg = SimulatedPoints(keep=(0.01, 1.0), eval_keep=0.3)
    torch.testing.assert_close(draw_keep(cfg, 3, training=False), torch.full((3,), 0.3))
    keep = draw_keep(cfg, 20000, training=True, generator=torch.Generator().manual_seed(0))
    assert keep.min() >= 0.01 and keep.max() <= 1.0
    # log-uniform: the median is the geometric mean of the bounds, and a tenth of the draws lie below 0.01·10^0.2
    assert float(keep.median()) == pytest.approx(0.1, rel=0.05)
    assert float((keep < 0.01 * 10**0.2).float().mean()) == pytest.approx(0.1, abs=0.01)
    for bad in ({"keep": (0.5, 0.2)}, {"keep": (0.0, 1.0)}, {"eval_keep": 1.5}, {"noise": -1.0}):
        with pytest.raises(ValueError):
            SimulatedPoints(**bad)


def _model() -> DenseFlowTransformer:
    from tests.stages.test_flow_depth_supervision import _stage

    return _stage(weight=0.0).model  # tiny, 32 px views of 8 px patches: a 4 × 4 patch grid, 8 depth bins


def test_point_logits_are_the_points_histograms_where_they_land_and_the_heads_elsewhere() -> None:
    model = _model()
    p, g, bins = model.projection.patch_grid, model.projection.num_global_tokens, model.depth_cue.bins
    w2c, K, mask = _camera(2)
    w2c[0, 1, 0, 3] = 0.3  # the second view shifted sideways
    tokens = torch.randn(1, 2, g + p * p, model.cond_channels)
    points = _plane(0.1, 0.12, steps=16)  # covers only the image centre
    idx = torch.zeros(len(points), dtype=torch.long)
    logits = model.point_depth_logits(tokens, points, idx, w2c, K, mask, subcells=2, batch_points=50)
    u, v, valid, depth = Projection.project(points, idx, w2c, K, mask)
    target, has = patch_depth_targets(u, v, depth, valid, idx, 1, p, 2, bins, 4.0)
    assert has.any() and (~has).any()
    head = model.depth_cue.patch_logits(tokens, g, geometry=(w2c, K, mask))
    torch.testing.assert_close(logits[has], histogram_logits(target, has)[has])
    torch.testing.assert_close(logits[~has], head[~has])
    # The mode sits at the plane's depth: 2.1 units, bin floor(2.1 / 4 · bins).
    assert (logits[has].argmax(-1) == math.floor(2.1 / 4.0 * bins)).all()
    # Streaming the points in batches changes nothing.
    torch.testing.assert_close(model.point_depth_logits(tokens, points, idx, w2c, K, mask, subcells=2), logits)


def test_point_logits_need_the_depth_cue() -> None:
    from tests.stages.test_flow_depth_supervision import _stage

    model = _stage(weight=0.0, depth_cue=None).model
    w2c, K, mask = _camera()
    with pytest.raises(ValueError, match="depth_cue"):
        model.point_depth_logits(torch.randn(1, 1, 5, 8), torch.zeros(1, 3), torch.zeros(1, dtype=torch.long),
                                 w2c, K, mask)


def test_horizontal_planes_add_the_points_of_a_floor_seen_at_grazing_angles() -> None:
    from genrecon.models.point_depth import stereo_points_of_views
    from tests.geometry.test_stereo import FLOOR_Z, SIZE, _floor_views

    images, (w2c, K, mask), _, _ = _floor_views()
    cfg = SimulatedPoints(source="stereo", stereo_size=SIZE, stereo_depths=96, stereo_min_score=0.8,
                          stereo_refine=True)
    on_floor = {}
    for horizontal in (False, True):
        points, sample = stereo_points_of_views(images, w2c, K, mask, replace(cfg, stereo_horizontal=horizontal), 4.0)
        assert (sample == 0).all()
        on_floor[horizontal] = int(((points[:, 2] - FLOOR_Z).abs() < 0.02).sum())
    assert on_floor[True] > 3 * on_floor[False] > 0, on_floor


def test_vertical_planes_add_the_points_of_a_wall_seen_at_grazing_angles() -> None:
    """The floor scene turned on its side (world z -> x): the floor becomes a wall x = FLOOR_Z that the cameras
    see at grazing angles, which only the vertical planes warp exactly. The images do not change."""
    from genrecon.models.point_depth import stereo_points_of_views, swept_planes
    from tests.geometry.test_stereo import FLOOR_Z, SIZE, _floor_views

    images, (w2c, K, mask), _, _ = _floor_views()
    turn = torch.eye(4)
    turn[:3, :3] = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])  # new = turn · old: z -> x
    w2c = w2c @ torch.linalg.inv(turn)
    cfg = SimulatedPoints(source="stereo", stereo_size=SIZE, stereo_depths=96, stereo_min_score=0.8,
                          stereo_refine=True, stereo_horizontal=True)
    on_wall = {}
    for orientations in (0, 4):
        points, _ = stereo_points_of_views(images, w2c, K, mask, replace(cfg, stereo_vertical=orientations), 4.0)
        on_wall[orientations] = int(((points[:, 0] - FLOOR_Z).abs() < 0.02).sum())
    assert on_wall[4] > 3 * on_wall[0] > 0, on_wall
    # the families: horizontal, then vertical normals 45° apart, each reaching past the (rotated) chunk
    families = swept_planes(replace(cfg, stereo_vertical=4))
    normals = torch.stack([n for n, _ in families])
    torch.testing.assert_close(normals[1:] @ normals[1:].T, torch.tensor(
        [[1.0, 0.5**0.5, 0.0, -(0.5**0.5)], [0.5**0.5, 1.0, 0.5**0.5, 0.0], [0.0, 0.5**0.5, 1.0, 0.5**0.5],
         [-(0.5**0.5), 0.0, 0.5**0.5, 1.0]]), atol=1e-6, rtol=0)
    assert (normals[:, 2] == torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0])).all()
    assert float(families[2][1].max()) == pytest.approx(0.5 * 2**0.5 + 0.1, abs=1e-6)  # the cube's diagonal
    with pytest.raises(ValueError, match="stereo_vertical"):
        SimulatedPoints(stereo_vertical=-1)


def test_kept_blocks_drop_whole_blocks_at_the_drawn_share() -> None:
    from genrecon.models.point_depth import kept_blocks

    r, block = 16, 4
    idx = torch.stack(torch.meshgrid(*[torch.arange(r)] * 3, indexing="ij"), -1).reshape(-1, 3)
    points = (idx.float() + 0.5) / r - 0.5  # every voxel centre, twice: two samples
    points, batch_idx = torch.cat([points, points]), torch.cat([torch.zeros(len(idx)), torch.ones(len(idx))]).long()
    gen = torch.Generator().manual_seed(0)
    kept = kept_blocks(points, batch_idx, 2, r, block, 0.2, gen)
    blocks = (idx // block) @ torch.tensor([16, 4, 1])  # the block of each voxel
    for b in range(2):
        mine = kept[batch_idx == b]
        per_block = torch.zeros(64).index_add_(0, blocks, mine.float()) / block**3
        assert ((per_block == 0) | (per_block == 1)).all()  # a block keeps all its points or none
        assert 0.05 < per_block.mean() <= 1.0
    assert not torch.equal(kept[batch_idx == 0], kept[batch_idx == 1])  # each sample draws its own blocks
    assert kept_blocks(points, batch_idx, 2, r, block, 1.0, gen).all()  # a share of 1 keeps every block
    shares = torch.stack([kept_blocks(points, batch_idx, 2, r, block, 0.5, gen).float().mean() for _ in range(200)])
    assert abs(shares.mean() - 0.75) < 0.03  # uniform in [0.5, 1]: three quarters on average
    with pytest.raises(ValueError, match="block_keep"):
        SimulatedPoints(block_keep=1.5)


def test_points_snap_to_the_nearest_occupied_voxel_next_to_theirs_or_are_dropped() -> None:
    r = 4
    occ = torch.zeros(2, 1, r, r, r)
    occ[1, 0, 1, 2, 3] = 1.0
    occ[1, 0, 0, 0, 0] = occ[1, 0, 0, 0, 1] = 1.0
    centre = lambda i, j, k: (torch.tensor([i, j, k], dtype=torch.float32) + 0.5) / r - 0.5  # noqa: E731
    points = torch.stack([
        centre(1, 2, 2) + 0.1 / r,  # sample 1: next to (1, 2, 3)
        centre(1, 2, 2),  # sample 0: nothing occupied there
        centre(3, 0, 3),  # sample 1: two voxels from anything occupied
        centre(0, 0, 0) + torch.tensor([0.0, 0.0, 0.4 / r]),  # sample 1: between (0,0,0) and (0,0,1), nearer 0
    ])
    out, idx = snap_to_occupancy(points, torch.tensor([1, 0, 1, 1]), occ)
    torch.testing.assert_close(out, torch.stack([centre(1, 2, 3), centre(0, 0, 0)]))
    assert idx.tolist() == [1, 1]
    empty, empty_idx = snap_to_occupancy(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), occ)
    assert empty.shape == (0, 3) and empty_idx.shape == (0,)
