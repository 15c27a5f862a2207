"""genrecon.geometry.floor_rays: each pixel's floor depth and ray elevation from the camera alone."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from genrecon.geometry.cameras import intrinsics_from_fov, look_at, pixel_centers_uv, pixel_rays, unproject_points
from genrecon.geometry.floor_rays import append_floor_rays, floor_ray_maps


def _camera(eye, target, fov=1.0):
    return torch.tensor(look_at(eye, target), dtype=torch.float32), torch.tensor(intrinsics_from_fov(fov),
                                                                                 dtype=torch.float32)


def test_a_camera_looking_straight_down_sees_the_floor_at_its_height():
    w2c, K = _camera([0.3, -0.2, 1.5], [0.3, -0.2, 0.0])
    maps = floor_ray_maps(w2c, K, size=8, floor_z=0.0, unit=2.85)
    assert maps.shape == (2, 8, 8)
    # the four central pixels look almost straight down: z ≈ 1.5 m, i.e. 1.5 / 2.85 units; the sine near -1
    centre = maps[:, 3:5, 3:5]
    assert torch.allclose(centre[0], torch.full((2, 2), 2.85 / 1.5), rtol=0, atol=1e-5)
    assert (centre[1] < -0.99).all()
    # any pixel's camera depth to the floor is the height: a plane parallel to the image
    assert torch.allclose(maps[0], torch.full((8, 8), 2.85 / 1.5), atol=1e-5)


def test_a_level_camera_sees_the_floor_below_the_horizon_only():
    w2c, K = _camera([0.0, 0.0, 1.2], [5.0, 0.0, 1.2])  # horizontal view: the horizon is the middle row
    size = 16
    maps = floor_ray_maps(w2c, K, size=size, floor_z=0.0)
    inverse, sine = maps
    assert (inverse[: size // 2] == 0).all() and (inverse[size // 2 :] > 0).all()
    # below the horizon, camera depth z = h·fy / (v - cy): inverse (v - cy) / (h·fy)
    v = (torch.arange(size) + 0.5) / size
    expected = ((v - K[1, 2]) / (K[1, 1] * 1.2)).clamp(min=0)
    assert torch.allclose(inverse[:, 3], expected, atol=1e-6)
    assert (sine[: size // 2] > 0).all() and (sine[size // 2 :] < 0).all()
    # a camera below the floor never sees it
    assert (floor_ray_maps(w2c, K, size=size, floor_z=2.0)[0] == 0).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_unprojecting_at_the_floor_depth_lands_on_the_floor(seed):
    rng = np.random.default_rng(seed)
    eye = rng.uniform([-1, -1, 0.8], [1, 1, 2.0], size=(4, 3))
    target = rng.uniform([-2, -2, 0.0], [2, 2, 1.2], size=(4, 3))
    w2c = torch.tensor(look_at(eye, target), dtype=torch.float32)  # [4, 4, 4]
    K = torch.tensor(intrinsics_from_fov(rng.uniform(0.6, 1.4, size=4)), dtype=torch.float32)
    floor_z, unit, size = 0.3, 2.0, 12
    maps = floor_ray_maps(w2c, K, size, floor_z, unit, max_inverse=1e6)  # [4, 2, S, S]
    uv = torch.tensor(pixel_centers_uv(size, size), dtype=torch.float32).reshape(1, -1, 2).expand(4, -1, -1)
    inverse = maps[:, 0].reshape(4, -1)
    hits = inverse > 0
    assert hits.any() and (~hits).any()
    depth = torch.where(hits, unit / inverse.clamp(min=1e-9), torch.ones_like(inverse))
    points = unproject_points(uv, depth, w2c, K)  # [4, S², 3]
    assert torch.allclose(points[hits][:, 2], torch.full_like(points[hits][:, 2], floor_z), atol=1e-3)
    # where there is no hit, the ray does not go down
    _, dirs = pixel_rays(w2c, K, size, size)
    assert (dirs.reshape(4, -1, 3)[..., 2][~hits] >= -1e-6).all()
    # the second map is that ray's z
    torch.testing.assert_close(maps[:, 1], dirs[..., 2], atol=1e-5, rtol=0)


def test_mirrored_intrinsics_give_mirrored_maps():
    w2c, K = _camera([0.0, 0.0, 1.4], [2.0, 1.0, 0.3])
    view = torch.linalg.inv(w2c)[:3, 2]
    rolled = w2c.clone()  # roll the camera about its axis so the maps are not left-right symmetric
    angle = 0.3
    roll = torch.tensor([[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1.0]])
    rolled[:3, :3] = roll @ w2c[:3, :3]
    rolled[:3, 3] = roll @ w2c[:3, 3]
    assert torch.allclose(torch.linalg.inv(rolled)[:3, 2], view, atol=1e-6)  # same viewing direction
    K[0, 2] = 0.45  # off-centre principal point
    mirrored = K.clone()
    mirrored[0, 0], mirrored[0, 2] = -K[0, 0], 1.0 - K[0, 2]
    maps = floor_ray_maps(rolled, K, 10, 0.0)
    assert not torch.allclose(maps, maps.flip(-1), atol=1e-3)
    torch.testing.assert_close(floor_ray_maps(rolled, mirrored, 10, 0.0), maps.flip(-1), atol=1e-5, rtol=0)


def test_append_floor_rays_adds_two_channels_and_refuses_bad_arguments():
    w2c, K = _camera([0.0, 0.0, 1.0], [1.0, 0.0, 0.0])
    images = torch.rand(2, 3, 3, 8, 8)
    out = append_floor_rays(images, w2c.expand(2, 3, 4, 4), K.expand(2, 3, 3, 3), floor_z=0.0)
    assert out.shape == (2, 3, 5, 8, 8) and torch.equal(out[:, :, :3], images)
    with pytest.raises(ValueError, match="unit > 0"):
        floor_ray_maps(w2c, K, 8, 0.0, unit=0.0)
