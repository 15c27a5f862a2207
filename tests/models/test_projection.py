"""Projection of voxel centres into posed views."""

from __future__ import annotations

import math

import pytest
import torch

from genrecon.models.projection import Projection, coords_to_points, voxel_centers

G, P, C = 1, 4, 3


def look_at(eye: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """OpenCV world→camera [4, 4] with z up: rows of R are the camera's right (x), down (y), forward (z)."""
    forward = (target - eye) / (target - eye).norm()
    right = torch.linalg.cross(forward, torch.tensor([0.0, 0.0, 1.0]))
    right = right / right.norm()
    down = torch.linalg.cross(forward, right)
    w2c = torch.eye(4)
    w2c[:3, :3] = torch.stack([right, down, forward])
    w2c[:3, 3] = -w2c[:3, :3] @ eye
    return w2c


def intrinsics(fov_deg: float) -> torch.Tensor:
    f = 0.5 / math.tan(math.radians(fov_deg) / 2)
    return torch.tensor([[f, 0.0, 0.5], [0.0, f, 0.5], [0.0, 0.0, 1.0]])


def index_tokens(b: int, n: int) -> torch.Tensor:
    """Tokens whose channels encode (batch, view, token index), so a gather reveals what it picked."""
    t = torch.arange(G + P * P, dtype=torch.float32)
    return torch.stack(
        [
            torch.stack(
                [torch.stack([torch.full_like(t, bi), torch.full_like(t, vi), t], -1) for vi in range(n)]
            )
            for bi in range(b)
        ]
    )  # [B, N, T, 3]


def test_voxel_centers_order_and_values() -> None:
    centres = voxel_centers(4)
    assert centres.shape == (64, 3)
    torch.testing.assert_close(centres[0], torch.tensor([-0.375, -0.375, -0.375]))
    x, y, z = 1, 2, 3
    torch.testing.assert_close(centres[x * 16 + y * 4 + z], torch.tensor([-0.125, 0.125, 0.375]))  # z fastest
    coords = torch.tensor([[x, y, z], [0, 0, 0]], dtype=torch.int32)
    torch.testing.assert_close(coords_to_points(coords, 4), centres[[x * 16 + y * 4 + z, 0]])


def test_known_point_projects_onto_its_patch() -> None:
    eye, target = torch.tensor([0.0, -2.0, 0.0]), torch.zeros(3)
    w2c = look_at(eye, target)
    # Camera axes by hand: forward +y, right = forward × z-up = +x, down = forward × right = -z.
    torch.testing.assert_close(w2c[:3, :3], torch.tensor([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]]))
    # 90° fov: f = 0.5. A point 0.6 right and 1.2 up of the target lies at depth 2:
    # u = 0.5·0.6/2 + 0.5 = 0.65 → column floor(2.6) = 2;  v = 0.5·(-1.2)/2 + 0.5 = 0.2 → row floor(0.8) = 0.
    point = torch.tensor([[0.6, 0.0, 1.2]])
    feats, valid = Projection(G, P)(
        point, torch.zeros(1, dtype=torch.long), index_tokens(1, 1), w2c[None, None], intrinsics(90.0)[None, None],
        torch.ones(1, 1, dtype=torch.bool),
    )  # fmt: skip
    assert valid.tolist() == [[True]]
    assert feats[0, 0, 2].item() == 0 * P + 2 + G


def _two_batch_setup() -> tuple[torch.Tensor, ...]:
    """B=2, N=3: view 0 looks along +y, view 1 along -x, view 2 is padding (zero extrinsics)."""
    w2c = torch.zeros(2, 3, 4, 4)
    w2c[:, 0] = look_at(torch.tensor([0.0, -2.0, 0.0]), torch.zeros(3))
    w2c[:, 1] = look_at(torch.tensor([2.0, 0.0, 0.0]), torch.zeros(3))
    K = intrinsics(90.0).expand(2, 3, 3, 3).clone()
    view_mask = torch.tensor([[True, True, False], [True, True, False]])
    return w2c, K, view_mask


