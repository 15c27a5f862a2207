"""Plane sweep (a deviation, off): each patch's ray points at the cue's depths, matched across the views."""

from __future__ import annotations

import math

import pytest
import torch

from genrecon.models.depth_cue import DepthCue
from genrecon.models.plane_sweep import PlaneSweep
from genrecon.models.projection import Projection
from tests.models.test_photo_consistency import EYES, _cameras

P, BINS, MAX_DEPTH, RADIUS = 16, 32, 4.0, 0.5


def test_ray_points_project_back_onto_their_patch_centre_at_the_bin_depth() -> None:
    w2c, K, mask = _cameras(1, EYES[:2])
    sweep = PlaneSweep(8, BINS, MAX_DEPTH)
    pts = sweep.ray_points(K, w2c, P)  # [1, 2, P², D, 3]
    assert pts.shape == (1, 2, P * P, BINS, 3)
    for n in range(2):
        flat = pts[0, n].reshape(-1, 3)
        u, v, valid, depth = Projection.project(flat, torch.zeros(len(flat), dtype=torch.long), w2c, K, mask)
        idx = torch.arange(P * P).repeat_interleave(BINS)
        torch.testing.assert_close(u[:, n], (idx % P + 0.5) / P, atol=1e-5, rtol=0)
        torch.testing.assert_close(v[:, n], (idx // P + 0.5) / P, atol=1e-5, rtol=0)
        torch.testing.assert_close(depth[:, n], sweep.depths(flat.device).repeat(P * P), atol=1e-5, rtol=0)


def _eyes(spread_deg: float = 30.0) -> list[list[float]]:
    """Four cameras 2 units from the origin, spread over ``spread_deg`` either side of -y, at mixed heights."""
    a = math.radians(spread_deg)
    return [[2 * math.sin(t), -2 * math.cos(t), z] for t, z in ((-a, 0.3), (-a / 3, 0.5), (a / 3, 0.2), (a, 0.4))]


def _sphere_views(depth_shift: float = 0.0, seed: int = 0):
    """Four cameras looking at a textured sphere of radius 0.5, at the origin or moved ``depth_shift`` away from
    them along +y: each patch token is the texture (a smooth random field of the position on the sphere, so a moved
    sphere looks alike) where its centre ray first meets the sphere, noise where it misses. Returns tokens
    [1, N, P², 8], the cameras, and each patch's true camera depth [1, N, P²] (nan: a miss)."""
    gen = torch.Generator().manual_seed(seed)
    w2c, K, mask = _cameras(1, _eyes())
    freq = torch.randn(8, 3, generator=gen) * 4.0
    phase = torch.rand(8, generator=gen) * 6.28
    rays = PlaneSweep(8, BINS, MAX_DEPTH).ray_points(K, w2c, P)[0]  # [N, P², D, 3]
    centre = torch.tensor([0.0, depth_shift, 0.0])
    eye = -(w2c[0, :, :3, :3].transpose(1, 2) @ w2c[0, :, :3, 3:]).squeeze(-1) - centre  # [N, 3], sphere frame
    d = (rays[:, :, 1] - rays[:, :, 0]) / (MAX_DEPTH / BINS)  # [N, P², 3]: the ray per unit of camera depth
    # |eye + s·d|² = r², nearest root s: the camera depth of the first hit
    a, b, c = (d * d).sum(-1), 2 * (eye[:, None] * d).sum(-1), (eye * eye).sum(-1)[:, None] - RADIUS**2
    disc = b * b - 4 * a * c
    s = (-b - disc.clamp(min=0).sqrt()) / (2 * a)
    hit = disc > 0
    texture = torch.sin((eye[:, None] + s[..., None] * d) @ freq.T + phase)
    n = len(eye)
    tokens = torch.where(hit[..., None], texture, torch.randn(n, P * P, 8, generator=gen))
    return tokens[None], (w2c, K, mask), torch.where(hit, s, torch.full_like(s, float("nan")))[None]


def test_matching_peaks_at_the_true_depth_of_a_textured_sphere() -> None:
    tokens, (w2c, K, mask), true_depth = _sphere_views()
    sweep = PlaneSweep(8, BINS, MAX_DEPTH, channels=8)
    with torch.no_grad():  # matching features = the tokens themselves
        sweep.to_match.weight.copy_(torch.eye(8))
        sweep.to_match.bias.zero_()
    mean, share = sweep.cost(tokens, w2c, K, mask, num_global_tokens=0)
    assert mean.shape == share.shape == (1, 4, P * P, BINS) and 0 <= share.min() and share.max() <= 1
    hit = ~true_depth.isnan()
    true_bin = (true_depth / (MAX_DEPTH / BINS)).floor()
    best = mean.argmax(-1).float()
    near = ((best - true_bin).abs() <= 1)[hit]
    assert hit.sum() > 100 and near.float().mean() > 0.6, near.float().mean()  # chance: 3/32
    # An untrained sweep leaves the cue's logits as the head's; geometry is then required.
    cue = DepthCue(8, bins=BINS, max_depth=MAX_DEPTH, sweep={"channels": 4})
    torch.testing.assert_close(cue.token_logits(tokens, 0, (w2c, K, mask)), cue.head(tokens))
    with pytest.raises(ValueError, match="geometry"):
        cue.token_logits(tokens)


def test_view_order_and_padded_views_leave_the_cost_unchanged() -> None:
    tokens, (w2c, K, mask), _ = _sphere_views()
    sweep = PlaneSweep(8, BINS, MAX_DEPTH, channels=4)
    mean, share = sweep.cost(tokens, w2c, K, mask, 0)
    perm = torch.tensor([2, 0, 3, 1])
    m2, s2 = sweep.cost(tokens[:, perm], w2c[:, perm], K[:, perm], mask[:, perm], 0)
    torch.testing.assert_close(m2, mean[:, perm], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s2, share[:, perm])
    # A padded view as the collate leaves it: zeros everywhere (K singular) and a False mask.
    pad = lambda x: torch.cat([x, torch.zeros_like(x[:, :1])], 1)  # noqa: E731
    m3, s3 = sweep.cost(pad(tokens), pad(w2c), pad(K), pad(mask), 0)
    assert torch.isfinite(m3).all() and torch.isfinite(s3).all()
    torch.testing.assert_close(m3[:, :4], mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s3[:, :4], share)


def test_supervised_sweep_learns_the_depths_the_head_alone_cannot() -> None:
    """The same textured sphere at two distances (0.8 apart, six bins), so a token's content does not tell its
    depth: the head alone can learn one depth per texture value; with the sweep, the cue's cross-entropy against
    the true bins puts the mode near the truth at both."""
    views = [_sphere_views(depth_shift=y) for y in (0.0, 0.8)]
    tokens = torch.cat([v[0] for v in views])
    geometry = tuple(torch.cat([v[1][i] for v in views]) for i in range(3))
    true_depth = torch.cat([v[2] for v in views])
    hit = ~true_depth.isnan()
    true_bin = (true_depth.nan_to_num(0.0) / (MAX_DEPTH / BINS)).floor().clamp(0, BINS - 1).long()
    target = torch.nn.functional.one_hot(true_bin, BINS).float()
    results = {}
    for name, sweep in (("head", None), ("sweep", {"channels": 8})):
        torch.manual_seed(0)
        cue = DepthCue(8, bins=BINS, max_depth=MAX_DEPTH, sweep=sweep)
        opt = torch.optim.Adam(cue.parameters(), lr=0.03)
        for _ in range(200):
            loss = DepthCue.supervision_loss(cue.patch_logits(tokens, 0, geometry), target, hit)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            results[name] = float(DepthCue.mode_hit(cue.patch_logits(tokens, 0, geometry), target, hit))
    assert results["sweep"] > results["head"] + 0.15, results

