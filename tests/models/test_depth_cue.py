"""Ray-depth cue (a deviation, off by default): depth evidence per (voxel, view), a pathway unchanged at init."""

from __future__ import annotations

import pytest
import torch

from genrecon.models.depth_cue import DepthCue, patch_depth_targets
from genrecon.models.flow_transformer import DenseFlowTransformer
from genrecon.models.presets import flow_preset
from genrecon.models.projection import Projection
from tests.models.test_photo_consistency import EYES, _cameras


def test_evidence_reads_the_distribution_at_the_depth() -> None:
    cue = DepthCue(channels=4, bins=8, max_depth=4.0)  # bin width 0.5, centres at 0.25, 0.75, ...
    logits = torch.full((8,), -1e4)
    logits[3] = 0.0  # all mass in bin 3, centre 1.75
    depth = torch.tensor([1.75, 2.0, 2.25, 0.3, 9.0])
    p = cue.evidence(logits.expand(5, 8), depth)
    torch.testing.assert_close(p, torch.tensor([8.0, 4.0, 0.0, 0.0, 0.0]))  # linear between centres
    uniform = cue.evidence(torch.zeros(5, 8), depth)
    torch.testing.assert_close(uniform, torch.ones(5))  # no information: density 1 everywhere
    with pytest.raises(ValueError, match="bins"):
        DepthCue(4, bins=1)


def test_projection_returns_the_camera_depth() -> None:
    w2c, K, mask = _cameras(1, EYES[:2])
    proj = Projection(num_global_tokens=0, patch_grid=2)
    tokens = torch.zeros(1, 2, 4, 3)
    pts = torch.tensor([[0.0, 0.0, 0.0], [0.1, -0.2, 0.05]])
    _, valid, depth = proj(pts, torch.zeros(2, dtype=torch.long), tokens, w2c, K, mask, return_depth=True)
    assert valid.all()
    cam = (w2c[0, :, None, :3, :3] @ pts[None, :, :, None]).squeeze(-1) + w2c[0, :, None, :3, 3]  # [N, K, 3]
    torch.testing.assert_close(depth, cam[..., 2].T)
    assert torch.allclose(depth[0], torch.tensor([2.0, 2.0]).hypot(torch.tensor([0.3, 0.3])), atol=1e-5)


def pathway_model(depth_cue: dict | None = None, cell_cue: dict | None = None,
                  sampling: str = "nearest") -> DenseFlowTransformer:
    """A seeded tiny dense flow with the projection pathway (16 channels, 4×4 patch grid) and the given cues."""
    from genrecon.models.aggregator import ViewAggregator

    torch.manual_seed(0)
    cfg = {**flow_preset("tiny"), "cond_channels": 16}
    return DenseFlowTransformer(resolution=4, in_channels=8, out_channels=8, **cfg, attn_device="cpu",
                                projection=Projection(0, 4, sampling), aggregator=ViewAggregator(16),
                                depth_cue=depth_cue, cell_cue=cell_cue)


def assert_cue_starts_closed_and_trains(plain: DenseFlowTransformer, cued: DenseFlowTransformer,
                                        cue: torch.nn.Module) -> None:
    """``cued`` (``plain`` plus ``cue``, shared weights equal) fuses the same condition as ``plain`` at init (the
    cue's zero-initialised ``to_feature``), that layer gets gradient from the first step, and once it is open the
    gradient reaches the cue's ``head``."""
    w2c, K, mask = _cameras(2, EYES)
    tokens = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    a = plain.cond_3d_from_views(tokens, w2c, K, mask, 16)
    b = cued.cond_3d_from_views(tokens, w2c, K, mask, 16)
    torch.testing.assert_close(a, b)
    b.square().sum().backward()
    assert cue.to_feature.weight.grad.abs().sum() > 0
    with torch.no_grad():
        torch.nn.init.normal_(cue.to_feature.weight, std=0.5)
    cued.zero_grad()
    cued.cond_3d_from_views(tokens, w2c, K, mask, 16).square().sum().backward()
    assert cue.head.weight.grad.abs().sum() > 0


def test_untrained_cue_leaves_the_pathway_as_published_and_trains() -> None:
    plain, cued = pathway_model(), pathway_model({"bins": 16, "max_depth": 4.0})
    cued.load_state_dict(plain.state_dict(), strict=False)  # same shared weights; the cue's own stay as built
    assert_cue_starts_closed_and_trains(plain, cued, cued.depth_cue)
    with pytest.raises(ValueError, match="depth_cue"):
        DenseFlowTransformer(resolution=4, in_channels=8, out_channels=8, **flow_preset("tiny"), attn_device="cpu",
                             depth_cue={"bins": 8})


def test_cue_is_independent_of_view_order() -> None:
    model = pathway_model({"bins": 16})
    with torch.no_grad():
        torch.nn.init.normal_(model.depth_cue.to_feature.weight, std=0.5)
        torch.nn.init.normal_(model.aggregator.feature_mlp[4].weight, std=0.2)
    w2c, K, mask = _cameras(1, EYES)
    tokens = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    perm = torch.tensor([2, 0, 3, 1])
    a = model.cond_3d_from_views(tokens, w2c, K, mask, 16)
    b = model.cond_3d_from_views(tokens[:, perm], w2c[:, perm], K[:, perm], mask[:, perm], 16)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ depth supervision targets (patch_depth_targets)
