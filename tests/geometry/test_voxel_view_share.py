"""voxel_view_share: how much of a view a chunk's occupied voxels cover."""

from __future__ import annotations

import numpy as np

from genrecon.geometry.cameras import voxel_view_share


def _camera(z: float) -> np.ndarray:
    """Looking along +z from (0, 0, z)."""
    w2c = np.eye(4)
    w2c[2, 3] = -z
    return w2c


def test_a_wall_fills_a_facing_view_and_nothing_behind_the_camera():
    occ = np.zeros((8, 8, 8), dtype=bool)
    occ[:, :, 7] = True  # the plane z ≈ +0.44, spanning the cube in x and y
    K = np.array([[[0.5, 0, 0.5], [0, 0.5, 0.5], [0, 0, 1]]] * 3)
    w2c = np.stack([_camera(-1.0), _camera(1.0), _camera(-10.0)])
    share = voxel_view_share(occ, w2c, K, size=8)
    # From z = -1 the wall (1.44 away, half-width 0.44) covers about the middle 60 % of each axis.
    assert 0.2 < share[0] < 0.5
    assert share[1] == 0.0  # the wall is behind this camera
    assert 0 < share[2] < share[0]  # far away: a few pixels
    assert np.all(voxel_view_share(np.zeros_like(occ), w2c, K) == 0)
