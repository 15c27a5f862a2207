"""Camera placement inside a room, following the GenRecon room renders, and the per-sample 40 % view rule.

Per room (reference §2.4): one focal length drawn from 20–35 mm on a 32 mm sensor (horizontal FoV
≈ 49–77°), ``ceil(area · 1.5 / m²)`` views (density halved for rooms of 30 m² or more) clamped to
``[min_views, max_views]``. Each camera stands inside the floor polygon at least ``margin_m`` from its
outline, at a height in ``height_range``, at least ``clearance_m`` from every surface, and looks at a point of
the scene surface (area-weighted, furniture favoured) that it can see. Everything random is drawn from the
caller's generator, so a placement is reproducible. All arrays are numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import trimesh

from genrecon.data.scenes.scene import Scene
from genrecon.geometry.cameras import (
    box_corners_and_centre,
    fov_from_focal_length,
    intrinsics_from_fov,
    look_at,
    pixel_rays,
    projected_box_coverage,
)
from genrecon.render.embree import RayCaster


@dataclass
class CameraPlacementConfig:
    """Knobs of :func:`place_cameras` (lengths in metres).

    ``furniture_weight`` multiplies the sampling weight of non-structural faces (not floor, ceiling or walls)
    when drawing look-at targets. ``blocked_*``: a view is rejected when at least ``blocked_fraction`` of a
    5×5 grid of its rays hit something nearer than ``blocked_depth_m`` (a camera staring into a wall).
    ``reject_enclosed`` drops positions from which most clearance rays hit back faces, i.e. inside a closed
    object (this assumes faces oriented towards the room, as scene sources export them).
    """

    views_per_m2: float = 1.5
    large_room_m2: float = 30.0
    min_views: int = 16
    max_views: int = 160
    margin_m: float = 0.3
    height_range: tuple[float, float] = (0.5, 2.2)
    clearance_m: float = 0.2
    focal_mm_range: tuple[float, float] = (20.0, 35.0)
    sensor_width_mm: float = 32.0
    aspect: float = 1.0
    min_target_distance_m: float = 0.8
    max_pitch_deg: float = 75.0
    line_of_sight_tolerance_m: float = 0.02
    furniture_weight: float = 4.0
    target_pool_size: int = 4096
    targets_per_camera: int = 16
    blocked_depth_m: float = 0.4
    blocked_fraction: float = 0.6
    reject_enclosed: bool = True
    candidates_per_round: int = 256
    max_rounds: int = 64


@dataclass
class CameraRig:
    """``N`` placed cameras: ``w2c [N, 4, 4]`` OpenCV world->camera, ``K [N, 3, 3]`` normalised (one FoV per
    room), ``fov_x`` in radians, ``positions [N, 3]`` and look-at ``targets [N, 3]`` in the world frame."""

    w2c: np.ndarray
    K: np.ndarray
    fov_x: float
    positions: np.ndarray
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.w2c)


def view_count(floor_area: float, config: CameraPlacementConfig) -> int:
    """Number of views of a room: ``ceil(area · density)``, density halved from ``large_room_m2`` on,
    clamped to ``[min_views, max_views]``."""
    density = config.views_per_m2 if floor_area < config.large_room_m2 else config.views_per_m2 / 2.0
    return int(min(config.max_views, max(config.min_views, int(np.ceil(floor_area * density)))))


def clearance_directions() -> np.ndarray:
    """The 26 unit directions towards the neighbours of a cell in a 3×3×3 grid, ``[26, 3]``."""
    grid = np.stack(np.meshgrid(*[np.array([-1.0, 0.0, 1.0])] * 3, indexing="ij"), axis=-1).reshape(-1, 3)
    grid = grid[np.any(grid != 0, axis=1)]
    return grid / np.linalg.norm(grid, axis=1, keepdims=True)


def polygon_boundary_distance(xy: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Distance of points ``xy [M, 2]`` to the closed outline ``polygon [P, 2]`` -> ``[M]``."""
    a = polygon[None]  # [1, P, 2]
    ab = np.roll(polygon, -1, axis=0)[None] - a
    ap = xy[:, None] - a  # [M, P, 2]
    t = np.clip(np.sum(ap * ab, -1) / np.maximum(np.sum(ab * ab, -1), 1e-300), 0.0, 1.0)
    return np.linalg.norm(ap - t[..., None] * ab, axis=-1).min(axis=1)


