"""SAGE-10k importer: one extracted scene folder -> :class:`Scene`, built the way GenRecon's Blender script
(``data_toolkit_scenes/blender_scripts/build_rooms.py``) builds it.

Established layout (reference §4 and that script):

- ``layout_<id>.json`` (the first ``layout_*.json`` in name order), ``materials/<name>.png`` surface
  textures, ``materials/<door>_texture.png`` + ``<door>_tex_coords.pkl`` door textures and UVs,
  ``objects/<source_id>.ply`` + ``objects/<source_id>_texture.png``.
- Only ``rooms[room_index]`` is built (GenRecon builds ``rooms[0]``). Fields used: ``id``,
  ``dimensions.{width,length,height}`` (floor ``[0, width] x [0, length]`` at z = 0, ceiling at z = height),
  ``floor_material``, ``ceiling_material`` (falls back to the first wall's material), ``walls[]`` (``id``,
  ``start_point``, ``end_point``, ``height`` default room height, ``thickness`` default 0.1, ``material``),
  ``doors[]`` (``id``, ``wall_id``, ``position_on_wall`` 0-1 default 0.5, ``width``, ``height``,
  ``door_material`` default ``Door_9``), ``objects[]`` (``id``, ``source_id``, ``position{x,y,z}``,
  ``rotation{x,y,z}`` in degrees applied as Euler XYZ, i.e. ``R = Rz Ry Rx``, ``pbr_parameters{metallic,
  roughness}`` default 0 / 0.5).
- Frame: z-up, metres. Object PLYs are placed with ``R v + position`` and no axis change, as GenRecon does.
- PLY: ``vertex`` (x, y, z), a separate ``texcoord`` element (u, v) and ``face`` with list properties
  ``vertex_indices`` and ``texcoord_indices``; ASCII or binary little-endian. Polygons are fan-triangulated.

Geometry as GenRecon builds it: the floor and ceiling are single quads (normals up / down); each wall is a
box of its thickness centred on the start-end segment, without openings; a door is a quad of the door's size,
centred at ``position_on_wall`` along the wall, pushed ``thickness/2 + 6 mm`` to the wall's
``(sin a, -cos a)`` side (``a`` the wall direction) and facing away from the wall. Roughness 0.9 floor,
0.95 walls and ceiling, 0.6 doors, metallic 0.

Not established, so handled as stated rather than guessed:

- The full layout schema (windows, other keys, several rooms per file): only the fields above are read.
- Whether object PLYs are Z-up or Y-up in their own frame: used as they are (GenRecon applies no change).
- Any object scale field: none is applied.
- Surface UVs: GenRecon runs Blender's Smart UV Project; we map each floor/ceiling/wall face planarly, scaled
  so the face's longer side spans one texture repeat (Smart UV Project of a single quad gives that).
- Door UV pickles: read with a restricted unpickler (numpy arrays, lists and dicts only); the UV rectangle is
  the bounding box of the ``vts`` that ``fts`` references (all ``vts`` without ``fts``), mapped to the quad's
  corners (bottom-left, bottom-right, top-right, top-left). Door frame assets are not built: GenRecon places
  the frame as a same-size quad 1 mm behind the leaf, where it is hidden.
- Texture images are used at their own size (GenRecon rescales them to square powers of two).

Errors: structural problems of the layout (no layout file, no ``rooms[room_index]``, bad ``dimensions``)
always raise :class:`DataFormatError`. Per-item problems follow ``on_error``: ``"raise"`` raises naming the
file and field; ``"skip"`` drops the wall / door / object (a missing texture only drops the texture) and
counts it in the :class:`SkipLog` under ``malformed_wall``, ``malformed_door``, ``missing_door_asset``,
``malformed_object``, ``missing_model``, ``malformed_model`` or ``missing_texture``; the counts are also in
``Scene.metadata["skipped"]``. Surfaces with no material name are untextured without counting.
"""

from __future__ import annotations

import io
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from genrecon.data.errors import DataFormatError, OnError, SkipLog
from genrecon.data.scenes.front3d import polygons_to_mesh, read_texture
from genrecon.data.scenes.scene import Scene
from genrecon.geometry.mesh import PBRMaterial, PBRMesh
from genrecon.geometry.primitives import box, merge_parts

