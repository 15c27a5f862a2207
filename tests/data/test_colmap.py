"""COLMAP models: text and binary readers agree, round trips are exact, poses project to observations,
every camera model's parameter count, lens distortion inverts, malformed input names file and field."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from genrecon.data.colmap import (
    CAMERA_MODELS,
    DISTORTION_MODELS,
    ColmapCamera,
    ColmapImage,
    ColmapModel,
    ColmapPoints,
    distort_normalized,
    qvec_to_rotmat,
    read_binary_model,
    read_model,
    read_text_model,
    rotmat_to_qvec,
    undistort_normalized,
    write_binary_model,
    write_text_model,
)
from genrecon.data.errors import DataFormatError
from genrecon.geometry.cameras import look_at, project_points


def colmap_image(
    image_id: int, w2c: np.ndarray, camera_id: int, name: str, xys=None, ids=None
) -> ColmapImage:
    xys = np.zeros((0, 2)) if xys is None else np.asarray(xys, dtype=np.float64).reshape(-1, 2)
    ids = np.zeros(0, np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    return ColmapImage(image_id, rotmat_to_qvec(w2c[:3, :3]), w2c[:3, 3].copy(), camera_id, name, xys, ids)


def colmap_points(xyz: np.ndarray, tracks: list[list[tuple[int, int]]], seed: int = 0) -> ColmapPoints:
    rng = np.random.default_rng(seed)
    n = len(xyz)
    lengths = [len(t) for t in tracks]
    pairs = np.array([p for t in tracks for p in t], dtype=np.int64).reshape(-1, 2)
    return ColmapPoints(
        ids=np.arange(1, n + 1, dtype=np.int64) * 7,  # gaps, as COLMAP ids have
        xyz=np.asarray(xyz, dtype=np.float64),
        rgb=rng.integers(0, 256, (n, 3)).astype(np.uint8),
        error=rng.uniform(0, 3, n),
        track_offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        track_image_ids=pairs[:, 0].copy(),
        track_point2d_idx=pairs[:, 1].copy(),
    )


def pixel_of(point: np.ndarray, w2c: np.ndarray, camera: ColmapCamera) -> np.ndarray:
    """COLMAP pixel of a world point under a pinhole camera, by the pinhole formula."""
    fx, fy, cx, cy = camera.focal_and_principal_point()
    p = w2c[:3, :3] @ point + w2c[:3, 3]
    return np.array([fx * p[0] / p[2] + cx, fy * p[1] / p[2] + cy])


def make_model(seed: int = 0) -> ColmapModel:
    """Two pinhole-ish cameras, three images (a name with a space, one in a subfolder, one with no
    keypoints), points with tracks of different lengths (one empty) and their observations."""
    rng = np.random.default_rng(seed)
    cameras = {
        3: ColmapCamera(3, "PINHOLE", 64, 48, np.array([50.0, 52.0, 31.5, 24.25])),
        9: ColmapCamera(9, "OPENCV", 80, 60, np.array([60.0, 61.0, 40.5, 29.5, -0.1, 0.01, 1e-3, -2e-3])),
    }
    eyes = [[0.0, -3.0, 1.5], [2.0, -3.0, 1.4], [-1.0, -2.5, 1.6]]
    w2cs = [look_at(e, [0.3, 0.2, 1.0]) for e in eyes]
    xyz = rng.uniform([-0.5, -0.5, 0.5], [1.0, 1.0, 1.5], (6, 3))
    obs_cams = [(0, 3), (1, 3)]  # images 0 and 1 (pinhole) observe every point but the last
    xys = {i: [] for i in range(3)}
    tracks = []
    for p in range(len(xyz)):
        track = []
        if p < len(xyz) - 1:
            for img, cam in obs_cams:
                track.append((img + 1, len(xys[img])))
                xys[img].append((pixel_of(xyz[p], w2cs[img], cameras[cam]), p))
        tracks.append(track)
    points = colmap_points(xyz, tracks, seed)
    names = ["IMG 0001.jpg", "sub/dir/IMG_0002.jpg", "IMG_0003.jpg"]
    images = {}
    for i in range(3):
        uv = np.array([x for x, _ in xys[i]]).reshape(-1, 2)
        ids = np.array([points.ids[p] for _, p in xys[i]], dtype=np.int64)
        if i == 0:  # a keypoint without a 3-D point
            uv, ids = np.concatenate([uv, [[1.5, 2.5]]]), np.concatenate([ids, [-1]])
        images[i + 1] = colmap_image(i + 1, w2cs[i], 3 if i < 2 else 9, names[i], uv, ids)
    return ColmapModel(cameras, images, points)


def assert_models_equal(a: ColmapModel, b: ColmapModel) -> None:
    assert list(a.cameras) == list(b.cameras) and list(a.images) == list(b.images)
    for ca, cb in zip(a.cameras.values(), b.cameras.values()):
        assert (ca.id, ca.model, ca.width, ca.height) == (cb.id, cb.model, cb.width, cb.height)
        np.testing.assert_array_equal(ca.params, cb.params)
    for ia, ib in zip(a.images.values(), b.images.values()):
        assert (ia.id, ia.camera_id, ia.name) == (ib.id, ib.camera_id, ib.name)
        for field in ("qvec", "tvec", "xys", "point3d_ids"):
            np.testing.assert_array_equal(getattr(ia, field), getattr(ib, field))
            assert getattr(ia, field).dtype == getattr(ib, field).dtype
    for field in ("ids", "xyz", "rgb", "error", "track_offsets", "track_image_ids", "track_point2d_idx"):
        np.testing.assert_array_equal(getattr(a.points, field), getattr(b.points, field))
        assert getattr(a.points, field).dtype == getattr(b.points, field).dtype


def test_text_and_binary_read_identically_and_round_trip_exactly(tmp_path: Path):
    model = make_model()
    write_text_model(model, tmp_path / "text")
    from_text = read_text_model(tmp_path / "text")
    assert_models_equal(model, from_text)
    write_binary_model(from_text, tmp_path / "bin")
    from_bin = read_binary_model(tmp_path / "bin")
    assert_models_equal(from_text, from_bin)
    # binary -> text writes the same bytes as the first text write.
    write_text_model(from_bin, tmp_path / "text2")
    for name in ("cameras.txt", "images.txt", "points3D.txt"):
        assert (tmp_path / "text" / name).read_bytes() == (tmp_path / "text2" / name).read_bytes()
    write_binary_model(read_text_model(tmp_path / "text2"), tmp_path / "bin2")
    for name in ("cameras.bin", "images.bin", "points3D.bin"):
        assert (tmp_path / "bin" / name).read_bytes() == (tmp_path / "bin2" / name).read_bytes()
    # Names with spaces and subfolders, empty POINTS2D, the invalid point id and empty tracks survive.
    names = [im.name for im in from_bin.images.values()]
    assert names == ["IMG 0001.jpg", "sub/dir/IMG_0002.jpg", "IMG_0003.jpg"]
    assert len(from_bin.images[3].xys) == 0 and from_bin.images[1].point3d_ids[-1] == -1
    assert from_bin.points.track_length.tolist() == [2, 2, 2, 2, 2, 0]


def test_read_model_prefers_binary(tmp_path: Path):
    model = make_model()
    write_text_model(model, tmp_path)
    other = make_model(seed=1)
    write_binary_model(other, tmp_path)
    assert_models_equal(read_model(tmp_path), other)
    for name in ("cameras.bin", "images.bin", "points3D.bin"):
        (tmp_path / name).unlink()
    assert_models_equal(read_model(tmp_path), model)


def test_known_point_projects_to_its_observation(tmp_path: Path):
    model = make_model()
    write_binary_model(model, tmp_path)
    read = read_model(tmp_path)
    pts = read.points
    for image in read.images.values():
        cam = read.cameras[image.camera_id]
        if cam.model != "PINHOLE":
            continue
        for xy, pid in zip(image.xys, image.point3d_ids):
            if pid < 0:
                continue
            xyz = pts.xyz[np.nonzero(pts.ids == pid)[0][0]]
            uv, depth = project_points(xyz[None], image.w2c, cam.normalized_K())
            assert depth[0] > 0
            # Normalised u times W is COLMAP's pixel x (first pixel centre at 0.5 in both).
            np.testing.assert_allclose(uv[0] * [cam.width, cam.height], xy, atol=1e-9)


def test_quaternion_conventions():
    rng = np.random.default_rng(0)
    for _ in range(20):
        q = rng.normal(size=4)
        q = q / np.linalg.norm(q) * np.sign(q[0])
        R = qvec_to_rotmat(q)
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
        np.testing.assert_allclose(rotmat_to_qvec(R), q, atol=1e-12)
    # Hamilton: 90 degrees about z maps x to y.
    q = np.array([np.cos(np.pi / 4), 0, 0, np.sin(np.pi / 4)])
    np.testing.assert_allclose(qvec_to_rotmat(q) @ [1, 0, 0], [0, 1, 0], atol=1e-12)
    w2c = look_at([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    im = colmap_image(1, w2c, 1, "a.jpg")
    np.testing.assert_allclose(im.w2c, w2c, atol=1e-12)


@pytest.mark.parametrize("model_name", sorted(CAMERA_MODELS))
def test_every_camera_model_round_trips(tmp_path: Path, model_name: str):
    n = CAMERA_MODELS[model_name][1]
    cam = ColmapCamera(1, model_name, 100, 50, np.linspace(0.5, 2.0, n))
    model = ColmapModel({1: cam}, {}, ColmapPoints.empty())
    write_text_model(model, tmp_path / "t")
    write_binary_model(model, tmp_path / "b")
    for read in (read_text_model(tmp_path / "t"), read_binary_model(tmp_path / "b")):
        assert read.cameras[1].model == model_name
        assert read.cameras[1].model_id == CAMERA_MODELS[model_name][0]
        np.testing.assert_array_equal(read.cameras[1].params, cam.params)
    # One parameter too few or too many is an error naming the line and field.
    line = (tmp_path / "t" / "cameras.txt").read_text().splitlines()[-1]
    for bad in (line.rsplit(" ", 1)[0], line + " 1.0"):
        (tmp_path / "t" / "cameras.txt").write_text(bad + "\n")
        with pytest.raises(DataFormatError) as err:
            read_text_model(tmp_path / "t")
        assert err.value.path.endswith("cameras.txt") and err.value.field == "line 1 PARAMS"


@pytest.mark.parametrize("model_name", sorted(DISTORTION_MODELS))
def test_undistortion_inverts_distortion(model_name: str):
    extra = {
        "SIMPLE_RADIAL": [-0.08],
        "RADIAL": [-0.1, 0.02],
        "OPENCV": [-0.1, 0.02, 1e-3, -2e-3],
        "FULL_OPENCV": [-0.1, 0.02, 1e-3, -2e-3, 0.001, 0.01, 0.002, 0.0005],
        "OPENCV_FISHEYE": [0.05, -0.01, 0.002, -0.0005],
    }[model_name]
    focal = [300.0] if model_name in ("SIMPLE_RADIAL", "RADIAL") else [300.0, 310.0]
    cam = ColmapCamera(1, model_name, 640, 480, np.array(focal + [320.0, 240.0] + extra))
    xy = np.random.default_rng(0).uniform(-0.8, 0.8, (200, 2))
    np.testing.assert_allclose(undistort_normalized(cam, distort_normalized(cam, xy)), xy, atol=1e-10)


def test_opencv_distortion_matches_the_formula():
    k1, k2, p1, p2 = -0.1, 0.02, 1e-3, -2e-3
    cam = ColmapCamera(1, "OPENCV", 10, 10, np.array([1.0, 1.0, 5.0, 5.0, k1, k2, p1, p2]))
    x, y = 0.3, -0.2
    r2 = x * x + y * y
    radial = 1 + k1 * r2 + k2 * r2 * r2
    expected = [x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x),
                y * radial + 2 * p2 * x * y + p1 * (r2 + 2 * y * y)]
    np.testing.assert_allclose(distort_normalized(cam, np.array([x, y])), expected, atol=1e-15)


def _expect_error(read, path: Path, field: str) -> None:
    with pytest.raises(DataFormatError) as err:
        read(path.parent)
    assert err.value.path == str(path), err.value
    assert err.value.field == field, err.value


def test_malformed_text_names_file_line_and_field(tmp_path: Path):
    write_text_model(make_model(), tmp_path)
    cams, imgs, pts = (tmp_path / n for n in ("cameras.txt", "images.txt", "points3D.txt"))
    good = {p: p.read_text() for p in (cams, imgs, pts)}

    def corrupt(path: Path, lineno: int, new_line: str) -> None:
        for p, text in good.items():
            p.write_text(text)
        lines = good[path].splitlines()
        lines[lineno - 1] = new_line
        path.write_text("\n".join(lines) + "\n")

    corrupt(cams, 3, "3 NOT_A_MODEL 64 48 1 2 3")
    _expect_error(read_text_model, cams, "line 3 MODEL")
    corrupt(cams, 3, "3 PINHOLE 64 forty-eight 50 52 31.5 24.25")
    _expect_error(read_text_model, cams, "line 3 HEIGHT")
    corrupt(imgs, 4, "1 1 0 0 zero 0 0 0 3 IMG 0001.jpg")
    _expect_error(read_text_model, imgs, "line 4 QVEC")
    corrupt(imgs, 4, "1 1 0 0 0 0 0 0 3")
    _expect_error(read_text_model, imgs, "line 4 NAME")
    corrupt(imgs, 5, "1.0 2.0")
    _expect_error(read_text_model, imgs, "line 5 POINTS2D")
    corrupt(imgs, 4, "1 1 0 0 0 0 0 0 42 IMG 0001.jpg")
    _expect_error(read_text_model, imgs, "image 1 CAMERA_ID")
    corrupt(pts, 3, "7 0 0 0 255 0 0 0.5 1 0 2")
    _expect_error(read_text_model, pts, "line 3 TRACK")
    corrupt(pts, 3, "7 0 0 0 256 0 0 0.5")
    _expect_error(read_text_model, pts, "line 3 RGB")
    (tmp_path / "points3D.txt").unlink()
    with pytest.raises(DataFormatError) as err:
        read_model(tmp_path)
    assert err.value.field == "points3D.txt"


def test_empty_points2d_lines_and_missing_last_line(tmp_path: Path):
    write_text_model(make_model(), tmp_path)
    imgs = tmp_path / "images.txt"
    text = imgs.read_text()
    assert "\n\n" in text  # image 3's empty POINTS2D line
    imgs.write_text(text.rstrip("\n"))  # a writer that drops the last empty line
    model = read_text_model(tmp_path)
    assert list(model.images) == [1, 2, 3] and len(model.images[3].xys) == 0


def test_malformed_binary_names_file_and_field(tmp_path: Path):
    write_binary_model(make_model(), tmp_path)
    cams, imgs, pts = (tmp_path / n for n in ("cameras.bin", "images.bin", "points3D.bin"))
    data = {p: p.read_bytes() for p in (cams, imgs, pts)}
    pts.write_bytes(data[pts][:-5])
    _expect_error(read_binary_model, pts, "points[5]")
    pts.write_bytes(data[pts] + b"\0")
    _expect_error(read_binary_model, pts, "end")
    pts.write_bytes(data[pts])
    cams.write_bytes(data[cams][:8] + struct.pack("<Ii", 3, 99) + data[cams][16:])
    _expect_error(read_binary_model, cams, "cameras[0].model_id")
    cams.write_bytes(data[cams])
    imgs.write_bytes(data[imgs][: 8 + 64 + 3])  # inside the first name
    _expect_error(read_binary_model, imgs, "images[0].name")
