"""Chunk sampling follows the published rules; cropping is the exact surface ∩ cube."""

import numpy as np
import pytest

from genrecon.geometry.chunks import Chunk, clip_mesh_to_box, crop_to_chunk, sample_training_chunk
from genrecon.geometry.mesh import PBRMaterial, PBRMesh, sample_surface


def _box_mesh(lo, hi, material=0, n_materials=1) -> PBRMesh:
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    corners = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], float)
    v = lo + corners * (hi - lo)
    faces = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                      [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])
    mats = [PBRMaterial(name=f"m{i}") for i in range(n_materials)]
    return PBRMesh(v, faces, np.full(len(faces), material), mats, uv=corners[:, :2].copy())


def test_chunk_transform_maps_cube_to_unit_box():
    chunk = Chunk(center=(2.0, 3.0, 1.4), edge_m=2.8, yaw=0.7)
    corners = chunk.corners_world()
    m = chunk.chunk_from_world
    local = corners @ m[:3, :3].T + m[:3, 3]
    assert np.allclose(np.abs(local[:8]), 0.5)
    assert np.allclose(local[8], 0.0)
    # z stays up and the scale is uniform: a similarity
    assert np.allclose(m[2, :3], [0, 0, 1 / 2.8])
    r = m[:3, :3] * 2.8
    assert np.allclose(r @ r.T, np.eye(3))


def test_sampled_chunks_rest_on_the_floor_within_published_ranges():
    rng = np.random.default_rng(0)
    for _ in range(200):
        c = sample_training_chunk(rng, np.array([0.0, 0.0]), np.array([6.0, 4.0]))
        assert 2.7 <= c.edge_m <= 3.0
        assert c.center[2] == pytest.approx(c.edge_m / 2)  # bottom face at z = 0
        assert c.edge_m / 2 - 1.0 <= c.center[0] <= 6.0 - c.edge_m / 2 + 1.0
        assert 0.0 <= c.yaw < 2 * np.pi


def test_clip_keeps_exactly_the_surface_inside_the_box():
    mesh = _box_mesh([-1, -1, -1], [1, 1, 1])
    clipped = clip_mesh_to_box(mesh, np.array([-0.5, -2.0, -2.0]), np.array([2.0, 2.0, 2.0]))
    # remaining surface: the +x face (4 m²) and 4 side faces cut to 1.5 of their 2 m width (4 x 3 m²)
    assert clipped.face_areas().sum() == pytest.approx(4.0 + 4 * 3.0)
    assert clipped.vertices[:, 0].min() == pytest.approx(-0.5)
    # the cut is welded: every edge of the open box is shared by two faces except the cut rim
    import trimesh

    tm = trimesh.Trimesh(clipped.vertices, clipped.faces, process=False)
    boundary = trimesh.grouping.group_rows(tm.edges_sorted, require_count=1)
    rim = tm.vertices[tm.edges_sorted[boundary]]
    assert np.allclose(rim[..., 0], -0.5)


def test_clip_interpolates_uv_and_keeps_materials():
    mesh = _box_mesh([0, 0, 0], [1, 1, 1], material=1, n_materials=2)
    clipped = clip_mesh_to_box(mesh, np.array([0.0, 0.0, 0.0]), np.array([0.5, 1.0, 1.0]))
    assert set(np.unique(clipped.face_material)) == {1}
    assert clipped.uv is not None and clipped.uv.min() >= 0 and clipped.uv.max() <= 1


def test_crop_to_chunk_returns_chunk_frame_surface():
    room = _box_mesh([0, 0, 0], [6, 5, 3])  # floor, walls, ceiling of a 6 x 5 x 3 m room
    chunk = Chunk(center=(1.4, 1.4, 1.4), edge_m=2.8, yaw=0.0)
    local = crop_to_chunk(room, chunk)
    assert np.all(local.vertices >= -0.5 - 1e-9) and np.all(local.vertices <= 0.5 + 1e-9)
    pts, _, _ = sample_surface(local.vertices, local.faces, 2000, np.random.default_rng(0))
    # the corner chunk sees floor (z=-0.5), two walls (x=-0.5, y=-0.5): every sample lies on one of them
    on_plane = np.isclose(pts[:, 2], -0.5) | np.isclose(pts[:, 0], -0.5) | np.isclose(pts[:, 1], -0.5)
    assert on_plane.all()
    assert local.face_areas().sum() == pytest.approx(3.0, rel=1e-6)  # three unit faces of the cube
