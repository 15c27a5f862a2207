"""CPU rasteriser: one ray through every pixel centre, closest hit found by Embree (through trimesh).

Embree answers which face a ray hits first (in float32); the hit distance and barycentrics are then solved
exactly in float64 on that face (Möller–Trumbore), so depth does not inherit Embree's float32 rounding.
Rays start on the near plane, which is what clipping at ``near`` does in the GPU backend.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from genrecon.geometry.cameras import pixel_rays
from genrecon.render.base import DEFAULT_FAR, DEFAULT_NEAR, Rasterizer, RasterBuffers, as_numpy, check_views


@dataclass
class RayHits:
    """Closest hits of ``M`` rays: ``face_id [M]`` int64 (-1 = miss), ``distance [M]`` float64 along the
    unit direction (inf on a miss), ``bary [M, 3]`` float64 (0 on a miss)."""

    face_id: np.ndarray
    distance: np.ndarray
    bary: np.ndarray

    @property
    def hit(self) -> np.ndarray:
        return self.face_id >= 0


class RayCaster:
    """Closest-hit ray queries against a fixed triangle mesh (the Embree BVH is built once, here).

    Args:
        vertices: ``[V, 3]``; faces: ``[F, 3]``.
        batch_rays: rays per Embree call, bounding the temporary memory.
    """

    def __init__(self, vertices: np.ndarray, faces: np.ndarray, batch_rays: int = 1 << 20) -> None:
        import trimesh
        from trimesh.ray.ray_pyembree import RayMeshIntersector

        self.vertices = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
        self.faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
        self.batch_rays = int(batch_rays)
        self._intersector = None
        if len(self.faces):
            mesh = trimesh.Trimesh(self.vertices, self.faces, process=False, validate=False)
            self._intersector = RayMeshIntersector(mesh)
            # Build the BVH now so that its cost is not charged to the first query.
            self._intersector.intersects_first(np.zeros((1, 3)), np.array([[0.0, 0.0, 1.0]]))

    def face_normals(self) -> np.ndarray:
        """``[F, 3]`` unit normals by the right-hand rule over ``faces`` (zero for degenerate faces)."""
        tri = self.vertices[self.faces]
        n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        length = np.linalg.norm(n, axis=1, keepdims=True)
        return np.divide(n, length, out=np.zeros_like(n), where=length > 0)

    def first_hits(self, origins: np.ndarray, dirs: np.ndarray) -> RayHits:
        """Closest hits of rays ``origins [M, 3]`` + t · ``dirs [M, 3]`` (unit), t > 0.

        Rays that graze a face edge-on (no unique hit point) count as misses.
        """
        origins = np.asarray(origins, dtype=np.float64).reshape(-1, 3)
        dirs = np.asarray(dirs, dtype=np.float64).reshape(-1, 3)
        m = len(origins)
        face_id = np.full(m, -1, dtype=np.int64)
        if self._intersector is not None and m:
            for start in range(0, m, self.batch_rays):
                sl = slice(start, start + self.batch_rays)
                face_id[sl] = self._intersector.intersects_first(origins[sl], dirs[sl])
        distance = np.full(m, np.inf)
        bary = np.zeros((m, 3))
        idx = np.nonzero(face_id >= 0)[0]
        t, b, ok = _intersect_faces(self.vertices[self.faces[face_id[idx]]], origins[idx], dirs[idx])
        face_id[idx[~ok]] = -1
        distance[idx[ok]] = t[ok]
        bary[idx[ok]] = b[ok]
        return RayHits(face_id, distance, bary)


def _intersect_faces(
    tri: np.ndarray, origins: np.ndarray, dirs: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Möller–Trumbore intersection of ray ``k`` with triangle ``tri[k]`` (``[M, 3, 3]``), no culling.

    Returns ``t [M]``, barycentrics ``[M, 3]`` of the triangle's vertices and ``ok [M]`` (not edge-on).
    """
    e1 = tri[:, 1] - tri[:, 0]
    e2 = tri[:, 2] - tri[:, 0]
    p = np.cross(dirs, e2)
    det = np.einsum("mc,mc->m", e1, p)
    scale = np.linalg.norm(e1, axis=1) * np.linalg.norm(e2, axis=1)
    ok = np.abs(det) > 1e-12 * np.maximum(scale, 1e-300)
    inv = np.divide(1.0, det, out=np.zeros_like(det), where=ok)
    s = origins - tri[:, 0]
    u = np.einsum("mc,mc->m", s, p) * inv
    q = np.cross(s, e1)
    v = np.einsum("mc,mc->m", dirs, q) * inv
    t = np.einsum("mc,mc->m", e2, q) * inv
    return t, np.stack([1.0 - u - v, u, v], axis=1), ok


class EmbreeRasterizer(Rasterizer):
    """CPU backend: ray casting through pixel centres with trimesh's Embree intersector.

    ``last_stats`` holds the timings of the latest call: ``rays``, ``build_seconds`` (BVH), ``cast_seconds``
    and ``rays_per_s`` (rays over cast time, exact depth solve included).
    """

    name = "embree"

    def __init__(
        self, near: float = DEFAULT_NEAR, far: float = DEFAULT_FAR, batch_rays: int = 1 << 20
    ) -> None:
        super().__init__(near, far)
        self.batch_rays = int(batch_rays)
        self.last_stats: dict[str, float] = {}

    def rasterize(
        self,
        vertices: np.ndarray | torch.Tensor,
        faces: np.ndarray | torch.Tensor,
        w2c: np.ndarray | torch.Tensor,
        K: np.ndarray | torch.Tensor,
        width: int,
        height: int,
    ) -> RasterBuffers:
        """See :meth:`Rasterizer.rasterize`; buffers are CPU tensors."""
        w2c = as_numpy(w2c, np.float64)
        K = as_numpy(K, np.float64)
        check_views(w2c, K)
        t0 = time.perf_counter()
        caster = RayCaster(as_numpy(vertices, np.float64), as_numpy(faces, np.int64), self.batch_rays)
        t1 = time.perf_counter()

        origins, dirs = pixel_rays(w2c, K, width, height)  # [N, H, W, 3]
        cos = np.einsum("nhwc,nc->nhw", dirs, w2c[:, 2, :3])  # camera z per unit of ray length
        start = origins + dirs * (self.near / cos)[..., None]
        hits = caster.first_hits(start.reshape(-1, 3), dirs.reshape(-1, 3))
        t2 = time.perf_counter()

        shape = (len(w2c), height, width)
        depth = self.near + hits.distance.reshape(shape) * cos
        face_id = hits.face_id.reshape(shape)
        hit = (face_id >= 0) & (depth <= self.far)
        face_id = np.where(hit, face_id, -1)
        depth = np.where(hit, depth, 0.0)
        bary = np.where(hit[..., None], hits.bary.reshape(shape + (3,)), 0.0)

        rays = int(np.prod(shape))
        self.last_stats = {
            "rays": rays,
            "build_seconds": t1 - t0,
            "cast_seconds": t2 - t1,
            "rays_per_s": rays / max(t2 - t1, 1e-12),
        }
        return RasterBuffers(
            face_id=torch.from_numpy(face_id),
            bary=torch.from_numpy(bary.astype(np.float32)),
            depth=torch.from_numpy(depth.astype(np.float32)),
        )
