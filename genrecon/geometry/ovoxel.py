"""O-Voxel: TRELLIS.2's flexible dual grid with PBR attributes, in vectorised NumPy.

An O-Voxel of resolution ``R`` is a sparse set of voxels of the chunk grid (voxel ``(i,j,k)`` covers
``[i/R - 0.5, (i+1)/R - 0.5)`` per axis, docs/architecture.md). Each active voxel stores:

- one dual vertex, as an offset inside the voxel (``[0, 1]^3`` from mesh conversion; a decoder may predict
  ``(-0.5, 1.5)``);
- three unsigned edge flags. Voxel ``(i,j,k)`` owns, for each axis, the primal lattice edge parallel to that
  axis at its maximum corner in the other two axes (the x-flag is the edge
  ``(i, j+1, k+1) -> (i+1, j+1, k+1)``); a flag says that the surface crosses that edge;
- optionally 6 PBR attributes (base colour 3, metallic, roughness, alpha) in ``[0, 1]``.

``mesh_to_ovoxel`` follows the scan-line crossings and QEF of TRELLIS.2's ``mesh_to_flexible_dual_grid`` and
the attribute averaging of ``textured_mesh_to_volumetric_attr``; ``ovoxel_to_mesh`` is
``flexible_dual_grid_to_mesh`` (dual contouring over the flags). Internally all geometry is in *grid units*:
``g = (p + 0.5) * R``, so voxel ``(i,j,k)`` is the unit box ``[i, i+1] x [j, j+1] x [k, k+1]``. Neighbour
look-ups use sorted ``int64`` keys ``x*R^2 + y*R + z`` and ``np.searchsorted``. Work is split into batches of
triangles so that large triangles (walls, floors at R = 512) do not materialise huge intermediate arrays.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from genrecon.geometry.mesh import NUM_PBR_CHANNELS, PBRMesh
from genrecon.geometry.morton import MORTON_MAX_COORD, morton_argsort

# Lattice points on a triangle's boundary follow T2's half-open rule: a lattice line ``L`` is inside the range
# ``(lo, hi]`` of a triangle's projection, rows and columns alike. This equals rasterising the surface shifted
# by an infinitesimal ``(+e, +e, +e)`` (crossing depths use ``floor``, i.e. ``[k, k+1)``, the same shift), so
# each lattice point on an edge shared by two triangles is claimed by exactly one of them, and faces lying on
# lattice planes or lines still give a closed dual surface. It relies on computing a shared edge's span end
# bit-identically in both triangles (see ``_row_span``).

# Vertices and crossing depths this close to an integer (grid units) are snapped to it, so that faces lying on
# a lattice plane pick the same voxel layer in every triangle despite rounding in the world -> grid map.
_SNAP = 1e-6
# A projection along an axis whose unit normal component is below this is treated as area-less (an exactly
# area-less one claims no lattice point under the half-open rule anyway; a near one has unstable depths).
_MIN_PROJECTED_NORMAL = 1e-9
# Rough upper bound of per-batch candidates (crossings, face-term voxels, segment steps).
_BATCH_CANDIDATES = 1 << 17

# The 4 voxels around the lattice edge owned by a voxel, for each axis, in cyclic order; row 0 is the owner.
# The same table gives the dual-contouring quads (reference §2.2).
_EDGE_VOXELS = np.array(
    [
        [[0, 0, 0], [0, 0, 1], [0, 1, 1], [0, 1, 0]],  # x-edge
        [[0, 0, 0], [1, 0, 0], [1, 0, 1], [0, 0, 1]],  # y-edge
        [[0, 0, 0], [0, 1, 0], [1, 1, 0], [1, 0, 0]],  # z-edge
    ],
    dtype=np.int64,
)
# Upper-triangle entries of a symmetric 3x3 matrix, in the order the accumulators store them.
_SYM_ROWS = np.array([0, 0, 0, 1, 1, 2])
_SYM_COLS = np.array([0, 1, 2, 1, 2, 2])


# ====================================================================== the O-Voxel container
@dataclass
class OVoxel:
    """Sparse flexible dual grid of one chunk.

    Shapes: ``coords [K, 3]`` int32 voxel indices in ``[0, resolution)``, sorted by Morton code;
    ``vertex_offset [K, 3]`` float32 dual vertex inside its voxel (``[0, 1]``); ``intersected [K, 3]`` bool
    edge flags; ``attributes [K, 6]`` float32 PBR attributes in ``[0, 1]`` or ``None``.
    """

    resolution: int
    coords: np.ndarray
    vertex_offset: np.ndarray
    intersected: np.ndarray
    attributes: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.resolution = int(self.resolution)
        if not 1 <= self.resolution <= MORTON_MAX_COORD + 1:
            raise ValueError(f"resolution must be in [1, {MORTON_MAX_COORD + 1}], got {self.resolution}")
        self.coords = np.asarray(self.coords, dtype=np.int32).reshape(-1, 3)
        self.vertex_offset = np.asarray(self.vertex_offset, dtype=np.float32).reshape(-1, 3)
        self.intersected = np.asarray(self.intersected, dtype=bool).reshape(-1, 3)
        k = self.coords.shape[0]
        if k and (self.coords.min() < 0 or self.coords.max() >= self.resolution):
            raise ValueError(f"coords must lie in [0, {self.resolution})")
        if self.vertex_offset.shape[0] != k or self.intersected.shape[0] != k:
            raise ValueError("coords, vertex_offset and intersected must have the same number of rows")
        if self.attributes is not None:
            self.attributes = np.asarray(self.attributes, dtype=np.float32).reshape(-1, NUM_PBR_CHANNELS)
            if self.attributes.shape[0] != k:
                raise ValueError("attributes must have one row per voxel")

    @property
    def num_voxels(self) -> int:
        return int(self.coords.shape[0])

    def shape_features(self) -> np.ndarray:
        """``[K, 6]`` float32 shape-encoder input: ``[vertex_offset - 0.5, flags - 0.5]``."""
        return np.concatenate(
            [self.vertex_offset - 0.5, self.intersected.astype(np.float32) - 0.5], axis=1
        ).astype(np.float32)

    def dual_vertices(self) -> np.ndarray:
        """``[K, 3]`` float64 dual vertex positions in the chunk frame."""
        return (self.coords + self.vertex_offset.astype(np.float64)) / self.resolution - 0.5

    def pack(self) -> dict[str, np.ndarray]:
        """Compact storage form.

        Returns ``coords [K, 3]`` uint16, ``vertex_offset [K, 3]`` uint8 (offset·255, rounded),
        ``intersected [K]`` uint8 (``x + 2y + 4z``) and, if present, ``attributes [K, 6]`` uint8 (rounded).
        """
        packed = {
            "coords": self.coords.astype(np.uint16),
            "vertex_offset": _quantise_unit(self.vertex_offset),
            "intersected": (self.intersected.astype(np.uint8) * np.array([1, 2, 4], np.uint8)).sum(
                1, dtype=np.uint8
            ),
        }
        if self.attributes is not None:
            packed["attributes"] = _quantise_unit(self.attributes)
        return packed

    @classmethod
    def unpack(cls, packed: dict[str, np.ndarray], resolution: int) -> OVoxel:
        """Inverse of :meth:`pack`; offsets and attributes come back within 0.5/255 (quantisation)."""
        flags = np.asarray(packed["intersected"], dtype=np.uint8).reshape(-1)
        attributes = packed.get("attributes")
        return cls(
            resolution=resolution,
            coords=np.asarray(packed["coords"]).astype(np.int32),
            vertex_offset=np.asarray(packed["vertex_offset"]).astype(np.float32) / 255.0,
            intersected=np.stack([flags & 1, (flags >> 1) & 1, (flags >> 2) & 1], axis=1).astype(bool),
            attributes=None if attributes is None else np.asarray(attributes).astype(np.float32) / 255.0,
        )

    def occupancy(self, res: int) -> np.ndarray:
        """``[res, res, res]`` bool occupancy by OR pooling: cell ``X`` is set if any voxel has
        ``c // f == X`` with ``f = resolution // res`` (the sparse-structure target, reference §4.1)."""
        if res > self.resolution:
            raise ValueError(f"cannot pool an O-Voxel of resolution {self.resolution} up to {res}")
        if self.resolution % res:
            raise ValueError(
                f"occupancy resolution {res} must divide the O-Voxel resolution {self.resolution}"
            )
        occ = np.zeros((res, res, res), dtype=bool)
        cell = self.coords // (self.resolution // res)
        occ[cell[:, 0], cell[:, 1], cell[:, 2]] = True
        return occ


