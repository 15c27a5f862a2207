"""Body of ``eval.py``: score a folder of reconstructions against prepared ground-truth scenes.

Inputs (see docs/evaluation.md): ``<pred_dir>/<scene_id>/mesh.ply`` (or ``scene.glb``), the prepared scene
``<gt_dir>/<scene_id>/`` (``scene.json``, ``mesh.ply``, ``views/depth_XXX.png``) and the indices of the input
views (config ``views``, else ``<pred_dir>/<scene_id>/views.json`` or ``summary.json``). Outputs
``results.json`` and ``results.md`` (per scene and mean) in ``output_dir``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, ListConfig

from genrecon.metrics.envelope import ObservationEnvelope
from genrecon.metrics.surface import (
    ChamferDistance,
    NormalConsistency,
    SurfaceFScore,
    chamfer,
    normal_consistency,
    precision_recall_fscore,
    sample_mesh,
    surface_distances,
)
from genrecon.render.shading import load_depth_png
from genrecon.utils.config import require_complete, resolved
from genrecon.utils.logging import RankedLogger
from genrecon.utils.task import TaskContext, task_wrapper

log = RankedLogger(__name__)

PRED_FILES = ("mesh.ply", "scene.glb")
VIEW_FILES = ("views.json", "summary.json")
METRICS = ("chamfer_m", "precision", "recall", "f_arithmetic", "f_harmonic", "normal_consistency")
# glTF is y-up; this maps a y-up GLB into the z-up world (+90° about x: (x, y, z) -> (x, -z, y)).
Y_UP_TO_Z_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
SceneMetrics = tuple[ChamferDistance, SurfaceFScore, NormalConsistency]


@dataclass
class GTScene:
    """A prepared scene ``folder``: ground-truth ``vertices [V, 3]``, ``faces [F, 3]``, cameras
    ``w2c [N, 4, 4]``, ``K [N, 3, 3]`` and ``image_size (W, H)`` of its views."""

    folder: Path
    vertices: np.ndarray
    faces: np.ndarray
    w2c: np.ndarray
    K: np.ndarray
    image_size: tuple[int, int]


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{what}: missing file {path}")
    return path


def load_mesh(path: Path, glb_up_axis: str = "y") -> tuple[np.ndarray, np.ndarray]:
    """``vertices [V, 3]`` float64 and ``faces [F, 3]`` int64 of a PLY or GLB (all primitives merged, in the
    z-up world; GLBs are turned from ``glb_up_axis`` up)."""
    import trimesh

    mesh = trimesh.load(path, force="mesh", process=False)
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    if path.suffix == ".glb" and glb_up_axis == "y":
        vertices = vertices @ Y_UP_TO_Z_UP.T
    elif path.suffix == ".glb" and glb_up_axis != "z":
        raise ValueError(f"glb_up_axis must be 'y' or 'z', got {glb_up_axis!r}")
    return vertices, np.asarray(mesh.faces, dtype=np.int64).reshape(-1, 3)


def find_prediction(pred_dir: Path, scene_id: str) -> Path:
    """The reconstruction of ``scene_id``: ``mesh.ply`` if present, else ``scene.glb``."""
    for name in PRED_FILES:
        if (pred_dir / scene_id / name).is_file():
            return pred_dir / scene_id / name
    raise FileNotFoundError(f"reconstruction of {scene_id!r}: none of {PRED_FILES} in {pred_dir / scene_id}")


def prediction_scenes(pred_dir: Path) -> list[str]:
    """Scene ids of the sub-folders of ``pred_dir`` that hold a reconstruction, sorted."""
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"pred_dir: missing folder {pred_dir}")
    ids = sorted(p.name for p in pred_dir.iterdir() if any((p / n).is_file() for n in PRED_FILES))
    if not ids:
        raise FileNotFoundError(f"pred_dir {pred_dir}: no sub-folder holds one of {PRED_FILES}")
    return ids


def load_gt_scene(gt_dir: Path, scene_id: str) -> GTScene:
    """The prepared scene ``<gt_dir>/<scene_id>``: its ``scene.json`` and ``mesh.ply``."""
    folder = gt_dir / scene_id
    meta = json.loads(_require(folder / "scene.json", f"ground truth of {scene_id!r}").read_text())
    vertices, faces = load_mesh(_require(folder / "mesh.ply", f"ground truth of {scene_id!r}"))
    size = meta["image_size"]
    return GTScene(folder, vertices, faces, np.asarray(meta["w2c"], np.float64),
                   np.asarray(meta["intrinsics"], np.float64), (int(size[0]), int(size[1])))


def input_views(views: Any, pred_scene_dir: Path, num_views: int) -> list[int]:
    """The input view indices: ``views`` from the config (a list, or ``"all"``), else the ``views`` list of
    ``views.json`` (or a bare list there) or ``summary.json`` in the reconstruction's folder."""
    if views is None:
        for name in VIEW_FILES:
            path = pred_scene_dir / name
            if path.is_file():
                data = json.loads(path.read_text())
                views = data if isinstance(data, list) else data.get("views")
                if views is None:
                    raise KeyError(f"{path}: no 'views' list of input view indices")
                break
        else:
            raise FileNotFoundError(
                f"input views of {pred_scene_dir.name!r}: missing file {pred_scene_dir / VIEW_FILES[0]} "
                f"(or {VIEW_FILES[1]}); or set views=[...] or views=all"
            )
    indices = list(range(num_views)) if views == "all" else [int(v) for v in views]
    bad = [v for v in indices if not 0 <= v < num_views]
    if bad or not indices:
        raise ValueError(f"input views of {pred_scene_dir.name!r}: {indices} are not among the {num_views} views")
    return indices


