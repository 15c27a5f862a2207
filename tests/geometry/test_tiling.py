"""Inference tiling: strides are whole atomic steps (edge/16) with >= 25 % overlap, chunks cover the padded
floor symmetrically in one z layer, grid offsets are integral and make voxel grids coincide, sparse chunks
are dropped; image selection takes evenly spaced cameras among those that see a chunk."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from genrecon.geometry.cameras import intrinsics_from_fov, look_at
from genrecon.geometry.pointcloud import room_extent
from genrecon.geometry.tiling import axis_steps, select_images, tile_scene
from tests.geometry.test_pointcloud import room_points


def test_axis_steps():
    assert axis_steps(2.9, 3.0) == (1, 0)
    assert axis_steps(3.0, 3.0) == (1, 0)
    assert axis_steps(3.01, 3.0) == (2, 1)
    # 10 m with 3 m chunks: strides of 37.3, 18.7, 12.4 steps are too long for 2-4 chunks; 5 take 10 steps.
    assert axis_steps(10.0, 3.0) == (5, 10)
    rng = np.random.default_rng(0)
    for length, edge in zip(rng.uniform(0.5, 30, 200), rng.uniform(2, 4, 200)):
        n, k = axis_steps(length, edge)
        atomic = edge / 16
        if n == 1:
            assert length <= edge
            continue
        assert 1 <= k <= 12  # overlap >= 4/16
        assert (n - 1) * k * atomic >= length - edge - 1e-9  # covers the axis
        if n > 2:  # one chunk fewer could not cover it within the overlap limit
            assert np.ceil((length - edge) / (n - 2) / atomic - 1e-9) > 12


@pytest.fixture(scope="module")
def room() -> np.ndarray:
    return room_points(np.random.default_rng(0), size=(7.0, 4.5), height=2.5, density=60) + [1.0, -2.0, 0.3]


def test_tiling_layout(room: np.ndarray):
    tiling = tile_scene(room)
    xy_min, xy_max, z_floor, z_ceiling = room_extent(room)
    edge = (z_ceiling - z_floor) * 1.11
    atomic = edge / 16
    assert tiling.edge_m == pytest.approx(edge) and tiling.atomic_m == pytest.approx(atomic)
    assert tiling.dropped == 0 and len(tiling.chunks) == 12  # 4 x 3 for 7 x 4.5 m padded by 0.6 m per side
    centers = tiling.centers
    assert all(c.yaw == 0.0 and c.edge_m == tiling.edge_m for c in tiling.chunks)
    np.testing.assert_allclose(centers[:, 2], z_floor + edge / 2)  # one layer, bottom on the floor
    pad = 3.5 / 16 * edge
    for a in range(2):
        axis = np.unique(np.round(centers[:, a], 9))
        strides = np.diff(axis)
        assert np.allclose(strides, strides[0])
        np.testing.assert_allclose(strides / atomic, np.round(strides / atomic), atol=1e-9)  # whole steps
        assert strides.max() <= 0.75 * edge + 1e-9  # overlap >= 25 %
        lo, hi = xy_min[a] - pad, xy_max[a] + pad
        assert axis[0] - edge / 2 <= lo + 1e-9 and axis[-1] + edge / 2 >= hi - 1e-9  # covers the padded floor
        assert 0.5 * (axis[0] + axis[-1]) == pytest.approx(0.5 * (lo + hi), abs=1e-9)  # symmetric
    # y-major order: x varies fastest.
    assert centers[0, 1] == centers[1, 1] and centers[0, 0] < centers[1, 0]
    assert (tiling.points_per_chunk >= 500).all()


def test_grid_offsets_make_voxel_grids_coincide(room: np.ndarray):
    tiling = tile_scene(room)
    offsets = tiling.grid_offsets
    assert offsets.dtype == np.int64 and (offsets.min(axis=0) == 0).all() and (offsets[:, 2] == 0).all()
    corners = tiling.centers - tiling.edge_m / 2
    np.testing.assert_allclose(corners, tiling.grid_origin + offsets * tiling.atomic_m, atol=1e-9)
    # At R = 32, voxel i of chunk a is voxel i - (offset_b - offset_a)·2 of chunk b: same world centre.
    R = 32
    vox = tiling.voxel_offsets(R)
    np.testing.assert_array_equal(vox, offsets * 2)
    a, b = 0, 5  # diagonal neighbours overlap
    shift = vox[b] - vox[a]
    assert (np.abs(shift[:2]) < R).all()
    i = np.stack(np.meshgrid(*[np.arange(R)] * 3, indexing="ij"), -1).reshape(-1, 3)
    j = i - shift
    shared = np.all((j >= 0) & (j < R), axis=1)
    assert shared.any()

    def world(chunk, idx):
        local = (idx + 0.5) / R - 0.5
        m = chunk.world_from_chunk
        return local @ m[:3, :3].T + m[:3, 3]

    np.testing.assert_allclose(world(tiling.chunks[a], i[shared]), world(tiling.chunks[b], j[shared]),
                               atol=1e-9)
    with pytest.raises(ValueError):
        tiling.voxel_offsets(24)


def test_sparse_chunks_are_dropped():
    pts = room_points(np.random.default_rng(1), size=(8.0, 6.0), height=2.6, density=60)
    pts = pts[~((pts[:, 0] > 3.6) & (pts[:, 1] > 2.6))]  # an L-shaped room: one quadrant is empty
    full = tile_scene(pts, min_points_per_chunk=0)
    kept = tile_scene(pts)
    assert full.dropped == 0 and kept.dropped > 0
    assert len(kept.chunks) + kept.dropped == len(full.chunks)
    enough = full.points_per_chunk >= 500
    np.testing.assert_allclose(kept.centers, full.centers[enough])
    np.testing.assert_array_equal(kept.points_per_chunk, full.points_per_chunk[enough])
    # Offsets stay on the same grid (shifted so the kept minimum is 0).
    np.testing.assert_array_equal(kept.grid_offsets - kept.grid_offsets[0],
                                  full.grid_offsets[enough] - full.grid_offsets[enough][0])
    assert kept.edge_m == pytest.approx((room_extent(pts)[3] - room_extent(pts)[2]) * 1.11)
    with pytest.raises(ValueError):
        tile_scene(pts, min_points_per_chunk=10**9)


def test_select_images_evenly_spaced_among_cameras_that_see_a_chunk(room: np.ndarray, caplog):
    tiling = tile_scene(room)
    centers = tiling.centers
    eyes, targets = [], []
    for i in range(20):
        if i % 3 == 2:  # far outside, looking away: sees no chunk
            eyes.append([60.0 + i, 0.0, 1.5])
            targets.append([80.0 + i, 5.0, 1.5])
        else:  # inside, 2.5 m from a chunk centre, looking at it
            c = centers[i % len(centers)]
            eyes.append(c + [2.5 * np.cos(i), 2.5 * np.sin(i), 0.2])
            targets.append(c)
    w2c = look_at(np.array(eyes), np.array(targets))
    K = intrinsics_from_fov(np.full(20, np.deg2rad(60.0)), aspect=4 / 3)
    pool = np.array([i for i in range(20) if i % 3 != 2])
    picked = select_images(w2c, K, tiling.chunks, 5)
    np.testing.assert_array_equal(picked, pool[np.round(np.linspace(0, len(pool) - 1, 5)).astype(int)])
    np.testing.assert_array_equal(picked, pool[[0, 3, 6, 10, 13]])
    # A pool no larger than asked for is taken whole.
    np.testing.assert_array_equal(select_images(w2c, K, tiling.chunks, 50), pool)
    with caplog.at_level(logging.WARNING):
        away = np.array([i for i in range(20) if i % 3 == 2])
        # linspace(0, 5, 3) = [0, 2.5, 5]; numpy (and the reference) round half to even.
        np.testing.assert_array_equal(select_images(w2c[away], K[away], tiling.chunks, 3), [0, 2, 5])
    assert "no camera sees any chunk" in caplog.text
