"""Per-scene data building: cameras -> renders -> training chunks -> O-Voxel + occupancy -> shard samples.

Everything random comes from the scene's own generator, so a scene's output does not depend on which worker
built it or in which order.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from genrecon.data.camera_placement import CameraPlacementConfig, CameraRig, place_cameras
from genrecon.data.scenes import Scene
from genrecon.data.shards import encode_chunk_sample
from genrecon.geometry.cameras import (
    box_corners_and_centre,
    crop_intrinsics,
    projected_box_coverage,
    w2c_in_chunk_frame,
)
from genrecon.geometry.chunks import Chunk, crop_to_chunk, sample_training_chunk
from genrecon.geometry.ovoxel import mesh_to_ovoxel
from genrecon.render.base import Rasterizer
from genrecon.render.shading import (
    RenderedViews, render_views, save_depth_png, save_normal_png, save_png, save_rgba_png,
)

UNIT_BOX = np.array([[-0.5] * 3, [0.5] * 3])


@dataclass
class ChunkBuildConfig:
    """Sizes and rules of the data build (``conf/prepare.yaml`` and the preset)."""

    view_size: int = 64
    render_size: int = 128
    ovoxel_resolution: int = 64
    occupancy_resolution: int = 64
    chunks_per_scene: int = 3
    edge_range_m: tuple[float, float] = (2.7, 3.0)
    xy_margin_m: float = 1.0
    floor_offset_m: float = 0.02
    min_voxels: int = 64
    min_view_coverage: float = 0.4
    max_views: int = 48
    cameras: CameraPlacementConfig = field(default_factory=CameraPlacementConfig)


@dataclass
class SceneBuild:
    """What one scene produced: encoded shard samples plus what the manifest and contact sheet need."""

    scene_id: str
    samples: list[dict]
    chunks: list[Chunk]
    dropped_few_voxels: int
    chunk_stats: list[dict]
    preview_views: np.ndarray  # [P, H, W, 4] a few renders for the contact sheet
    preview_w2c: np.ndarray
    preview_K: np.ndarray
    camera_xy: np.ndarray  # [N, 2] camera positions, for the floor plan
    floor_polygon: np.ndarray
    num_cameras: int
    timings_s: dict[str, float]


def square_alpha_box(alpha: np.ndarray) -> tuple[int, int, int, int] | None:
    """The square box (x0, y0, x1, y1) around the non-zero alpha, moved inside the image; None if empty."""
    ys, xs = np.nonzero(alpha)
    if len(xs) == 0:
        return None
    h, w = alpha.shape
    side = min(max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1), w, h)
    cx, cy = (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2
    x0 = int(np.clip(round(cx - side / 2), 0, w - side))
    y0 = int(np.clip(round(cy - side / 2), 0, h - side))
    return x0, y0, x0 + side, y0 + side


def crop_view(rgba: np.ndarray, K: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Crop a render to the square box of its alpha, resize (Lanczos) to ``size`` and premultiply by alpha.

    Returns ``(view [size, size, 4] uint8, K' [3, 3])`` or None when the view shows nothing.
    """
    box = square_alpha_box(rgba[..., 3] > 0)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    crop = Image.fromarray(rgba[y0:y1, x0:x1]).resize((size, size), Image.Resampling.LANCZOS)
    view = np.asarray(crop).astype(np.float32)
    view[..., :3] *= view[..., 3:4] / 255.0
    view = np.clip(np.round(view), 0, 255).astype(np.uint8)
    K_crop = crop_intrinsics(K, np.array(box, dtype=np.float64), (rgba.shape[1], rgba.shape[0]))
    return view, K_crop


def save_scene_folder(
    scene: Scene, rig: CameraRig, renders: RenderedViews, folder: Path, split: str = "train"
) -> None:
    """The per-room folder: scene.json, mesh.ply and the full renders (see docs/data_format.md)."""
    views = folder / "views"
    views.mkdir(parents=True, exist_ok=True)
    for i in range(len(rig)):
        save_rgba_png(views / f"rgba_{i:03d}.png", renders.rgba[i])
        save_depth_png(views / f"depth_{i:03d}.png", renders.depth[i])
        save_normal_png(views / f"normal_{i:03d}.png", renders.normal[i])
        save_png(views / f"basecolor_{i:03d}.png", renders.base_colour[i])
    scene.mesh.to_trimesh().export(folder / "mesh.ply")
    meta = {
        "scene_id": scene.scene_id,
        "split": split,
        "height_m": scene.height,
        "floor_polygon": scene.floor_polygon.tolist(),
        "image_size": [int(renders.rgba.shape[2]), int(renders.rgba.shape[1])],
        "fov_x": rig.fov_x,
        "w2c": rig.w2c.tolist(),
        "intrinsics": rig.K.tolist(),
        "part_names": list(scene.part_names),
    }
    (folder / "scene.json").write_text(json.dumps(meta, indent=1))


