"""CPU rasteriser and shared shading: analytic quads, depth on the surface, material colours, PNG I/O, and the
clip-space mapping of the GPU backend (checked here without a GPU)."""

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from genrecon.geometry.cameras import (
    intrinsics_from_fov,
    look_at,
    pixel_centers_uv,
    pixel_rays,
    project_points,
    unproject_points,
)
from genrecon.geometry.mesh import PBRMaterial, PBRMesh
from genrecon.render.base import build_rasterizer
from genrecon.render.embree import EmbreeRasterizer
from genrecon.render.nvdiffrast import clip_from_camera
from genrecon.render.shading import (
    Lighting,
    load_depth_png,
    load_normal_png,
    render_views,
    save_depth_png,
    save_normal_png,
    save_rgba_png,
)

UNLIT = Lighting(ambient=1.0, lights=(), headlight=0.0, specular=0.0)


def quad(corners: np.ndarray, material: PBRMaterial = PBRMaterial()) -> PBRMesh:
    return PBRMesh(corners, [[0, 1, 2], [0, 2, 3]], [0, 0], [material])


def box(lo, hi, material: PBRMaterial, inward: bool = False) -> PBRMesh:
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    m = trimesh.creation.box(extents=hi - lo)
    faces = m.faces[:, ::-1] if inward else m.faces
    return PBRMesh(m.vertices + (lo + hi) / 2, faces, np.zeros(len(faces)), [material])


@pytest.fixture(scope="module")
def room() -> PBRMesh:
    return PBRMesh.concatenate(
        [
            box([0, 0, 0], [4, 3, 2.5], PBRMaterial("wall", (0.8, 0.8, 0.7), 0.0, 0.9), inward=True),
            box([1.0, 1.0, 0], [2.0, 1.8, 0.75], PBRMaterial("table", (0.7, 0.3, 0.1), 0.0, 1.0)),
            box([2.6, 0.3, 0], [3.8, 1.2, 1.2], PBRMaterial("cabinet", (0.1, 0.4, 0.8), 0.0, 1.0)),
        ]
    )


IDENTITY = np.eye(4)[None]
K90 = intrinsics_from_fov(np.pi / 2)[None]  # fx = fy = 0.5


def test_quad_facing_camera_analytic_depth_and_coverage():
    # A 1 m quad at depth 2 covers u, v in [0.375, 0.625]: pixel centres 24..39 of a 64-pixel image.
    mesh = quad(np.array([[-0.5, -0.5, 2.0], [0.5, -0.5, 2.0], [0.5, 0.5, 2.0], [-0.5, 0.5, 2.0]]))
    buf = EmbreeRasterizer().rasterize(mesh.vertices, mesh.faces, IDENTITY, K90, 64, 64)
    expected = np.zeros((64, 64), bool)
    expected[24:40, 24:40] = True
    np.testing.assert_array_equal(buf.mask[0].numpy(), expected)
    np.testing.assert_allclose(buf.depth[0].numpy()[expected], 2.0, atol=1e-6)
    assert np.all(buf.depth[0].numpy()[~expected] == 0)
    bary = buf.bary[0].numpy()[expected]
    np.testing.assert_allclose(bary.sum(-1), 1.0, atol=1e-6)
    assert bary.min() >= -1e-6


def test_tilted_quad_depth_follows_the_plane():
    # Plane z = 2 + 0.5 x seen by the identity camera: along pixel ray x = a z the depth is 2 / (1 - 0.5 a).
    corners = np.array([[-1, -1, 1.5], [1, -1, 2.5], [1, 1, 2.5], [-1, 1, 1.5]], float)
    W, H = 48, 40
    buf = EmbreeRasterizer().rasterize(corners, [[0, 1, 2], [0, 2, 3]], IDENTITY, K90, W, H)
    uv = pixel_centers_uv(W, H)
    a, b = (uv[..., 0] - 0.5) / 0.5, (uv[..., 1] - 0.5) / 0.5
    z = 2.0 / (1.0 - 0.5 * a)
    inside = (np.abs(a * z) < 1) & (np.abs(b * z) < 1)
    np.testing.assert_array_equal(buf.mask[0].numpy(), inside)
    np.testing.assert_allclose(buf.depth[0].numpy()[inside], z[inside], rtol=1e-6)