def build_envelope(cfg: DictConfig, scene: GTScene, views: list[int]) -> ObservationEnvelope:
    """The observation envelope of the input ``views`` from their depth maps (``source: depth``) or from the
    ground-truth surface they see (``source: mesh``)."""
    if cfg.source == "depth":
        paths = [scene.folder / "views" / f"depth_{v:03d}.png" for v in views]
        depths = [load_depth_png(_require(p, "envelope source=depth")) for p in paths]
        return ObservationEnvelope.from_depth(depths, scene.w2c[views], scene.K[views], cfg.voxel_size_m,
                                              cfg.dilation_m)
    if cfg.source == "mesh":
        return ObservationEnvelope.from_mesh_visibility(scene.vertices, scene.faces, scene.w2c[views],
                                                        scene.K[views], *scene.image_size, cfg.voxel_size_m,
                                                        cfg.dilation_m)
    raise ValueError(f"envelope.source must be 'depth' or 'mesh', got {cfg.source!r}")


def _samples(vertices: np.ndarray, faces: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Surface samples and normals; empty arrays for a mesh without faces (cropped away entirely)."""
    if len(faces) == 0:
        return np.zeros((0, 3)), np.zeros((0, 3))
    return sample_mesh(vertices, faces, n, seed)


def score(pred: tuple[np.ndarray, np.ndarray], gt: tuple[np.ndarray, np.ndarray], cfg: DictConfig,
          metrics: SceneMetrics) -> dict[str, float]:
    """Metrics of one scene from meshes ``(vertices, faces)``; also accumulates them into ``metrics``."""
    gt_pts, gt_n = _samples(*gt, int(cfg.samples), int(cfg.seed))
    pred_pts, pred_n = _samples(*pred, int(cfg.samples), int(cfg.seed) + 1)
    match = surface_distances(pred_pts, gt_pts)  # one nearest-neighbour search shared by every metric
    cd, fs, nc = metrics
    cd.update(pred_pts, gt_pts, match)
    fs.update(pred_pts, gt_pts, match)
    nc.update(pred_pts, pred_n, gt_pts, gt_n, match)
    prf = precision_recall_fscore(pred_pts, gt_pts, fs.threshold, match)
    values = {"chamfer_m": chamfer(pred_pts, gt_pts, match), **prf,
              "normal_consistency": normal_consistency(pred_pts, pred_n, gt_pts, gt_n, nc.cutoff, match)}
    return {k: float(v) for k, v in values.items()}


def evaluate_scene(cfg: DictConfig, scene_id: str, metrics: SceneMetrics) -> dict[str, Any]:
    """Load, crop and score one scene; returns its row of the results table."""
    pred_dir, gt_dir = Path(cfg.pred_dir), Path(cfg.gt_dir)
    pred_path = find_prediction(pred_dir, scene_id)
    scene = load_gt_scene(gt_dir, scene_id)
    pred = load_mesh(pred_path, str(cfg.glb_up_axis))
    gt = (scene.vertices, scene.faces)
    row: dict[str, Any] = {"scene_id": scene_id, "prediction": str(pred_path), "pred_faces": len(pred[1])}
    env = cfg.envelope
    if env.enabled:
        views = input_views(cfg.views, pred_dir / scene_id, len(scene.w2c))
        envelope = build_envelope(env, scene, views)
        max_edge = env.get("max_edge_m")
        pred = envelope.crop_mesh(*pred, max_edge=max_edge)
        if env.crop_gt:
            gt = envelope.crop_mesh(*gt, max_edge=max_edge)
        row.update(views=views, pred_faces_in_envelope=len(pred[1]))
    row.update(score(pred, gt, cfg, metrics))
    return row


def markdown_table(rows: list[dict[str, Any]], mean: dict[str, float], threshold_m: float) -> str:
    """The results as a markdown table: one row per scene and the mean."""
    cm = f"{threshold_m * 100:g}cm"
    header = ["scene", "CD (m)", f"P@{cm}", f"R@{cm}", f"F_arith@{cm}", f"F_harm@{cm}", "NC"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, values in [(r["scene_id"], r) for r in rows] + [(f"**mean ({len(rows)})**", mean)]:
        lines.append("| " + " | ".join([name] + [f"{values[k]:.4f}" for k in METRICS]) + " |")
    return "\n".join(lines) + "\n"


@task_wrapper
def evaluate(cfg: DictConfig, ctx: TaskContext) -> dict[str, float]:
    """Score every reconstruction in ``cfg.pred_dir``; write ``results.json`` and ``results.md``; return the
    mean metrics."""
    require_complete(cfg)
    start = time.perf_counter()
    out = Path(cfg.output_dir)
    ctx.output_dir = str(out)
    scenes = list(cfg.scenes) if isinstance(cfg.scenes, ListConfig) else prediction_scenes(Path(cfg.pred_dir))
    metrics = (ChamferDistance(), SurfaceFScore(cfg.threshold_m), NormalConsistency(cfg.nc_cutoff_m))
    rows = []
    for scene_id in scenes:
        rows.append(evaluate_scene(cfg, str(scene_id), metrics))
        log.info(" ".join(f"{k}={rows[-1][k]:.4f}" for k in METRICS) + f"  [{scene_id}]")
    cd, fs, nc = (m.compute() for m in metrics)
    mean = {"chamfer_m": float(cd), **{k: float(v) for k, v in fs.items()}, "normal_consistency": float(nc)}
    out.mkdir(parents=True, exist_ok=True)
    results = {"mean": mean, "num_scenes": len(rows), "scenes": rows,
               "seconds": round(time.perf_counter() - start, 3), "config": resolved(cfg)}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(markdown_table(rows, mean, float(cfg.threshold_m)))
    log.info(f"mean over {len(rows)} scenes: " + " ".join(f"{k}={v:.4f}" for k, v in mean.items()))
    return mean