def build_scene(
    scene: Scene,
    index: int,
    cfg: ChunkBuildConfig,
    rasterizer: Rasterizer,
    rng: np.random.Generator,
    scene_dir: Path | None = None,
    split: str = "train",
) -> SceneBuild:
    """Cameras, renders and training chunks of one room (see the module docstring)."""
    t = {"cameras": time.perf_counter()}
    rig = place_cameras(scene, rng, cfg.cameras)
    t["render"] = time.perf_counter()
    renders = render_views(scene.mesh, rasterizer, rig.w2c, rig.K, cfg.render_size, cfg.render_size)
    if scene_dir is not None:
        save_scene_folder(scene, rig, renders, scene_dir, split)
    t["chunks"] = time.perf_counter()

    samples, chunks, stats = [], [], []
    dropped = 0
    bounds = scene.floor_bounds
    for k in range(cfg.chunks_per_scene):
        chunk = sample_training_chunk(rng, bounds[0], bounds[1], cfg.edge_range_m, cfg.xy_margin_m)
        # Lower the cube a little so the floor surface lies inside the grid, not on its boundary face.
        chunk = Chunk((chunk.center[0], chunk.center[1], chunk.center[2] - cfg.floor_offset_m), chunk.edge_m, chunk.yaw)
        local = crop_to_chunk(scene.mesh, chunk)
        vox = mesh_to_ovoxel(local, cfg.ovoxel_resolution) if local.num_faces else None
        if vox is None or len(vox.coords) < cfg.min_voxels:
            dropped += 1
            continue
        occupancy = vox.occupancy(cfg.occupancy_resolution)

        world_cov = projected_box_coverage(rig.w2c, rig.K, chunk.corners_world())
        candidates = np.nonzero(world_cov >= cfg.min_view_coverage)[0]
        if len(candidates) > cfg.max_views:
            candidates = np.sort(rng.choice(candidates, size=cfg.max_views, replace=False))
        views, w2cs, Ks = [], [], []
        for i in candidates:
            cropped = crop_view(renders.rgba[i], rig.K[i], cfg.view_size)
            if cropped is None:
                continue
            views.append(cropped[0])
            Ks.append(cropped[1])
            w2cs.append(w2c_in_chunk_frame(rig.w2c[i], chunk.chunk_from_world))
        n = len(views)
        w2c = np.stack(w2cs) if n else np.zeros((0, 4, 4))
        K = np.stack(Ks) if n else np.zeros((0, 3, 3))
        coverage = (
            projected_box_coverage(w2c, K, box_corners_and_centre(UNIT_BOX[0], UNIT_BOX[1]))
            if n
            else np.zeros(0)
        )
        meta = {
            "scene_id": scene.scene_id,
            "chunk_index": k,
            "edge_m": chunk.edge_m,
            "yaw": chunk.yaw,
            "center": list(chunk.center),
            "ovoxel_resolution": cfg.ovoxel_resolution,
            "view_size": cfg.view_size,
            "num_voxels": int(len(vox.coords)),
            "split": split,
            "room_view_index": [int(i) for i in candidates],
        }
        key = f"{scene.scene_id}_{k:03d}".replace(".", "-")
        samples.append(
            encode_chunk_sample(
                key,
                meta,
                np.stack(views) if n else np.zeros((0, cfg.view_size, cfg.view_size, 4), np.uint8),
                w2c,
                K,
                coverage,
                chunk.chunk_from_world,
                occupancy,
                vox.pack(),
            )
        )
        chunks.append(chunk)
        stats.append({"voxels": int(len(vox.coords)), "views": n, "occupancy": float(occupancy.mean())})
    t["end"] = time.perf_counter()
    preview = np.linspace(0, len(rig) - 1, num=min(4, len(rig))).astype(int)
    names = list(t)
    return SceneBuild(
        scene_id=scene.scene_id,
        samples=samples,
        chunks=chunks,
        dropped_few_voxels=dropped,
        chunk_stats=stats,
        preview_views=renders.rgba[preview],
        preview_w2c=rig.w2c[preview],
        preview_K=rig.K[preview],
        camera_xy=rig.positions[:, :2],
        floor_polygon=scene.floor_polygon,
        num_cameras=len(rig),
        timings_s={names[i]: t[names[i + 1]] - t[names[i]] for i in range(len(names) - 1)},
    )
