"""Mesh clean-up before export: removal passes, hole filling, orientation unification."""

from __future__ import annotations

import numpy as np
import pytest

from genrecon.geometry.mesh_cleanup import (
    clean_mesh,
    face_areas,
    fill_holes,
    remove_degenerate_faces,
    remove_duplicate_faces,
    remove_small_components,
    remove_unreferenced_vertices,
    unify_face_orientations,
    vertex_connected_components,
)

# Unit cube [0, 1]^3, outward winding.
BOX_VERTICES = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], dtype=np.float64)
BOX_FACES = np.array(
    [[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
     [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]]
)  # fmt: skip


def _grid(n: int, size: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """An ``n × n``-cell square in the z = 0 plane, ``2n²`` faces wound toward +z."""
    t = np.linspace(0.0, size, n + 1)
    x, y = np.meshgrid(t, t, indexing="ij")
    vertices = np.stack([x.ravel(), y.ravel(), np.zeros(x.size)], axis=1)
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    v00 = (i * (n + 1) + j).ravel()
    v10, v01, v11 = v00 + n + 1, v00 + 1, v00 + n + 2
    faces = np.concatenate([np.stack([v00, v10, v11], 1), np.stack([v00, v11, v01], 1)])
    return vertices, faces


def _normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    tri = vertices[faces]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    return n / np.linalg.norm(n, axis=1, keepdims=True)


def _box_outward(vertices: np.ndarray, faces: np.ndarray, center: np.ndarray) -> np.ndarray:
    """``[F]`` dot of each face normal with the direction from the box centre to the face centroid."""
    direction = vertices[faces].mean(1) - center
    return np.einsum("fc,fc->f", _normals(vertices, faces), direction)


# ---------------------------------------------------------------------- removal passes
def test_remove_degenerate_faces():
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [2, 0, 0]], dtype=np.float64)
    faces = np.array([[0, 1, 2], [0, 0, 1], [0, 1, 3]])  # good, repeated index, collinear
    np.testing.assert_array_equal(remove_degenerate_faces(vertices, faces), [[0, 1, 2]])


def test_remove_duplicate_faces_ignores_winding_and_keeps_order():
    faces = np.array([[3, 4, 5], [0, 1, 2], [2, 1, 0], [1, 2, 0], [3, 4, 5]])
    np.testing.assert_array_equal(remove_duplicate_faces(faces), [[3, 4, 5], [0, 1, 2]])


def test_remove_unreferenced_vertices():
    vertices = np.arange(15, dtype=np.float64).reshape(5, 3)
    out_v, out_f, kept = remove_unreferenced_vertices(vertices, np.array([[4, 1, 3]]))
    np.testing.assert_array_equal(kept, [1, 3, 4])
    np.testing.assert_array_equal(out_f, [[2, 0, 1]])
    np.testing.assert_array_equal(out_v[out_f], vertices[[[4, 1, 3]]])


def test_remove_small_components_by_area():
    big_v, big_f = _grid(4, size=1.0)  # area 1
    small_v, small_f = _grid(2, size=0.1)  # area 0.01
    vertices = np.concatenate([big_v, small_v + [5, 0, 0]])
    faces = np.concatenate([big_f, small_f + len(big_v)])
    assert len(np.unique(vertex_connected_components(faces, len(vertices)))) == 2
    kept = remove_small_components(vertices, faces, min_area=0.05)
    np.testing.assert_array_equal(kept, big_f)


# ---------------------------------------------------------------------- holes
def _grid_with_holes() -> tuple[np.ndarray, np.ndarray]:
    """A 10 × 10 grid of 0.1 cells with one cell cut out (perimeter 0.4) and a 3 × 3 block cut out
    (perimeter 1.2)."""
    vertices, faces = _grid(10, size=1.0)

    def cell(i: int, j: int) -> list[int]:  # the two faces of cell (i, j)
        return [i * 10 + j, 100 + i * 10 + j]

    small = cell(2, 2)
    large = [f for i in range(5, 8) for j in range(5, 8) for f in cell(i, j)]
    keep = np.setdiff1d(np.arange(len(faces)), small + large)
    return vertices, faces[keep]


