import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from genrecon.data.errors import DataFormatError, SkipLog
from genrecon.data.scenes import load_sage_scene
from genrecon.data.scenes.sage import euler_xyz_degrees_to_matrix, read_door_uv_rect, read_textured_ply

# A box object, 1.0 x 0.4 x 0.5 m, bottom at z = 0 in its own frame; 6 outward quads.
BOX_LO, BOX_HI = np.array([-0.5, -0.2, 0.0]), np.array([0.5, 0.2, 0.5])
CORNERS = np.array([np.where([i, j, k], BOX_HI, BOX_LO) for i in (0, 1) for j in (0, 1) for k in (0, 1)])
QUADS = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
UVS = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=np.float32)


def write_ply(path: Path, polys: list, tex_polys: list, binary: bool) -> None:
    head = [
        "ply",
        f"format {'binary_little_endian' if binary else 'ascii'} 1.0",
        "comment test",
        f"element vertex {len(CORNERS)}",
        "property float x",
        "property float y",
        "property float z",
        f"element texcoord {len(UVS)}",
        "property float u",
        "property float v",
        f"element face {len(polys)}",
        "property list uchar int vertex_indices",
        "property list uchar int texcoord_indices",
        "end_header",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    if not binary:
        rows = [" ".join(map(str, v)) for v in CORNERS] + [" ".join(map(str, t)) for t in UVS]
        rows += [
            f"{len(p)} {' '.join(map(str, p))} {len(t)} {' '.join(map(str, t))}"
            for p, t in zip(polys, tex_polys)
        ]
        path.write_text("\n".join(head + rows) + "\n")
        return
    body = CORNERS.astype("<f4").tobytes() + UVS.astype("<f4").tobytes()
    for p, t in zip(polys, tex_polys):
        body += struct.pack(f"<B{len(p)}i", len(p), *p) + struct.pack(f"<B{len(t)}i", len(t), *t)
    path.write_bytes(("\n".join(head) + "\n").encode() + body)


def write_png(path: Path, rgb=(180, 150, 120)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 4, 3), rgb, dtype=np.uint8)).save(path)


def wall(wid: str, a: tuple, b: tuple) -> dict:
    return {
        "id": wid,
        "start_point": {"x": a[0], "y": a[1], "z": 0.0},
        "end_point": {"x": b[0], "y": b[1], "z": 0.0},
        "height": 2.7,
        "thickness": 0.1,
        "material": "plaster",
    }


def sage_object(oid: str, sid: str, pos=(2.0, 1.0, 0.0), yaw=90.0) -> dict:
    return {
        "id": oid,
        "source_id": sid,
        "position": dict(zip("xyz", pos)),
        "rotation": {"x": 0, "y": 0, "z": yaw},
        "pbr_parameters": {"metallic": 0.2, "roughness": 0.7},
    }


QUAD_TEX = [(0, 1, 2, 3)] * 6
TRI_POLYS = [(a, b, c) for q in QUADS for (a, b, c) in ((q[0], q[1], q[2]), (q[0], q[2], q[3]))]
TRI_TEX = [(0, 1, 2), (0, 2, 3)] * 6


