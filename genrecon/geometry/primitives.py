"""Watertight primitive meshes (boxes, frusta, cylinders, cones, unions of grid cells) as single-material
:class:`PBRMesh` parts, and :func:`merge_parts` to assemble them.

Every primitive has outward-facing (counter-clockwise seen from outside) triangles and UVs in metres
(1 UV unit = 1 m on the surface), so a tileable texture that represents 1 m x 1 m keeps its physical scale on
any part. Faces meeting at a crease have their own vertex copies (UV seams, flat shading); merging vertices by
position closes the surface (``trimesh.Trimesh(vertices, faces)`` is watertight).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from genrecon.geometry.mesh import PBRMaterial, PBRMesh

# In-plane axes (u, v) of a face whose normal is along axis 0, 1, 2: vertical faces keep v = z so textures
# stand upright on walls and furniture sides.
_FACE_UV_AXES = ((1, 2), (0, 2), (0, 1))


def axis_aligned_quads(
    axis: int, sign: np.ndarray, plane: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rectangles perpendicular to ``axis``, each facing ``sign`` (+1 / -1) along it.

    Args:
        axis: 0, 1 or 2; the in-plane axes (u, v) are ``(y, z)``, ``(x, z)``, ``(x, y)`` respectively.
        sign: ``[Q]`` orientation of each quad's normal along ``axis``.
        plane: ``[Q]`` coordinate of each quad along ``axis``.
        lo, hi: ``[Q, 2]`` corners of each quad in (u, v).
    Returns:
        ``vertices [4Q, 3]``, ``faces [2Q, 3]`` and metric ``uv [4Q, 2]``; the texture is not mirrored when
        seen from the side the normal points to.
    """
    sign = np.asarray(sign, dtype=np.float64).reshape(-1)
    plane = np.asarray(plane, dtype=np.float64).reshape(-1)
    lo = np.asarray(lo, dtype=np.float64).reshape(-1, 2)
    hi = np.asarray(hi, dtype=np.float64).reshape(-1, 2)
    q = len(plane)
    u_axis, v_axis = _FACE_UV_AXES[axis]
    # e_u x e_v is +e_axis for axes 0 and 2 and -e_axis for axis 1.
    handed = np.where(axis == 1, -1.0, 1.0) * sign  # +1: (u, v) order is counter-clockwise from outside
    corner_u = np.stack([lo[:, 0], hi[:, 0], hi[:, 0], lo[:, 0]], axis=1)  # [Q, 4]
    corner_v = np.stack([lo[:, 1], lo[:, 1], hi[:, 1], hi[:, 1]], axis=1)
    vertices = np.zeros((q, 4, 3))
    vertices[:, :, axis] = plane[:, None]
    vertices[:, :, u_axis] = corner_u
    vertices[:, :, v_axis] = corner_v
    uv = np.stack([corner_u * handed[:, None], corner_v], axis=2)
    base = 4 * np.arange(q)[:, None]
    ccw = np.array([[0, 1, 2], [0, 2, 3]])
    cw = ccw[:, ::-1]
    faces = base[:, None, :] + np.where(handed[:, None, None] > 0, ccw[None], cw[None])  # [Q, 2, 3]
    return vertices.reshape(-1, 3), faces.reshape(-1, 3), uv.reshape(-1, 2)


def box(lo: Sequence[float], hi: Sequence[float], material: PBRMaterial) -> PBRMesh:
    """Axis-aligned box between corners ``lo`` and ``hi`` (``[3]`` each): 24 vertices, 12 triangles."""
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    if lo.shape != (3,) or hi.shape != (3,) or np.any(hi <= lo):
        raise ValueError(f"box needs lo < hi per axis, got lo={lo}, hi={hi}")
    verts, faces, uvs = [], [], []
    offset = 0
    for axis in range(3):
        u_axis, v_axis = _FACE_UV_AXES[axis]
        quad_lo = np.array([[lo[u_axis], lo[v_axis]]] * 2)
        quad_hi = np.array([[hi[u_axis], hi[v_axis]]] * 2)
        v, f, uv = axis_aligned_quads(
            axis, np.array([-1, 1]), np.array([lo[axis], hi[axis]]), quad_lo, quad_hi
        )
        verts.append(v)
        faces.append(f + offset)
        uvs.append(uv)
        offset += len(v)
    faces_all = np.concatenate(faces)
    return PBRMesh(
        np.concatenate(verts),
        faces_all,
        np.zeros(len(faces_all), np.int32),
        [material],
        uv=np.concatenate(uvs),
    )


