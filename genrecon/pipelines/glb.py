"""Final export: reconstructed mesh + PBR attribute voxels → textured ``scene.glb`` (glTF 2.0 binary).

Follows TRELLIS.2's ``to_glb`` and GenRecon's per-chunk export (reference §6), on the CPU:

1. each part (a chunk of the scene mesh, :func:`split_mesh_by_chunk`) is cleaned, optionally decimated and
   wound consistently (:mod:`genrecon.geometry.mesh_cleanup`);
2. :func:`uv_unwrap` cuts it into an xatlas chart atlas;
3. :func:`bake_textures` finds, for every texel centre, the 3D surface point it covers (CPU scan conversion or
   nvdiffrast), looks the PBR attributes up in the sparse voxel volume (:class:`VoxelAttributeSampler`) and
   fills the texels no chart covers by dilation;
4. :func:`export_glb` writes one glTF scene with a textured primitive per part, atomically.

Conventions. Input geometry is world z-up metres; glTF is y-up, so vertices go through
``(x, y, z) → (x, z, −y)`` (a rotation: windings are kept). Texture row ``r`` (top row 0) and column ``c``
hold the texel centred at ``uv = ((c + 0.5)/S, (r + 0.5)/S)``: atlas UVs are used as glTF UVs (v grows
down the image). trimesh keeps UVs with a bottom-left origin and flips v when it writes glTF, so the UVs
are handed to trimesh as ``(u, 1 − v)``. Materials: ``baseColorTexture`` = RGBA (base colour, alpha),
``metallicRoughnessTexture`` = (0, roughness, metallic), factors 1, ``alphaMode`` OPAQUE (alpha is baked but
ignored by viewers, as in T2), ``doubleSided`` unless every component of the part is closed and wound outward.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import trimesh
import xatlas
from PIL import Image
from scipy.spatial import cKDTree
from trimesh.visual.material import PBRMaterial

from genrecon.geometry.mesh import NUM_PBR_CHANNELS
from genrecon.geometry.mesh_cleanup import clean_mesh, remove_unreferenced_vertices, unify_face_orientations

log = logging.getLogger(__name__)

# points [M, 3] (world) -> attributes [M, 6] in [0, 1] (base colour 0:3, metallic, roughness, alpha).
AttributeFn = Callable[[np.ndarray], np.ndarray]
# (coords [K, 3] int, attrs [K, C], origin [3], voxel_size): the sparse attribute volume.
AttributeVolume = tuple[np.ndarray, np.ndarray, Sequence[float], float]
Part = tuple[str, np.ndarray, np.ndarray]

# z-up world -> y-up glTF: (x, y, z) -> (x, z, -y); det = +1.
Z_UP_TO_Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])

_TRILINEAR_EPS = 1e-12  # weight-sum clamp of FlexGEMM's grid_sample_3d
_POINT_BATCH = 1 << 18  # points per look-up batch: 8 neighbours x this many keys stay in the tens of MB
_RASTER_CANDIDATES = 1 << 20  # (texel, triangle) pairs tested per CPU scan-conversion batch
_NVDIFFRAST_FACE_BATCH = 100_000  # faces per nvdiffrast call, as T2 (triangle ids stay exact in float32)
_CORNERS = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)])
_NEIGHBOURS_8 = [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0)]


# ====================================================================== sparse attribute look-up
class VoxelAttributeSampler:
    """Sparse trilinear look-up in an attribute volume; callable as an :data:`AttributeFn`.

    Voxel ``(i, j, k)`` covers ``origin + [i, i+1)·voxel_size`` (per axis) and its value sits at its centre.
    For a point at voxel units ``q = (p − origin)/voxel_size`` the 8 neighbours are
    ``floor(q − 0.5) + {0,1}³`` with tent weights ``Π(1 − |q − x − 0.5|)``; inactive neighbours weigh 0 and
    the rest are renormalised (FlexGEMM ``grid_sample_3d``, reference §6.5 step 4).

    Deviation: where that leaves nothing (all 8 neighbours inactive), FlexGEMM returns 0; here the point
    takes the value of the nearest active voxel centre within ``nearest_radius`` voxels (0 beyond). A dual
    vertex may sit up to half a voxel outside its own voxel, so parts of the surface lie in a cell whose 8
    surrounding centres are all inactive; without the fallback they bake to black texels.
    ``nearest_radius=0`` restores the reference behaviour.

    Args:
        coords: ``[K, 3]`` int unique voxel indices (any integer range).
        attrs: ``[K, C]`` values per voxel.
        origin: ``[3]`` world position of voxel (0, 0, 0)'s minimum corner (the AABB minimum).
        voxel_size: edge length of a voxel in world units.
        nearest_radius: fallback search radius in voxels.
    """

    def __init__(
        self,
        coords: np.ndarray,
        attrs: np.ndarray,
        origin: Sequence[float] | np.ndarray,
        voxel_size: float,
        nearest_radius: float = 2.0,
    ) -> None:
        self.coords = np.asarray(coords, dtype=np.int64).reshape(-1, 3)
        self.attrs = np.asarray(attrs, dtype=np.float32)
        if self.attrs.ndim != 2 or len(self.attrs) != len(self.coords):
            raise ValueError(f"attrs must be [K, C] with K = {len(self.coords)}, got {self.attrs.shape}")
        self.origin = np.asarray(origin, dtype=np.float64).reshape(3)
        self.voxel_size = float(voxel_size)
        self.nearest_radius = float(nearest_radius)
        # Dense key space over the coordinate bounding box; neighbours outside it are inactive.
        self._lo = self.coords.min(0) if len(self.coords) else np.zeros(3, np.int64)
        self._extent = (self.coords.max(0) - self._lo + 1) if len(self.coords) else np.ones(3, np.int64)
        keys = self._keys(self.coords)
        self._order = np.argsort(keys)
        self._sorted_keys = keys[self._order]
        self._tree: cKDTree | None = None

    @property
    def num_channels(self) -> int:
        return int(self.attrs.shape[1])

    def _keys(self, cells: np.ndarray) -> np.ndarray:
        rel = cells - self._lo
        return (rel[..., 0] * self._extent[1] + rel[..., 1]) * self._extent[2] + rel[..., 2]

    def lookup(self, cells: np.ndarray) -> np.ndarray:
        """Row of ``coords`` of each cell ``[..., 3]`` int, or -1 where the cell is inactive."""
        if len(self._sorted_keys) == 0:
            return np.full(cells.shape[:-1], -1, dtype=np.int64)
        rel = cells - self._lo
        inside = ((rel >= 0) & (rel < self._extent)).all(-1)
        keys = np.where(inside, self._keys(cells), 0)
        slot = np.minimum(np.searchsorted(self._sorted_keys, keys), len(self._sorted_keys) - 1)
        found = inside & (self._sorted_keys[slot] == keys)
        return np.where(found, self._order[slot], -1)

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """``points [M, 3]`` world → ``[M, C]`` float32."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        out = np.zeros((len(points), self.num_channels), dtype=np.float32)
        for start in range(0, len(points), _POINT_BATCH):
            out[start : start + _POINT_BATCH] = self._sample(points[start : start + _POINT_BATCH])
        return out

    def _sample(self, points: np.ndarray) -> np.ndarray:
        q = (points - self.origin) / self.voxel_size
        base = np.floor(q - 0.5).astype(np.int64)
        frac = q - 0.5 - base  # [M, 3] in [0, 1): position between the lower and upper neighbour centres
        acc = np.zeros((len(q), self.num_channels), dtype=np.float64)
        weight_sum = np.zeros(len(q))
        for corner in _CORNERS:
            index = self.lookup(base + corner)
            weight = np.prod(np.where(corner == 1, frac, 1.0 - frac), axis=1) * (index >= 0)
            acc += weight[:, None] * self.attrs[np.maximum(index, 0)]
            weight_sum += weight
        out = acc / np.maximum(weight_sum, _TRILINEAR_EPS)[:, None]
        empty = weight_sum <= _TRILINEAR_EPS
        if self.nearest_radius > 0 and empty.any() and len(self.coords):
            out[empty] = self._nearest(q[empty])
        return out.astype(np.float32)

    def _nearest(self, q: np.ndarray) -> np.ndarray:
        """Value of the nearest active voxel centre within ``nearest_radius`` (voxel units), else 0."""
        if self._tree is None:
            self._tree = cKDTree(self.coords + 0.5)
        distance, index = self._tree.query(q, distance_upper_bound=self.nearest_radius)
        found = np.isfinite(distance)
        out = np.zeros((len(q), self.num_channels))
        out[found] = self.attrs[index[found]]
        return out