@pytest.fixture
def scene_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "rooms_raw" / "abcd1234"
    write_png(folder / "materials" / "oak.png")
    write_png(folder / "materials" / "plaster.png", (230, 230, 225))
    write_png(folder / "materials" / "Door_3_texture.png", (120, 80, 40))
    uv = {
        "vts": np.array([[0.1, 0.2], [0.6, 0.2], [0.6, 0.9], [0.1, 0.9], [0.95, 0.99]]),
        "fts": np.array([[0, 1, 2], [0, 2, 3]]),
    }
    (folder / "materials" / "Door_3_tex_coords.pkl").write_bytes(pickle.dumps(uv))
    write_ply(folder / "objects" / "sofa01.ply", QUADS, QUAD_TEX, binary=True)
    write_png(folder / "objects" / "sofa01_texture.png")
    # ASCII, triangles and quads mixed.
    write_ply(
        folder / "objects" / "lamp01.ply", TRI_POLYS[:4] + QUADS[2:], TRI_TEX[:4] + QUAD_TEX[2:], binary=False
    )
    write_png(folder / "objects" / "lamp01_texture.png")
    layout = {
        "rooms": [
            {
                "id": "room_0",
                "dimensions": {"width": 4.0, "length": 3.0, "height": 2.7},
                "floor_material": "oak",
                "walls": [
                    wall("w0", (0, 0), (4, 0)),
                    wall("w1", (4, 0), (4, 3)),
                    wall("w2", (4, 3), (0, 3)),
                    wall("w3", (0, 3), (0, 0)),
                ],
                "doors": [
                    {
                        "id": "d0",
                        "wall_id": "w0",
                        "position_on_wall": 0.25,
                        "width": 0.9,
                        "height": 2.0,
                        "door_material": "Door_3",
                    }
                ],
                "objects": [
                    sage_object("sofa_1", "sofa01"),
                    sage_object("lamp_1", "lamp01", (3.5, 2.5, 0.0), 0.0),
                ],
            }
        ]
    }
    (folder / "layout_abcd1234.json").write_text(json.dumps(layout))
    return folder


def add_objects(folder: Path, *objects: dict) -> None:
    path = folder / "layout_abcd1234.json"
    layout = json.loads(path.read_text())
    layout["rooms"][0]["objects"] += list(objects)
    path.write_text(json.dumps(layout))


def test_euler_xyz_is_blender_order():
    r = euler_xyz_degrees_to_matrix(90, 0, 90)  # x first, then z: +y -> +z -> +z, +x -> +x -> +y
    assert np.allclose(r @ [0, 1, 0], [0, 0, 1]) and np.allclose(r @ [1, 0, 0], [0, 1, 0])


@pytest.mark.parametrize("binary", [True, False])
def test_read_textured_ply(tmp_path, binary):
    polys = TRI_POLYS[:4] + QUADS[2:]  # mixed sizes: the binary reader's row-by-row path
    path = tmp_path / "box.ply"
    write_ply(path, polys, TRI_TEX[:4] + QUAD_TEX[2:], binary)
    vertices, uv, faces = read_textured_ply(path)
    assert faces.shape == (12, 3) and uv.shape == (len(vertices), 2)
    closed = trimesh.Trimesh(vertices, faces)
    assert closed.is_watertight and closed.volume == pytest.approx(0.2)


def test_scene(scene_dir):
    scene = load_sage_scene(scene_dir)
    assert scene.scene_id == "room_0"
    assert scene.part_names == [
        "floor",
        "ceiling",
        "wall_w0",
        "wall_w1",
        "wall_w2",
        "wall_w3",
        "door_d0",
        "sofa_1",
        "lamp_1",
    ]
    assert np.allclose(scene.floor_bounds, [[0, 0], [4, 3]]) and scene.height == 2.7 and scene.has_ceiling
    mesh = scene.mesh
    normals = mesh.face_normals()

    def part(name):
        return scene.face_part == scene.part_names.index(name)

    assert np.allclose(normals[part("floor")], [0, 0, 1]) and np.allclose(
        normals[part("ceiling")], [0, 0, -1]
    )
    assert mesh.materials[mesh.face_material[part("floor")][0]].roughness == 0.9
    w0 = mesh.submesh(part("wall_w0"))
    assert np.allclose(w0.bounds(), [[0, -0.05, 0], [4, 0.05, 2.7]])
    assert trimesh.Trimesh(w0.vertices, w0.faces).volume > 0
    # Door: centred at 25 % of w0, pushed thickness/2 + 6 mm to the (sin a, -cos a) = -y side, facing away.
    door = mesh.submesh(part("door_d0"))
    assert np.allclose(door.bounds(), [[0.55, -0.056, 0], [1.45, -0.056, 2.0]])
    assert np.allclose(normals[part("door_d0")], [0, -1, 0])
    assert np.allclose(door.uv.min(0), [0.1, 0.2]) and np.allclose(door.uv.max(0), [0.6, 0.9])
    # Sofa: Euler z = 90 degrees then position (2, 1, 0): local +x (half length 0.5) maps to +y.
    sofa = mesh.submesh(part("sofa_1"))
    assert np.allclose(sofa.bounds(), [[1.8, 0.5, 0.0], [2.2, 1.5, 0.5]], atol=1e-6)
    assert trimesh.Trimesh(sofa.vertices, sofa.faces).volume == pytest.approx(0.2)
    material = mesh.materials[mesh.face_material[part("sofa_1")][0]]
    assert (material.metallic, material.roughness) == (0.2, 0.7) and material.base_color_texture is not None
    lamp = mesh.submesh(part("lamp_1"))
    assert np.allclose(lamp.bounds(), [[3.0, 2.3, 0.0], [4.0, 2.7, 0.5]], atol=1e-6)
    assert scene.metadata["skipped"] == {}


