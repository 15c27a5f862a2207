import time
from dataclasses import replace

import numpy as np
import pytest
import trimesh

from genrecon.data.scenes import Scene, SyntheticRoomConfig, generate_room

SEEDS = [(0, 0), (0, 1), (7, 3), (123, 9), (5, 17), (42, 2)]


@pytest.fixture(scope="module")
def rooms() -> list[Scene]:
    return [generate_room(seed, index) for seed, index in SEEDS]


def footprint_corners(obj: dict) -> np.ndarray:
    c, s = np.cos(obj["yaw"]), np.sin(obj["yaw"])
    hx, hy = obj["half_extents"]
    local = np.array([[-hx, -hy], [hx, -hy], [hx, hy], [-hx, hy]])
    return local @ np.array([[c, s], [-s, c]]) + np.array(obj["center"])


def assert_same_scene(a: Scene, b: Scene) -> None:
    for name in ("vertices", "faces", "face_material", "uv"):
        assert getattr(a.mesh, name).tobytes() == getattr(b.mesh, name).tobytes(), name
    assert a.face_part.tobytes() == b.face_part.tobytes()
    assert a.part_names == b.part_names
    assert len(a.mesh.materials) == len(b.mesh.materials)
    for ma, mb in zip(a.mesh.materials, b.mesh.materials):
        assert (ma.name, ma.base_color, ma.metallic, ma.roughness) == (
            mb.name,
            mb.base_color,
            mb.metallic,
            mb.roughness,
        )
        assert (ma.base_color_texture is None) == (mb.base_color_texture is None)
        if ma.base_color_texture is not None:
            assert ma.base_color_texture.tobytes() == mb.base_color_texture.tobytes()


def test_same_seed_gives_identical_room():
    assert_same_scene(generate_room(11, 4), generate_room(11, 4))


def test_different_seed_or_index_gives_different_room(rooms):
    a, b, c = generate_room(11, 4), generate_room(12, 4), generate_room(11, 5)
    for other in (b, c):
        assert a.mesh.vertices.shape != other.mesh.vertices.shape or not np.allclose(
            a.mesh.vertices, other.mesh.vertices
        )


def test_room_size_and_furniture_count_ranges(rooms):
    cfg = SyntheticRoomConfig()
    for scene in rooms:
        meta = scene.metadata
        assert cfg.width_range[0] <= meta["width"] <= cfg.width_range[1]
        assert cfg.length_range[0] <= meta["length"] <= cfg.length_range[1]
        assert cfg.height_range[0] <= scene.height <= cfg.height_range[1]
        assert cfg.furniture_count_range[0] <= len(meta["objects"]) <= cfg.furniture_count_range[1]
        assert scene.floor_area == pytest.approx(meta["width"] * meta["length"])
        assert len(scene.part_names) == int(scene.face_part.max()) + 1


def test_furniture_inside_room_and_not_overlapping(rooms):
    for scene in rooms:
        meta = scene.metadata
        objects = meta["objects"]
        for obj in objects:
            corners = footprint_corners(obj)
            assert np.all(scene.contains_xy(corners)), obj["name"]
            # The piece's mesh stays within the interior (it does not cut into the walls) and the ceiling.
            part = scene.part_names.index(obj["name"])
            verts = scene.mesh.vertices[np.unique(scene.mesh.faces[scene.face_part == part])]
            assert verts[:, 0].min() >= 0 and verts[:, 0].max() <= meta["width"], obj["name"]
            assert verts[:, 1].min() >= 0 and verts[:, 1].max() <= meta["length"], obj["name"]
            assert verts[:, 2].min() >= -1e-9 and verts[:, 2].max() < scene.height, obj["name"]
        # Rasterise the floor-standing footprints: no floor point is covered twice.
        xs, ys = np.meshgrid(np.arange(0.0, meta["width"], 0.02), np.arange(0.0, meta["length"], 0.02))
        points = np.stack([xs.ravel(), ys.ravel()], 1)
        cover = np.zeros(len(points), dtype=np.int32)
        for obj in objects:
            if obj["support"] is not None:
                assert obj["support"] in scene.part_names
                continue
            c, s = np.cos(obj["yaw"]), np.sin(obj["yaw"])
            local = (points - obj["center"]) @ np.array([[c, -s], [s, c]])
            cover += np.all(np.abs(local) <= obj["half_extents"], axis=1)
        assert cover.max() <= 1


def test_materials_valid_and_textured(rooms):
    for scene in rooms:
        attrs = np.stack([m.constant_attributes() for m in scene.mesh.materials])
        assert np.all((attrs >= 0) & (attrs <= 1))
        rough = attrs[:, 4]
        assert np.all((rough >= 0.2) & (rough <= 0.9))
        assert np.mean(attrs[:, 3] == 0) > 0.5  # metallic mostly 0
        floor = scene.part_names.index("floor")
        floor_mats = {int(m) for m in np.unique(scene.mesh.face_material[scene.face_part == floor])}
        assert all(scene.mesh.materials[m].base_color_texture is not None for m in floor_mats)
        assert scene.mesh.uv is not None


def test_shell_is_watertight_with_openings(rooms):
    for scene in rooms:
        shell_parts = [
            k for k, n in enumerate(scene.part_names) if n in ("floor", "ceiling") or n.startswith("wall_")
        ]
        shell = scene.mesh.submesh(np.isin(scene.face_part, shell_parts))
        t = trimesh.Trimesh(shell.vertices, shell.faces)
        assert t.is_watertight and t.is_winding_consistent and t.volume > 0
        assert ("ceiling" in scene.part_names) == scene.has_ceiling
        # Door openings reach the floor: the floor top (z = 0) is visible through them from outside.
        for opening in scene.metadata["openings"]:
            assert opening["bottom"] == (0.0 if opening["kind"] == "door" else 0.9)


def test_config_switches():
    cfg = SyntheticRoomConfig(
        ceiling_probability=1.0,
        floor_texture=False,
        wall_texture=False,
        furniture_textures=False,
        furniture_count_range=(5, 6),
        window_count_range=(2, 2),
    )
    scene = generate_room(3, 0, cfg)
    assert scene.has_ceiling and "ceiling" in scene.part_names
    assert all(m.base_color_texture is None for m in scene.mesh.materials)
    assert 5 <= len(scene.metadata["objects"]) <= 6
    assert not generate_room(3, 0, replace(cfg, ceiling_probability=0.0)).has_ceiling
    with pytest.raises(ValueError):
        SyntheticRoomConfig(width_range=(5.0, 4.0))
    with pytest.raises(ValueError):
        generate_room(-1, 0)


def test_generation_is_fast():
    start = time.perf_counter()
    for index in range(3):
        generate_room(99, index)
    assert (time.perf_counter() - start) / 3 < 1.0
