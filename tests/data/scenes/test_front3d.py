import json
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from genrecon.data.errors import DataFormatError, SkipLog
from genrecon.data.scenes import load_front3d_house
from genrecon.data.scenes.front3d import ZUP_FROM_YUP, quaternion_xyzw_to_matrix, read_obj

# A box model in the native Y-up frame: x in [-0.3, 0.3], y (up) in [0, 0.9], z in [-0.1, 0.1].
LO, HI = np.array([-0.3, 0.0, -0.1]), np.array([0.3, 0.9, 0.1])
# Outward counter-clockwise quads over corner index 4i + 2j + k (bits select HI on x, y, z).
QUADS = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
YAW = np.pi / 2
CHAIR_POS = [1.0, 0.0, -1.0]


def write_box_obj(path: Path, bad_index: bool = False) -> None:
    corners = [np.where([i, j, k], HI, LO) for i in (0, 1) for j in (0, 1) for k in (0, 1)]
    lines = [
        "mtllib model.mtl",
        *(f"v {x} {y} {z}" for x, y, z in corners),
        "vt 0 0",
        "vt 1 0",
        "vt 1 1",
        "vt 0 1",
        "vn 0 1 0",
        "usemtl m",
    ]
    for n, quad in enumerate(QUADS):
        a, b, c, d = (v + 1 for v in quad)
        if bad_index and n == 2:
            a = 99
        lines.append(f"f {a}/1/1 {b}/2/1 {c}/3/1 {d}/4/1")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def write_png(path: Path, rgb=(200, 120, 40)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 4, 3), rgb, dtype=np.uint8)).save(path)


def square_floor(uid: str) -> dict:
    """4 x 3 m floor at native y = 0 whose z-up image is [0, 4] x [0, 3], facing +y (up)."""
    return {
        "uid": uid,
        "type": "Floor",
        "material": "mat-floor",
        "constructid": "c0",
        "instanceid": "i0",
        "xyz": [0, 0, 0, 4, 0, 0, 4, 0, -3, 0, 0, -3],
        "faces": [0, 1, 2, 0, 2, 3],
        "uv": [0, 0, 1, 0, 1, 0.75, 0, 0.75],
        "normal": [0, 1, 0] * 4,
    }


def house(rooms: list, meshes: list) -> dict:
    return {
        "uid": "house-1",
        "furniture": [
            {"uid": "f-chair", "jid": "chair-jid", "valid": True, "category": "Chair"},
            {"uid": "f-missing", "jid": "missing-jid", "valid": True, "category": "Table"},
            {"uid": "f-invalid", "jid": "whatever"},
            {"uid": "f-broken", "jid": "broken-jid", "valid": True},
            {"uid": "f-notex", "jid": "notex-jid", "valid": True, "title": "sofa/couch"},
        ],
        "material": [
            {
                "uid": "mat-floor",
                "jid": "tex-floor",
                "texture": "https://example.invalid/t/tex-floor/texture.png",
                "normaltexture": "",
                "color": [255, 255, 255, 255],
                "UVTransform": [2, 0, 0, 0, 2, 0, 0, 0, 1],
            },
            {"uid": "mat-wall", "jid": "", "texture": "", "normaltexture": "", "color": [200, 100, 50]},
        ],
        "mesh": meshes,
        "scene": {"room": rooms},
    }