def sample_voxel_attributes(
    points: np.ndarray,
    coords: np.ndarray,
    attrs: np.ndarray,
    origin: Sequence[float] | np.ndarray,
    voxel_size: float,
    nearest_radius: float = 2.0,
) -> np.ndarray:
    """Sparse trilinear interpolation of ``attrs [K, C]`` on voxels ``coords [K, 3]`` at ``points [M, 3]``
    → ``[M, C]`` float32. One-shot form of :class:`VoxelAttributeSampler` (see it for the rule and the
    nearest-voxel fallback); reuse a sampler when looking up many batches in the same volume."""
    return VoxelAttributeSampler(coords, attrs, origin, voxel_size, nearest_radius)(points)


# ====================================================================== UV unwrapping
class UVMesh(NamedTuple):
    """A mesh cut along chart seams: ``vertices [V', 3]``, ``faces [F, 3]`` (same faces, same order),
    ``uv [V', 2]`` in [0, 1] (glTF orientation: v = 0 is the top row of the texture) and ``vmap [V']``, the
    input vertex of every output vertex."""

    vertices: np.ndarray
    faces: np.ndarray
    uv: np.ndarray
    vmap: np.ndarray


def uv_unwrap(vertices: np.ndarray, faces: np.ndarray, texture_size: int = 1024, padding: int = 2) -> UVMesh:
    """xatlas chart atlas of a triangle mesh (CPU; reference §6.4).

    Chart options are xatlas's defaults, which are CuMesh's (normal deviation 2, roundness 0.01,
    straightness 6, normal seam 4, texture seam 0.5, max cost 2) with a single chart-growing iteration, the
    fast setting. Packing targets an atlas of about ``texture_size`` texels with ``padding`` texels between
    charts, so that bilinear filtering at a chart border does not reach the neighbouring chart (CuMesh packs
    with padding 0 and an automatic resolution and relies on inpainting alone). The atlas need not be
    square; its UVs are normalised per axis to [0, 1].
    """
    vertices = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    atlas = xatlas.Atlas()
    atlas.add_mesh(vertices.astype(np.float32), faces.astype(np.uint32))
    chart_options = xatlas.ChartOptions()
    chart_options.max_iterations = 1
    pack_options = xatlas.PackOptions()
    pack_options.resolution = int(texture_size)
    pack_options.padding = int(padding)
    pack_options.bilinear = True
    pack_options.rotate_charts = True
    pack_options.bruteForce = False
    atlas.generate(chart_options, pack_options)
    if atlas.atlas_count != 1:
        raise RuntimeError(f"xatlas packed the charts into {atlas.atlas_count} atlases; expected one")
    vmap, out_faces, uv = atlas[0]
    if len(out_faces) != len(faces):
        raise RuntimeError(f"xatlas returned {len(out_faces)} faces for {len(faces)}")
    vmap = vmap.astype(np.int64)
    return UVMesh(vertices[vmap], out_faces.astype(np.int64), uv.astype(np.float64), vmap)


