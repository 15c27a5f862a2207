"""Posed images: COLMAP views project like the model, undistortion puts points where the new pinhole says,
square crops agree with crop_intrinsics, ScanNet++ DSLR poses come back to the mesh world, iPhone layout,
capture order, and bad input names the file and field."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from genrecon.data.colmap import ColmapCamera, ColmapModel, read_model, write_binary_model, write_text_model
from genrecon.data.errors import DataFormatError
from genrecon.data.posed_images import (
    NERFSTUDIO_TO_MESH_WORLD,
    PosedImages,
    Undistortion,
    from_colmap,
    from_scannetpp_dslr,
    from_scannetpp_iphone,
    square_crop_boxes,
)
from genrecon.geometry.cameras import (
    camera_centers,
    crop_intrinsics,
    look_at,
    project_points,
    unproject_points,
)
from tests.data.test_colmap import colmap_image, colmap_points, make_model


def save(path: Path, image: np.ndarray, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format=fmt)


def dots_image(width: int, height: int, pixels: np.ndarray) -> np.ndarray:
    """Black RGB image with single white pixels at integer ``(col, row)`` positions."""
    img = np.zeros((height, width, 3), np.uint8)
    img[pixels[:, 1], pixels[:, 0]] = 255
    return img


def bright_pixel(image: np.ndarray, near: np.ndarray, radius: int = 3) -> np.ndarray:
    """``(col, row)`` of the brightest pixel within ``radius`` of ``near``."""
    c, r = np.round(near).astype(int)
    r0, c0 = max(r - radius, 0), max(c - radius, 0)
    win = image[r0: r + radius + 1, c0: c + radius + 1, 0]
    rr, cc = np.unravel_index(np.argmax(win), win.shape)
    return np.array([c0 + cc, r0 + rr])


def test_colmap_views_project_to_observations(tmp_path: Path):
    model = make_model()
    write_binary_model(model, tmp_path / "sparse")
    for im in model.images.values():
        cam = model.cameras[im.camera_id]
        save(tmp_path / "images" / im.name, np.zeros((cam.height, cam.width, 3), np.uint8))
    posed = from_colmap(tmp_path / "sparse", tmp_path / "images", square_crop=None)
    assert len(posed) == 3 and posed.points is not None and len(posed.points) == 6
    for i, name in enumerate(posed.names):
        im = next(m for m in model.images.values() if m.name == name)
        if model.cameras[im.camera_id].model != "PINHOLE":
            continue
        W, H = posed.sizes[i]
        valid = im.point3d_ids >= 0
        rows = [np.nonzero(posed.points.ids == p)[0][0] for p in im.point3d_ids[valid]]
        xyz = posed.points.xyz[rows]
        uv, _ = project_points(xyz, posed.w2c[i], posed.K[i])
        np.testing.assert_allclose(uv * [W, H], im.xys[valid], atol=1e-9)
        assert posed.load_image(i).shape == (H, W, 4)


def test_capture_order_and_name_resolution(tmp_path: Path):
    cam = ColmapCamera(1, "PINHOLE", 32, 24, np.array([30.0, 30.0, 16.0, 12.0]))
    names = ["video/frame_2.jpg", "video/frame_10.jpg", "video/frame_1.jpg"]
    images = {i + 1: colmap_image(i + 1, look_at([i, 0, 1], [i, 1, 1]), 1, n) for i, n in enumerate(names)}
    write_text_model(ColmapModel({1: cam}, images, colmap_points(np.zeros((0, 3)), [])), tmp_path / "colmap")
    for n in names:  # extracted flat: the loader falls back to basename(NAME)
        save(tmp_path / "rgb" / Path(n).name, np.zeros((24, 32, 3), np.uint8), "JPEG")
    by_name = from_colmap(tmp_path / "colmap", tmp_path / "rgb", square_crop=None)
    assert by_name.names == ["video/frame_1.jpg", "video/frame_2.jpg", "video/frame_10.jpg"]
    np.testing.assert_allclose(camera_centers(by_name.w2c)[:, 0], [2, 0, 1], atol=1e-12)
    by_file = from_colmap(tmp_path / "colmap", tmp_path / "rgb", square_crop=None, order="file")
    assert by_file.names == names
    (tmp_path / "rgb" / "frame_10.jpg").unlink()
    with pytest.raises(DataFormatError) as err:
        from_colmap(tmp_path / "colmap", tmp_path / "rgb")
    assert err.value.path.endswith("images.txt") and err.value.field == "image 2 NAME"


def _forward_opencv(xy: np.ndarray, k1: float, k2: float, p1: float, p2: float) -> np.ndarray:
    """OpenCV radial-tangential distortion, written out independently of the library."""
    x, y = xy[:, 0], xy[:, 1]
    r2 = x * x + y * y
    radial = 1 + k1 * r2 + k2 * r2 * r2
    return np.stack([x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x),
                     y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y], -1)


def test_undistortion_puts_points_where_the_new_pinhole_projects_them(tmp_path: Path):
    W, H = 160, 120
    fx, fy, cx, cy, k1, k2, p1, p2 = 120.0, 118.0, 80.3, 59.6, -0.25, 0.06, 0.002, -0.0015
    cam = ColmapCamera(1, "OPENCV", W, H, np.array([fx, fy, cx, cy, k1, k2, p1, p2]))
    K_new = Undistortion.for_camera(cam, "cameras.txt").K
    # Target pixels of the undistorted image -> undistorted rays -> distorted source pixels.
    cols, rows = np.meshgrid(np.linspace(12, W - 13, 6), np.linspace(10, H - 11, 5))
    target = np.stack([cols.ravel() + 0.3, rows.ravel() - 0.2], -1)  # array coordinates (centre at integer)
    xy = ((target + 0.5) / [W, H] - K_new[:2, 2]) / [K_new[0, 0], K_new[1, 1]]
    src = _forward_opencv(xy, k1, k2, p1, p2) * [fx, fy] + [cx, cy] - 0.5  # array coordinates
    yy, xx = np.mgrid[0:H, 0:W]
    blobs = sum(np.exp(-((xx - sx) ** 2 + (yy - sy) ** 2) / (2 * 1.2**2)) for sx, sy in src)
    gray = (255 * np.clip(blobs, 0, 1)).astype(np.uint8)
    save(tmp_path / "img" / "a.png", np.repeat(gray[..., None], 3, -1))
    write_text_model(ColmapModel({1: cam}, {1: colmap_image(1, np.eye(4), 1, "a.png")},
                                 colmap_points(np.zeros((0, 3)), [])), tmp_path / "sparse")

    posed = from_colmap(tmp_path / "sparse", tmp_path / "img", square_crop=None)
    np.testing.assert_allclose(posed.K[0], K_new)
    assert abs(K_new[0, 2] - cx / W) > 1e-3  # the principal point moved (alpha = 0)
    out = posed.load_image(0)[..., 0].astype(np.float64)
    assert out.shape == (H, W)
    for t in target:
        c, r = np.round(t).astype(int)
        win = out[r - 4: r + 5, c - 4: c + 5]
        gy, gx = np.mgrid[r - 4: r + 5, c - 4: c + 5]
        centroid = np.array([(win * gx).sum(), (win * gy).sum()]) / win.sum()
        assert np.linalg.norm(centroid - t) < 0.25, (centroid, t)  # measured: <= 0.06 px

    # alpha = 0: every output pixel samples inside the source, and each border of the output touches it.
    sp = posed.sources[0].undistortion.source_pixels  # [2, H, W] (row, col)
    assert sp[1].min() >= -1e-3 and sp[1].max() <= W - 1 + 1e-3 and sp[0].min() >= -1e-3
    assert sp[0].max() <= H - 1 + 1e-3
    np.testing.assert_allclose([sp[1][:, 0].min(), sp[1][:, -1].max(), sp[0][0].min(), sp[0][-1].max()],
                               [0, W - 1, 0, H - 1], atol=1e-3)


def _pinhole_scene(tmp_path: Path, W: int, H: int, cx: float, pixels: np.ndarray) -> tuple[Path, np.ndarray]:
    """A one-image COLMAP scene whose frame has white dots at ``pixels``; returns the dots' world points."""
    cam = ColmapCamera(1, "PINHOLE", W, H, np.array([150.0, 150.0, cx, H / 2]))
    w2c = look_at([0.5, -2.0, 1.2], [0.6, 1.0, 1.0])
    uv = (pixels + 0.5) / [W, H]
    world = unproject_points(uv, np.linspace(1.5, 3.0, len(pixels)), w2c, cam.normalized_K())
    save(tmp_path / "img" / "f.png", dots_image(W, H, pixels))
    write_text_model(ColmapModel({1: cam}, {1: colmap_image(1, w2c, 1, "f.png")},
                                 colmap_points(world, [[] for _ in world])), tmp_path / "sparse")
    return tmp_path, world