def structural_faces(scene: Scene, tolerance_m: float = 0.05) -> np.ndarray:
    """Bool ``[F]``: faces lying on the floor, the ceiling or a wall (within ``tolerance_m`` of the floor
    polygon's outline), found from geometry so that it works for every scene source."""
    centroid = scene.mesh.triangles().mean(axis=1)
    on_floor = centroid[:, 2] < tolerance_m
    on_ceiling = centroid[:, 2] > scene.height - tolerance_m
    on_wall = polygon_boundary_distance(centroid[:, :2], scene.floor_polygon) < tolerance_m
    return on_floor | on_ceiling | on_wall


def sample_target_pool(scene: Scene, rng: np.random.Generator, config: CameraPlacementConfig) -> np.ndarray:
    """Look-at candidates ``[T, 3]`` on the scene surface, area-weighted with furniture favoured."""
    mesh = scene.mesh
    weights = mesh.face_areas() * np.where(structural_faces(scene), 1.0, config.furniture_weight)
    if weights.sum() <= 0:
        raise ValueError(f"scene {scene.scene_id}: mesh has no surface to look at")
    face = rng.choice(mesh.num_faces, size=config.target_pool_size, p=weights / weights.sum())
    r1 = np.sqrt(rng.random(config.target_pool_size))
    r2 = rng.random(config.target_pool_size)
    bary = np.stack([1 - r1, r1 * (1 - r2), r1 * r2], axis=1)
    return np.einsum("mk,mkc->mc", bary, mesh.triangles()[face])


def _sample_positions(scene: Scene, rng: np.random.Generator, config: CameraPlacementConfig) -> np.ndarray:
    """Candidate centres ``[M, 3]`` inside the floor polygon, ``margin_m`` from its outline."""
    lo, hi = scene.floor_bounds
    n = config.candidates_per_round
    xy = lo + config.margin_m + rng.random((n, 2)) * np.maximum(hi - lo - 2 * config.margin_m, 0.0)
    z_lo, z_hi = config.height_range
    z_hi = min(z_hi, scene.height - config.clearance_m)
    if z_hi < z_lo:
        raise ValueError(f"scene {scene.scene_id}: height {scene.height} m leaves no camera height range")
    z = z_lo + rng.random(n) * (z_hi - z_lo)
    inside = scene.contains_xy(xy) & (polygon_boundary_distance(xy, scene.floor_polygon) >= config.margin_m)
    return np.concatenate([xy, z[:, None]], axis=1)[inside]


def _clear_of_surfaces(caster: RayCaster, positions: np.ndarray, config: CameraPlacementConfig) -> np.ndarray:
    """Bool ``[M]``: no surface within ``clearance_m`` (and not enclosed by an object).

    Rays in the 26 grid directions find the surfaces around each point; the exact distance to each hit
    triangle (not the distance along the ray) is compared with the clearance. A surface that no ray hits,
    like a thin rod between two directions, can go unnoticed.
    """
    dirs = clearance_directions()
    m, k = len(positions), len(dirs)
    origins = np.repeat(positions, k, axis=0)
    hits = caster.first_hits(origins, np.tile(dirs, (m, 1)))
    dist = np.full(m * k, np.inf)
    if hits.hit.any():
        tri = caster.vertices[caster.faces[hits.face_id[hits.hit]]]
        closest = trimesh.triangles.closest_point(tri, origins[hits.hit])
        dist[hits.hit] = np.linalg.norm(closest - origins[hits.hit], axis=1)
    clear = dist.reshape(m, k).min(axis=1) >= config.clearance_m
    if config.reject_enclosed:
        normals = caster.face_normals()[np.maximum(hits.face_id, 0)]
        back = hits.hit & (np.sum(normals * np.tile(dirs, (m, 1)), axis=1) > 0.0)
        clear &= back.reshape(m, k).sum(axis=1) <= k // 2
    return clear