def test_rendered_depth_unprojects_onto_the_surface(room):
    w2c = look_at([[0.5, 0.4, 1.6], [3.5, 2.6, 1.0]], [[2.0, 1.5, 0.5], [1.5, 1.4, 0.75]])
    K = intrinsics_from_fov(np.full(2, 1.2))
    W = H = 40
    buf = EmbreeRasterizer().rasterize(room.vertices, room.faces, w2c, K, W, H)
    hit = buf.mask.numpy()
    assert hit.all()  # inside a closed room every ray hits
    uv = np.broadcast_to(pixel_centers_uv(W, H), (2, H, W, 2)).reshape(2, -1, 2)
    points = unproject_points(uv, buf.depth.numpy().reshape(2, -1).astype(np.float64), w2c, K)
    tri = room.triangles()[buf.face_id.numpy().reshape(2, -1)]
    on_face = np.einsum("nmk,nmkc->nmc", buf.bary.numpy().reshape(2, -1, 3).astype(np.float64), tri)
    np.testing.assert_allclose(points, on_face, atol=2e-5)  # float32 depth and barycentrics
    normals = room.face_normals()[buf.face_id.numpy().reshape(2, -1)]
    np.testing.assert_allclose(np.einsum("nmc,nmc->nm", points - tri[..., 0, :], normals), 0.0, atol=2e-5)


def test_visible_vertex_shows_its_material_colour(room):
    # The table's top corner nearest to the eye is inside its silhouette; an odd image puts it on the centre
    # pixel's centre.
    eye, corner = np.array([0.3, 2.7, 1.8]), np.array([1.0, 1.8, 0.75])
    assert np.min(np.linalg.norm(room.vertices - corner, axis=1)) < 1e-12
    w2c = look_at(eye, corner)[None]
    K = intrinsics_from_fov(1.0)[None]
    W = H = 33
    window = np.s_[0, 15:18, 15:18]
    unlit = render_views(room, EmbreeRasterizer(), w2c, K, W, H, lighting=UNLIT)
    assert np.all(room.face_material[unlit.face_id[window]] == 1)
    assert unlit.depth[0, 16, 16] == pytest.approx(np.linalg.norm(corner - eye), abs=1e-5)
    expected = np.round(room.materials[1].constant_attributes()[:3].astype(np.float64) * 255)
    np.testing.assert_array_equal(unlit.rgba[window], np.broadcast_to([*expected, 255], (3, 3, 4)))
    # Lit with the default model a rough dielectric keeps its hue: rgb is proportional to the base colour.
    lit = render_views(room, EmbreeRasterizer(), w2c, K, W, H)
    ratio = lit.rgba[window][..., :3].reshape(-1, 3) / (np.array([0.7, 0.3, 0.1]) * 255)
    np.testing.assert_allclose(ratio, np.broadcast_to(ratio[:, :1], ratio.shape), atol=0.05)
    assert np.ptp(ratio[:, 0]) > 0.05  # the three faces are lit differently
    # The base-colour buffer is the unlit image, whatever the lighting (the view pretraining's target).
    np.testing.assert_array_equal(lit.base_colour, unlit.rgba[..., :3])
    np.testing.assert_array_equal(unlit.base_colour, unlit.rgba[..., :3])


def test_render_views_outputs(room):
    w2c = look_at([0.5, 0.4, 1.6], [2.0, 1.5, 0.5])[None]
    K = intrinsics_from_fov(1.2)[None]
    out = render_views(room, EmbreeRasterizer(), w2c, K, 24, 20)
    assert out.rgba.shape == (1, 20, 24, 4) and out.rgba.dtype == np.uint8
    assert out.depth.dtype == np.float32 and out.normal.shape == (1, 20, 24, 3)
    assert np.all(out.rgba[..., 3] == 255)
    np.testing.assert_allclose(np.linalg.norm(out.normal, axis=-1), 1.0, atol=1e-6)
    # Normals face the camera: dot(normal, camera centre - point) > 0.
    _, dirs = pixel_rays(w2c, K, 24, 20)
    assert np.all(np.sum(out.normal * dirs, -1) < 0)
    # Background of an open scene is transparent black with zero depth and normal.
    mesh = quad(np.array([[-0.5, -0.5, 2.0], [0.5, -0.5, 2.0], [0.5, 0.5, 2.0], [-0.5, 0.5, 2.0]]))
    out = render_views(mesh, EmbreeRasterizer(), IDENTITY, K90, 16, 16)
    bg = out.face_id[0] < 0
    assert bg.any() and np.all(out.rgba[0][bg] == 0) and np.all(out.depth[0][bg] == 0)
    assert np.all(out.normal[0][~bg] == [0, 0, -1])