def _plane_scene() -> tuple[torch.Tensor, ...]:
    """One camera at the origin looking along +z (f = 0.5); a near plane z = 1 over the left half of the image
    (u ∈ [0.25, 0.5)) in front of a far plane z = 1.5 filling it."""
    g = torch.linspace(-0.99, 0.99, 200)
    xx, yy = (a.flatten() for a in torch.meshgrid(g, g, indexing="ij"))
    near = torch.stack([xx * 0.5, yy * 0.5, torch.ones_like(xx)], -1)
    far = torch.stack([xx * 1.5, yy * 1.5, torch.full_like(xx, 1.5)], -1)
    points = torch.cat([near[near[:, 0] < 0], far])
    w2c = torch.eye(4)[None, None]
    K = torch.tensor([[0.5, 0, 0.5], [0, 0.5, 0.5], [0, 0, 1.0]])[None, None]
    batch_idx = torch.zeros(len(points), dtype=torch.long)
    u, v, valid, depth = Projection(0, 4).project(points, batch_idx, w2c, K, torch.ones(1, 1, dtype=torch.bool))
    return u, v, valid, depth, batch_idx


def test_patch_targets_hold_the_nearest_surface_of_each_patch() -> None:
    u, v, valid, depth, batch_idx = _plane_scene()
    target, has = patch_depth_targets(u, v, depth, valid, batch_idx, 1, 4, 4, 8, 2.0)
    assert target.shape == (1, 1, 16, 8) and bool(has.all())
    torch.testing.assert_close(target.sum(-1), torch.ones(1, 1, 16))
    # Bins of 0.25: the near plane (z = 1) is bin 4, the far one (z = 1.5) bin 6; the near plane hides the far
    # one in patch column 1, rows 1-2 (v ∈ [0.25, 0.75)).
    expected = torch.full((4, 4), 6)
    expected[1:3, 1] = 4
    assert torch.equal(target[0, 0].argmax(-1).view(4, 4), expected)


def test_patch_targets_match_a_per_cell_loop() -> None:
    gen = torch.Generator().manual_seed(0)
    b, n, p, s, bins, max_depth = 2, 3, 3, 2, 5, 3.0
    k = 400
    u, v = torch.rand(k, n, generator=gen), torch.rand(k, n, generator=gen)
    depth = torch.rand(k, n, generator=gen) * 4.0  # some beyond max_depth: last bin
    valid = torch.rand(k, n, generator=gen) < 0.7
    batch_idx = torch.randint(0, b, (k,), generator=gen)
    target, has = patch_depth_targets(u, v, depth, valid, batch_idx, b, p, s, bins, max_depth)
    cells = p * s
    for bi in range(b):
        for ni in range(n):
            for pr in range(p):
                for pc in range(p):
                    hist = torch.zeros(bins)
                    for sr in range(s):
                        for sc in range(s):
                            row, col = pr * s + sr, pc * s + sc
                            hit = (valid[:, ni] & (batch_idx == bi) & ((v[:, ni] * cells).floor() == row)
                                   & ((u[:, ni] * cells).floor() == col))
                            if hit.any():
                                z = depth[hit, ni].min()
                                hist[min(int(z / max_depth * bins), bins - 1)] += 1
                    assert bool(has[bi, ni, pr * p + pc]) == bool(hist.sum() > 0)
                    if hist.sum() > 0:
                        torch.testing.assert_close(target[bi, ni, pr * p + pc], hist / hist.sum())


def test_supervision_loss_is_masked_cross_entropy_and_mode_hit_counts_near_mass() -> None:
    target = torch.tensor([[[[0.0, 1.0, 0.0, 0.0], [0.5, 0.0, 0.0, 0.5]]]])  # [1, 1, 2, 4]
    logits = torch.log(torch.tensor([[[[0.1, 0.7, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25]]]]))
    has = torch.tensor([[[True, False]]])
    loss = DepthCue.supervision_loss(logits, target, has)
    assert float(loss) == pytest.approx(-torch.log(torch.tensor(0.7)).item(), rel=1e-5)
    assert float(DepthCue.mode_hit(logits, target, has)) == pytest.approx(1.0)
    far = torch.log(torch.tensor([[[[0.1, 0.1, 0.1, 0.7], [0.25] * 4]]]))
    assert float(DepthCue.mode_hit(far, target, has)) == pytest.approx(0.0)


def test_histogram_logits_put_the_evidence_at_the_true_depth_and_replace_the_heads() -> None:
    from genrecon.models.depth_cue import histogram_logits

    cue = DepthCue(channels=4, bins=8, max_depth=4.0)  # bin width 0.5
    target = torch.zeros(1, 1, 2, 8)
    target[0, 0, 0, 3] = 1.0  # patch 0 sees a surface in bin 3 (centre 1.75); patch 1 sees nothing
    has = torch.tensor([[[True, False]]])
    logits = histogram_logits(target, has)
    depth = torch.tensor([1.75, 0.75, 3.25])
    p = cue.evidence(logits[0, 0, 0].expand(3, 8), depth)
    assert p[0] > 7.9 and p[1] < 0.01 and p[2] < 0.01  # the true bin holds almost all the mass
    torch.testing.assert_close(cue.evidence(logits[0, 0, 1].expand(3, 8), depth), torch.ones(3))  # uninformed
    # extend_tokens: the given logits follow the patch tokens, the global token gets uniform (zero) logits.
    tokens = torch.randn(1, 1, 3, 4)
    ext = cue.extend_tokens(tokens, logits, num_global_tokens=1)
    assert ext.shape == (1, 1, 3, 12)
    torch.testing.assert_close(ext[..., :4], tokens)
    torch.testing.assert_close(ext[0, 0, 1:, 4:], logits[0, 0])
    assert ext[0, 0, 0, 4:].abs().max() == 0
    torch.testing.assert_close(cue.extend_tokens(tokens)[..., 4:], cue.head(tokens))  # default: the head's
    with pytest.raises(ValueError, match="patch_logits"):
        cue.extend_tokens(tokens, logits, num_global_tokens=0)
