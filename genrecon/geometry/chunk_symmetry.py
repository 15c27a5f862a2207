"""The eight symmetries of a z-up chunk (turns about z by 90°, then an optional mirror of x), applied to what a
flow is trained on: dense grids in the chunk frame, the posed views and their cameras.

A chunk turned or mirrored is another valid chunk with the same views: a turn only changes the cameras'
extrinsics, and a mirror also mirrors every image (so each camera stays right-handed). The element is
``(turns, mirror)``, acting on chunk-frame points as ``p' = A p`` with ``A = X^mirror · Rz^turns``,
``Rz: (x, y) ↦ (-y, x)`` and ``X: x ↦ -x`` — the order and direction of
:func:`genrecon.data.augment.augment_voxels`, so dense and sparse grids turn alike.

Shapes: grids ``[..., X, Y, Z]`` (voxel ``(i, j, k)`` centred at ``((i, j, k) + 0.5) / R - 0.5``); views
``[N, 3, S, S]``; ``w2c [N, 4, 4]`` (OpenCV world→camera) and normalised intrinsics ``K [N, 3, 3]``
(``docs/architecture.md``, "Frames and conventions").
"""

from __future__ import annotations

import torch
from torch import Tensor


def symmetry_matrix(turns: int, mirror: bool, dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> Tensor:
    """``A [3, 3]`` with ``p' = A p`` for chunk-frame points (see the module docstring)."""
    c, s = ((1, 0), (0, 1), (-1, 0), (0, -1))[turns % 4]  # cos, sin of turns · 90°
    a = torch.tensor([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=dtype, device=device)
    if mirror:
        a[0] = -a[0]
    return a


def transform_grid(grid: Tensor, turns: int, mirror: bool) -> Tensor:
    """A dense grid ``[..., X, Y, Z]`` of the transformed chunk: the value at voxel ``v`` moves to the voxel
    whose centre is ``A · centre(v)``."""
    out = torch.rot90(grid, turns % 4, dims=(-3, -2))
    return out.flip(-3) if mirror else out


def transform_cameras(w2c: Tensor, K: Tensor, turns: int, mirror: bool) -> tuple[Tensor, Tensor]:
    """Cameras ``(w2c [..., 4, 4], K [..., 3, 3])`` of the transformed chunk: a point ``A p`` projects where
    ``p`` did, with ``u ↦ 1 - u`` when mirrored (the image mirrored too, :func:`transform_views`). Zero
    (padded) extrinsics stay zero, hence invalid."""
    a = symmetry_matrix(turns, mirror, w2c.dtype, w2c.device)
    inv = torch.eye(4, dtype=w2c.dtype, device=w2c.device)
    inv[:3, :3] = a.T  # A is orthogonal
    w2c = w2c @ inv
    if not mirror:
        return w2c, K
    # Camera x negated (keeps the camera right-handed after the mirror); u = fx·x/z + s·y/z + cx then becomes
    # 1 - u with fx kept, the skew negated and cx ↦ 1 - cx. Padded views (K = 0) keep K = 0.
    w2c = w2c.clone()
    w2c[..., 0, :] = -w2c[..., 0, :]
    real = K.abs().flatten(-2).amax(-1) > 0
    flipped = K.clone()
    flipped[..., 0, 1] = -K[..., 0, 1]
    flipped[..., 0, 2] = 1 - K[..., 0, 2]
    return w2c, torch.where(real[..., None, None], flipped, K)


def transform_views(views: Tensor, mirror: bool) -> Tensor:
    """Images ``[..., H, W]`` as the transformed chunk's cameras see them: mirrored left to right if
    ``mirror`` (a turn moves no pixel)."""
    return views.flip(-1) if mirror else views
