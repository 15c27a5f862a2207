"""TSDF fusion: rendered depth maps of a box fuse back into the box surface; unobserved space stays empty."""

import numpy as np
import pytest

from genrecon.geometry.cameras import intrinsics_from_fov, look_at
from genrecon.geometry.mesh import PBRMaterial
from genrecon.geometry.primitives import box
from genrecon.metrics.surface import chamfer, precision_recall_fscore, sample_mesh, surface_distances
from genrecon.pipelines.tsdf import tsdf_fusion
from genrecon.render.embree import EmbreeRasterizer
from genrecon.render.shading import render_views

VOXEL = 0.02
LO, HI = np.array([-0.3, -0.2, 0.0]), np.array([0.3, 0.2, 0.3])


@pytest.fixture(scope="module")
def box_views():
    """The box and 96 x 96 depth renders from the 8 diagonal directions (every face seen by 4 cameras)."""
    mesh = box(LO, HI, PBRMaterial())
    centre = (LO + HI) / 2
    dirs = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=float)
    w2c = look_at(centre + 1.4 * dirs, centre)
    K = np.repeat(intrinsics_from_fov(np.radians(60))[None], 8, axis=0)
    depth = render_views(mesh, EmbreeRasterizer(), w2c, K, 96, 96).depth
    return mesh, depth, w2c, K


def test_fused_box_matches_the_box(box_views):
    mesh, depth, w2c, K = box_views
    vertices, faces = tsdf_fusion(depth, w2c, K, voxel_size=VOXEL, trunc=4 * VOXEL)
    assert len(faces) > 100
    pred_pts, pred_n = sample_mesh(vertices, faces, 50_000, seed=0)
    gt_pts, gt_n = sample_mesh(mesh.vertices, mesh.faces, 50_000, seed=1)
    match = surface_distances(pred_pts, gt_pts)
    assert float(chamfer(pred_pts, gt_pts, match)) < 2 * VOXEL
    assert float(precision_recall_fscore(pred_pts, gt_pts, VOXEL, match)["f_harmonic"]) > 0.9
    # faces are wound outwards like the box's (signed, unlike normal consistency)
    signed = (pred_n * gt_n[match.pred_to_gt_idx.numpy()]).sum(1)
    assert signed.mean() > 0.5  # 0.82: the fused faces are bumpy at this resolution, inward would be < 0


def test_unobserved_space_behind_a_wall_stays_empty():
    """One camera sees the plane z = 2: the fused surface is that plane alone, with no wall at the far end
    of the truncation band, where observed voxels meet the unobserved ones behind the surface."""
    depth = np.full((1, 32, 32), 2.0)
    K = intrinsics_from_fov(np.pi / 2)[None]
    vertices, faces = tsdf_fusion(depth, np.eye(4)[None], K, voxel_size=0.05, trunc=0.2)
    assert len(faces) > 0
    assert np.abs(vertices[:, 2] - 2.0).max() < 0.05


def test_explicit_bounds_limit_the_grid(box_views):
    _, depth, w2c, K = box_views
    bounds = np.array([[-0.5, -0.5, -0.1], [0.0, 0.5, 0.5]])  # the half x < 0
    vertices, faces = tsdf_fusion(depth, w2c, K, voxel_size=VOXEL, bounds=bounds)
    assert len(faces) > 0 and vertices[:, 0].max() <= 0.0 + 1e-9


def test_empty_depth_is_an_error():
    with pytest.raises(ValueError, match="no valid depth"):
        tsdf_fusion(np.zeros((1, 8, 8)), np.eye(4)[None], intrinsics_from_fov(1.0)[None])