@pytest.mark.parametrize("mode", ["two", "center"])
def test_square_crops_agree_with_crop_intrinsics(tmp_path: Path, mode: str):
    W, H = 200, 120
    pixels = np.array([[5, 7], [60, 100], [110, 50], [150, 20], [195, 110]])
    root, world = _pinhole_scene(tmp_path, W, H, cx=90.0, pixels=pixels)
    full = from_colmap(root / "sparse", root / "img", square_crop=None)
    posed = full.with_square_crops(mode)
    boxes = square_crop_boxes(W, H, full.K[0], mode)
    expected_boxes = [(0, 0, 120, 120), (80, 0, 200, 120)] if mode == "two" else [(30, 0, 150, 120)]
    assert boxes == expected_boxes
    assert len(posed) == len(boxes) and posed.frame_index.tolist() == [0] * len(boxes)
    for i, box in enumerate(boxes):
        np.testing.assert_allclose(posed.K[i], crop_intrinsics(full.K[0], np.array(box, float), (W, H)))
        image = posed.load_image(i)
        S = box[2] - box[0]
        assert image.shape == (S, S, 4) and posed.sizes[i].tolist() == [S, S]
        uv, _ = project_points(world, posed.w2c[i], posed.K[i])
        px = uv * S - 0.5
        inside = np.all((px > -0.5) & (px < S - 0.5), axis=1)
        assert inside.sum() >= 2
        for p in px[inside]:
            np.testing.assert_array_equal(bright_pixel(image, p), np.round(p).astype(int))
    resized = full.with_square_crops(mode, resize=48)
    assert resized.load_image(0).shape == (48, 48, 4)
    np.testing.assert_allclose(resized.K, posed.K)  # normalised K does not change with resize


