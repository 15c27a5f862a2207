"""Cleaning of sparse SfM point clouds and the room extent they give (genrecon-and-trellis2.md §3.1).

The reference cleans COLMAP points in three steps: drop points with reprojection error > 2 px or track
length < 4, then Open3D's statistical (20 neighbours, 2 σ) and radius (10 points within 0.1 m) outlier
removal. The two Open3D filters are re-implemented here on ``scipy.spatial.cKDTree`` with Open3D's exact
semantics (checked against ``cpp/open3d/geometry/PointCloud.cpp``), including its quirks:

* both neighbour searches include the query point itself (distance 0);
* statistical: the mean distance to the ``nb_neighbors`` nearest points (self included), a sample standard
  deviation (Bessel) over the points, strict ``<`` threshold, and points whose mean distance is exactly 0
  (``nb_neighbors`` coincident points) are dropped;
* radius: keep a point when the count within ``radius`` (strictly, nanoflann's ``d² < r²``), **itself
  included**, is **greater than** ``nb_points`` -- i.e. it has at least ``nb_points`` other points nearby.

Filters return boolean keep masks ``[P]`` so they compose and carry colours along.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from genrecon.data.colmap import ColmapPoints

# Percentiles of the room extent [C: GR inference/get_chunks.py `_get_room_size`].
XY_PERCENTILES = (0.5, 99.5)
Z_PERCENTILES = (0.2, 99.97)


def filter_colmap_points(points: ColmapPoints, max_error: float = 2.0, min_track: int = 4) -> ColmapPoints:
    """Drop points with reprojection error ``> max_error`` px or fewer than ``min_track`` observations.

    Reference settings: DSLR ``(2.0, 4)``; ScanNet++ iPhone ``(2.0, 0)`` (its exports have empty tracks);
    own iPhone captures ``(inf, 0)``.
    """
    return points.subset((points.error <= max_error) & (points.track_length >= min_track))


def statistical_outlier_removal(
    xyz: np.ndarray, nb_neighbors: int = 20, std_ratio: float = 2.0
) -> np.ndarray:
    """Open3D ``remove_statistical_outlier``: keep mask ``[P]`` bool of ``xyz [P, 3]``."""
    n = len(xyz)
    if n == 0:
        return np.zeros(0, dtype=bool)
    k = min(nb_neighbors, n)  # Open3D's KNN returns all points when there are fewer than k
    dist, _ = cKDTree(xyz).query(xyz, k=k)
    mean = np.asarray(dist, dtype=np.float64).reshape(n, k).mean(axis=1)
    # Open3D sums only positive means but divides by all points (and by n - 1 for the deviation).
    positive = mean > 0
    cloud_mean = mean[positive].sum() / n
    std = np.sqrt(np.sum((mean[positive] - cloud_mean) ** 2) / (n - 1)) if n > 1 else np.nan
    return positive & (mean < cloud_mean + std_ratio * std)


def radius_outlier_removal(xyz: np.ndarray, nb_points: int = 10, radius: float = 0.1) -> np.ndarray:
    """Open3D ``remove_radius_outlier``: keep mask ``[P]`` bool of points with more than ``nb_points``
    points (themselves included) strictly within ``radius``."""
    if len(xyz) == 0:
        return np.zeros(0, dtype=bool)
    # cKDTree counts d <= r; the largest float below r makes it Open3D's strict d < r.
    counts = cKDTree(xyz).query_ball_point(xyz, np.nextafter(radius, 0.0), return_length=True)
    return np.asarray(counts) > nb_points


def clean_colmap_points(
    points: ColmapPoints,
    max_error: float = 2.0,
    min_track: int = 4,
    nb_neighbors: int = 20,
    std_ratio: float = 2.0,
    radius_nb_points: int = 10,
    radius: float = 0.1,
) -> ColmapPoints:
    """The reference's whole cleaning chain: :func:`filter_colmap_points`, then statistical, then radius
    outlier removal (each on the survivors of the previous step). README iPhone settings: ``std_ratio=3``,
    ``radius_nb_points=7``, ``radius=0.2``."""
    points = filter_colmap_points(points, max_error, min_track)
    points = points.subset(statistical_outlier_removal(points.xyz, nb_neighbors, std_ratio))
    return points.subset(radius_outlier_removal(points.xyz, radius_nb_points, radius))


def room_extent(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
    """``(xy_min [2], xy_max [2], z_floor, z_ceiling)`` of cleaned points ``xyz [P, 3]`` (z up), from
    percentiles so stray points do not inflate it: xy 0.5 / 99.5 %, z 0.2 / 99.97 % (linear interpolation)."""
    if len(xyz) == 0:
        raise ValueError("no points to measure the room from")
    xy_min = np.percentile(xyz[:, :2], XY_PERCENTILES[0], axis=0)
    xy_max = np.percentile(xyz[:, :2], XY_PERCENTILES[1], axis=0)
    z_floor, z_ceiling = np.percentile(xyz[:, 2], Z_PERCENTILES)
    return xy_min, xy_max, float(z_floor), float(z_ceiling)


def _planar_normals(xyz: np.ndarray, k: int, max_points: int, seed: int) -> np.ndarray:
    """Unit normals ``[M, 3]`` of the locally planar points among a subsample of ``xyz``: the smallest
    principal axis of each point's ``k`` neighbours, kept where it holds < 10 % of the variance."""
    rng = np.random.default_rng(seed)
    sample = xyz[rng.choice(len(xyz), max_points, replace=False)] if len(xyz) > max_points else xyz
    _, idx = cKDTree(xyz).query(sample, k=min(k, len(xyz)))
    nbrs = xyz[idx] - xyz[idx].mean(axis=1, keepdims=True)  # [M, k, 3]
    eigvals, eigvecs = np.linalg.eigh(np.einsum("mki,mkj->mij", nbrs, nbrs))
    planar = eigvals[:, 0] < 0.1 * eigvals.sum(axis=1)
    return eigvecs[planar, :, 0]


