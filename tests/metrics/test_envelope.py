"""Observation envelope: observed surfaces inside, far space outside, the dilation radius, the depth and
mesh-visibility variants agreeing, and mesh / point crops."""

import numpy as np
import pytest

from genrecon.geometry.cameras import intrinsics_from_fov, look_at
from genrecon.metrics.envelope import ObservationEnvelope, backproject_depth

S, R = 0.02, 0.15  # voxel size and dilation
K90 = intrinsics_from_fov(np.pi / 2)  # fx = 0.5: at depth 2 the image spans x, y in [-2, 2]


def wall_depth(width: int = 64, height: int = 48, z: float = 2.0) -> np.ndarray:
    """Depth map of the plane z = ``z`` seen by the identity camera, right half empty (nothing observed)."""
    depth = np.full((height, width), z)
    depth[:, width // 2 :] = 0.0
    return depth


@pytest.fixture(scope="module")
def envelope() -> ObservationEnvelope:
    return ObservationEnvelope.from_depth(wall_depth()[None], np.eye(4)[None], K90[None], S, R)


def test_backprojection_lands_on_the_wall():
    points = backproject_depth(wall_depth(), np.eye(4), K90)
    assert points.shape == (64 * 48 // 2, 3)
    assert np.allclose(points[:, 2], 2.0) and points[:, 0].max() < 0 and points[:, 0].min() > -2.0


def test_observed_surface_inside_far_space_outside(envelope):
    observed = backproject_depth(wall_depth(), np.eye(4), K90)
    assert envelope.contains(observed).all()
    # in front, behind, in the unobserved half, beyond the edge, far away
    far = np.array([[-1.0, 0, 1.0], [-1.0, 0, 3.0], [1.0, 0, 2.0], [-1.0, 3.0, 2.0], [50.0, 50.0, 50.0]])
    assert not envelope.contains(far).any()


@pytest.mark.parametrize("axis", [0, 2])
def test_dilation_radius_is_respected(envelope, axis):
    """Within R - √3·s of an observed point: inside; beyond R + √3·s of all of them: outside (voxel
    quantisation). Walk from an observed point on the edge of the observed half towards the unobserved half
    (+x), and from the wall towards the camera (-z): every observed point lies behind the start."""
    slack = np.sqrt(3) * S
    observed = backproject_depth(wall_depth(), np.eye(4), K90)
    edge = observed[observed[:, 0] == observed[:, 0].max()]
    base = edge[np.argmin(np.abs(edge[:, 1]))]
    direction = np.array([1.0, 0.0, 0.0]) if axis == 0 else np.array([0.0, 0.0, -1.0])
    inside = base + direction * np.linspace(0, R - slack, 20)[:, None]
    outside = base + direction * np.linspace(R + slack, R + 0.5, 20)[:, None]
    assert envelope.contains(inside).all()
    assert not envelope.contains(outside).any()


def test_mesh_visibility_variant_matches_depth():
    """A wall bigger than the view, ray cast from the camera, gives the same envelope as its depth map; a
    wall hidden behind it is not observed."""
    wall = np.array([[-3.0, -3.0, 2.0], [3.0, -3.0, 2.0], [3.0, 3.0, 2.0], [-3.0, 3.0, 2.0]])
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    camera = (np.eye(4)[None], K90[None])
    from_mesh = ObservationEnvelope.from_mesh_visibility(wall, faces, *camera, 64, 48, S, R)
    full = np.full((48, 64), 2.0)
    from_depth = ObservationEnvelope.from_depth([full], *camera, S, R)
    assert np.array_equal(from_mesh.inside, from_depth.inside)
    assert np.array_equal(from_mesh.origin_index, from_depth.origin_index)
    two_walls = (np.concatenate([wall, wall + [0, 0, 1.0]]), np.concatenate([faces, faces + 4]))
    occluded = ObservationEnvelope.from_mesh_visibility(*two_walls, *camera, 64, 48, S, R)
    assert occluded.contains([[0.0, 0.0, 2.0]]).all() and not occluded.contains([[0.0, 0.0, 3.0]]).any()


def test_several_views_union():
    """Two cameras looking at two different walls: both walls are inside."""
    w2c = np.stack([np.eye(4), look_at([0, 0, 0], [0, 0, -1], up=(0, 1, 0))])
    depths = [wall_depth(), np.full((48, 64), 1.5)]
    env = ObservationEnvelope.from_depth(depths, w2c, np.stack([K90, K90]), S, R)
    assert env.contains([[-1.0, 0.0, 2.0], [0.5, 0.0, -1.5]]).all()
    assert not env.contains([[0.0, 0.0, 0.0]]).any()


def test_crop_points_and_mesh(envelope):
    points = np.array([[-1.0, 0.0, 2.05], [-1.0, 0.0, 1.0]])
    assert np.array_equal(envelope.crop_points(points), points[:1])
    near = np.array([[-1.0, 0.0, 2.0], [-0.9, 0.0, 2.0], [-1.0, 0.1, 2.0]])
    far = near + [0, 0, -1.0]
    vertices, faces = envelope.crop_mesh(np.concatenate([far, near]), np.array([[0, 1, 2], [3, 4, 5]]))
    assert np.array_equal(vertices, near) and np.array_equal(faces, [[0, 1, 2]])


def test_crop_mesh_splits_faces_that_straddle_the_boundary(envelope):
    """A 4.5 m strip across the edge of the observed half (x <= -1/32): kept or dropped whole by centroid,
    or cut near the boundary once split."""
    strip = np.array([[-2.0, 0.0, 2.0], [2.5, 0.0, 2.0], [2.5, 0.05, 2.0], [-2.0, 0.05, 2.0]])
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    _, whole = envelope.crop_mesh(strip, faces)
    vertices, split = envelope.crop_mesh(strip, faces, max_edge=0.05)
    assert len(whole) == 1  # one centroid is at x = 1.0 (outside), the other at x = -0.5 (inside)
    assert vertices[:, 0].max() < R + 0.1 and vertices[:, 0].min() == pytest.approx(-2.0)
    assert len(split) > 100


def test_no_observation_is_an_error():
    with pytest.raises(ValueError, match="no observed points"):
        ObservationEnvelope.from_depth([np.zeros((8, 8))], np.eye(4)[None], K90[None])
