"""Plane-sweep stereo: per-pixel depth of posed views from their photo-consistency, no learning.

Each reference view's pixels are swept over candidate camera depths; at each depth the pixel's 3-D point is
projected into every other view, the view is sampled there (bilinear), and a window of the reference image is
compared with the same window of the warped one by normalised cross-correlation (NCC). The score at a depth is the
mean NCC over the views the point falls into; a pixel's depth is the best-scoring candidate. Windows without
texture (variance below ``min_std²``) cannot be matched and get score -1. The point cloud of the confident pixels
(:func:`stereo_points`) is one source of the depth cue's point depths (``genrecon.models.point_depth``) that needs
nothing but the views themselves.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from genrecon.geometry.cameras import (
    MIN_DEPTH,
    camera_centers,
    pixel_centers_uv,
    project_points,
    real_view_intrinsics,
    unproject_points,
)

_EPS = 1e-6


def _window_mean(x: Tensor, window: int) -> Tensor:
    """Mean over ``window × window`` neighbourhoods of ``x [B, C, H, W]`` (borders: the pixels inside)."""
    return F.avg_pool2d(x, window, stride=1, padding=window // 2, count_include_pad=False)


def _targets(centres: Tensor, view_mask: Tensor, r: int, max_targets: int | None) -> tuple[Tensor, Tensor]:
    """The views reference ``r`` is matched with: indices ``[B, T]`` (nearest camera centres first; every other
    view when ``max_targets`` is None) and whether each is a real view other than ``r`` ``[B, T]``."""
    b, n = view_mask.shape
    others = view_mask.clone()
    others[:, r] = False
    if max_targets is None or max_targets >= n - 1:
        index = torch.arange(n, device=view_mask.device).expand(b, n)
        keep = torch.arange(n, device=view_mask.device) != r
        return index[:, keep], others[:, keep]
    dist = (centres - centres[:, r : r + 1]).norm(dim=-1)
    dist = torch.where(others, dist, torch.full_like(dist, float("inf")))
    index = dist.topk(max_targets, dim=1, largest=False).indices  # [B, T]
    return index, others.gather(1, index)


def plane_depths(w2c: Tensor, K: Tensor, normal: Tensor, offsets: Tensor, height: int, width: int) -> Tensor:
    """Camera depth ``[B, D, H·W]`` at which each pixel centre's ray meets the world plane ``normal · X = c`` for
    every offset ``c`` of ``offsets [D]``; 0 where the ray runs parallel to the plane or meets it behind the camera.
    w2c ``[B, 4, 4]`` (OpenCV), K ``[B, 3, 3]`` normalised, normal ``[3]`` a unit vector of the world frame."""
    uv = torch.as_tensor(pixel_centers_uv(width, height), dtype=torch.float32, device=w2c.device).reshape(-1, 2)
    uv1 = torch.cat([uv, torch.ones_like(uv[:, :1])], dim=-1)
    rays = uv1 @ torch.linalg.inv(K.float()).transpose(-1, -2)  # [B, H·W, 3] camera frame, z = 1
    rays_world = rays @ w2c[:, :3, :3].float()  # R^T applied: the world step per unit of camera depth
    n = normal.float().to(w2c.device)
    along = rays_world @ n  # [B, H·W]
    start = camera_centers(w2c.float()) @ n  # [B]
    safe = torch.where(along.abs() > _EPS, along, torch.full_like(along, _EPS))
    z = (offsets.float().to(w2c.device)[None, :, None] - start[:, None, None]) / safe[:, None, :]
    ok = (along.abs() > _EPS)[:, None, :] & (z > MIN_DEPTH)
    return torch.where(ok, z, torch.zeros_like(z))


def sweep_stereo(images: Tensor, w2c: Tensor, K: Tensor, view_mask: Tensor, depths: Tensor, window: int = 5,
                 min_std: float = 0.02, max_targets: int | None = None, refine: bool = False,
                 normal: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Depth ``[B, N, H, W]`` (camera z, the units of ``w2c``) and its score ``[B, N, H, W]`` (mean NCC in
    [-1, 1]; -1 where no other view sees the point or the window has no texture) of every pixel of every view.

    images ``[B, N, 3, H, W]`` in [0, 1], w2c ``[B, N, 4, 4]`` (OpenCV), K ``[B, N, 3, 3]`` normalised
    intrinsics, view_mask ``[B, N]`` (padded views are neither references nor targets), depths ``[D]`` the
    candidates, ascending: camera depths of planes parallel to the image (fronto-parallel), or with ``normal`` (a
    unit vector of the world frame) the offsets ``c`` of the world planes ``normal · X = c``, e.g. horizontal ones,
    whose warp is exact for a window on a floor seen at a grazing angle, where a fronto-parallel window is sheared;
    max_targets: match each reference with only its nearest other views (camera centres; None: all); refine: move
    each depth towards a neighbouring candidate, to the vertex of the parabola through the three scores
    (sub-candidate precision).
    Memory: ``B · 3 · D · H · W`` floats a few times over, per (reference, target) pair.
    """
    if window % 2 == 0:
        raise ValueError(f"window must be odd, got {window}")
    b, n, _, h, w = images.shape
    imgs = images.float()
    cand = depths.float().to(imgs.device)
    d = len(cand)
    K = real_view_intrinsics(K, view_mask)
    w2c = w2c.float()
    uv = torch.as_tensor(pixel_centers_uv(w, h), dtype=torch.float32, device=imgs.device).reshape(-1, 2)
    uv = uv.repeat(d, 1)  # [D·H·W, 2]: every pixel at candidate 0, then at candidate 1, ...
    centres = camera_centers(w2c)  # [B, N, 3]
    best_depth = imgs.new_zeros(b, n, h, w)
    best_score = imgs.new_full((b, n, h, w), -1.0)
    for r in range(n):
        ref = imgs[:, r]  # [B, 3, H, W]
        mu_x = _window_mean(ref, window)
        var_x = (_window_mean(ref * ref, window) - mu_x * mu_x).clamp(min=0)
        textured = var_x.mean(1) >= min_std**2  # [B, H, W]
        if normal is None:
            z = cand[None, :, None].expand(b, d, h * w)
        else:
            z = plane_depths(w2c[:, r], K[:, r], normal, cand, h, w)  # [B, D, H·W]; 0: the plane is not ahead
        hit = (z > 0).reshape(b, -1)
        z = z.reshape(b, -1)
        points = unproject_points(uv.expand(b, -1, -1), z, w2c[:, r], K[:, r])  # [B, D·H·W, 3]
        total = imgs.new_zeros(b, d, h, w)
        count = imgs.new_zeros(b, d, h, w)
        targets, usable = _targets(centres, view_mask, r, max_targets)  # [B, T] each
        rows = torch.arange(b, device=imgs.device)
        for j in range(targets.shape[1]):
            m = targets[:, j]
            uv_m, z_m = project_points(points, w2c[rows, m], K[rows, m])
            inside = (z_m > MIN_DEPTH) & (uv_m >= 0).all(-1) & (uv_m < 1).all(-1)
            inside = inside & hit & usable[:, j, None] & view_mask[:, r, None]  # [B, D·H·W]
            grid = (2 * uv_m - 1).clamp(-2, 2).view(b, d * h, w, 2)
            warped = F.grid_sample(imgs[rows, m], grid, mode="bilinear", padding_mode="border", align_corners=False)
            y = warped.view(b, 3, d, h, w).transpose(1, 2)  # [B, D, 3, H, W]; the reference broadcasts over D
            mu_y = _window_mean(y.reshape(b * d, 3, h, w), window).view(b, d, 3, h, w)
            xy = _window_mean((ref[:, None] * y).reshape(b * d, 3, h, w), window).view(b, d, 3, h, w)
            yy = _window_mean((y * y).reshape(b * d, 3, h, w), window).view(b, d, 3, h, w)
            cov = xy - mu_x[:, None] * mu_y
            var_y = (yy - mu_y * mu_y).clamp(min=0)
            ncc = (cov / (var_x[:, None] * var_y + _EPS).sqrt()).mean(2)  # [B, D, H, W]
            seen = inside.view(b, d, h, w).float()
            total = total + ncc * seen
            count = count + seen
        score = torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, -1.0))
        best, idx = score.max(dim=1)  # [B, H, W]
        zc = z.view(b, d, h, w)
        depth = zc.gather(1, idx[:, None]).squeeze(1)
        if refine and d >= 3:
            depth = _refine(score, idx, zc, depth)
        best_depth[:, r] = depth
        best_score[:, r] = torch.where(textured, best, torch.full_like(best, -1.0))
    return best_depth, best_score


