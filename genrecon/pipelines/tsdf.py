"""TSDF fusion of depth maps: the non-generative reference reconstruction from the same input views.

Standard weighted (Curless–Levoy / KinectFusion) integration on a dense voxel grid: for every voxel centre
``x`` and view ``i`` with a valid depth ``D_i`` at the pixel ``x`` projects into (nearest pixel), the
projective signed distance is ``sdf = D_i - z_i(x)`` (positive in front of the surface). Views with ``sdf < -trunc`` say
nothing about ``x`` (it is hidden behind the surface); the others add ``min(sdf / trunc, 1)`` with weight 1.
The fused value is the weighted mean. The zero level set is extracted by marching cubes (scikit-image) and
only where both voxels of the crossing edge were observed, so the unobserved space behind surfaces does not
produce a spurious surface. Integration is vectorised torch and runs on the device of ``depths``.
"""

from __future__ import annotations

import numpy as np
import torch
from skimage.measure import marching_cubes

from genrecon.geometry.cameras import project_points
from genrecon.metrics.envelope import backproject_depth

# Voxel-view pairs per integration step: bounds the [N_views, block] intermediates (~1 GB in float32).
PAIRS_PER_BLOCK = 1 << 24


def depth_bounds(depths: torch.Tensor, w2c: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """``[2, 3]`` axis-aligned bounds of the back-projected valid pixels of ``depths [N, H, W]``."""
    lo = torch.full((3,), float("inf"), dtype=torch.float64, device=depths.device)
    hi = -lo
    for depth, view, intr in zip(depths, w2c, K):
        points = backproject_depth(depth, view, intr)
        if len(points):
            lo = torch.minimum(lo, points.amin(0).double())
            hi = torch.maximum(hi, points.amax(0).double())
    if not torch.isfinite(lo).all():
        raise ValueError("no valid depth pixel in any view: nothing to fuse")
    return torch.stack([lo, hi])


def integrate(
    depths: torch.Tensor, w2c: torch.Tensor, K: torch.Tensor, centres: torch.Tensor, trunc: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused TSDF ``[M]`` (in [-1, 1], truncation units) and weight ``[M]`` at voxel ``centres [M, 3]``.

    Args:
        depths: ``[N, H, W]`` camera z, 0 = no measurement; w2c: ``[N, 4, 4]``; K: ``[N, 3, 3]`` normalised.
    """
    n, h, w = depths.shape
    flat = depths.reshape(n, -1)
    tsdf_sum = torch.zeros(len(centres), dtype=depths.dtype, device=depths.device)
    weight = torch.zeros_like(tsdf_sum)
    block = max(1, PAIRS_PER_BLOCK // n)
    for start in range(0, len(centres), block):
        pts = centres[start : start + block]
        uv, z = project_points(pts.unsqueeze(0), w2c, K)  # [N, B, 2], [N, B]
        col = torch.floor(uv[..., 0] * w).long()
        row = torch.floor(uv[..., 1] * h).long()
        in_image = (z > 0) & (col >= 0) & (col < w) & (row >= 0) & (row < h)
        pixel = (row.clamp(0, h - 1) * w + col.clamp(0, w - 1))
        measured = torch.gather(flat, 1, pixel)
        sdf = measured - z.to(measured.dtype)
        valid = in_image & (measured > 0) & (sdf >= -trunc)
        tsdf_sum[start : start + block] = torch.where(valid, (sdf / trunc).clamp(max=1.0), 0.0).sum(0)
        weight[start : start + block] = valid.sum(0).to(weight.dtype)
    tsdf = torch.where(weight > 0, tsdf_sum / weight.clamp(min=1.0), torch.ones_like(tsdf_sum))
    return tsdf, weight


def extract_surface(
    tsdf: np.ndarray, observed: np.ndarray, origin: np.ndarray, voxel_size: float
) -> tuple[np.ndarray, np.ndarray]:
    """Zero level set of ``tsdf [X, Y, Z]`` (voxel ``(a, b, c)`` centred at ``origin + (a, b, c)·voxel_size``)
    as ``vertices [V, 3]`` float64, ``faces [F, 3]`` int64, keeping faces whose vertices all lie on edges
    between two ``observed [X, Y, Z]`` voxels. scikit-image's default winding makes normals point to
    increasing TSDF, i.e. into free space, towards the cameras."""
    if tsdf.min() >= 0 or tsdf.max() <= 0:
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    verts, faces, _, _ = marching_cubes(tsdf, level=0.0, allow_degenerate=False)
    # A marching-cubes vertex sits on a grid edge: its two end voxels are the floor and ceil of its position.
    lo = np.clip(np.floor(verts).astype(np.int64), 0, np.array(tsdf.shape) - 1)
    hi = np.clip(np.ceil(verts).astype(np.int64), 0, np.array(tsdf.shape) - 1)
    vert_ok = observed[tuple(lo.T)] & observed[tuple(hi.T)]
    faces = faces[vert_ok[faces].all(axis=1)]
    used, inverse = np.unique(faces.reshape(-1), return_inverse=True)
    faces = inverse.reshape(-1, 3).astype(np.int64)
    return origin + verts[used].astype(np.float64) * voxel_size, np.ascontiguousarray(faces)


def tsdf_fusion(
    depths: torch.Tensor | np.ndarray,
    w2c: torch.Tensor | np.ndarray,
    K: torch.Tensor | np.ndarray,
    voxel_size: float = 0.02,
    trunc: float = 0.08,
    bounds: torch.Tensor | np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Fuse depth maps into a mesh.

    Args:
        depths: ``[N, H, W]`` camera z in metres (0 = no surface); a CUDA tensor runs the fusion on the GPU.
        w2c: ``[N, 4, 4]`` OpenCV world->camera; K: ``[N, 3, 3]`` normalised intrinsics.
        voxel_size: grid spacing in metres.
        trunc: truncation distance in metres (a few voxels).
        bounds: ``[2, 3]`` world box to fuse; default the back-projected depth points padded by ``trunc``
            plus one voxel.
    Returns:
        ``vertices [V, 3]`` float64 (world, metres) and ``faces [F, 3]`` int64, outward (towards the cameras).
    """
    depths = torch.as_tensor(depths)
    depths = depths.to(torch.float32 if depths.is_cuda else torch.float64)
    w2c = torch.as_tensor(w2c, dtype=depths.dtype, device=depths.device)
    K = torch.as_tensor(K, dtype=depths.dtype, device=depths.device)
    if bounds is None:
        box = depth_bounds(depths, w2c, K)
        box = box + torch.tensor([[-1.0], [1.0]], dtype=box.dtype, device=box.device) * (trunc + voxel_size)
    else:
        box = torch.as_tensor(bounds, dtype=torch.float64, device=depths.device).reshape(2, 3)
    shape = tuple(int(s) for s in torch.ceil((box[1] - box[0]) / voxel_size).long().clamp(min=2).tolist())
    origin = box[0] + 0.5 * voxel_size
    axes = [o + voxel_size * torch.arange(n, dtype=torch.float64, device=depths.device) for o, n in zip(origin, shape)]
    centres = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3).to(depths.dtype)
    tsdf, weight = integrate(depths, w2c, K, centres, trunc)
    return extract_surface(
        tsdf.reshape(shape).double().cpu().numpy(),
        (weight > 0).reshape(shape).cpu().numpy(),
        origin.cpu().numpy(),
        voxel_size,
    )
