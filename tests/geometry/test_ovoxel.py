"""O-Voxel: mesh -> flexible dual grid -> mesh, attributes, packing and occupancy pooling."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from genrecon.geometry import ovoxel as ovoxel_module
from genrecon.geometry.mesh import PBRMaterial, PBRMesh, sample_surface
from genrecon.geometry.morton import morton_encode
from genrecon.geometry.ovoxel import OVoxel, mesh_to_ovoxel, ovoxel_to_mesh

BOX_FACES = np.array(
    [[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
     [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]]
)  # fmt: skip


# ---------------------------------------------------------------------- primitives
def _rotation(axis: int, degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    m = np.eye(3)
    m[i, i], m[i, j], m[j, i], m[j, j] = np.cos(a), -np.sin(a), np.sin(a), np.cos(a)
    return m


def _box(center, size, rotation: np.ndarray | None = None) -> PBRMesh:
    corners = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)]) * size
    rotation = np.eye(3) if rotation is None else rotation
    return PBRMesh(corners @ rotation.T + center, BOX_FACES, np.zeros(12, np.int32))


def _cylinder(center, radius: float, height: float, segments: int = 32) -> PBRMesh:
    angle = np.linspace(0, 2 * np.pi, segments, endpoint=False)
    ring = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    bottom = np.c_[ring, np.full(segments, -height / 2)]
    top = np.c_[ring, np.full(segments, height / 2)]
    vertices = np.concatenate([bottom, top, [[0, 0, -height / 2], [0, 0, height / 2]]]) + center
    i = np.arange(segments)
    j = (i + 1) % segments
    faces = np.concatenate(
        [
            np.stack([i, j, j + segments], 1),
            np.stack([i, j + segments, i + segments], 1),
            np.stack([np.full(segments, 2 * segments), j, i], 1),
            np.stack([np.full(segments, 2 * segments + 1), i + segments, j + segments], 1),
        ]
    )
    return PBRMesh(vertices, faces, np.zeros(len(faces), np.int32))


def _quad(corners) -> PBRMesh:
    return PBRMesh(np.asarray(corners, float), [[0, 1, 2], [0, 2, 3]], [0, 0])


def _furnished_chunk() -> PBRMesh:
    """Floor, cabinet, table top, leg, small box, a rotated box, a 32-segment cylinder and a sloped plane."""
    return PBRMesh.concatenate(
        [
            _quad([[-0.47, -0.47, -0.45], [0.47, -0.47, -0.45], [0.47, 0.47, -0.45], [-0.47, 0.47, -0.45]]),
            _box([-0.3, 0.25, -0.3], [0.25, 0.15, 0.3]),
            _box([0.1, 0.1, -0.2], [0.35, 0.25, 0.03]),
            _box([0.2, -0.05, -0.33], [0.04, 0.04, 0.24]),
            _box([0.3, 0.3, -0.42], [0.06, 0.06, 0.06]),
            _box([-0.2, -0.25, -0.3], [0.2, 0.12, 0.1], _rotation(2, 30) @ _rotation(0, 15)),
            _cylinder([0.3, -0.3, -0.35], 0.06, 0.2),
            _quad([[-0.4, -0.1, 0.1], [0.4, -0.1, 0.1], [0.4, 0.4, 0.35], [-0.4, 0.4, 0.35]]),
        ]
    )


def _plane_mesh(normal: np.ndarray, offset: float, half_size: float = 0.9) -> PBRMesh:
    """A square on the plane ``normal·p = offset`` reaching beyond the chunk (no boundary inside the grid)."""
    n = normal / np.linalg.norm(normal)
    u = np.cross(n, [1.0, 0.0, 0.0] if abs(n[0]) < 0.9 else [0.0, 1.0, 0.0])
    u /= np.linalg.norm(u)
    v = np.cross(n, u)
    c = n * offset
    h = half_size
    return _quad([c - h * u - h * v, c + h * u - h * v, c + h * u + h * v, c - h * u + h * v])


# ---------------------------------------------------------------------- surface comparison
def _unit_face_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    tri = vertices[faces]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-30)


def _chamfer_and_normal_consistency(a: tuple, b: tuple, count: int = 50_000) -> tuple[float, float]:
    """Mean of the two directional mean nearest-neighbour distances, and mean ``|n·n'|`` both ways."""
    rng = np.random.default_rng(0)
    pa, fa, _ = sample_surface(*a, count, rng)
    pb, fb, _ = sample_surface(*b, count, rng)
    na, nb = _unit_face_normals(*a)[fa], _unit_face_normals(*b)[fb]
    d_ab, j_ab = cKDTree(pb).query(pa)
    d_ba, j_ba = cKDTree(pa).query(pb)
    chamfer = 0.5 * (d_ab.mean() + d_ba.mean())
    consistency = 0.5 * (np.abs((na * nb[j_ab]).sum(1)).mean() + np.abs((nb * na[j_ba]).sum(1)).mean())
    return float(chamfer), float(consistency)


