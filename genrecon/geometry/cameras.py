"""Camera maths in GenRecon's conventions (docs/architecture.md, "Frames and conventions").

* Extrinsics ``w2c [..., 4, 4]`` are OpenCV world->camera: x right, y down, z forward (depth = camera z).
* Intrinsics ``K [..., 3, 3]`` are normalised: ``u = fx·x/z + s·y/z + cx``, ``v = fy·y/z + cy`` with
  ``u, v in [0, 1)`` across the image, so pixel column ``c`` of a ``W``-wide image has its centre at
  ``u = (c + 0.5) / W`` (and row ``r`` at ``v = (r + 0.5) / H``; row 0 is the top of the image).

Array libraries. Functions used by the models (projection, rays, crops, frame changes) are written in torch
and marked *torch*: they take torch tensors or numpy arrays and answer in kind (numpy if no argument is a
tensor; numpy arrays are then computed in float64). Mixed float dtypes are promoted. Helpers used only by
data preparation (``intrinsics_from_fov``, ``look_at``, ``box_corners_and_centre``, ...) are numpy only.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

Array = np.ndarray | torch.Tensor

# Points closer to the camera plane than this are "behind" it: their projection is not meaningful.
MIN_DEPTH = 1e-6


# ---------------------------------------------------------------------------------------------- interop
def _torch_function(fn: Callable) -> Callable:
    """Let a torch implementation serve numpy callers too (numpy in -> numpy out).

    Numpy arrays become tensors on the device of the first tensor argument, with the float dtype of the first
    floating tensor argument (float64 if there is none); results are converted back to numpy when no argument
    was a tensor.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        values = (*args, *kwargs.values())
        tensors = [a for a in values if isinstance(a, torch.Tensor)]
        device = tensors[0].device if tensors else torch.device("cpu")
        float_dtype = next((t.dtype for t in tensors if t.is_floating_point()), torch.float64)

        def to_torch(a: Any) -> Any:
            if isinstance(a, np.ndarray):
                if not a.flags.writeable:  # torch refuses to share read-only memory (e.g. broadcast views)
                    a = a.copy()
                dtype = float_dtype if a.dtype.kind == "f" or not tensors else None
                return torch.as_tensor(a, dtype=dtype, device=device)
            return a

        out = fn(*map(to_torch, args), **{k: to_torch(v) for k, v in kwargs.items()})
        if tensors:
            return out
        if isinstance(out, tuple):
            return tuple(o.cpu().numpy() for o in out)
        return out.cpu().numpy()

    return wrapper


