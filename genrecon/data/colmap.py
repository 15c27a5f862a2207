"""COLMAP sparse models: text and binary readers and writers, camera models and their lens distortion.

Formats as in COLMAP ``doc/format.rst`` and ``src/colmap/scene/reconstruction_io_binary.cc``
(docs/reference: formats-and-checkpoints.md §1):

* ``cameras``: ``CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]``; the parameter count follows from the model.
* ``images``: two lines per image, ``IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME`` then ``POINTS2D[]`` as
  ``X Y POINT3D_ID`` triples (possibly empty). The pose is world->camera (OpenCV axes), Hamilton quaternion.
  NAME may hold spaces and subfolders.
* ``points3D``: ``POINT3D_ID X Y Z R G B ERROR TRACK[]`` with ``IMAGE_ID POINT2D_IDX`` pairs.

Pixel coordinates are COLMAP's: the upper-left image corner is (0, 0) and the first pixel's centre is
(0.5, 0.5), so ``x / width`` is exactly GenRecon's normalised ``u`` (pixel column ``c`` centred at
``(c + 0.5) / W``).

Every malformed input raises :class:`DataFormatError` naming the file and the line (text) or record (binary)
and field.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from genrecon.data.errors import DataFormatError

# name -> (model id, number of parameters) [COLMAP src/colmap/sensor/models.h]
CAMERA_MODELS: dict[str, tuple[int, int]] = {
    "SIMPLE_PINHOLE": (0, 3),
    "PINHOLE": (1, 4),
    "SIMPLE_RADIAL": (2, 4),
    "RADIAL": (3, 5),
    "OPENCV": (4, 8),
    "OPENCV_FISHEYE": (5, 8),
    "FULL_OPENCV": (6, 12),
    "FOV": (7, 5),
    "SIMPLE_RADIAL_FISHEYE": (8, 4),
    "RADIAL_FISHEYE": (9, 5),
    "THIN_PRISM_FISHEYE": (10, 12),
    "RAD_TAN_THIN_PRISM_FISHEYE": (11, 16),
    "SIMPLE_DIVISION": (12, 4),
    "DIVISION": (13, 5),
    "SIMPLE_FISHEYE": (14, 3),
    "FISHEYE": (15, 4),
    "EUCM": (16, 6),
    "EQUIRECTANGULAR": (17, 2),
}
MODEL_NAMES: dict[int, str] = {model_id: name for name, (model_id, _) in CAMERA_MODELS.items()}

# Models whose params start with one focal length (f, cx, cy, ...) rather than two (fx, fy, cx, cy, ...).
_SINGLE_FOCAL = {"SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL", "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE",
                 "SIMPLE_DIVISION", "SIMPLE_FISHEYE"}
PINHOLE_MODELS = frozenset({"SIMPLE_PINHOLE", "PINHOLE"})
# Models :func:`distort_normalized` / :func:`undistort_normalized` implement.
DISTORTION_MODELS = frozenset({"SIMPLE_RADIAL", "RADIAL", "OPENCV", "FULL_OPENCV", "OPENCV_FISHEYE"})


# ------------------------------------------------------------------------------------------ data
@dataclass(frozen=True, eq=False)
class ColmapCamera:
    """One camera: ``params`` ``[num_params(model)]`` float64 in COLMAP's order for ``model``."""

    id: int
    model: str
    width: int
    height: int
    params: np.ndarray

    @property
    def model_id(self) -> int:
        return CAMERA_MODELS[self.model][0]

    def focal_and_principal_point(self) -> tuple[float, float, float, float]:
        """``(fx, fy, cx, cy)`` in pixels (COLMAP pixel coordinates)."""
        p = self.params
        if self.model in _SINGLE_FOCAL:
            return float(p[0]), float(p[0]), float(p[1]), float(p[2])
        return float(p[0]), float(p[1]), float(p[2]), float(p[3])

    def normalized_K(self) -> np.ndarray:
        """``[3, 3]`` normalised intrinsics of the pinhole part (exact for PINHOLE / SIMPLE_PINHOLE)."""
        fx, fy, cx, cy = self.focal_and_principal_point()
        w, h = self.width, self.height
        return np.array([[fx / w, 0.0, cx / w], [0.0, fy / h, cy / h], [0.0, 0.0, 1.0]])

    @property
    def distortion(self) -> np.ndarray:
        """The extra (distortion) parameters after focal length(s) and principal point."""
        return self.params[3:] if self.model in _SINGLE_FOCAL else self.params[4:]