def _quantise_unit(x: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> uint8. Rounds (T2 truncates) so that the error of ``/255`` is at most 0.5/255."""
    return np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


# ====================================================================== small array helpers
def _voxel_keys(coords: np.ndarray, resolution: int) -> np.ndarray:
    """``[K]`` int64 keys ``x*R^2 + y*R + z`` of in-range ``coords [K, 3]``."""
    c = coords.astype(np.int64)
    return (c[:, 0] * resolution + c[:, 1]) * resolution + c[:, 2]


def _keys_to_coords(keys: np.ndarray, resolution: int) -> np.ndarray:
    """Inverse of :func:`_voxel_keys`: ``[K]`` -> ``[K, 3]`` int64."""
    r2 = resolution * resolution
    return np.stack([keys // r2, (keys // resolution) % resolution, keys % resolution], axis=1)


def _lookup(sorted_keys: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Index of each ``query`` key in ``sorted_keys``, or -1 where it is absent."""
    if sorted_keys.size == 0:
        return np.full(query.shape, -1, dtype=np.int64)
    pos = np.minimum(np.searchsorted(sorted_keys, query), sorted_keys.size - 1)
    return np.where(sorted_keys[pos] == query, pos, -1)


def _sorted_unique(x: np.ndarray) -> np.ndarray:
    """Sorted distinct values of an integer array (sort-based: NumPy 2's hash-based ``np.unique`` is several
    times slower on these int64 keys)."""
    x = np.sort(x.reshape(-1))
    return x[np.r_[True, x[1:] != x[:-1]]] if x.size else x


def _unique_inverse(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(unique, inverse)`` of an integer array, ``unique[inverse] == x.reshape(-1)``, sort-based."""
    x = x.reshape(-1)
    order = np.argsort(x)
    sorted_x = x[order]
    first = np.r_[True, sorted_x[1:] != sorted_x[:-1]]
    inverse = np.empty(x.size, dtype=np.int64)
    inverse[order] = np.cumsum(first) - 1
    return sorted_x[first], inverse


def _expand(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ragged expansion: for ``counts [N]`` return ``owner`` (item of each slot) and ``rank`` (slot within its
    item), both ``[counts.sum()]``."""
    counts = counts.astype(np.int64)
    owner = np.repeat(np.arange(counts.size), counts)
    starts = np.cumsum(counts) - counts
    return owner, np.arange(owner.size) - starts[owner]


def _batches(cost: np.ndarray) -> Iterator[slice]:
    """Consecutive slices of ``range(len(cost))`` whose summed cost stays within ``_BATCH_CANDIDATES`` (an
    item costing more than that gets a batch of its own)."""
    budget = _BATCH_CANDIDATES
    cumulative = np.cumsum(cost)
    start = 0
    while start < cost.size:
        base = cumulative[start - 1] if start else 0
        stop = max(int(np.searchsorted(cumulative, base + budget, side="right")), start + 1)
        yield slice(start, stop)
        start = stop


def _snap(x: np.ndarray) -> np.ndarray:
    nearest = np.rint(x)
    return np.where(np.abs(x - nearest) < _SNAP, nearest, x)


def _sym_to_full(sym: np.ndarray) -> np.ndarray:
    """``[..., 6]`` upper-triangle entries -> ``[..., 3, 3]`` symmetric matrices."""
    full = np.empty(sym.shape[:-1] + (3, 3))
    full[..., _SYM_ROWS, _SYM_COLS] = sym
    full[..., _SYM_COLS, _SYM_ROWS] = sym
    return full


# ====================================================================== triangles in grid units
@dataclass
class _GridTriangles:
    """Mesh triangles in grid units. ``verts [F, 3, 3]``, unit ``normal [F, 3]`` (zero when degenerate),
    plane offset ``d [F]`` with ``normal·x + d = 0`` on the plane."""

    verts: np.ndarray
    normal: np.ndarray
    d: np.ndarray

    @classmethod
    def from_mesh(cls, mesh: PBRMesh, resolution: int) -> _GridTriangles:
        verts = _snap((mesh.triangles() + 0.5) * resolution)
        n = np.cross(verts[:, 1] - verts[:, 0], verts[:, 2] - verts[:, 0])
        length = np.linalg.norm(n, axis=1, keepdims=True)
        n = np.divide(n, length, out=np.zeros_like(n), where=length > 0)
        return cls(verts=verts, normal=n, d=-np.einsum("fc,fc->f", n, verts[:, 0]))

    def __len__(self) -> int:
        return int(self.verts.shape[0])


def _axis_frame(axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Permutation ``(a0, a1, axis)`` with ``a0 = axis+1``, ``a1 = axis+2`` (mod 3), and its inverse."""
    perm = np.array([(axis + 1) % 3, (axis + 2) % 3, axis])
    return perm, np.argsort(perm)


# ==================================================================== mesh -> O-Voxel: lattice-edge crossings
class _Crossings(NamedTuple):
    """Surface crossings of primal lattice edges: ``tri [C]`` triangle, ``point [C, 3]`` crossing point (grid
    units), ``owner [C, 3]`` voxel owning the crossed edge, ``axis [C]`` direction of the edge."""

    tri: np.ndarray
    point: np.ndarray
    owner: np.ndarray
    axis: np.ndarray


def _row_span(tri2d: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Extent ``[xL, xR]`` of 2-D triangles ``tri2d [M, 3, 2]`` along the horizontal lines ``y [M]``.

    Each edge is evaluated from its endpoints in a canonical order (lower ``y`` first, then lower ``x``), with
    exact endpoint values at its end rows, so an edge shared by two triangles gives bit-identical span ends.
    """
    a = tri2d
    b = np.roll(tri2d, -1, axis=1)
    swap = (b[..., 1] < a[..., 1]) | ((b[..., 1] == a[..., 1]) & (b[..., 0] < a[..., 0]))
    a, b = np.where(swap[..., None], b, a), np.where(swap[..., None], a, b)
    xa, ya, xb, yb = a[..., 0], a[..., 1], b[..., 0], b[..., 1]
    row = y[:, None]
    flat = ya == yb
    x = xa + (row - ya) * (xb - xa) / np.where(flat, 1.0, yb - ya)
    x = np.where(row == yb, xb, np.where(row == ya, xa, x))
    # A horizontal edge on the row contributes both end points (xa <= xb after the canonical order).
    valid = (row >= ya) & (row <= yb)
    lo = np.where(flat, xa, x)
    hi = np.where(flat, xb, x)
    return np.where(valid, lo, np.inf).min(1), np.where(valid, hi, -np.inf).max(1)


def _axis_crossings(tris: _GridTriangles, tri_ids: np.ndarray, axis: int, resolution: int) -> _Crossings:
    """Crossings of the triangles ``tri_ids`` with the interior lattice edges parallel to ``axis``.

    Scan-line rule of the reference (§1.2): project along ``axis`` onto ``(a0, a1)``; every interior lattice
    point ``(L0, L1)``, ``1 <= L0, L1 <= R-1``, in the half-open projection is a crossing at depth ``z``; it
    lies on the edge of voxel ``(L0-1, L1-1, floor(z))`` (in the ``(a0, a1, axis)`` frame), if that voxel is
    in the grid.
    """
    perm, inv = _axis_frame(axis)
    ids = tri_ids[np.abs(tris.normal[tri_ids, axis]) > _MIN_PROJECTED_NORMAL]
    p = tris.verts[ids][:, :, perm]  # [T, 3, 3] in the (a0, a1, axis) frame
    n = tris.normal[ids][:, perm]
    r_max = resolution - 1

    y_lo = np.maximum(np.floor(p[:, :, 1].min(1)) + 1, 1).astype(np.int64)
    y_hi = np.minimum(np.floor(p[:, :, 1].max(1)), r_max).astype(np.int64)
    row_tri, rank = _expand(np.maximum(y_hi - y_lo + 1, 0))
    row_y = (y_lo[row_tri] + rank).astype(np.float64)
    x_left, x_right = _row_span(p[row_tri, :, :2], row_y)

    x_lo = np.maximum(np.floor(x_left) + 1, 1).astype(np.int64)
    x_hi = np.minimum(np.floor(x_right), r_max).astype(np.int64)
    row, rank = _expand(np.maximum(x_hi - x_lo + 1, 0))
    t = row_tri[row]
    lx = x_lo[row] + rank
    ly = row_y[row]

    # Depth on the triangle's plane, kept inside the triangle's own depth range against ill-conditioning.
    p0 = p[t, 0]
    z = p0[:, 2] - (n[t, 0] * (lx - p0[:, 0]) + n[t, 1] * (ly - p0[:, 1])) / n[t, 2]
    z = _snap(np.clip(z, p[t, :, 2].min(1), p[t, :, 2].max(1)))
    k = np.floor(z).astype(np.int64)
    keep = (k >= 0) & (k < resolution)

    point = np.stack([lx, ly, z], axis=1)[keep][:, inv]
    owner = np.stack([lx - 1, ly.astype(np.int64) - 1, k], axis=1)[keep][:, inv]
    return _Crossings(ids[t[keep]], point, owner, np.full(owner.shape[0], axis, dtype=np.int64))


def _crossings(tris: _GridTriangles, tri_ids: np.ndarray, resolution: int) -> _Crossings:
    parts = [_axis_crossings(tris, tri_ids, axis, resolution) for axis in range(3)]
    return _Crossings(*(np.concatenate([getattr(p, f) for p in parts]) for f in _Crossings._fields))


def _clipped_extent(tris: _GridTriangles, resolution: int) -> np.ndarray:
    """``[F, 3]`` size of each triangle's bounding box inside the grid, plus a margin of 2 voxels."""
    clipped = np.clip(tris.verts, 0, resolution)
    return clipped.max(1) - clipped.min(1) + 2


def _crossing_cost(tris: _GridTriangles, resolution: int) -> np.ndarray:
    """``[F]`` bound on a triangle's crossing candidates: its bounding-box area over the 3 projections."""
    extent = _clipped_extent(tris, resolution)
    return extent[:, 0] * extent[:, 1] + extent[:, 1] * extent[:, 2] + extent[:, 2] * extent[:, 0]


# ==================================================================== mesh -> O-Voxel: per-voxel accumulators
# Columns of the per-voxel accumulators ``[K, 23]``: the QEF's A (6 sym entries) and b (3), the sum of
# crossing points (3), the crossing count, the 3 flags, the attribute sum (6) and the number of pairs summed.
_ACC_A = slice(0, 6)
_ACC_B = slice(6, 9)
_ACC_SUM = slice(9, 12)
_ACC_CNT = 12
_ACC_FLAGS = slice(13, 16)
_ACC_ATTR = slice(16, 22)
_ACC_NATTR = 22
_NUM_ACC = 23


def _plane_quadric(tris: _GridTriangles, tri: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``A [M, 6]`` and ``b [M, 3]`` of the plane quadric ``(n·x + d)^2 = x^T A x - 2 b^T x + d^2`` of each
    triangle in ``tri [M]``: ``A = n n^T``, ``b = -d n``."""
    n = tris.normal[tri]
    return n[:, _SYM_ROWS] * n[:, _SYM_COLS], -tris.d[tri, None] * n


def _closest_point_barycentrics(tri: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Barycentrics ``[M, 3]`` of the point of triangle ``tri [M, 3, 3]`` closest to ``p [M, 3]``
    (Voronoi-region case analysis), so they are always inside the triangle."""
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    ab, ac = b - a, c - a

    def dot(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return np.einsum("mc,mc->m", u, v)

    d1, d2 = dot(ab, p - a), dot(ac, p - a)
    d3, d4 = dot(ab, p - b), dot(ac, p - b)
    d5, d6 = dot(ab, p - c), dot(ac, p - c)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        return np.divide(num, den, out=np.zeros_like(num), where=np.abs(den) > 0)

    t_ab = ratio(d1, d1 - d3)
    t_ac = ratio(d2, d2 - d6)
    t_bc = ratio(d4 - d3, (d4 - d3) + (d5 - d6))
    total = va + vb + vc
    v_in, w_in = ratio(vb, total), ratio(vc, total)
    zero, one = np.zeros_like(d1), np.ones_like(d1)
    regions = [
        (d1 <= 0) & (d2 <= 0),  # vertex a
        (d3 >= 0) & (d4 <= d3),  # vertex b
        (vc <= 0) & (d1 >= 0) & (d3 <= 0),  # edge ab
        (d6 >= 0) & (d5 <= d6),  # vertex c
        (vb <= 0) & (d2 >= 0) & (d6 <= 0),  # edge ac
        (va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0),  # edge bc
    ]
    v = np.select(regions, [zero, one, t_ab, zero, zero, 1 - t_bc], default=v_in)
    w = np.select(regions, [zero, zero, zero, one, t_ac, t_bc], default=w_in)
    return np.stack([1 - v - w, v, w], axis=1)


def _pair_attributes(mesh: PBRMesh, tris: _GridTriangles, tri: np.ndarray, voxel: np.ndarray) -> np.ndarray:
    """``[M, 6]`` attributes of triangle ``tri [M]`` at the point closest to the centre of ``voxel [M, 3]``.

    Deviation from TRELLIS.2 (``textured_mesh_to_volumetric_attr``): T2 projects the voxel centre onto the
    triangle's *plane* and uses the unclamped barycentrics, which extrapolate vertex colours and UVs beyond
    the triangle; here the barycentrics are those of the closest point *on the triangle*, so every sample is a
    real surface value. T2's weight ``1 - d`` is ~1 at these resolutions; here pairs have equal weights.
    """
    bary = _closest_point_barycentrics(tris.verts[tri], voxel + 0.5)
    return mesh.sample_attributes(tri, bary)


def _scatter_add(target: np.ndarray, slot: np.ndarray, values: np.ndarray) -> None:
    """``target[slot[m, j]] += values[m]`` for every ``j``: ``target [K, C]``, ``slot [M]`` or ``[M, J]`` with
    repeats, ``values [M, C]``. Costs O(M log M), not O(K), so that many small batches stay cheap."""
    if slot.size == 0:
        return
    unique_slot, inverse = _unique_inverse(slot)
    inverse = inverse.reshape(slot.shape[0], -1)
    totals = np.zeros((values.shape[1], unique_slot.size))
    for c in range(values.shape[1]):
        column = np.ascontiguousarray(values[:, c])
        for j in range(inverse.shape[1]):
            totals[c] += np.bincount(inverse[:, j], column, minlength=unique_slot.size)
    target[unique_slot] += totals.T


def _edge_voxel_keys(cr: _Crossings, resolution: int) -> np.ndarray:
    """``[C, 4]`` keys of the 4 voxels around each crossed edge, owner first."""
    voxel = cr.owner[:, None, :] + _EDGE_VOXELS[cr.axis]
    return _voxel_keys(voxel.reshape(-1, 3), resolution).reshape(-1, 4)


def _triangle_batches(tris: _GridTriangles, resolution: int) -> list[np.ndarray]:
    """Triangle index batches of bounded crossing work."""
    cost = _crossing_cost(tris, resolution)
    return [np.arange(len(tris))[s] for s in _batches(cost)]


def _active_keys(tris: _GridTriangles, batches: list[np.ndarray], resolution: int) -> np.ndarray:
    """Sorted ``[K]`` keys of every voxel around a crossed lattice edge."""
    parts = [
        _sorted_unique(_edge_voxel_keys(_crossings(tris, ids, resolution), resolution)) for ids in batches
    ]
    return _sorted_unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)


def _intersection_pass(
    mesh: PBRMesh, tris: _GridTriangles, resolution: int, attributes: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Active voxels (sorted ``keys [K]``) and their accumulators ``[K, 23]``.

    Two sweeps over the triangle batches (the crossings are recomputed rather than stored, to keep memory at
    the size of the output): the first finds the active set, the second accumulates into it. Every crossing
    adds its triangle's plane quadric and the crossing point to the 4 voxels around its edge, and flags the
    owner.
    """
    batches = _triangle_batches(tris, resolution)
    keys = _active_keys(tris, batches, resolution)
    acc = np.zeros((keys.size, _NUM_ACC))
    for ids in batches:
        cr = _crossings(tris, ids, resolution)
        edge_keys = _edge_voxel_keys(cr, resolution)
        slot = np.searchsorted(keys, edge_keys)  # [C, 4]; every key is present
        quad_a, quad_b = _plane_quadric(tris, cr.tri)
        per_crossing = np.concatenate([quad_a, quad_b, cr.point, np.ones((cr.tri.size, 1))], axis=1)
        _scatter_add(acc[:, : _ACC_CNT + 1], slot, per_crossing)
        acc[slot[:, 0], _ACC_FLAGS.start + cr.axis] = 1.0
        if attributes:
            # Each (triangle, voxel) pair counts once however many of the voxel's edges the triangle crosses.
            pairs = _sorted_unique(cr.tri[:, None] * keys.size + slot)
            pair_tri, pair_slot = pairs // keys.size, pairs % keys.size
            values = _pair_attributes(mesh, tris, pair_tri, _keys_to_coords(keys[pair_slot], resolution))
            _scatter_add(acc[:, _ACC_ATTR.start :], pair_slot, np.c_[values, np.ones(pairs.size)])
    return keys, acc


# =================================================================== mesh -> O-Voxel: face and boundary terms
def _triangle_box_overlap(tri: np.ndarray, voxel: np.ndarray) -> np.ndarray:
    """Separating-axis test of triangles ``tri [M, 3, 3]`` against the unit boxes of ``voxel [M, 3]`` (closed
    boxes: touching counts). Axes: the box normals, the triangle normal and the 9 edge-axis cross products."""
    v = tri - (voxel + 0.5)[:, None, :]  # box centred at the origin, half size 0.5
    x, y, z = v[..., 0], v[..., 1], v[..., 2]  # [M, 3] each: one column per triangle vertex
    tol = 1e-9

    def separated(px: np.ndarray, radius: np.ndarray) -> np.ndarray:  # projections [M, 3], radius [M]
        lo = np.minimum(np.minimum(px[:, 0], px[:, 1]), px[:, 2])
        hi = np.maximum(np.maximum(px[:, 0], px[:, 1]), px[:, 2])
        return (lo > radius + tol) | (hi < -radius - tol)

    half = np.full(v.shape[0], 0.5)
    out = ~(separated(x, half) | separated(y, half) | separated(z, half))
    e = np.roll(v, -1, axis=1) - v  # [M, 3 edges, 3]
    n = np.cross(e[:, 0], e[:, 1])
    out &= ~separated(x * n[:, None, 0] + y * n[:, None, 1] + z * n[:, None, 2], 0.5 * np.abs(n).sum(1))
    for k in range(3):
        ex, ey, ez = e[:, k, 0:1], e[:, k, 1:2], e[:, k, 2:3]
        # unit_x × e = (0, -ez, ey), unit_y × e = (ez, 0, -ex), unit_z × e = (-ey, ex, 0)
        out &= ~separated(y * -ez + z * ey, 0.5 * (np.abs(ez) + np.abs(ey))[:, 0])
        out &= ~separated(x * ez + z * -ex, 0.5 * (np.abs(ez) + np.abs(ex))[:, 0])
        out &= ~separated(x * -ey + y * ex, 0.5 * (np.abs(ey) + np.abs(ex))[:, 0])
    return out


def _face_candidates(
    tris: _GridTriangles, tri_ids: np.ndarray, axis: int, resolution: int
) -> tuple[np.ndarray, np.ndarray]:
    """Voxels that may overlap triangles ``tri_ids`` whose normal is dominated by ``axis``: ``(tri [M], voxel
    [M, 3])``. Per column of the projection's bounding box, only the few layers the plane passes through."""
    perm, inv = _axis_frame(axis)
    p = tris.verts[tri_ids][:, :, perm]
    n = tris.normal[tri_ids][:, perm]
    lo = np.clip(np.floor(p.min(1)), 0, resolution - 1).astype(np.int64)
    hi = np.clip(np.floor(p.max(1)), 0, resolution - 1).astype(np.int64)
    inside = (p.max(1) >= 0).all(1) & (p.min(1) <= resolution).all(1)
    size = np.where(inside[:, None], hi - lo + 1, 0)
    t, rank = _expand(size[:, 0] * size[:, 1])
    ci = lo[t, 0] + rank // size[t, 1]
    cj = lo[t, 1] + rank % size[t, 1]

    # The plane's depth over the column square spans its centre value +- h; clip to the triangle's range.
    p0 = p[t, 0]
    zc = p0[:, 2] - (n[t, 0] * (ci + 0.5 - p0[:, 0]) + n[t, 1] * (cj + 0.5 - p0[:, 1])) / n[t, 2]
    h = 0.5 * (np.abs(n[t, 0]) + np.abs(n[t, 1])) / np.abs(n[t, 2])
    z_lo = np.maximum(zc - h, p[t, :, 2].min(1))
    z_hi = np.minimum(zc + h, p[t, :, 2].max(1))
    k_lo = np.clip(np.floor(z_lo), 0, resolution - 1).astype(np.int64)
    k_hi = np.clip(np.floor(z_hi), 0, resolution - 1).astype(np.int64)
    layers = np.where((z_hi >= z_lo) & (z_hi >= 0) & (z_lo <= resolution), k_hi - k_lo + 1, 0)
    col, rank = _expand(layers)
    voxel = np.stack([ci[col], cj[col], k_lo[col] + rank], axis=1)[:, inv]
    return tri_ids[t[col]], voxel


def _face_pass(tris: _GridTriangles, keys: np.ndarray, resolution: int, quadric: np.ndarray) -> None:
    """Face term (reference §1.3): every *active* voxel (sorted ``keys [K]``) that a triangle's box-overlap
    test accepts gets the triangle's plane quadric again, added in place to ``quadric [K, 9]`` (A 6, b 3)."""
    dominant = np.abs(tris.normal).argmax(1)
    valid = np.abs(tris.normal).max(1) > 0
    extent = _clipped_extent(tris, resolution)
    for axis in range(3):
        ids = np.flatnonzero(valid & (dominant == axis))
        perm = _axis_frame(axis)[0]
        cost = 3 * extent[ids, perm[0]] * extent[ids, perm[1]]
        for s in _batches(cost):
            tri, voxel = _face_candidates(tris, ids[s], axis, resolution)
            slot = _lookup(keys, _voxel_keys(voxel, resolution))
            active = slot >= 0
            hit = _triangle_box_overlap(tris.verts[tri[active]], voxel[active])
            quad_a, quad_b = _plane_quadric(tris, tri[active][hit])
            _scatter_add(quadric, slot[active][hit], np.concatenate([quad_a, quad_b], axis=1))


def _boundary_edges(mesh: PBRMesh) -> np.ndarray:
    """``[E, 2]`` vertex-index edges used by exactly one face (split seams count as boundaries, as in T2)."""
    edges = np.sort(mesh.faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    unique, counts = np.unique(edges, axis=0, return_counts=True)
    return unique[counts == 1]


def _segment_voxels(a: np.ndarray, b: np.ndarray, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Voxels traversed by segments ``a -> b`` (``[E, 3]`` grid units), as a 3-D DDA would visit them:
    ``(segment [M], voxel [M, 3])``, in-grid voxels only."""
    direction = b - a
    t_parts, seg_parts = [np.zeros(a.shape[0]), np.ones(a.shape[0])], [np.arange(a.shape[0])] * 2
    for axis in range(3):
        lo, hi = np.minimum(a[:, axis], b[:, axis]), np.maximum(a[:, axis], b[:, axis])
        first = np.floor(lo) + 1
        seg, rank = _expand(np.maximum(np.ceil(hi) - first, 0).astype(np.int64))
        t_parts.append((first[seg] + rank - a[seg, axis]) / direction[seg, axis])
        seg_parts.append(seg)
    t, seg = np.concatenate(t_parts), np.concatenate(seg_parts)
    order = np.lexsort((t, seg))
    t, seg = t[order], seg[order]
    # Voxel of each non-empty parameter interval between consecutive plane crossings: that of its midpoint.
    step = (seg[1:] == seg[:-1]) & (t[1:] - t[:-1] > 1e-12)
    mid = 0.5 * (t[:-1] + t[1:])[step]
    seg = seg[:-1][step]
    voxel = np.floor(a[seg] + mid[:, None] * direction[seg]).astype(np.int64)
    keep = ((voxel >= 0) & (voxel < resolution)).all(1)
    return seg[keep], voxel[keep]


def _clip_segments(
    a: np.ndarray, b: np.ndarray, resolution: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clip segments ``a -> b`` (``[E, 3]`` grid units) to the grid box ``[0, R]^3`` (Liang-Barsky), so
    geometry far outside the chunk costs nothing. Returns clipped ``a``, ``b`` and ``keep [E]`` (False where
    the segment misses the box)."""
    direction = b - a
    t0, t1 = np.zeros(a.shape[0]), np.ones(a.shape[0])
    keep = np.ones(a.shape[0], dtype=bool)
    for axis in range(3):
        da, pa = direction[:, axis], a[:, axis]
        moving = da != 0
        safe = np.where(moving, da, 1.0)
        t_lo, t_hi = (0.0 - pa) / safe, (resolution - pa) / safe
        t0 = np.where(moving, np.maximum(t0, np.minimum(t_lo, t_hi)), t0)
        t1 = np.where(moving, np.minimum(t1, np.maximum(t_lo, t_hi)), t1)
        keep &= moving | ((pa >= 0) & (pa <= resolution))
    keep &= t0 <= t1
    return a + t0[:, None] * direction, a + t1[:, None] * direction, keep


def _boundary_pass(
    mesh: PBRMesh, keys: np.ndarray, resolution: int, weight: float, quadric: np.ndarray
) -> None:
    """Boundary term (reference §1.3): ``weight · |(I - d d^T)(x - v0)|^2`` (squared distance to the line of a
    boundary edge) for every active voxel (sorted ``keys [K]``) the edge passes through, added to
    ``quadric [K, 9]`` (A sym 6, b 3) in place."""
    edges = _boundary_edges(mesh)
    v0 = _snap((mesh.vertices[edges[:, 0]] + 0.5) * resolution)
    v1 = _snap((mesh.vertices[edges[:, 1]] + 0.5) * resolution)
    length = np.linalg.norm(v1 - v0, axis=1)
    long_enough = length > 1e-6 * resolution  # T2 skips segments shorter than 1e-6 chunk units
    direction = (v1 - v0)[long_enough] / length[long_enough, None]
    v0, v1, keep = _clip_segments(v0[long_enough], v1[long_enough], resolution)
    v0, v1, direction = v0[keep], v1[keep], direction[keep]
    cost = np.abs(v1 - v0).sum(1) + 3
    for s in _batches(cost):
        seg, voxel = _segment_voxels(v0[s], v1[s], resolution)
        slot = _lookup(keys, _voxel_keys(voxel, resolution))
        seg, slot = seg[slot >= 0], slot[slot >= 0]
        d = direction[s][seg]
        proj = np.eye(3) - d[:, :, None] * d[:, None, :]  # [M, 3, 3]
        quad_a = weight * proj[:, _SYM_ROWS, _SYM_COLS]
        quad_b = weight * np.einsum("mij,mj->mi", proj, v0[s][seg])
        _scatter_add(quadric, slot, np.concatenate([quad_a, quad_b], axis=1))


# ====================================================================== mesh -> O-Voxel: QEF solve
def _box_candidates() -> list[tuple[np.ndarray, np.ndarray]]:
    """The 26 boundary pieces of the unit box as ``(free axes, fixed values with NaN at free axes)``:
    6 faces, 12 edges, 8 corners."""
    pieces = []
    for free in ([0, 1], [0, 2], [1, 2], [0], [1], [2], []):
        fixed_axes = [a for a in range(3) if a not in free]
        for bits in range(1 << len(fixed_axes)):
            value = np.full(3, np.nan)
            for i, a in enumerate(fixed_axes):
                value[a] = (bits >> i) & 1
            pieces.append((np.array(free, dtype=np.int64), value))
    return pieces


_BOX_PIECES = _box_candidates()


def _solve_small(m: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Solve ``m [M, k, k] x = r [M, k]`` (k = 1, 2) in closed form; ``ok [M]`` is False where singular."""
    if m.shape[1] == 1:
        ok = np.abs(m[:, 0, 0]) > 1e-12
        return np.where(ok, r[:, 0], 0.0)[:, None] / np.where(ok, m[:, 0, 0], 1.0)[:, None], ok
    det = m[:, 0, 0] * m[:, 1, 1] - m[:, 0, 1] * m[:, 1, 0]
    ok = np.abs(det) > 1e-12
    safe = np.where(ok, det, 1.0)
    x0 = (m[:, 1, 1] * r[:, 0] - m[:, 0, 1] * r[:, 1]) / safe
    x1 = (m[:, 0, 0] * r[:, 1] - m[:, 1, 0] * r[:, 0]) / safe
    return np.stack([x0, x1], axis=1), ok


def _box_constrained_minimum(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact minimiser over ``[0, 1]^3`` of the convex ``E(x) = x^T A x - 2 b^T x`` (``a [M, 3, 3]``,
    ``b [M, 3]``), for minimisers known to lie outside: the best feasible critical point over the box's faces,
    edges and corners (the reference's enumeration, not a clip)."""
    best_x = np.zeros_like(b)
    best_e = np.full(b.shape[0], np.inf)
    tol = 1e-9
    for free, value in _BOX_PIECES:
        x = np.broadcast_to(np.nan_to_num(value), b.shape).copy()
        feasible = np.ones(b.shape[0], dtype=bool)
        if free.size:
            fixed = np.setdiff1d(np.arange(3), free)
            rhs = b[:, free] - np.einsum("mij,mj->mi", a[:, free][:, :, fixed], x[:, fixed])
            sol, feasible = _solve_small(a[:, free][:, :, free], rhs)
            feasible &= ((sol >= -tol) & (sol <= 1 + tol)).all(1)
            x[:, free] = np.clip(sol, 0.0, 1.0)
        energy = np.einsum("mi,mij,mj->m", x, a, x) - 2 * np.einsum("mi,mi->m", b, x)
        better = feasible & (energy < best_e)
        best_x[better], best_e[better] = x[better], energy[better]
    return best_x


def _solve_qef(a_sym: np.ndarray, b: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Voxel-local dual vertices ``[M, 3]`` minimising ``x^T A x - 2 b^T x`` over ``[0, 1]^3``.

    ``a_sym [M, 6]``, ``b [M, 3]`` and ``mean [M, 3]`` (mean crossing point) are voxel-local. The
    unconstrained step is a truncated-eigenvalue pseudo-inverse around ``mean`` (like pivoted QR, it stays
    finite when A is rank-deficient, e.g. without regularisation); minimisers outside the box are replaced by
    the exact box-constrained minimiser.
    """
    a = _sym_to_full(a_sym)
    eigval, eigvec = np.linalg.eigh(a)
    cutoff = 1e-9 * np.maximum(eigval[:, -1:], 1e-30)
    inv_val = np.divide(1.0, eigval, out=np.zeros_like(eigval), where=eigval > cutoff)
    residual = b - np.einsum("kij,kj->ki", a, mean)
    step = np.einsum("kij,kj,kj->ki", eigvec, inv_val, np.einsum("kji,kj->ki", eigvec, residual))
    x = mean + step
    outside = ((x < -1e-9) | (x > 1 + 1e-9)).any(1)
    if outside.any():
        x[outside] = _box_constrained_minimum(a[outside], b[outside])
    return np.clip(x, 0.0, 1.0)


def _dual_vertex_offsets(quadric: np.ndarray, coords: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Solve every voxel's QEF (``quadric [K, 9]``: A sym 6, b 3, in grid units) in its local frame
    ``x = coord + local``, where ``b_local = b - A·coord`` keeps the numbers small; ``mean [K, 3]`` is local.
    Runs in chunks so that the ``[K, 3, 3]`` temporaries stay bounded. Returns ``[K, 3]`` offsets."""
    offset = np.empty((coords.shape[0], 3))
    for s in _batches(np.ones(coords.shape[0])):
        a_sym = quadric[s, :6]
        b_local = quadric[s, 6:] - np.einsum("kij,kj->ki", _sym_to_full(a_sym), coords[s].astype(np.float64))
        offset[s] = _solve_qef(a_sym, b_local, mean[s])
    return offset


# ====================================================================== mesh -> O-Voxel: entry point
def mesh_to_ovoxel(
    mesh: PBRMesh,
    resolution: int,
    *,
    attributes: bool = True,
    boundary_weight: float = 0.2,
    regularization_weight: float = 1e-2,
    face_term: bool = True,
) -> OVoxel:
    """Convert a mesh in the chunk frame ``[-0.5, 0.5]^3`` to an O-Voxel of the given resolution.

    Active voxels are those around every interior lattice edge that a triangle crosses (scan-line rule;
    geometry outside the cube is clipped by the grid range). Each voxel's dual vertex minimises, over the
    closed voxel, a QEF of: the plane of every crossing triangle (once per crossing), the plane of every
    triangle overlapping the voxel (``face_term``), ``boundary_weight`` × squared distance to the lines of
    boundary edges through the voxel, and ``regularization_weight · cnt · |x - mean crossing|^2``. Defaults
    are those of T2's data call.

    Attributes (if ``attributes``) are the equal-weight mean, over the (triangle, voxel) pairs of the crossing
    pass, of ``mesh.sample_attributes`` at the triangle point closest to the voxel centre (see
    :func:`_pair_attributes` for the deviation from T2's unclamped barycentrics).
    """
    if not 1 <= resolution <= MORTON_MAX_COORD + 1:
        raise ValueError(f"resolution must be in [1, {MORTON_MAX_COORD + 1}], got {resolution}")
    tris = _GridTriangles.from_mesh(mesh, resolution)
    keys, acc = _intersection_pass(mesh, tris, resolution, attributes)
    coords = _keys_to_coords(keys, resolution)
    count = acc[:, _ACC_CNT]

    quadric = acc[:, : _ACC_B.stop]  # [K, 9] view: A sym 6, b 3
    if face_term and keys.size:
        _face_pass(tris, keys, resolution, quadric)
    if boundary_weight > 0 and keys.size:
        _boundary_pass(mesh, keys, resolution, boundary_weight, quadric)
    quadric[:, [0, 3, 5]] += regularization_weight * count[:, None]
    quadric[:, 6:] += regularization_weight * acc[:, _ACC_SUM]
    offset = _dual_vertex_offsets(quadric, coords, acc[:, _ACC_SUM] / count[:, None] - coords)

    order = morton_argsort(coords)
    attrs = None
    if attributes:
        attrs = acc[order, _ACC_ATTR] / np.maximum(acc[order, _ACC_NATTR], 1.0)[:, None]
    return OVoxel(
        resolution=resolution,
        coords=coords[order],
        vertex_offset=offset[order],
        intersected=acc[order, _ACC_FLAGS] > 0,
        attributes=attrs,
    )


# ====================================================================== O-Voxel -> mesh
class ContouredMesh(NamedTuple):
    """Result of :func:`ovoxel_to_mesh`: ``vertices [N, 3]`` float64 in the chunk frame, ``faces [F, 3]``
    int64, and ``voxel_index [N]`` int64: for each vertex, the input voxel (row of ``coords``) it is from."""

    vertices: np.ndarray
    faces: np.ndarray
    voxel_index: np.ndarray


def _quads(coords: np.ndarray, intersected: np.ndarray, resolution: int) -> np.ndarray:
    """``[Q, 4]`` voxel indices of the quad around every flagged edge whose 4 voxels are all present."""
    keys = _voxel_keys(coords, resolution)
    order = np.argsort(keys)
    sorted_keys = keys[order]
    quads = []
    for axis in range(3):
        owner = np.flatnonzero(intersected[:, axis])
        around = coords[owner][:, None, :] + _EDGE_VOXELS[axis]  # [Q, 4, 3]
        in_grid = ((around >= 0) & (around < resolution)).all(2)
        slot = _lookup(
            sorted_keys, _voxel_keys(np.clip(around, 0, resolution - 1).reshape(-1, 3), resolution)
        )
        slot = np.where(in_grid.reshape(-1), slot, -1).reshape(-1, 4)
        quads.append(order[slot[(slot >= 0).all(1)]])
    return np.concatenate(quads).reshape(-1, 4)


def _split_quads(quads: np.ndarray, vertices: np.ndarray, split_weight: np.ndarray | None) -> np.ndarray:
    """Triangulate ``quads [Q, 4]`` into ``[2Q, 3]``: diagonal 0-2 gives ``(0,1,2), (0,2,3)``, diagonal 1-3
    gives ``(0,1,3), (3,1,2)``. With ``split_weight [K]`` the diagonal with the larger weight product wins;
    without, the split whose two (unnormalised) triangle normals have the larger ``|dot|``."""
    if split_weight is not None:
        w = split_weight[quads]
        diagonal_02 = w[:, 0] * w[:, 2] > w[:, 1] * w[:, 3]
    else:
        v0, v1, v2, v3 = (vertices[quads[:, i]] for i in range(4))
        align_02 = np.abs(np.einsum("qc,qc->q", np.cross(v1 - v0, v2 - v0), np.cross(v2 - v0, v3 - v0)))
        align_13 = np.abs(np.einsum("qc,qc->q", np.cross(v1 - v0, v3 - v0), np.cross(v1 - v3, v2 - v3)))
        diagonal_02 = align_02 > align_13
    split_02 = quads[:, [0, 1, 2, 0, 2, 3]]
    split_13 = quads[:, [0, 1, 3, 3, 1, 2]]
    return np.where(diagonal_02[:, None], split_02, split_13).reshape(-1, 3)


def ovoxel_to_mesh(
    ovoxel: OVoxel | None = None,
    *,
    coords: np.ndarray | None = None,
    vertex_offset: np.ndarray | None = None,
    intersected: np.ndarray | None = None,
    resolution: int | None = None,
    split_weight: np.ndarray | None = None,
) -> ContouredMesh:
    """Dual contouring of an O-Voxel (reference §2): one vertex per voxel at ``(coord + offset) / R - 0.5``,
    one quad per flagged edge from the 4 voxels around it (dropped if any is missing), split into 2 triangles,
    then unreferenced vertices removed. Winding is not consistent (flags are unsigned).

    Pass either ``ovoxel`` or the arrays (e.g. a decoder's output; CPU torch tensors work too):
    ``coords [K, 3]`` int unique voxel indices, ``vertex_offset [K, 3]`` (may lie in ``(-0.5, 1.5)``),
    ``intersected [K, 3]`` bool and ``resolution``. ``split_weight [K]`` (decoder ``quad_lerp``) chooses the
    quad diagonals; ``None`` uses the normal-alignment rule.
    """
    if ovoxel is not None:
        coords, vertex_offset, intersected, resolution = (
            ovoxel.coords,
            ovoxel.vertex_offset,
            ovoxel.intersected,
            ovoxel.resolution,
        )
    if coords is None or vertex_offset is None or intersected is None or resolution is None:
        raise ValueError("pass an OVoxel or all of coords, vertex_offset, intersected and resolution")
    coords = np.asarray(coords).astype(np.int64).reshape(-1, 3)
    vertex_offset = np.asarray(vertex_offset, dtype=np.float64).reshape(-1, 3)
    intersected = np.asarray(intersected).astype(bool).reshape(-1, 3)
    if split_weight is not None:
        split_weight = np.asarray(split_weight, dtype=np.float64).reshape(-1)

    vertices = (coords + vertex_offset) / resolution - 0.5
    faces = _split_quads(_quads(coords, intersected, int(resolution)), vertices, split_weight)
    used = np.zeros(coords.shape[0], dtype=bool)
    used[faces.reshape(-1)] = True
    new_index = np.cumsum(used) - 1
    voxel_index = np.flatnonzero(used)
    return ContouredMesh(vertices[voxel_index], new_index[faces], voxel_index)
