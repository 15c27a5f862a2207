"""3D-FRONT importer: one house JSON plus the 3D-FUTURE model folder -> one :class:`Scene` per room.

Format (as the official toolbox and BlenderProc read it):

- ``furniture[]``: ``uid``, ``jid`` (model folder ``<model_root>/<jid>/raw_model.obj`` + ``texture.png``),
  optional ``category``/``title``; entries without a true ``valid`` flag are dropped, as the toolbox does.
- ``mesh[]``: architecture in world coordinates; flat ``xyz`` (3 per vertex), ``faces`` (3 per triangle,
  0-based), ``uv`` (2 per vertex, may hold nulls), ``material`` uid, ``type`` (Floor, WallInner, Ceiling...).
- ``material[]``: ``uid``, ``jid``, ``texture`` (URL, may be empty), ``color`` (RGB[A] 0-255), optional
  ``UVTransform`` (9 floats; its upper 2x2 multiplies uv, as in the toolbox).
- ``scene.room[]``: ``type``, ``instanceid``, ``children[]`` with ``ref`` (a furniture uid or a mesh uid) and,
  for furniture, ``pos`` [3], ``rot`` [4] read as (x, y, z, w), ``scale`` [3]:
  ``v_native = R(q) (s * v) + pos``. Children whose ref is neither are ignored (counted as
  ``unresolved_ref``), as the toolbox does.

Frames. 3D-FRONT is Y-up; GenRecon is z-up. We convert with the proper rotation of +90 degrees about x,
``(x, y, z) -> (x, -z, y)`` (det +1), so triangle winding and outward normals survive. (BlenderProc swaps y
and z instead, which is a reflection.) Each room is then shifted along z so that its floor meshes lie at
z = 0; the applied ``[4, 4]`` transform is ``Scene.metadata["world_from_native"]``. Units are taken as metres
(the loaders use the coordinates unscaled; no explicit statement of units was found).

Materials. Textured architecture materials are looked up as ``<texture_root>/<material jid>/texture.png``
(toolbox layout) or ``<texture_root>/<url folder>/texture.png`` (BlenderProc layout); with no
``texture_root`` only ``color`` is used. Meshes with no (or an unknown) material get the toolbox's default
grey 220/255. 3D-FRONT has no metallic/roughness: every material gets metallic 0 and ``roughness`` (an
argument).

Errors. ``on_error="raise"`` raises :class:`DataFormatError` naming the file and field; ``"skip"`` drops the
item, counts it in the :class:`SkipLog` under one of ``malformed_house``, ``malformed_room``,
``malformed_child``, ``malformed_mesh``, ``malformed_furniture``, ``malformed_transform``, ``missing_model``,
``malformed_model``, ``missing_texture``, ``malformed_material``, and records each room's counts in
``Scene.metadata["skipped"]``. Counted in both modes (drops the data itself calls for or is known to need):
``furniture_not_valid``, ``unresolved_ref``, ``mesh_without_material``, ``unknown_material``,
``mesh_without_uv``. Missing models and malformed models/transforms are counted per instance, missing
textures per loaded model or material.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from genrecon.data.errors import DataFormatError, OnError, SkipLog
from genrecon.data.scenes.scene import Scene
from genrecon.geometry.mesh import PBRMaterial, PBRMesh
from genrecon.geometry.primitives import merge_parts

# (x, y, z) Y-up native -> (x, -z, y) z-up: rotation by +90 degrees about x.
ZUP_FROM_YUP = np.array(
    [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)
_DEFAULT_GREY = (220 / 255, 220 / 255, 220 / 255)  # the toolbox's colour for untextured meshes


# ------------------------------------------------------------------------------------------- shared readers
def read_texture(path: Path) -> np.ndarray:
    """``[H, W, 3|4]`` uint8 image; an unreadable file raises :class:`DataFormatError`."""
    try:
        with Image.open(path) as image:
            mode = "RGBA" if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info else "RGB"
            return np.asarray(image.convert(mode), dtype=np.uint8).copy()
    except (OSError, ValueError) as exc:
        raise DataFormatError(path, path.name, f"unreadable image ({exc})") from exc


def polygons_to_mesh(
    positions: np.ndarray,
    texcoords: np.ndarray | None,
    corner_v: np.ndarray,
    corner_t: np.ndarray | None,
    sizes: np.ndarray,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Triangulate indexed polygons (fans) and split vertices where a position has several texcoords.

    Args:
        positions: ``[V, 3]``; texcoords: ``[T, 2]`` or None.
        corner_v, corner_t: ``[C]`` 0-based position / texcoord index of every polygon corner, polygons
            concatenated (``corner_t`` -1 where a corner has no texcoord: it gets uv (0, 0)).
        sizes: ``[P]`` corners per polygon (>= 3), summing to ``C``.
    Returns:
        ``vertices [N, 3]``, ``uv [N, 2]`` (None without texcoords) and ``faces [F, 3]`` with
        ``F = sum(sizes - 2)``.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    starts = np.cumsum(sizes) - sizes
    n_tri = sizes - 2
    poly = np.repeat(np.arange(len(sizes)), n_tri)
    k = np.arange(n_tri.sum()) - np.repeat(np.cumsum(n_tri) - n_tri, n_tri) + 1
    tri_corners = np.stack([starts[poly], starts[poly] + k, starts[poly] + k + 1], axis=1)
    if texcoords is None or corner_t is None or len(texcoords) == 0:
        used, inverse = np.unique(corner_v, return_inverse=True)
        return positions[used], None, inverse.reshape(-1)[tri_corners]
    stride = len(texcoords) + 1
    keys, inverse = np.unique(corner_v * stride + corner_t + 1, return_inverse=True)
    uv_table = np.concatenate([np.zeros((1, 2)), texcoords])
    return positions[keys // stride], uv_table[keys % stride], inverse.reshape(-1)[tri_corners]


def read_obj(path: Path) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Wavefront OBJ (``v``, ``vt``, ``f`` with any ``v/vt/vn`` form and negative indices; polygons are
    triangulated as fans; other statements are ignored) -> ``vertices [N, 3]``, ``uv [N, 2] | None``,
    ``faces [F, 3]``. Malformed lines raise :class:`DataFormatError` with ``field="line <n>"``."""
    positions: list[list[float]] = []
    texcoords: list[list[float]] = []
    corner_v: list[int] = []
    corner_t: list[int] = []
    sizes: list[int] = []
    lines: list[int] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts or parts[0] not in ("v", "vt", "f"):
                continue
            try:
                if parts[0] == "v":
                    positions.append([float(x) for x in parts[1:4]])
                    if len(positions[-1]) != 3:
                        raise ValueError("a vertex needs 3 coordinates")
                elif parts[0] == "vt":
                    texcoords.append([float(x) for x in parts[1:3]])
                    if len(texcoords[-1]) != 2:
                        raise ValueError("a texcoord needs 2 values")
                else:
                    if len(parts) < 4:
                        raise ValueError("a face needs at least 3 corners")
                    for token in parts[1:]:
                        fields = token.split("/")
                        vi = int(fields[0])
                        ti = int(fields[1]) if len(fields) > 1 and fields[1] else 0
                        # Negative indices count back from the last element defined so far.
                        corner_v.append(vi - 1 if vi > 0 else len(positions) + vi)
                        corner_t.append(-1 if ti == 0 else (ti - 1 if ti > 0 else len(texcoords) + ti))
                    sizes.append(len(parts) - 1)
                    lines.append(n)
            except ValueError as exc:
                raise DataFormatError(path, f"line {n}", f"{exc}: {line.strip()!r}") from exc
    if not sizes:
        raise DataFormatError(path, "f", "no faces")
    cv, ct, size_arr = np.array(corner_v), np.array(corner_t), np.array(sizes)
    poly_of_corner = np.repeat(np.arange(len(sizes)), size_arr)
    bad = (cv < 0) | (cv >= len(positions)) | (ct < -1) | (ct >= len(texcoords))
    if bad.any():
        raise DataFormatError(
            path, f"line {lines[poly_of_corner[np.argmax(bad)]]}", "face index out of range"
        )
    tex = np.array(texcoords, dtype=np.float64).reshape(-1, 2) if texcoords else None
    return polygons_to_mesh(np.array(positions, dtype=np.float64), tex, cv, ct, size_arr)