# ====================================================================== UV-space rasterisation
class UVRaster(NamedTuple):
    """Per texel of an ``S × S`` texture (row 0 at v ≈ 0): ``face_id [S, S]`` int32 (-1 where no triangle
    covers the texel centre) and ``bary [S, S, 3]`` float32, the weights of the face's vertices 0, 1, 2
    (32-bit buffers keep a 4096² bake within a few hundred MB)."""

    face_id: np.ndarray
    bary: np.ndarray


def _texel_bounds(tri: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Inclusive texel-centre index ranges ``x0, x1, y0, y1 [F]`` of triangles ``tri [F, 3, 2]`` given in
    texel-centre units (centre of column c at x = c)."""
    # Clipping only toward the texture keeps lo > hi (an empty range) for a triangle outside it.
    lo = np.maximum(np.ceil(tri.min(1)), 0).astype(np.int64)
    hi = np.minimum(np.floor(tri.max(1)), size - 1).astype(np.int64)
    return lo[:, 0], hi[:, 0], lo[:, 1], hi[:, 1]


def _rasterize_uv_cpu(uv: np.ndarray, faces: np.ndarray, size: int) -> UVRaster:
    """Scan-convert the UV triangles over texel centres ``((c + 0.5)/S, (r + 0.5)/S)`` (reference §6.6).

    Candidates are every texel centre in each triangle's bounding box, in batches of about
    ``_RASTER_CANDIDATES``; a centre is covered when its three barycentrics are ≥ 0, so a centre on a shared
    edge belongs to both triangles and the later one wins (both give the same surface point).
    """
    tri = uv[faces] * size - 0.5  # [F, 3, 2] in texel-centre units
    x0, x1, y0, y1 = _texel_bounds(tri, size)
    width = np.maximum(x1 - x0 + 1, 0)
    count = width * np.maximum(y1 - y0 + 1, 0)
    # Barycentric coefficients b0 = a0·(x − x2) + c0·(y − y2), b1 = a1·(x − x2) + c1·(y − y2).
    (ax, ay), (bx, by), (cx, cy) = tri[:, 0].T, tri[:, 1].T, tri[:, 2].T
    denom = (by - cy) * (ax - cx) + (cx - bx) * (ay - cy)
    valid = np.abs(denom) > 1e-12
    inv = np.where(valid, 1.0 / np.where(valid, denom, 1.0), 0.0)
    coef = np.stack([(by - cy) * inv, (cx - bx) * inv, (cy - ay) * inv, (ax - cx) * inv], axis=1)
    count = np.where(valid, count, 0)

    face_id = np.full((size, size), -1, dtype=np.int32)
    bary = np.zeros((size, size, 3), dtype=np.float32)
    ends = np.cumsum(count)
    start = 0
    while start < len(faces):
        stop = max(
            int(np.searchsorted(ends, ends[start] - count[start] + _RASTER_CANDIDATES, "right")), start + 1
        )
        _rasterize_batch(np.arange(start, stop), count, width, x0, y0, tri, coef, face_id, bary)
        start = stop
    return UVRaster(face_id, bary)


def _rasterize_batch(
    batch: np.ndarray,
    count: np.ndarray,
    width: np.ndarray,
    x0: np.ndarray,
    y0: np.ndarray,
    tri: np.ndarray,
    coef: np.ndarray,
    face_id: np.ndarray,
    bary: np.ndarray,
) -> None:
    """Test the bounding-box texels of the faces in ``batch`` and write the covered ones (in place)."""
    n = count[batch]
    face = np.repeat(batch, n)
    if face.size == 0:
        return
    local = np.arange(face.size) - np.repeat(np.cumsum(n) - n, n)
    x = x0[face] + local % width[face]
    y = y0[face] + local // width[face]
    dx, dy = x - tri[face, 2, 0], y - tri[face, 2, 1]
    c = coef[face]
    b0 = c[:, 0] * dx + c[:, 1] * dy
    b1 = c[:, 2] * dx + c[:, 3] * dy
    b2 = 1.0 - b0 - b1
    inside = (b0 >= 0) & (b1 >= 0) & (b2 >= 0)
    face_id[y[inside], x[inside]] = face[inside]
    bary[y[inside], x[inside]] = np.stack([b0[inside], b1[inside], b2[inside]], axis=1)


def _rasterize_uv_nvdiffrast(uv: np.ndarray, faces: np.ndarray, size: int, device: str = "cuda") -> UVRaster:
    """nvdiffrast UV rasterisation (T2 ``to_glb``): clip positions ``(2u − 1, 2v − 1, 0, 1)``.

    nvdiffrast samples row ``r`` at ``clip_y = 2(r + 0.5)/S − 1``, i.e. ``v = (r + 0.5)/S``, and column c at
    ``u = (c + 0.5)/S``: the CPU path's texel centres and row order. Faces go in batches of
    ``_NVDIFFRAST_FACE_BATCH``; all lie at z = 0, so a later batch overwrites the texels it covers. ``rast``
    holds ``(u, v, z/w, triangle id + 1)`` with ``(u, v)`` the weights of the triangle's vertices 0 and 1.
    """
    try:
        import nvdiffrast.torch as dr
    except ImportError as error:
        raise RuntimeError(
            "backend='nvdiffrast' needs nvdiffrast (pip install diffrp-nvdiffrast, the `gpu` extra); "
            "use backend='cpu' otherwise"
        ) from error
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("backend='nvdiffrast' needs a CUDA device; use backend='cpu' otherwise")
    ctx = dr.RasterizeCudaContext(device=torch.device(device))
    uv_t = torch.as_tensor(uv, dtype=torch.float32, device=device)
    pos = torch.cat([2.0 * uv_t - 1.0, torch.zeros_like(uv_t[:, :1]), torch.ones_like(uv_t[:, :1])], dim=1)
    pos = pos[None].contiguous()  # [1, V, 4]
    tri_all = torch.as_tensor(faces, dtype=torch.int32, device=device)
    face_id = torch.full((size, size), -1, dtype=torch.int64, device=device)
    bary = torch.zeros((size, size, 3), dtype=torch.float32, device=device)
    for start in range(0, len(faces), _NVDIFFRAST_FACE_BATCH):
        tri = tri_all[start : start + _NVDIFFRAST_FACE_BATCH].contiguous()
        rast, _ = dr.rasterize(ctx, pos, tri, resolution=[size, size], grad_db=False)
        rast = rast[0]
        hit = rast[..., 3] > 0
        face_id[hit] = rast[..., 3][hit].long() - 1 + start
        u, v = rast[..., 0], rast[..., 1]
        bary[hit] = torch.stack([u, v, 1.0 - u - v], dim=-1)[hit]
    return UVRaster(face_id.int().cpu().numpy(), bary.cpu().numpy())


def rasterize_uv(uv: np.ndarray, faces: np.ndarray, size: int, backend: str = "cpu") -> UVRaster:
    """Which triangle covers each texel centre of an ``S × S`` texture, and where (``backend``: "cpu" or
    "nvdiffrast"). ``uv [V, 2]``, ``faces [F, 3]``."""
    uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
    faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    if backend == "cpu":
        return _rasterize_uv_cpu(uv, faces, size)
    if backend == "nvdiffrast":
        return _rasterize_uv_nvdiffrast(uv, faces, size)
    raise ValueError(f"unknown bake backend {backend!r}; use 'cpu' or 'nvdiffrast'")


# ====================================================================== baking
def dilate_fill(image: np.ndarray, mask: np.ndarray, passes: int = 8) -> np.ndarray:
    """Fill the texels outside ``mask`` (stand-in for T2's OpenCV Telea inpainting).

    Each pass gives every empty texel with at least one filled 8-neighbour the mean of its filled neighbours,
    so charts grow outward by one texel per pass and bilinear filtering / mip-mapping at chart borders blend
    with plausible colours. Texels still empty after ``passes`` get the mean of all filled texels.
    Only the frontier is touched, so a pass costs O(frontier), not O(S²).

    Args:
        image: ``[H, W, C]`` float.
        mask: ``[H, W]`` bool, True where ``image`` is valid.
    Returns:
        ``[H, W, C]`` float with every texel filled (0 if nothing was valid).
    """
    h, w = mask.shape
    image = image.copy()
    filled = mask.copy()
    padded = np.zeros((h + 2, w + 2), dtype=bool)
    for _ in range(passes):
        padded[1:-1, 1:-1] = filled
        neighbours = sum(
            padded[1 + dr : h + 1 + dr, 1 + dc : w + 1 + dc].astype(np.int8) for dr, dc in _NEIGHBOURS_8
        )
        rows, cols = np.nonzero(~filled & (neighbours > 0))
        if rows.size == 0:
            break
        acc = np.zeros((rows.size, image.shape[2]))
        for dr, dc in _NEIGHBOURS_8:
            r, c = rows + dr, cols + dc
            ok = (r >= 0) & (r < h) & (c >= 0) & (c < w)
            ok[ok] = filled[r[ok], c[ok]]
            acc[ok] += image[r[ok], c[ok]]
        image[rows, cols] = acc / neighbours[rows, cols, None]
        filled[rows, cols] = True
    if not filled.all():
        image[~filled] = image[filled].mean(0) if filled.any() else 0.0
    return image


def _quantise(values: np.ndarray) -> np.ndarray:
    """[0, 1] float → uint8 with rounding (T2 truncates; rounding halves the error)."""
    return np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)


class BakedTextures(NamedTuple):
    """``base_color [S, S, 4]`` uint8 RGBA (alpha channel = alpha attribute), ``metallic_roughness [S, S, 3]``
    uint8 (R = 0, G = roughness, B = metallic: glTF) and ``coverage [S, S]`` bool (texels a triangle covers;
    the rest were filled by :func:`dilate_fill`). Row 0 is the top row of the image, at v ≈ 0."""

    base_color: np.ndarray
    metallic_roughness: np.ndarray
    coverage: np.ndarray


def bake_textures(
    vertices: np.ndarray,
    faces: np.ndarray,
    uv: np.ndarray,
    attribute_fn: AttributeFn,
    texture_size: int = 1024,
    backend: str = "cpu",
    dilation_passes: int = 8,
) -> BakedTextures:
    """Bake PBR textures for a UV-mapped mesh (reference §6.5): rasterise in UV space, interpolate each
    covered texel's 3D position, look the attributes up there, quantise, fill the rest by dilation.

    Args:
        vertices: ``[V, 3]`` positions of the UV-split mesh (:func:`uv_unwrap`'s ``vertices``), in the frame
            ``attribute_fn`` expects.
        faces: ``[F, 3]``.
        uv: ``[V, 2]`` in [0, 1], v = 0 at the top row.
        attribute_fn: points ``[M, 3]`` → ``[M, 6]`` PBR attributes in [0, 1].
        texture_size: S.
        backend: "cpu" (NumPy scan conversion) or "nvdiffrast" (CUDA).
    """
    vertices = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    raster = rasterize_uv(uv, faces, texture_size, backend)
    coverage = raster.face_id >= 0
    corner_positions = vertices[faces[raster.face_id[coverage]]]  # [N, 3, 3]
    points = np.einsum("nk,nkc->nc", raster.bary[coverage], corner_positions)
    values = np.asarray(attribute_fn(points), dtype=np.float64)
    if values.ndim != 2 or values.shape[1] < NUM_PBR_CHANNELS:
        raise ValueError(
            f"attribute_fn must return [M, >= {NUM_PBR_CHANNELS}] attributes, got {values.shape}"
        )

    image = np.zeros((texture_size, texture_size, NUM_PBR_CHANNELS), dtype=np.float32)
    image[coverage] = np.clip(values[:, :NUM_PBR_CHANNELS], 0.0, 1.0)
    image = _quantise(dilate_fill(image, coverage, dilation_passes))
    base_color = image[..., [0, 1, 2, 5]]
    metallic_roughness = np.stack([np.zeros_like(image[..., 0]), image[..., 4], image[..., 3]], axis=-1)
    return BakedTextures(np.ascontiguousarray(base_color), metallic_roughness, coverage)


# ====================================================================== chunks
def partition_faces_by_chunk(face_centroids: np.ndarray, chunk_centers: np.ndarray) -> np.ndarray:
    """``[F]`` int64 index of the nearest chunk centre ``[N, 3]`` to every face centroid ``[F, 3]``
    (GenRecon's per-chunk GLB partition)."""
    chunk_centers = np.asarray(chunk_centers, dtype=np.float64).reshape(-1, 3)
    if len(chunk_centers) == 0:
        raise ValueError("need at least one chunk centre")
    _, index = cKDTree(chunk_centers).query(np.asarray(face_centroids, dtype=np.float64).reshape(-1, 3))
    return index.astype(np.int64)


def split_mesh_by_chunk(
    vertices: np.ndarray, faces: np.ndarray, chunk_centers: np.ndarray, name_format: str = "chunk_{:03d}"
) -> list[Part]:
    """Cut a scene mesh into parts ``(name, vertices [V_i, 3], faces [F_i, 3])``, one per chunk that owns
    faces (:func:`partition_faces_by_chunk`); vertices on a seam are duplicated into both parts."""
    vertices = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    owner = partition_faces_by_chunk(vertices[faces].mean(1), chunk_centers)
    parts = []
    for chunk in np.unique(owner):
        part_vertices, part_faces, _ = remove_unreferenced_vertices(vertices, faces[owner == chunk])
        parts.append((name_format.format(int(chunk)), part_vertices, part_faces))
    return parts


# ====================================================================== export
def decimate(vertices: np.ndarray, faces: np.ndarray, target_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """QEM decimation to about ``target_faces`` with ``fast_simplification`` (open borders kept, so the seams
    between independently decimated chunks still meet). Returns the input unchanged if the package is
    missing (with a warning) or the mesh is already small enough."""
    if len(faces) <= target_faces:
        return vertices, faces
    try:
        import fast_simplification
    except ImportError:
        log.warning("fast_simplification is not installed: exporting %d faces without decimation", len(faces))
        return vertices, faces
    out_vertices, out_faces = fast_simplification.simplify(
        np.asarray(vertices, dtype=np.float64),
        np.asarray(faces, dtype=np.int32),
        target_count=int(target_faces),
        preserve_border=True,
    )
    return out_vertices, out_faces.astype(np.int64)


def _as_attribute_fn(attributes: AttributeFn | AttributeVolume) -> AttributeFn:
    if callable(attributes):
        return attributes
    coords, attrs, origin, voxel_size = attributes
    return VoxelAttributeSampler(coords, attrs, origin, voxel_size)


def _prepared_part(
    name: str,
    vertices: np.ndarray,
    faces: np.ndarray,
    decimate_to: int | None,
    min_component_area: float,
    max_hole_perimeter: float,
) -> tuple[np.ndarray, np.ndarray, bool] | None:
    """Clean, decimate and orient one part → ``(vertices, faces, outward)``, or None if nothing is left."""
    vertices, faces = clean_mesh(
        vertices, faces, min_component_area=min_component_area, max_hole_perimeter=max_hole_perimeter
    )
    if decimate_to is not None and len(faces) > decimate_to:
        # QEM rejects collapses that flip a face, a test that needs consistent winding.
        faces = unify_face_orientations(vertices, faces).faces
        vertices, faces = clean_mesh(*decimate(vertices, faces, decimate_to))
    if len(faces) == 0:
        log.warning("part %s has no faces left after clean-up; skipped", name)
        return None
    orientation = unify_face_orientations(vertices, faces)
    return vertices, orientation.faces, orientation.outward


def _unwrap_job(args: tuple[np.ndarray, np.ndarray, int]) -> UVMesh:
    return uv_unwrap(*args)


# Below this many faces in all, starting worker processes costs more than it saves.
PARALLEL_UNWRAP_MIN_FACES = 100_000


def _unwrap_all(jobs: list[tuple[np.ndarray, np.ndarray, int]], workers: int) -> list[UVMesh]:
    """xatlas for every part; with ``workers > 1`` in spawned processes (xatlas holds the GIL, and its time
    grows faster than linearly with the face count: 13 s for one 194k-face chunk)."""
    workers = min(workers, len(jobs))
    if workers <= 1 or sum(len(f) for _, f, _ in jobs) < PARALLEL_UNWRAP_MIN_FACES:
        return [_unwrap_job(job) for job in jobs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from genrecon.utils.workers import thread_limited_env, threads_per_worker

    # spawn, not fork: the caller may hold CUDA contexts and thread pools that a forked child must not touch. The
    # executor starts its workers as jobs are submitted, so the thread limit covers the whole map.
    with thread_limited_env(threads_per_worker(workers)), \
            ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_unwrap_job, jobs))


def _textured_part(
    name: str,
    unwrapped: UVMesh,
    outward: bool,
    attribute_fn: AttributeFn,
    texture_size: int,
    backend: str,
) -> trimesh.Trimesh:
    """Bake one unwrapped part → a y-up ``trimesh.Trimesh`` with a PBR material."""
    textures = bake_textures(
        unwrapped.vertices, unwrapped.faces, unwrapped.uv, attribute_fn, texture_size, backend
    )
    material = PBRMaterial(
        name=f"{name}_material",
        baseColorFactor=[1.0, 1.0, 1.0, 1.0],
        baseColorTexture=Image.fromarray(textures.base_color, "RGBA"),
        metallicRoughnessTexture=Image.fromarray(textures.metallic_roughness, "RGB"),
        metallicFactor=1.0,
        roughnessFactor=1.0,
        alphaMode="OPAQUE",
        doubleSided=not outward,
    )
    # trimesh stores v with a bottom-left origin and flips it on glTF export: hand it 1 - v.
    trimesh_uv = np.stack([unwrapped.uv[:, 0], 1.0 - unwrapped.uv[:, 1]], axis=1)
    return trimesh.Trimesh(
        vertices=unwrapped.vertices @ Z_UP_TO_Y_UP.T,
        faces=unwrapped.faces,
        visual=trimesh.visual.TextureVisuals(uv=trimesh_uv, material=material),
        process=False,
        validate=False,
    )


def write_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to a hidden temporary file next to ``path`` and rename it into place once it is fully on
    disk, so an interrupted export never leaves a truncated file under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.part")
    # os.open with 0o666 lets the umask set the final permissions, as a plain open() would.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def export_glb(
    path: str | os.PathLike,
    parts: Sequence[Part],
    attributes: AttributeFn | AttributeVolume,
    texture_size: int = 1024,
    decimate_to: int | None = None,
    *,
    backend: str = "cpu",
    min_component_area: float = 0.0,
    max_hole_perimeter: float = 0.0,
    workers: int = 1,
) -> Path:
    """Bake and write a textured glTF binary with one primitive (node + mesh + material) per part.

    Args:
        path: output ``.glb``; written atomically (:func:`write_atomic`).
        parts: ``(name, vertices [V, 3] world z-up, faces [F, 3])`` per part, e.g. from
            :func:`split_mesh_by_chunk`.
        attributes: an :data:`AttributeFn` or the volume ``(coords [K, 3], attrs [K, 6], origin [3],
            voxel_size)`` in world units, looked up with :class:`VoxelAttributeSampler`.
        texture_size: edge of each part's two textures.
        decimate_to: per-part face budget (:func:`decimate`); None keeps every face.
        backend: UV rasteriser, "cpu" or "nvdiffrast".
        min_component_area: drop connected components smaller than this (world m²) per part; 0 keeps all.
        max_hole_perimeter: fill boundary loops shorter than this (world m) per part; 0 fills none.
        workers: processes for the UV unwrapping of the parts (1: in this process).
    Returns:
        The written path.
    """
    attribute_fn = _as_attribute_fn(attributes)
    prepared = []
    for name, vertices, faces in parts:
        part = _prepared_part(name, vertices, faces, decimate_to, min_component_area, max_hole_perimeter)
        if part is not None:
            prepared.append((name, *part))
    if not prepared:
        raise ValueError("no part has any face to export")
    unwrapped = _unwrap_all([(v, f, int(texture_size)) for _, v, f, _ in prepared], workers)
    scene = trimesh.Scene()
    for (name, _, _, outward), uv_mesh in zip(prepared, unwrapped):
        mesh = _textured_part(name, uv_mesh, outward, attribute_fn, texture_size, backend)
        scene.add_geometry(mesh, geom_name=name, node_name=name)
    return write_atomic(path, scene.export(file_type="glb"))