def test_behind_outside_and_padded_views_are_invalid() -> None:
    w2c, K, view_mask = _two_batch_setup()
    view_mask[:, 2] = True  # even if the mask lied, zero extrinsics put every point at depth 0
    points = torch.tensor(
        [
            [0.0, 0.0, 0.0],  # centre: seen by views 0 and 1
            [0.0, -3.0, 0.0],  # behind view 0 (depth -1); outside view 1 (u = 0.5·(-3)/2 + 0.5 = -0.25)
            [2.1, 0.0, 0.0],  # outside view 0 (u = 0.5·2.1/2 + 0.5 = 1.025); behind view 1 (depth -0.1)
            [-1.0, -2.5, 0.0],  # behind view 0; view 1: depth 3, u = 0.5·(-2.5)/3 + 0.5 ≈ 0.083
            [0.0, 0.0, 0.0],
        ]
    )
    batch_idx = torch.tensor([0, 0, 0, 1, 1])
    tokens = index_tokens(2, 3)
    feats, valid = Projection(G, P)(points, batch_idx, tokens, w2c, K, view_mask)
    assert valid.tolist() == [
        [True, True, False],
        [False, False, False],
        [False, False, False],
        [False, True, False],
        [True, True, False],
    ]
    assert torch.equal(feats[~valid], torch.zeros(int((~valid).sum()), C))
    # Gathered tokens come from the point's own batch element and the right view.
    assert feats[4, 1, 0].item() == 1 and feats[4, 1, 1].item() == 1
    # The centre projects to u = v = 0.5 → patch (2, 2).
    assert feats[0, 0, 2].item() == 2 * P + 2 + G


def test_view_mask_invalidates_real_cameras() -> None:
    w2c, K, view_mask = _two_batch_setup()
    view_mask[0, 1] = False
    _, valid = Projection(G, P)(
        torch.zeros(1, 3), torch.zeros(1, dtype=torch.long), index_tokens(2, 3), w2c, K, view_mask
    )
    assert valid.tolist() == [[True, False, False]]


def _frontal_camera() -> tuple[torch.Tensor, torch.Tensor]:
    """Camera at z = -2 looking along +z (identity rotation); points on z = 0 are at depth 2."""
    w2c = torch.eye(4)
    w2c[2, 3] = 2.0
    return w2c[None, None], intrinsics(90.0)[None, None]


def _points_at_uv(uv: torch.Tensor) -> torch.Tensor:
    # u = f·x/z + 0.5 with f = 0.5, z = 2  →  x = 4(u - 0.5)
    return torch.cat([4 * (uv - 0.5), torch.zeros(len(uv), 1)], dim=-1)


def test_bilinear_at_patch_centres_equals_nearest() -> None:
    w2c, K = _frontal_camera()
    tokens = torch.randn(1, 1, G + P * P, 8)
    rows, cols = torch.meshgrid(torch.arange(P), torch.arange(P), indexing="ij")
    uv = torch.stack([(cols.flatten() + 0.5) / P, (rows.flatten() + 0.5) / P], dim=-1)
    args = (
        _points_at_uv(uv),
        torch.zeros(P * P, dtype=torch.long),
        tokens,
        w2c,
        K,
        torch.ones(1, 1, dtype=torch.bool),
    )
    nearest, valid_n = Projection(G, P, "nearest")(*args)
    bilinear, valid_b = Projection(G, P, "bilinear")(*args)
    assert valid_n.all() and torch.equal(valid_n, valid_b)
    torch.testing.assert_close(nearest[:, 0], tokens[0, 0, G:])
    torch.testing.assert_close(bilinear, nearest, atol=1e-5, rtol=0)


def test_bilinear_between_centres_and_at_the_border() -> None:
    w2c, K = _frontal_camera()
    tokens = torch.randn(1, 1, G + P * P, 8)
    patch = tokens[0, 0, G:].reshape(P, P, 8)
    # Halfway between the centres of (row 1, col 1) and (row 1, col 2); then a corner, clamped to (0, 0).
    uv = torch.tensor([[2.0 / P, 1.5 / P], [0.01, 0.01]])
    feats, valid = Projection(G, P, "bilinear")(
        _points_at_uv(uv),
        torch.zeros(2, dtype=torch.long),
        tokens,
        w2c,
        K,
        torch.ones(1, 1, dtype=torch.bool),
    )
    assert valid.all()
    torch.testing.assert_close(feats[0, 0], (patch[1, 1] + patch[1, 2]) / 2, atol=1e-5, rtol=0)
    torch.testing.assert_close(feats[1, 0], patch[0, 0], atol=1e-5, rtol=0)


def test_projection_has_no_state() -> None:
    projection = Projection(5, 32, "bilinear")
    assert not list(projection.parameters()) and not projection.state_dict()
    with pytest.raises(ValueError):
        Projection(5, 32, "cubic")


def test_token_count_is_checked() -> None:
    w2c, K = _frontal_camera()
    with pytest.raises(ValueError, match="G \\+ P²"):
        Projection(G, P)(torch.zeros(1, 3), torch.zeros(1, dtype=torch.long), torch.zeros(1, 1, 10, 2), w2c, K,
                         torch.ones(1, 1, dtype=torch.bool))  # fmt: skip
