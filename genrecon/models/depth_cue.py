"""Ray-depth evidence for the projection pathway (a deviation from GenRecon, off by default).

The published pathway gives every voxel on a camera ray the same patch token: a view alone cannot say how far
along its ray a surface lies, and only agreement across views can place it. Following Lift-Splat, a linear head
predicts for every patch token a categorical distribution over ``bins`` depths in ``[0, max_depth)`` chunk
units. A (voxel, view) pair reads that distribution at the voxel's own camera depth (linear between bin
centres) as a density ``d`` relative to the uniform one, and ``[d, log d]`` (1 and 0 when uninformed) goes
through a zero-initialised Linear into the per-view feature before the view aggregator. An untrained cue
therefore leaves the pathway as published; what the head learns about depth comes from the losses behind the
aggregator, and, with depth supervision (BEVDepth's lesson: Lift-Splat's implicit depth stays poor without it),
from :func:`patch_depth_targets`: the depths of the chunk's own surface points seen through each patch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from genrecon.models.plane_sweep import PlaneSweep

_EPS = 1e-6


class DepthCue(nn.Module):
    """Depth distribution per patch token and its evidence at each voxel's depth.

    Args:
        channels: token width ``C`` (the aggregator's width).
        bins: depth bins ``D`` (uniform over ``[0, max_depth)``).
        max_depth: far end of the bins in chunk units (the chunk edge is 1); deeper voxels read the last bin.
        sweep: keyword arguments of :class:`genrecon.models.plane_sweep.PlaneSweep` (e.g. ``{channels: 16}``) to
            correct the head's per-view logits by matching across the views (a deviation; None: off). The
            tokens' cameras must then be passed as ``geometry=(w2c, K, view_mask)``.
    """

    def __init__(self, channels: int, bins: int = 64, max_depth: float = 4.0,
                 sweep: dict[str, Any] | None = None) -> None:
        super().__init__()
        if bins < 2 or max_depth <= 0:
            raise ValueError(f"need bins ≥ 2 and max_depth > 0, got {bins}, {max_depth}")
        self.channels, self.bins, self.max_depth = channels, bins, float(max_depth)
        self.head = nn.Linear(channels, bins)
        self.sweep = PlaneSweep(channels, bins, max_depth, **sweep) if sweep is not None else None
        self.to_feature = nn.Linear(2, channels)
        nn.init.zeros_(self.to_feature.weight)
        nn.init.zeros_(self.to_feature.bias)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, bins={self.bins}, max_depth={self.max_depth}"

    def token_logits(self, tokens: Tensor, num_global_tokens: int = 0,
                     geometry: tuple[Tensor, Tensor, Tensor] | None = None) -> Tensor:
        """Depth logits ``[B, N, T, D]`` of tokens ``[B, N, T, C]``: the head's, and with the sweep its corrections
        on the patch tokens (after ``num_global_tokens`` global ones); geometry: w2c ``[B, N, 4, 4]``, normalised
        K ``[B, N, 3, 3]``, view_mask ``[B, N]``."""
        logits = self.head(tokens)
        if self.sweep is None:
            return logits
        if geometry is None:
            raise ValueError("this depth cue matches across views (sweep): pass geometry=(w2c, K, view_mask)")
        g = num_global_tokens
        correction = self.sweep(tokens, *geometry, num_global_tokens=g).to(logits.dtype)
        return torch.cat([logits[:, :, :g], logits[:, :, g:] + correction], dim=2)

    def extend_tokens(self, tokens: Tensor, patch_logits: Tensor | None = None, num_global_tokens: int = 0,
                      geometry: tuple[Tensor, Tensor, Tensor] | None = None) -> Tensor:
        """tokens ``[B, N, T, C]`` → ``[B, N, T, C + D]``: each token with its depth logits appended
        (:meth:`token_logits`), so one projection gathers both. ``patch_logits [B, N, P², D]`` (e.g.
        :func:`histogram_logits`) replace them for the patch tokens, which follow ``num_global_tokens`` global ones
        (those then get uniform logits, zeros)."""
        if patch_logits is None:
            logits = self.token_logits(tokens, num_global_tokens, geometry)
            return torch.cat([tokens, logits.to(tokens.dtype)], dim=-1)
        b, n, t, _ = tokens.shape
        if patch_logits.shape != (b, n, t - num_global_tokens, self.bins):
            raise ValueError(f"patch_logits {tuple(patch_logits.shape)} do not fit tokens {tuple(tokens.shape)} with "
                             f"{num_global_tokens} global tokens and {self.bins} depth bins")
        glob = patch_logits.new_zeros(b, n, num_global_tokens, self.bins)
        return torch.cat([tokens, torch.cat([glob, patch_logits], dim=2).to(tokens.dtype)], dim=-1)

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

    def patch_logits(self, tokens: Tensor, num_global_tokens: int,
                     geometry: tuple[Tensor, Tensor, Tensor] | None = None) -> Tensor:
        """tokens ``[B, N, G + P², C]`` → depth logits of the patch tokens ``[B, N, P², D]`` float32
        (:meth:`token_logits`)."""
        if self.sweep is None:
            return self.head(tokens[:, :, num_global_tokens:]).float()
        return self.token_logits(tokens, num_global_tokens, geometry)[:, :, num_global_tokens:].float()

    @staticmethod
    def supervision_loss(logits: Tensor, target: Tensor, has: Tensor) -> Tensor:
        """Cross-entropy of logits ``[B, N, P², D]`` against target distributions ``[B, N, P², D]``, averaged over
        the patches with a target (``has [B, N, P²]``); 0 when there are none."""
        ce = -(target * F.log_softmax(logits, dim=-1)).sum(-1)
        return (ce * has).sum() / has.sum().clamp(min=1)

    @staticmethod
    def mode_hit(logits: Tensor, target: Tensor, has: Tensor) -> Tensor:
        """Share of the target's mass within one bin of the predicted mode, averaged over supervised patches."""
        mode = logits.argmax(-1, keepdim=True)  # [B, N, P², 1]
        near = (torch.arange(logits.shape[-1], device=logits.device) - mode).abs() <= 1
        return ((target * near).sum(-1) * has).sum() / has.sum().clamp(min=1)


def merge_logits(head: Tensor, given: Tensor, has: Tensor) -> Tensor:
    """The given logits ``[B, N, P², D]`` where ``has [B, N, P²]``, the head's ``[B, N, P², D]`` elsewhere."""
    return torch.where(has[..., None], given.to(head.dtype), head)


def histogram_logits(target: Tensor, has: Tensor, floor: float = 1e-3) -> Tensor:
    """Depth logits ``[B, N, P², D]`` whose softmax is the distribution ``target [B, N, P², D]`` (each bin at least
    ``floor`` before renormalising, so log stays finite), and uniform (zeros) where ``has [B, N, P²]`` is False: a
    depth head that knows the depths of :func:`patch_depth_targets` (the oracle diagnostic: the true ones; the
    point depth: those of the input points)."""
    logits = target.float().clamp(min=floor).log()
    return torch.where(has[..., None], logits, torch.zeros_like(logits))


def depth_bin(depth: Tensor, bins: int, max_depth: float) -> Tensor:
    """Index of the uniform bin of ``[0, max_depth)`` holding each depth (deeper ones in the last bin): the binning
    of every depth-histogram target."""
    return (depth / max_depth * bins).floor().clamp(0, bins - 1).long()


def patch_depth_targets(
    u: Tensor,
    v: Tensor,
    depth: Tensor,
    valid: Tensor,
    batch_idx: Tensor,
    num_samples: int,
    patch_grid: int,
    subcells: int,
    bins: int,
    max_depth: float,
) -> tuple[Tensor, Tensor]:
    """Depth distribution per patch of the nearest surface points, from projected points (a z-buffer).

    Each patch is split into ``subcells²`` cells; a cell keeps the smallest depth of the points projecting into it
    (the first surface along its rays, among the given points), and a patch's target is the histogram of its
    cells' depths over ``bins`` uniform bins of ``[0, max_depth)`` (deeper clamped into the last). Choose
    ``subcells`` so neighbouring surface points project less than a cell apart, or back surfaces show through.

    u, v, depth, valid ``[K, N]`` (``Projection.project`` of the points), batch_idx ``[K]`` →
    target ``[B, N, P², D]`` float32 (rows sum to 1 where ``has``), has ``[B, N, P²]`` bool.
    """
    zbuf = cell_zbuffer(u, v, depth, valid, batch_idx, num_samples, patch_grid * subcells)
    return zbuffer_histograms(zbuf, patch_grid, subcells, bins, max_depth)


def cell_zbuffer(u: Tensor, v: Tensor, depth: Tensor, valid: Tensor, batch_idx: Tensor, num_samples: int,
                 cells: int, zbuf: Tensor | None = None) -> Tensor:
    """Smallest depth of the projected points in each of ``cells²`` cells of every view: ``[B, N, cells, cells]``
    float32, inf where none lands. u, v, depth, valid ``[K, N]`` (``Projection.project``), batch_idx ``[K]``; pass
    the previous result as ``zbuf`` to add points batch by batch."""
    n = u.shape[1]
    if zbuf is None:
        zbuf = torch.full((num_samples, n, cells, cells), float("inf"), device=u.device)
    flat = cell_index(u, v, batch_idx, n, cells)
    out = zbuf.flatten().scatter_reduce(0, flat[valid], depth[valid].float(), reduce="amin", include_self=True)
    return out.view_as(zbuf)


def cell_index(u: Tensor, v: Tensor, batch_idx: Tensor, num_views: int, cells: int) -> Tensor:
    """Flat index ``[K, N]`` into a ``[B, N, cells, cells]`` grid of the cell each projection ``u, v [K, N]`` falls in."""
    col = (u * cells).floor().clamp(0, cells - 1).long()
    row = (v * cells).floor().clamp(0, cells - 1).long()
    view = torch.arange(num_views, device=u.device)
    return ((batch_idx[:, None] * num_views + view) * cells + row) * cells + col


def zbuffer_histograms(zbuf: Tensor, patch_grid: int, subcells: int, bins: int,
                       max_depth: float) -> tuple[Tensor, Tensor]:
    """z-buffer ``[B, N, P·s, P·s]`` (:func:`cell_zbuffer`, ``s = subcells``) → the histogram of each patch's cell
    depths over ``bins`` uniform bins of ``[0, max_depth)``: target ``[B, N, P², D]`` (rows sum to 1 where
    ``has``), has ``[B, N, P²]`` bool."""
    b, n, p, s = zbuf.shape[0], zbuf.shape[1], patch_grid, subcells
    # [B, N, P, s, P, s] -> [B, N, P², s²]: the cells of each patch.
    zbuf = zbuf.view(b, n, p, s, p, s).permute(0, 1, 2, 4, 3, 5).reshape(b, n, p * p, s * s)
    seen = torch.isfinite(zbuf)
    index = depth_bin(torch.where(seen, zbuf, torch.zeros_like(zbuf)), bins, max_depth)
    hist = torch.zeros(b, n, p * p, bins, device=zbuf.device)
    hist.scatter_add_(-1, index, seen.float())
    count = hist.sum(-1, keepdim=True)
    has = count.squeeze(-1) > 0
    return hist / count.clamp(min=1), has
