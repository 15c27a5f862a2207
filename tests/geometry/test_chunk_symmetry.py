"""genrecon.geometry.chunk_symmetry: grids, cameras and views of a turned or mirrored chunk agree."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from genrecon.data.augment import VoxelAugmentation, augment_voxels
from genrecon.geometry.cameras import intrinsics_from_fov, look_at, project_points
from genrecon.geometry.chunk_symmetry import (
    symmetry_matrix,
    transform_cameras,
    transform_grid,
    transform_views,
)

ELEMENTS = list(itertools.product(range(4), (False, True)))


def _centre(index: tuple[int, int, int], r: int) -> torch.Tensor:
    return (torch.tensor(index, dtype=torch.float64) + 0.5) / r - 0.5


@pytest.mark.parametrize("turns, mirror", ELEMENTS)
def test_a_voxel_moves_to_the_transformed_centre(turns, mirror):
    r = 6
    grid = torch.zeros(1, r, r, r)
    grid[0, 1, 4, 2] = 1.0
    out = transform_grid(grid, turns, mirror)
    (i, j, k), = torch.nonzero(out[0]).tolist()
    a = symmetry_matrix(turns, mirror, torch.float64)
    assert torch.allclose(_centre((i, j, k), r), a @ _centre((1, 4, 2), r))
    assert torch.linalg.det(a).item() == pytest.approx(-1.0 if mirror else 1.0)


@pytest.mark.parametrize("turns, mirror", ELEMENTS)
def test_dense_and_sparse_grids_turn_alike(turns, mirror):
    """The autoencoders' sparse augmentation and this dense one are the same element for the same draw."""
    r, coords = 5, torch.tensor([[0, 0, 1, 3], [0, 4, 2, 0], [0, 2, 2, 2]])
    dense = torch.zeros(r, r, r)
    dense[coords[:, 1], coords[:, 2], coords[:, 3]] = 1.0
    # find a generator seed that draws this element for one sample (augment_voxels draws turns, then mirror)
    for seed in range(200):
        g = torch.Generator().manual_seed(seed)
        t, m = int(torch.randint(0, 4, (1,), generator=g)), bool(torch.randint(0, 2, (1,), generator=g))
        if (t, m) == (turns, mirror):
            break
    sparse, _ = augment_voxels(coords, torch.zeros(3, 3), r, torch.Generator().manual_seed(seed),
                               VoxelAugmentation(permute_rgb=False))
    expected = torch.zeros(r, r, r)
    expected[sparse[:, 1], sparse[:, 2], sparse[:, 3]] = 1.0
    assert torch.equal(transform_grid(dense, turns, mirror), expected)


def _cameras(n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    w2c, K = [], []
    for _ in range(n):
        eye = rng.uniform(-1.2, 1.2, 3)
        eye[2] = rng.uniform(0.0, 0.6)
        w2c.append(look_at(eye, rng.uniform(-0.2, 0.2, 3)))
        k = intrinsics_from_fov(np.radians(rng.uniform(50, 80)))
        k[0, 1] = rng.uniform(-0.02, 0.02)  # a skew, so its sign change is exercised
        k[0, 2] += rng.uniform(-0.05, 0.05)
        K.append(k)
    return torch.tensor(np.stack(w2c)), torch.tensor(np.stack(K))


@pytest.mark.parametrize("turns, mirror", ELEMENTS)
def test_a_transformed_point_projects_where_the_point_did(turns, mirror):
    rng = np.random.default_rng(turns + 4 * mirror)
    w2c, K = _cameras(3, rng)
    points = torch.tensor(rng.uniform(-0.5, 0.5, (50, 3)))
    uv, depth = project_points(points[None], w2c[:, None], K[:, None])
    a = symmetry_matrix(turns, mirror, torch.float64)
    w2c_t, K_t = transform_cameras(w2c, K, turns, mirror)
    uv_t, depth_t = project_points((points @ a.T)[None], w2c_t[:, None], K_t[:, None])
    assert torch.allclose(depth_t, depth, atol=1e-12)
    want = torch.stack([1 - uv[..., 0], uv[..., 1]], -1) if mirror else uv
    assert torch.allclose(uv_t, want, atol=1e-12)
    # the camera stays a proper rotation (right-handed), so every camera-frame rule still holds
    assert torch.allclose(torch.linalg.det(w2c_t[:, :3, :3]), torch.ones(3, dtype=torch.float64))


def test_a_mirrored_view_shows_the_same_colour_at_the_mirrored_point():
    rng = np.random.default_rng(0)
    w2c, K = _cameras(1, rng)
    size = 16
    image = torch.tensor(rng.uniform(0, 1, (3, size, size)))
    points = torch.tensor(rng.uniform(-0.3, 0.3, (40, 3)))

    def colours(img, w2c_, K_, pts):
        uv, depth = project_points(pts, w2c_[0], K_[0])
        inside = (depth > 0) & (uv >= 0).all(-1) & (uv < 1).all(-1)
        col = (uv[:, 0] * size).floor().long().clamp(0, size - 1)
        row = (uv[:, 1] * size).floor().long().clamp(0, size - 1)
        return img[:, row, col], inside

    base, inside = colours(image, w2c, K, points)
    a = symmetry_matrix(1, True, torch.float64)
    w2c_t, K_t = transform_cameras(w2c, K, 1, True)
    moved, inside_t = colours(transform_views(image, True), w2c_t, K_t, points @ a.T)
    assert inside.sum() > 10 and torch.equal(inside, inside_t)
    assert torch.equal(moved[:, inside], base[:, inside])


def test_padded_cameras_stay_zero():
    w2c, K = torch.zeros(2, 4, 4), torch.zeros(2, 3, 3)
    w2c_t, K_t = transform_cameras(w2c, K, 3, True)
    assert not w2c_t.any() and not K_t.any()
