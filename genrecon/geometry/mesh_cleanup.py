"""Vectorised NumPy mesh clean-up run before GLB export (CPU stand-ins for CuMesh's clean-up kernels).

Every function takes ``vertices [V, 3]`` float and/or ``faces [F, 3]`` int and returns new arrays; nothing is
modified in place. Edges are identified by the sorted ``int64`` key ``min·V + max`` of their two vertices, and
``np.unique`` over those keys replaces CuMesh's GPU hash maps.

The dual-contoured meshes of :func:`genrecon.geometry.ovoxel.ovoxel_to_mesh` are not consistently wound (edge
flags are unsigned), so nothing here relies on winding except :func:`unify_face_orientations`, which fixes it.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, minimum_spanning_tree

# Face corner k's half-edge runs from corner k to corner (k + 1) % 3.
_HALF_EDGE_CORNERS = np.array([[0, 1], [1, 2], [2, 0]])


# ---------------------------------------------------------------------- small helpers
def face_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """``[F]`` triangle areas."""
    tri = np.asarray(vertices, dtype=np.float64)[faces]
    return 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)


def _half_edges(faces: np.ndarray) -> np.ndarray:
    """``[3F, 2]`` directed half-edges; row ``3f + k`` is corner k → k+1 of face f."""
    return faces[:, _HALF_EDGE_CORNERS].reshape(-1, 2)


def _edge_keys(half_edges: np.ndarray, num_vertices: int) -> np.ndarray:
    """``[E]`` undirected int64 keys ``min·V + max``."""
    lo = half_edges.min(1).astype(np.int64)
    hi = half_edges.max(1).astype(np.int64)
    return lo * num_vertices + hi


def _as_faces(faces: np.ndarray) -> np.ndarray:
    return np.asarray(faces, dtype=np.int64).reshape(-1, 3)


# ---------------------------------------------------------------------- removal passes
def remove_degenerate_faces(vertices: np.ndarray, faces: np.ndarray, min_area: float = 0.0) -> np.ndarray:
    """Drop faces with a repeated vertex index or area ``<= min_area``. Returns ``[F', 3]``."""
    faces = _as_faces(faces)
    repeated = (faces[:, 0] == faces[:, 1]) | (faces[:, 1] == faces[:, 2]) | (faces[:, 2] == faces[:, 0])
    return faces[~repeated & (face_areas(vertices, faces) > min_area)]


def remove_duplicate_faces(faces: np.ndarray) -> np.ndarray:
    """Drop faces over the same vertex set as an earlier face, whatever their winding. Returns ``[F', 3]``
    in the original order (first occurrence kept)."""
    faces = _as_faces(faces)
    if len(faces) == 0:
        return faces
    _, first = np.unique(np.sort(faces, axis=1), axis=0, return_index=True)
    return faces[np.sort(first)]


def remove_unreferenced_vertices(
    vertices: np.ndarray, faces: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Drop vertices no face uses.

    Returns ``vertices [V', 3]``, re-indexed ``faces [F, 3]`` and ``kept [V']``: the input index of every kept
    vertex (to carry per-vertex data along).
    """
    vertices = np.asarray(vertices)
    faces = _as_faces(faces)
    used = np.zeros(len(vertices), dtype=bool)
    used[faces.reshape(-1)] = True
    kept = np.flatnonzero(used)
    new_index = np.cumsum(used) - 1
    return vertices[kept], new_index[faces], kept


def vertex_connected_components(faces: np.ndarray, num_vertices: int) -> np.ndarray:
    """``[F]`` component label of every face, faces being connected when they share a vertex."""
    faces = _as_faces(faces)
    edges = _half_edges(faces)
    graph = coo_matrix(
        (np.ones(len(edges), dtype=np.int8), (edges[:, 0], edges[:, 1])), shape=(num_vertices, num_vertices)
    )
    _, vertex_label = connected_components(graph, directed=False)
    return vertex_label[faces[:, 0]]


def remove_small_components(vertices: np.ndarray, faces: np.ndarray, min_area: float) -> np.ndarray:
    """Drop connected components (through shared vertices) whose total area is below ``min_area`` (floaters).
    Returns ``[F', 3]``; vertices are not touched (see :func:`remove_unreferenced_vertices`)."""
    faces = _as_faces(faces)
    if len(faces) == 0:
        return faces
    label = vertex_connected_components(faces, len(vertices))
    component_area = np.bincount(label, weights=face_areas(vertices, faces))
    return faces[component_area[label] >= min_area]


# ---------------------------------------------------------------------- holes
class _BoundaryEdges(NamedTuple):
    """Boundary edges (used by exactly one face), directed as in that face: ``start [B]``, ``end [B]``."""

    start: np.ndarray
    end: np.ndarray


def _boundary_edges(faces: np.ndarray, num_vertices: int) -> _BoundaryEdges:
    half = _half_edges(faces)
    _, inverse, counts = np.unique(_edge_keys(half, num_vertices), return_inverse=True, return_counts=True)
    boundary = half[counts[inverse] == 1]
    return _BoundaryEdges(boundary[:, 0], boundary[:, 1])


def fill_holes(
    vertices: np.ndarray, faces: np.ndarray, max_perimeter: float
) -> tuple[np.ndarray, np.ndarray]:
    """Close every boundary loop whose perimeter is below ``max_perimeter`` with a centroid fan
    (reference §2.5, CuMesh ``fill_holes``).

    Boundary edges are those used by one face. Their connected components are the loops; only *simple*
    loops (every vertex on exactly two boundary edges) are filled, because a component that touches itself
    or meets a non-manifold edge has no well-defined interior. Each filled loop gets one new vertex at the
    mean of its edge midpoints and one triangle per boundary edge. Unlike CuMesh, which takes the edge
    direction from the sorted edge key, a fan triangle runs its boundary edge against the adjacent face's
    direction, so the patch inherits the neighbours' winding.

    Returns ``vertices [V + H, 3]`` (one new vertex per filled hole, appended) and ``faces [F + B', 3]``.
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = _as_faces(faces)
    if len(faces) == 0:
        return vertices, faces
    start, end = _boundary_edges(faces, len(vertices))
    if len(start) == 0:
        return vertices, faces

    # Components of the boundary-edge graph, over the boundary vertices only.
    loop_vertices, compact = np.unique(np.concatenate([start, end]), return_inverse=True)
    a, b = compact[: len(start)], compact[len(start) :]
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(len(loop_vertices),) * 2)
    num_loops, vertex_loop = connected_components(graph, directed=False)
    edge_loop = vertex_loop[a]

    degree = np.bincount(np.concatenate([a, b]), minlength=len(loop_vertices))
    simple = np.ones(num_loops, dtype=bool)
    simple[vertex_loop[degree != 2]] = False
    length = np.linalg.norm(vertices[end] - vertices[start], axis=1)
    perimeter = np.bincount(edge_loop, weights=length, minlength=num_loops)
    fill = simple & (perimeter < max_perimeter)
    if not fill.any():
        return vertices, faces

    midpoint = 0.5 * (vertices[start] + vertices[end])
    edge_count = np.bincount(edge_loop, minlength=num_loops)
    centroid = (
        np.stack(
            [np.bincount(edge_loop, weights=midpoint[:, c], minlength=num_loops) for c in range(3)], axis=1
        )
        / np.maximum(edge_count, 1)[:, None]
    )
    new_vertex_index = np.full(num_loops, -1, dtype=np.int64)
    new_vertex_index[fill] = len(vertices) + np.arange(fill.sum())

    filled_edge = fill[edge_loop]
    fan = np.stack([end[filled_edge], start[filled_edge], new_vertex_index[edge_loop[filled_edge]]], axis=1)
    return np.concatenate([vertices, centroid[fill]]), np.concatenate([faces, fan])


# ---------------------------------------------------------------------- orientation
class _ManifoldAdjacency(NamedTuple):
    """Face pairs across manifold edges (edges used by exactly two faces): ``face_a [P]``, ``face_b [P]``, and
    ``same_direction [P]``: both faces traverse the shared edge the same way (their windings disagree)."""

    face_a: np.ndarray
    face_b: np.ndarray
    same_direction: np.ndarray


def _manifold_adjacency(faces: np.ndarray, num_vertices: int) -> _ManifoldAdjacency:
    half = _half_edges(faces)
    keys = _edge_keys(half, num_vertices)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    _, first, counts = np.unique(sorted_keys, return_index=True, return_counts=True)
    pair_first = first[counts == 2]
    h0, h1 = order[pair_first], order[pair_first + 1]
    return _ManifoldAdjacency(h0 // 3, h1 // 3, half[h0, 0] == half[h1, 0])


def _spanning_forest_flips(adjacency: _ManifoldAdjacency, component: np.ndarray) -> np.ndarray:
    """``[F]`` bool: flip this face so that it agrees with its component's root along a spanning forest.

    A face must flip relative to its neighbour exactly when they traverse the shared edge the same way. Along
    a tree this parity propagates without conflict, and it is solved without a Python BFS loop by labelling
    the tree's *double cover* (nodes ``(f, s)``, ``s`` = flipped?; a tree edge of parity p links ``(i, s)``
    with ``(j, s xor p)``): face f flips iff ``(f, 1)`` lies in the component of ``(root, 0)``.
    ``component [F]`` labels the faces' components over manifold edges; each one's first face is its root.
    """
    num_faces = len(component)
    tree = minimum_spanning_tree(
        coo_matrix((np.ones(len(adjacency.face_a)), (adjacency.face_a, adjacency.face_b)), (num_faces,) * 2)
    ).tocoo()
    # Map tree edges back to their parity (the spanning tree keeps (row, col) of an input pair or its swap).
    pair_key = np.minimum(adjacency.face_a, adjacency.face_b) * num_faces + np.maximum(
        adjacency.face_a, adjacency.face_b
    )
    key_order = np.argsort(pair_key)
    tree_key = np.minimum(tree.row, tree.col).astype(np.int64) * num_faces + np.maximum(tree.row, tree.col)
    parity = adjacency.same_direction[key_order[np.searchsorted(pair_key[key_order], tree_key)]]

    i, j, p = tree.row.astype(np.int64), tree.col.astype(np.int64), parity.astype(np.int64)
    rows = np.concatenate([2 * i, 2 * i + 1])
    cols = np.concatenate([2 * j + p, 2 * j + (1 - p)])
    cover = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(2 * num_faces,) * 2)
    _, cover_label = connected_components(cover, directed=False)

    _, root_of_component = np.unique(component, return_index=True)
    root = root_of_component[component]
    return cover_label[2 * np.arange(num_faces) + 1] == cover_label[2 * root]


def _signed_volume_per_component(
    vertices: np.ndarray, faces: np.ndarray, component: np.ndarray, num_components: int
) -> np.ndarray:
    tri = vertices[faces]
    volume = np.einsum("fc,fc->f", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])) / 6.0
    return np.bincount(component, weights=volume, minlength=num_components)


class OrientationResult(NamedTuple):
    """Result of :func:`unify_face_orientations`.

    ``faces [F, 3]`` re-wound; ``consistent``: no manifold edge is traversed the same way by its two faces;
    ``outward``: additionally every component is closed and wound outward, so single-sided rendering is safe.
    """

    faces: np.ndarray
    consistent: bool
    outward: bool


def unify_face_orientations(vertices: np.ndarray, faces: np.ndarray) -> OrientationResult:
    """Make winding consistent within each connected component (connected through manifold edges).

    Equivalent to a BFS from one root face per component that flips every neighbour whose winding disagrees
    across the shared edge (CuMesh ``unify_face_orientations``); see :func:`_spanning_forest_flips` for the
    vectorised form. Roots keep their winding, so an already consistent mesh is returned unchanged. A
    component that is closed (all its edges manifold) is then turned outward (positive signed volume); an
    open one keeps its root's side, which is arbitrary, hence ``outward=False`` and double-sided materials.
    Non-orientable components (Möbius-like) keep the spanning-tree orientation and set ``consistent=False``.
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = _as_faces(faces)
    num_faces = len(faces)
    if num_faces == 0:
        return OrientationResult(faces, True, True)
    adjacency = _manifold_adjacency(faces, len(vertices))
    adjacency_graph = coo_matrix(
        (np.ones(len(adjacency.face_a), dtype=np.int8), (adjacency.face_a, adjacency.face_b)),
        (num_faces,) * 2,
    )
    num_components, component = connected_components(adjacency_graph, directed=False)
    flip = _spanning_forest_flips(adjacency, component)
    faces = np.where(flip[:, None], faces[:, ::-1], faces)

    inconsistent = adjacency.same_direction ^ flip[adjacency.face_a] ^ flip[adjacency.face_b]
    # A component is closed when each of its faces has 3 manifold neighbours (no boundary, no non-manifold
    # edge).
    neighbours = np.bincount(np.concatenate([adjacency.face_a, adjacency.face_b]), minlength=num_faces)
    closed = np.bincount(component, weights=neighbours != 3, minlength=num_components) == 0
    bad = np.zeros(num_components, dtype=bool)
    bad[component[adjacency.face_a[inconsistent]]] = True

    inward = closed & ~bad & (_signed_volume_per_component(vertices, faces, component, num_components) < 0)
    faces = np.where(inward[component][:, None], faces[:, ::-1], faces)
    consistent = not bad.any()
    return OrientationResult(faces, consistent, consistent and bool(closed.all()))


# ---------------------------------------------------------------------- composition
def clean_mesh(
    vertices: np.ndarray,
    faces: np.ndarray,
    *,
    min_component_area: float = 0.0,
    max_hole_perimeter: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Degenerate and duplicate faces, then small components (``min_component_area > 0``), then holes
    (``max_hole_perimeter > 0``), then unreferenced vertices.

    Returns ``vertices [V', 3]`` and ``faces [F', 3]``.
    """
    faces = remove_duplicate_faces(remove_degenerate_faces(vertices, faces))
    if min_component_area > 0:
        faces = remove_small_components(vertices, faces, min_component_area)
    if max_hole_perimeter > 0:
        vertices, faces = fill_holes(vertices, faces, max_hole_perimeter)
    vertices, faces, _ = remove_unreferenced_vertices(vertices, faces)
    return vertices, faces
