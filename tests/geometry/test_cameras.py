"""Camera maths: projection, look-at, pixel rays, crops, chunk frames and the 40 % coverage rule."""

import numpy as np
import pytest
import torch

from genrecon.geometry.cameras import (
    box_corners_and_centre,
    camera_centers,
    crop_intrinsics,
    fov_from_focal_length,
    fov_from_intrinsics,
    intrinsics_from_fov,
    invert_rigid,
    look_at,
    pixel_rays,
    project_points,
    projected_box_coverage,
    unproject_points,
    w2c_in_chunk_frame,
)


def random_cameras(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    eyes = rng.uniform(-2, 2, (n, 3))
    targets = eyes + rng.normal(size=(n, 3))
    K = intrinsics_from_fov(rng.uniform(0.8, 1.4, n), aspect=4 / 3)
    K[:, 0, 2] += rng.uniform(-0.05, 0.05, n)  # off-centre principal points exercise cx, cy
    K[:, 1, 2] += rng.uniform(-0.05, 0.05, n)
    return look_at(eyes, targets), K


def assert_rigid(w2c: np.ndarray) -> None:
    R = w2c[..., :3, :3]
    np.testing.assert_allclose(R @ np.swapaxes(R, -1, -2), np.broadcast_to(np.eye(3), R.shape), atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-9)
    np.testing.assert_allclose(w2c[..., 3, :], np.broadcast_to([0, 0, 0, 1.0], w2c[..., 3, :].shape))


def test_intrinsics_and_focal_lengths():
    K = intrinsics_from_fov(np.pi / 2, aspect=2.0)
    np.testing.assert_allclose(K, [[0.5, 0, 0.5], [0, 1.0, 0.5], [0, 0, 1]], atol=1e-12)
    # 20-35 mm on a 32 mm sensor: the reference's 49-77 degree horizontal FoV.
    np.testing.assert_allclose(np.rad2deg(fov_from_focal_length([35.0, 20.0])), [49.13, 77.32], atol=0.01)
    np.testing.assert_allclose(fov_from_intrinsics(intrinsics_from_fov(1.1)), 1.1)


def test_known_point_projects_to_known_pixel():
    W, H = 100, 80
    K = intrinsics_from_fov(np.pi / 2, aspect=W / H)  # fx = 0.5, fy = 0.625
    # Identity camera: column 30, row 70 has its centre at u = 30.5/100, v = 70.5/80.
    u, v = 30.5 / W, 70.5 / H
    z = 2.0
    point = np.array([[(u - 0.5) / 0.5 * z, (v - 0.5) / 0.625 * z, z]])
    uv, depth = project_points(point, np.eye(4), K)
    np.testing.assert_allclose(uv[0] * [W, H] - 0.5, [30, 70], atol=1e-9)
    np.testing.assert_allclose(depth, [z])
    # A camera at the origin looking along world +x with z up: world -y is image right, +z image up.
    w2c = look_at([0, 0, 0], [1, 0, 0])
    uv, depth = project_points(np.array([[2.0, -1.0, 0.5]]), w2c, intrinsics_from_fov(np.pi / 2))
    np.testing.assert_allclose(uv, [[0.75, 0.375]], atol=1e-12)
    np.testing.assert_allclose(depth, [2.0], atol=1e-12)


def test_look_at_puts_target_at_centre():
    rng = np.random.default_rng(0)
    eyes = rng.uniform(-3, 3, (64, 3))
    targets = rng.uniform(-3, 3, (64, 3))
    targets[0] = eyes[0] + [0, 0, 2.0]  # straight up: the degenerate case stays finite
    w2c = look_at(eyes, targets)
    assert_rigid(w2c)
    K = intrinsics_from_fov(np.full(64, 1.0))
    uv, depth = project_points(targets[:, None], w2c, K)
    np.testing.assert_allclose(uv[:, 0], 0.5, atol=1e-9)
    np.testing.assert_allclose(depth[:, 0], np.linalg.norm(targets - eyes, axis=1), atol=1e-9)
    np.testing.assert_allclose(camera_centers(w2c), eyes, atol=1e-9)
    np.testing.assert_allclose(invert_rigid(w2c) @ w2c, np.broadcast_to(np.eye(4), w2c.shape), atol=1e-9)
    # Image "up" is world up for non-degenerate views.
    above = project_points(targets[1:, None] + [0, 0, 0.1], w2c[1:], K[1:])[0]
    assert np.all(above[:, 0, 1] < 0.5)


def test_pixel_rays_pass_through_pixel_centres():
    rng = np.random.default_rng(1)
    w2c, K = random_cameras(rng, 3)
    W, H = 7, 5
    origins, dirs = pixel_rays(w2c, K, W, H)
    assert origins.shape == dirs.shape == (3, H, W, 3)
    np.testing.assert_allclose(np.linalg.norm(dirs, axis=-1), 1.0)
    np.testing.assert_allclose(origins, np.broadcast_to(camera_centers(w2c)[:, None, None], origins.shape))
    t = rng.uniform(0.5, 4.0, (3, H, W, 1))
    points = (origins + t * dirs).reshape(3, -1, 3)
    uv, depth = project_points(points, w2c, K)
    cols, rows = np.meshgrid(np.arange(W), np.arange(H), indexing="xy")
    expected = np.stack([(cols + 0.5) / W, (rows + 0.5) / H], -1).reshape(-1, 2)
    np.testing.assert_allclose(uv, np.broadcast_to(expected, uv.shape), atol=1e-9)
    cos = np.einsum("nhwc,nc->nhw", dirs, w2c[:, 2, :3])
    np.testing.assert_allclose(depth, (t[..., 0] * cos).reshape(3, -1), atol=1e-9)
    # Round trip through unprojection.
    np.testing.assert_allclose(unproject_points(uv, depth, w2c, K), points, atol=1e-9)


def test_crop_intrinsics_shifts_and_scales_pixels():
    rng = np.random.default_rng(2)
    w2c, K = random_cameras(rng, 1)
    W, H = 128, 96
    points = camera_centers(w2c)[0] + 3.0 * w2c[0, 2, :3] + rng.normal(scale=0.5, size=(50, 3))
    uv, _ = project_points(points, w2c[0], K[0])
    px = uv * [W, H]  # continuous pixel coordinates (pixel c spans [c, c + 1))
    box = (20, 15, 84, 79)  # a 64 x 64 square crop
    K_crop = crop_intrinsics(K[0], box, (W, H))
    uv_crop, _ = project_points(points, w2c[0], K_crop)
    np.testing.assert_allclose(uv_crop * 64, px - [20, 15], atol=1e-9)
    # Resizing the square crop to 512 scales those pixel coordinates by 8 with K_crop unchanged.
    np.testing.assert_allclose(uv_crop * 512, (px - [20, 15]) * 8, atol=1e-9)
    # Non-square crops, batched boxes and torch float32 agree.
    boxes = np.array([[-10, 5, 100, 60], [0, 0, W, H]], dtype=np.float64)
    K2 = crop_intrinsics(np.repeat(K, 2, axis=0), boxes, (W, H))
    uv2, _ = project_points(points, w2c[[0, 0]], K2)
    np.testing.assert_allclose(uv2[0] * [110, 55], px - [-10, 5], atol=1e-9)
    np.testing.assert_allclose(K2[1], K[0], atol=1e-12)
    K_t = crop_intrinsics(torch.tensor(K[0], dtype=torch.float32), box, (W, H))
    assert isinstance(K_t, torch.Tensor) and K_t.dtype == torch.float32
    np.testing.assert_allclose(K_t.numpy(), K_crop, atol=1e-5)


def chunk_transform(yaw: float, edge: float, centre: np.ndarray) -> np.ndarray:
    """chunk_from_world: rotate by -yaw about z around ``centre``, then scale by 1/edge."""
    c, s = np.cos(yaw), np.sin(yaw)
    R = np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]])
    M = np.eye(4)
    M[:3, :3] = R / edge
    M[:3, 3] = -R @ centre / edge
    return M


