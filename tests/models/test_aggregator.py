"""View aggregator: invariances, empty voxels, init behaviour, key layout, streaming."""

from __future__ import annotations

import torch
from torch import nn

from genrecon.models.aggregator import ViewAggregator, project_and_aggregate
from genrecon.models.projection import Projection, voxel_centers

C, H = 8, 16


def randomised(seed: int = 0) -> ViewAggregator:
    torch.manual_seed(seed)
    agg = ViewAggregator(C, H)
    with torch.no_grad():
        for p in agg.parameters():
            p.uniform_(-0.4, 0.4)
    return agg


def sample(k: int = 32, n: int = 5, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(k, n, C, generator=g)
    valid = torch.rand(k, n, generator=g) > 0.4
    valid[0] = False  # a voxel no view sees
    valid[1] = torch.arange(n) == 2  # a voxel seen by exactly one view
    feats[~valid] = 0.0  # as the projection delivers them
    return feats, valid


def masked_mean(feats: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    w = valid[..., None].float()
    return (feats * w).sum(1) / w.sum(1).clamp_min(1)


def reference(agg: ViewAggregator, feats: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The formula written out naively, with h = [f ‖ μ ‖ σ²] built explicitly."""
    w = valid[..., None].float()
    count = w.sum(1, keepdim=True).clamp_min(1)
    mean = (feats * w).sum(1, keepdim=True) / count
    var = ((feats - mean) ** 2 * w).sum(1, keepdim=True) / count
    h = torch.cat([feats, mean.expand_as(feats), var.expand_as(feats)], dim=-1)
    logits = agg.weight_mlp(h).squeeze(-1).masked_fill(~valid, -1e9)
    weights = torch.softmax(logits, dim=1) * valid.any(1, keepdim=True)
    return mean.squeeze(1) + (weights[..., None] * agg.feature_mlp(h)).sum(1)


def test_state_dict_layout() -> None:
    shapes = {k: tuple(v.shape) for k, v in ViewAggregator(1024).state_dict().items()}
    assert shapes == {
        "feature_mlp.0.weight": (1024, 3072), "feature_mlp.0.bias": (1024,),
        "feature_mlp.2.weight": (1024, 1024), "feature_mlp.2.bias": (1024,),
        "feature_mlp.4.weight": (1024, 1024), "feature_mlp.4.bias": (1024,),
        "weight_mlp.0.weight": (1024, 3072), "weight_mlp.0.bias": (1024,),
        "weight_mlp.2.weight": (1, 1024), "weight_mlp.2.bias": (1,),
    }  # fmt: skip
    assert sum(p.numel() for p in ViewAggregator(1024).parameters()) == 8_393_729  # GenRecon's count


def test_init_output_is_masked_mean() -> None:
    agg = ViewAggregator(C, H)
    assert not agg.feature_mlp[4].weight.any() and not agg.feature_mlp[4].bias.any()
    feats, valid = sample()
    torch.testing.assert_close(agg(feats, valid), masked_mean(feats, valid), atol=1e-6, rtol=0)


def test_matches_naive_formula() -> None:
    agg = randomised()
    feats, valid = sample()
    torch.testing.assert_close(agg(feats, valid), reference(agg, feats, valid), atol=1e-5, rtol=1e-5)


def test_view_permutation_invariance() -> None:
    for agg in (ViewAggregator(C, H), randomised()):
        feats, valid = sample()
        out = agg(feats, valid)
        for seed in range(3):
            perm = torch.randperm(feats.shape[1], generator=torch.Generator().manual_seed(seed))
            torch.testing.assert_close(agg(feats[:, perm], valid[:, perm]), out, atol=1e-6, rtol=0)


def test_padded_views_change_nothing() -> None:
    for agg in (ViewAggregator(C, H), randomised()):
        feats, valid = sample()
        out = agg(feats, valid)
        k = feats.shape[0]
        # Padding with zeros (what the projection gives) and with garbage, before and after the real views.
        for pad in (torch.zeros(k, 3, C), torch.randn(k, 3, C) * 100, torch.full((k, 3, C), float("nan"))):
            none = torch.zeros(k, 3, dtype=torch.bool)
            torch.testing.assert_close(
                agg(torch.cat([feats, pad], 1), torch.cat([valid, none], 1)), out, atol=1e-6, rtol=0
            )
            torch.testing.assert_close(
                agg(torch.cat([pad, feats], 1), torch.cat([none, valid], 1)), out, atol=1e-6, rtol=0
            )


def test_unseen_voxel_is_exactly_zero() -> None:
    for agg in (ViewAggregator(C, H), randomised()):
        feats, valid = sample()
        feats[0] = torch.randn(feats.shape[1], C)  # even if invalid entries hold values
        assert torch.equal(agg(feats, valid)[0], torch.zeros(C))


def test_single_view_weight_is_one() -> None:
    agg = randomised()
    feats, valid = sample()
    expected = reference(agg, feats[1:2], valid[1:2])
    torch.testing.assert_close(agg(feats[1:2], valid[1:2]), expected, atol=1e-6, rtol=0)


def _scene(b: int = 2, n: int = 4, res: int = 6) -> tuple[torch.Tensor, ...]:
    """Cameras on a circle around the chunk looking at its centre; one padded view per batch element."""
    g = torch.Generator().manual_seed(3)
    w2c = torch.zeros(b, n, 4, 4)
    for bi in range(b):
        for vi in range(n - 1):
            angle = 2 * torch.pi * (vi + 0.3 * bi) / (n - 1)
            eye = torch.tensor(
                [1.5 * torch.cos(torch.tensor(angle)), 1.5 * torch.sin(torch.tensor(angle)), 0.4]
            )
            forward = -eye / eye.norm()
            right = torch.linalg.cross(forward, torch.tensor([0.0, 0.0, 1.0]))
            right = right / right.norm()
            rot = torch.stack([right, torch.linalg.cross(forward, right), forward])
            w2c[bi, vi, :3, :3], w2c[bi, vi, :3, 3], w2c[bi, vi, 3, 3] = rot, -rot @ eye, 1.0
    K = torch.tensor([[0.9, 0.0, 0.5], [0.0, 0.9, 0.5], [0.0, 0.0, 1.0]]).expand(b, n, 3, 3)
    view_mask = torch.ones(b, n, dtype=torch.bool)
    view_mask[:, -1] = False
    tokens = torch.randn(b, n, 1 + 4 * 4, C, generator=g)
    points = voxel_centers(res).repeat(b, 1)
    batch_idx = torch.arange(b).repeat_interleave(res**3)
    return points, batch_idx, tokens, w2c, K, view_mask


def test_streamed_equals_one_shot() -> None:
    points, batch_idx, tokens, w2c, K, view_mask = _scene()
    projection, agg = Projection(1, 4), randomised()
    feats, valid = projection(points, batch_idx, tokens, w2c, K, view_mask)
    assert valid.any(1).float().mean() > 0.5 and not valid[:, -1].any()
    one_shot = agg(feats, valid)
    streamed = project_and_aggregate(
        projection, agg, points, batch_idx, tokens, w2c, K, view_mask, batch_voxels=37
    )
    torch.testing.assert_close(streamed, one_shot, atol=1e-6, rtol=0)


def test_streamed_checkpointing_gives_same_gradients() -> None:
    points, batch_idx, tokens, w2c, K, view_mask = _scene()
    projection = Projection(1, 4)
    grads = []
    for checkpoint in (False, True):
        agg = randomised()
        out = project_and_aggregate(
            projection,
            agg,
            points,
            batch_idx,
            tokens,
            w2c,
            K,
            view_mask,
            batch_voxels=50,
            checkpoint=checkpoint,
        )
        out.square().sum().backward()
        grads.append([p.grad.clone() for p in agg.parameters()])
    for plain, recomputed in zip(*grads):
        torch.testing.assert_close(recomputed, plain)


def test_no_voxels() -> None:
    _, _, tokens, w2c, K, view_mask = _scene()
    out = project_and_aggregate(
        Projection(1, 4), ViewAggregator(C), torch.zeros(0, 3), torch.zeros(0, dtype=torch.long),
        tokens, w2c, K, view_mask,
    )  # fmt: skip
    assert out.shape == (0, C)


def test_hidden_width() -> None:
    agg = ViewAggregator(C, hidden=32)
    assert isinstance(agg.feature_mlp[4], nn.Linear) and agg.feature_mlp[0].weight.shape == (32, 3 * C)
    assert agg(*sample()).shape == (32, C)