@dataclass(frozen=True, eq=False)
class ColmapImage:
    """One registered image. ``xys [M, 2]`` float64 keypoints (COLMAP pixels), ``point3d_ids [M]`` int64
    (``-1`` where the keypoint has no 3-D point)."""

    id: int
    qvec: np.ndarray  # [4] qw qx qy qz, world->camera
    tvec: np.ndarray  # [3]
    camera_id: int
    name: str
    xys: np.ndarray
    point3d_ids: np.ndarray

    @property
    def w2c(self) -> np.ndarray:
        """``[4, 4]`` OpenCV world->camera."""
        m = np.eye(4)
        m[:3, :3] = qvec_to_rotmat(self.qvec)
        m[:3, 3] = self.tvec
        return m


@dataclass(frozen=True, eq=False)
class ColmapPoints:
    """The sparse points. ``ids [P]`` int64, ``xyz [P, 3]`` float64 world, ``rgb [P, 3]`` uint8, ``error [P]``
    float64 (mean reprojection error, px). Tracks are stored CSR-style: the track of point ``i`` is
    ``track_image_ids[track_offsets[i]:track_offsets[i+1]]`` with ``track_point2d_idx`` alongside."""

    ids: np.ndarray
    xyz: np.ndarray
    rgb: np.ndarray
    error: np.ndarray
    track_offsets: np.ndarray  # [P + 1] int64
    track_image_ids: np.ndarray  # [T] int64
    track_point2d_idx: np.ndarray  # [T] int64

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def track_length(self) -> np.ndarray:
        """``[P]`` int64 number of observations per point."""
        return np.diff(self.track_offsets)

    def subset(self, keep: np.ndarray) -> ColmapPoints:
        """The points selected by a boolean mask ``[P]`` or an index array, tracks included."""
        idx = np.arange(len(self))[keep]
        lengths = self.track_length[idx]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        # Gather each kept track's entries: start of its run + position inside the run.
        within = np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths)
        gather = np.repeat(self.track_offsets[idx], lengths) + within
        return ColmapPoints(self.ids[idx], self.xyz[idx], self.rgb[idx], self.error[idx], offsets,
                            self.track_image_ids[gather], self.track_point2d_idx[gather])

    @staticmethod
    def empty() -> ColmapPoints:
        z = np.zeros(0, dtype=np.int64)
        return ColmapPoints(z, np.zeros((0, 3)), np.zeros((0, 3), np.uint8), np.zeros(0),
                            np.zeros(1, np.int64), z, z)


@dataclass(frozen=True, eq=False)
class ColmapModel:
    """A sparse model: cameras and images keyed by id (in file order), and the points."""

    cameras: dict[int, ColmapCamera]
    images: dict[int, ColmapImage]
    points: ColmapPoints


# ------------------------------------------------------------------------------------- rotations
def qvec_to_rotmat(qvec: np.ndarray) -> np.ndarray:
    """``[3, 3]`` rotation of a Hamilton quaternion ``(qw, qx, qy, qz)``, normalised first as COLMAP does."""
    w, x, y, z = np.asarray(qvec, dtype=np.float64) / np.linalg.norm(qvec)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def rotmat_to_qvec(R: np.ndarray) -> np.ndarray:
    """Hamilton quaternion ``[4]`` ``(qw, qx, qy, qz)`` with ``qw >= 0`` of a rotation ``R [3, 3]``."""
    m = np.asarray(R, dtype=np.float64)
    # Shepperd's method: divide by the largest of 4w², 4x², 4y², 4z² for accuracy at any angle.
    sq = np.array([1 + m[0, 0] + m[1, 1] + m[2, 2], 1 + m[0, 0] - m[1, 1] - m[2, 2],
                   1 - m[0, 0] + m[1, 1] - m[2, 2], 1 - m[0, 0] - m[1, 1] + m[2, 2]])
    i = int(np.argmax(sq))
    s = 2.0 * np.sqrt(sq[i])  # = 4 · q_i
    a, b, c = m[2, 1] - m[1, 2], m[0, 2] - m[2, 0], m[1, 0] - m[0, 1]  # 4w·(x, y, z)
    d, e, f = m[0, 1] + m[1, 0], m[0, 2] + m[2, 0], m[1, 2] + m[2, 1]  # 4xy, 4xz, 4yz
    q = np.array([[s / 4, a / s, b / s, c / s], [a / s, s / 4, d / s, e / s],
                  [b / s, d / s, s / 4, f / s], [c / s, e / s, f / s, s / 4]][i])
    return -q if q[0] < 0 else q