def test_near_and_far_clip_like_the_gpu_backend():
    near_quad = np.array([[-1, -1, 0.05], [1, -1, 0.05], [1, 1, 0.05], [-1, 1, 0.05]], float)
    far_quad = near_quad * [1, 1, 20]  # at depth 1.0
    verts = np.concatenate([near_quad, far_quad])
    faces = [[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]]
    buf = EmbreeRasterizer(near=0.1, far=10.0).rasterize(verts, faces, IDENTITY, K90, 8, 8)
    np.testing.assert_allclose(buf.depth.numpy(), 1.0, atol=1e-6)  # the near quad is clipped away
    assert set(np.unique(buf.face_id.numpy())) <= {2, 3}
    buf = EmbreeRasterizer(near=0.01, far=0.5).rasterize(far_quad, faces[:2], IDENTITY, K90, 8, 8)
    assert not buf.mask.any()


def test_backend_by_name_and_stats():
    r = build_rasterizer("embree", near=0.05)
    assert isinstance(r, EmbreeRasterizer) and r.near == 0.05
    with pytest.raises(ValueError):
        build_rasterizer("opengl")
    mesh = quad(np.array([[-0.5, -0.5, 2.0], [0.5, -0.5, 2.0], [0.5, 0.5, 2.0], [-0.5, 0.5, 2.0]]))
    vertices, faces = torch.tensor(mesh.vertices), torch.tensor(mesh.faces)
    r.rasterize(vertices, faces, torch.eye(4)[None], torch.tensor(K90), 8, 8)
    assert r.last_stats["rays"] == 64 and r.last_stats["rays_per_s"] > 0


def test_clip_space_matches_pixel_centres():
    """The nvdiffrast mapping: clip/w = 2·uv - 1 and z = near, far -> -1, +1."""
    rng = np.random.default_rng(0)
    cam = np.concatenate([rng.uniform(-1, 1, (20, 2)), rng.uniform(0.5, 5, (20, 1))], axis=1)
    K = intrinsics_from_fov(1.1, aspect=1.5)
    K[0, 1] = 0.01  # skew too
    K[:2, 2] += [0.03, -0.02]
    clip = clip_from_camera(torch.tensor(cam), torch.tensor(K), 0.1, 50.0).numpy()
    uv, _ = project_points(cam, np.eye(4), K)
    np.testing.assert_allclose(clip[:, :2] / clip[:, 3:], 2 * uv - 1, atol=1e-12)
    np.testing.assert_allclose(clip[:, 3], cam[:, 2])
    ends = clip_from_camera(torch.tensor([[0.0, 0, 0.1], [0, 0, 50.0]]), torch.tensor(K), 0.1, 50.0).numpy()
    np.testing.assert_allclose(ends[:, 2] / ends[:, 3], [-1, 1], atol=1e-12)
    # nvdiffrast samples row r at clip y/w = 2 (r + 0.5) / H - 1 (row 0 at y = -1): that is v = (r + 0.5) / H.
    H = 6
    ndc_y = 2 * (np.arange(H) + 0.5) / H - 1
    np.testing.assert_allclose((ndc_y + 1) / 2, pixel_centers_uv(1, H)[:, 0, 1])


def test_png_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.2, 8.0, (6, 5)).astype(np.float32)
    depth[0, 0] = 0
    save_depth_png(tmp_path / "d.png", depth)
    np.testing.assert_allclose(load_depth_png(tmp_path / "d.png"), depth, atol=5e-4)
    normal = rng.normal(size=(6, 5, 3))
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    normal[0, 0] = 0
    save_normal_png(tmp_path / "n.png", normal)
    back = load_normal_png(tmp_path / "n.png")
    assert np.all(back[0, 0] == 0)
    np.testing.assert_allclose(np.sum(back * normal, -1).ravel()[1:], 1.0, atol=2e-4)
    rgba = rng.integers(0, 256, (6, 5, 4), dtype=np.uint8)
    save_rgba_png(tmp_path / "c.png", rgba)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "c.png")), rgba)