def test_malformed_ply_raises_naming_file_and_field(scene_dir):
    bad_tex = [(0, 1, 2, 7)] + QUAD_TEX[1:]  # texcoord index 7 of 4
    write_ply(scene_dir / "objects" / "broken.ply", QUADS, bad_tex, binary=True)
    add_objects(scene_dir, sage_object("broken_1", "broken"))
    with pytest.raises(DataFormatError) as info:
        load_sage_scene(scene_dir)
    assert info.value.path == str(scene_dir / "objects" / "broken.ply")
    assert info.value.field == "face.texcoord_indices"
    assert "broken.ply" in str(info.value) and "face.texcoord_indices" in str(info.value)


def test_malformed_layout_field_raises(scene_dir):
    bad = sage_object("bad_pbr", "sofa01")
    bad["pbr_parameters"]["roughness"] = 1.5
    add_objects(scene_dir, bad)
    with pytest.raises(DataFormatError) as info:
        load_sage_scene(scene_dir)
    assert info.value.path == str(scene_dir / "layout_abcd1234.json")
    assert info.value.field == "rooms[0].objects[2].pbr_parameters.roughness"


def test_skip_mode_counts(scene_dir):
    write_ply(scene_dir / "objects" / "broken.ply", QUADS, [(0, 1, 2, 7)] + QUAD_TEX[1:], binary=True)
    write_ply(scene_dir / "objects" / "notex.ply", QUADS, QUAD_TEX, binary=False)
    no_rotation = sage_object("no_rotation", "sofa01")
    del no_rotation["rotation"]
    add_objects(
        scene_dir,
        sage_object("broken_1", "broken"),
        sage_object("ghost_1", "ghost"),
        sage_object("notex_1", "notex"),
        no_rotation,
    )
    (scene_dir / "materials" / "Door_3_tex_coords.pkl").unlink()
    log = SkipLog("skip")
    scene = load_sage_scene(scene_dir, on_error="skip", log=log)
    expected = {
        "malformed_model": 1,
        "missing_model": 1,
        "missing_texture": 1,
        "malformed_object": 1,
        "missing_door_asset": 1,
    }
    assert scene.metadata["skipped"] == expected and dict(log.counts) == expected
    assert "notex_1" in scene.part_names and "broken_1" not in scene.part_names
    assert "door_d0" not in scene.part_names


def test_missing_layout_and_unsafe_pickle(tmp_path):
    with pytest.raises(DataFormatError) as info:
        load_sage_scene(tmp_path)
    assert info.value.field == "layout_*.json"

    class Exploit:
        def __reduce__(self):
            return (print, ("unpickled code ran",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(DataFormatError):
        read_door_uv_rect(path)
