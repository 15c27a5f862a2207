"""Photo-consistency cue: the views' colours at sub-voxel points, a learning-free companion of the patch tokens.

Why: the published conditioning gathers DINOv2/v3 patch tokens (16-pixel patches) at each voxel. Trained from
scratch on a few hundred chunks, a small ViT learns slowly what a pretrained DINO brings for free, and a
16-pixel patch is coarser than the 4³ occupancy voxels inside one latent cell. Multi-view colour agreement at
sub-cell points is the classic space-carving cue: a point on a visible surface looks the same from every view
that sees it, a point in free space or inside an object generally does not, and the mean colour of a surface
point is its (shaded) albedo. ``PhotoConsistency`` gives the flow those statistics at S³ points per latent
cell; its embedding is added to the aggregated patch feature (the fused 3-D condition), so it trains, drops
out under CFG and is disabled by the projection ablation together with the rest of the pathway.

Not in the published GenRecon; switchable (``preset.photo_cue``), see docs/RESULTS.md for what it measured.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from genrecon.models.projection import Projection

STATS_PER_POINT = 5  # mean RGB (3), colour standard deviation (1), fraction of the real views that see it (1)


def sub_offsets(subdivisions: int, cell: float, device: torch.device | str | None = None) -> Tensor:
    """Offsets ``[S³, 3]`` of the S³ sub-cell centres from a cell centre, cell edge ``cell`` (ij order)."""
    axis = ((torch.arange(subdivisions, dtype=torch.float32, device=device) + 0.5) / subdivisions - 0.5) * cell
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)


def sample_bilinear(images: Tensor, image_idx: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """Colours at continuous pixel coordinates (pixel centres at integers, borders clamped).

    images ``[M, 3, H, W]``, image_idx / x / y ``[Q]`` -> ``[Q, 3]`` float32.
    """
    return _sample_pixels(_pixel_rows(images), images.shape[-2], images.shape[-1], image_idx, x, y)


def _pixel_rows(images: Tensor) -> Tensor:
    """``[M, C, H, W]`` -> ``[M·H·W, C]`` float32 rows, the layout the gathers read (one copy per call)."""
    return images.permute(0, 2, 3, 1).reshape(-1, images.shape[1]).float()


def _sample_pixels(flat: Tensor, h: int, w: int, image_idx: Tensor, x: Tensor, y: Tensor) -> Tensor:
    x, y = x.clamp(0, w - 1), y.clamp(0, h - 1)
    x0, y0 = x.floor(), y.floor()
    wx, wy = (x - x0)[:, None], (y - y0)[:, None]
    x0, y0 = x0.long(), y0.long()
    x1, y1 = (x0 + 1).clamp(max=w - 1), (y0 + 1).clamp(max=h - 1)
    base = image_idx * (h * w)

    def at(yy: Tensor, xx: Tensor) -> Tensor:
        return flat.index_select(0, base + yy * w + xx)

    top = at(y0, x0) * (1 - wx) + at(y0, x1) * wx
    bottom = at(y1, x0) * (1 - wx) + at(y1, x1) * wx
    return top * (1 - wy) + bottom * wy


class PhotoConsistency(nn.Module):
    """Per-token colour statistics of the views at S³ sub-points of the token's cell -> ``[P, C_cond]``.

    Args:
        resolution: the latent grid the tokens live on (cell edge 1/resolution in the chunk frame).
        cond_channels: width of the fused 3-D condition it is added to.
        subdivisions: S, sub-points per cell edge (4: the occupancy voxels inside an SS latent cell, and the
            O-Voxel voxels inside a shape-latent cell at the small preset).
        hidden: MLP width.
        batch_tokens: tokens whose S³ × N samples exist at a time (memory bound; no effect on the result).
    """

    def __init__(
        self, resolution: int, cond_channels: int, subdivisions: int = 4, hidden: int = 256, batch_tokens: int = 8192
    ) -> None:
        super().__init__()
        if subdivisions < 1 or batch_tokens < 1:
            raise ValueError("subdivisions and batch_tokens must be positive")
        self.resolution = resolution
        self.subdivisions = subdivisions
        self.batch_tokens = batch_tokens
        self.mlp = nn.Sequential(
            nn.Linear(STATS_PER_POINT * subdivisions**3, hidden), nn.GELU(), nn.Linear(hidden, cond_channels)
        )

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, subdivisions={self.subdivisions}"

    @torch.no_grad()
    def statistics(
        self, images: Tensor, points: Tensor, batch_idx: Tensor, w2c: Tensor, K: Tensor, view_mask: Tensor,
        visibility: Tensor | None = None,
    ) -> Tensor:
        """images ``[B, N, 3, H, W]`` in [0, 1], points ``[P, 3]`` cell centres (chunk frame), batch_idx ``[P]``,
        w2c ``[B, N, 4, 4]``, K ``[B, N, 3, 3]`` normalised, view_mask ``[B, N]`` -> ``[P, S³, 5]`` float32.

        visibility ``[P, N]`` bool (optional, :class:`genrecon.models.visibility.StructureVisibility`): a sub-point
        counts a view only where its cell is visible in it, so occluders' colours stay out of the statistics.
        A sub-point seen by no view gets zeros. Independent of the order of the views and of padded views.
        """
        b, n, _, h, w = images.shape
        s3 = self.subdivisions**3
        offsets = sub_offsets(self.subdivisions, 1.0 / self.resolution, points.device)
        real = view_mask.sum(dim=1).clamp(min=1).float()  # [B]
        pixels = _pixel_rows(images.reshape(b * n, *images.shape[2:]))  # once, shared by every token batch
        out = []
        for start in range(0, points.shape[0], self.batch_tokens):
            pts = points[start : start + self.batch_tokens].float()
            idx = batch_idx[start : start + self.batch_tokens].long()
            sub = (pts[:, None, :] + offsets).reshape(-1, 3)  # [Q, 3], Q = p·S³
            sub_idx = idx.repeat_interleave(s3)
            u, v, valid, _ = Projection.project(sub, sub_idx, w2c, K, view_mask)  # [Q, N]
            if visibility is not None:
                valid = valid & visibility[start : start + self.batch_tokens].repeat_interleave(s3, dim=0)
            image_idx = (sub_idx[:, None] * n + torch.arange(n, device=sub.device)).flatten()
            rgb = _sample_pixels(pixels, h, w, image_idx, (u * w - 0.5).flatten(), (v * h - 0.5).flatten())
            rgb = rgb.view(*u.shape, 3)
            weight = valid[..., None].float()
            count = weight.sum(dim=1)  # [Q, 1]
            mean = (rgb * weight).sum(dim=1) / count.clamp(min=1)
            var = (((rgb - mean[:, None]) ** 2) * weight).sum(dim=1) / count.clamp(min=1)
            std = var.mean(dim=-1, keepdim=True).clamp(min=0).sqrt()
            fraction = count / real[sub_idx][:, None]
            stats = torch.cat([mean, std, fraction], dim=-1)  # [Q, 5]
            out.append(stats.view(-1, s3, STATS_PER_POINT))
        if not out:
            return points.new_zeros(0, s3, STATS_PER_POINT, dtype=torch.float32)
        return torch.cat(out)

    def forward(
        self, images: Tensor, points: Tensor, batch_idx: Tensor, w2c: Tensor, K: Tensor, view_mask: Tensor,
        visibility: Tensor | None = None,
    ) -> Tensor:
        """Same inputs as :meth:`statistics` -> ``[P, C_cond]``; exactly 0 for a token no view sees."""
        stats = self.statistics(images, points, batch_idx, w2c, K, view_mask, visibility)
        seen = (stats[..., -1] > 0).any(dim=1, keepdim=True)  # [P, 1]
        # Centred inputs (colours and fractions live in [0, 1]): the MLP starts well-conditioned.
        h = self.mlp(stats.flatten(1) - 0.5)
        return h * seen.to(h.dtype)