# ------------------------------------------------------------------------------------ distortion
def distort_normalized(camera: ColmapCamera, xy: np.ndarray) -> np.ndarray:
    """Apply the lens model to undistorted normalised coordinates ``xy [..., 2]`` = ``(X/Z, Y/Z)``.

    Returns ``[..., 2]`` distorted normalised coordinates; pixels are then ``fx · x + cx``, ``fy · y + cy``.
    Pinhole models are the identity. Formulas as COLMAP's ``Distortion`` (and ``FisheyeFromNormal`` for
    OPENCV_FISHEYE: ``theta = atan(r)``).
    """
    xy = np.asarray(xy, dtype=np.float64)
    if camera.model in PINHOLE_MODELS:
        return xy.copy()
    if camera.model not in DISTORTION_MODELS:
        raise ValueError(f"lens model {camera.model} is not supported ({sorted(DISTORTION_MODELS)} are)")
    d = camera.distortion
    if camera.model == "OPENCV_FISHEYE":
        r = np.linalg.norm(xy, axis=-1, keepdims=True)
        # theta / r -> 1 as r -> 0; guard the division at the principal point.
        scale = np.where(r > 1e-12, np.arctan(r) / np.maximum(r, 1e-12), 1.0)
        uv = xy * scale
        t2 = np.sum(uv * uv, axis=-1, keepdims=True)
        return uv * (1 + d[0] * t2 + d[1] * t2**2 + d[2] * t2**3 + d[3] * t2**4)
    # Every radial-tangential model is FULL_OPENCV (k1, k2, p1, p2, k3, k4, k5, k6) with trailing zeros.
    k1, k2, p1, p2, k3, k4, k5, k6 = np.concatenate([d, np.zeros(8 - len(d))])
    u, v = xy[..., 0], xy[..., 1]
    r2 = u * u + v * v
    radial = (1 + k1 * r2 + k2 * r2**2 + k3 * r2**3) / (1 + k4 * r2 + k5 * r2**2 + k6 * r2**3)
    du = 2 * p1 * u * v + p2 * (r2 + 2 * u * u)
    dv = 2 * p2 * u * v + p1 * (r2 + 2 * v * v)
    return np.stack([u * radial + du, v * radial + dv], axis=-1)


def undistort_normalized(camera: ColmapCamera, xy_distorted: np.ndarray, iterations: int = 50) -> np.ndarray:
    """Invert :func:`distort_normalized` by Newton's method (numerical 2x2 Jacobian, as COLMAP's
    ``IterativeUndistortion``). ``xy_distorted [..., 2]`` -> ``[..., 2]``."""
    target = np.asarray(xy_distorted, dtype=np.float64)
    xy = target.copy()
    for _ in range(iterations):
        residual = distort_normalized(camera, xy) - target
        h = 1e-7 * np.maximum(1.0, np.abs(xy))  # per-coordinate central-difference step
        J = np.empty(xy.shape + (2,))
        for axis in range(2):
            step = np.zeros_like(xy)
            step[..., axis] = h[..., axis]
            diff = distort_normalized(camera, xy + step) - distort_normalized(camera, xy - step)
            J[..., :, axis] = diff / (2 * h[..., axis : axis + 1])
        delta = np.linalg.solve(J, residual[..., None])[..., 0]
        xy = xy - delta
        if np.max(np.abs(delta), initial=0.0) < 1e-14:
            break
    return xy


