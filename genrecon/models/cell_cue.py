"""Sub-patch read-out of each view at the voxel's own pixel (a deviation from GenRecon, off by default).

The published pathway hands a voxel the whole token of the 16-pixel patch it projects into. After
``stage=view_pretrain`` that token holds, linearly, a 4 × 4 grid of cells of base colour, camera-frame normal and
log depth (:class:`genrecon.models.view_heads.ViewPropertyHead`); but the aggregator is not told which of the 16
cells the voxel falls in, so it can only use what the cells share. The colour of the voxel's own cell is what a
de-shading read-out of the views needs (``benchmarks/view_evidence_bound.py``).

``CellCue`` does that: a linear head (the shape of ``ViewPropertyHead.dense``, loaded from the pretraining) turns
every token into ``sub²`` cells of ``cell_channels`` values; the projection gathers them with the token; the cue
picks the cell under the voxel's (u, v) and adds, through a zero-initialised Linear, ``[cell values, log camera
depth]`` to the per-view feature before the aggregator. The voxel's own depth lets a linear map compare it with
the cell's predicted depth. An untrained cue leaves the pathway as published.

Needs ``nearest`` token sampling (the cell index is taken inside the patch the token belongs to).

Measured (session 9, H100, same run, 24 held-out chunks): the texture flow with the pretrained encoder gains
+0.11 ± 0.06 dB with the cue (−0.07 dB as the one-step estimate), so it stays off; ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from genrecon.models.view_heads import DENSE_CHANNELS


class CellCue(nn.Module):
    """Per-token cells and the cell under each (voxel, view) projection.

    Args:
        channels: token width ``C`` (the aggregator's width).
        subdivisions: cells per patch edge (``sub``; ``ViewPropertyHead``'s subdivisions to load it).
        cell_channels: values per cell (``DENSE_CHANNELS`` = base colour, normal, log depth to load it).
    """

    def __init__(self, channels: int, subdivisions: int = 4, cell_channels: int = DENSE_CHANNELS) -> None:
        super().__init__()
        if subdivisions < 1 or cell_channels < 1:
            raise ValueError(f"need subdivisions ≥ 1 and cell_channels ≥ 1, got {subdivisions}, {cell_channels}")
        self.channels, self.subdivisions, self.cell_channels = channels, subdivisions, cell_channels
        self.head = nn.Linear(channels, subdivisions**2 * cell_channels)
        self.to_feature = nn.Linear(cell_channels + 1, channels)
        nn.init.zeros_(self.to_feature.weight)
        nn.init.zeros_(self.to_feature.bias)

    @property
    def extra_channels(self) -> int:
        """Channels :meth:`extend_tokens` appends."""
        return self.subdivisions**2 * self.cell_channels

    def extra_repr(self) -> str:
        return f"channels={self.channels}, subdivisions={self.subdivisions}, cell_channels={self.cell_channels}"

    def extend_tokens(self, tokens: Tensor) -> Tensor:
        """tokens ``[B, N, T, C']`` → ``[B, N, T, C' + sub²·cell_channels]``: the cells appended (computed from
        the first ``C`` channels, the encoder's own), so one projection gathers both."""
        return torch.cat([tokens, self.head(tokens[..., : self.channels]).to(tokens.dtype)], dim=-1)

    def pick(self, cells: Tensor, u: Tensor, v: Tensor, patch_grid: int) -> Tensor:
        """cells ``[K, N, sub²·Cc]`` (the gathered extension), u, v ``[K, N]`` in [0, 1) → the cell under each
        projection ``[K, N, Cc]``; cells are row-major within the patch, as ``ViewPropertyHead`` lays them out."""
        s = self.subdivisions
        col = ((u.float() * patch_grid).frac() * s).floor().clamp(0, s - 1).long()
        row = ((v.float() * patch_grid).frac() * s).floor().clamp(0, s - 1).long()
        index = (row * s + col)[..., None, None].expand(*u.shape, 1, self.cell_channels)
        return cells.view(*u.shape, s * s, self.cell_channels).gather(-2, index).squeeze(-2)

    def forward(self, feats: Tensor, cells: Tensor, u: Tensor, v: Tensor, depth: Tensor, patch_grid: int) -> Tensor:
        """feats ``[K, N, C]``, cells ``[K, N, sub²·Cc]``, u / v / depth ``[K, N]`` (camera z, chunk units) →
        ``[K, N, C]`` with the cue added (zero where a projection is invalid is the aggregator's business)."""
        cell = self.pick(cells, u, v, patch_grid).float()
        log_z = torch.log(depth.float().clamp(min=1e-3))[..., None]
        return feats + self.to_feature(torch.cat([cell, log_z], dim=-1)).to(feats.dtype)