def box_at(center: Sequence[float], size: Sequence[float], material: PBRMaterial) -> PBRMesh:
    """Axis-aligned box of ``size [3]`` centred at ``center [3]``."""
    center = np.asarray(center, dtype=np.float64)
    half = 0.5 * np.asarray(size, dtype=np.float64)
    return box(center - half, center + half, material)


def frustum(
    radius_bottom: float,
    radius_top: float,
    height: float,
    material: PBRMaterial,
    segments: int = 16,
    base: Sequence[float] = (0.0, 0.0, 0.0),
) -> PBRMesh:
    """Capped truncated cone along +z from ``base`` (centre of the bottom cap) to ``base + (0, 0, height)``.

    A zero radius makes that end an apex (a cone) without a cap or degenerate triangles. Triangles: ``2n``
    on the side (``n`` for a cone) plus ``n`` per cap, for ``n = segments``.
    """
    if (
        segments < 3
        or height <= 0
        or min(radius_bottom, radius_top) < 0
        or max(radius_bottom, radius_top) <= 0
    ):
        raise ValueError("frustum needs segments >= 3, height > 0, radii >= 0 and one radius > 0")
    n = segments
    theta = np.linspace(0.0, 2.0 * np.pi, n + 1)  # the seam vertex is duplicated so u can run to 2*pi*r
    cos, sin = np.cos(theta), np.sin(theta)
    ring = np.stack([cos, sin, np.zeros_like(cos)], axis=1)  # [n+1, 3]
    bottom = ring * radius_bottom
    top = ring * radius_top + np.array([0.0, 0.0, height])
    slant = float(np.hypot(height, radius_bottom - radius_top))
    arc = theta * 0.5 * (radius_bottom + radius_top)

    verts = [bottom, top]
    uvs = [np.stack([arc, np.zeros_like(arc)], 1), np.stack([arc, np.full_like(arc, slant)], 1)]
    k = np.arange(n)
    b0, b1, t0, t1 = k, k + 1, n + 1 + k, n + 2 + k
    faces = []
    if radius_bottom > 0:
        faces.append(np.stack([b0, b1, t1], 1))
    if radius_top > 0:
        faces.append(np.stack([b0, t1, t0], 1))
    offset = 2 * (n + 1)
    for radius, z, up in ((radius_bottom, 0.0, False), (radius_top, height, True)):
        if radius == 0:
            continue
        cap = ring[:n] * radius + np.array([0.0, 0.0, z])
        centre = np.array([[0.0, 0.0, z]])
        verts.append(np.concatenate([centre, cap]))
        uvs.append(np.concatenate([centre, cap])[:, :2])
        rim0, rim1 = offset + 1 + k, offset + 1 + (k + 1) % n
        centre_idx = np.full(n, offset)
        faces.append(np.stack([centre_idx, rim0, rim1] if up else [centre_idx, rim1, rim0], 1))
        offset += n + 1
    vertices = np.concatenate(verts) + np.asarray(base, dtype=np.float64)
    faces_all = np.concatenate(faces)
    return PBRMesh(
        vertices, faces_all, np.zeros(len(faces_all), np.int32), [material], uv=np.concatenate(uvs)
    )


def cylinder(
    radius: float,
    height: float,
    material: PBRMaterial,
    segments: int = 16,
    base: Sequence[float] = (0.0, 0.0, 0.0),
) -> PBRMesh:
    """Capped cylinder along +z from ``base``; ``4 * segments`` triangles."""
    return frustum(radius, radius, height, material, segments, base)