# ------------------------------------------------------------------------------------ text reader
class _Line:
    """The tokens of one text line, taken field by field so errors name the line and the field."""

    def __init__(self, path: Path, lineno: int, tokens: list[str]) -> None:
        self.path, self.lineno, self.tokens, self.pos = path, lineno, tokens, 0

    def error(self, field: str, message: str) -> DataFormatError:
        return DataFormatError(self.path, f"line {self.lineno} {field}", message)

    def take(self, field: str, conv: Callable[[str], Any]) -> Any:
        if self.pos >= len(self.tokens):
            raise self.error(field, "missing")
        token = self.tokens[self.pos]
        self.pos += 1
        try:
            return conv(token)
        except ValueError as exc:
            raise self.error(field, f"cannot parse {token!r} ({exc})") from None

    def take_floats(self, field: str, n: int) -> np.ndarray:
        return np.array([self.take(field, float) for _ in range(n)])

    def rest(self) -> list[str]:
        return self.tokens[self.pos:]


def _data_lines(path: Path) -> list[tuple[int, str]]:
    """``(line number, stripped line)`` of a text file; raises :class:`DataFormatError` if unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFormatError(path, path.name, f"unreadable ({exc})") from exc
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1)]


def _model_params(line: _Line, model: str) -> np.ndarray:
    if model not in CAMERA_MODELS:
        raise line.error("MODEL", f"unknown camera model {model!r}")
    n = CAMERA_MODELS[model][1]
    params = line.take_floats("PARAMS", n)
    if line.rest():
        raise line.error("PARAMS", f"{model} takes {n} parameters, got {n + len(line.rest())}")
    return params


def read_cameras_text(path: str | PathLike) -> dict[int, ColmapCamera]:
    path = Path(path)
    cameras: dict[int, ColmapCamera] = {}
    for lineno, text in _data_lines(path):
        if not text or text.startswith("#"):
            continue
        line = _Line(path, lineno, text.split())
        cam_id = line.take("CAMERA_ID", int)
        model = line.take("MODEL", str)
        width, height = line.take("WIDTH", int), line.take("HEIGHT", int)
        if cam_id in cameras:
            raise line.error("CAMERA_ID", f"duplicate camera id {cam_id}")
        cameras[cam_id] = ColmapCamera(cam_id, model, width, height, _model_params(line, model))
    return cameras


def _points2d(line: _Line) -> tuple[np.ndarray, np.ndarray]:
    tokens = line.rest()
    if len(tokens) % 3:
        raise line.error("POINTS2D", f"expected X Y POINT3D_ID triples, got {len(tokens)} values")
    values = [line.take("POINTS2D", float if i % 3 < 2 else int) for i in range(len(tokens))]
    xys = np.array([values[i: i + 2] for i in range(0, len(values), 3)], dtype=np.float64).reshape(-1, 2)
    return xys, np.array(values[2::3], dtype=np.int64)


def read_images_text(path: str | PathLike) -> dict[int, ColmapImage]:
    """Two lines per image; the POINTS2D line is whatever line follows a header (it may be empty). A file
    that ends right after a header gives that image no keypoints, as writers that strip the last empty line
    produce."""
    path = Path(path)
    lines = _data_lines(path)
    images: dict[int, ColmapImage] = {}
    i = 0
    while i < len(lines):
        lineno, text = lines[i]
        i += 1
        if not text or text.startswith("#"):
            continue
        # NAME may hold spaces: split the header into at most 10 fields.
        line = _Line(path, lineno, text.split(maxsplit=9))
        image_id = line.take("IMAGE_ID", int)
        qvec, tvec = line.take_floats("QVEC", 4), line.take_floats("TVEC", 3)
        camera_id = line.take("CAMERA_ID", int)
        name = line.take("NAME", str)
        if not np.all(np.isfinite(qvec)) or np.linalg.norm(qvec) == 0:
            raise line.error("QVEC", f"not a rotation quaternion: {qvec.tolist()}")
        if image_id in images:
            raise line.error("IMAGE_ID", f"duplicate image id {image_id}")
        if i < len(lines):
            xys, ids = _points2d(_Line(path, lines[i][0], lines[i][1].split()))
            i += 1
        else:
            xys, ids = np.zeros((0, 2)), np.zeros(0, dtype=np.int64)
        images[image_id] = ColmapImage(image_id, qvec, tvec, camera_id, name, xys, ids)
    return images


def read_points3d_text(path: str | PathLike) -> ColmapPoints:
    path = Path(path)
    ids, xyz, rgb, error, lengths, track = [], [], [], [], [], []
    for lineno, text in _data_lines(path):
        if not text or text.startswith("#"):
            continue
        line = _Line(path, lineno, text.split())
        ids.append(line.take("POINT3D_ID", int))
        xyz.append(line.take_floats("XYZ", 3))
        rgb.append([line.take("RGB", int) for _ in range(3)])
        error.append(line.take("ERROR", float))
        rest = line.rest()
        if len(rest) % 2:
            raise line.error("TRACK", f"expected IMAGE_ID POINT2D_IDX pairs, got {len(rest)} values")
        track.extend(line.take("TRACK", int) for _ in rest)
        lengths.append(len(rest) // 2)
        if not all(0 <= c <= 255 for c in rgb[-1]):
            raise line.error("RGB", f"colour {rgb[-1]} outside 0..255")
    if not ids:
        return ColmapPoints.empty()
    pairs = np.array(track, dtype=np.int64).reshape(-1, 2)
    return ColmapPoints(
        ids=np.array(ids, dtype=np.int64),
        xyz=np.array(xyz, dtype=np.float64),
        rgb=np.array(rgb, dtype=np.uint8),
        error=np.array(error, dtype=np.float64),
        track_offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        track_image_ids=pairs[:, 0].copy(),
        track_point2d_idx=pairs[:, 1].copy(),
    )


# ---------------------------------------------------------------------------------- binary reader
class _BinaryReader:
    """Little-endian reads that name the record and field when the file ends early."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.data = path.read_bytes()
        except OSError as exc:
            raise DataFormatError(path, path.name, f"unreadable ({exc})") from exc
        self.pos = 0

    def read(self, fmt: str, field: str) -> tuple:
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.data):
            raise DataFormatError(self.path, field, f"file ends early (offset {self.pos}, need {size} bytes)")
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += size
        return values

    def array(self, dtype: str, count: int, field: str) -> np.ndarray:
        size = np.dtype(dtype).itemsize * count
        if self.pos + size > len(self.data):
            raise DataFormatError(self.path, field, f"file ends early (offset {self.pos}, need {size} bytes)")
        out = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.pos)
        self.pos += size
        return out

    def string(self, field: str) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise DataFormatError(self.path, field, "unterminated string")
        raw = self.data[self.pos: end]
        self.pos = end + 1
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataFormatError(self.path, field, f"not UTF-8 ({exc})") from None

    def finish(self) -> None:
        if self.pos != len(self.data):
            raise DataFormatError(self.path, "end", f"{len(self.data) - self.pos} trailing bytes")


