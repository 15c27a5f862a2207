"""The nvdiffrast backend against analytic answers and against the CPU backend (needs CUDA + nvdiffrast)."""

import numpy as np
import pytest
import torch
import trimesh

from genrecon.data.camera_placement import CameraPlacementConfig, place_cameras
from genrecon.data.scenes.scene import Scene
from genrecon.geometry.cameras import intrinsics_from_fov, pixel_centers_uv
from genrecon.geometry.mesh import PBRMaterial, PBRMesh
from genrecon.render.embree import EmbreeRasterizer
from genrecon.render.shading import render_agreement, render_views

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
pytest.importorskip("nvdiffrast.torch")

from genrecon.render.nvdiffrast import NvdiffrastRasterizer  # noqa: E402

IDENTITY = np.eye(4)[None]
K90 = intrinsics_from_fov(np.pi / 2)[None]  # fx = fy = 0.5
QUAD_FACES = [[0, 1, 2], [0, 2, 3]]


@pytest.fixture(scope="module")
def gpu() -> NvdiffrastRasterizer:
    return NvdiffrastRasterizer()


def box(lo, hi, material: PBRMaterial, subdivisions: int = 0, inward: bool = False) -> PBRMesh:
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    m = trimesh.creation.box(extents=hi - lo)
    vertices, faces = m.vertices + (lo + hi) / 2, m.faces
    for _ in range(subdivisions):
        vertices, faces = trimesh.remesh.subdivide(vertices, faces)
    faces = faces[:, ::-1] if inward else faces
    gradient = 0.7 + 0.3 * (vertices - lo) / (hi - lo)  # colours that depend on the barycentrics
    return PBRMesh(vertices, faces, np.zeros(len(faces)), [material], vertex_color=gradient)


def test_quad_analytic_coverage_and_depth(gpu):
    verts = np.array([[-0.5, -0.5, 2.0], [0.5, -0.5, 2.0], [0.5, 0.5, 2.0], [-0.5, 0.5, 2.0]])
    buf = gpu.rasterize(verts, QUAD_FACES, IDENTITY, K90, 64, 64)
    expected = np.zeros((64, 64), bool)
    expected[24:40, 24:40] = True
    np.testing.assert_array_equal(buf.mask[0].numpy(), expected)
    np.testing.assert_allclose(buf.depth[0].numpy()[expected], 2.0, atol=1e-5)
    np.testing.assert_allclose(buf.bary[0].numpy()[expected].sum(-1), 1.0, atol=1e-5)


def test_tilted_quad_depth(gpu):
    corners = np.array([[-1, -1, 1.5], [1, -1, 2.5], [1, 1, 2.5], [-1, 1, 1.5]], float)
    W, H = 48, 40
    buf = gpu.rasterize(corners, QUAD_FACES, IDENTITY, K90, W, H)
    uv = pixel_centers_uv(W, H)
    a, b = (uv[..., 0] - 0.5) / 0.5, (uv[..., 1] - 0.5) / 0.5
    z = 2.0 / (1.0 - 0.5 * a)
    inside = (np.abs(a * z) < 1) & (np.abs(b * z) < 1)
    np.testing.assert_array_equal(buf.mask[0].numpy(), inside)
    np.testing.assert_allclose(buf.depth[0].numpy()[inside], z[inside], rtol=1e-5)


def test_image_orientation(gpu):
    """A triangle up and to the left in camera space (x < 0, y < 0) lands in the top-left image quarter."""
    # Edges chosen to pass no pixel centre, where the backends' tie rules could differ.
    verts = np.array([[-0.87, -0.91, 1.0], [-0.13, -0.91, 1.0], [-0.87, -0.17, 1.0]])
    cpu_buf = EmbreeRasterizer().rasterize(verts, [[0, 1, 2]], IDENTITY, K90, 32, 32)
    gpu_buf = gpu.rasterize(verts, [[0, 1, 2]], IDENTITY, K90, 32, 32)
    mask = gpu_buf.mask[0].numpy()
    assert mask[:16, :16].sum() > 50 and not mask[16:].any() and not mask[:, 16:].any()
    np.testing.assert_array_equal(mask, cpu_buf.mask[0].numpy())
    # Barycentrics weigh the same vertices in both backends.
    np.testing.assert_allclose(gpu_buf.bary[0].numpy()[mask], cpu_buf.bary[0].numpy()[mask], atol=1e-4)


def test_keep_on_device():
    r = NvdiffrastRasterizer(keep_on_device=True)
    verts = np.array([[-0.5, -0.5, 2.0], [0.5, -0.5, 2.0], [0.5, 0.5, 2.0], [-0.5, 0.5, 2.0]])
    buf = r.rasterize(verts, QUAD_FACES, IDENTITY, K90, 16, 16)
    assert buf.face_id.is_cuda and buf.bary.is_cuda and buf.depth.is_cuda


def test_backends_agree_on_a_furnished_room(gpu):
    mesh = PBRMesh.concatenate(
        [
            box([0, 0, 0], [4, 3.5, 2.6], PBRMaterial("room", (0.8, 0.8, 0.7), 0.0, 0.9), 3, inward=True),
            box([1.0, 1.0, 0], [2.2, 1.8, 0.75], PBRMaterial("table", (0.7, 0.3, 0.1), 0.0, 0.4), 2),
            box([2.8, 2.2, 0], [3.9, 3.4, 0.5], PBRMaterial("bed", (0.1, 0.4, 0.8), 0.0, 0.8), 2),
            box([3.2, 0.3, 0], [3.6, 0.7, 2.2], PBRMaterial("cabinet", (0.6, 0.6, 0.6), 1.0, 0.3), 2),
        ]
    )
    scene = Scene("room", mesh, np.array([[0, 0], [4, 0], [4, 3.5], [0, 3.5]], float), height=2.6)
    rig = place_cameras(scene, np.random.default_rng(0), CameraPlacementConfig(min_views=6, max_views=6))
    cpu = render_views(mesh, EmbreeRasterizer(), rig.w2c, rig.K, 128, 128)
    out = render_views(mesh, gpu, rig.w2c, rig.K, 128, 128)
    agreement = render_agreement(cpu, out)
    assert agreement["coverage"] > 0.9999  # a closed room: every pixel hits in both, up to edge cracks
    assert agreement["face_id"] > 0.99  # shared edges may go either way
    assert agreement["depth"] > 0.995
    assert agreement["depth_mean_abs_same_face"] < 1e-5
    assert agreement["colour"] > 0.995
    # Shading the same buffers on the GPU changes at most the rounding of a few pixels.
    on_gpu = render_views(mesh, NvdiffrastRasterizer(keep_on_device=True), rig.w2c, rig.K, 128, 128)
    np.testing.assert_array_equal(on_gpu.face_id, out.face_id)
    assert np.abs(on_gpu.rgba.astype(int) - out.rgba).max() <= 1
