"""The observation envelope: the region of space the input views observed, dilated, used to crop predictions.

The GenRecon paper crops predicted meshes to "a 1.1 cm observation envelope dilated by 15 cm" and never
published its construction. GenRecon (this repository) defines it as follows; docs/evaluation.md repeats it.

1. **Observed points.** Every valid pixel (depth > 0) of every *input* view is back-projected through its
   pixel centre with the view's intrinsics and extrinsics: ``X = R^T (z · K^-1 [u, v, 1]^T - t)``.
   :meth:`ObservationEnvelope.from_depth` takes the views' depth maps; when a scene has no depth maps,
   :meth:`ObservationEnvelope.from_mesh_visibility` renders them from the ground-truth mesh (ray casting
   through the same pixel centres, closest hit), i.e. the points are the ground-truth surface visible in the
   input cameras.
2. **Voxelisation.** Space is divided into a voxel lattice anchored at the world origin: voxel ``(i, j, k)``
   covers ``[i·s, (i+1)·s) × [j·s, (j+1)·s) × [k·s, (k+1)·s)`` with ``s = voxel_size`` (default 2 cm). A voxel
   is *observed* if at least one observed point falls into it.
3. **Dilation.** A voxel belongs to the envelope if the Euclidean distance between its centre and the centre
   of the nearest observed voxel is at most ``dilation`` (default 15 cm): a ball dilation, computed with an
   exact Euclidean distance transform.
4. **Membership.** A point is inside if the voxel containing it belongs to the envelope. Hence a point within
   ``dilation - √3·s`` of an observed point is always inside, and a point farther than ``dilation + √3·s``
   from every observed point is always outside.

Meshes are cropped by face centroid (:meth:`ObservationEnvelope.crop_mesh`), after optionally splitting faces
longer than ``max_edge`` so that large triangles do not straddle the boundary whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt

from genrecon.geometry.cameras import pixel_centers_uv, unproject_points
from genrecon.render.base import Rasterizer, as_numpy

Array = np.ndarray | torch.Tensor

# Rows of the grid per distance-transform call: bounds the float64 distance buffer for room-sized grids.
DILATION_SLAB = 64


def backproject_depth(depth: Array, w2c: Array, K: Array) -> Array:
    """World points ``[P, 3]`` of the valid pixels (``depth > 0``) of one view.

    Args:
        depth: ``[H, W]`` camera z in metres, 0 where nothing was observed.
        w2c: ``[4, 4]`` OpenCV world->camera; K: ``[3, 3]`` normalised intrinsics.
    Returns:
        numpy float64 for numpy inputs, else a tensor on ``depth``'s device.
    """
    h, w = depth.shape
    uv = pixel_centers_uv(w, h)
    if isinstance(depth, torch.Tensor):
        uv = torch.as_tensor(uv, dtype=depth.dtype, device=depth.device)
    valid = depth > 0
    return unproject_points(uv[valid], depth[valid], w2c, K)


def _dilate_ball(occupied: np.ndarray, radius_vox: float) -> np.ndarray:
    """Voxels ``[X, Y, Z]`` whose centre lies within ``radius_vox`` voxels of an ``occupied`` voxel's centre.

    The distance transform runs on slabs along x padded by the radius, which is exact because no voxel
    farther than the padding can be within the radius.
    """
    pad = int(np.ceil(radius_vox))
    out = np.zeros_like(occupied)
    n = occupied.shape[0]
    for start in range(0, n, DILATION_SLAB):
        stop = min(n, start + DILATION_SLAB)
        lo, hi = max(0, start - pad), min(n, stop + pad)
        block = occupied[lo:hi]
        if not block.any():  # the transform of an all-background block is undefined; nothing is near
            continue
        dist = distance_transform_edt(~block)
        out[start:stop] = dist[start - lo : stop - lo] <= radius_vox
    return out


@dataclass
class ObservationEnvelope:
    """A boolean voxel grid (see the module docstring for the definition).

    ``inside [X, Y, Z]`` bool; grid voxel ``(a, b, c)`` is lattice voxel ``origin_index + (a, b, c)``, i.e.
    covers ``[(origin_index + (a, b, c))·voxel_size, ... + voxel_size)``.
    """

    inside: np.ndarray
    origin_index: np.ndarray
    voxel_size: float
    dilation: float

    @classmethod
    def from_points(
        cls, points: Array | Sequence[Array], voxel_size: float = 0.02, dilation: float = 0.15
    ) -> ObservationEnvelope:
        """The envelope of observed ``points [P, 3]`` (or a list of such arrays, e.g. one per view)."""
        chunks = [points] if not isinstance(points, list | tuple) else list(points)
        keys = [np.floor(as_numpy(p, np.float64).reshape(-1, 3) / voxel_size).astype(np.int64) for p in chunks]
        keys = np.unique(np.concatenate([np.unique(k, axis=0) for k in keys]), axis=0)
        if len(keys) == 0:
            raise ValueError("no observed points: every depth pixel is 0 (or the visible surface is empty)")
        radius_vox = dilation / voxel_size
        pad = int(np.ceil(radius_vox)) + 1
        origin = keys.min(0) - pad
        occupied = np.zeros(tuple(keys.max(0) - origin + pad + 1), dtype=bool)
        occupied[tuple((keys - origin).T)] = True
        return cls(_dilate_ball(occupied, radius_vox), origin, float(voxel_size), float(dilation))

    @classmethod
    def from_depth(
        cls,
        depths: Array | Sequence[Array],
        w2c: Array,
        K: Array,
        voxel_size: float = 0.02,
        dilation: float = 0.15,
    ) -> ObservationEnvelope:
        """The envelope of the input views' depth maps ``depths [N, H, W]`` (or a list of ``[H_i, W_i]``;
        camera z in metres, 0 = no surface) seen from ``w2c [N, 4, 4]`` with normalised ``K [N, 3, 3]``."""
        w2c, K = as_numpy(w2c, np.float64), as_numpy(K, np.float64)
        if len(depths) != len(w2c) or len(w2c) != len(K):
            raise ValueError(f"{len(depths)} depth maps for {len(w2c)} extrinsics and {len(K)} intrinsics")
        # One view at a time keeps memory at one view's points, whatever the number of views.
        points = [backproject_depth(as_numpy(d, np.float64), w2c[i], K[i]) for i, d in enumerate(depths)]
        return cls.from_points(points, voxel_size, dilation)

    @classmethod
    def from_mesh_visibility(
        cls,
        vertices: np.ndarray,
        faces: np.ndarray,
        w2c: Array,
        K: Array,
        width: int,
        height: int,
        voxel_size: float = 0.02,
        dilation: float = 0.15,
        rasterizer: Rasterizer | None = None,
    ) -> ObservationEnvelope:
        """The envelope of the mesh surface ``vertices [V, 3]``, ``faces [F, 3]`` visible in the cameras
        ``w2c [N, 4, 4]``, ``K [N, 3, 3]`` at ``width × height`` (ray cast through the pixel centres by
        ``rasterizer``, default the CPU Embree backend): for scenes without depth maps."""
        if rasterizer is None:
            from genrecon.render.embree import EmbreeRasterizer

            rasterizer = EmbreeRasterizer()
        depth = rasterizer.rasterize(vertices, faces, w2c, K, width, height).depth
        return cls.from_depth(depth.double().cpu().numpy(), w2c, K, voxel_size, dilation)

    def contains(self, points: Array) -> np.ndarray:
        """``[M]`` bool: which of ``points [M, 3]`` lie inside the envelope."""
        idx = np.floor(as_numpy(points, np.float64).reshape(-1, 3) / self.voxel_size).astype(np.int64)
        idx -= self.origin_index
        valid = np.all((idx >= 0) & (idx < np.array(self.inside.shape)), axis=1)
        mask = np.zeros(len(idx), dtype=bool)
        mask[valid] = self.inside[tuple(idx[valid].T)]
        return mask

    def crop_points(self, points: Array) -> np.ndarray:
        """The rows of ``points [M, 3]`` inside the envelope, ``[M', 3]`` float64."""
        points = as_numpy(points, np.float64).reshape(-1, 3)
        return points[self.contains(points)]

    def crop_mesh(
        self, vertices: np.ndarray, faces: np.ndarray, max_edge: float | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Keep the faces whose centroid is inside and drop unreferenced vertices.

        Args:
            vertices: ``[V, 3]``; faces: ``[F, 3]``.
            max_edge: if given, faces with a longer edge are first split (midpoint subdivision) until no
                edge is longer, so the crop follows the envelope to within ``max_edge``.
        Returns:
            ``vertices [V', 3]`` float64 and ``faces [F', 3]`` int64.
        """
        vertices = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
        faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
        if max_edge is not None and len(faces):
            import trimesh.remesh

            # 32 halvings take a 100 m edge below 0.1 µm: enough for any scene and any max_edge.
            vertices, faces = trimesh.remesh.subdivide_to_size(vertices, faces, max_edge, max_iter=32)
        keep = self.contains(vertices[faces].mean(axis=1))
        used, inverse = np.unique(faces[keep].reshape(-1), return_inverse=True)
        return vertices[used], inverse.reshape(-1, 3).astype(np.int64)
