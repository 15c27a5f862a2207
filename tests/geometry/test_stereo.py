"""Plane-sweep stereo (``genrecon.geometry.stereo``): depth from the photo-consistency of posed views."""

from __future__ import annotations

import torch

from genrecon.geometry.cameras import pixel_rays
from genrecon.geometry.stereo import plane_depths, stereo_points, sweep_stereo
from tests.models.test_photo_consistency import _cameras
from tests.models.test_plane_sweep import _eyes

SIZE, RADIUS, WALL_Y = 48, 0.5, 1.2
DEPTHS = torch.linspace(0.6, 4.6, 49)  # candidates 1/12 apart
STEP = float(DEPTHS[1] - DEPTHS[0])


def _texture(points: torch.Tensor) -> torch.Tensor:
    """A smooth random colour field of the 3-D position ``[..., 3]`` → ``[..., 3]`` in [0, 1]."""
    gen = torch.Generator().manual_seed(0)
    freq = torch.randn(3, 3, 3, generator=gen) * 6.0  # three octaves-ish per channel
    phase = torch.rand(3, 3, generator=gen) * 6.28
    waves = torch.sin(torch.einsum("...k,ock->...oc", points, freq) + phase)  # [..., 3 channels, 3 waves]
    return 0.5 + waves.mean(-1) / 2


def _render(uniform: bool = False):
    """Four views of a textured sphere at the origin before a textured wall (y = WALL_Y): images
    ``[1, 4, 3, S, S]``, cameras, and each pixel's true camera depth ``[1, 4, S, S]``."""
    w2c, K, mask = _cameras(1, _eyes())
    origins, dirs = pixel_rays(w2c, K, SIZE, SIZE)  # [1, 4, S, S, 3]
    # sphere: |o + t·d|² = r²; wall: (o + t·d)_y = WALL_Y
    b = (origins * dirs).sum(-1)
    c = (origins * origins).sum(-1) - RADIUS**2
    disc = b * b - c
    t_sphere = torch.where(disc > 0, -b - disc.clamp(min=0).sqrt(), torch.full_like(b, float("inf")))
    t_wall = (WALL_Y - origins[..., 1]) / dirs[..., 1]
    t_wall = torch.where(t_wall > 0, t_wall, torch.full_like(t_wall, float("inf")))
    t = torch.minimum(t_sphere, t_wall)
    hit = origins + t[..., None] * dirs
    forward = w2c[..., 2, :3][:, :, None, None, :]
    depth = t * (dirs * forward).sum(-1)
    colour = torch.full_like(hit, 0.5) if uniform else _texture(hit)
    images = colour.permute(0, 1, 4, 2, 3).contiguous()
    return images, (w2c, K, mask), depth


def test_stereo_depth_matches_the_true_depth_where_it_is_confident() -> None:
    images, (w2c, K, mask), true = _render()
    assert torch.isfinite(true).all()  # every pixel sees the sphere or the wall
    depth, score = sweep_stereo(images, w2c, K, mask, DEPTHS, window=5)
    assert depth.shape == score.shape == (1, 4, SIZE, SIZE)
    confident = score >= 0.8
    assert confident.float().mean() > 0.3, confident.float().mean()
    error = (depth - true).abs()[confident]
    assert (error <= 1.5 * STEP).float().mean() > 0.85, (error <= 1.5 * STEP).float().mean()
    # the same pixels at chance would be right 3 / 49 of the time; the confident ones beat the rest
    assert (error <= 1.5 * STEP).float().mean() > ((depth - true).abs()[~confident] <= 1.5 * STEP).float().mean()


def test_untextured_views_give_no_confident_pixel_and_padded_views_are_ignored() -> None:
    images, (w2c, K, mask), _ = _render(uniform=True)
    _, score = sweep_stereo(images, w2c, K, mask, DEPTHS)
    assert (score == -1).all()
    # A padded fifth view (zero cameras, random image) changes nothing and gets no score.
    textured, cams, _ = _render()
    depth, score = sweep_stereo(textured, *cams, DEPTHS)
    pad_img = torch.cat([textured, torch.rand(1, 1, 3, SIZE, SIZE)], dim=1)
    pad_w2c = torch.cat([cams[0], torch.zeros(1, 1, 4, 4)], dim=1)
    pad_K = torch.cat([cams[1], torch.zeros(1, 1, 3, 3)], dim=1)
    pad_mask = torch.tensor([[True, True, True, True, False]])
    depth5, score5 = sweep_stereo(pad_img, pad_w2c, pad_K, pad_mask, DEPTHS)
    torch.testing.assert_close(score5[:, :4], score)
    torch.testing.assert_close(depth5[:, :4], depth)
    assert (score5[:, 4] == -1).all()


