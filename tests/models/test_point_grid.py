"""``PointGridCue`` (a deviation, off): input points counted per occupancy voxel of every latent cell."""

from __future__ import annotations

import pytest
import torch

from genrecon.models.point_grid import PointGridCue
from genrecon.models.projection import coords_to_points, voxel_centers


def _fine_grid(counts: torch.Tensor, shape: tuple[int, int, int], s: int) -> torch.Tensor:
    """counts ``[B, X·Y·Z, s³]`` back to the occupancy grid ``[B, X·s, Y·s, Z·s]``."""
    b = counts.shape[0]
    x, y, z = shape
    return counts.view(b, x, y, z, s, s, s).permute(0, 1, 4, 2, 5, 3, 6).reshape(b, x * s, y * s, z * s)


def test_counts_are_the_occupancy_grid_regrouped_by_cell_in_token_order() -> None:
    gen = torch.Generator().manual_seed(0)
    r, s = 4, 2
    occ = torch.rand(2, r * s, r * s, r * s, generator=gen) < 0.2
    idx = torch.nonzero(occ)  # [K, 4] (b, x, y, z)
    points = coords_to_points(idx[:, 1:], r * s)
    counts = PointGridCue(8, subdivisions=s).counts(points, idx[:, 0], 2, (r, r, r))
    assert counts.shape == (2, r**3, s**3)
    torch.testing.assert_close(_fine_grid(counts, (r, r, r), s), occ.float())
    # Cell i holds the voxels around the i-th token's centre (voxel_centers' order).
    centres = voxel_centers(r)
    for b, i in [(0, 0), (1, 37), (0, 63)]:
        inside = (idx[:, 0] == b) & ((points - centres[i]).abs() < 0.5 / r).all(-1)
        assert counts[b, i].sum() == inside.sum()


def test_points_outside_the_grid_are_dropped_and_repeats_add_up() -> None:
    cue = PointGridCue(8, subdivisions=2)
    points = torch.tensor([[0.1, 0.1, 0.1], [0.1, 0.1, 0.1], [0.6, 0.0, 0.0], [-0.51, 0.0, 0.0]])
    counts = cue.counts(points, torch.zeros(4, dtype=torch.long), 1, (2, 2, 2))
    assert counts.sum() == 2 and counts.max() == 2
    # A canvas continues the chunk's lattice: the point at x = 0.6 lies in the next chunk's first cells.
    canvas = cue.counts(points, torch.zeros(4, dtype=torch.long), 1, (4, 2, 2), resolution=2)
    assert canvas.sum() == 3
    torch.testing.assert_close(canvas.view(1, 4, 2, 2, 8)[:, :2], counts.view(1, 2, 2, 2, 8))


def test_untrained_cue_adds_nothing_and_a_trained_one_reads_the_counts() -> None:
    cue = PointGridCue(16, subdivisions=2)
    counts = torch.zeros(1, 8, 8)
    counts[0, 3, 5] = 4
    assert (cue(counts) == 0).all()
    torch.nn.init.normal_(cue.to_feature.weight)
    out = cue(counts)
    assert out.shape == (1, 8, 16)
    assert not torch.allclose(out[0, 3], out[0, 2]) and torch.allclose(out[0, 2], out[0, 4])
    with pytest.raises(ValueError, match="subdivisions"):
        PointGridCue(16, subdivisions=0)
