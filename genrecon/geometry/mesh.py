"""Triangle meshes with PBR materials: the one mesh type every part of GenRecon passes around.

Frames and units are the caller's (scene world: z-up metres; chunk: [-0.5, 0.5]^3). Attributes follow the
O-Voxel channel layout used everywhere: base colour 0:3, metallic 3, roughness 4, alpha 5, all in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

PBR_CHANNELS = ("base_r", "base_g", "base_b", "metallic", "roughness", "alpha")
NUM_PBR_CHANNELS = 6


@dataclass
class PBRMaterial:
    """Metallic-roughness material. ``base_color_texture`` is ``[H, W, 3|4]`` uint8, sampled by UV and
    multiplied by ``base_color`` (glTF semantics)."""

    name: str = "default"
    base_color: tuple[float, float, float] = (0.8, 0.8, 0.8)
    metallic: float = 0.0
    roughness: float = 0.5
    alpha: float = 1.0
    base_color_texture: np.ndarray | None = None

    def __post_init__(self) -> None:
        bc = np.asarray(self.base_color, dtype=np.float64)
        if bc.shape != (3,) or not np.all(np.isfinite(bc)):
            raise ValueError(f"material {self.name!r}: base_color must be 3 finite values, got {self.base_color}")
        for key in ("metallic", "roughness", "alpha"):
            value = float(getattr(self, key))
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"material {self.name!r}: {key}={value} is outside [0, 1]")
        if self.base_color_texture is not None:
            tex = np.asarray(self.base_color_texture)
            if tex.ndim != 3 or tex.shape[2] not in (3, 4) or tex.dtype != np.uint8:
                raise ValueError(f"material {self.name!r}: base_color_texture must be [H,W,3|4] uint8")

    def constant_attributes(self) -> np.ndarray:
        """``[6]`` float32 attributes of the material without texture."""
        return np.array([*self.base_color, self.metallic, self.roughness, self.alpha], dtype=np.float32)


def _sample_texture_bilinear(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear sample with REPEAT wrap. ``uv`` ``[M, 2]`` (v = 0 is the bottom row) -> ``[M, C]`` in [0, 1]."""
    h, w = texture.shape[:2]
    x = uv[:, 0] * w - 0.5
    y = (1.0 - uv[:, 1]) * h - 0.5
    x0 = np.floor(x).astype(np.int64)
    y0 = np.floor(y).astype(np.int64)
    fx = (x - x0)[:, None]
    fy = (y - y0)[:, None]
    tex = texture.astype(np.float32) / 255.0

    def at(yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        return tex[np.mod(yy, h), np.mod(xx, w)]

    top = at(y0, x0) * (1 - fx) + at(y0, x0 + 1) * fx
    bottom = at(y0 + 1, x0) * (1 - fx) + at(y0 + 1, x0 + 1) * fx
    return top * (1 - fy) + bottom * fy


@dataclass
class PBRMesh:
    """Triangle mesh with per-face material ids.

    Shapes: ``vertices [V, 3]`` float64, ``faces [F, 3]`` int64, ``face_material [F]`` int32 indexing
    ``materials``; optional ``uv [V, 2]`` (seams are split vertices) and ``vertex_color [V, 3]`` in [0, 1],
    which multiplies the material's base colour (procedural variation without textures).
    """

    vertices: np.ndarray
    faces: np.ndarray
    face_material: np.ndarray
    materials: list[PBRMaterial] = field(default_factory=lambda: [PBRMaterial()])
    uv: np.ndarray | None = None
    vertex_color: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.vertices = np.asarray(self.vertices, dtype=np.float64).reshape(-1, 3)
        self.faces = np.asarray(self.faces, dtype=np.int64).reshape(-1, 3)
        self.face_material = np.asarray(self.face_material, dtype=np.int32).reshape(-1)
        if self.face_material.shape[0] != self.faces.shape[0]:
            raise ValueError(
                f"face_material has {self.face_material.shape[0]} entries for {self.faces.shape[0]} faces"
            )
        if len(self.faces) and (self.faces.min() < 0 or self.faces.max() >= len(self.vertices)):
            raise ValueError("faces index vertices out of range")
        if len(self.face_material) and (
            self.face_material.min() < 0 or self.face_material.max() >= len(self.materials)
        ):
            raise ValueError("face_material indexes materials out of range")
        if self.uv is not None:
            self.uv = np.asarray(self.uv, dtype=np.float64).reshape(-1, 2)
            if len(self.uv) != len(self.vertices):
                raise ValueError("uv must have one row per vertex")
        if self.vertex_color is not None:
            self.vertex_color = np.asarray(self.vertex_color, dtype=np.float32).reshape(-1, 3)
            if len(self.vertex_color) != len(self.vertices):
                raise ValueError("vertex_color must have one row per vertex")

    # ------------------------------------------------------------------ basic properties
    @property
    def num_vertices(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])

    def triangles(self) -> np.ndarray:
        """``[F, 3, 3]`` vertex positions of every face."""
        return self.vertices[self.faces]

    def face_normals(self) -> np.ndarray:
        """``[F, 3]`` unit normals (zero for degenerate faces)."""
        tri = self.triangles()
        n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        length = np.linalg.norm(n, axis=1, keepdims=True)
        return np.divide(n, length, out=np.zeros_like(n), where=length > 0)

    def face_areas(self) -> np.ndarray:
        tri = self.triangles()
        return 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)

    def bounds(self) -> np.ndarray:
        """``[2, 3]`` axis-aligned min and max corner."""
        if self.num_vertices == 0:
            return np.zeros((2, 3))
        return np.stack([self.vertices.min(0), self.vertices.max(0)])

    # ------------------------------------------------------------------ attributes
    def sample_attributes(self, face_idx: np.ndarray, bary: np.ndarray) -> np.ndarray:
        """PBR attributes at surface points.

        Args:
            face_idx: ``[M]`` face of each point.
            bary: ``[M, 3]`` barycentric weights of the face's 3 vertices (need not be clamped).
        Returns:
            ``[M, 6]`` float32: base colour (3), metallic, roughness, alpha, in [0, 1].
        """
        face_idx = np.asarray(face_idx, dtype=np.int64)
        bary = np.asarray(bary, dtype=np.float64)
        table = np.stack([m.constant_attributes() for m in self.materials])  # [n_mat, 6]
        mat = self.face_material[face_idx]
        out = table[mat].copy()
        corner = self.faces[face_idx]  # [M, 3]
        if self.vertex_color is not None:
            vc = np.einsum("mk,mkc->mc", bary, self.vertex_color[corner])
            out[:, :3] *= np.clip(vc, 0.0, 1.0)
        if self.uv is not None:
            for mi, material in enumerate(self.materials):
                if material.base_color_texture is None:
                    continue
                sel = np.nonzero(mat == mi)[0]
                if sel.size == 0:
                    continue
                uv = np.einsum("mk,mkc->mc", bary[sel], self.uv[corner[sel]])
                texel = _sample_texture_bilinear(material.base_color_texture, uv)
                out[sel, :3] *= texel[:, :3]
                if texel.shape[1] == 4:
                    out[sel, 5] *= texel[:, 3]
        return np.clip(out, 0.0, 1.0).astype(np.float32)

    def vertex_attributes(self) -> np.ndarray:
        """``[V, 6]`` attributes evaluated at the vertices (for previews and per-vertex export)."""
        attrs = np.zeros((self.num_vertices, NUM_PBR_CHANNELS), dtype=np.float32)
        if self.num_faces == 0:
            return attrs
        face_of_vertex = np.zeros(self.num_vertices, dtype=np.int64)
        corner_of_vertex = np.zeros(self.num_vertices, dtype=np.int64)
        for k in range(3):
            face_of_vertex[self.faces[:, k]] = np.arange(self.num_faces)
            corner_of_vertex[self.faces[:, k]] = k
        used = np.zeros(self.num_vertices, dtype=bool)
        used[self.faces.reshape(-1)] = True
        bary = np.eye(3)[corner_of_vertex]
        attrs[used] = self.sample_attributes(face_of_vertex[used], bary[used])
        return attrs

    # ------------------------------------------------------------------ transforms and assembly
    def transformed(self, matrix: np.ndarray) -> PBRMesh:
        """Apply a ``[4, 4]`` affine transform; a reflection flips the winding to keep normals outward."""
        matrix = np.asarray(matrix, dtype=np.float64)
        v = self.vertices @ matrix[:3, :3].T + matrix[:3, 3]
        faces = self.faces
        if np.linalg.det(matrix[:3, :3]) < 0:
            faces = faces[:, ::-1].copy()
        return replace(self, vertices=v, faces=faces)

    def submesh(self, face_mask: np.ndarray) -> PBRMesh:
        """Keep the faces in ``face_mask`` (bool ``[F]``) and drop unreferenced vertices."""
        faces = self.faces[face_mask]
        used, inverse = np.unique(faces.reshape(-1), return_inverse=True)
        return replace(
            self,
            vertices=self.vertices[used],
            faces=inverse.reshape(-1, 3),
            face_material=self.face_material[face_mask],
            uv=None if self.uv is None else self.uv[used],
            vertex_color=None if self.vertex_color is None else self.vertex_color[used],
        )

    @staticmethod
    def concatenate(meshes: list[PBRMesh]) -> PBRMesh:
        """Merge meshes, keeping each one's materials (material lists are appended, not deduplicated)."""
        meshes = [m for m in meshes if m.num_faces > 0]
        if not meshes:
            return PBRMesh(np.zeros((0, 3)), np.zeros((0, 3), np.int64), np.zeros(0, np.int32))
        any_uv = any(m.uv is not None for m in meshes)
        any_vc = any(m.vertex_color is not None for m in meshes)
        verts, faces, fmat, uvs, vcs, materials = [], [], [], [], [], []
        v_off = 0
        for m in meshes:
            verts.append(m.vertices)
            faces.append(m.faces + v_off)
            fmat.append(m.face_material + len(materials))
            materials.extend(m.materials)
            if any_uv:
                uvs.append(m.uv if m.uv is not None else np.zeros((m.num_vertices, 2)))
            if any_vc:
                vcs.append(
                    m.vertex_color if m.vertex_color is not None else np.ones((m.num_vertices, 3), np.float32)
                )
            v_off += m.num_vertices
        return PBRMesh(
            np.concatenate(verts),
            np.concatenate(faces),
            np.concatenate(fmat),
            materials,
            uv=np.concatenate(uvs) if any_uv else None,
            vertex_color=np.concatenate(vcs) if any_vc else None,
        )

    def to_trimesh(self):
        """A ``trimesh.Trimesh`` with per-vertex colours (base colour, for previews and ray casting)."""
        import trimesh

        colors = (np.clip(self.vertex_attributes()[:, :3], 0, 1) * 255).astype(np.uint8)
        return trimesh.Trimesh(
            vertices=self.vertices, faces=self.faces, vertex_colors=colors, process=False, validate=False
        )


def sample_surface(
    vertices: np.ndarray, faces: np.ndarray, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Area-uniform surface samples.

    Returns ``points [count, 3]``, ``face_idx [count]`` and ``bary [count, 3]``.
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    tri = vertices[faces]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    total = area.sum()
    if len(faces) == 0 or total <= 0:
        raise ValueError("cannot sample the surface of a mesh with no area")
    face_idx = rng.choice(len(faces), size=count, p=area / total)
    r1 = np.sqrt(rng.random(count))
    r2 = rng.random(count)
    bary = np.stack([1 - r1, r1 * (1 - r2), r1 * r2], axis=1)
    points = np.einsum("mk,mkc->mc", bary, tri[face_idx])
    return points, face_idx, bary