def cone(
    radius: float,
    height: float,
    material: PBRMaterial,
    segments: int = 16,
    base: Sequence[float] = (0.0, 0.0, 0.0),
) -> PBRMesh:
    """Cone along +z from the centre of its base cap ``base`` to the apex; ``2 * segments`` triangles."""
    return frustum(radius, 0.0, height, material, segments, base)


def grid_cell_surface(
    breaks: tuple[np.ndarray, np.ndarray, np.ndarray], labels: np.ndarray, materials: Sequence[PBRMaterial]
) -> tuple[PBRMesh, np.ndarray]:
    """Boundary surface of a union of cells of a rectilinear grid, without faces between solid cells.

    Used for solids such as a room shell with openings: building it from separate boxes would leave
    coincident faces inside the solid, which surface samplers and voxelisers would treat as real surfaces.

    Args:
        breaks: grid lines ``(xs [nx+1], ys [ny+1], zs [nz+1])``, strictly increasing.
        labels: ``[nx, ny, nz]`` int, 0 = empty, ``k > 0`` = solid with ``materials[k - 1]``.
        materials: one material per non-zero label.
    Returns:
        The mesh (``face_material = label - 1``) and ``face_label [F]``, the label of the solid cell behind
        each face (e.g. to assign parts).
    """
    labels = np.asarray(labels)
    shape = tuple(len(b) - 1 for b in breaks)
    if labels.shape != shape:
        raise ValueError(f"labels shape {labels.shape} does not match the grid {shape}")
    if labels.max(initial=0) > len(materials):
        raise ValueError("a label has no material")
    verts, faces, uvs, face_labels = [], [], [], []
    offset = 0
    for axis in range(3):
        u_axis, v_axis = _FACE_UV_AXES[axis]
        pad = [(0, 0)] * 3
        pad[axis] = (1, 1)
        padded = np.moveaxis(np.pad(labels, pad), axis, 0)  # [n_axis + 2, n_u', n_v'] in moved order
        before, after = padded[:-1], padded[1:]  # cells on either side of grid plane p (p = 0..n_axis)
        for sign, solid, other in ((1, before, after), (-1, after, before)):
            p, a, b = np.nonzero((solid != 0) & (other == 0))
            if len(p) == 0:
                continue
            # np.moveaxis keeps the remaining axes in increasing order; map them to (u, v).
            rest = [ax for ax in range(3) if ax != axis]
            idx = {rest[0]: a, rest[1]: b}
            lo = np.stack([breaks[u_axis][idx[u_axis]], breaks[v_axis][idx[v_axis]]], 1)
            hi = np.stack([breaks[u_axis][idx[u_axis] + 1], breaks[v_axis][idx[v_axis] + 1]], 1)
            v, f, uv = axis_aligned_quads(axis, np.full(len(p), sign), breaks[axis][p], lo, hi)
            verts.append(v)
            faces.append(f + offset)
            uvs.append(uv)
            face_labels.append(np.repeat(solid[p, a, b], 2))
            offset += len(v)
    if not faces:
        empty = PBRMesh(np.zeros((0, 3)), np.zeros((0, 3), np.int64), np.zeros(0, np.int32), list(materials))
        return empty, np.zeros(0, np.int32)
    face_label = np.concatenate(face_labels).astype(np.int32)
    mesh = PBRMesh(
        np.concatenate(verts), np.concatenate(faces), face_label - 1, list(materials), uv=np.concatenate(uvs)
    )
    return mesh, face_label


def merge_parts(parts: Sequence[PBRMesh]) -> PBRMesh:
    """Concatenate meshes, sharing one entry per distinct material object (by identity), so parts built with
    the same :class:`PBRMaterial` instance keep a single material slot."""
    merged = PBRMesh.concatenate(list(parts))
    slot_of: dict[int, int] = {}
    unique: list[PBRMaterial] = []
    remap = np.zeros(len(merged.materials), dtype=np.int32)
    for i, material in enumerate(merged.materials):
        if id(material) not in slot_of:
            slot_of[id(material)] = len(unique)
            unique.append(material)
        remap[i] = slot_of[id(material)]
    merged.face_material = remap[merged.face_material] if merged.num_faces else merged.face_material
    merged.materials = unique if unique else merged.materials
    return merged