def _refine(score: Tensor, idx: Tensor, cand: Tensor, depth: Tensor) -> Tensor:
    """Sub-candidate depth ``[B, H, W]``: the vertex of the parabola through the scores ``[B, D, H, W]`` at the best
    candidate ``idx [B, H, W]`` and its two neighbours, interpolated between each pixel's candidate depths ``cand
    [B, D, H, W]``; the best candidate's ``depth`` where it lies at either end or the scores do not curve down."""
    d = score.shape[1]
    mid = idx.clamp(1, d - 2)
    s0, s1, s2 = (score.gather(1, (mid + k)[:, None]).squeeze(1) for k in (-1, 0, 1))
    curv = s0 - 2 * s1 + s2
    offset = torch.where(curv < -_EPS, 0.5 * (s0 - s2) / curv.clamp(max=-_EPS), torch.zeros_like(curv))
    pos = mid.float() + offset.clamp(-0.5, 0.5)  # fractional candidate index
    lo = pos.floor().long().clamp(0, d - 2)
    frac = pos - lo.float()
    z0, z1 = cand.gather(1, lo[:, None]).squeeze(1), cand.gather(1, (lo + 1)[:, None]).squeeze(1)
    refined = z0 * (1 - frac) + z1 * frac
    both = (z0 > 0) & (z1 > 0)  # a plane sweep's neighbour may lie behind the camera
    return torch.where((idx > 0) & (idx < d - 1) & both, refined, depth)


