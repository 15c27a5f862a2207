import numpy as np
import pytest
import trimesh

from genrecon.geometry.mesh import PBRMaterial, PBRMesh
from genrecon.geometry.primitives import (
    box,
    box_at,
    cone,
    cylinder,
    frustum,
    grid_cell_surface,
    merge_parts,
)

MAT = PBRMaterial("m", (0.5, 0.4, 0.3), 0.0, 0.6)


def closed(mesh: PBRMesh) -> trimesh.Trimesh:
    """Merge the split seam vertices by position (trimesh's default processing)."""
    return trimesh.Trimesh(mesh.vertices, mesh.faces)


def assert_outward(mesh: PBRMesh, centre: np.ndarray) -> None:
    """For a convex solid every face normal points away from an interior point."""
    tri = mesh.triangles()
    normals = mesh.face_normals()
    keep = mesh.face_areas() > 1e-12
    assert np.all(np.einsum("fc,fc->f", normals[keep], tri[keep].mean(1) - centre) > 0)


@pytest.mark.parametrize(
    ("mesh", "volume", "centre"),
    [
        (box((0, 0, 0), (1, 2, 3), MAT), 6.0, np.array([0.5, 1.0, 1.5])),
        (box_at((1, 1, 1), (0.2, 0.4, 0.6), MAT), 0.048, np.array([1.0, 1.0, 1.0])),
        (cylinder(0.5, 1.0, MAT, segments=64), np.pi * 0.25, np.array([0, 0, 0.5])),
        (cone(0.5, 1.0, MAT, segments=64), np.pi * 0.25 / 3, np.array([0, 0, 0.25])),
        (
            frustum(0.3, 0.5, 1.0, MAT, segments=64, base=(1, 2, 3)),
            np.pi / 3 * (0.09 + 0.15 + 0.25),
            np.array([1, 2, 3.5]),
        ),
        (frustum(0.0, 0.5, 1.0, MAT, segments=64), np.pi * 0.25 / 3, np.array([0, 0, 0.75])),
    ],
)
def test_primitives_are_closed_outward_solids(mesh, volume, centre):
    t = closed(mesh)
    assert t.is_watertight and t.is_winding_consistent
    assert t.volume > 0
    assert t.volume == pytest.approx(volume, rel=0.01)
    assert_outward(mesh, centre)
    assert mesh.uv.shape == (mesh.num_vertices, 2)
    assert mesh.materials == [MAT] and np.all(mesh.face_material == 0)


def test_triangle_counts_and_metric_uvs():
    assert box((0, 0, 0), (1, 1, 1), MAT).num_faces == 12
    assert cylinder(1, 1, MAT, segments=16).num_faces == 64
    assert cone(1, 1, MAT, segments=16).num_faces == 32
    # UV extent of a box face equals its size in metres, so textures keep their physical scale.
    b = box((0, 0, 0), (2.0, 0.5, 1.0), MAT)
    top = b.face_normals()[:, 2] > 0.5
    uv = b.uv[np.unique(b.faces[top])]
    assert np.ptp(uv, axis=0) == pytest.approx([2.0, 0.5])


def test_invalid_primitives_raise():
    with pytest.raises(ValueError):
        box((0, 0, 0), (1, 0, 1), MAT)
    with pytest.raises(ValueError):
        frustum(0.0, 0.0, 1.0, MAT)


def test_grid_cell_surface_has_no_inner_faces():
    xs = np.array([0.0, 1.0, 2.0, 3.0])
    labels = np.ones((3, 3, 3), dtype=np.int32)
    labels[1, 1, :] = 0  # a square hole through the block
    labels[0, 0, 0] = 2  # a cell of another material: no face between it and its neighbours
    mats = [MAT, PBRMaterial("other")]
    mesh, face_label = grid_cell_surface((xs, xs, xs), labels, mats)
    t = closed(mesh)
    assert t.is_watertight and t.is_winding_consistent
    assert t.volume == pytest.approx(24.0)
    assert t.area == pytest.approx(6 * 9 - 2 + 4 * 3)  # outer skin minus 2 hole mouths plus the hole's sides
    assert set(face_label.tolist()) == {1, 2}
    assert np.array_equal(mesh.face_material, face_label - 1)


def test_merge_parts_shares_materials_by_identity():
    other = PBRMaterial("other", (0.1, 0.2, 0.3))
    merged = merge_parts(
        [
            box((0, 0, 0), (1, 1, 1), MAT),
            box((2, 0, 0), (3, 1, 1), MAT),
            cylinder(0.2, 1, other, base=(5, 0, 0)),
        ]
    )
    assert merged.materials == [MAT, other]
    assert np.array_equal(np.unique(merged.face_material), [0, 1])
    assert merged.num_faces == 12 + 12 + 64
