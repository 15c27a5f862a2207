"""GPU rasteriser on nvdiffrast's CUDA rasteriser, with the CPU backend's conventions.

Clip space from OpenCV camera coordinates ``(x, y, z)`` and normalised ``K``: with ``w = z``,

    clip_x = 2·(fx·x + s·y + cx·z) - z        (so clip_x / w = 2u - 1)
    clip_y = 2·(fy·y + cy·z) - z              (so clip_y / w = 2v - 1)
    clip_z = (f + n)/(f - n)·z - 2fn/(f - n)  (z = near -> -1, z = far -> +1)

nvdiffrast samples pixel ``(row r, column c)`` at ``clip/w = (2(c + 0.5)/W - 1, 2(r + 0.5)/H - 1)`` and puts
clip y = -1 in row 0. With ``clip_y/w = 2v - 1`` row ``r`` is therefore sampled at ``v = (r + 0.5)/H``: the
same pixel centre the CPU backend casts its ray through, and row 0 is the top row (v ≈ 0), so the output
needs no flip. Triangles are not culled, the depth test keeps the smallest ``z/w`` (monotonic in camera z),
and geometry outside ``[near, far]`` is clipped, as in the CPU backend.

nvdiffrast's ``(u, v)`` are the perspective-correct barycentric weights of the triangle's vertices 0 and 1,
so the barycentrics are ``(u, v, 1 - u - v)``: its shader kernel writes ``u = a0 / (a0 + a1 + a2)`` with
``a0`` the edge function opposite vertex 0, and ``dr.interpolate`` computes
``u·attr[v0] + v·attr[v1] + (1 - u - v)·attr[v2]`` (common/rasterize.cu and common/interpolate.cu in
nvdiffrast 0.3.3). Depth is the camera z interpolated with them.
"""

from __future__ import annotations

import numpy as np
import torch

from genrecon.render.base import DEFAULT_FAR, DEFAULT_NEAR, Rasterizer, RasterBuffers, as_numpy, check_views

# rast[..., 3] holds triangle id + 1 as float32, exact below 2^24.
MAX_FACES = 1 << 24


def clip_from_camera(cam: torch.Tensor, K: torch.Tensor, near: float, far: float) -> torch.Tensor:
    """Homogeneous clip coordinates ``[..., V, 4]`` of camera-frame points ``cam [..., V, 3]`` under
    normalised intrinsics ``K [..., 3, 3]`` (see the module docstring for the mapping)."""
    x, y, z = cam.unbind(-1)
    fx, s, cx = K[..., 0, 0, None], K[..., 0, 1, None], K[..., 0, 2, None]
    fy, cy = K[..., 1, 1, None], K[..., 1, 2, None]
    clip_x = 2.0 * (fx * x + s * y + cx * z) - z
    clip_y = 2.0 * (fy * y + cy * z) - z
    clip_z = (far + near) / (far - near) * z - 2.0 * far * near / (far - near)
    return torch.stack([clip_x, clip_y, clip_z, z], dim=-1)


class NvdiffrastRasterizer(Rasterizer):
    """GPU backend (``nvdiffrast.torch`` CUDA rasteriser).

    Args:
        near, far: camera-depth range (see :class:`Rasterizer`).
        device: CUDA device of the rasteriser context.
        keep_on_device: return buffers on ``device`` instead of the CPU.
        views_per_batch: views rasterised per nvdiffrast call, bounding GPU memory (16 B per pixel and view).
    """

    name = "nvdiffrast"

    def __init__(
        self,
        near: float = DEFAULT_NEAR,
        far: float = DEFAULT_FAR,
        device: str | torch.device = "cuda",
        keep_on_device: bool = False,
        views_per_batch: int = 16,
    ) -> None:
        super().__init__(near, far)
        import nvdiffrast.torch as dr

        self._dr = dr
        self.device = torch.device(device)
        self.keep_on_device = keep_on_device
        self.views_per_batch = int(views_per_batch)
        self._ctx = dr.RasterizeCudaContext(device=self.device)

    def rasterize(
        self,
        vertices: np.ndarray | torch.Tensor,
        faces: np.ndarray | torch.Tensor,
        w2c: np.ndarray | torch.Tensor,
        K: np.ndarray | torch.Tensor,
        width: int,
        height: int,
    ) -> RasterBuffers:
        """See :meth:`Rasterizer.rasterize`; buffers stay on the GPU if ``keep_on_device``."""
        check_views(as_numpy(w2c, np.float64), as_numpy(K, np.float64))
        if len(faces) >= MAX_FACES:
            raise ValueError(f"nvdiffrast stores triangle ids as float32: at most {MAX_FACES - 1} faces")
        dev = self.device
        verts = torch.as_tensor(as_numpy(vertices, np.float64), device=dev)
        tri = torch.as_tensor(as_numpy(faces, np.int32), device=dev).contiguous()
        w2c = torch.as_tensor(as_numpy(w2c, np.float64), device=dev)
        K = torch.as_tensor(as_numpy(K, np.float64), device=dev)
        out_dev = dev if self.keep_on_device else torch.device("cpu")
        batches = [slice(i, i + self.views_per_batch) for i in range(0, len(w2c), self.views_per_batch)]
        parts = [self._rasterize_views(verts, tri, w2c[b], K[b], width, height).to(out_dev) for b in batches]
        if not parts:
            empty = torch.zeros((0, height, width), device=out_dev)
            return RasterBuffers(empty.long() - 1, empty[..., None].expand(-1, -1, -1, 3).contiguous(), empty)
        return RasterBuffers(
            face_id=torch.cat([p.face_id for p in parts]),
            bary=torch.cat([p.bary for p in parts]),
            depth=torch.cat([p.depth for p in parts]),
        )

    def _rasterize_views(
        self,
        verts: torch.Tensor,
        tri: torch.Tensor,
        w2c: torch.Tensor,
        K: torch.Tensor,
        width: int,
        height: int,
    ) -> RasterBuffers:
        dr = self._dr
        n = len(w2c)
        if len(tri) == 0:
            zeros = torch.zeros((n, height, width), device=self.device)
            bary = torch.zeros((n, height, width, 3), device=self.device)
            return RasterBuffers(zeros.long() - 1, bary, zeros)
        # Camera coordinates in float64 so that large world coordinates lose no precision before the cast.
        cam = verts[None] @ w2c[:, :3, :3].transpose(1, 2) + w2c[:, None, :3, 3]  # [n, V, 3]
        pos = clip_from_camera(cam, K, self.near, self.far).float().contiguous()
        rast, _ = dr.rasterize(self._ctx, pos, tri, resolution=[height, width], grad_db=False)
        face_id = rast[..., 3].long() - 1
        hit = face_id >= 0
        u, v = rast[..., 0], rast[..., 1]
        bary = torch.stack([u, v, 1.0 - u - v], dim=-1) * hit[..., None]
        z_attr = cam[..., 2:3].float().contiguous()  # [n, V, 1]
        depth, _ = dr.interpolate(z_attr, rast, tri)
        depth = torch.where(hit, depth[..., 0], torch.zeros_like(depth[..., 0]))
        return RasterBuffers(face_id=face_id, bary=bary.float(), depth=depth.float())
