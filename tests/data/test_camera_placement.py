"""Camera placement inside rooms and the 40 % view rule."""

import numpy as np
import pytest
import trimesh

from genrecon.data.camera_placement import (
    CameraPlacementConfig,
    place_cameras,
    polygon_boundary_distance,
    select_views_for_box,
    view_count,
)
from genrecon.data.scenes.scene import Scene
from genrecon.geometry.cameras import camera_centers, intrinsics_from_fov, look_at, project_points
from genrecon.geometry.mesh import PBRMaterial, PBRMesh
from genrecon.render.embree import EmbreeRasterizer, RayCaster

CONFIG = CameraPlacementConfig(min_views=4, max_views=8)


def box(lo, hi, inward: bool = False) -> PBRMesh:
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    m = trimesh.creation.box(extents=hi - lo)
    faces = m.faces[:, ::-1] if inward else m.faces
    return PBRMesh(m.vertices + (lo + hi) / 2, faces, np.zeros(len(faces)), [PBRMaterial()])


def furnished_room(polygon: np.ndarray | None = None) -> Scene:
    mesh = PBRMesh.concatenate(
        [
            box([0, 0, 0], [4, 3.5, 2.6], inward=True),
            box([1.0, 1.0, 0], [2.2, 1.8, 0.75]),  # table
            box([2.8, 2.2, 0], [3.9, 3.4, 0.5]),  # bed
            box([0.05, 2.8, 0], [0.45, 3.45, 1.9]),  # shelf
            box([3.2, 0.3, 0], [3.6, 0.7, 2.2]),  # tall cabinet
        ]
    )
    polygon = np.array([[0, 0], [4, 0], [4, 3.5], [0, 3.5]], float) if polygon is None else polygon
    return Scene("room", mesh, polygon, height=2.6)


@pytest.fixture(scope="module")
def scene() -> Scene:
    return furnished_room()


@pytest.fixture(scope="module")
def rig(scene):
    return place_cameras(scene, np.random.default_rng(0), CONFIG)


def surface_distance(mesh: PBRMesh, points: np.ndarray) -> np.ndarray:
    """Exact distance of each point to the mesh (brute force over faces)."""
    tri = mesh.triangles()
    out = []
    for p in points:
        closest = trimesh.triangles.closest_point(tri, np.broadcast_to(p, (len(tri), 3)))
        out.append(np.linalg.norm(closest - p, axis=1).min())
    return np.array(out)


def test_view_count_follows_the_area_rule():
    cfg = CameraPlacementConfig()
    assert view_count(10.0, cfg) == 16  # ceil(15) clamped up to 16
    assert view_count(20.0, cfg) == 30
    assert view_count(29.9, cfg) == 45  # ceil(44.85)
    assert view_count(30.0, cfg) == 23  # halved density from 30 m²: ceil(22.5)
    assert view_count(200.0, cfg) == 150
    assert view_count(300.0, cfg) == 160  # clamped
    assert view_count(14.0, CONFIG) == 8


def test_cameras_inside_room_with_clearance(scene, rig):
    assert len(rig) == view_count(scene.floor_area, CONFIG) == 8
    xy = rig.positions[:, :2]
    assert np.all(scene.contains_xy(xy))
    assert np.all(polygon_boundary_distance(xy, scene.floor_polygon) >= CONFIG.margin_m)
    assert np.all((rig.positions[:, 2] >= 0.5) & (rig.positions[:, 2] <= 2.2))
    assert np.all(surface_distance(scene.mesh, rig.positions) >= CONFIG.clearance_m)
    np.testing.assert_allclose(camera_centers(rig.w2c), rig.positions, atol=1e-9)


def test_one_fov_per_room_in_range(rig):
    assert 49.0 <= np.rad2deg(rig.fov_x) <= 77.4
    np.testing.assert_allclose(rig.K, np.broadcast_to(intrinsics_from_fov(rig.fov_x), rig.K.shape))


def test_targets_are_visible_at_the_image_centre(scene, rig):
    assert np.all(surface_distance(scene.mesh, rig.targets) < 1e-9)  # targets lie on the surface
    dist = np.linalg.norm(rig.targets - rig.positions, axis=1)
    assert np.all(dist >= CONFIG.min_target_distance_m)
    uv, depth = project_points(rig.targets[:, None], rig.w2c, rig.K)
    np.testing.assert_allclose(uv[:, 0], 0.5, atol=1e-9)
    # Line of sight: nothing in front of the target along the ray ...
    dirs = (rig.targets - rig.positions) / dist[:, None]
    hits = RayCaster(scene.mesh.vertices, scene.mesh.faces).first_hits(rig.positions, dirs)
    assert np.all(hits.distance >= dist - CONFIG.line_of_sight_tolerance_m)
    # ... so the render's centre pixel (odd size: its centre is u = v = 0.5) sees the target.
    buf = EmbreeRasterizer().rasterize(scene.mesh.vertices, scene.mesh.faces, rig.w2c, rig.K, 9, 9)
    np.testing.assert_allclose(buf.depth[:, 4, 4].numpy(), depth[:, 0], atol=CONFIG.line_of_sight_tolerance_m)


def test_placement_is_deterministic(scene, rig):
    again = place_cameras(scene, np.random.default_rng(0), CONFIG)
    np.testing.assert_array_equal(again.w2c, rig.w2c)
    np.testing.assert_array_equal(again.targets, rig.targets)
    assert again.fov_x == rig.fov_x
    other = place_cameras(scene, np.random.default_rng(1), CONFIG)
    assert not np.allclose(other.positions, rig.positions)


def test_non_convex_floor_polygon():
    # An L-shaped floor inside the box mesh: no camera may stand in the missing quadrant.
    polygon = np.array([[0, 0], [4, 0], [4, 1.75], [2, 1.75], [2, 3.5], [0, 3.5]], float)
    scene = furnished_room(polygon)
    rig = place_cameras(scene, np.random.default_rng(3), CONFIG)
    xy = rig.positions[:, :2]
    assert len(rig) == view_count(scene.floor_area, CONFIG)
    assert np.all(scene.contains_xy(xy))
    assert np.all(polygon_boundary_distance(xy, polygon) >= CONFIG.margin_m)
    assert not np.any((xy[:, 0] > 2) & (xy[:, 1] > 1.75))


def test_select_views_for_box():
    K = intrinsics_from_fov(np.full(3, np.deg2rad(60.0)))
    box_lo_hi = np.array([[-0.5, -0.5, -0.5], [0.5, 0.5, 0.5]])
    w2c = np.stack(
        [
            look_at([0.0, -1.6, 0.3], [0, 0, 0]),  # close and facing the cube: fills most of the view
            look_at([0.0, -6.0, 0.3], [0, 0, 0]),  # far away: a small box
            look_at([0.0, -1.6, 0.3], [0, -5, 0]),  # facing away
        ]
    )
    mask = select_views_for_box(w2c, K, box_lo_hi)
    np.testing.assert_array_equal(mask, [True, False, False])
    assert select_views_for_box(w2c, K, box_lo_hi, min_coverage=1e-3).tolist() == [True, True, False]