def test_stereo_points_lie_on_the_surfaces() -> None:
    images, (w2c, K, mask), _ = _render()
    depth, score = sweep_stereo(images, w2c, K, mask, DEPTHS)
    points, sample = stereo_points(depth, score, w2c, K, mask, min_score=0.8)
    assert len(points) == int((score >= 0.8).sum()) and (sample == 0).all()
    to_sphere = (points.norm(dim=-1) - RADIUS).abs()
    to_wall = (points[:, 1] - WALL_Y).abs()
    near = torch.minimum(to_sphere, to_wall) <= 1.5 * STEP
    assert near.float().mean() > 0.85, near.float().mean()


def test_nearest_targets_only_match_as_well_and_all_of_them_change_nothing() -> None:
    images, (w2c, K, mask), true = _render()
    depth, score = sweep_stereo(images, w2c, K, mask, DEPTHS)
    depth3, score3 = sweep_stereo(images, w2c, K, mask, DEPTHS, max_targets=3)  # 3 = every other view
    torch.testing.assert_close(score3, score)
    torch.testing.assert_close(depth3, depth)
    # A padded view is never among the nearest (its zero camera sits at the origin, nearer than any other).
    pad = (torch.cat([images, torch.rand(1, 1, 3, SIZE, SIZE)], dim=1), torch.cat([w2c, torch.zeros(1, 1, 4, 4)], 1),
           torch.cat([K, torch.zeros(1, 1, 3, 3)], 1), torch.tensor([[True, True, True, True, False]]))
    depth2, score2 = sweep_stereo(*pad, DEPTHS, max_targets=2)
    depth2_ref, score2_ref = sweep_stereo(images, w2c, K, mask, DEPTHS, max_targets=2)
    torch.testing.assert_close(score2[:, :4], score2_ref)
    confident = score2_ref >= 0.8
    assert confident.float().mean() > 0.3
    assert ((depth2_ref - true).abs()[confident] <= 1.5 * STEP).float().mean() > 0.85


def test_refined_depths_are_closer_than_the_candidates_and_stay_between_them() -> None:
    images, (w2c, K, mask), true = _render()
    coarse = DEPTHS[::2]  # candidates 1/6 apart: quantisation dominates the error
    depth, score = sweep_stereo(images, w2c, K, mask, coarse)
    fine, fine_score = sweep_stereo(images, w2c, K, mask, coarse, refine=True)
    torch.testing.assert_close(fine_score, score)  # the scores (and so the confident pixels) do not change
    confident = score >= 0.8
    step = float(coarse[1] - coarse[0])
    assert ((fine - depth).abs() <= 0.5 * step + 1e-5).all()  # at most half a candidate step moved
    err, err_fine = (depth - true).abs()[confident], (fine - true).abs()[confident]
    assert err_fine.median() < 0.8 * err.median(), (err.median(), err_fine.median())


def test_consistency_keeps_the_pixels_other_views_confirm() -> None:
    images, (w2c, K, mask), true = _render()
    depth, score = sweep_stereo(images, w2c, K, mask, DEPTHS, refine=True)
    from genrecon.geometry.stereo import consistent_views

    agree = consistent_views(depth, score, w2c, K, mask, min_score=0.5, rel_tolerance=0.03)
    assert agree.shape == depth.shape and agree.max() <= 3
    # Corrupt one view's depths: its pixels lose their confirmations, and the others lose those it gave.
    broken = depth.clone()
    broken[:, 0] = broken[:, 0] * 1.5
    agree_b = consistent_views(broken, score, w2c, K, mask, min_score=0.5, rel_tolerance=0.03)
    assert agree_b[:, 0].sum() < 0.1 * agree[:, 0].sum()
    assert agree_b[:, 1:].sum() < agree[:, 1:].sum()
    # Requiring a confirmation keeps fewer points, and a larger share of them lies on the surfaces.
    def on_surface(points):
        return torch.minimum((points.norm(dim=-1) - RADIUS).abs(), (points[:, 1] - WALL_Y).abs()) <= 0.5 * STEP

    loose, _ = stereo_points(depth, score, w2c, K, mask, min_score=0.5)
    strict, _ = stereo_points(depth, score, w2c, K, mask, min_score=0.5, min_consistent=1, rel_tolerance=0.03)
    assert 0 < len(strict) < len(loose)
    assert on_surface(strict).float().mean() > on_surface(loose).float().mean()