def test_fill_holes_fills_small_loops_and_keeps_large_ones():
    vertices, faces = _grid_with_holes()
    area_before = face_areas(vertices, faces).sum()
    out_v, out_f = fill_holes(vertices, faces, max_perimeter=0.5)

    assert len(out_v) == len(vertices) + 1
    np.testing.assert_allclose(out_v[-1], [0.25, 0.25, 0.0])  # centroid of the small hole
    assert len(out_f) == len(faces) + 4  # one fan triangle per boundary edge
    np.testing.assert_allclose(face_areas(out_v, out_f).sum(), area_before + 0.01)
    # The patch follows its neighbours' winding: every face still faces +z.
    assert (_normals(out_v, out_f)[:, 2] > 0.99).all()

    # The large hole (perimeter 1.2) and the outer border (4.0) remain open; a larger limit closes the hole
    # but not the border.
    _, all_filled = fill_holes(vertices, faces, max_perimeter=2.0)
    assert len(all_filled) == len(faces) + 4 + 12
    _, nothing = fill_holes(vertices, faces, max_perimeter=0.3)
    assert len(nothing) == len(faces)


def test_fill_holes_closes_a_box_with_a_missing_face():
    faces = BOX_FACES[2:]  # the x = 0 side is missing
    out_v, out_f = fill_holes(BOX_VERTICES, faces, max_perimeter=4.5)
    np.testing.assert_allclose(out_v[-1], [0.0, 0.5, 0.5])
    assert len(out_f) == len(faces) + 4
    result = unify_face_orientations(out_v, out_f)
    assert result.outward


# ---------------------------------------------------------------------- orientation
def test_unify_orientations_of_a_scrambled_closed_box():
    rng = np.random.default_rng(0)
    flipped = rng.random(len(BOX_FACES)) < 0.5
    flipped[0] = True  # the root face starts inward, so the closed-component rule must turn it back
    faces = np.where(flipped[:, None], BOX_FACES[:, ::-1], BOX_FACES)
    assert (_box_outward(BOX_VERTICES, faces, np.full(3, 0.5)) < 0).any()

    result = unify_face_orientations(BOX_VERTICES, faces)
    assert result.consistent and result.outward
    assert (_box_outward(BOX_VERTICES, result.faces, np.full(3, 0.5)) > 0).all()
    # Same triangles, only re-wound.
    np.testing.assert_array_equal(np.sort(result.faces, 1), np.sort(faces, 1))


def test_unify_orientations_per_component_and_open_surfaces():
    grid_v, grid_f = _grid(6)
    rng = np.random.default_rng(1)
    scrambled = np.where(rng.random(len(grid_f))[:, None] < 0.5, grid_f[:, ::-1], grid_f)
    box_v = BOX_VERTICES * 0.5 + [3, 0, 0]
    box_f = np.where(rng.random(12)[:, None] < 0.5, BOX_FACES[:, ::-1], BOX_FACES) + len(grid_v)
    vertices = np.concatenate([grid_v, box_v])
    result = unify_face_orientations(vertices, np.concatenate([scrambled, box_f]))

    assert result.consistent and not result.outward  # the open grid has no inside
    grid_normal_z = _normals(vertices, result.faces[: len(grid_f)])[:, 2]
    assert np.all(grid_normal_z > 0.99) or np.all(grid_normal_z < -0.99)
    assert (_box_outward(vertices, result.faces[len(grid_f) :], box_v.mean(0)) > 0).all()


def test_unify_orientations_keeps_a_consistent_mesh():
    vertices, faces = _grid(4)
    result = unify_face_orientations(vertices, faces)
    np.testing.assert_array_equal(result.faces, faces)
    assert result.consistent


def test_unify_orientations_reports_a_moebius_strip():
    n = 12
    angle = np.linspace(0, 2 * np.pi, n, endpoint=False)
    ring = []
    for a in angle:
        center = np.array([np.cos(a), np.sin(a), 0.0]) * 2
        direction = np.array([np.cos(a) * np.cos(a / 2), np.sin(a) * np.cos(a / 2), np.sin(a / 2)])
        ring += [center - 0.3 * direction, center + 0.3 * direction]
    vertices = np.array(ring)
    faces = []
    for i in range(n):
        a, b = 2 * i, 2 * i + 1
        c, d = (2 * (i + 1), 2 * (i + 1) + 1) if i < n - 1 else (1, 0)  # the half twist
        faces += [[a, c, b], [b, c, d]]
    result = unify_face_orientations(vertices, np.array(faces))
    assert not result.consistent and not result.outward


# ---------------------------------------------------------------------- composition
@pytest.mark.parametrize("hole_limit, expected_faces, expected_vertices", [(0.0, 10, 8), (4.5, 14, 9)])
def test_clean_mesh(hole_limit, expected_faces, expected_vertices):
    vertices = np.concatenate([BOX_VERTICES, [[9, 9, 9]]])  # an unused vertex
    faces = np.concatenate([BOX_FACES[2:], [[0, 1, 1]], BOX_FACES[3:4, ::-1]])  # degenerate, duplicate
    out_v, out_f = clean_mesh(vertices, faces, max_hole_perimeter=hole_limit)
    assert len(out_f) == expected_faces
    assert len(out_v) == expected_vertices
