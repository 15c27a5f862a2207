"""Multi-view matching along each patch's ray: a plane-sweep correction of the depth cue (a deviation, off).

The depth cue's head reads one view at a time (monocular depth: abs. rel. 0.19 after the view pretraining, session
21), and the SS flow misses the surfaces its views show as far as the hidden ones. Several posed views fix depth
where one cannot: a surface point looks alike from every view that sees it. For each patch of each view, the
point on its centre ray at each depth bin of the cue is projected into every other view, that view's (learnt,
low-width) patch features are read there bilinearly, and their cosine similarity with the patch's own feature is
averaged over the views the point falls into (MVSNet-style plane sweep, on the patch grid). A zero-initialised
1-D convolution over the bins turns [mean similarity, share of views] into logits added to the head's, so an
untrained sweep leaves the cue as it was; ``depth_supervision_weight`` trains it against the true depths.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.profiler import record_function

from genrecon.geometry.cameras import (
    MIN_DEPTH,
    pixel_centers_uv,
    project_points,
    real_view_intrinsics,
    unproject_points,
)


class PlaneSweep(nn.Module):
    """Matching cost per patch and depth bin, as corrections of depth logits.

    Args:
        in_channels: token width ``C``.
        bins: depth bins ``D`` (uniform over ``[0, max_depth)``, the depth cue's).
        max_depth: far end of the bins in chunk units.
        channels: width of the matching features (the cost is computed at this width).
    """

    def __init__(self, in_channels: int, bins: int, max_depth: float, channels: int = 16) -> None:
        super().__init__()
        self.bins, self.max_depth, self.channels = bins, float(max_depth), channels
        self.to_match = nn.Linear(in_channels, channels)
        self.to_logits = nn.Conv1d(2, 1, kernel_size=3, padding=1)
        nn.init.zeros_(self.to_logits.weight)
        nn.init.zeros_(self.to_logits.bias)

    def extra_repr(self) -> str:
        return f"bins={self.bins}, max_depth={self.max_depth}, channels={self.channels}"

    def depths(self, device: torch.device) -> Tensor:
        """Bin centres ``[D]`` in chunk units (camera z)."""
        return (torch.arange(self.bins, device=device, dtype=torch.float32) + 0.5) * (self.max_depth / self.bins)

    def ray_points(self, K: Tensor, w2c: Tensor, patch_grid: int, view_mask: Tensor | None = None) -> Tensor:
        """Chunk-frame points ``[B, N, P², D, 3]`` on each patch centre's ray at each bin's camera depth;
        K ``[B, N, 3, 3]`` normalised intrinsics, w2c ``[B, N, 4, 4]`` (OpenCV), view_mask ``[B, N]`` (padded
        views, whose K may be all zeros, get the identity's rays: they are masked out anyway)."""
        p, d = patch_grid, self.bins
        K, w2c = K.float(), w2c.float()
        if view_mask is not None:
            K = real_view_intrinsics(K, view_mask)
        centres = torch.as_tensor(pixel_centers_uv(p, p), dtype=torch.float32, device=K.device).reshape(-1, 2)
        uv = centres.repeat_interleave(d, dim=0)  # [P²·D, 2]: every bin of patch 0, then of patch 1, ...
        depth = self.depths(K.device).repeat(p * p)  # [P²·D]
        b, n = K.shape[:2]
        points = unproject_points(uv.expand(b, n, -1, -1), depth.expand(b, n, -1), w2c, K)
        return points.view(b, n, p * p, d, 3)

    def cost(self, tokens: Tensor, w2c: Tensor, K: Tensor, view_mask: Tensor,
             num_global_tokens: int) -> tuple[Tensor, Tensor]:
        """Mean cosine similarity ``[B, N, P², D]`` of each patch's matching feature with the other views'
        features where its ray point at each depth lands (0 where none sees it), and the share of the sample's
        other real views that see it ``[B, N, P², D]``."""
        p2 = tokens.shape[2] - num_global_tokens
        p = math.isqrt(p2)
        if p * p != p2:
            raise ValueError(f"{p2} patch tokens are not a square grid")
        feats = self.to_match(tokens[:, :, num_global_tokens:])
        # Geometry and similarities in float32: under bf16 autocast the matmuls would round the projections.
        with torch.autocast(tokens.device.type, enabled=False):
            return self._cost(F.normalize(feats.float(), dim=-1), w2c, K, view_mask, p)

    def _cost(self, feats: Tensor, w2c: Tensor, K: Tensor, view_mask: Tensor, p: int) -> tuple[Tensor, Tensor]:
        """:meth:`cost` from unit matching features ``[B, N, P², Cm]`` (float32) on a ``p × p`` patch grid."""
        b, n, p2, _ = feats.shape
        points = self.ray_points(K, w2c, p, view_mask)  # [B, N, P², D, 3]
        maps = feats.transpose(2, 3).reshape(b, n, self.channels, p, p)
        total = feats.new_zeros(b, n, p2, self.bins)
        count = feats.new_zeros(b, n, p2, self.bins)
        # [B, N, M]: real source and target views, never a view with itself
        itself = torch.eye(n, dtype=torch.bool, device=feats.device)
        pairs = view_mask[:, :, None] & view_mask[:, None, :] & ~itself
        flat = points.reshape(b, n * p2 * self.bins, 3)
        # One target view at a time: projecting into all N at once would hold N times these [B, N·P²·D] tensors.
        for m in range(n):
            uv, z = project_points(flat, w2c[:, m].float(), K[:, m].float())  # [B, N·P²·D, 2], [B, N·P²·D]
            inside = (z > MIN_DEPTH) & (uv >= 0).all(-1) & (uv < 1).all(-1)
            seen = inside.view(b, n, p2, self.bins) & pairs[:, :, m, None, None]
            grid = (2 * uv - 1).clamp(-2, 2).view(b, n * p2 * self.bins, 1, 2)
            # The target side is read without gradient: bilinear sampling's backward scatters a million ray
            # points onto P² cells and took more than the rest of the step (H100, session 22); the reference
            # side still trains every view's matching features, each view being the reference of its patches.
            read = F.grid_sample(maps[:, m].detach(), grid, mode="bilinear", padding_mode="border",
                                 align_corners=False)
            read = read.view(b, self.channels, n, p2, self.bins)
            sim = torch.einsum("bcnpd,bnpc->bnpd", read, feats)
            total = total + sim * seen
            count = count + seen
        share = count / pairs.sum(-1).clamp(min=1)[:, :, None, None].float()
        return total / count.clamp(min=1), share

    def forward(self, tokens: Tensor, w2c: Tensor, K: Tensor, view_mask: Tensor,
                num_global_tokens: int) -> Tensor:
        """tokens ``[B, N, T, C]`` (``num_global_tokens`` global, then the P² patch grid) → logit corrections
        ``[B, N, P², D]`` float32 (zeros while ``to_logits`` is untrained)."""
        with record_function("cond.plane_sweep"):
            mean, share = self.cost(tokens, w2c, K, view_mask, num_global_tokens)
        b, n, p2, d = mean.shape
        x = torch.stack([mean, share], dim=3).view(b * n * p2, 2, d)
        return self.to_logits(x).view(b, n, p2, d)
