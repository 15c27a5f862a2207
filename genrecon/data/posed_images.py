"""Posed input images for inference: COLMAP models, ScanNet++ DSLR and iPhone scenes.

A :class:`PosedImages` holds, per view, OpenCV world->camera extrinsics ``w2c [N, 4, 4]`` and normalised
intrinsics ``K [N, 3, 3]`` (docs/architecture.md) of the image the view delivers, plus the recipe that
produces that image from a file (undistort, square-crop, resize) so pixels load only when asked for. Views
are in capture order; ``frame_index`` tells which captured frame each view comes from (a frame cut into two
square crops gives two views).

To reproduce the published selection (formats-and-checkpoints.md §2.5), select on the uncropped frames
(``square_crop=None``), then crop the selected views::

    frames = from_scannetpp_iphone(scene, square_crop=None)
    idx = select_images(frames.w2c, frames.K, tiling.chunks, 999)
    views = frames.subset(idx).with_square_crops("two", resize=512)

Undistortion (SIMPLE_RADIAL, RADIAL, OPENCV, FULL_OPENCV, OPENCV_FISHEYE) follows OpenCV's
``getOptimalNewCameraMatrix(alpha=0)``: the new pinhole maps the largest axis-aligned rectangle of valid
(undistorted) rays onto the whole frame, so every output pixel samples inside the source image and the
principal point moves off-centre. Output frames keep the source size; pixel aspect may change slightly
(``fx != fy``), which the normalised ``K`` carries.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy.ndimage import map_coordinates

from genrecon.data.colmap import (
    DISTORTION_MODELS,
    PINHOLE_MODELS,
    ColmapCamera,
    ColmapPoints,
    distort_normalized,
    read_model,
    read_points3d_text,
    undistort_normalized,
)
from genrecon.data.errors import DataFormatError
from genrecon.geometry.cameras import crop_intrinsics, invert_rigid

SquareCrop = Literal["two", "center"]
CaptureOrder = Literal["name", "file"]
Box = tuple[int, int, int, int]  # (x0, y0, x1, y1) pixels, columns x0..x1-1 and rows y0..y1-1

# ScanNet++ nerfstudio world = (y, x, -z) of the mesh world; P is its own inverse
# [SNPP common/utils/nerfstudio.py].
NERFSTUDIO_TO_MESH_WORLD = np.array(
    [[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)
# OpenGL camera axes (x right, y up, z back) <-> OpenCV (x right, y down, z forward).
_FLIP_YZ = np.diag([1.0, -1.0, -1.0, 1.0])


# ------------------------------------------------------------------------------------ undistortion
def _inscribed_rectangle(camera: ColmapCamera) -> tuple[float, float, float, float]:
    """``(x0, x1, y0, y1)``: the largest axis-aligned rectangle of undistorted normalised coordinates whose
    rays all land on pixel centres inside the distorted frame (OpenCV's "inner" rectangle, sampled at every
    border pixel instead of a 9x9 grid)."""
    fx, fy, cx, cy = camera.focal_and_principal_point()
    w, h = camera.width, camera.height
    cols, rows = np.arange(w) + 0.5, np.arange(h) + 0.5
    edges = {
        "left": np.stack([np.full(h, 0.5), rows], -1),
        "right": np.stack([np.full(h, w - 0.5), rows], -1),
        "top": np.stack([cols, np.full(w, 0.5)], -1),
        "bottom": np.stack([cols, np.full(w, h - 0.5)], -1),
    }
    und = {k: undistort_normalized(camera, (v - [cx, cy]) / [fx, fy]) for k, v in edges.items()}
    return (und["left"][:, 0].max(), und["right"][:, 0].min(),
            und["top"][:, 1].max(), und["bottom"][:, 1].min())


@dataclass(frozen=True, eq=False)
class Undistortion:
    """Resampling of a distorted camera's frames onto a same-size pinhole ``K`` (normalised ``[3, 3]``)."""

    camera: ColmapCamera
    K: np.ndarray

    @classmethod
    def for_camera(cls, camera: ColmapCamera, cameras_file: str | PathLike) -> Undistortion:
        x0, x1, y0, y1 = _inscribed_rectangle(camera)
        if not (x0 < x1 and y0 < y1):
            raise DataFormatError(cameras_file, f"camera {camera.id} PARAMS",
                                  "distortion leaves no valid undistorted region")
        w, h = camera.width, camera.height
        # Pixel centres 0 and W-1 of the output land on the rectangle's edges: u = (c + 0.5) / W.
        fx = (w - 1) / w / (x1 - x0)
        fy = (h - 1) / h / (y1 - y0)
        K = np.array([[fx, 0.0, 0.5 / w - fx * x0], [0.0, fy, 0.5 / h - fy * y0], [0.0, 0.0, 1.0]])
        return cls(camera, K)

    @functools.cached_property
    def source_pixels(self) -> np.ndarray:
        """``[2, H, W]`` float32 (row, column) array coordinates in the distorted frame per output pixel."""
        w, h = self.camera.width, self.camera.height
        u = (np.arange(w) + 0.5) / w
        v = (np.arange(h) + 0.5) / h
        xy = np.stack(np.meshgrid((u - self.K[0, 2]) / self.K[0, 0], (v - self.K[1, 2]) / self.K[1, 1]), -1)
        fx, fy, cx, cy = self.camera.focal_and_principal_point()
        d = distort_normalized(self.camera, xy)
        # COLMAP pixel x has the first pixel centre at 0.5; array index = x - 0.5.
        return np.stack([fy * d[..., 1] + cy - 0.5, fx * d[..., 0] + cx - 0.5]).astype(np.float32)

    def apply(self, image: np.ndarray) -> np.ndarray:
        """Undistort ``image [H, W, C]`` uint8 (bilinear) -> ``[H, W, C]`` uint8."""
        coords = self.source_pixels
        out = [map_coordinates(image[..., c].astype(np.float32), coords, order=1, mode="nearest",
                               prefilter=False) for c in range(image.shape[-1])]
        return np.clip(np.rint(np.stack(out, -1)), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------ square crops
def square_crop_boxes(width: int, height: int, K: np.ndarray, mode: SquareCrop) -> list[Box]:
    """Square crops of a ``width × height`` frame with normalised intrinsics ``K [3, 3]``.

    ``"two"``: two squares of side ``min(W, H)`` at both ends of the long axis (the iPhone default).
    ``"center"``: the largest square centred on the principal point (the DSLR path and ``--center_crop``),
    side ``int(2 · min(cx, W - cx, cy, H - cy))`` in pixels, kept inside the frame. A square frame gives one
    box covering it in both modes.
    """
    if width == height:
        return [(0, 0, width, height)]
    if mode == "two":
        s = min(width, height)
        if width > height:
            return [(0, 0, s, s), (width - s, 0, width, s)]
        return [(0, 0, s, s), (0, height - s, s, height)]
    if mode == "center":
        cx, cy = float(K[0, 2]) * width, float(K[1, 2]) * height
        s = int(2 * min(cx, width - cx, cy, height - cy))
        if s < 1:
            raise ValueError(f"principal point ({cx:.1f}, {cy:.1f}) px leaves no centred square "
                             f"in {width}x{height}")
        left = max(0, min(int(round(cx - 0.5 * s)), width - s))
        top = max(0, min(int(round(cy - 0.5 * s)), height - s))
        return [(left, top, left + s, top + s)]
    raise ValueError(f"square_crop must be 'two' or 'center', got {mode!r}")


# ------------------------------------------------------------------------------------ image sources
def _read_rgba(path: Path) -> np.ndarray:
    """``[H, W, 4]`` uint8; no EXIF rotation, as COLMAP reads pixels."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGBA"))
    except (OSError, UnidentifiedImageError) as exc:
        raise DataFormatError(path, path.name, f"unreadable image ({exc})") from exc


@dataclass(frozen=True, eq=False)
class ImageSource:
    """How one view's image is made: a frame (a file ``path`` or an in-memory ``array`` ``[H, W, 3|4]``
    uint8) of ``size = (W, H)``, undistorted if ``undistortion`` is set, then cut to ``crop_box``."""

    size: tuple[int, int]
    path: Path | None = None
    array: np.ndarray | None = None
    undistortion: Undistortion | None = None
    crop_box: Box | None = None

    @property
    def output_size(self) -> tuple[int, int]:
        """``(W, H)`` of the delivered image before any resize."""
        if self.crop_box is None:
            return self.size
        x0, y0, x1, y1 = self.crop_box
        return x1 - x0, y1 - y0

    def _frame(self) -> np.ndarray:
        if self.array is not None:
            frame = np.asarray(self.array, dtype=np.uint8)
            if frame.shape[-1] == 3:
                frame = np.concatenate([frame, np.full(frame.shape[:2] + (1,), 255, np.uint8)], -1)
        else:
            frame = _read_rgba(self.path)
        if (frame.shape[1], frame.shape[0]) != tuple(self.size):
            raise DataFormatError(self.path or "<array>", "size",
                                  f"image is {frame.shape[1]}x{frame.shape[0]}, its camera says "
                                  f"{self.size[0]}x{self.size[1]}")
        return frame

    def load(self, resize: int | None = None) -> np.ndarray:
        """``[H, W, 4]`` uint8 RGBA (alpha 255 for opaque photos); ``resize × resize`` (Lanczos) if given."""
        image = self._frame()
        if self.undistortion is not None:
            image = self.undistortion.apply(image)
        if self.crop_box is not None:
            x0, y0, x1, y1 = self.crop_box
            image = image[y0:y1, x0:x1]
        if resize is not None and image.shape[:2] != (resize, resize):
            image = np.asarray(Image.fromarray(image).resize((resize, resize), Image.Resampling.LANCZOS))
        return np.ascontiguousarray(image)


# ------------------------------------------------------------------------------------ posed images
@dataclass(frozen=True, eq=False)
class PosedImages:
    """Views in capture order.

    Attributes:
        names: ``[N]`` image names (the frame's file name relative to its image folder).
        w2c: ``[N, 4, 4]`` float64 OpenCV world->camera, world z-up metres when the source is aligned.
        K: ``[N, 3, 3]`` float64 normalised intrinsics of the image :meth:`load_image` returns.
        sources: ``[N]`` :class:`ImageSource` recipes.
        points: the world points of the reconstruction (xyz, rgb, error, tracks), or ``None``.
        frame_index: ``[N]`` int64 index of each view's captured frame (views of one frame share it).
        resize: if set, images are delivered at ``resize × resize``.
    """

    names: list[str]
    w2c: np.ndarray
    K: np.ndarray
    sources: list[ImageSource]
    points: ColmapPoints | None = None
    frame_index: np.ndarray = field(default=None)  # type: ignore[assignment]
    resize: int | None = None

    def __post_init__(self) -> None:
        n = len(self.names)
        if self.w2c.shape != (n, 4, 4) or self.K.shape != (n, 3, 3) or len(self.sources) != n:
            raise ValueError(f"{n} names, w2c {self.w2c.shape}, K {self.K.shape}, "
                             f"{len(self.sources)} sources")
        if self.frame_index is None:
            object.__setattr__(self, "frame_index", np.arange(n, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.names)

    @property
    def sizes(self) -> np.ndarray:
        """``[N, 2]`` int64 ``(W, H)`` of each view's image before resize."""
        return np.array([s.output_size for s in self.sources], dtype=np.int64).reshape(-1, 2)

    def load_image(self, i: int) -> np.ndarray:
        """View ``i`` as ``[H, W, 4]`` uint8 RGBA."""
        return self.sources[i].load(self.resize)

    def load_images(self) -> list[np.ndarray]:
        return [self.load_image(i) for i in range(len(self))]

    def subset(self, indices: Sequence[int] | np.ndarray) -> PosedImages:
        """The views at ``indices`` (order kept as given)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        return replace(self, names=[self.names[i] for i in idx], w2c=self.w2c[idx], K=self.K[idx],
                       sources=[self.sources[i] for i in idx], frame_index=self.frame_index[idx])

    def with_square_crops(self, mode: SquareCrop, resize: int | None = None) -> PosedImages:
        """Each view replaced by its square crop(s) (:func:`square_crop_boxes`), ``K`` adjusted with
        :func:`crop_intrinsics`; crops of one frame stay adjacent so capture order is kept."""
        names, w2c, K, sources, frames = [], [], [], [], []
        for i, src in enumerate(self.sources):
            if src.crop_box is not None:
                raise ValueError(f"view {i} ({self.names[i]}) is already cropped")
            for box in square_crop_boxes(*src.size, self.K[i], mode):
                names.append(self.names[i])
                w2c.append(self.w2c[i])
                K.append(crop_intrinsics(self.K[i], np.array(box, dtype=np.float64), tuple(src.size)))
                sources.append(replace(src, crop_box=box))
                frames.append(self.frame_index[i])
        return PosedImages(names, np.array(w2c).reshape(-1, 4, 4), np.array(K).reshape(-1, 3, 3), sources,
                           self.points, np.array(frames, dtype=np.int64), resize)

    @classmethod
    def from_arrays(cls, images: Sequence[np.ndarray], w2c: np.ndarray, K: np.ndarray,
                    names: Sequence[str] | None = None, points: ColmapPoints | None = None) -> PosedImages:
        """Views from in-memory pinhole images ``[H, W, 3|4]`` uint8, ``w2c [N, 4, 4]``, ``K [N, 3, 3]``."""
        sources = [ImageSource((im.shape[1], im.shape[0]), array=im) for im in images]
        names = list(names) if names is not None else [f"{i:06d}" for i in range(len(sources))]
        return cls(names, np.asarray(w2c, np.float64), np.asarray(K, np.float64), sources, points)


def _natural_key(name: str) -> list[Any]:
    """Sort key that orders ``frame_2`` before ``frame_10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _finish(posed: PosedImages, square_crop: SquareCrop | None, resize: int | None) -> PosedImages:
    if square_crop is not None:
        return posed.with_square_crops(square_crop, resize)
    if resize is not None:
        raise ValueError("resize needs square_crop: the views are resized to resize x resize squares")
    return posed


# ------------------------------------------------------------------------------------ COLMAP
def _model_file(model_dir: Path, stem: str) -> Path:
    """The file read_model took ``stem`` from (binary preferred), for error messages."""
    return model_dir / f"{stem}.bin" if (model_dir / "cameras.bin").is_file() else model_dir / f"{stem}.txt"


def _camera_view(camera: ColmapCamera, cameras_file: Path) -> tuple[np.ndarray, Undistortion | None]:
    """Normalised K of the delivered frames and the undistortion producing them (None for pinholes)."""
    no_distortion = camera.model in DISTORTION_MODELS and not np.any(camera.distortion)
    if camera.model in PINHOLE_MODELS or no_distortion:
        return camera.normalized_K(), None
    if camera.model not in DISTORTION_MODELS:
        raise DataFormatError(cameras_file, f"camera {camera.id} MODEL",
                              f"cannot undistort {camera.model}; supported: "
                              f"{sorted(PINHOLE_MODELS | DISTORTION_MODELS)}")
    und = Undistortion.for_camera(camera, cameras_file)
    return und.K, und


def _resolve_image(image_dir: Path, name: str, images_file: Path, image_id: int) -> Path:
    """``image_dir / NAME``, else ``image_dir / basename(NAME)`` (ScanNet++ iPhone names carry a ``video/``
    prefix while the frames are extracted flat)."""
    for candidate in (image_dir / name, image_dir / Path(name).name):
        if candidate.is_file():
            return candidate
    raise DataFormatError(images_file, f"image {image_id} NAME", f"image file not found: {image_dir / name}")


def from_colmap(
    model_dir: str | PathLike,
    image_dir: str | PathLike,
    square_crop: SquareCrop | None = "two",
    resize: int | None = None,
    order: CaptureOrder = "name",
) -> PosedImages:
    """Views of a COLMAP model (binary preferred over text), undistorted to pinholes where needed.

    Args:
        model_dir: folder with ``cameras``, ``images``, ``points3D`` (``.bin`` or ``.txt``).
        image_dir: root that image NAMEs are relative to.
        square_crop: ``"two"`` / ``"center"`` (see :func:`square_crop_boxes`) or ``None`` for whole frames.
        resize: side of the delivered square images (needs ``square_crop``).
        order: capture order = natural sort of NAME (``"name"``), or the model's file order (``"file"``,
            what the reference code uses).
    Returns:
        :class:`PosedImages` with the model's points; the COLMAP world is used as is (assumed z-up).
    """
    model_dir, image_dir = Path(model_dir), Path(image_dir)
    model = read_model(model_dir)
    if not image_dir.is_dir():
        raise DataFormatError(image_dir, image_dir.name, "image folder not found")
    cameras_file, images_file = _model_file(model_dir, "cameras"), _model_file(model_dir, "images")
    views = {cid: _camera_view(cam, cameras_file) for cid, cam in model.cameras.items()}
    images = list(model.images.values())
    if order == "name":
        images.sort(key=lambda im: _natural_key(im.name))
    sources, K = [], []
    for im in images:
        cam = model.cameras[im.camera_id]
        path = _resolve_image(image_dir, im.name, images_file, im.id)
        K.append(views[im.camera_id][0])
        sources.append(ImageSource((cam.width, cam.height), path=path, undistortion=views[im.camera_id][1]))
    w2c = np.array([im.w2c for im in images]).reshape(-1, 4, 4)
    posed = PosedImages([im.name for im in images], w2c, np.array(K).reshape(-1, 3, 3), sources, model.points)
    return _finish(posed, square_crop, resize)


# ------------------------------------------------------------------------------------ ScanNet++
def from_scannetpp_iphone(
    scene_dir: str | PathLike,
    square_crop: SquareCrop | None = "two",
    resize: int | None = None,
    order: CaptureOrder = "name",
) -> PosedImages:
    """ScanNet++ iPhone views: ``iphone/colmap`` (assumed registered to the mesh frame, no remap) with frames
    from ``iphone/rgb/<basename(NAME)>``. Note these exports carry empty point tracks: clean their points
    with ``min_track=0``."""
    scene_dir = Path(scene_dir)
    rgb = scene_dir / "iphone" / "rgb"
    if not rgb.is_dir():
        raise DataFormatError(rgb, "iphone/rgb", "not found: extract the frames of iphone/rgb.mkv into "
                                                 "iphone/rgb/frame_%06d.jpg first")
    return from_colmap(scene_dir / "iphone" / "colmap", rgb, square_crop, resize, order)


def _json_matrix(value: Any, path: Path, field_name: str) -> np.ndarray:
    try:
        m = np.array(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataFormatError(path, field_name, f"not a 4x4 matrix of numbers ({exc})") from None
    if m.shape != (4, 4) or not np.all(np.isfinite(m)):
        raise DataFormatError(path, field_name, f"expected a finite 4x4 matrix, got shape {m.shape}")
    R = m[:3, :3]
    rigid = np.allclose(R @ R.T, np.eye(3), atol=1e-4) and np.linalg.det(R) > 0
    if not rigid or not np.allclose(m[3], [0, 0, 0, 1]):
        raise DataFormatError(path, field_name, "not a rigid camera-to-world transform")
    return m


def _json_number(frame: dict, data: dict, key: str, path: Path, where: str) -> float:
    """``frame[key]`` overriding ``data[key]`` (ScanNet++ allows per-frame intrinsics)."""
    value, field_name = (frame[key], f"{where}.{key}") if key in frame else (data.get(key), key)
    if value is None:
        raise DataFormatError(path, field_name, "missing")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DataFormatError(path, field_name, f"not a number: {value!r}") from None
    if not np.isfinite(number) or (key in ("w", "h", "fl_x", "fl_y") and number <= 0):
        raise DataFormatError(path, field_name, f"invalid value {number}")
    return number


def _dslr_frame(
    frame: Any, data: dict, path: Path, where: str, image_root: Path
) -> tuple[str, np.ndarray, np.ndarray, ImageSource]:
    """``(name, w2c, K, source)`` of one nerfstudio frame, pose remapped to the mesh world."""
    if not isinstance(frame, dict):
        raise DataFormatError(path, where, "expected an object")
    name = frame.get("file_path")
    if not isinstance(name, str) or not name:
        raise DataFormatError(path, f"{where}.file_path", "missing or not a string")
    keys = ("w", "h", "fl_x", "fl_y", "cx", "cy")
    w, h, fx, fy, cx, cy = (_json_number(frame, data, k, path, where) for k in keys)
    if w != int(w) or h != int(h):
        raise DataFormatError(path, f"{where}.w/h", f"image size {w}x{h} is not integral")
    K = np.array([[fx / w, 0.0, cx / w], [0.0, fy / h, cy / h], [0.0, 0.0, 1.0]])
    c2w_ns = _json_matrix(frame.get("transform_matrix"), path, f"{where}.transform_matrix")
    # T_ns = P · c2w_colmap · diag(1,-1,-1,1)  =>  c2w_colmap (mesh world, OpenCV axes) = P · T_ns · diag(...)
    w2c = invert_rigid(NERFSTUDIO_TO_MESH_WORLD @ c2w_ns @ _FLIP_YZ)
    image = image_root / name
    if not image.is_file():
        raise DataFormatError(path, f"{where}.file_path", f"image file not found: {image}")
    return name, w2c, K, ImageSource((int(w), int(h)), path=image)


def from_scannetpp_dslr(
    scene_dir: str | PathLike,
    square_crop: SquareCrop | None = "center",
    resize: int | None = None,
    include_test_frames: bool = False,
    with_points: bool = True,
    order: CaptureOrder = "name",
) -> PosedImages:
    """ScanNet++ DSLR views as the reference reads them (formats-and-checkpoints.md §2.5).

    Cameras from ``dslr/nerfstudio/transforms_undistorted.json`` (PINHOLE, per-frame ``w h fl_x fl_y cx cy``
    override the top level), poses mapped back from the nerfstudio world to the mesh world with ``P``;
    images from ``dslr/resized_undistorted_images/<file_path>``; points from ``dslr/colmap/points3D.txt``
    (already in the mesh world). Only ``frames`` (train) unless ``include_test_frames``.
    """
    scene_dir = Path(scene_dir)
    path = scene_dir / "dslr" / "nerfstudio" / "transforms_undistorted.json"
    image_root = scene_dir / "dslr" / "resized_undistorted_images"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataFormatError(path, path.name, f"unreadable JSON ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("frames"), list):
        raise DataFormatError(path, "frames", "expected a list of frames")
    for key in ("k1", "k2", "k3", "k4", "p1", "p2"):
        if data.get(key, 0) not in (0, 0.0):
            raise DataFormatError(path, key, "transforms_undistorted.json must describe undistorted pinholes")
    entries = [(f"frames[{i}]", f) for i, f in enumerate(data["frames"])]
    if include_test_frames:
        entries += [(f"test_frames[{i}]", f) for i, f in enumerate(data.get("test_frames") or [])]
    views = [_dslr_frame(frame, data, path, where, image_root) for where, frame in entries]
    if not views:
        raise DataFormatError(path, "frames", "no frames")
    if order == "name":
        views.sort(key=lambda v: _natural_key(v[0]))
    points = None
    if with_points:
        points = read_points3d_text(_require_file(scene_dir / "dslr" / "colmap" / "points3D.txt"))
    names, w2c, K, sources = zip(*views)
    posed = PosedImages(list(names), np.array(w2c), np.array(K), list(sources), points)
    return _finish(posed, square_crop, resize)


def _require_file(path: Path) -> Path:
    if not path.is_file():
        raise DataFormatError(path, path.name, "file not found")
    return path