def test_w2c_in_chunk_frame_keeps_pixels_and_rigidity():
    rng = np.random.default_rng(3)
    w2c, K = random_cameras(rng, 4)
    edge = 2.8
    M = chunk_transform(0.7, edge, np.array([1.0, -0.5, edge / 2]))
    w2c_chunk = w2c_in_chunk_frame(w2c, M)
    assert_rigid(w2c_chunk)
    world = camera_centers(w2c)[:, None] + 2.0 * w2c[:, None, 2, :3] + rng.normal(scale=0.3, size=(4, 20, 3))
    chunk = world @ M[:3, :3].T + M[:3, 3]
    uv_w, depth_w = project_points(world, w2c, K)
    uv_c, depth_c = project_points(chunk, w2c_chunk, K)
    np.testing.assert_allclose(uv_c, uv_w, atol=1e-9)
    np.testing.assert_allclose(depth_c, depth_w / edge, atol=1e-9)
    # Torch float32 input gives the same answer in float32.
    out = w2c_in_chunk_frame(torch.tensor(w2c, dtype=torch.float32), torch.tensor(M, dtype=torch.float32))
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), w2c_chunk, atol=1e-5)


def test_project_points_numpy_and_torch_agree():
    rng = np.random.default_rng(4)
    w2c, K = random_cameras(rng, 2)
    points = rng.normal(size=(2, 10, 3))
    uv_np, d_np = project_points(points, w2c, K)
    uv_t, d_t = project_points(torch.tensor(points), torch.tensor(w2c), torch.tensor(K))
    assert isinstance(uv_t, torch.Tensor) and uv_t.dtype == torch.float64
    np.testing.assert_allclose(uv_t.numpy(), uv_np)
    np.testing.assert_allclose(d_t.numpy(), d_np)