# ------------------------------------------------------------------------------------------- field checks
def _numbers(value: Any, path: Path, field: str, width: int, count: int | None = None) -> np.ndarray:
    """A flat list of finite numbers whose length is a multiple of ``width`` (or exactly ``count`` values)
    -> ``[N, width]`` float64."""
    if not isinstance(value, list) or (count is not None and len(value) != count) or len(value) % width:
        expected = f"{count} numbers" if count is not None else f"a list of numbers, {width} per element"
        raise DataFormatError(path, field, f"expected {expected}")
    try:
        array = np.array(value, dtype=np.float64).reshape(-1, width)
    except (TypeError, ValueError) as exc:
        raise DataFormatError(path, field, "holds non-numeric values") from exc
    if not np.all(np.isfinite(array)):
        raise DataFormatError(path, field, "holds non-finite values")
    return array


def quaternion_xyzw_to_matrix(q: Sequence[float]) -> np.ndarray:
    """``[3, 3]`` rotation of the unit quaternion ``(x, y, z, w)`` (3D-FRONT's ``rot`` order)."""
    x, y, z, w = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _floor_outline(xy: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Counter-clockwise outline ``[P, 2]`` of a triangulated floor: its largest boundary loop, or the convex
    hull where the boundary is not a set of simple loops (T-junctions, touching pieces)."""
    from scipy.spatial import ConvexHull

    _, merged = np.unique(np.round(xy, 4), axis=0, return_inverse=True)
    merged = merged.reshape(-1)
    f = merged[faces]
    f = f[(f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])]
    edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    unique_edges, counts = np.unique(edges, axis=0, return_counts=True)
    boundary = unique_edges[counts == 1]
    point_of = np.zeros((merged.max() + 1, 2))
    point_of[merged] = xy
    neighbours: dict[int, list[int]] = {}
    for a, b in boundary:
        neighbours.setdefault(int(a), []).append(int(b))
        neighbours.setdefault(int(b), []).append(int(a))
    if boundary.size and all(len(n) == 2 for n in neighbours.values()):
        loops, seen = [], set()
        for start in neighbours:
            if start in seen:
                continue
            loop, prev, cur = [start], -1, start
            seen.add(start)
            while True:
                nxt = neighbours[cur][0] if neighbours[cur][0] != prev else neighbours[cur][1]
                if nxt == start:
                    break
                loop.append(nxt)
                seen.add(nxt)
                prev, cur = cur, nxt
            loops.append(point_of[loop])
        best = max(loops, key=lambda p: abs(_signed_area(p)))
        return best if _signed_area(best) > 0 else best[::-1]
    hull = ConvexHull(xy)
    return xy[hull.vertices]


def _signed_area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return float(0.5 * (np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


# ------------------------------------------------------------------------------------------- importer
@dataclass
class _Model:
    """A loaded 3D-FUTURE model in its own frame, or the error that prevents loading it."""

    mesh: PBRMesh | None
    error: DataFormatError | None = None
    kind: str = ""


def _bucket(mesh_type: str) -> str:
    """The toolbox's architecture buckets, by substring."""
    if "ceil" in mesh_type or "Ceil" in mesh_type:
        return "ceiling"
    if "floor" in mesh_type or "Floor" in mesh_type:
        return "floor"
    if "wall" in mesh_type or "Wall" in mesh_type:
        return "wall"
    return "other"


class _House:
    def __init__(
        self,
        path: Path,
        data: dict,
        model_root: Path,
        texture_root: Path | None,
        log: SkipLog,
        roughness: float,
    ) -> None:
        self.path, self.model_root, self.texture_root, self.log = path, model_root, texture_root, log
        self.roughness = roughness
        self.uid = str(data.get("uid", path.stem))
        self.furniture = self._list(data, "furniture")
        self.meshes = self._list(data, "mesh")
        self.materials = self._list(data, "material")
        self.furniture_by_uid: dict[Any, int] = {}
        self.invalid_furniture: set[Any] = set()
        for k, entry in enumerate(self.furniture):
            uid = entry.get("uid") if isinstance(entry, dict) else None
            if isinstance(entry, dict) and entry.get("valid"):
                self.furniture_by_uid[uid] = k
            else:
                self.invalid_furniture.add(uid)
        self.mesh_by_uid = {m.get("uid"): k for k, m in enumerate(self.meshes) if isinstance(m, dict)}
        self.material_by_uid = {m.get("uid"): k for k, m in enumerate(self.materials) if isinstance(m, dict)}
        self.models: dict[str, _Model] = {}
        self.material_cache: dict[int, tuple[PBRMaterial, np.ndarray | None]] = {}

    def _list(self, data: dict, key: str) -> list:
        value = data.get(key, [])
        if not isinstance(value, list):
            raise DataFormatError(self.path, key, "expected a list")
        return value

    # ---------------------------------------------------------------- furniture
    def _model(self, jid: str) -> _Model:
        if jid not in self.models:
            folder = self.model_root / jid
            obj = folder / "raw_model.obj"
            if not obj.is_file():
                error = DataFormatError(self.path, "jid", f"no model {obj} for jid {jid!r}")
                self.models[jid] = _Model(None, error, "missing_model")
                return self.models[jid]
            try:
                vertices, uv, faces = read_obj(obj)
            except DataFormatError as exc:
                self.models[jid] = _Model(None, exc, "malformed_model")
                return self.models[jid]
            material = PBRMaterial(jid, (0.7, 0.7, 0.7), 0.0, self.roughness)
            texture_path = folder / "texture.png"
            try:
                if uv is None:
                    raise DataFormatError(obj, "vt", "no texture coordinates, texture.png cannot be applied")
                if not texture_path.is_file():
                    raise DataFormatError(texture_path, "texture.png", "missing model texture")
                material = PBRMaterial(
                    jid, (1.0, 1.0, 1.0), 0.0, self.roughness, base_color_texture=read_texture(texture_path)
                )
            except DataFormatError as exc:
                self.log.handle(exc, "missing_texture")
            mesh = PBRMesh(vertices, faces, np.zeros(len(faces), np.int32), [material], uv=uv)
            self.models[jid] = _Model(mesh)
        return self.models[jid]

    def _furniture_instance(self, fk: int, child: dict, field: str) -> PBRMesh | None:
        """The furniture mesh in the z-up house frame, or None when skipped."""
        jid = self.furniture[fk].get("jid")
        if not isinstance(jid, str) or not jid:
            self.log.handle(
                DataFormatError(self.path, f"furniture[{fk}].jid", "missing or not a string"),
                "malformed_furniture",
            )
            return None
        model = self._model(jid)
        if model.mesh is None:
            error = model.error
            if model.kind == "missing_model":  # name the referencing entry, not the absent file
                error = DataFormatError(self.path, f"furniture[{fk}].jid", error.reason)
            self.log.handle(error, model.kind)
            return None
        try:
            pos = _numbers(child.get("pos"), self.path, f"{field}.pos", 3, 3)[0]
            rot = _numbers(child.get("rot"), self.path, f"{field}.rot", 4, 4)[0]
            scale = _numbers(child.get("scale"), self.path, f"{field}.scale", 3, 3)[0]
            if np.linalg.norm(rot) < 1e-8:
                raise DataFormatError(self.path, f"{field}.rot", "zero quaternion")
        except DataFormatError as exc:
            self.log.handle(exc, "malformed_transform")
            return None
        native = np.eye(4)
        native[:3, :3] = quaternion_xyzw_to_matrix(rot) * scale[None, :]
        native[:3, 3] = pos
        return model.mesh.transformed(ZUP_FROM_YUP @ native)

    # ---------------------------------------------------------------- architecture
    def _material(self, mk: int) -> tuple[PBRMaterial, np.ndarray | None]:
        """Material ``mk`` and its UV transform ``[2, 2]`` (or None)."""
        if mk in self.material_cache:
            return self.material_cache[mk]
        entry = self.materials[mk]
        field = f"material[{mk}]"
        name = str(entry.get("uid", field))
        try:
            color = entry.get("color")
            rgb = _DEFAULT_GREY
            if color:
                values = _numbers(color, self.path, f"{field}.color", 1)[:, 0]
                if len(values) not in (3, 4) or values.min() < 0 or values.max() > 255:
                    raise DataFormatError(self.path, f"{field}.color", "expected 3 or 4 values in 0-255")
                rgb = tuple(float(c) / 255.0 for c in values[:3])
            uv_transform = None
            if entry.get("UVTransform") is not None:
                uv_transform = _numbers(entry["UVTransform"], self.path, f"{field}.UVTransform", 3, 9)[:2, :2]
        except DataFormatError as exc:
            self.log.handle(exc, "malformed_material")
            self.material_cache[mk] = (PBRMaterial(name, _DEFAULT_GREY, 0.0, self.roughness), None)
            return self.material_cache[mk]
        material = PBRMaterial(name, rgb, 0.0, self.roughness)
        texture = self._architecture_texture(entry, field)
        if texture is not None:
            material = PBRMaterial(name, (1.0, 1.0, 1.0), 0.0, self.roughness, base_color_texture=texture)
        self.material_cache[mk] = (material, uv_transform)
        return self.material_cache[mk]

    def _architecture_texture(self, entry: dict, field: str) -> np.ndarray | None:
        url = entry.get("texture") or ""
        if not url or self.texture_root is None:
            return None
        candidates = [self.texture_root / str(entry.get("jid", "")) / "texture.png"]
        if isinstance(url, str) and url.count("/") >= 1:
            candidates.append(self.texture_root / url.rstrip("/").split("/")[-2] / "texture.png")
        for candidate in candidates:
            if candidate.is_file():
                try:
                    return read_texture(candidate)
                except DataFormatError as exc:
                    self.log.handle(exc, "missing_texture")
                    return None
        self.log.handle(
            DataFormatError(self.path, f"{field}.texture", f"no texture file at {candidates[0]}"),
            "missing_texture",
        )
        return None

    def _architecture(self, k: int) -> tuple[PBRMesh, str] | None:
        """Mesh ``k`` in the z-up house frame and its ``type``, or None when skipped."""
        entry = self.meshes[k]
        field = f"mesh[{k}]"
        try:
            xyz = _numbers(entry.get("xyz"), self.path, f"{field}.xyz", 3)
            faces_f = _numbers(entry.get("faces"), self.path, f"{field}.faces", 3)
            faces = faces_f.astype(np.int64)
            if np.any(faces != faces_f) or len(faces) == 0 or faces.min() < 0 or faces.max() >= len(xyz):
                raise DataFormatError(self.path, f"{field}.faces", "expected triangle indices into xyz")
        except DataFormatError as exc:
            self.log.handle(exc, "malformed_mesh")
            return None
        mesh_type = str(entry.get("type", "")).strip() or "void"
        uv = self._uv(entry.get("uv"), len(xyz), field)
        material_uid = entry.get("material")
        if material_uid is None or material_uid not in self.material_by_uid:
            kind = "mesh_without_material" if material_uid is None else "unknown_material"
            self.log.note(kind, f"{self.path}: {field}: {kind}, using the default grey")
            material, uv_transform = (
                PBRMaterial(f"{mesh_type}_default", _DEFAULT_GREY, 0.0, self.roughness),
                None,
            )
        else:
            material, uv_transform = self._material(self.material_by_uid[material_uid])
        if uv is not None and uv_transform is not None:
            uv = uv @ uv_transform.T
        mesh = PBRMesh(xyz, faces, np.zeros(len(faces), np.int32), [material], uv=uv)
        return mesh.transformed(ZUP_FROM_YUP), mesh_type

    def _uv(self, value: Any, n_vertices: int, field: str) -> np.ndarray | None:
        """UVs, or None (counted) when absent, holding nulls or of the wrong length (the data has such
        meshes)."""
        if (
            isinstance(value, list)
            and len(value) == 2 * n_vertices
            and all(isinstance(v, (int, float)) for v in value)
        ):
            return np.array(value, dtype=np.float64).reshape(-1, 2)
        self.log.note("mesh_without_uv", f"{self.path}: {field}.uv: absent or incomplete, mesh is untextured")
        return None

    # ---------------------------------------------------------------- rooms
    def room(self, i: int, room: Any) -> Scene:
        field = f"scene.room[{i}]"
        if not isinstance(room, dict) or not isinstance(room.get("children"), list):
            raise DataFormatError(self.path, f"{field}.children", "expected a room with a children list")
        parts: list[tuple[str, PBRMesh, str]] = []  # (name, mesh in house frame, bucket)
        for j, child in enumerate(room["children"]):
            ref = child.get("ref") if isinstance(child, dict) else None
            if not isinstance(ref, str):
                error = DataFormatError(self.path, f"{field}.children[{j}].ref", "expected a uid string")
                self.log.handle(error, "malformed_child")
                continue
            if ref in self.furniture_by_uid:
                fk = self.furniture_by_uid[ref]
                mesh = self._furniture_instance(fk, child, f"{field}.children[{j}]")
                if mesh is not None:
                    label = str(
                        self.furniture[fk].get("category") or self.furniture[fk].get("title") or "furniture"
                    )
                    parts.append((f"{label.replace('/', '_')}_{len(parts)}", mesh, "furniture"))
            elif ref in self.mesh_by_uid:
                built = self._architecture(self.mesh_by_uid[ref])
                if built is not None:
                    parts.append((f"{built[1]}_{len(parts)}", built[0], _bucket(built[1])))
            elif ref in self.invalid_furniture:
                self.log.note(
                    "furniture_not_valid", f"{self.path}: {field}.children[{j}]: furniture not valid"
                )
            else:
                self.log.note("unresolved_ref", f"{self.path}: {field}.children[{j}].ref {ref!r} not found")
        floors = [m for _, m, b in parts if b == "floor"]
        if not floors:
            raise DataFormatError(self.path, f"{field}.children", "the room has no Floor mesh")
        floor = PBRMesh.concatenate(floors)
        shift = np.eye(4)
        shift[2, 3] = -float(floor.vertices[:, 2].mean())
        meshes = [m.transformed(shift) for _, m, _ in parts]
        tops = [m.vertices[:, 2].max() for (_, _, b), m in zip(parts, meshes) if b in ("wall", "ceiling")]
        height = float(max(tops) if tops else max(m.vertices[:, 2].max() for m in meshes))
        if height <= 0:
            raise DataFormatError(self.path, field, "no geometry above the floor to give the room a height")
        instance_id = str(room.get("instanceid", i))
        return Scene(
            scene_id=f"{self.uid}_{instance_id}",
            mesh=merge_parts(meshes),
            floor_polygon=_floor_outline(floor.vertices[:, :2], floor.faces),
            height=height,
            has_ceiling=any(b == "ceiling" for _, _, b in parts),
            face_part=np.concatenate([np.full(m.num_faces, k, np.int32) for k, m in enumerate(meshes)]),
            part_names=[name for name, _, _ in parts],
            metadata={
                "source": "3d-front",
                "house": self.uid,
                "room_type": room.get("type"),
                "room_instance": instance_id,
                "world_from_native": shift @ ZUP_FROM_YUP,
            },
        )


def load_front3d_house(
    house_json: str | Path,
    model_root: str | Path,
    texture_root: str | Path | None = None,
    on_error: OnError = "raise",
    log: SkipLog | None = None,
    roughness: float = 0.6,
) -> list[Scene]:
    """Import every room of a 3D-FRONT house.

    Args:
        house_json: the house file.
        model_root: the ``3D-FUTURE-model`` folder (``<jid>/raw_model.obj`` + ``texture.png``).
        texture_root: the ``3D-FRONT-texture`` folder for architecture textures, or None for colours only.
        on_error: ``"raise"`` or ``"skip"`` (see the module docstring).
        log: where skips are counted (a fresh one when None); must use the same ``on_error``.
        roughness: roughness given to every material (3D-FRONT has none).
    Returns:
        One :class:`Scene` per room that has a floor, in file order; ``metadata["skipped"]`` holds that
        room's skip counts.
    """
    house_json, model_root = Path(house_json), Path(model_root)
    log = log or SkipLog(on_error)
    if log.on_error != on_error:
        raise ValueError("log.on_error differs from on_error")
    try:
        with open(house_json, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, dict):
            raise DataFormatError(house_json, "<root>", "expected a JSON object")
        rooms = data.get("scene", {}).get("room") if isinstance(data.get("scene"), dict) else None
        if not isinstance(rooms, list):
            raise DataFormatError(house_json, "scene.room", "expected a list of rooms")
        house = _House(
            house_json, data, model_root, None if texture_root is None else Path(texture_root), log, roughness
        )
    except (OSError, json.JSONDecodeError) as exc:
        log.handle(DataFormatError(house_json, "<file>", f"unreadable JSON ({exc})"), "malformed_house")
        return []
    except DataFormatError as exc:
        log.handle(exc, "malformed_house")
        return []
    scenes = []
    for i, room in enumerate(rooms):
        before = Counter(log.counts)
        try:
            scene = house.room(i, room)
        except DataFormatError as exc:
            log.handle(exc, "malformed_room")
            continue
        scene.metadata["skipped"] = dict(log.counts - before)
        scenes.append(scene)
    return scenes