def _promote(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Cast tensors to their common floating dtype (at least float32)."""
    dtype = functools.reduce(torch.promote_types, [t.dtype for t in tensors], torch.float32)
    return [t.to(dtype) for t in tensors]


# ------------------------------------------------------------------------------------- numpy helpers
def fov_from_focal_length(focal_mm: float | np.ndarray, sensor_width_mm: float = 32.0) -> np.ndarray:
    """Horizontal field of view in radians of a pinhole with ``focal_mm`` on a ``sensor_width_mm`` sensor.
    *numpy*."""
    return 2.0 * np.arctan(0.5 * sensor_width_mm / np.asarray(focal_mm, dtype=np.float64))


def intrinsics_from_fov(fov_x: float | np.ndarray, aspect: float = 1.0) -> np.ndarray:
    """Normalised intrinsics of a centred pinhole with square pixels. *numpy*.

    Args:
        fov_x: horizontal field of view in radians, scalar or ``[...]``.
        aspect: image width / height; ``fy = fx · aspect`` keeps pixels square in the normalised frame.
    Returns:
        ``K [..., 3, 3]`` float64 with ``fx = 0.5 / tan(fov_x / 2)``, ``cx = cy = 0.5``.
    """
    fov = np.asarray(fov_x, dtype=np.float64)
    fx = 0.5 / np.tan(0.5 * fov)
    K = np.zeros(fov.shape + (3, 3))
    K[..., 0, 0] = fx
    K[..., 1, 1] = fx * aspect
    K[..., 0, 2] = 0.5
    K[..., 1, 2] = 0.5
    K[..., 2, 2] = 1.0
    return K


def fov_from_intrinsics(K: np.ndarray) -> np.ndarray:
    """Horizontal field of view in radians ``[...]`` of normalised intrinsics ``K [..., 3, 3]``. *numpy*."""
    return 2.0 * np.arctan(0.5 / np.asarray(K, dtype=np.float64)[..., 0, 0])


def look_at(
    eye: Sequence[float] | np.ndarray,
    target: Sequence[float] | np.ndarray,
    up: Sequence[float] = (0.0, 0.0, 1.0),
) -> np.ndarray:
    """OpenCV world->camera extrinsics of cameras at ``eye`` looking at ``target``. *numpy*.

    Args:
        eye, target: ``[..., 3]`` world points (broadcast against each other).
        up: world up; image rows run against it (camera y = down). Where the view is (anti)parallel to
            ``up`` the world x axis (or y) stands in so the result stays finite.
    Returns:
        ``w2c [..., 4, 4]`` float64; ``target`` projects to the principal point at depth ``|target - eye|``.
    """
    eye = np.asarray(eye, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    eye, target = np.broadcast_arrays(eye, target)
    forward = target - eye
    forward = forward / np.linalg.norm(forward, axis=-1, keepdims=True)
    up_vec = np.broadcast_to(np.asarray(up, dtype=np.float64), forward.shape)
    parallel = np.abs(np.sum(forward * up_vec, axis=-1, keepdims=True)) > 0.999
    fallback = np.where(np.abs(forward[..., :1]) < 0.9, [1.0, 0.0, 0.0], [0.0, 1.0, 0.0])
    up_vec = np.where(parallel, fallback, up_vec)
    right = np.cross(forward, up_vec)
    right = right / np.linalg.norm(right, axis=-1, keepdims=True)
    down = np.cross(forward, right)
    R = np.stack([right, down, forward], axis=-2)
    w2c = np.zeros(forward.shape[:-1] + (4, 4))
    w2c[..., :3, :3] = R
    w2c[..., :3, 3] = -np.einsum("...ij,...j->...i", R, eye)
    w2c[..., 3, 3] = 1.0
    return w2c


def box_corners_and_centre(
    lo: Sequence[float] | np.ndarray = (-0.5, -0.5, -0.5), hi: Sequence[float] | np.ndarray = (0.5, 0.5, 0.5)
) -> np.ndarray:
    """The 9 test points of the 40 % view rule: the 8 corners of the box ``[lo, hi]`` and its centre.
    *numpy*. Defaults to the chunk cube ``[-0.5, 0.5]^3``. Returns ``[9, 3]`` float64."""
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    bits = np.array([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)], dtype=np.float64)
    corners = lo + bits * (hi - lo)
    return np.concatenate([corners, 0.5 * (lo + hi)[None]], axis=0)


def pixel_centers_uv(width: int, height: int) -> np.ndarray:
    """Normalised coordinates of the pixel centres, ``[H, W, 2]`` float64 with ``(u, v)`` last. *numpy*."""
    u = (np.arange(width, dtype=np.float64) + 0.5) / width
    v = (np.arange(height, dtype=np.float64) + 0.5) / height
    uu, vv = np.meshgrid(u, v, indexing="xy")
    return np.stack([uu, vv], axis=-1)


# ------------------------------------------------------------------------------------- torch functions
@_torch_function
def invert_rigid(T: Array) -> Array:
    """Inverse ``(R^T, -R^T t)`` of rigid ``T [..., 4, 4]``, exact where ``inv`` would round. *torch*."""
    R, t = T[..., :3, :3], T[..., :3, 3]
    Rt = R.transpose(-1, -2)
    out = torch.zeros_like(T)
    out[..., :3, :3] = Rt
    out[..., :3, 3] = -(Rt @ t.unsqueeze(-1)).squeeze(-1)
    out[..., 3, 3] = 1.0
    return out


@_torch_function
def camera_centers(w2c: Array) -> Array:
    """World positions of the camera centres, ``[..., 3]``, from rigid ``w2c [..., 4, 4]``. *torch*."""
    R, t = w2c[..., :3, :3], w2c[..., :3, 3]
    return -(R.transpose(-1, -2) @ t.unsqueeze(-1)).squeeze(-1)


@_torch_function
def world_to_camera(points: Array, w2c: Array) -> Array:
    """Camera-frame coordinates ``[..., M, 3]`` of world ``points [..., M, 3]`` under ``w2c [..., 4, 4]``.
    *torch*."""
    points, w2c = _promote(points, w2c)
    return points @ w2c[..., :3, :3].transpose(-1, -2) + w2c[..., None, :3, 3]


@_torch_function
def project_points(points: Array, w2c: Array, K: Array) -> tuple[Array, Array]:
    """Project world points into normalised image coordinates. *torch*.

    Args:
        points: ``[..., M, 3]`` world points.
        w2c: ``[..., 4, 4]`` OpenCV world->camera (broadcast against ``points``' batch dims).
        K: ``[..., 3, 3]`` normalised intrinsics.
    Returns:
        ``uv [..., M, 2]`` (pixel column ``c`` centred at ``u = (c + 0.5)/W``) and ``depth [..., M]`` =
        camera z. Points with ``depth <= MIN_DEPTH`` are behind the camera: their ``uv`` is finite but
        meaningless, so callers mask by depth.
    """
    points, w2c, K = _promote(points, w2c, K)
    cam = world_to_camera(points, w2c)
    depth = cam[..., 2]
    z = torch.where(depth.abs() > MIN_DEPTH, depth, torch.full_like(depth, MIN_DEPTH))
    xy1 = torch.cat([cam[..., :2] / z.unsqueeze(-1), torch.ones_like(z).unsqueeze(-1)], dim=-1)
    uv = xy1 @ K[..., :2, :].transpose(-1, -2)
    return uv, depth


@_torch_function
def unproject_points(uv: Array, depth: Array, w2c: Array, K: Array) -> Array:
    """World points ``[..., M, 3]`` at normalised ``uv [..., M, 2]`` and camera z ``depth [..., M]``;
    the inverse of :func:`project_points`. *torch*."""
    uv, depth, w2c, K = _promote(uv, depth, w2c, K)
    uv1 = torch.cat([uv, torch.ones_like(uv[..., :1])], dim=-1)
    rays = uv1 @ torch.linalg.inv(K).transpose(-1, -2)  # camera-frame points at z = 1
    cam = rays * depth.unsqueeze(-1)
    R, t = w2c[..., :3, :3], w2c[..., None, :3, 3]
    return (cam - t) @ R


def real_view_intrinsics(K: torch.Tensor, view_mask: torch.Tensor) -> torch.Tensor:
    """``K [..., 3, 3]`` as float32 with the identity where ``view_mask [...]`` is False: padded views carry all-zero
    intrinsics, which unprojection would invert; their (masked) results stay finite. *torch*."""
    eye = torch.eye(3, dtype=torch.float32, device=K.device)
    return torch.where(view_mask[..., None, None], K.float(), eye)


@_torch_function
def pixel_rays(w2c: Array, K: Array, width: int, height: int) -> tuple[Array, Array]:
    """World rays through the pixel centres of ``width × height`` images. *torch*.

    Args:
        w2c: ``[..., 4, 4]`` OpenCV world->camera.
        K: ``[..., 3, 3]`` normalised intrinsics.
    Returns:
        ``origins [..., H, W, 3]`` (the camera centre) and unit ``dirs [..., H, W, 3]``; a point at
        distance ``t`` along a ray has camera depth ``t · (dir · forward)``, ``forward = w2c[..., 2, :3]``.
    """
    w2c, K = _promote(w2c, K)
    uv = torch.as_tensor(pixel_centers_uv(width, height), dtype=K.dtype, device=K.device).reshape(-1, 2)
    uv1 = torch.cat([uv, torch.ones_like(uv[:, :1])], dim=-1)  # [H·W, 3]
    # Row vectors: uv1 · K^-T = (K^-1 uv1)^T, then · R = (R^T d)^T rotates camera -> world.
    cam_dirs = uv1 @ torch.linalg.inv(K).transpose(-1, -2)  # [..., H·W, 3]
    dirs = cam_dirs @ w2c[..., :3, :3]
    dirs = (dirs / dirs.norm(dim=-1, keepdim=True)).reshape(dirs.shape[:-2] + (height, width, 3))
    origins = camera_centers(w2c)[..., None, None, :].expand(dirs.shape).contiguous()
    return origins, dirs


@_torch_function
def crop_intrinsics(
    K: Array,
    box_px: Sequence[float] | Array,
    image_size: tuple[int, int],
) -> Array:
    """Intrinsics of a crop of the image, normalised to the crop. *torch*.

    Args:
        K: ``[..., 3, 3]`` normalised intrinsics of the full ``image_size = (W, H)`` image.
        box_px: ``(x0, y0, x1, y1)`` in pixels (or ``[..., 4]``); the crop holds pixel columns
            ``x0 .. x1 - 1`` and rows ``y0 .. y1 - 1``; it may reach outside the image (padding).
    Returns:
        ``K' [..., 3, 3]`` such that a point at full-image pixel ``(X, Y)`` lies at crop pixel
        ``(X - x0, Y - y0)``. Being normalised, ``K'`` does not change when the crop is resized.
    """
    (K,) = _promote(K)
    box = torch.as_tensor(box_px, dtype=K.dtype, device=K.device)
    width, height = image_size
    x0, y0, x1, y1 = box.unbind(-1)
    crop_w, crop_h = x1 - x0, y1 - y0
    # u' = (u·W - x0) / crop_w, the same for v: a left-multiplied affine map of the image plane.
    A = torch.zeros(box.shape[:-1] + (3, 3), dtype=K.dtype, device=K.device)
    A[..., 0, 0] = width / crop_w
    A[..., 0, 2] = -x0 / crop_w
    A[..., 1, 1] = height / crop_h
    A[..., 1, 2] = -y0 / crop_h
    A[..., 2, 2] = 1.0
    return A @ K


@_torch_function
def similarity_scale(transform: Array) -> Array:
    """Uniform scale ``[...]`` of similarity transforms ``[..., 4, 4]`` (cube root of the linear part's
    determinant). *torch*."""
    return torch.linalg.det(transform[..., :3, :3]).abs().pow(1.0 / 3.0)


@_torch_function
def w2c_in_chunk_frame(w2c_world: Array, chunk_from_world: Array) -> Array:
    """Express world extrinsics in a chunk frame, keeping them rigid. *torch*.

    ``chunk_from_world`` is a similarity (rotation, uniform scale ``1/edge``, translation). The result is
    ``S(1/edge) · w2c_world · world_from_chunk``: a rigid ``[..., 4, 4]`` w2c whose camera frame is measured
    in chunk units, so a world point and its chunk-frame image project to the same pixel and depths scale by
    ``1/edge``.
    """
    w2c_world, chunk_from_world = _promote(w2c_world, chunk_from_world)
    scale = similarity_scale(chunk_from_world)
    S = torch.diag_embed(torch.stack([scale, scale, scale, torch.ones_like(scale)], dim=-1))
    return S @ w2c_world @ torch.linalg.inv(chunk_from_world)


@_torch_function
def projected_box_coverage(w2c: Array, K: Array, box_points: Array) -> Array:
    """Fraction of the image covered by the 2-D bounding box of projected points (the 40 % rule). *torch*.

    Args:
        w2c: ``[..., 4, 4]``; K: ``[..., 3, 3]`` (use the crop's K to score a crop).
        box_points: ``[..., P, 3]`` test points, usually :func:`box_corners_and_centre` (8 corners + centre).
    Returns:
        ``[...]`` in [0, 1]: area of the bounding box of the points in front of the camera, clipped to the
        image, over the image area. Points behind the camera are left out (as the reference does); with
        none in front the coverage is 0.
    """
    uv, depth = project_points(box_points, w2c, K)
    front = depth > MIN_DEPTH
    uv = uv.clamp(0.0, 1.0)
    inf = torch.full_like(uv[..., 0], float("inf"))
    lo_u = torch.where(front, uv[..., 0], inf).amin(-1)
    hi_u = torch.where(front, uv[..., 0], -inf).amax(-1)
    lo_v = torch.where(front, uv[..., 1], inf).amin(-1)
    hi_v = torch.where(front, uv[..., 1], -inf).amax(-1)
    area = (hi_u - lo_u).clamp(min=0.0) * (hi_v - lo_v).clamp(min=0.0)
    return torch.where(front.any(-1), area, torch.zeros_like(area))


def voxel_view_share(occupancy: np.ndarray, w2c: np.ndarray, K: np.ndarray, size: int = 32) -> np.ndarray:
    """Share of each view's pixels onto which some occupied voxel centre projects. numpy.

    Args:
        occupancy: ``[R, R, R]`` bool grid over the unit cube ``[-0.5, 0.5)³`` (chunk frame, ij order).
        w2c: ``[N, 4, 4]``; K: ``[N, 3, 3]`` in the same frame.
        size: the views are scored on a ``size × size`` pixel grid; pick it so a voxel spans about a pixel
            (32 for 64³ grids at room distances), since only voxel centres are drawn.
    Returns:
        ``[N]`` float64 in [0, 1]. Occlusion by geometry outside the grid is ignored, so this is an upper
        bound on how much of the chunk a view shows. Published view selection uses the projected box only
        (:func:`projected_box_coverage`); a camera inside or beside the chunk can pass that rule while
        seeing almost none of it.
    """
    occupancy = np.asarray(occupancy, dtype=bool)
    r = occupancy.shape[0]
    idx = np.argwhere(occupancy)
    shares = np.zeros(len(w2c))
    if len(idx) == 0:
        return shares
    centres = (idx + 0.5) / r - 0.5
    uv, depth = project_points(centres[None], np.asarray(w2c, np.float64), np.asarray(K, np.float64))  # [N, M]
    for n in range(len(w2c)):
        inside = (depth[n] > MIN_DEPTH) & (uv[n] >= 0).all(1) & (uv[n] < 1).all(1)
        pix = np.floor(uv[n][inside] * size).astype(np.int64)
        shares[n] = len(np.unique(pix[:, 1] * size + pix[:, 0])) / (size * size)
    return shares
