"""IBRNet-style, view-order-independent fusion of per-view tokens into one feature per voxel."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from genrecon.models.projection import Projection

_MASKED_LOGIT = -1e9


class ViewAggregator(nn.Module):
    """Masked mean μ + softmax-weighted residual over views.

    Per view h_n = [f_n ‖ μ ‖ σ²] (3C, in that column order, as in GenRecon's checkpoints);
    output = μ + Σ_n w_n · feature_mlp(h_n) with w = softmax over valid views of weight_mlp(h_n).
    The last feature layer is zero-initialised, so at init the output is the masked mean.
    State-dict keys: ``feature_mlp.{0,2,4}``, ``weight_mlp.{0,2}``.
    """

    def __init__(self, channels: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or channels
        self.channels = channels
        self.feature_mlp = nn.Sequential(
            nn.Linear(3 * channels, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, channels),
        )
        self.weight_mlp = nn.Sequential(nn.Linear(3 * channels, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.feature_mlp[4].weight)
        nn.init.zeros_(self.feature_mlp[4].bias)

    def forward(self, feats: Tensor, valid: Tensor) -> Tensor:
        """feats ``[K, N, C]``, valid ``[K, N]`` bool → ``[K, C]``; exactly 0 for a voxel no view sees."""
        mask = valid[..., None]
        # Invalid entries are ignored whatever they hold (even non-finite values).
        feats = torch.where(mask, feats, feats.new_zeros(()))
        weight = mask.to(feats.dtype)
        count = weight.sum(dim=1).clamp_min(1)  # [K, 1]
        mean = feats.sum(dim=1) / count  # [K, C]
        var = ((feats - mean[:, None]) ** 2 * weight).sum(dim=1) / count  # [K, C]

        residual = self._mlp(self.feature_mlp, feats, mean, var)  # [K, N, C]
        # Softmax in float32: -1e9 overflows half precision.
        logits = self._mlp(self.weight_mlp, feats, mean, var).squeeze(-1).float()  # [K, N]
        w = torch.softmax(logits.masked_fill(~valid, _MASKED_LOGIT), dim=1)
        # A voxel with no valid view would get uniform weights: zero them.
        w = w.masked_fill(~valid, 0.0).to(residual.dtype)
        return mean + (w[..., None] * residual).sum(dim=1)

    @staticmethod
    def _mlp(mlp: nn.Sequential, feats: Tensor, mean: Tensor, var: Tensor) -> Tensor:
        """Run ``mlp`` on h = [f ‖ μ ‖ σ²] ``[K, N, 3C]`` without building h.

        The first layer is applied as three column slices of its weight: the μ and σ² terms are
        per voxel, so they are computed once and broadcast over views.
        """
        first, c = mlp[0], feats.shape[-1]
        w = first.weight
        per_voxel = F.linear(mean, w[:, c : 2 * c], first.bias) + F.linear(var, w[:, 2 * c :])  # [K, H]
        h = F.linear(feats, w[:, :c]) + per_voxel[:, None]
        for layer in mlp[1:]:
            h = layer(h)
        return h


def project_and_aggregate(
    projection: Projection,
    aggregator: ViewAggregator,
    points: Tensor,
    batch_idx: Tensor,
    tokens: Tensor,
    w2c: Tensor,
    K: Tensor,
    view_mask: Tensor,
    batch_voxels: int = 4096,
    checkpoint: bool = False,
    depth_cue: nn.Module | None = None,
    visible: Tensor | None = None,
    cell_cue: nn.Module | None = None,
) -> Tensor:
    """Projection + aggregation streamed over voxels → ``[K, C]``.

    points ``[K, 3]``, batch_idx ``[K]``, tokens ``[B, N, T, C]``, w2c ``[B, N, 4, 4]``,
    K ``[B, N, 3, 3]``, view_mask ``[B, N]``. Only ``batch_voxels × N × C`` gathered features exist
    at a time. With ``checkpoint`` and gradients enabled, each batch's activations are recomputed
    in backward instead of stored, so training memory stays bounded too.
    ``depth_cue`` (:class:`genrecon.models.depth_cue.DepthCue`): ``tokens`` are then its extended tokens
    ``[B, N, T, C + D]``, and each per-view feature gets the depth evidence at the voxel's camera depth.
    ``cell_cue`` (:class:`genrecon.models.cell_cue.CellCue`): its cells follow (the depth cue's logits, then)
    the token channels, and each per-view feature gets the cell under the voxel's projection.
    ``visible [K, N]`` bool (e.g. :meth:`genrecon.models.visibility.StructureVisibility.visible`): the views it
    rules out count as invalid, so only the views that see a voxel are fused.
    """

    c = aggregator.channels
    d = c + (depth_cue.bins if depth_cue is not None else 0)  # token layout: [C | depth logits | cells]

    def run(pts: Tensor, idx: Tensor, seen: Tensor | None) -> Tensor:
        if depth_cue is None and cell_cue is None:
            feats, valid = projection(pts, idx, tokens, w2c, K, view_mask)
        else:
            gathered, valid, depth, u, v = projection(
                pts, idx, tokens, w2c, K, view_mask, return_depth=True, return_uv=True
            )
            feats = depth_cue(gathered[..., :d], depth) if depth_cue is not None else gathered[..., :c]
            if cell_cue is not None:
                feats = cell_cue(feats, gathered[..., d:], u, v, depth, projection.patch_grid)
        if seen is not None:
            valid = valid & seen
        return aggregator(feats, valid)

    outputs = []
    for start in range(0, points.shape[0], batch_voxels):
        pts, idx = points[start : start + batch_voxels], batch_idx[start : start + batch_voxels]
        seen = visible[start : start + batch_voxels] if visible is not None else None
        if checkpoint and torch.is_grad_enabled():
            outputs.append(activation_checkpoint(run, pts, idx, seen, use_reentrant=False))
        else:
            outputs.append(run(pts, idx, seen))
    if not outputs:
        return tokens.new_zeros(0, aggregator.channels)
    return torch.cat(outputs)