FLOOR_Z = -0.35


def _floor_views():
    """Four cameras just above a finely textured floor (z = FLOOR_Z), which their lower halves see at grazing
    angles, a textured wall (y = WALL_Y) behind: images ``[1, 4, 3, S, S]``, cameras, true camera depth and
    whether each pixel sees the floor ``[1, 4, S, S]``."""
    w2c, K, mask = _cameras(1, [[x, y, FLOOR_Z + 0.25] for x, y, _ in _eyes()])
    origins, dirs = pixel_rays(w2c, K, SIZE, SIZE)
    t_floor = (FLOOR_Z - origins[..., 2]) / dirs[..., 2]
    t_floor = torch.where(t_floor > 0, t_floor, torch.full_like(t_floor, float("inf")))
    t_wall = (WALL_Y - origins[..., 1]) / dirs[..., 1]
    t_wall = torch.where(t_wall > 0, t_wall, torch.full_like(t_wall, float("inf")))
    t = torch.minimum(t_floor, t_wall)
    hit = origins + t[..., None] * dirs
    depth = t * (dirs * w2c[..., 2, :3][:, :, None, None, :]).sum(-1)
    colour = _texture(4.0 * hit)  # fine texture: a sheared window no longer matches itself
    return colour.permute(0, 1, 4, 2, 3).contiguous(), (w2c, K, mask), depth, t_floor < t_wall


def test_plane_depths_meet_the_plane_and_skip_planes_behind_or_parallel() -> None:
    _, (w2c, K, _), true, floor = _floor_views()
    up = torch.tensor([0.0, 0.0, 1.0])
    z = plane_depths(w2c[:, 0], K[:, 0], up, torch.tensor([FLOOR_Z, 5.0]), SIZE, SIZE)  # [1, 2, S·S]
    torch.testing.assert_close(z[0, 0][floor[0, 0].flatten()], true[0, 0][floor[0, 0]], rtol=1e-4, atol=1e-5)
    up_rays = (pixel_rays(w2c, K, SIZE, SIZE)[1][0, 0, ..., 2] > 0).flatten()
    assert (z[0, 0][up_rays] == 0).all() and (z[0, 0][~up_rays] > 0).all()  # only downward rays meet the floor
    assert (z[0, 1][~up_rays] == 0).all() and (z[0, 1][up_rays] > 0).all()  # and only upward ones a ceiling
    side = plane_depths(w2c[:, 0], K[:, 0], torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0]), SIZE, SIZE)
    assert (side >= 0).all() and (side > 0).any()


def test_horizontal_planes_match_a_floor_seen_at_grazing_angles_better() -> None:
    images, (w2c, K, mask), true, floor = _floor_views()
    fronto, fronto_score = sweep_stereo(images, w2c, K, mask, torch.linspace(0.3, 4.0, 97), refine=True)
    offsets = torch.linspace(-0.6, 0.6, 97)  # heights 1/80 apart
    flat, flat_score = sweep_stereo(images, w2c, K, mask, offsets, refine=True, normal=torch.tensor([0.0, 0.0, 1.0]))
    assert flat.shape == flat_score.shape == (1, 4, SIZE, SIZE)
    # on the floor, within 2 % of the depth: the horizontal planes warp each window exactly
    right = ((flat - true).abs() <= 0.02 * true)[floor & (flat_score >= 0.8)]
    right_fronto = ((fronto - true).abs() <= 0.02 * true)[floor & (fronto_score >= 0.8)]
    assert (floor & (flat_score >= 0.8)).sum() > 1.5 * (floor & (fronto_score >= 0.8)).sum()
    assert right.float().mean() > 0.75, right.float().mean()  # 0.85 measured; sheared fronto-parallel windows: 0.07
    assert right.sum() > 3 * right_fronto.sum(), (right.sum(), right_fronto.sum())
    assert (flat[flat_score > -1] > 0).all()  # a scored pixel never takes a plane behind its camera