def read_cameras_binary(path: str | PathLike) -> dict[int, ColmapCamera]:
    r = _BinaryReader(Path(path))
    cameras: dict[int, ColmapCamera] = {}
    for i in range(r.read("Q", "num_cameras")[0]):
        cam_id, model_id, width, height = r.read("IiQQ", f"cameras[{i}]")
        if model_id not in MODEL_NAMES:
            raise DataFormatError(r.path, f"cameras[{i}].model_id", f"unknown camera model id {model_id}")
        model = MODEL_NAMES[model_id]
        params = r.array("<f8", CAMERA_MODELS[model][1], f"cameras[{i}].params").astype(np.float64)
        if cam_id in cameras:
            raise DataFormatError(r.path, f"cameras[{i}].camera_id", f"duplicate camera id {cam_id}")
        cameras[cam_id] = ColmapCamera(cam_id, model, width, height, params)
    r.finish()
    return cameras


def read_images_binary(path: str | PathLike) -> dict[int, ColmapImage]:
    r = _BinaryReader(Path(path))
    images: dict[int, ColmapImage] = {}
    for i in range(r.read("Q", "num_reg_images")[0]):
        image_id, qw, qx, qy, qz, tx, ty, tz, camera_id = r.read("I7dI", f"images[{i}]")
        name = r.string(f"images[{i}].name")
        (n,) = r.read("Q", f"images[{i}].num_points2D")
        rows = r.array("<f8,<f8,<i8", n, f"images[{i}].points2D")
        xys = np.stack([rows["f0"], rows["f1"]], axis=-1).astype(np.float64).reshape(-1, 2)
        qvec = np.array([qw, qx, qy, qz])
        if not np.all(np.isfinite(qvec)) or np.linalg.norm(qvec) == 0:
            raise DataFormatError(r.path, f"images[{i}].qvec", f"not a rotation quaternion: {qvec.tolist()}")
        if image_id in images:
            raise DataFormatError(r.path, f"images[{i}].image_id", f"duplicate image id {image_id}")
        images[image_id] = ColmapImage(image_id, qvec, np.array([tx, ty, tz]), camera_id, name, xys,
                                       rows["f2"].astype(np.int64))
    r.finish()
    return images


