"""Dense read-outs of a view encoder's patch tokens, for pretraining it on the rendered rooms (a deviation).

The published system conditions on DINOv3, which already knows surfaces, depth and materials; a small ViT trained
from scratch through the flow loss alone learns none of that in a one-GPU budget (sessions 5-7: the flows barely
use their views, ``val/cond_gain`` ≈ 0.01). Every room render comes with exact depth, normals and unshaded base
colour, so the encoder can first learn what the flows need to read from a view: per patch token, a linear head
predicts ``sub × sub`` cells of base colour, camera-frame normal and log depth, and a second linear head, of the
same shape as :class:`genrecon.models.depth_cue.DepthCue`'s, a distribution over depth bins in chunk units. The
flows then load the encoder (and that depth head into their depth cue) from the pretraining checkpoint.

Shapes: tokens ``[B, G + P², C]``; maps ``[B, K, H, W]`` with ``H = W = P · patch``; cells ``[B, K, P·sub, P·sub]``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from genrecon.models.depth_cue import DepthCue, depth_bin

# Channels of the dense head per cell: base colour (3), camera-frame normal (3), log depth in metres (1).
DENSE_CHANNELS = 7


def pool_cells(values: Tensor, valid: Tensor, cells: int) -> tuple[Tensor, Tensor]:
    """Mean of ``values [B, K, H, W]`` over the valid pixels (``valid [B, H, W]``) of each of ``cells × cells``
    square cells → ``([B, K, cells, cells], has [B, cells, cells] bool)``; cells without a valid pixel are 0."""
    b, k, h, w = values.shape
    if h % cells or w % cells:
        raise ValueError(f"map {h}x{w} does not split into {cells}x{cells} cells")
    m = valid.to(values.dtype)[:, None]
    total = F.avg_pool2d(values * m, (h // cells, w // cells))
    count = F.avg_pool2d(m, (h // cells, w // cells))
    return total / count.clamp(min=1e-6), count[:, 0] > 0


def patch_depth_histograms(
    depth: Tensor, valid: Tensor, patch: int, bins: int, max_depth: float
) -> tuple[Tensor, Tensor]:
    """Histogram of the valid pixel depths of every ``patch × patch`` block over ``bins`` uniform bins of
    ``[0, max_depth)`` (:func:`genrecon.models.depth_cue.depth_bin`, as ``patch_depth_targets``).

    depth ``[B, H, W]`` (chunk units), valid ``[B, H, W]`` → target ``[B, P², D]`` (rows sum to 1 where
    ``has``), has ``[B, P²]`` bool, with ``P = H / patch`` and patches row-major as the encoder's tokens.
    """
    b, h, w = depth.shape
    p_h, p_w = h // patch, w // patch
    rows = torch.arange(h, device=depth.device) // patch
    cols = torch.arange(w, device=depth.device) // patch
    patch_index = (rows[:, None] * p_w + cols[None, :]).expand(b, h, w)
    flat = (patch_index * bins + depth_bin(depth, bins, max_depth)).reshape(b, -1)
    hist = torch.zeros(b, p_h * p_w * bins, device=depth.device)
    hist.scatter_add_(1, flat, valid.reshape(b, -1).float())
    hist = hist.view(b, p_h * p_w, bins)
    count = hist.sum(-1, keepdim=True)
    return hist / count.clamp(min=1), count.squeeze(-1) > 0


class ViewPropertyHead(nn.Module):
    """Linear read-outs of patch tokens: dense cells and a depth distribution per patch.

    Args:
        channels: token width ``C``.
        subdivisions: cells per patch edge of the dense maps (``sub``).
        depth_bins / max_depth: the depth head's bins over ``[0, max_depth)`` chunk units; keep them equal to the
            flows' ``preset.flow.depth_cue`` so the head loads into :class:`DepthCue`.
    """

    def __init__(self, channels: int, subdivisions: int = 4, depth_bins: int = 64, max_depth: float = 4.0) -> None:
        super().__init__()
        self.subdivisions, self.max_depth = subdivisions, float(max_depth)
        self.dense = nn.Linear(channels, subdivisions**2 * DENSE_CHANNELS)
        self.depth_bins = nn.Linear(channels, depth_bins)  # DepthCue.head's shape and role

    @property
    def bins(self) -> int:
        return self.depth_bins.out_features

    def forward(self, tokens: Tensor, num_global_tokens: int) -> tuple[dict[str, Tensor], Tensor]:
        """tokens ``[B, G + P², C]`` → (cells: ``base_colour [B, 3, Q, Q]`` in [0, 1], ``normal [B, 3, Q, Q]`` unit,
        ``log_depth [B, 1, Q, Q]`` log metres, with ``Q = P · sub``; depth logits ``[B, P², D]`` float32)."""
        patches = tokens[:, num_global_tokens:]
        b, n, _ = patches.shape
        p, s = math.isqrt(n), self.subdivisions
        if p * p != n:
            raise ValueError(f"{n} patch tokens do not form a square grid")
        cells = self.dense(patches).float().view(b, p, p, s, s, DENSE_CHANNELS)
        cells = cells.permute(0, 5, 1, 3, 2, 4).reshape(b, DENSE_CHANNELS, p * s, p * s)
        out = {
            "base_colour": torch.sigmoid(cells[:, 0:3]),
            "normal": F.normalize(cells[:, 3:6], dim=1),
            "log_depth": cells[:, 6:7],
        }
        return out, self.depth_bins(patches).float()


def view_property_losses(
    head: ViewPropertyHead,
    tokens: Tensor,
    num_global_tokens: int,
    targets: dict[str, Tensor],
    patch: int,
    depth_unit_m: float,
    weights: dict[str, float],
) -> tuple[Tensor, dict[str, Tensor]]:
    """Loss of :class:`ViewPropertyHead` on ``tokens`` against full-resolution targets, and its metrics.

    targets: ``base_colour [B, 3, H, W]`` in [0, 1], ``normal [B, 3, H, W]`` camera frame, ``depth [B, H, W]``
    metres, ``valid [B, H, W]`` bool. ``depth_unit_m`` converts metres to the chunk units of the depth bins.
    weights: per term (``base_colour``, ``normal``, ``log_depth``, ``depth_bins``).

    Terms: L1 of base colour and log depth, 1 − cos of the normals (over cells with a valid pixel), and the
    cross-entropy of the depth distribution against each patch's depth histogram. Metrics: base-colour PSNR,
    absolute relative depth error, mean normal angle (degrees), and the depth target mass within one bin of
    the predicted mode.
    """
    pred, logits = head(tokens, num_global_tokens)
    cells = pred["base_colour"].shape[-1]
    valid, depth = targets["valid"], targets["depth"]
    log_depth = torch.log(depth.clamp(min=1e-3))[:, None]
    maps = torch.cat([targets["base_colour"], targets["normal"], log_depth], dim=1).float()
    pooled, has = pool_cells(maps, valid, cells)
    m = has[:, None].float()
    denom = m.sum().clamp(min=1)
    cos = (pred["normal"] * F.normalize(pooled[:, 3:6], dim=1)).sum(1, keepdim=True)  # [B, 1, Q, Q]
    hist, has_patch = patch_depth_histograms(depth / depth_unit_m, valid, patch, head.bins, head.max_depth)
    terms = {
        "base_colour": ((pred["base_colour"] - pooled[:, 0:3]).abs() * m).sum() / (3 * denom),
        "normal": ((1.0 - cos) * m).sum() / denom,
        "log_depth": ((pred["log_depth"] - pooled[:, 6:7]).abs() * m).sum() / denom,
        "depth_bins": DepthCue.supervision_loss(logits, hist, has_patch.float()),
    }
    loss = sum(weights.get(k, 1.0) * v for k, v in terms.items())
    with torch.no_grad():
        mse = (((pred["base_colour"] - pooled[:, 0:3]) ** 2) * m).sum() / (3 * denom)
        metrics = {
            **{f"loss_{k}": v.detach() for k, v in terms.items()},
            "base_colour_psnr": -10.0 * torch.log10(mse.clamp(min=1e-10)),
            "depth_abs_rel": (((pred["log_depth"] - pooled[:, 6:7]).exp() - 1.0).abs() * m).sum() / denom,
            "normal_deg": (torch.rad2deg(torch.acos(cos.clamp(-1, 1))) * m).sum() / denom,
            "depth_hit": DepthCue.mode_hit(logits, hist, has_patch.float()),
        }
    return loss, metrics