def _mean_direction(normals: np.ndarray) -> np.ndarray:
    mean = normals.mean(axis=0)
    return mean / np.linalg.norm(mean)


def gravity_alignment_warning(
    xyz: np.ndarray,
    max_tilt_deg: float = 5.0,
    height_range_m: tuple[float, float] = (1.8, 6.0),
    k: int = 16,
    max_points: int = 20000,
    seed: int = 0,
) -> str | None:
    """A heuristic check that ``xyz [P, 3]`` is z-up and metric, as tiling assumes; ``None`` if it looks so.

    Rules (each adds a sentence to the warning):

    1. Room height: ``z_ceiling - z_floor`` of :func:`room_extent` outside ``height_range_m`` means the
       model is not metric or z is not up.
    2. Horizontal surfaces: among locally planar points (PCA of ``k`` neighbours), normals within 30° of
       ±z are floor / ceiling / table tops. If fewer than 5 % of the planar normals are, no horizontal
       surface was found (z is probably not up); otherwise their mean direction (refined on the normals
       within 5° of it) must lie within ``max_tilt_deg`` of z (a tilted world shifts the whole cluster).

    Limits: the sign of z (upside down) cannot be told from points alone, and a box room turned by 90°
    about x or y (y up) passes when its new height is plausible.
    """
    if len(xyz) < k:
        return f"only {len(xyz)} points: cannot check that the world is z-up and metric"
    problems = []
    _, _, z_floor, z_ceiling = room_extent(xyz)
    height = z_ceiling - z_floor
    if not height_range_m[0] <= height <= height_range_m[1]:
        problems.append(f"room height {height:.2f} is outside {height_range_m[0]}-{height_range_m[1]} m "
                        "(is the model metric and z up?)")
    normals = _planar_normals(np.asarray(xyz, dtype=np.float64), k, max_points, seed)
    normals = normals * np.where(normals[:, 2:] < 0, -1.0, 1.0)  # orient towards +z
    horizontal = normals[normals[:, 2] >= np.cos(np.deg2rad(30.0))]
    if len(normals) == 0 or len(horizontal) < 0.05 * len(normals):
        problems.append("no horizontal surfaces (floor, ceiling) found: z does not look like the up axis")
    else:
        up = _mean_direction(horizontal)
        # Refine on the normals within 5 degrees: neighbourhoods mixing floor and wall bias the first mean.
        up = _mean_direction(horizontal[horizontal @ up >= np.cos(np.deg2rad(5.0))])
        tilt = np.rad2deg(np.arccos(np.clip(up[2], -1.0, 1.0)))
        if tilt > max_tilt_deg:
            problems.append(f"horizontal surfaces are tilted {tilt:.1f} degrees from z "
                            "(gravity-align the model)")
    return "; ".join(problems) or None