def read_points3d_binary(path: str | PathLike) -> ColmapPoints:
    r = _BinaryReader(Path(path))
    n = r.read("Q", "num_points")[0]
    ids = np.empty(n, dtype=np.int64)
    xyz = np.empty((n, 3))
    rgb = np.empty((n, 3), dtype=np.uint8)
    error = np.empty(n)
    lengths = np.empty(n, dtype=np.int64)
    tracks = []
    for i in range(n):
        pid, x, y, z, cr, cg, cb, err, length = r.read("Q3d3BdQ", f"points[{i}]")
        ids[i], xyz[i], rgb[i], error[i], lengths[i] = pid, (x, y, z), (cr, cg, cb), err, length
        tracks.append(r.array("<u4", 2 * length, f"points[{i}].track"))
    r.finish()
    pairs = np.concatenate(tracks).astype(np.int64).reshape(-1, 2) if tracks else np.zeros((0, 2), np.int64)
    return ColmapPoints(ids, xyz, rgb, error, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                        pairs[:, 0].copy(), pairs[:, 1].copy())


# ---------------------------------------------------------------------------------------- models
def _check_camera_refs(model: ColmapModel, images_path: Path) -> ColmapModel:
    for image in model.images.values():
        if image.camera_id not in model.cameras:
            raise DataFormatError(images_path, f"image {image.id} CAMERA_ID",
                                  f"camera {image.camera_id} is not in the cameras file")
    return model


def _require(folder: Path, names: tuple[str, ...]) -> list[Path]:
    paths = [folder / n for n in names]
    for p in paths:
        if not p.is_file():
            raise DataFormatError(folder, p.name, "missing from the COLMAP model folder")
    return paths


def read_text_model(folder: str | PathLike) -> ColmapModel:
    """``cameras.txt``, ``images.txt`` and ``points3D.txt`` of ``folder``."""
    cams, imgs, pts = _require(Path(folder), ("cameras.txt", "images.txt", "points3D.txt"))
    model = ColmapModel(read_cameras_text(cams), read_images_text(imgs), read_points3d_text(pts))
    return _check_camera_refs(model, imgs)


def read_binary_model(folder: str | PathLike) -> ColmapModel:
    """``cameras.bin``, ``images.bin`` and ``points3D.bin`` of ``folder``."""
    cams, imgs, pts = _require(Path(folder), ("cameras.bin", "images.bin", "points3D.bin"))
    model = ColmapModel(read_cameras_binary(cams), read_images_binary(imgs), read_points3d_binary(pts))
    return _check_camera_refs(model, imgs)


