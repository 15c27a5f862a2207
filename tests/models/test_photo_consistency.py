"""Photo-consistency cue: colours sampled where sub-voxel points project, fused independently of view order."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from genrecon.models.photo_consistency import PhotoConsistency, sample_bilinear, sub_offsets
from tests.models.test_projection import intrinsics, look_at


def _cameras(b: int, eyes: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n = len(eyes)
    w2c = torch.stack([look_at(torch.tensor(e), torch.zeros(3)) for e in eyes])[None].repeat(b, 1, 1, 1)
    K = intrinsics(60.0)[None, None].repeat(b, n, 1, 1)
    return w2c, K, torch.ones(b, n, dtype=torch.bool)


EYES = [[0.0, -2.0, 0.3], [2.0, 0.0, 0.3], [-2.0, 0.5, 0.3], [0.3, 2.0, 0.6]]


def test_sub_offsets_tile_the_cell() -> None:
    off = sub_offsets(4, 0.25)
    assert off.shape == (64, 3)
    assert torch.allclose(off.min(0).values, torch.full((3,), -0.125 + 0.03125))
    assert torch.allclose(off.mean(0), torch.zeros(3), atol=1e-7)


def test_bilinear_matches_grid_sample() -> None:
    torch.manual_seed(0)
    images = torch.rand(3, 3, 9, 7)
    q = 500
    idx = torch.randint(0, 3, (q,))
    x, y = torch.rand(q) * 8 - 0.7, torch.rand(q) * 10 - 0.7  # a few outside: border clamp
    ours = sample_bilinear(images, idx, x, y)
    # grid_sample (align_corners=False): pixel centre i at (2i + 1)/W - 1.
    grid = torch.stack([(2 * x + 1) / 7 - 1, (2 * y + 1) / 9 - 1], -1)
    ref = torch.stack([F.grid_sample(images[i][None], grid[None, None, k : k + 1], align_corners=False,
                                     padding_mode="border")[0, :, 0, 0] for k, i in enumerate(idx.tolist())])
    assert torch.allclose(ours, ref, atol=1e-5)


def test_statistics_of_constant_colour_views() -> None:
    """View n is filled with colour c_n: every sub-point's mean / std / coverage follow from who sees it."""
    colours = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.5, 0.5, 0.5]])
    w2c, K, mask = _cameras(1, EYES)
    images = colours[None, :, :, None, None].expand(1, 4, 3, 16, 16).contiguous()
    cue = PhotoConsistency(resolution=8, cond_channels=4, subdivisions=2)
    pts = torch.tensor([[0.0625, 0.0625, 0.0625]])  # a cell near the centre: all four views see it
    stats = cue.statistics(images, pts, torch.zeros(1, dtype=torch.long), w2c, K, mask)
    assert stats.shape == (1, 8, 5)
    mean = colours.mean(0)
    std = ((colours - mean) ** 2).mean(0).mean().sqrt()
    assert torch.allclose(stats[0, :, :3], mean.expand(8, 3), atol=1e-6)
    assert torch.allclose(stats[0, :, 3], std.expand(8), atol=1e-6)
    assert torch.allclose(stats[0, :, 4], torch.ones(8))


def test_view_order_and_padding_do_not_matter() -> None:
    torch.manual_seed(1)
    w2c, K, mask = _cameras(2, EYES)
    images = torch.rand(2, 4, 3, 24, 24)
    cue = PhotoConsistency(resolution=8, cond_channels=6, subdivisions=2, batch_tokens=5)
    pts = torch.rand(12, 3) - 0.5
    bidx = torch.tensor([0] * 7 + [1] * 5)
    ref = cue(images, pts, bidx, w2c, K, mask)
    perm = torch.tensor([2, 0, 3, 1])
    permuted = cue(images[:, perm], pts, bidx, w2c[:, perm], K[:, perm], mask[:, perm])
    assert torch.allclose(ref, permuted, atol=1e-6)
    # Two padded views (zero cameras, masked, garbage images) appended.
    pad = lambda t, fill: torch.cat([t, torch.full_like(t[:, :2], fill)], 1)  # noqa: E731
    padded = cue(pad(images, 7.0), pts, bidx, pad(w2c, 0.0), pad(K, 0.0), torch.cat([mask, torch.zeros(2, 2, dtype=torch.bool)], 1))
    assert torch.allclose(ref, padded, atol=1e-6)
    # Streaming over tokens changes nothing.
    cue.batch_tokens = 1000
    assert torch.allclose(ref, cue(images, pts, bidx, w2c, K, mask), atol=1e-6)


def test_unseen_tokens_get_zeros_and_the_cue_is_differentiable() -> None:
    w2c, K, mask = _cameras(1, EYES[:1])  # one camera at y = -2 looking at +y
    images = torch.rand(1, 1, 3, 16, 16)
    cue = PhotoConsistency(resolution=8, cond_channels=4, subdivisions=2)
    pts = torch.tensor([[0.0, 0.0, 0.0], [0.0, -3.0, 0.0]])  # in view; behind the camera
    out = cue(images, pts, torch.zeros(2, dtype=torch.long), w2c, K, mask)
    assert out[1].abs().max() == 0 and out[0].abs().max() > 0
    out.sum().backward()
    assert cue.mlp[0].weight.grad is not None and cue.mlp[0].weight.grad.abs().sum() > 0
