"""Point cloud cleaning: COLMAP error/track filter, Open3D-equivalent statistical and radius outlier
removal (planted outliers go, inliers stay, the exact Open3D definitions), room extent percentiles and the
gravity-alignment heuristic."""

from __future__ import annotations

import numpy as np

from genrecon.data.colmap import ColmapPoints
from genrecon.geometry.pointcloud import (
    clean_colmap_points,
    filter_colmap_points,
    gravity_alignment_warning,
    radius_outlier_removal,
    room_extent,
    statistical_outlier_removal,
)


def room_points(rng: np.random.Generator, size=(6.0, 4.0), height: float = 2.6, density: float = 400.0,
                noise: float = 0.005) -> np.ndarray:
    """``[P, 3]`` points on the floor (z = 0), ceiling and four walls of a box room at the origin corner."""
    sx, sy = size
    faces = [  # (origin, axis u, axis v)
        ((0, 0, 0), (sx, 0, 0), (0, sy, 0)),
        ((0, 0, height), (sx, 0, 0), (0, sy, 0)),
        ((0, 0, 0), (sx, 0, 0), (0, 0, height)),
        ((0, sy, 0), (sx, 0, 0), (0, 0, height)),
        ((0, 0, 0), (0, sy, 0), (0, 0, height)),
        ((sx, 0, 0), (0, sy, 0), (0, 0, height)),
    ]
    out = []
    for o, u, v in faces:
        o, u, v = map(np.asarray, (o, u, v))
        n = int(density * np.linalg.norm(u) * np.linalg.norm(v))
        ab = rng.uniform(0, 1, (n, 2))
        out.append(o + ab[:, :1] * u + ab[:, 1:] * v)
    pts = np.concatenate(out)
    return pts + rng.normal(0, noise, pts.shape)


def rotation_x(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])


def points_with(xyz: np.ndarray, error: np.ndarray, track_length: list[int]) -> ColmapPoints:
    n = len(xyz)
    offsets = np.concatenate([[0], np.cumsum(track_length)]).astype(np.int64)
    track = np.arange(offsets[-1], dtype=np.int64)
    rgb = np.arange(3 * n).reshape(n, 3).astype(np.uint8)
    return ColmapPoints(np.arange(n, dtype=np.int64), xyz, rgb, error, offsets, track, track + 100)


def test_filter_colmap_points_thresholds_are_inclusive():
    pts = points_with(np.arange(12.0).reshape(4, 3), np.array([0.5, 2.0, 2.1, 1.0]), [4, 5, 4, 3])
    kept = filter_colmap_points(pts)
    assert kept.ids.tolist() == [0, 1]
    np.testing.assert_array_equal(kept.rgb, pts.rgb[:2])
    assert kept.track_length.tolist() == [4, 5]
    np.testing.assert_array_equal(kept.track_image_ids, np.arange(9))  # tracks follow their points
    assert len(filter_colmap_points(pts, max_error=np.inf, min_track=0)) == 4


def _open3d_statistical(xyz: np.ndarray, k: int, std_ratio: float) -> np.ndarray:
    """Open3D's RemoveStatisticalOutliers spelled out with a dense distance matrix."""
    d = np.sort(np.linalg.norm(xyz[:, None] - xyz[None], axis=-1), axis=1)[:, :k]  # self (0) included
    avg = d.mean(axis=1)
    n = len(xyz)
    cloud_mean = sum(a for a in avg if a > 0) / n
    std = np.sqrt(sum((a - cloud_mean) ** 2 for a in avg if a > 0) / (n - 1))
    return (avg > 0) & (avg < cloud_mean + std_ratio * std)


def test_statistical_outlier_removal_is_open3d():
    rng = np.random.default_rng(0)
    xyz = np.concatenate([rng.normal(size=(150, 3)), np.repeat([[5.0, 5.0, 5.0]], 6, axis=0)])
    for k, ratio in [(5, 1.0), (20, 2.0), (400, 0.5)]:
        keep = statistical_outlier_removal(xyz, k, ratio)
        np.testing.assert_array_equal(keep, _open3d_statistical(xyz, min(k, len(xyz)), ratio))
    # Six coincident points with 5 neighbours each (self included) have mean distance 0: Open3D drops them.
    assert not statistical_outlier_removal(xyz, 5, 1.0)[-6:].any()


def test_radius_outlier_removal_counts_the_point_itself():
    square = np.array([[0, 0, 0], [0.05, 0, 0], [0, 0.05, 0], [0.05, 0.05, 0]])  # 4 points, all within 0.1
    assert radius_outlier_removal(square, nb_points=3, radius=0.1).all()  # 4 (self included) > 3
    assert not radius_outlier_removal(square, nb_points=4, radius=0.1).any()
    # The radius is strict (nanoflann's d² < r²): a neighbour at exactly r is not counted.
    pair = np.array([[0.0, 0, 0], [0.125, 0, 0]])
    assert not radius_outlier_removal(pair, nb_points=1, radius=0.125).any()
    assert radius_outlier_removal(pair, nb_points=1, radius=0.126).all()


def test_outlier_removal_drops_planted_outliers_and_keeps_inliers():
    rng = np.random.default_rng(1)
    g = np.arange(60) * 0.02
    plane = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    inliers = np.concatenate([plane, rng.normal(0, 0.002, (len(plane), 1))], 1)
    outliers = rng.uniform(-1, 2.2, (30, 3))
    outliers[:, 2] = np.sign(rng.uniform(-1, 1, 30)) * rng.uniform(0.4, 1.0, 30)  # well off the plane
    xyz = np.concatenate([inliers, outliers])
    n = len(inliers)
    for keep in (statistical_outlier_removal(xyz, 20, 2.0), radius_outlier_removal(xyz, 10, 0.1)):
        assert not keep[n:].any()
        assert keep[:n].mean() > 0.98
    pts = points_with(xyz, np.zeros(len(xyz)), [4] * len(xyz))
    clean = clean_colmap_points(pts)
    assert clean.ids.max() < n and len(clean) > 0.97 * n


def test_room_extent_percentiles_ignore_stray_points():
    rng = np.random.default_rng(2)
    xyz = room_points(rng, density=60)
    strays = np.array([[40.0, -30.0, 25.0], [-50.0, 60.0, -20.0]])
    xy_min, xy_max, z_floor, z_ceiling = room_extent(np.concatenate([xyz, strays]))
    np.testing.assert_allclose(xy_min, np.percentile(np.concatenate([xyz, strays])[:, :2], 0.5, axis=0))
    np.testing.assert_allclose([*xy_min, *xy_max], [0, 0, 6, 4], atol=0.1)
    np.testing.assert_allclose([z_floor, z_ceiling], [0, 2.6], atol=0.02)


def test_gravity_alignment_warning():
    rng = np.random.default_rng(3)
    xyz = room_points(rng, density=100)
    assert gravity_alignment_warning(xyz) is None
    tilted = gravity_alignment_warning(xyz @ rotation_x(12.0).T)
    assert tilted is not None and "tilted 12" in tilted
    sideways = gravity_alignment_warning(xyz @ rotation_x(45.0).T)
    assert sideways is not None and "no horizontal surfaces" in sideways
    scaled = gravity_alignment_warning(xyz * 10)
    assert scaled is not None and "room height 26" in scaled