GOOD_MESHES = [
    square_floor("m-floor"),
    {
        "uid": "m-wall",
        "type": "WallInner",
        "material": "mat-wall",
        "xyz": [0, 0, 0, 0, 0, -3, 0, 2.8, -3, 0, 2.8, 0],
        "faces": [0, 1, 2, 0, 2, 3],
        "uv": [0, 0, 1, 0, None, 1, 0, 1],
        "normal": [1, 0, 0] * 4,
    },
    {
        "uid": "m-ceil",
        "type": "Ceiling",
        "xyz": [0, 2.8, 0, 0, 2.8, -3, 4, 2.8, -3, 4, 2.8, 0],
        "faces": [0, 1, 2, 0, 2, 3],
        "uv": [0, 0, 0, 1, 1, 1, 1, 0],
        "normal": [0, -1, 0] * 4,
    },
]
CHAIR = {
    "ref": "f-chair",
    "instanceid": "furniture/1",
    "pos": CHAIR_POS,
    "rot": [0, np.sin(YAW / 2), 0, np.cos(YAW / 2)],
    "scale": [1, 1, 1],
}
GOOD_ROOM = {
    "type": "Bedroom",
    "instanceid": "Bedroom-1",
    "children": [
        {"ref": "m-floor"},
        {"ref": "m-wall"},
        {"ref": "m-ceil"},
        CHAIR,
        {"ref": "f-invalid", "pos": [0, 0, 0], "rot": [0, 0, 0, 1], "scale": [1, 1, 1]},
        {"ref": "light-without-entry"},
    ],
}


@pytest.fixture
def dataset(tmp_path: Path) -> dict:
    models, textures = tmp_path / "3D-FUTURE-model", tmp_path / "3D-FRONT-texture"
    write_box_obj(models / "chair-jid" / "raw_model.obj")
    write_png(models / "chair-jid" / "texture.png")
    write_box_obj(models / "broken-jid" / "raw_model.obj", bad_index=True)  # no texture.png either
    write_box_obj(models / "notex-jid" / "raw_model.obj")  # no texture.png
    write_png(textures / "tex-floor" / "texture.png", (90, 60, 30))
    good = tmp_path / "good.json"
    good.write_text(json.dumps(house([GOOD_ROOM], GOOD_MESHES)))
    bad_meshes = [
        *GOOD_MESHES,
        square_floor("m-floor-2"),
        {
            "uid": "m-bad",
            "type": "WallInner",
            "material": "mat-wall",
            "xyz": [0, 0, 0, 1, 0, 0, 1],
            "faces": [0, 1, 2],
        },
    ]
    bad_room = {
        "type": "LivingRoom",
        "instanceid": "LivingRoom-2",
        "children": [
            {"ref": "m-floor-2"},
            {"ref": "m-bad"},
            {"ref": "m-wall"},
            {"ref": "f-missing", "pos": [0, 0, 0], "rot": [0, 0, 0, 1], "scale": [1, 1, 1]},
            {"ref": "f-broken", "pos": [0, 0, 0], "rot": [0, 0, 0, 1], "scale": [1, 1, 1]},
            {**CHAIR, "rot": [0, 1, 0]},
            {**CHAIR, "ref": "f-notex"},
            {"instanceid": "no-ref"},
        ],
    }
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(house([GOOD_ROOM, bad_room], bad_meshes)))
    return {"good": good, "bad": bad, "models": models, "textures": textures}


def test_quaternion_is_xyzw_yaw_about_y():
    r = quaternion_xyzw_to_matrix([0, np.sin(YAW / 2), 0, np.cos(YAW / 2)])
    assert np.allclose(r @ [1, 0, 0], [0, 0, -1])  # +90 degrees about +Y turns +x into -z
    assert np.isclose(np.linalg.det(ZUP_FROM_YUP[:3, :3]), 1.0)
    assert np.allclose(ZUP_FROM_YUP[:3, :3] @ [0, 1, 0], [0, 0, 1])


def test_read_obj_triangulates_quads(dataset):
    vertices, uv, faces = read_obj(dataset["models"] / "chair-jid" / "raw_model.obj")
    assert faces.shape == (12, 3) and uv.shape == (len(vertices), 2)
    closed = trimesh.Trimesh(vertices, faces)
    assert closed.is_watertight and closed.volume == pytest.approx(0.6 * 0.9 * 0.2)