def _pick_targets(
    caster: RayCaster,
    positions: np.ndarray,
    pool: np.ndarray,
    rng: np.random.Generator,
    config: CameraPlacementConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """For each position the first of ``targets_per_camera`` random pool points that is far enough, not too
    steep and in sight. Returns ``targets [M, 3]`` and ``found [M]``."""
    m, k = len(positions), config.targets_per_camera
    cand = pool[rng.integers(0, len(pool), size=(m, k))]  # [M, k, 3]
    vec = cand - positions[:, None]
    dist = np.linalg.norm(vec, axis=-1)
    dirs = vec / np.maximum(dist, 1e-12)[..., None]
    ok = (dist >= config.min_target_distance_m) & (
        np.abs(dirs[..., 2]) <= np.sin(np.deg2rad(config.max_pitch_deg))
    )
    hits = caster.first_hits(np.repeat(positions, k, axis=0), dirs.reshape(-1, 3))
    ok &= hits.distance.reshape(m, k) >= dist - config.line_of_sight_tolerance_m
    first = np.argmax(ok, axis=1)
    return cand[np.arange(m), first], ok.any(axis=1)


def _blocked(caster: RayCaster, w2c: np.ndarray, K: np.ndarray, config: CameraPlacementConfig) -> np.ndarray:
    """Bool ``[M]``: most of the view is filled by a surface nearer than ``blocked_depth_m``."""
    origins, dirs = pixel_rays(w2c, np.broadcast_to(K, (len(w2c), 3, 3)), 5, 5)
    hits = caster.first_hits(origins.reshape(-1, 3), dirs.reshape(-1, 3))
    cos = np.einsum("nhwc,nc->nhw", dirs, w2c[:, 2, :3]).reshape(-1, 25)
    depth = hits.distance.reshape(-1, 25) * cos
    return (depth < config.blocked_depth_m).mean(axis=1) >= config.blocked_fraction


def place_cameras(
    scene: Scene, rng: np.random.Generator, config: CameraPlacementConfig | None = None
) -> CameraRig:
    """Place the room's cameras (see the module docstring); deterministic given ``rng``'s state.

    Candidates are drawn in rounds of ``candidates_per_round`` and kept in draw order until the view count
    is reached. If ``max_rounds`` rounds do not yield enough valid cameras the rig holds fewer; if none is
    found a ``RuntimeError`` is raised.
    """
    config = config or CameraPlacementConfig()
    count = view_count(scene.floor_area, config)
    fov_x = float(fov_from_focal_length(rng.uniform(*config.focal_mm_range), config.sensor_width_mm))
    K = intrinsics_from_fov(fov_x, config.aspect)
    caster = RayCaster(scene.mesh.vertices, scene.mesh.faces)
    pool = sample_target_pool(scene, rng, config)

    positions, targets = [], []
    found = 0
    for _ in range(config.max_rounds):
        cand = _sample_positions(scene, rng, config)
        cand = cand[_clear_of_surfaces(caster, cand, config)]
        tgt, ok = _pick_targets(caster, cand, pool, rng, config)
        cand, tgt = cand[ok], tgt[ok]
        keep = ~_blocked(caster, look_at(cand, tgt), K, config)
        positions.append(cand[keep])
        targets.append(tgt[keep])
        found += int(keep.sum())
        if found >= count:
            break
    if found == 0:
        raise RuntimeError(f"scene {scene.scene_id}: no valid camera position found")
    positions = np.concatenate(positions)[:count]
    targets = np.concatenate(targets)[:count]
    w2c = look_at(positions, targets)
    return CameraRig(
        w2c=w2c, K=np.repeat(K[None], len(w2c), axis=0), fov_x=fov_x, positions=positions, targets=targets
    )


def select_views_for_box(
    w2c: np.ndarray | torch.Tensor,
    K: np.ndarray | torch.Tensor,
    box: np.ndarray,
    min_coverage: float = 0.4,
) -> np.ndarray | torch.Tensor:
    """The per-sample view rule: views whose projected bounding box of ``box`` covers ``min_coverage``.

    Args:
        w2c: ``[N, 4, 4]``; K: ``[N, 3, 3]`` (the crop's K when scoring a crop).
        box: ``[2, 3]`` min and max corner of the box in the cameras' world frame (``[[-0.5]*3, [0.5]*3]``
            for a chunk with chunk-frame extrinsics); its 8 corners and centre are projected.
    Returns:
        bool mask ``[N]`` (numpy, or torch if ``w2c`` is a tensor); ``nonzero`` gives the indices.
    """
    box = np.asarray(box, dtype=np.float64)
    coverage = projected_box_coverage(w2c, K, box_corners_and_centre(box[0], box[1]))
    return coverage >= min_coverage