_FLOOR_ROUGHNESS, _WALL_ROUGHNESS, _CEILING_ROUGHNESS, _DOOR_ROUGHNESS = 0.9, 0.95, 0.95, 0.6
_DOOR_PUSH = 0.005 + 0.001  # GenRecon's DOOR_EPSILON + EXTRA_OFFSET beyond half the wall thickness
_UNTEXTURED = (0.8, 0.8, 0.8)

# ------------------------------------------------------------------------------------------- PLY
_PLY_TYPES = {
    "char": "i1",
    "int8": "i1",
    "uchar": "u1",
    "uint8": "u1",
    "short": "i2",
    "int16": "i2",
    "ushort": "u2",
    "uint16": "u2",
    "int": "i4",
    "int32": "i4",
    "uint": "u4",
    "uint32": "u4",
    "float": "f4",
    "float32": "f4",
    "double": "f8",
    "float64": "f8",
}


@dataclass
class _PlyElement:
    name: str
    count: int
    props: list[tuple[str, str, str | None]]  # (name, value type, list count type or None)


def _ply_header(path: Path, raw: bytes) -> tuple[str, list[_PlyElement], int]:
    """Format, elements and byte offset of the body."""
    end = raw.find(b"end_header")
    if not raw.startswith(b"ply") or end < 0:
        raise DataFormatError(path, "header", "not a PLY file (missing 'ply' or 'end_header')")
    body = raw.index(b"\n", end) + 1
    fmt, elements = None, []
    for line in raw[:end].decode("ascii", errors="replace").splitlines()[1:]:
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        try:
            if words[0] == "format":
                fmt = words[1]
            elif words[0] == "element":
                elements.append(_PlyElement(words[1], int(words[2]), []))
            elif words[0] == "property" and words[1] == "list":
                elements[-1].props.append((words[4], _PLY_TYPES[words[3]], _PLY_TYPES[words[2]]))
            elif words[0] == "property":
                elements[-1].props.append((words[2], _PLY_TYPES[words[1]], None))
        except (IndexError, KeyError, ValueError) as exc:
            raise DataFormatError(path, "header", f"bad header line {line!r}") from exc
    if fmt not in ("ascii", "binary_little_endian"):
        raise DataFormatError(
            path, "format", f"unsupported PLY format {fmt!r} (ascii or binary_little_endian)"
        )
    return fmt, elements, body


def _read_binary_element(path: Path, raw: bytes, offset: int, element: _PlyElement) -> tuple[dict, int]:
    """Columns of one element of a little-endian body; list properties become ``(counts, flat values)``."""
    if all(kind is None for _, _, kind in element.props):
        dtype = np.dtype([(name, "<" + t) for name, t, _ in element.props])
        end = offset + dtype.itemsize * element.count
        if end > len(raw):
            raise DataFormatError(path, element.name, "file ends inside this element")
        table = np.frombuffer(raw, dtype, element.count, offset)
        return {name: table[name] for name, _, _ in element.props}, end
    # Lists: fast path when every row has the same lengths as the first (e.g. all triangles), else row by row.
    first, pos = [], offset
    for name, t, count_t in element.props:
        if count_t is None:
            first.append((name, "<" + t, 1))
            pos += np.dtype(t).itemsize
        else:
            if pos + np.dtype(count_t).itemsize > len(raw):
                raise DataFormatError(path, element.name, "file ends inside this element")
            n = int(np.frombuffer(raw, "<" + count_t, 1, pos)[0])
            first.append((name, None, (count_t, t, n)))
            pos += np.dtype(count_t).itemsize + n * np.dtype(t).itemsize
    fields = []
    for name, t, spec in first:
        if t is not None:
            fields.append((name, t))
        else:
            count_t, value_t, n = spec
            fields.append((name + "__count", "<" + count_t))
            fields.append((name, "<" + value_t, (n,)))
    dtype = np.dtype(fields)
    end = offset + dtype.itemsize * element.count
    if end <= len(raw) and element.count > 0:
        table = np.frombuffer(raw, dtype, element.count, offset)
        uniform = all(np.all(table[name + "__count"] == spec[2]) for name, t, spec in first if t is None)
        if uniform:
            return {
                name: (np.full(element.count, spec[2]), table[name].reshape(-1)) if t is None else table[name]
                for name, t, spec in first
            }, end
    columns: dict[str, list] = {name: [] for name, _, _ in element.props}
    pos = offset
    for _ in range(element.count):
        for name, t, count_t in element.props:
            size = np.dtype(count_t or t).itemsize
            if pos + size > len(raw):
                raise DataFormatError(path, element.name, "file ends inside this element")
            value = np.frombuffer(raw, "<" + (count_t or t), 1, pos)[0]
            pos += size
            if count_t is not None:
                n = int(value)
                if pos + n * np.dtype(t).itemsize > len(raw):
                    raise DataFormatError(path, element.name, "file ends inside this element")
                value = np.frombuffer(raw, "<" + t, n, pos)
                pos += n * np.dtype(t).itemsize
            columns[name].append(value)
    return {
        name: _pack(values) if kind else np.array(values)
        for (name, _, kind), values in zip(element.props, columns.values())
    }, pos