def test_select_then_crop_keeps_capture_order(tmp_path: Path):
    frames = PosedImages.from_arrays([np.zeros((30, 40, 3), np.uint8)] * 3, np.stack([np.eye(4)] * 3),
                                     np.stack([np.eye(3)] * 3), names=["a", "b", "c"])
    views = frames.subset([0, 2]).with_square_crops("two", resize=16)
    assert views.names == ["a", "a", "c", "c"] and views.frame_index.tolist() == [0, 0, 2, 2]
    assert [s.crop_box for s in views.sources] == [(0, 0, 30, 30), (10, 0, 40, 30)] * 2
    assert views.load_image(3).shape == (16, 16, 4)
    with pytest.raises(ValueError):
        views.with_square_crops("two")
    with pytest.raises(ValueError):
        square_crop_boxes(40, 30, np.eye(3), "left")


def _dslr_scene(root: Path, cameras: list[tuple[list[float], list[float]]]) -> list[np.ndarray]:
    """A ScanNet++ DSLR layout with cameras (eye, target) given in the mesh world; returns their w2c."""
    w2cs = [look_at(eye, target) for eye, target in cameras]
    frames = []
    for i, w2c in enumerate(w2cs):
        c2w_cv = np.linalg.inv(w2c)
        # The ScanNet++ export: T_ns = P · c2w_colmap · diag(1, -1, -1, 1).
        t_ns = NERFSTUDIO_TO_MESH_WORLD @ c2w_cv @ np.diag([1.0, -1.0, -1.0, 1.0])
        frames.append({"file_path": f"DSC{10 - i:05d}.JPG", "transform_matrix": t_ns.tolist()})
        image = root / "dslr" / "resized_undistorted_images" / frames[-1]["file_path"]
        save(image, np.zeros((30, 40, 3), np.uint8), "JPEG")
    frames[0]["fl_x"] = 33.0  # per-frame intrinsics override the top level
    data = {"camera_model": "PINHOLE", "w": 40, "h": 30, "fl_x": 30.0, "fl_y": 31.0, "cx": 20.0, "cy": 15.0,
            "k1": 0.0, "k2": 0.0, "k3": 0.0, "k4": 0.0, "frames": frames,
            "test_frames": [{"file_path": "DSC00099.JPG", "transform_matrix": np.eye(4).tolist()}]}
    path = root / "dslr" / "nerfstudio" / "transforms_undistorted.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    (root / "dslr" / "colmap").mkdir(parents=True, exist_ok=True)
    (root / "dslr" / "colmap" / "points3D.txt").write_text("# points\n1 1.0 2.0 3.0 10 20 30 0.5 1 0 2 3\n")
    return w2cs