def test_good_house(dataset):
    log = SkipLog("raise")
    (scene,) = load_front3d_house(dataset["good"], dataset["models"], dataset["textures"], log=log)
    assert scene.scene_id == "house-1_Bedroom-1"
    assert scene.part_names == ["Floor_0", "WallInner_1", "Ceiling_2", "Chair_3"]
    assert scene.floor_area == pytest.approx(12.0)
    assert np.allclose(scene.floor_bounds, [[0, 0], [4, 3]])
    assert scene.height == pytest.approx(2.8) and scene.has_ceiling
    mesh = scene.mesh
    floor = scene.face_part == 0
    # A rotation (not a reflection) keeps the floor's winding: its normals point up in the z-up frame.
    assert np.allclose(mesh.face_normals()[floor], [0, 0, 1])
    assert np.allclose(mesh.vertices[np.unique(mesh.faces[floor])][:, 2], 0.0)
    floor_material = mesh.materials[mesh.face_material[floor][0]]
    assert floor_material.base_color_texture is not None
    assert mesh.uv[np.unique(mesh.faces[floor])].max() == pytest.approx(2.0)  # UVTransform applied
    wall_material = mesh.materials[mesh.face_material[scene.face_part == 1][0]]
    assert wall_material.base_color == pytest.approx((200 / 255, 100 / 255, 50 / 255))
    # Chair: R(q)(s*v) + pos in the native frame, then (x, y, z) -> (x, -z, y).
    chair = mesh.submesh(scene.face_part == 3)
    assert np.any(np.all(np.isclose(chair.vertices, [1.1, 1.3, 0.0]), axis=1))  # native corner (0.3, 0, 0.1)
    assert np.allclose(chair.bounds(), [[0.9, 0.7, 0.0], [1.1, 1.3, 0.9]])
    closed = trimesh.Trimesh(chair.vertices, chair.faces)
    assert closed.is_watertight and closed.volume > 0
    assert chair.materials[0].base_color_texture is not None
    assert scene.metadata["skipped"] == {
        "mesh_without_uv": 1,
        "mesh_without_material": 1,
        "furniture_not_valid": 1,
        "unresolved_ref": 1,
    }


def test_malformed_house_raises_naming_file_and_field(dataset):
    with pytest.raises(DataFormatError) as info:
        load_front3d_house(dataset["bad"], dataset["models"], dataset["textures"])
    assert info.value.path == str(dataset["bad"])
    assert info.value.field == "mesh[4].xyz"
    assert str(dataset["bad"]) in str(info.value) and "mesh[4].xyz" in str(info.value)


def test_malformed_obj_raises_naming_obj_and_line(dataset):
    data = json.loads(dataset["good"].read_text())
    data["scene"]["room"][0]["children"][3]["ref"] = "f-broken"
    path = dataset["good"].with_name("broken.json")
    path.write_text(json.dumps(data))
    with pytest.raises(DataFormatError) as info:
        load_front3d_house(path, dataset["models"])
    assert info.value.path.endswith("broken-jid/raw_model.obj")
    assert info.value.field.startswith("line ")


def test_skip_mode_counts(dataset):
    log = SkipLog("skip")
    scenes = load_front3d_house(
        dataset["bad"], dataset["models"], dataset["textures"], on_error="skip", log=log
    )
    assert [s.scene_id for s in scenes] == ["house-1_Bedroom-1", "house-1_LivingRoom-2"]
    skipped = scenes[1].metadata["skipped"]
    assert skipped == {
        "malformed_mesh": 1,
        "missing_model": 1,
        "malformed_model": 1,
        "malformed_child": 1,
        "malformed_transform": 1,
        "mesh_without_uv": 1,
        "missing_texture": 1,
    }
    assert scenes[1].part_names == ["Floor_0", "WallInner_1", "sofa_couch_2"]  # kept, untextured
    sofa_materials = np.unique(scenes[1].mesh.face_material[scenes[1].face_part == 2])
    assert all(scenes[1].mesh.materials[m].base_color_texture is None for m in sofa_materials)
    assert log.counts["malformed_mesh"] == 1 and log.counts["furniture_not_valid"] == 1
    assert any("furniture[1].jid" in m for m in log.messages)


def test_unreadable_house(tmp_path):
    path = tmp_path / "house.json"
    path.write_text("{not json")
    with pytest.raises(DataFormatError) as info:
        load_front3d_house(path, tmp_path)
    assert info.value.path == str(path)
    log = SkipLog("skip")
    assert load_front3d_house(path, tmp_path, on_error="skip", log=log) == []
    assert log.counts == {"malformed_house": 1}
