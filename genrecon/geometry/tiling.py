"""Inference chunks: tiling a scene into overlapping axis-aligned cubes, and choosing the input images.

As the published system does it (genrecon-and-trellis2.md §3.1-3.2, GR ``inference/get_chunks.py`` and
``get_images.py``):

* edge = (z_ceiling - z_floor) × ``chunk_size_factor``, from the percentile room extent of the cleaned
  points; one layer of chunks in z with its bottom on the floor;
* the floor plan is padded by ``padding_factor / 16 · edge`` per side; per axis, the fewest centres whose
  stride is a multiple of the atomic distance ``edge / 16`` (one SS latent voxel) and at most
  ``edge · (1 - min_overlap_factor / 16)`` (≥ 25 % overlap), placed symmetrically about the midpoint;
* chunks are listed y-major (x varies fastest) and those holding fewer than ``min_points_per_chunk``
  points (closed cube) are dropped.

Because strides are whole atomic steps, every chunk sits at an integer offset (in units of ``edge / 16``)
on one global grid: voxel offsets at latent resolution ``R`` are ``grid_offsets · R / 16``, exact for
R = 16, 32, 64.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from genrecon.geometry.cameras import projected_box_coverage
from genrecon.geometry.chunks import Chunk
from genrecon.geometry.pointcloud import room_extent

log = logging.getLogger(__name__)

ATOMIC_DIVISIONS = 16  # grid steps per chunk edge: one SS latent voxel at 16^3
_EPS = 1e-9  # the reference's tolerance on stride comparisons (metres)


@dataclass(frozen=True, eq=False)
class SceneTiling:
    """The kept chunks and their global grid.

    Attributes:
        chunks: kept chunks (axis-aligned, ``yaw = 0``), y-major order.
        edge_m: chunk edge in metres.
        grid_origin: ``[3]`` world position of grid offset ``(0, 0, 0)`` (the min corner over kept chunks).
        grid_offsets: ``[n, 3]`` int64; chunk ``i``'s min corner is
            ``grid_origin + grid_offsets[i] · edge / 16``.
        points_per_chunk: ``[n]`` int64 cleaned points inside each kept chunk.
        dropped: number of chunks dropped for holding too few points.
        extent: ``(xy_min [2], xy_max [2], z_floor, z_ceiling)`` the tiling was made from.
    """

    chunks: list[Chunk]
    edge_m: float
    grid_origin: np.ndarray
    grid_offsets: np.ndarray
    points_per_chunk: np.ndarray
    dropped: int
    extent: tuple[np.ndarray, np.ndarray, float, float]

    @property
    def atomic_m(self) -> float:
        """One grid step, ``edge / 16`` metres."""
        return self.edge_m / ATOMIC_DIVISIONS

    @property
    def centers(self) -> np.ndarray:
        """``[n, 3]`` chunk centres (world)."""
        return np.array([c.center for c in self.chunks], dtype=np.float64).reshape(-1, 3)

    def voxel_offsets(self, resolution: int) -> np.ndarray:
        """``[n, 3]`` int64 offsets of the chunks' voxel grids at ``resolution`` (a multiple of 16)."""
        if resolution % ATOMIC_DIVISIONS:
            raise ValueError(f"resolution {resolution} is not a multiple of {ATOMIC_DIVISIONS}")
        return self.grid_offsets * (resolution // ATOMIC_DIVISIONS)


def axis_steps(length: float, edge: float, min_overlap_factor: int = 4) -> tuple[int, int]:
    """``(n, k)``: the fewest chunks ``n`` covering ``length`` metres on one axis, and their stride ``k``
    in atomic steps (``edge / 16``) -- the smallest ``k`` whose ``n - 1`` strides span ``length - edge``
    with at most ``16 - min_overlap_factor`` steps (so overlap ≥ ``min_overlap_factor / 16``).
    ``k = 0`` when one chunk suffices."""
    if length <= edge:
        return 1, 0
    atomic = edge / ATOMIC_DIVISIONS
    max_stride = edge * (1.0 - min_overlap_factor / ATOMIC_DIVISIONS)
    for n in range(2, 10_000):
        k = max(1, math.ceil((length - edge) / (n - 1) / atomic - _EPS))
        if k * atomic <= max_stride + _EPS:
            return n, k
    raise ValueError(f"cannot tile {length} m with {edge} m chunks")


def _points_in_cubes(xyz: np.ndarray, centers: np.ndarray, edge: float) -> np.ndarray:
    """``[n]`` int64 counts of ``xyz [P, 3]`` in the closed cubes of edge ``edge`` at ``centers [n, 3]``."""
    half = 0.5 * edge
    counts = [np.count_nonzero(np.all(np.abs(xyz - c) <= half, axis=1)) for c in centers]
    return np.array(counts, dtype=np.int64)


def tile_scene(
    xyz_clean: np.ndarray,
    chunk_size_factor: float = 1.11,
    min_overlap_factor: int = 4,
    padding_factor: float = 3.5,
    min_points_per_chunk: int = 500,
) -> SceneTiling:
    """Tile the cleaned points ``xyz_clean [P, 3]`` (world, z-up, metres) into overlapping chunks.

    ``chunk_size_factor`` 1.11 is the reference CLI default (its README iPhone command uses 1.08).
    """
    xy_min, xy_max, z_floor, z_ceiling = room_extent(xyz_clean)
    edge = (z_ceiling - z_floor) * chunk_size_factor
    if not edge > 0:
        raise ValueError(f"degenerate room height: floor {z_floor}, ceiling {z_ceiling}")
    atomic = edge / ATOMIC_DIVISIONS
    pad = padding_factor / ATOMIC_DIVISIONS * edge
    lo, hi = xy_min - pad, xy_max + pad
    axis_centers, axis_offsets = [], []
    for a in range(2):
        n, k = axis_steps(float(hi[a] - lo[a]), edge, min_overlap_factor)
        steps = np.arange(n) * k  # atomic steps from the first chunk
        first = 0.5 * (lo[a] + hi[a]) - 0.5 * (n - 1) * k * atomic  # symmetric about the midpoint
        axis_centers.append(first + steps * atomic)
        axis_offsets.append(steps)
    # y-major order, as the reference lists them.
    ys, xs = np.meshgrid(axis_centers[1], axis_centers[0], indexing="ij")
    oy, ox = np.meshgrid(axis_offsets[1], axis_offsets[0], indexing="ij")
    z_center = z_floor + 0.5 * edge
    centers = np.stack([xs.ravel(), ys.ravel(), np.full(xs.size, z_center)], axis=-1)
    offsets = np.stack([ox.ravel(), oy.ravel(), np.zeros(xs.size, dtype=np.int64)], axis=-1).astype(np.int64)

    counts = _points_in_cubes(xyz_clean, centers, edge)
    keep = counts >= min_points_per_chunk
    if not keep.any():
        raise ValueError(f"no chunk holds {min_points_per_chunk} points (most: {counts.max()})")
    offsets = offsets[keep]
    base = offsets.min(axis=0)
    origin = np.array([axis_centers[0][0], axis_centers[1][0], z_center]) - 0.5 * edge + base * atomic
    chunks = [Chunk(center=tuple(float(v) for v in c), edge_m=float(edge), yaw=0.0) for c in centers[keep]]
    return SceneTiling(chunks, float(edge), origin, offsets - base, counts[keep], int((~keep).sum()),
                       (xy_min, xy_max, z_floor, z_ceiling))


def select_images(
    w2c: np.ndarray,
    K: np.ndarray,
    chunks: Sequence[Chunk],
    num_imgs_per_scene: int,
    min_coverage: float = 0.4,
) -> np.ndarray:
    """Indices of the input views, as the reference picks them.

    The pool is the cameras that see at least one chunk: its cube (8 corners + centre) projects to a
    bounding box covering ``≥ min_coverage`` of the image. From the pool (all cameras if it is empty, with a
    warning), ``num_imgs_per_scene`` indices evenly spaced along capture order
    (``round(linspace(0, len - 1, num))``), or the whole pool if it is not larger.

    Args:
        w2c: ``[N, 4, 4]`` world->camera in capture order; K: ``[N, 3, 3]`` normalised (uncropped frames to
            match the reference).
    Returns:
        ``[M]`` int64 indices into the N cameras, increasing.
    """
    w2c = np.asarray(w2c, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    boxes = np.stack([c.corners_world() for c in chunks])  # [C, 9, 3]
    coverage = projected_box_coverage(w2c[:, None], K[:, None], boxes[None])  # [N, C]
    pool = np.nonzero(np.any(coverage >= min_coverage, axis=1))[0]
    if len(pool) == 0:
        log.warning("no camera sees any chunk with %.0f %% coverage: selecting from all %d",
                    100 * min_coverage, len(w2c))
        pool = np.arange(len(w2c))
    if len(pool) <= num_imgs_per_scene:
        return pool.astype(np.int64)
    picks = np.linspace(0, len(pool) - 1, num_imgs_per_scene).round().astype(np.int64)
    return pool[picks].astype(np.int64)