def _edge_use_counts(faces: np.ndarray) -> np.ndarray:
    edges = np.sort(faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    return np.unique(edges, axis=0, return_counts=True)[1]


# ---------------------------------------------------------------------- round trip
@pytest.mark.parametrize("resolution", [128])
def test_round_trip_furnished_chunk(resolution: int) -> None:
    mesh = _furnished_chunk()
    ov = mesh_to_ovoxel(mesh, resolution)
    out = ovoxel_to_mesh(ov)
    chamfer, consistency = _chamfer_and_normal_consistency((mesh.vertices, mesh.faces), out[:2])
    assert chamfer < 1.0 / resolution
    assert consistency > 0.9
    assert ov.vertex_offset.min() >= 0.0 and ov.vertex_offset.max() <= 1.0
    assert np.all(np.diff(morton_encode(ov.coords)) > 0)  # sorted by Morton code, no duplicates
    np.testing.assert_allclose(out.vertices, ov.dual_vertices()[out.voxel_index])


@pytest.mark.slow
@pytest.mark.parametrize("resolution", [256, 512])
def test_round_trip_furnished_chunk_high_resolution(resolution: int) -> None:
    mesh = _furnished_chunk()
    out = ovoxel_to_mesh(mesh_to_ovoxel(mesh, resolution))
    chamfer, consistency = _chamfer_and_normal_consistency((mesh.vertices, mesh.faces), out[:2], 200_000)
    assert chamfer < 1.0 / 128
    assert consistency > 0.9


def test_batching_does_not_change_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    mesh = _furnished_chunk()
    reference = mesh_to_ovoxel(mesh, 32)
    monkeypatch.setattr(ovoxel_module, "_BATCH_CANDIDATES", 64)
    batched = mesh_to_ovoxel(mesh, 32)
    np.testing.assert_array_equal(batched.coords, reference.coords)
    np.testing.assert_array_equal(batched.intersected, reference.intersected)
    np.testing.assert_allclose(batched.vertex_offset, reference.vertex_offset, atol=1e-6)
    np.testing.assert_allclose(batched.attributes, reference.attributes, atol=1e-6)


# ---------------------------------------------------------------------- analytic planes
def test_axis_aligned_plane_gives_one_layer_on_the_plane() -> None:
    resolution, z0 = 32, 0.1234
    ov = mesh_to_ovoxel(_plane_mesh(np.array([0.0, 0.0, 1.0]), z0), resolution)
    layer = int(np.floor((z0 + 0.5) * resolution))
    assert np.all(ov.coords[:, 2] == layer)
    assert ov.num_voxels == resolution**2  # every (i, j): lattice lines 1..R-1 touch all columns
    np.testing.assert_allclose(ov.dual_vertices()[:, 2], z0, atol=1e-6)
    # Only z-edges are crossed; voxel (i, j) owns the one at (i+1, j+1), which is interior iff i, j <= R-2.
    assert not ov.intersected[:, :2].any()
    owns_interior_edge = (ov.coords[:, 0] <= resolution - 2) & (ov.coords[:, 1] <= resolution - 2)
    np.testing.assert_array_equal(ov.intersected[:, 2], owns_interior_edge)


def test_tilted_plane_vertices_on_plane_and_flags_match_brute_force() -> None:
    resolution, offset = 32, 0.037
    normal = np.array([0.3, -0.2, 1.0])
    normal /= np.linalg.norm(normal)
    ov = mesh_to_ovoxel(_plane_mesh(normal, offset), resolution)
    np.testing.assert_allclose(ov.dual_vertices() @ normal, offset, atol=1e-6)

    # Brute force over every interior lattice edge: crossed iff the plane separates its two end points.
    expected = set()
    grid = np.stack(np.meshgrid(*[np.arange(resolution)] * 3, indexing="ij"), -1).reshape(-1, 3)
    for axis in range(3):
        start = grid + 1 - np.eye(3, dtype=int)[axis]  # owned edge: max corner in the other two axes
        interior = ((start >= 1) | (np.arange(3) == axis)).all(1) & (start <= resolution - 1).all(1)
        s0 = (start / resolution - 0.5) @ normal - offset
        s1 = ((start + np.eye(3)[axis]) / resolution - 0.5) @ normal - offset
        crossed = interior & (np.sign(s0) != np.sign(s1))
        expected |= {(*c, axis) for c in grid[crossed].tolist()}
    got = {(*c, axis) for axis in range(3) for c in ov.coords[ov.intersected[:, axis]].tolist()}
    assert got == expected


def test_lattice_aligned_geometry_gives_a_closed_surface() -> None:
    """A box whose faces lie on lattice planes (and whose triangle diagonals pass through lattice points), next
    to a rotated one: the half-open rule claims every lattice point once, so the output is closed and manifold."""
    resolution = 32
    mesh = PBRMesh.concatenate(
        [
            _box([1 / 32, 0.0, 0.0], [0.25, 0.5, 0.125]),
            _box([0.25, 0.25, 0.25], [0.125, 0.125, 0.125], _rotation(2, 45)),
        ]
    )
    ov = mesh_to_ovoxel(mesh, resolution)
    out = ovoxel_to_mesh(ov)
    assert np.all(_edge_use_counts(out.faces) == 2)
    # Dual vertices of the axis-aligned box (grid z in [14, 18]; the other box is at z >= 22) lie on its
    # surface, up to the regularisation's pull toward the mean crossing at edges and corners (< 0.01 voxel).
    first = ov.dual_vertices()[ov.coords[:, 2] < 20]
    lo, hi = np.array([1 / 32 - 0.125, -0.25, -0.0625]), np.array([1 / 32 + 0.125, 0.25, 0.0625])
    tol = 0.01 / resolution
    on_face = np.isclose(first, lo, atol=tol) | np.isclose(first, hi, atol=tol)
    inside = (first >= lo - tol) & (first <= hi + tol)
    assert np.all(on_face.any(1) & inside.all(1))


def test_dual_vertices_stay_in_their_voxel_without_regularisation() -> None:
    mesh = _box([0.02, -0.03, 0.01], [0.3, 0.2, 0.25], _rotation(1, 20) @ _rotation(2, 35))
    ov = mesh_to_ovoxel(mesh, 32, regularization_weight=0.0, attributes=False)
    assert np.isfinite(ov.vertex_offset).all()
    assert ov.vertex_offset.min() >= 0.0 and ov.vertex_offset.max() <= 1.0
    assert ov.attributes is None


def test_box_constrained_minimum_beats_a_dense_search() -> None:
    rng = np.random.default_rng(3)
    m = rng.normal(size=(20, 3, 3))
    a = m @ m.transpose(0, 2, 1) + 0.05 * np.eye(3)
    b = rng.normal(size=(20, 3)) * 3
    x = ovoxel_module._box_constrained_minimum(a, b)
    g = np.stack(np.meshgrid(*[np.linspace(0, 1, 41)] * 3, indexing="ij"), -1).reshape(-1, 3)
    dense = np.einsum("gi,mij,gj->mg", g, a, g) - 2 * b @ g.T
    ours = np.einsum("mi,mij,mj->m", x, a, x) - 2 * np.einsum("mi,mi->m", b, x)
    assert np.all((x >= 0) & (x <= 1))
    assert np.all(ours <= dense.min(1) + 1e-9)


# ---------------------------------------------------------------------- attributes
def test_each_voxel_gets_the_material_of_the_box_it_touches() -> None:
    red = PBRMaterial("red", (0.9, 0.1, 0.1), metallic=0.0, roughness=0.8)
    blue = PBRMaterial("blue", (0.1, 0.2, 0.9), metallic=1.0, roughness=0.2)
    left, right = _box([-0.2, 0.0, 0.0], [0.2, 0.2, 0.2]), _box([0.2, 0.05, 0.0], [0.2, 0.25, 0.15])
    left.materials, right.materials = [red], [blue]
    ov = mesh_to_ovoxel(PBRMesh.concatenate([left, right]), 32)
    is_right = ov.dual_vertices()[:, 0] > 0
    assert is_right.any() and (~is_right).any()
    np.testing.assert_allclose(
        ov.attributes[is_right], np.tile(blue.constant_attributes(), (is_right.sum(), 1))
    )
    np.testing.assert_allclose(
        ov.attributes[~is_right], np.tile(red.constant_attributes(), ((~is_right).sum(), 1))
    )


def test_attributes_use_the_closest_point_not_extrapolated_barycentrics() -> None:
    vertices = np.array([[-0.3, -0.3, 0.013], [0.35, -0.25, 0.05], [-0.2, 0.33, -0.04]])
    colours = np.array([[0.2, 0.2, 0.2], [0.8, 0.2, 0.5], [0.2, 0.8, 0.5]])
    mesh = PBRMesh(
        vertices, [[0, 1, 2]], [0], [PBRMaterial(base_color=(1.0, 1.0, 1.0))], vertex_color=colours
    )
    resolution = 32
    ov = mesh_to_ovoxel(mesh, resolution)
    base = ov.attributes[:, :3]
    assert base.min() >= 0.2 - 1e-6 and base.max() <= 0.8 + 1e-6

    # T2's plane projection would have extrapolated for some of these voxels (the test is not vacuous).
    centre = (ov.coords + 0.5) / resolution - 0.5
    e1, e2 = vertices[1] - vertices[0], vertices[2] - vertices[0]
    gram = np.array([[e1 @ e1, e1 @ e2], [e1 @ e2, e2 @ e2]])
    vw = np.linalg.solve(gram, np.stack([(centre - vertices[0]) @ e1, (centre - vertices[0]) @ e2]))
    unclamped = np.stack([1 - vw.sum(0), vw[0], vw[1]], 1) @ colours
    assert (unclamped < 0.2 - 1e-3).any() or (unclamped > 0.8 + 1e-3).any()


# ---------------------------------------------------------------------- O-Voxel -> mesh
def _single_quad_arrays() -> dict:
    """The 4 voxels around the z-edge owned by (5, 5, 5), shuffled, with decoder-style offsets outside
    [0, 1]."""
    coords = np.array([[6, 6, 5], [5, 5, 5], [6, 5, 5], [5, 6, 5]])
    offset = np.array([[0.5, 0.5, 0.5], [-0.2, 0.5, 0.5], [0.5, 1.3, 0.5], [0.5, 0.5, 0.5]])
    flags = np.zeros((4, 3), bool)
    flags[1, 2] = True
    return {"coords": coords, "vertex_offset": offset, "intersected": flags, "resolution": 16}


def _faces_as_voxel_triples(out) -> set:
    return {tuple(sorted(t)) for t in out.voxel_index[out.faces].tolist()}


def test_split_weight_picks_the_diagonal_with_the_larger_product() -> None:
    arrays = _single_quad_arrays()  # quad order (5,5,5) (5,6,5) (6,6,5) (6,5,5) = rows 1, 3, 0, 2
    weight_02 = np.array([1.0, 1.0, 0.1, 0.1])  # w[q0] w[q2] = 1 > w[q1] w[q3] = 0.01
    out = ovoxel_to_mesh(**arrays, split_weight=weight_02)
    assert _faces_as_voxel_triples(out) == {(0, 1, 3), (0, 1, 2)}
    out = ovoxel_to_mesh(**arrays, split_weight=1.1 - weight_02)
    assert _faces_as_voxel_triples(out) == {(1, 2, 3), (0, 2, 3)}
    expected = (arrays["coords"] + arrays["vertex_offset"]) / 16 - 0.5
    np.testing.assert_allclose(out.vertices, expected[out.voxel_index])


def test_normal_alignment_split_prefers_the_flatter_diagonal() -> None:
    arrays = _single_quad_arrays()
    # A skewed, non-planar quad: the two splits fold differently.
    arrays["vertex_offset"] = np.array([[0.5, 0.5, 0.5], [0.3, 0.4, 0.95], [0.6, 0.2, 0.4], [0.8, 0.7, 0.1]])

    def alignment(out) -> float:
        tri = out.vertices[out.faces]
        n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        return abs(n[0] @ n[1])

    # Rows are q2, q0, q3, q1: these weights force diagonal 0-2, then diagonal 1-3.
    split_02 = ovoxel_to_mesh(**arrays, split_weight=np.array([1.0, 1.0, 0.1, 0.1]))
    split_13 = ovoxel_to_mesh(**arrays, split_weight=np.array([0.1, 0.1, 1.0, 1.0]))
    assert alignment(split_02) != pytest.approx(alignment(split_13))
    best = split_02 if alignment(split_02) > alignment(split_13) else split_13
    assert _faces_as_voxel_triples(ovoxel_to_mesh(**arrays)) == _faces_as_voxel_triples(best)


def test_quad_with_a_missing_voxel_is_dropped() -> None:
    arrays = _single_quad_arrays()
    keep = [1, 2, 3]
    out = ovoxel_to_mesh(
        coords=arrays["coords"][keep],
        vertex_offset=arrays["vertex_offset"][keep],
        intersected=arrays["intersected"][keep],
        resolution=16,
    )
    assert out.faces.shape == (0, 3) and out.vertices.shape == (0, 3)


def test_ovoxel_to_mesh_requires_inputs() -> None:
    with pytest.raises(ValueError, match="pass an OVoxel"):
        ovoxel_to_mesh(coords=np.zeros((1, 3)))


# ---------------------------------------------------------------------- container
def _random_ovoxel(resolution: int = 64, count: int = 300, seed: int = 0) -> OVoxel:
    rng = np.random.default_rng(seed)
    coords = np.unique(rng.integers(0, resolution, size=(count, 3)), axis=0)
    coords = coords[np.argsort(morton_encode(coords))]
    k = len(coords)
    return OVoxel(resolution, coords, rng.random((k, 3)), rng.random((k, 3)) > 0.5, rng.random((k, 6)))


def test_pack_unpack_round_trip() -> None:
    ov = _random_ovoxel()
    packed = ov.pack()
    assert packed["coords"].dtype == np.uint16 and packed["intersected"].dtype == np.uint8
    assert packed["vertex_offset"].dtype == np.uint8 and packed["attributes"].dtype == np.uint8
    np.testing.assert_array_equal(
        packed["intersected"], ov.intersected[:, 0] + 2 * ov.intersected[:, 1] + 4 * ov.intersected[:, 2]
    )
    back = OVoxel.unpack(packed, ov.resolution)
    np.testing.assert_array_equal(back.coords, ov.coords)
    np.testing.assert_array_equal(back.intersected, ov.intersected)
    np.testing.assert_allclose(back.vertex_offset, ov.vertex_offset, atol=0.5 / 255 + 1e-6)
    np.testing.assert_allclose(back.attributes, ov.attributes, atol=0.5 / 255 + 1e-6)
    # Packing a decoded O-Voxel again is lossless.
    again = back.pack()
    for key in packed:
        np.testing.assert_array_equal(again[key], packed[key])


def test_shape_features() -> None:
    ov = _random_ovoxel(count=20)
    features = ov.shape_features()
    assert features.shape == (ov.num_voxels, 6) and features.dtype == np.float32
    np.testing.assert_allclose(features[:, :3], ov.vertex_offset - 0.5)
    np.testing.assert_array_equal(features[:, 3:], np.where(ov.intersected, 0.5, -0.5))


@pytest.mark.parametrize("res", [64, 16, 4])
def test_occupancy_equals_brute_force_or(res: int) -> None:
    ov = _random_ovoxel()
    factor = ov.resolution // res
    expected = np.zeros((res, res, res), bool)
    for x, y, z in ov.coords.tolist():
        block = np.zeros((ov.resolution,) * 3, bool)
        block[x, y, z] = True
        expected |= block.reshape(res, factor, res, factor, res, factor).any(axis=(1, 3, 5))
    np.testing.assert_array_equal(ov.occupancy(res), expected)


def test_occupancy_rejects_bad_resolutions() -> None:
    ov = _random_ovoxel()
    with pytest.raises(ValueError, match="cannot pool"):
        ov.occupancy(128)
    with pytest.raises(ValueError, match="must divide"):
        ov.occupancy(24)


def test_empty_mesh_gives_an_empty_ovoxel() -> None:
    mesh = PBRMesh([[2.0, 2.0, 2.0], [3.0, 2.0, 2.0], [2.0, 3.0, 2.0]], [[0, 1, 2]], [0])  # outside the chunk
    ov = mesh_to_ovoxel(mesh, 16)
    assert ov.num_voxels == 0 and ov.attributes.shape == (0, 6)
    out = ovoxel_to_mesh(ov)
    assert out.vertices.shape == (0, 3) and out.faces.shape == (0, 3)
