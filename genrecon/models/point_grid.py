"""Input points voxelised inside every latent cell (a deviation from GenRecon, off by default).

Session 23 measured where the SS flow's voxels go when its depth cue reads depths from points covering a quarter of
the seen surface: 95 % of its voxels lie within one voxel of the truth, yet the voxel IoU at 64³ stops at 0.57,
because the surfaces come out a voxel too thick or a voxel off. The depth cue cannot say better: its bins are four
voxels of a 64³ grid deep, one latent cell, and it is read at each latent cell's centre. The latent (16³ × 8) has to
say which of a cell's 4³ voxels hold the surface.

``PointGridCue`` hands that to the model directly: the points falling into each latent cell are counted per
occupancy voxel (``subdivisions³`` counts per cell, ``log1p``), and a zero-initialised Linear adds them to the
cell's 3-D condition, which reaches every transformer block. An untrained cue leaves the model as it was. The
points are the stage's (``stage.module.point_depth``): simulated from the occupancy in training, the input cloud
at inference, or plane-sweep stereo from the views.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class PointGridCue(nn.Module):
    """Per-cell point counts at the occupancy resolution → an addition to the 3-D condition.

    Args:
        channels: width ``C`` of the 3-D condition.
        subdivisions: occupancy voxels per latent cell edge (``sub``: 4 for a 16³ latent of a 64³ occupancy).
    """

    def __init__(self, channels: int, subdivisions: int = 4) -> None:
        super().__init__()
        if subdivisions < 1:
            raise ValueError(f"need subdivisions ≥ 1, got {subdivisions}")
        self.channels, self.subdivisions = channels, subdivisions
        self.to_feature = nn.Linear(subdivisions**3, channels)
        nn.init.zeros_(self.to_feature.weight)
        nn.init.zeros_(self.to_feature.bias)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, subdivisions={self.subdivisions}"

    @torch.no_grad()
    def counts(self, points: Tensor, batch_idx: Tensor, num_samples: int, shape: tuple[int, int, int],
               resolution: int | None = None) -> Tensor:
        """Points per occupancy voxel of every cell ``[B, X·Y·Z, sub³]``, cells flattened x·Y·Z + y·Z + z (the order
        of :func:`genrecon.models.projection.voxel_centers` and of a canvas' cells), voxels inside a cell likewise.

        points ``[M, 3]`` in the grid frame: cell ``(0, 0, 0)`` starts at ``-0.5`` and cells are ``1 / resolution``
        wide (default ``shape[0]``: one chunk; a canvas of several chunks passes the chunk's resolution);
        batch_idx ``[M]``. Points outside the grid are dropped."""
        s = self.subdivisions
        r = shape[0] if resolution is None else resolution
        fine = torch.floor((points.float() + 0.5) * (r * s)).long()  # occupancy-voxel coordinates
        res = torch.tensor(shape, device=points.device)
        inside = ((fine >= 0) & (fine < res * s)).all(-1)
        fine, b = fine[inside], batch_idx[inside]
        cell, sub = fine // s, fine % s
        x, y, z = shape
        cell_index = (cell[:, 0] * y + cell[:, 1]) * z + cell[:, 2]
        sub_index = (sub[:, 0] * s + sub[:, 1]) * s + sub[:, 2]
        flat = (b * (x * y * z) + cell_index) * s**3 + sub_index
        out = torch.zeros(num_samples * x * y * z * s**3, device=points.device)
        out.index_add_(0, flat, torch.ones(len(flat), device=points.device))
        return out.view(num_samples, x * y * z, s**3)

    def forward(self, counts: Tensor) -> Tensor:
        """counts ``[B, L, sub³]`` (:meth:`counts`) → the condition's addition ``[B, L, C]``."""
        return self.to_feature(torch.log1p(counts).to(self.to_feature.weight.dtype))
