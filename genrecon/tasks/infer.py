"""Body of ``infer.py``: posed images -> cleaned points -> tiling -> joint sampling -> mesh -> ``scene.glb``.

Outputs in the run directory: ``mesh.ply`` (vertex colours = base colour), ``scene.glb`` (per-chunk primitives
with base-colour and metallic-roughness textures), ``preview.png`` (the result rendered from input cameras
beside the inputs), ``views.json`` (the input views, read by eval.py) and ``summary.json`` (time and peak
memory per phase, chunk count). ``scene.glb`` is written last and atomically: a failed run never has one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from genrecon.data.errors import DataFormatError
from genrecon.data.posed_images import PosedImages
from genrecon.geometry.pointcloud import (
    gravity_alignment_warning,
    radius_outlier_removal,
    statistical_outlier_removal,
)
from genrecon.geometry.tiling import SceneTiling, select_images, tile_scene
from genrecon.pipelines.reconstruct import Reconstruction, ReconstructionSettings, SceneReconstructor
from genrecon.stages.loading import load_stage
from genrecon.utils.config import require_complete
from genrecon.utils.logging import RankedLogger
from genrecon.utils.profiling import PhaseTimer
from genrecon.utils.task import TaskContext, task_wrapper

log = RankedLogger(__name__)
STAGES = ("ss_vae", "shape_vae", "tex_vae", "ss_flow", "shape_flow", "tex_flow")


# ---------------------------------------------------------------------------------------------- inputs
def load_prepared_scene(scene_dir: str | Path, depth_stride: int = 2) -> tuple[PosedImages, np.ndarray]:
    """A scene folder written by prepare.py: its renders and cameras, and points back-projected from its
    depth maps (the stand-in for structure-from-motion points; every ``depth_stride``-th pixel)."""
    from genrecon.geometry.cameras import unproject_points
    from genrecon.render.shading import load_depth_png

    folder = Path(scene_dir)
    meta_path = folder / "scene.json"
    if not meta_path.is_file():
        raise DataFormatError(meta_path, "scene.json", "missing: not a scene folder written by prepare.py")
    meta = json.loads(meta_path.read_text())
    for key in ("w2c", "intrinsics", "image_size"):
        if key not in meta:
            raise DataFormatError(meta_path, key, "missing")
    w2c, K = np.asarray(meta["w2c"], np.float64), np.asarray(meta["intrinsics"], np.float64)
    images, points = [], []
    for i in range(len(w2c)):
        rgba_path, depth_path = folder / "views" / f"rgba_{i:03d}.png", folder / "views" / f"depth_{i:03d}.png"
        for p in (rgba_path, depth_path):
            if not p.is_file():
                raise DataFormatError(p, f"views[{i}]", "image file missing")
        images.append(np.asarray(Image.open(rgba_path).convert("RGBA")))
        depth = load_depth_png(depth_path)[::depth_stride, ::depth_stride]
        h, w = depth.shape
        u = (np.arange(w) * depth_stride + 0.5 * depth_stride) / (w * depth_stride)
        v = (np.arange(h) * depth_stride + 0.5 * depth_stride) / (h * depth_stride)
        uv = np.stack(np.meshgrid(u, v, indexing="xy"), -1).reshape(-1, 2)
        valid = depth.reshape(-1) > 0
        points.append(unproject_points(uv[valid], depth.reshape(-1)[valid], w2c[i], K[i]))
    return PosedImages.from_arrays(images, w2c, K), np.concatenate(points)


def load_input(cfg: DictConfig) -> tuple[PosedImages, np.ndarray]:
    """``(views in capture order, whole frames; raw world points [P, 3])`` for ``cfg.input.kind``."""
    from genrecon.data import posed_images as pi
    from genrecon.geometry.pointcloud import filter_colmap_points

    kind = cfg.input.kind
    if kind == "prepared":
        return load_prepared_scene(cfg.input.scene_dir)
    loaders = {
        "colmap": lambda: pi.from_colmap(cfg.input.model_dir, cfg.input.image_dir, square_crop=None),
        "scannetpp_dslr": lambda: pi.from_scannetpp_dslr(cfg.input.scene_dir, square_crop=None),
        "scannetpp_iphone": lambda: pi.from_scannetpp_iphone(cfg.input.scene_dir, square_crop=None),
    }
    if kind not in loaders:
        raise ValueError(f"input.kind: unknown input kind {kind!r} ({', '.join(['prepared', *loaders])})")
    views = loaders[kind]()
    if views.points is None:
        raise DataFormatError(str(cfg.input.get("model_dir", cfg.input.get("scene_dir"))), "points3D", "no points")
    pts = cfg.points
    points = filter_colmap_points(views.points, pts.max_reprojection_error, pts.min_track_length)
    return views, points.xyz


def clean_points(xyz: np.ndarray, cfg: DictConfig) -> np.ndarray:
    """Statistical then radius outlier removal with the published defaults (``cfg.points``)."""
    pts = cfg.points
    xyz = xyz[statistical_outlier_removal(xyz, pts.stat_nb_neighbors, pts.stat_std_ratio)]
    xyz = xyz[radius_outlier_removal(xyz, pts.radius_nb_points, pts.radius_m)]
    if len(xyz) == 0:
        raise ValueError("no points left after cleaning: check points.* (radius_m, radius_nb_points, stat_std_ratio)")
    warning = gravity_alignment_warning(xyz)
    if warning:
        log.warning(f"the points do not look gravity-aligned (z-up): {warning}")
    return xyz


def tile_points(raw_points: np.ndarray, cfg: DictConfig, cleaned: bool = False) -> SceneTiling:
    """Points (cleaned first unless ``cleaned``) -> the chunk tiling of the published rules; an error if no chunk
    keeps enough points."""
    points = raw_points if cleaned else clean_points(raw_points, cfg)
    tiling = tile_scene(points, cfg.chunk_size_factor, cfg.min_overlap_factor, cfg.padding_factor,
                        cfg.min_points_per_chunk)
    if not tiling.chunks:
        raise ValueError(f"no chunk holds min_points_per_chunk={cfg.min_points_per_chunk} cleaned points")
    return tiling


def prepare_views(views: PosedImages, tiling: SceneTiling, cfg: DictConfig, size: int):
    """Select ``num_imgs_per_scene`` views that see the chunks, square-crop, resize: ``images [N, 3, S, S]``
    (premultiplied), ``w2c``, ``K`` and the selected indices."""
    idx = select_images(views.w2c, views.K, tiling.chunks, int(cfg.num_imgs_per_scene))
    if len(idx) == 0:
        raise ValueError("no input camera sees any chunk (40 % projected-box rule): check the poses and the tiling")
    chosen = views.subset(idx)
    square = all(w == h for w, h in chosen.sizes)
    chosen = chosen if square and cfg.input.get("square_crop") is None else chosen.with_square_crops(
        cfg.input.get("square_crop") or "center", size)
    imgs = []
    for i in range(len(chosen)):
        rgba = chosen.load_image(i)
        if rgba.shape[0] != size:
            rgba = np.asarray(Image.fromarray(rgba).resize((size, size), Image.Resampling.LANCZOS))
        rgba = rgba.astype(np.float32) / 255.0
        imgs.append(torch.from_numpy(rgba[..., :3] * rgba[..., 3:4]).permute(2, 0, 1))
    return torch.stack(imgs), chosen.w2c, chosen.K, idx


# ---------------------------------------------------------------------------------------------- outputs
def write_outputs(out: Path, recon: Reconstruction, tiling: SceneTiling, images: torch.Tensor, w2c, K,
                  cfg: DictConfig) -> None:
    import trimesh

    from genrecon.geometry.mesh import PBRMaterial, PBRMesh
    from genrecon.pipelines.glb import export_glb, split_mesh_by_chunk
    from genrecon.render.embree import EmbreeRasterizer
    from genrecon.render.shading import render_views

    colours = (recon.vertex_attrs[:, :3] * 255).round().astype(np.uint8)
    trimesh.Trimesh(recon.vertices, recon.faces, vertex_colors=colours, process=False).export(out / "mesh.ply")
    mesh = PBRMesh(recon.vertices, recon.faces, np.zeros(len(recon.faces), np.int32),
                   [PBRMaterial("recon", (1.0, 1.0, 1.0))], vertex_color=recon.vertex_attrs[:, :3])
    n_prev = min(4, len(images))
    size = max(256, images.shape[-1])  # previews are for people: at least 256 px per view
    renders = render_views(mesh, EmbreeRasterizer(), w2c[:n_prev], K[:n_prev], size, size)
    inputs = torch.nn.functional.interpolate(images[:n_prev], size=(size, size), mode="bilinear")
    sheet = np.concatenate([
        np.concatenate([(inputs[i].permute(1, 2, 0).numpy() * 255).astype(np.uint8), renders.rgba[i, ..., :3]], 0)
        for i in range(n_prev)
    ], 1)
    Image.fromarray(sheet).save(out / "preview.png")
    parts = split_mesh_by_chunk(recon.vertices, recon.faces, tiling.centers)
    export_glb(out / "scene.glb", parts, (recon.fine_coords, recon.attrs, recon.fine_origin, recon.fine_voxel_m),
               texture_size=int(cfg.glb.texture_size), decimate_to=cfg.glb.get("simplify_faces"),
               workers=int(cfg.glb.get("workers", 1)))


@task_wrapper
def infer(cfg: DictConfig, ctx: TaskContext) -> dict[str, Any]:
    require_complete(cfg)
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    ctx.output_dir = str(out)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          "cpu" if cfg.device == "auto" else cfg.device)
    timer = PhaseTimer(device)
    with timer.phase("load_checkpoints"):
        ckpt_dir = Path(cfg.ckpt_dir)
        stages = {name: load_stage(ckpt_dir / f"{name}.ckpt", expected_stage=name, device=device) for name in STAGES}
    with timer.phase("load_inputs"):
        views, raw_points = load_input(cfg)
    with timer.phase("points_and_tiling"):
        points = clean_points(raw_points, cfg)
        tiling = tile_points(points, cfg, cleaned=True)
        size = int(stages["ss_flow"].hparams["image_size"])
        images, w2c, K, idx = prepare_views(views, tiling, cfg, size)
    settings = ReconstructionSettings(
        samplers=OmegaConf.to_container(cfg.samplers, resolve=True), occ_threshold=cfg.occ_threshold,
        ss_draw_mean=str(cfg.ss_draw_mean),
        boundary_width=int(cfg.boundary_width) if cfg.boundary_sensitive else 0,
        proj_batch_voxels=int(cfg.proj_batch_voxels), chunks_per_group=int(cfg.chunks_per_group), seed=int(cfg.seed),
    )
    reconstructor = SceneReconstructor(stages, settings, device)
    reconstructor.timer = timer
    recon = reconstructor(images, w2c, K, tiling, points)
    with timer.phase("export"):
        (out / "views.json").write_text(json.dumps({"views": [int(i) for i in idx]}))
        write_outputs(out, recon, tiling, images, w2c, K, cfg)
    summary = {**timer.summary(), **recon.stats, "chunk_edge_m": tiling.edge_m, "num_views": int(len(idx)),
               "dropped_chunks": int(tiling.dropped), "device": str(device)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    log.info(f"scene.glb written to {out} ({summary['total_seconds']:.1f} s, {summary['chunks']} chunks)")
    return summary