def read_model(folder: str | PathLike) -> ColmapModel:
    """The model in ``folder``: binary when ``cameras.bin`` exists (COLMAP's preference), else text.
    ``rigs`` / ``frames`` files of newer COLMAP are not needed for the poses and are ignored."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataFormatError(folder, folder.name, "COLMAP model folder not found")
    if (folder / "cameras.bin").is_file():
        return read_binary_model(folder)
    return read_text_model(folder)


# ---------------------------------------------------------------------------------------- writers
def _fmt(values: Any) -> str:
    """Floats as their shortest round-trip repr, so a text write + read is exact."""
    return " ".join(repr(float(v)) for v in np.ravel(values))


def write_text_model(model: ColmapModel, folder: str | PathLike) -> None:
    """Write ``cameras.txt``, ``images.txt``, ``points3D.txt`` (floats exact; ids and order preserved)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["# Camera list with one line of data per camera:",
             "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]"]
    lines += [f"{c.id} {c.model} {c.width} {c.height} {_fmt(c.params)}" for c in model.cameras.values()]
    (folder / "cameras.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")

    lines = ["# Image list with two lines of data per image:",
             "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
             "#   POINTS2D[] as (X, Y, POINT3D_ID)"]
    for im in model.images.values():
        lines.append(f"{im.id} {_fmt(im.qvec)} {_fmt(im.tvec)} {im.camera_id} {im.name}")
        lines.append(" ".join(f"{x!r} {y!r} {int(p)}" for (x, y), p in zip(im.xys.tolist(), im.point3d_ids)))
    (folder / "images.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")

    pts = model.points
    lines = ["# 3D point list with one line of data per point:",
             "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)"]
    for i in range(len(pts)):
        a, b = pts.track_offsets[i], pts.track_offsets[i + 1]
        track = np.stack([pts.track_image_ids[a:b], pts.track_point2d_idx[a:b]], axis=-1).ravel()
        fields = [str(pts.ids[i]), _fmt(pts.xyz[i]), " ".join(map(str, pts.rgb[i])), _fmt(pts.error[i])]
        lines.append(" ".join(fields + [str(int(t)) for t in track]))
    (folder / "points3D.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _write_cameras_binary(f: BinaryIO, cameras: dict[int, ColmapCamera]) -> None:
    f.write(struct.pack("<Q", len(cameras)))
    for c in cameras.values():
        f.write(struct.pack("<IiQQ", c.id, c.model_id, c.width, c.height))
        f.write(np.asarray(c.params, dtype="<f8").tobytes())


def _write_images_binary(f: BinaryIO, images: dict[int, ColmapImage]) -> None:
    f.write(struct.pack("<Q", len(images)))
    for im in images.values():
        f.write(struct.pack("<I7dI", im.id, *im.qvec, *im.tvec, im.camera_id))
        f.write(im.name.encode("utf-8") + b"\0")
        rows = np.empty(len(im.point3d_ids), dtype="<f8,<f8,<i8")
        rows["f0"], rows["f1"], rows["f2"] = im.xys[:, 0], im.xys[:, 1], im.point3d_ids  # -1 -> 2^64 - 1
        f.write(struct.pack("<Q", len(rows)) + rows.tobytes())


def _write_points_binary(f: BinaryIO, pts: ColmapPoints) -> None:
    f.write(struct.pack("<Q", len(pts)))
    for i in range(len(pts)):
        a, b = pts.track_offsets[i], pts.track_offsets[i + 1]
        f.write(struct.pack("<Q3d3BdQ", pts.ids[i], *pts.xyz[i], *pts.rgb[i], pts.error[i], b - a))
        track = np.stack([pts.track_image_ids[a:b], pts.track_point2d_idx[a:b]], axis=-1)
        f.write(track.astype("<u4").tobytes())


def write_binary_model(model: ColmapModel, folder: str | PathLike) -> None:
    """Write ``cameras.bin``, ``images.bin``, ``points3D.bin`` in COLMAP's little-endian layout."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "cameras.bin", "wb") as f:
        _write_cameras_binary(f, model.cameras)
    with open(folder / "images.bin", "wb") as f:
        _write_images_binary(f, model.images)
    with open(folder / "points3D.bin", "wb") as f:
        _write_points_binary(f, model.points)
