"""Ray-depth evidence for the projection pathway (a deviation from GenRecon, off by default).

The published pathway gives every voxel on a camera ray the same patch token: a view alone cannot say how far
along its ray a surface lies, and only agreement across views can place it. Following Lift-Splat, a linear head
predicts for every patch token a categorical distribution over ``bins`` depths in ``[0, max_depth)`` chunk
units. A (voxel, view) pair reads that distribution at the voxel's own camera depth (linear between bin
centres) as a density ``d`` relative to the uniform one, and ``[d, log d]`` (1 and 0 when uninformed) goes
through a zero-initialised Linear into the per-view feature before the view aggregator. An untrained cue
therefore leaves the pathway as published; what the head learns about depth comes from the losses behind the
aggregator.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

_EPS = 1e-6


class DepthCue(nn.Module):
    """Depth distribution per patch token and its evidence at each voxel's depth.

    Args:
        channels: token width ``C`` (the aggregator's width).
        bins: depth bins ``D`` (uniform over ``[0, max_depth)``).
        max_depth: far end of the bins in chunk units (the chunk edge is 1); deeper voxels read the last bin.
    """

    def __init__(self, channels: int, bins: int = 64, max_depth: float = 4.0) -> None:
        super().__init__()
        if bins < 2 or max_depth <= 0:
            raise ValueError(f"need bins ≥ 2 and max_depth > 0, got {bins}, {max_depth}")
        self.channels, self.bins, self.max_depth = channels, bins, float(max_depth)
        self.head = nn.Linear(channels, bins)
        self.to_feature = nn.Linear(2, channels)
        nn.init.zeros_(self.to_feature.weight)
        nn.init.zeros_(self.to_feature.bias)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, bins={self.bins}, max_depth={self.max_depth}"

    def extend_tokens(self, tokens: Tensor) -> Tensor:
        """tokens ``[B, N, T, C]`` → ``[B, N, T, C + D]``: each token with its depth logits appended, so one
        projection gathers both."""
        return torch.cat([tokens, self.head(tokens).to(tokens.dtype)], dim=-1)

    def evidence(self, logits: Tensor, depth: Tensor) -> Tensor:
        """Probability density of ``depth`` ``[...]`` under the distributions ``logits`` ``[..., D]``, in units of
        the uniform density (1 = no information): ``[...]`` float32."""
        prob = torch.softmax(logits.float(), dim=-1)
        x = (depth.float() / self.max_depth * self.bins - 0.5).clamp(0, self.bins - 1)  # bin centres at integers
        i0 = x.floor().long()
        w = x - i0
        i1 = (i0 + 1).clamp(max=self.bins - 1)
        p0 = prob.gather(-1, i0[..., None]).squeeze(-1)
        p1 = prob.gather(-1, i1[..., None]).squeeze(-1)
        return (p0 * (1 - w) + p1 * w) * self.bins

    def forward(self, gathered: Tensor, depth: Tensor) -> Tensor:
        """gathered ``[K, N, C + D]`` (extended tokens under each projection), depth ``[K, N]`` (camera z in
        chunk units) → per-view features ``[K, N, C]`` with the depth evidence added."""
        feats, logits = gathered[..., : self.channels], gathered[..., self.channels :]
        p = self.evidence(logits, depth)
        cue = torch.stack([p, torch.log(p.clamp(min=_EPS))], dim=-1)
        return feats + self.to_feature(cue).to(feats.dtype)
