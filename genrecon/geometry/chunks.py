"""Training chunks: random cubes resting on the floor, and the exact crop of a scene mesh to a cube.

A chunk is described by ``chunk_from_world`` (``[4, 4]`` similarity): rotation about z by ``-yaw``, uniform
scale ``1/edge`` and a translation, so the cube maps to ``[-0.5, 0.5]^3`` with z up.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from genrecon.geometry.mesh import PBRMesh


@dataclass(frozen=True)
class Chunk:
    """A cube of edge ``edge_m`` centred at ``center`` (world, metres), rotated by ``yaw`` about z."""

    center: tuple[float, float, float]
    edge_m: float
    yaw: float

    @property
    def chunk_from_world(self) -> np.ndarray:
        """``[4, 4]`` world -> chunk frame ([-0.5, 0.5]^3)."""
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        rot_t = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])  # R_z(yaw)^T
        m = np.eye(4)
        m[:3, :3] = rot_t / self.edge_m
        m[:3, 3] = -m[:3, :3] @ np.asarray(self.center, dtype=np.float64)
        return m

    @property
    def world_from_chunk(self) -> np.ndarray:
        return np.linalg.inv(self.chunk_from_world)

    def corners_world(self) -> np.ndarray:
        """``[9, 3]``: the 8 cube corners and the centre in the world frame (the view-coverage points)."""
        unit = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)] + [[0, 0, 0]])
        m = self.world_from_chunk
        return unit @ m[:3, :3].T + m[:3, 3]


def sample_training_chunk(
    rng: np.random.Generator,
    floor_min: np.ndarray,
    floor_max: np.ndarray,
    edge_range_m: tuple[float, float] = (2.7, 3.0),
    xy_margin_m: float = 1.0,
) -> Chunk:
    """A random training cube as published: edge ~ U(edge_range), bottom on the floor (z = 0), random yaw,
    xy centre uniform in ``[min + edge/2 - margin, max - edge/2 + margin]`` per axis (the room's extent)."""
    edge = float(rng.uniform(*edge_range_m))
    yaw = float(rng.uniform(0.0, 2 * np.pi))
    center = []
    for lo, hi in zip(floor_min, floor_max):
        a, b = lo + edge / 2 - xy_margin_m, hi - edge / 2 + xy_margin_m
        if a > b:  # room narrower than the cube minus margins: centre it
            a = b = 0.5 * (lo + hi)
        center.append(float(rng.uniform(a, b)))
    return Chunk(center=(center[0], center[1], edge / 2), edge_m=edge, yaw=yaw)


def _clip_against_plane(mesh: PBRMesh, normal: np.ndarray, offset: float) -> PBRMesh:
    """Keep the part of ``mesh`` with ``normal·x <= offset``; cut triangles are re-triangulated.

    Cut points are computed once per undirected edge (endpoints in canonical order), so the two faces that
    share a cut edge get bitwise-identical new vertices and welding keeps the surface connected.
    """
    if mesh.num_faces == 0:
        return mesh
    dist = mesh.vertices @ normal - offset  # [V], inside <= 0
    inside_v = dist <= 0
    inside = inside_v[mesh.faces]  # [F, 3]
    n_in = inside.sum(1)
    keep = mesh.faces[n_in == 3]
    keep_mat = mesh.face_material[n_in == 3]
    cut = np.nonzero((n_in == 1) | (n_in == 2))[0]
    if cut.size == 0:
        return mesh.submesh(n_in == 3)

    # Rotate each cut face so that its "odd" vertex (the lone inside or lone outside one) comes first.
    f = mesh.faces[cut]
    ins = inside[cut]
    lone = np.where(n_in[cut][:, None] == 1, ins, ~ins)
    first = np.argmax(lone, axis=1)
    order = (first[:, None] + np.arange(3)[None]) % 3
    f = np.take_along_axis(f, order, axis=1)
    odd_inside = n_in[cut] == 1

    # New vertices on edges (f0,f1) and (f0,f2), deduplicated per undirected edge.
    edges = np.concatenate([f[:, [0, 1]], f[:, [0, 2]]])
    canon = np.sort(edges, axis=1)
    uniq, inv = np.unique(canon, axis=0, return_inverse=True)
    a, b = uniq[:, 0], uniq[:, 1]
    t = dist[a] / (dist[a] - dist[b])
    base = mesh.num_vertices
    new_v = mesh.vertices[a] + t[:, None] * (mesh.vertices[b] - mesh.vertices[a])
    vertices = np.concatenate([mesh.vertices, new_v])
    uv = None if mesh.uv is None else np.concatenate([mesh.uv, mesh.uv[a] + t[:, None] * (mesh.uv[b] - mesh.uv[a])])
    vc = None
    if mesh.vertex_color is not None:
        ca, cb = mesh.vertex_color[a], mesh.vertex_color[b]
        vc = np.concatenate([mesh.vertex_color, (ca + t[:, None].astype(np.float32) * (cb - ca)).astype(np.float32)])
    inv = inv.reshape(-1)
    p01 = base + inv[: len(cut)]
    p02 = base + inv[len(cut) :]

    mat = mesh.face_material[cut]
    # One vertex inside: triangle (f0, p01, p02). Two inside: quad (p01, f1, f2, p02) as two triangles.
    tri_one = np.stack([f[:, 0], p01, p02], axis=1)[odd_inside]
    quad = np.stack([p01, f[:, 1], f[:, 2], p02], axis=1)[~odd_inside]
    tri_two = np.concatenate([quad[:, [0, 1, 2]], quad[:, [0, 2, 3]]])
    faces = np.concatenate([keep, tri_one, tri_two])
    face_material = np.concatenate(
        [keep_mat, mat[odd_inside], mat[~odd_inside], mat[~odd_inside]]
    )
    clipped = replace(mesh, vertices=vertices, faces=faces, face_material=face_material, uv=uv, vertex_color=vc)
    return clipped.submesh(np.ones(len(faces), dtype=bool))  # drops the vertices left outside


def clip_mesh_to_box(mesh: PBRMesh, lo: np.ndarray, hi: np.ndarray) -> PBRMesh:
    """The part of the surface inside the axis-aligned box ``[lo, hi]`` (exact triangle clipping).

    The boolean intersection of a surface with a cube; faces of the input that lie on a box face are kept.
    """
    out = mesh
    for axis in range(3):
        n = np.zeros(3)
        n[axis] = 1.0
        out = _clip_against_plane(out, n, float(hi[axis]))
        out = _clip_against_plane(out, -n, -float(lo[axis]))
    return out


def crop_to_chunk(mesh: PBRMesh, chunk: Chunk) -> PBRMesh:
    """The scene surface inside ``chunk``, in the chunk frame ``[-0.5, 0.5]^3``."""
    local = mesh.transformed(chunk.chunk_from_world)
    # A coarse prefilter keeps the exact clipping cheap on big rooms.
    tri = local.triangles()
    near = np.all(tri.max(1) >= -0.5, axis=1) & np.all(tri.min(1) <= 0.5, axis=1)
    return clip_mesh_to_box(local.submesh(near), np.full(3, -0.5), np.full(3, 0.5))
