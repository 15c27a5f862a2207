"""GLB export: sparse trilinear look-up, UV unwrapping, CPU baking, texture orientation, atomic write."""

from __future__ import annotations

import json
import struct
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image
from trimesh.visual.material import PBRMaterial

from genrecon.geometry.mesh import _sample_texture_bilinear
from genrecon.pipelines import glb
from genrecon.pipelines.glb import (
    Z_UP_TO_Y_UP,
    VoxelAttributeSampler,
    bake_textures,
    dilate_fill,
    export_glb,
    partition_faces_by_chunk,
    rasterize_uv,
    sample_voxel_attributes,
    split_mesh_by_chunk,
    uv_unwrap,
)

TEXTURE = 128
ROOM_LO, ROOM_HI = np.array([0.0, 0.0, 0.0]), np.array([2.0, 1.0, 1.0])
VOXEL = 0.05


# ---------------------------------------------------------------------- fixtures and helpers
def _room(subdivisions: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Closed box [0, 2] × [0, 1] × [0, 1] (world z-up metres), outward winding, 12·4^s faces."""
    box = trimesh.creation.box(extents=ROOM_HI - ROOM_LO)
    vertices, faces = box.vertices + (ROOM_LO + ROOM_HI) / 2, box.faces
    for _ in range(subdivisions):
        vertices, faces = trimesh.remesh.subdivide(vertices, faces)
    return vertices, faces


def _linear_attributes(points: np.ndarray) -> np.ndarray:
    """``[M, 6]`` attributes linear in position: a colour gradient, metallic and roughness ramps, alpha 1."""
    t = (points - ROOM_LO) / (ROOM_HI - ROOM_LO)
    colour = 0.1 + 0.8 * t
    return np.concatenate([colour, 0.2 + 0.6 * t[:, :1], 0.9 - 0.7 * t[:, 1:2], np.ones((len(t), 1))], axis=1)


def _distance_to_room_surface(points: np.ndarray) -> np.ndarray:
    outside = np.linalg.norm(np.maximum(np.maximum(ROOM_LO - points, points - ROOM_HI), 0.0), axis=1)
    inside = np.minimum(points - ROOM_LO, ROOM_HI - points).min(1)
    return np.where(outside > 0, outside, np.maximum(inside, 0.0))


def _shell_volume(width: float = 1.8):
    """Sparse voxels (size VOXEL, origin at ROOM_LO − 3 voxels) whose centre lies within ``width`` voxels of
    the room's surface, with linear attributes at their centres. All 8 trilinear neighbours of a surface point
    are within √3 voxels, so the look-up reproduces the linear field exactly on the surface."""
    origin = ROOM_LO - 3 * VOXEL
    shape = np.ceil((ROOM_HI - origin) / VOXEL).astype(int) + 3
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    centres = origin + (grid + 0.5) * VOXEL
    keep = _distance_to_room_surface(centres) < width * VOXEL
    return grid[keep], _linear_attributes(centres[keep]).astype(np.float32), origin, VOXEL


@pytest.fixture(scope="module")
def room():
    vertices, faces = _room()
    return vertices, faces, _shell_volume()


def _y_up_to_z_up(points: np.ndarray) -> np.ndarray:
    return points @ Z_UP_TO_Y_UP  # inverse of the rotation applied on export


def _loaded_surface_samples(geometry: trimesh.Trimesh, count: int, rng: np.random.Generator):
    """World (z-up) points and trimesh-convention UVs of ``count`` samples inside a loaded mesh's faces."""
    face = rng.integers(0, len(geometry.faces), count)
    bary = rng.dirichlet([4.0, 4.0, 4.0], count)  # away from the chart borders
    corners = geometry.faces[face]
    points = np.einsum("mk,mkc->mc", bary, geometry.vertices[corners])
    uv = np.einsum("mk,mkc->mc", bary, geometry.visual.uv[corners])
    return _y_up_to_z_up(points), uv


def _read_glb(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    magic, version, _ = struct.unpack("<4sII", data[:12])
    assert magic == b"glTF" and version == 2
    json_length, json_type = struct.unpack("<I4s", data[12:20])
    assert json_type == b"JSON"
    document = json.loads(data[20 : 20 + json_length])
    bin_start = 20 + json_length
    bin_length, bin_type = struct.unpack("<I4s", data[bin_start : bin_start + 8])
    assert bin_type == b"BIN\x00"
    return document, data[bin_start + 8 : bin_start + 8 + bin_length]


def _accessor(document: dict, blob: bytes, index: int) -> np.ndarray:
    accessor = document["accessors"][index]
    view = document["bufferViews"][accessor["bufferView"]]
    dtype = {5126: np.float32, 5125: np.uint32, 5123: np.uint16}[accessor["componentType"]]
    width = {"SCALAR": 1, "VEC2": 2, "VEC3": 3}[accessor["type"]]
    start = view.get("byteOffset", 0) + accessor.get("byteOffset", 0)
    values = np.frombuffer(blob, dtype=dtype, count=accessor["count"] * width, offset=start)
    return values.reshape(accessor["count"], width)


def _image(document: dict, blob: bytes, texture_index: int) -> np.ndarray:
    image = document["images"][document["textures"][texture_index]["source"]]
    view = document["bufferViews"][image["bufferView"]]
    start = view.get("byteOffset", 0)
    return np.asarray(Image.open(BytesIO(blob[start : start + view["byteLength"]])))


# ---------------------------------------------------------------------- sparse trilinear look-up
def test_trilinear_equals_attributes_at_voxel_centres():
    rng = np.random.default_rng(0)
    coords = np.unique(rng.integers(-5, 20, (300, 3)), axis=0)
    attrs = rng.random((len(coords), 6)).astype(np.float32)
    origin, size = np.array([1.0, -2.0, 0.5]), 0.1
    centres = origin + (coords + 0.5) * size
    np.testing.assert_allclose(
        sample_voxel_attributes(centres, coords, attrs, origin, size), attrs, atol=1e-5
    )


def test_trilinear_interpolates_linearly_between_two_active_voxels():
    coords = np.array([[3, 4, 5], [4, 4, 5]])
    attrs = np.array([[0.0, 1.0], [1.0, -1.0]], dtype=np.float32)
    origin, size = np.array([-1.0, 0.0, 2.0]), 0.25
    t = np.linspace(0.0, 1.0, 11)
    # Along the segment between the centres, and off it (its other neighbours are inactive: renormalised).
    for offset in ([0.0, 0.0, 0.0], [0.0, 0.3, -0.2]):
        q = np.stack([3.5 + t, np.full_like(t, 4.5), np.full_like(t, 5.5)], 1) + offset
        values = sample_voxel_attributes(origin + q * size, coords, attrs, origin, size)
        np.testing.assert_allclose(values, np.stack([t, 1.0 - 2.0 * t], 1), atol=1e-6)


def test_trilinear_empty_neighbourhood_nearest_fallback():
    coords = np.array([[0, 0, 0]])
    attrs = np.array([[0.25, 0.75]], dtype=np.float32)
    # q = (2.2, 0.5, 0.5): the 8 neighbours are x in {1, 2}, all inactive; the active centre is 1.7 away.
    point = np.array([[2.2, 0.5, 0.5]])
    np.testing.assert_allclose(sample_voxel_attributes(point, coords, attrs, np.zeros(3), 1.0), attrs)
    # Reference behaviour (FlexGEMM): no active neighbour gives 0; so does a point beyond the radius.
    sampler = VoxelAttributeSampler(coords, attrs, np.zeros(3), 1.0, nearest_radius=0.0)
    np.testing.assert_array_equal(sampler(point), 0.0)
    np.testing.assert_array_equal(
        sample_voxel_attributes([[3.0, 0.5, 0.5]], coords, attrs, np.zeros(3), 1.0), 0.0
    )


def test_trilinear_reproduces_a_linear_field_on_a_full_block():
    grid = np.stack(np.meshgrid(*[np.arange(6)] * 3, indexing="ij"), -1).reshape(-1, 3)
    origin, size = np.array([0.3, 0.1, -0.4]), 0.2
    field = lambda p: p @ np.array([[1.0, -2.0], [0.5, 0.0], [-1.0, 3.0]])
    sampler = VoxelAttributeSampler(grid, field(origin + (grid + 0.5) * size), origin, size)
    points = origin + np.random.default_rng(1).uniform(0.5, 5.5, (200, 3)) * size  # inside the outer centres
    np.testing.assert_allclose(sampler(points), field(points), atol=1e-5)


# ---------------------------------------------------------------------- unwrap, raster, dilation
def test_uv_unwrap_shapes_and_vertex_map(room):
    vertices, faces, _ = room
    out = uv_unwrap(vertices, faces, texture_size=TEXTURE)
    assert out.faces.shape == faces.shape and out.uv.shape == (len(out.vertices), 2)
    assert out.uv.min() >= 0.0 and out.uv.max() <= 1.0
    np.testing.assert_allclose(out.vertices, vertices[out.vmap])
    np.testing.assert_allclose(out.vertices[out.faces], vertices[faces], atol=1e-6)  # same faces, same order


def test_cpu_raster_covers_texel_centres_with_exact_barycentrics():
    uv = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    faces = np.array([[0, 1, 2]])  # lower-left half of the texture
    size = 16
    raster = rasterize_uv(uv, faces, size)
    rows, cols = np.mgrid[0:size, 0:size]
    centre_u, centre_v = (cols + 0.5) / size, (rows + 0.5) / size
    expected = centre_u + centre_v <= 1.0
    np.testing.assert_array_equal(raster.face_id >= 0, expected)
    # Row r holds v = (r + 0.5)/S: interpolating the UVs with the barycentrics gives the texel centre back.
    interpolated = np.einsum("rck,kd->rcd", raster.bary, uv[faces[0]])
    np.testing.assert_allclose(
        interpolated[expected], np.stack([centre_u, centre_v], -1)[expected], atol=1e-6
    )


def test_dilate_fill_keeps_valid_texels_and_fills_the_rest():
    rng = np.random.default_rng(2)
    image = rng.random((20, 30, 3))
    mask = np.zeros((20, 30), dtype=bool)
    mask[5:9, 10:14] = True
    out = dilate_fill(image * mask[..., None], mask, passes=2)
    np.testing.assert_array_equal(out[mask], image[mask])
    lo, hi = image[mask].min(0), image[mask].max(0)
    assert np.all((out >= lo - 1e-12) & (out <= hi + 1e-12))  # averages never leave the valid range
    assert np.isfinite(out).all()


def test_partition_faces_by_chunk():
    centres = np.array([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    centroids = np.array([[0.9, 0.0, 0.0], [1.1, 0.1, 0.0], [0.0, 2.0, 5.0], [-4.0, 0.0, 0.0]])
    np.testing.assert_array_equal(partition_faces_by_chunk(centroids, centres), [0, 1, 2, 0])


# ---------------------------------------------------------------------- baking and export
def test_baked_colours_match_voxel_attributes(room):
    vertices, faces, volume = room
    unwrapped = uv_unwrap(vertices, faces, texture_size=TEXTURE)
    textures = bake_textures(
        unwrapped.vertices, unwrapped.faces, unwrapped.uv, VoxelAttributeSampler(*volume), TEXTURE
    )
    assert textures.base_color.shape == (TEXTURE, TEXTURE, 4) and textures.base_color.dtype == np.uint8
    assert textures.metallic_roughness.shape == (TEXTURE, TEXTURE, 3)
    assert 0.3 < textures.coverage.mean() <= 1.0

    rows, cols = np.nonzero(textures.coverage)
    raster = rasterize_uv(unwrapped.uv, unwrapped.faces, TEXTURE)
    corner = unwrapped.vertices[unwrapped.faces[raster.face_id[rows, cols]]]
    points = np.einsum("nk,nkc->nc", raster.bary[rows, cols], corner)
    expected = _linear_attributes(points)
    baked = textures.base_color[rows, cols, :3] / 255.0
    assert np.abs(baked - expected[:, :3]).max() < 1.5 / 255
    np.testing.assert_allclose(
        textures.metallic_roughness[rows, cols, 2] / 255.0, expected[:, 3], atol=1.5 / 255
    )
    np.testing.assert_allclose(
        textures.metallic_roughness[rows, cols, 1] / 255.0, expected[:, 4], atol=1.5 / 255
    )


def test_export_glb_loads_with_pbr_materials_and_matches_voxels(room, tmp_path):
    vertices, faces, volume = room
    parts = split_mesh_by_chunk(vertices, faces, [[0.5, 0.5, 0.5], [1.5, 0.5, 0.5]])
    assert [name for name, _, _ in parts] == ["chunk_000", "chunk_001"]
    path = export_glb(tmp_path / "scene.glb", parts, volume, texture_size=TEXTURE)
    assert path == tmp_path / "scene.glb" and sorted(p.name for p in tmp_path.iterdir()) == ["scene.glb"]

    scene = trimesh.load(path)
    assert isinstance(scene, trimesh.Scene) and sorted(scene.geometry) == ["chunk_000", "chunk_001"]
    rng = np.random.default_rng(3)
    for geometry in scene.geometry.values():
        material = geometry.visual.material
        assert isinstance(material, PBRMaterial)
        assert material.baseColorTexture is not None and material.metallicRoughnessTexture is not None
        assert material.baseColorTexture.size == (TEXTURE, TEXTURE)
        assert (
            material.alphaMode == "OPAQUE" and material.metallicFactor == 1 and material.roughnessFactor == 1
        )
        assert geometry.visual.uv.shape == (len(geometry.vertices), 2)
        # Loaded vertices are y-up: the room's height (world z, 1 m) is along glTF y, its length along x.
        np.testing.assert_allclose(geometry.bounds[:, 1], [0.0, 1.0], atol=1e-6)

        points, uv = _loaded_surface_samples(geometry, 2000, rng)
        base = np.asarray(material.baseColorTexture.convert("RGBA"))
        mr = np.asarray(material.metallicRoughnessTexture.convert("RGB"))
        expected = _linear_attributes(points)
        error = np.abs(_sample_texture_bilinear(base, uv)[:, :3] - expected[:, :3])
        assert error.mean() < 0.01 and np.quantile(error, 0.99) < 0.05
        sampled_mr = _sample_texture_bilinear(mr, uv)
        assert np.abs(sampled_mr[:, 2] - expected[:, 3]).mean() < 0.01  # metallic in B
        assert np.abs(sampled_mr[:, 1] - expected[:, 4]).mean() < 0.01  # roughness in G
        assert np.abs(sampled_mr[:, 0]).max() == 0.0


def test_closed_part_is_single_sided_open_part_double_sided(tmp_path):
    vertices, faces = _room(subdivisions=1)
    open_faces = faces[vertices[faces].mean(1)[:, 2] > 1e-6]  # no floor
    path = export_glb(
        tmp_path / "s.glb",
        [("closed", vertices, faces), ("open", vertices, open_faces)],
        _linear_attributes,
        32,
    )
    document, _ = _read_glb(path)
    sided = {mesh["name"]: document["materials"][mesh["primitives"][0]["material"]]["doubleSided"]
             for mesh in document["meshes"]}  # fmt: skip
    assert sided == {"closed": False, "open": True}


def _red_left_blue_right(points: np.ndarray) -> np.ndarray:
    left = points[:, 0] < 1.0
    colour = np.where(left[:, None], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0])
    return np.concatenate([colour, np.full((len(points), 1), 0.7), np.full((len(points), 1), 0.4),
                           np.ones((len(points), 1))], axis=1)  # fmt: skip


def test_texture_orientation_round_trip(tmp_path):
    """Left half red, right half blue must come back so after export → load → texture look-up at the loaded
    UVs, both through trimesh and by reading the glTF accessors with glTF's own convention (v = 0 at the
    image's top row). A wrong v-flip lands the UVs on other charts' texels."""
    vertices, faces = _room(subdivisions=3)
    path = export_glb(tmp_path / "scene.glb", [("room", vertices, faces)], _red_left_blue_right, TEXTURE)

    geometry = trimesh.load(path).geometry["room"]
    points, uv = _loaded_surface_samples(geometry, 4000, np.random.default_rng(4))
    far = np.abs(points[:, 0] - 1.0) > 0.1
    colour = _sample_texture_bilinear(np.asarray(geometry.visual.material.baseColorTexture), uv)[far, :3]
    np.testing.assert_allclose(colour, _red_left_blue_right(points[far])[:, :3], atol=0.02)

    document, blob = _read_glb(path)
    primitive = document["meshes"][0]["primitives"][0]
    positions = _accessor(document, blob, primitive["attributes"]["POSITION"]).astype(np.float64)
    gltf_uv = _accessor(document, blob, primitive["attributes"]["TEXCOORD_0"]).astype(np.float64)
    triangles = _accessor(document, blob, primitive["indices"]).reshape(-1, 3)
    material = document["materials"][primitive["material"]]
    image = _image(document, blob, material["pbrMetallicRoughness"]["baseColorTexture"]["index"])
    centroid_uv = gltf_uv[triangles].mean(1)
    centroid_world = _y_up_to_z_up(positions[triangles].mean(1))
    far = np.abs(centroid_world[:, 0] - 1.0) > 0.1
    col = np.clip((centroid_uv[far, 0] * image.shape[1]).astype(int), 0, image.shape[1] - 1)
    row = np.clip((centroid_uv[far, 1] * image.shape[0]).astype(int), 0, image.shape[0] - 1)  # v = 0: top row
    np.testing.assert_array_equal(
        image[row, col, :3] / 255.0, _red_left_blue_right(centroid_world[far])[:, :3]
    )
    mr_image = _image(document, blob, material["pbrMetallicRoughness"]["metallicRoughnessTexture"]["index"])
    np.testing.assert_array_equal(mr_image[row, col], np.broadcast_to([0, 102, 178], (far.sum(), 3)))


def test_export_glb_decimates_per_part(tmp_path):
    pytest.importorskip("fast_simplification")
    vertices, faces = _room(subdivisions=3)  # 768 faces
    path = export_glb(
        tmp_path / "d.glb", [("room", vertices, faces)], _linear_attributes, 32, decimate_to=200
    )
    geometry = trimesh.load(path).geometry["room"]
    assert len(geometry.faces) <= 200


def test_atomic_write_leaves_no_partial_file(room, tmp_path, monkeypatch):
    vertices, faces, volume = room
    path = tmp_path / "scene.glb"
    path.write_bytes(b"previous export")

    def crash(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(glb.os, "fsync", crash)  # dies after the bytes went into the temporary file
    with pytest.raises(OSError, match="disk full"):
        export_glb(path, [("room", vertices, faces)], volume, texture_size=32)
    assert path.read_bytes() == b"previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["scene.glb"]

    def failing_attributes(points: np.ndarray) -> np.ndarray:
        raise RuntimeError("decoder crashed")

    fresh = tmp_path / "fresh.glb"
    with pytest.raises(RuntimeError, match="decoder crashed"):
        export_glb(fresh, [("room", vertices, faces)], failing_attributes, texture_size=32)
    assert not fresh.exists() and [p.name for p in tmp_path.iterdir()] == ["scene.glb"]


def test_nvdiffrast_backend_without_cuda_raises_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA present: covered by the GPU test")
    with pytest.raises(RuntimeError, match="backend='nvdiffrast'"):
        rasterize_uv(
            np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), np.array([[0, 1, 2]]), 8, backend="nvdiffrast"
        )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_nvdiffrast_uv_raster_matches_cpu(room):
    pytest.importorskip("nvdiffrast.torch")
    vertices, faces, _ = room
    unwrapped = uv_unwrap(vertices, faces, texture_size=TEXTURE)
    cpu = rasterize_uv(unwrapped.uv, unwrapped.faces, TEXTURE, backend="cpu")
    gpu = rasterize_uv(unwrapped.uv, unwrapped.faces, TEXTURE, backend="nvdiffrast")
    both = (cpu.face_id >= 0) & (gpu.face_id >= 0)
    # Coverage differs only on texel centres lying on triangle edges (tie rules); positions agree everywhere.
    assert (cpu.face_id >= 0).sum() == pytest.approx((gpu.face_id >= 0).sum(), rel=0.02)

    def position(raster):
        corners = unwrapped.vertices[unwrapped.faces[raster.face_id[both]]]
        return np.einsum("nk,nkc->nc", raster.bary[both], corners)

    np.testing.assert_allclose(position(gpu), position(cpu), atol=1e-4)


def test_parallel_unwrapping_writes_the_same_glb(room, tmp_path, monkeypatch):
    """Parts unwrapped in worker processes give exactly the in-process result (xatlas is deterministic)."""
    import genrecon.pipelines.glb as glb

    vertices, faces, volume = room
    parts = split_mesh_by_chunk(vertices, faces, [[0.5, 0.5, 0.5], [1.5, 0.5, 0.5]])
    serial = export_glb(tmp_path / "serial.glb", parts, volume, texture_size=TEXTURE, workers=1)
    monkeypatch.setattr(glb, "PARALLEL_UNWRAP_MIN_FACES", 0)
    calls = []
    original = glb._unwrap_all
    monkeypatch.setattr(glb, "_unwrap_all", lambda jobs, workers: calls.append(workers) or original(jobs, workers))
    parallel = export_glb(tmp_path / "parallel.glb", parts, volume, texture_size=TEXTURE, workers=2)
    assert calls == [2]
    a, b = trimesh.load(serial), trimesh.load(parallel)
    assert sorted(a.geometry) == sorted(b.geometry)
    for name in a.geometry:
        np.testing.assert_array_equal(a.geometry[name].vertices, b.geometry[name].vertices)
        np.testing.assert_array_equal(a.geometry[name].faces, b.geometry[name].faces)
        np.testing.assert_array_equal(a.geometry[name].visual.uv, b.geometry[name].visual.uv)