def consistent_views(depth: Tensor, score: Tensor, w2c: Tensor, K: Tensor, view_mask: Tensor, min_score: float,
                     rel_tolerance: float = 0.02) -> Tensor:
    """How many other views confirm each pixel's depth ``[B, N, H, W]``: its point, projected into the other view,
    lands on a confident pixel (score ≥ ``min_score``) whose own depth agrees with the point's depth there within
    ``rel_tolerance`` of it (the geometric consistency check of multi-view stereo fusion: a wrong match on one
    pair rarely agrees with the match found from the other side). depth, score ``[B, N, H, W]``
    (:func:`sweep_stereo`)."""
    b, n, h, w = depth.shape
    uv = torch.as_tensor(pixel_centers_uv(w, h), dtype=torch.float32, device=depth.device).reshape(-1, 2)
    K = real_view_intrinsics(K, view_mask)
    w2c = w2c.float()
    count = torch.zeros(b, n, h * w, device=depth.device)
    confident = (score >= min_score) & view_mask[..., None, None]
    for r in range(n):
        points = unproject_points(uv.expand(b, -1, -1), depth[:, r].reshape(b, -1), w2c[:, r], K[:, r])
        for m in range(n):
            if m == r:
                continue
            uv_m, z_m = project_points(points, w2c[:, m], K[:, m])
            col = (uv_m[..., 0] * w).floor().long()
            row = (uv_m[..., 1] * h).floor().long()
            inside = (z_m > MIN_DEPTH) & (col >= 0) & (col < w) & (row >= 0) & (row < h)
            flat = (row.clamp(0, h - 1) * w + col.clamp(0, w - 1))  # [B, H·W]
            their = depth[:, m].reshape(b, -1).gather(1, flat)
            sure = confident[:, m].reshape(b, -1).gather(1, flat)
            agree = inside & sure & ((their - z_m).abs() <= rel_tolerance * z_m)
            count[:, r] += agree.float()
    return count.view(b, n, h, w) * view_mask[..., None, None]


def stereo_points(depth: Tensor, score: Tensor, w2c: Tensor, K: Tensor, view_mask: Tensor,
                  min_score: float = 0.8, min_consistent: int = 0,
                  rel_tolerance: float = 0.02) -> tuple[Tensor, Tensor]:
    """The 3-D points ``[M, 3]`` of the pixels whose stereo score reaches ``min_score`` (and, with
    ``min_consistent`` > 0, whose depth that many other views confirm: :func:`consistent_views`), with their sample
    ``[M]``. depth, score ``[B, N, H, W]`` (:func:`sweep_stereo`), w2c ``[B, N, 4, 4]``, K ``[B, N, 3, 3]``."""
    if min_consistent > 0:
        agree = consistent_views(depth, score, w2c, K, view_mask, min_score, rel_tolerance)
        score = torch.where(agree >= min_consistent, score, torch.full_like(score, -1.0))
    b, n, h, w = depth.shape
    uv = torch.as_tensor(pixel_centers_uv(w, h), dtype=torch.float32, device=depth.device).reshape(-1, 2)
    K = real_view_intrinsics(K, view_mask)
    points = unproject_points(uv.expand(b, n, -1, -1), depth.reshape(b, n, -1), w2c.float(), K)  # [B, N, H·W, 3]
    keep = (score.reshape(b, n, -1) >= min_score) & view_mask[..., None]
    sample = torch.arange(b, device=depth.device)[:, None, None].expand(b, n, h * w)
    return points[keep], sample[keep]
