"""What a posed camera says about depth before any pixel is read: its rays against the floor plane.

Depth is the lever of the SS flow (session 22: the true first-surface depths in the depth cue doubled its IoU),
and a view encoder trained from scratch predicts it coarsely (depth abs. rel. ~0.2) partly because it never sees
the pose: how high the camera is and where it looks decide the depth of every floor pixel exactly, and through
the floor contacts of walls and furniture much of the rest. Both frames the encoder meets have the floor as a
known plane: the rooms' world frame (z = 0, metres) and every chunk frame (z = -0.5: training chunks and
``infer.py``'s tiling rest on the floor).

:func:`floor_ray_maps` turns ``(w2c, K)`` into two maps per view, appended to the image as extra input channels
of an encoder built with ``geometry_channels=2`` (a deviation from GenRecon, on in the tiny and small presets):

* the inverse camera depth at which the pixel's ray meets the floor, in ``1 / unit`` (0 where it never does:
  rays at or above the horizon, a camera below the floor), clamped to ``max_inverse``;
* the world-z component of the pixel's unit ray (the sine of its elevation), which the floor map lacks above
  the horizon.
"""

from __future__ import annotations

import torch
from torch import Tensor

from genrecon.geometry.cameras import real_view_intrinsics

FLOOR_RAY_CHANNELS = 2
# The floor in a chunk frame: infer.py's tiled chunks rest on it; training chunks sit 2 cm lower (prepare's
# chunks.floor_offset_m), 0.007 chunk units, about 1 % of a camera's height in the inverse-depth map.
CHUNK_FLOOR_Z = -0.5


def floor_ray_maps(w2c: Tensor, K: Tensor, size: int, floor_z: float, unit: float = 1.0,
                   max_inverse: float = 8.0) -> Tensor:
    """w2c ``[..., 4, 4]`` (OpenCV, world to camera), K ``[..., 3, 3]`` normalised (``u = fx·x/z + cx`` in [0, 1))
    → maps ``[..., 2, S, S]`` at pixel centres ``u = (c + 0.5) / S``: inverse floor depth (``unit / z``) and the
    ray's world-z sine. ``floor_z``: the floor plane's height in the w2c frame; ``unit``: depth units (e.g. the
    pretraining's ``depth_unit_m`` in metres, 1 in a chunk frame)."""
    if size < 1 or unit <= 0:
        raise ValueError(f"need size ≥ 1 and unit > 0, got {size}, {unit}")
    w2c, K = w2c.float(), K.float()
    centres = (torch.arange(size, device=w2c.device, dtype=torch.float32) + 0.5) / size
    fx, fy = K[..., 0, 0, None, None], K[..., 1, 1, None, None]
    cx, cy = K[..., 0, 2, None, None], K[..., 1, 2, None, None]
    x = (centres[None, :] - cx) / fx  # [..., 1, S]: camera-frame ray x / z per column
    y = (centres[:, None] - cy) / fy  # [..., S, 1]
    rot = w2c[..., :3, :3]
    # world ray of camera ray (x, y, 1) is R^T (x, y, 1): its z component is R[0, 2] x + R[1, 2] y + R[2, 2]
    ray_z = rot[..., 0, 2, None, None] * x + rot[..., 1, 2, None, None] * y + rot[..., 2, 2, None, None]
    centre_z = -(rot[..., :, 2] * w2c[..., :3, 3]).sum(-1)  # camera centre -R^T t, its z
    height = (centre_z - floor_z)[..., None, None]
    # the ray (z = 1 in the camera) reaches the floor after z = height / -ray_z: inverse depth -ray_z / height
    inverse = torch.where(height > 0, -ray_z / height.clamp(min=1e-6), torch.zeros_like(ray_z))
    inverse = (inverse.clamp(min=0.0) * unit).clamp(max=max_inverse)
    sine = ray_z / torch.sqrt(x * x + y * y + 1.0)
    return torch.stack([inverse, sine], dim=-3)


def append_floor_rays(images: Tensor, w2c: Tensor, K: Tensor, floor_z: float, unit: float = 1.0) -> Tensor:
    """images ``[..., 3, S, S]`` → ``[..., 3 + 2, S, S]`` with :func:`floor_ray_maps` of their cameras."""
    maps = floor_ray_maps(w2c, K, images.shape[-1], floor_z, unit).to(images.dtype)
    return torch.cat([images, maps], dim=-3)


def append_chunk_floor_rays(views: Tensor, w2c: Tensor, K: Tensor, view_mask: Tensor) -> Tensor:
    """A batch's padded views ``[B, N, 3, S, S]`` with chunk-frame cameras (``w2c [B, N, 4, 4]``, ``K [B, N, 3, 3]``,
    ``view_mask [B, N]``) → ``[B, N, 5, S, S]`` with their floor-ray maps (the chunk's floor is z = -0.5)."""
    # padded views' all-zero intrinsics would put NaNs in their (never encoded) maps
    return append_floor_rays(views, w2c, real_view_intrinsics(K, view_mask), CHUNK_FLOOR_Z)