def _pack(rows: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    counts = np.array([len(r) for r in rows], dtype=np.int64)
    return counts, (np.concatenate(rows) if rows else np.zeros(0))


def _read_ascii_elements(path: Path, raw: bytes, offset: int, elements: list[_PlyElement]) -> dict[str, dict]:
    lines = raw[offset:].decode("ascii", errors="replace").splitlines()
    lines = [ln for ln in lines if ln.strip()]
    out, row = {}, 0
    for element in elements:
        if row + element.count > len(lines):
            raise DataFormatError(path, element.name, "file ends inside this element")
        columns: dict[str, list] = {name: [] for name, _, _ in element.props}
        for line in lines[row : row + element.count]:
            words, k = line.split(), 0
            try:
                for name, _, count_t in element.props:
                    if count_t is None:
                        columns[name].append(float(words[k]))
                        k += 1
                    else:
                        n = int(words[k])
                        columns[name].append(np.array([float(w) for w in words[k + 1 : k + 1 + n]]))
                        if len(columns[name][-1]) != n:
                            raise IndexError
                        k += 1 + n
            except (IndexError, ValueError) as exc:
                raise DataFormatError(path, element.name, f"bad row {line!r}") from exc
        out[element.name] = {
            name: _pack(values) if kind else np.array(values)
            for (name, _, kind), values in zip(element.props, columns.values())
        }
        row += element.count
    return out


def read_textured_ply(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A SAGE object PLY -> split-vertex ``vertices [N, 3]``, ``uv [N, 2]``, ``faces [F, 3]``.

    Needs ``vertex`` (x, y, z), ``texcoord`` (u, v) and ``face`` with ``vertex_indices`` and
    ``texcoord_indices`` of equal length per face. Problems raise :class:`DataFormatError` naming the element
    or property, e.g. ``field="face.texcoord_indices"``.
    """
    raw = path.read_bytes()
    fmt, elements, offset = _ply_header(path, raw)
    if fmt == "ascii":
        data = _read_ascii_elements(path, raw, offset, elements)
    else:
        data = {}
        for element in elements:
            data[element.name], offset = _read_binary_element(path, raw, offset, element)
    for element, names in (
        ("vertex", ("x", "y", "z")),
        ("texcoord", ("u", "v")),
        ("face", ("vertex_indices", "texcoord_indices")),
    ):
        for name in names:
            if name not in data.get(element, {}):
                raise DataFormatError(path, f"{element}.{name}", "missing")
    vertex, texcoord, face = data["vertex"], data["texcoord"], data["face"]
    positions = np.stack([vertex[a] for a in "xyz"], axis=1).astype(np.float64)
    uv_table = np.stack([texcoord["u"], texcoord["v"]], axis=1).astype(np.float64)
    sizes, corner_v = face["vertex_indices"]
    t_sizes, corner_t = face["texcoord_indices"]
    if not np.array_equal(sizes, t_sizes):
        raise DataFormatError(path, "face.texcoord_indices", "corner counts differ from vertex_indices")
    if len(sizes) == 0 or sizes.min() < 3:
        raise DataFormatError(path, "face.vertex_indices", "no faces, or a face with fewer than 3 corners")
    corner_v, corner_t = corner_v.astype(np.int64), corner_t.astype(np.int64)
    if corner_v.min() < 0 or corner_v.max() >= len(positions):
        raise DataFormatError(path, "face.vertex_indices", "index out of range")
    if corner_t.min() < 0 or corner_t.max() >= len(uv_table):
        raise DataFormatError(path, "face.texcoord_indices", "index out of range")
    vertices, uv, faces = polygons_to_mesh(positions, uv_table, corner_v, corner_t, sizes)
    return vertices, uv, faces


# ------------------------------------------------------------------------------------------- door UV pickles
class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and numpy arrays: a pickle can otherwise run arbitrary code."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("builtins", "bytearray"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed")
        return super().find_class(module, name)


def read_door_uv_rect(path: Path) -> tuple[float, float, float, float]:
    """``(u_min, v_min, u_max, v_max)`` of a door UV pickle: ``{"vts": [N, 2], "fts": [M, k]}`` or an
    ``[N, 2]`` list/array."""
    try:
        data = _ArrayUnpickler(io.BytesIO(path.read_bytes())).load()
    except Exception as exc:  # unpickling reports corrupt data with many exception types
        raise DataFormatError(path, "<pickle>", f"unreadable UV pickle ({exc})") from exc
    vts, fts = (data.get("vts"), data.get("fts")) if isinstance(data, dict) else (data, None)
    try:
        uv = np.asarray(vts, dtype=np.float64)
        if uv.ndim != 2 or uv.shape[1] != 2 or len(uv) == 0:
            raise ValueError("vts must be [N, 2]")
        if fts is not None:
            idx = np.asarray(fts, dtype=np.int64).reshape(-1)
            if idx.size and (idx.min() < 0 or idx.max() >= len(uv)):
                raise ValueError("fts indexes outside vts")
            uv = uv[idx] if idx.size else uv
    except (TypeError, ValueError) as exc:
        raise DataFormatError(path, "vts", str(exc)) from exc
    return float(uv[:, 0].min()), float(uv[:, 1].min()), float(uv[:, 0].max()), float(uv[:, 1].max())


# ------------------------------------------------------------------------------------------- geometry
def euler_xyz_degrees_to_matrix(rx: float, ry: float, rz: float) -> np.ndarray:
    """``[3, 3]`` rotation of Blender's Euler XYZ mode (x first, then y, then z, about fixed axes)."""
    ax, ay, az = np.radians([rx, ry, rz])
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rot_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rot_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rot_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rot_z @ rot_y @ rot_x


def _quad(corners: np.ndarray, uv: np.ndarray, material: PBRMaterial) -> PBRMesh:
    """One quad from ``corners [4, 3]`` in counter-clockwise order seen from the front."""
    return PBRMesh(corners, np.array([[0, 1, 2], [0, 2, 3]]), np.zeros(2, np.int32), [material], uv=uv)


def _unit_square_uv(width: float, height: float) -> np.ndarray:
    """Corner UVs of a ``width x height`` quad scaled so its longer side spans [0, 1]."""
    s = max(width, height)
    return np.array([[0.0, 0.0], [width / s, 0.0], [width / s, height / s], [0.0, height / s]])


def _xyz(value: Any, path: Path, field: str, defaults: dict[str, float] | None = None) -> np.ndarray:
    """``{x, y, z}`` -> ``[3]``; axes in ``defaults`` may be missing (GenRecon reads them with ``.get``)."""
    if not isinstance(value, dict):
        raise DataFormatError(path, field, "expected an object with x, y, z")
    out = []
    for axis in "xyz":
        v = value.get(axis, (defaults or {}).get(axis))
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
            raise DataFormatError(path, f"{field}.{axis}", "expected a finite number")
        out.append(float(v))
    return np.array(out)


def _positive(entry: dict, key: str, path: Path, field: str, default: float | None = None) -> float:
    v = entry.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v <= 0:
        raise DataFormatError(path, f"{field}.{key}", "expected a positive number")
    return float(v)


class _SageRoom:
    def __init__(self, folder: Path, layout_path: Path, room: dict, room_field: str, log: SkipLog) -> None:
        self.folder, self.layout, self.room, self.field, self.log = folder, layout_path, room, room_field, log
        self.textures: dict[str, np.ndarray | None] = {}

    def _surface_material(self, name: Any, roughness: float, label: str, field: str) -> PBRMaterial:
        """``materials/<name>.png`` as base colour; untextured grey if unnamed or (skipped) missing."""
        if not name:
            return PBRMaterial(label, _UNTEXTURED, 0.0, roughness)
        texture = self._texture(self.folder / "materials" / f"{name}.png", field)
        if texture is None:
            return PBRMaterial(str(name), _UNTEXTURED, 0.0, roughness)
        return PBRMaterial(str(name), (1.0, 1.0, 1.0), 0.0, roughness, base_color_texture=texture)

    def _texture(self, path: Path, field: str) -> np.ndarray | None:
        key = str(path)
        if key not in self.textures:
            self.textures[key] = None
            try:
                if not path.is_file():
                    raise DataFormatError(self.layout, field, f"texture {path} not found")
                self.textures[key] = read_texture(path)
            except DataFormatError as exc:
                self.log.handle(exc, "missing_texture")
        return self.textures[key]

    def shell(self, width: float, length: float, height: float) -> list[tuple[str, PBRMesh]]:
        room, f = self.room, self.field
        walls = room.get("walls") or []
        first_wall = walls[0].get("material") if walls and isinstance(walls[0], dict) else None
        floor_mat = self._surface_material(
            room.get("floor_material"), _FLOOR_ROUGHNESS, "floor", f"{f}.floor_material"
        )
        ceiling_mat = self._surface_material(
            room.get("ceiling_material") or first_wall, _CEILING_ROUGHNESS, "ceiling", f"{f}.ceiling_material"
        )
        floor = np.array([[0, 0, 0], [width, 0, 0], [width, length, 0], [0, length, 0]], dtype=np.float64)
        ceiling = floor[::-1] + np.array([0.0, 0.0, height])
        ceiling_uv = _unit_square_uv(width, length)[::-1]
        parts = [
            ("floor", _quad(floor, _unit_square_uv(width, length), floor_mat)),
            ("ceiling", _quad(ceiling, ceiling_uv, ceiling_mat)),
        ]
        for k, wall in enumerate(walls):
            mesh = self._wall(k, wall, height, first_wall)
            if mesh is not None:
                parts.append((f"wall_{wall.get('id', k)}", mesh))
        return parts

    def _wall_geometry(
        self, wall: Any, field: str, room_height: float
    ) -> tuple[np.ndarray, np.ndarray, float, float]:
        """Start ``[2]``, end ``[2]``, height, thickness of a wall entry."""
        if not isinstance(wall, dict):
            raise DataFormatError(self.layout, field, "expected an object")
        start = _xyz(wall.get("start_point"), self.layout, f"{field}.start_point", {"z": 0.0})[:2]
        end = _xyz(wall.get("end_point"), self.layout, f"{field}.end_point", {"z": 0.0})[:2]
        if np.linalg.norm(end - start) < 1e-8:
            raise DataFormatError(self.layout, f"{field}.end_point", "zero-length wall")
        height = _positive(wall, "height", self.layout, field, room_height)
        thickness = _positive(wall, "thickness", self.layout, field, 0.1)
        return start, end, height, thickness

    def _wall(self, k: int, wall: Any, room_height: float, default_material: Any) -> PBRMesh | None:
        field = f"{self.field}.walls[{k}]"
        try:
            start, end, height, thickness = self._wall_geometry(wall, field, room_height)
        except DataFormatError as exc:
            self.log.handle(exc, "malformed_wall")
            return None
        material = self._surface_material(
            wall.get("material") or default_material, _WALL_ROUGHNESS, "wall", f"{field}.material"
        )
        length = float(np.linalg.norm(end - start))
        mesh = box((-length / 2, -thickness / 2, 0.0), (length / 2, thickness / 2, height), material)
        mesh.uv = mesh.uv / max(length, height)  # the face's longer side spans one texture repeat
        angle = float(np.arctan2(*(end - start)[::-1]))
        pose = np.eye(4)
        pose[:3, :3] = euler_xyz_degrees_to_matrix(0.0, 0.0, np.degrees(angle))
        pose[:2, 3] = (start + end) / 2
        return mesh.transformed(pose)

    def doors(self, height: float) -> list[tuple[str, PBRMesh]]:
        walls = {
            w.get("id"): (k, w) for k, w in enumerate(self.room.get("walls") or []) if isinstance(w, dict)
        }
        parts = []
        for k, door in enumerate(self.room.get("doors") or []):
            field = f"{self.field}.doors[{k}]"
            try:
                mesh = self._door(door, field, walls, height)
            except DataFormatError as exc:
                self.log.handle(exc, "malformed_door")
                continue
            if mesh is not None:
                parts.append((f"door_{door.get('id', k)}", mesh))
        return parts

    def _door(self, door: Any, field: str, walls: dict, room_height: float) -> PBRMesh | None:
        if not isinstance(door, dict):
            raise DataFormatError(self.layout, field, "expected an object")
        if door.get("wall_id") not in walls:
            raise DataFormatError(self.layout, f"{field}.wall_id", f"no wall with id {door.get('wall_id')!r}")
        wk, wall = walls[door["wall_id"]]
        start, end, _, thickness = self._wall_geometry(wall, f"{self.field}.walls[{wk}]", room_height)
        width = _positive(door, "width", self.layout, field)
        door_h = _positive(door, "height", self.layout, field)
        t = door.get("position_on_wall", 0.5)
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= t <= 1.0:
            raise DataFormatError(self.layout, f"{field}.position_on_wall", "expected a number in [0, 1]")
        name = str(door.get("door_material", "Door_9"))
        texture_path = self.folder / "materials" / f"{name}_texture.png"
        uv_path = self.folder / "materials" / f"{name}_tex_coords.pkl"
        try:
            for asset in (texture_path, uv_path):
                if not asset.is_file():
                    raise DataFormatError(
                        self.layout, f"{field}.door_material", f"door asset {asset} not found"
                    )
            texture = read_texture(texture_path)
            u0, v0, u1, v1 = read_door_uv_rect(uv_path)
        except DataFormatError as exc:
            self.log.handle(exc, "missing_door_asset")
            return None
        direction = (end - start) / np.linalg.norm(end - start)
        away = np.array([direction[1], -direction[0]])  # GenRecon pushes along -(wall normal (-sin a, cos a))
        center = start + t * (end - start) + away * (thickness / 2 + _DOOR_PUSH)
        along = np.append(direction * width / 2, 0.0)
        base = np.append(center, 0.0)
        up = np.array([0.0, 0.0, door_h])
        # Counter-clockwise seen from `away`: (direction x z) = away, so the quad faces away from the wall.
        corners = np.stack([base - along, base + along, base + along + up, base - along + up])
        uv = np.array([[u0, v0], [u1, v0], [u1, v1], [u0, v1]])
        return _quad(
            corners, uv, PBRMaterial(name, (1.0, 1.0, 1.0), 0.0, _DOOR_ROUGHNESS, base_color_texture=texture)
        )

    def objects(self) -> list[tuple[str, PBRMesh]]:
        cache: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray] | tuple[str, DataFormatError]] = {}
        parts = []
        for k, entry in enumerate(self.room.get("objects") or []):
            field = f"{self.field}.objects[{k}]"
            try:
                pose, metallic, roughness = self._object_pose(entry, field)
            except DataFormatError as exc:
                self.log.handle(exc, "malformed_object")
                continue
            sid = str(entry["source_id"])
            if sid not in cache:
                cache[sid] = self._load_ply(sid, field)
            loaded = cache[sid]
            if len(loaded) == 2:  # (kind, error): counted once per object that uses the model
                self.log.handle(loaded[1], loaded[0])
                continue
            vertices, uv, faces = loaded
            texture = self._texture(self.folder / "objects" / f"{sid}_texture.png", f"{field}.source_id")
            material = (
                PBRMaterial(f"mat_{sid}", (1.0, 1.0, 1.0), metallic, roughness, base_color_texture=texture)
                if texture is not None
                else PBRMaterial(f"mat_{sid}", _UNTEXTURED, metallic, roughness)
            )
            mesh = PBRMesh(vertices, faces, np.zeros(len(faces), np.int32), [material], uv=uv)
            parts.append((str(entry.get("id", f"object_{k}")), mesh.transformed(pose)))
        return parts

    def _object_pose(self, entry: Any, field: str) -> tuple[np.ndarray, float, float]:
        if not isinstance(entry, dict) or not entry.get("source_id"):
            raise DataFormatError(self.layout, f"{field}.source_id", "missing")
        position = _xyz(entry.get("position"), self.layout, f"{field}.position")
        rotation = _xyz(
            entry.get("rotation"), self.layout, f"{field}.rotation", {"x": 0.0, "y": 0.0, "z": 0.0}
        )
        pbr = entry.get("pbr_parameters") or {}
        if not isinstance(pbr, dict):
            raise DataFormatError(self.layout, f"{field}.pbr_parameters", "expected an object")
        values = []
        for key, default in (("metallic", 0.0), ("roughness", 0.5)):
            v = pbr.get(key, default)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise DataFormatError(
                    self.layout, f"{field}.pbr_parameters.{key}", "expected a number in [0, 1]"
                )
            values.append(float(v))
        pose = np.eye(4)
        pose[:3, :3] = euler_xyz_degrees_to_matrix(*rotation)
        pose[:3, 3] = position
        return pose, values[0], values[1]

    def _load_ply(
        self, sid: str, field: str
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | tuple[str, DataFormatError]:
        path = self.folder / "objects" / f"{sid}.ply"
        if not path.is_file():
            return "missing_model", DataFormatError(self.layout, f"{field}.source_id", f"no model {path}")
        try:
            return read_textured_ply(path)
        except DataFormatError as exc:
            return "malformed_model", exc


def find_layout(folder: str | Path) -> Path:
    """The first ``layout_*.json`` of a scene folder in name order (GenRecon's choice)."""
    folder = Path(folder)
    candidates = sorted(folder.glob("layout_*.json"))
    if not candidates:
        raise DataFormatError(folder, "layout_*.json", "no layout file in the scene folder")
    return candidates[0]


def load_sage_scene(
    folder: str | Path, on_error: OnError = "raise", log: SkipLog | None = None, room_index: int = 0
) -> Scene:
    """Import room ``room_index`` of an extracted SAGE-10k scene folder (see the module docstring).

    Returns a :class:`Scene` with parts ``floor``, ``ceiling``, ``wall_<id>``, ``door_<id>`` and one per
    object (its ``id``); ``metadata["skipped"]`` holds the skip counts of this call.
    """
    folder = Path(folder)
    log = log or SkipLog(on_error)
    if log.on_error != on_error:
        raise ValueError("log.on_error differs from on_error")
    before = log.counts.copy()
    layout_path = find_layout(folder)
    try:
        with open(layout_path, encoding="utf-8") as f:
            layout = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise DataFormatError(layout_path, "<file>", f"unreadable JSON ({exc})") from exc
    rooms = layout.get("rooms") if isinstance(layout, dict) else None
    if (
        not isinstance(rooms, list)
        or not 0 <= room_index < len(rooms)
        or not isinstance(rooms[room_index], dict)
    ):
        raise DataFormatError(layout_path, f"rooms[{room_index}]", "no such room")
    room, room_field = rooms[room_index], f"rooms[{room_index}]"
    dims = room.get("dimensions")
    if not isinstance(dims, dict):
        raise DataFormatError(layout_path, f"{room_field}.dimensions", "missing")
    width, length, height = (
        _positive(dims, key, layout_path, f"{room_field}.dimensions") for key in ("width", "length", "height")
    )
    builder = _SageRoom(folder, layout_path, room, room_field, log)
    parts = builder.shell(width, length, height) + builder.doors(height) + builder.objects()
    meshes = [m for _, m in parts]
    scene_id = str(room.get("id", layout_path.stem.removeprefix("layout_")))
    return Scene(
        scene_id=scene_id,
        mesh=merge_parts(meshes),
        floor_polygon=np.array([[0.0, 0.0], [width, 0.0], [width, length], [0.0, length]]),
        height=height,
        has_ceiling=True,
        face_part=np.concatenate([np.full(m.num_faces, k, np.int32) for k, m in enumerate(meshes)]),
        part_names=[name for name, _ in parts],
        metadata={
            "source": "sage-10k",
            "layout": str(layout_path),
            "room_id": room.get("id"),
            "skipped": dict(log.counts - before),
        },
    )