def test_scannetpp_dslr_poses_in_the_mesh_world(tmp_path: Path):
    eyes = [[1.0, 2.0, 1.5], [3.0, -1.0, 1.2]]
    w2cs = _dslr_scene(tmp_path, [(eyes[0], [3.0, 2.5, 1.0]), (eyes[1], [0.0, 0.0, 0.8])])
    posed = from_scannetpp_dslr(tmp_path, square_crop=None)
    # Frames come in name order: DSC00009 (second camera) before DSC00010 (first).
    assert posed.names == ["DSC00009.JPG", "DSC00010.JPG"]
    np.testing.assert_allclose(camera_centers(posed.w2c), [eyes[1], eyes[0]], atol=1e-12)
    np.testing.assert_allclose(posed.w2c, [w2cs[1], w2cs[0]], atol=1e-12)
    np.testing.assert_allclose(posed.K[1], [[33 / 40, 0, 0.5], [0, 31 / 30, 0.5], [0, 0, 1]])
    np.testing.assert_allclose(posed.K[0, 0, 0], 30 / 40)
    # The nerfstudio file itself holds (y, x, -z) of the mesh-world camera centre.
    data = json.loads((tmp_path / "dslr/nerfstudio/transforms_undistorted.json").read_text())
    np.testing.assert_allclose(np.array(data["frames"][0]["transform_matrix"])[:3, 3], [2.0, 1.0, -1.5])
    np.testing.assert_allclose(posed.points.xyz, [[1, 2, 3]])
    assert posed.points.track_length.tolist() == [2]
    # Default: the centred square around the principal point, 30 x 30 of 40 x 30.
    cropped = from_scannetpp_dslr(tmp_path, resize=16)
    assert [s.crop_box for s in cropped.sources] == [(5, 0, 35, 30)] * 2
    assert cropped.load_image(0).shape == (16, 16, 4)
    with pytest.raises(DataFormatError) as err:  # test frames are off by default; their image is absent
        from_scannetpp_dslr(tmp_path, include_test_frames=True)
    assert err.value.field == "test_frames[0].file_path"


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda d: d["frames"][1].update(transform_matrix=[[1, 0], [0, 1]]), "frames[1].transform_matrix"),
        (lambda d: d["frames"][1].update(transform_matrix=np.diag([2.0, 1, 1, 1]).tolist()),
         "frames[1].transform_matrix"),
        (lambda d: d.pop("fl_y"), "fl_y"),
        (lambda d: d["frames"][0].update(fl_x="wide"), "frames[0].fl_x"),
        (lambda d: d["frames"][0].update(file_path="missing.JPG"), "frames[0].file_path"),
        (lambda d: d.update(k1=0.1), "k1"),
        (lambda d: d.pop("frames"), "frames"),
    ],
)
def test_scannetpp_dslr_errors_name_file_and_field(tmp_path: Path, edit, field: str):
    _dslr_scene(tmp_path, [([1.0, 2.0, 1.5], [3.0, 2.5, 1.0]), ([3.0, -1.0, 1.2], [0.0, 0.0, 0.8])])
    path = tmp_path / "dslr/nerfstudio/transforms_undistorted.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(DataFormatError) as err:
        from_scannetpp_dslr(tmp_path)
    assert err.value.path == str(path) and err.value.field == field


def test_scannetpp_iphone_layout(tmp_path: Path):
    with pytest.raises(DataFormatError) as err:
        from_scannetpp_iphone(tmp_path)
    assert err.value.field == "iphone/rgb"
    cam = ColmapCamera(1, "OPENCV", 48, 36, np.array([40.0, 40.0, 24.0, 18.0, -0.05, 0.0, 0.0, 0.0]))
    images = {i: colmap_image(i, look_at([i, 0, 1.4], [i, 2, 1.2]), 1, f"video/frame_{i:06d}.jpg")
              for i in (1, 2)}
    model = ColmapModel({1: cam}, images, colmap_points(np.ones((1, 3)), [[]]))
    write_text_model(model, tmp_path / "iphone/colmap")
    for i in (1, 2):
        save(tmp_path / "iphone" / "rgb" / f"frame_{i:06d}.jpg", np.full((36, 48, 3), 128, np.uint8), "JPEG")
    posed = from_scannetpp_iphone(tmp_path, resize=24)
    assert len(posed) == 4 and posed.frame_index.tolist() == [0, 0, 1, 1]
    assert posed.load_image(1).shape == (24, 24, 4)
    assert posed.sources[0].undistortion is not None  # OPENCV is undistorted on load
    assert read_model(tmp_path / "iphone/colmap").points.track_length.tolist() == [0]


def test_image_of_the_wrong_size_names_file_and_field(tmp_path: Path):
    root, _ = _pinhole_scene(tmp_path, 40, 30, 20.0, np.array([[3, 4]]))
    save(root / "img" / "f.png", np.zeros((20, 40, 3), np.uint8))
    posed = from_colmap(root / "sparse", root / "img", square_crop=None)
    with pytest.raises(DataFormatError) as err:
        posed.load_image(0)
    assert err.value.path.endswith("f.png") and err.value.field == "size"