def test_projected_box_coverage():
    K = intrinsics_from_fov(np.pi / 2)  # fx = fy = 0.5
    eye = np.eye(4)
    # A flat 1.0 x 0.5 box at depth 2 spans 0.25 x 0.125 of the image.
    flat = box_corners_and_centre([-0.5, -0.25, 2.0], [0.5, 0.25, 2.0])
    assert projected_box_coverage(eye, K, flat) == pytest.approx(0.25 * 0.125)
    # A box larger than the view is clipped to the whole image.
    big = box_corners_and_centre([-5, -5, 1], [5, 5, 2])
    assert projected_box_coverage(eye, K, big) == pytest.approx(1.0)
    # Behind the camera: nothing.
    assert projected_box_coverage(eye, K, box_corners_and_centre([-1, -1, -3], [1, 1, -2])) == 0.0
    # Straddling the camera plane: only the points in front count (x from -0.5 to 0.5 at z = 1 and z = 2).
    straddle = box_corners_and_centre([-0.5, -0.5, -1.0], [0.5, 0.5, 2.0])
    uv, depth = project_points(straddle, eye, K)
    front = uv[depth > 0]
    expected = np.prod(np.clip(front, 0, 1).max(0) - np.clip(front, 0, 1).min(0))
    assert projected_box_coverage(eye, K, straddle) == pytest.approx(expected)
    # Batched over views.
    w2c = np.stack([eye, look_at([0, 0, 0], [0, 0, -1], up=(0, 1, 0))])
    cov = projected_box_coverage(w2c, np.stack([K, K]), flat)
    assert cov.shape == (2,) and cov[0] > 0 and cov[1] == 0
    # Torch cameras with numpy test points answer in torch, in the cameras' dtype.
    w2c_t, K_t = torch.tensor(w2c, dtype=torch.float32), torch.tensor(np.stack([K, K]), dtype=torch.float32)
    cov_t = projected_box_coverage(w2c_t, K_t, flat)
    assert isinstance(cov_t, torch.Tensor) and cov_t.dtype == torch.float32
    np.testing.assert_allclose(cov_t.numpy(), cov, atol=1e-6)
