"""Body of ``prepare.py``: scene source -> per-scene builds (in worker processes) -> shards and manifest."""

from __future__ import annotations

import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

from genrecon.data.camera_placement import CameraPlacementConfig
from genrecon.data.chunk_builder import ChunkBuildConfig, SceneBuild, build_scene
from genrecon.data.contact_sheet import write_contact_sheet
from genrecon.data.errors import DataFormatError
from genrecon.data.shards import AtomicShardWriter, encode_json
from genrecon.data.sources import SceneJob, scene_jobs
from genrecon.utils.config import require_complete, resolved
from genrecon.utils.logging import RankedLogger
from genrecon.utils.task import TaskContext, task_wrapper
from genrecon.utils.workers import spawn_pool

log = RankedLogger(__name__)


def build_config(cfg: DictConfig) -> ChunkBuildConfig:
    """The data-build settings from ``conf/prepare.yaml`` and the preset."""
    return ChunkBuildConfig(
        view_size=int(cfg.preset.image_size),
        render_size=int(cfg.preset.image_size * cfg.render.scale),
        ovoxel_resolution=int(cfg.preset.ovoxel_resolution),
        occupancy_resolution=int(cfg.preset.occupancy_resolution),
        chunks_per_scene=int(cfg.chunks.per_scene),
        edge_range_m=(float(cfg.chunks.edge_min_m), float(cfg.chunks.edge_max_m)),
        xy_margin_m=float(cfg.chunks.xy_margin_m),
        floor_offset_m=float(cfg.chunks.floor_offset_m),
        min_voxels=int(cfg.chunks.min_voxels),
        min_view_coverage=float(cfg.chunks.min_view_coverage),
        max_views=int(cfg.chunks.max_views),
        cameras=CameraPlacementConfig(min_views=int(cfg.render.min_cameras), max_views=int(cfg.render.max_cameras)),
    )


def _run_job(args: tuple) -> tuple[str, list[tuple[str, SceneBuild]], dict[str, int], str | None]:
    """Load one source item and build each of its scenes; worker-process entry point."""
    job, index, split, seed, build_cfg, rasterizer_cfg, scenes_root, on_error = args
    try:
        scenes, skipped = job.load()
    except DataFormatError as err:
        if on_error == "raise":
            raise
        return job.name, [], {}, str(err)
    rasterizer = hydra.utils.instantiate(rasterizer_cfg)
    builds = []
    for k, scene in enumerate(scenes):
        rng = np.random.default_rng([seed, index, k])
        folder = Path(scenes_root) / scene.scene_id
        builds.append((split, build_scene(scene, index, build_cfg, rasterizer, rng, folder, split)))
    return job.name, builds, skipped, None


def _val_indices(n: int, fraction: float, items: Any = None) -> set[int]:
    """The items of the val split: ``items`` where given, else the last ``round(n * fraction)`` items (at least
    one when there are two or more).

    ``items`` (``dataset.val_items``) is a list of item indices or a ``"start:stop"`` range. It keeps one
    held-out set while ``num_scenes`` grows: synthetic item ``i`` is the same room at any count (its seed is
    its index), so rooms 144-159 of 160 are held out of 320 too, and scores stay comparable chunk by chunk.
    """
    if items is None:
        n_val = min(n - 1, max(1, round(n * fraction))) if n >= 2 and fraction > 0 else 0
        return set(range(n - n_val, n))
    if isinstance(items, str):
        start, sep, stop = items.partition(":")
        try:
            chosen = list(range(int(start), int(stop))) if sep else [int(items)]
        except ValueError:
            raise ValueError(f"dataset.val_items: expected 'start:stop' or a list of item indices, "
                             f"got {items!r}") from None
    else:
        chosen = [int(i) for i in items]
    bad = [i for i in chosen if not 0 <= i < n]
    if bad or not chosen or len(set(chosen)) >= n:
        raise ValueError(f"dataset.val_items: {items!r} must name 1 to {n - 1} of the {n} items (indices "
                         f"0-{n - 1}){f'; out of range: {bad[:5]}' if bad else ''}")
    return set(chosen)


def _summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "min": float(arr.min()), "max": float(arr.max())}


@task_wrapper
def prepare(cfg: DictConfig, ctx: TaskContext) -> dict[str, Any]:
    """Run ``cfg.steps`` on the dataset ``cfg.dataset`` in ``cfg.dataset.root`` (see docs/data_format.md):
    ``build`` writes the chunk shards, ``encode`` adds the VAE latents (``encode.*_vae_ckpt``)."""
    require_complete(cfg)
    root = Path(cfg.dataset.root)
    ctx.output_dir = str(root)
    unknown = set(cfg.steps) - {"build", "encode"}
    if unknown:
        raise ValueError(f"steps: unknown step(s) {sorted(unknown)}; choose from build, encode")
    result: dict[str, Any] = {}
    if "build" in cfg.steps:
        result["build"] = build_dataset(cfg, root)
    if "encode" in cfg.steps:
        from genrecon.data.encode import encode_dataset

        result["encode"] = encode_dataset(root, samples_per_shard=int(cfg.shards.samples_per_shard), **cfg.encode)
        log.info(f"encoded latents: {result['encode']['samples']} -> {root / cfg.encode.out_dir}")
    return result


def build_dataset(cfg: DictConfig, root: Path) -> dict[str, Any]:
    """Scene source -> chunk shards, manifest and contact sheet in ``root``."""
    start = time.perf_counter()
    on_error = str(cfg.dataset.get("on_error", "raise"))
    jobs: list[SceneJob] = scene_jobs(cfg.dataset, on_error)
    val = _val_indices(len(jobs), float(cfg.dataset.val_fraction), cfg.dataset.get("val_items"))
    build_cfg = build_config(cfg)
    for stale in ("shards", "scenes"):
        shutil.rmtree(root / stale, ignore_errors=True)
    args = [
        (job, i, "val" if i in val else "train", int(cfg.dataset.seed), build_cfg, cfg.render.rasterizer,
         str(root / "scenes"), on_error)
        for i, job in enumerate(jobs)
    ]
    workers = max(1, int(cfg.num_workers))
    pool = spawn_pool(workers) if workers > 1 else None
    results = pool.imap(_run_job, args) if pool else map(_run_job, args)

    writers = {s: AtomicShardWriter(root / "shards", s, int(cfg.shards.samples_per_shard)) for s in ("train", "val")}
    skipped_items: dict[str, str] = {}
    skipped_counts: Counter[str] = Counter()
    stats: list[dict] = []
    timings: Counter[str] = Counter()
    dropped = scenes_built = cameras = 0
    sheet_rooms: list[dict] = []
    try:
        for name, builds, skipped, error in tqdm(results, total=len(args), desc="scenes", unit="item"):
            skipped_counts.update(skipped)
            if error is not None:
                skipped_items[name] = error
                continue
            for split, build in builds:
                for sample in build.samples:
                    writers[split].write(sample)
                scenes_built += 1
                cameras += build.num_cameras
                dropped += build.dropped_few_voxels
                stats.extend(build.chunk_stats)
                timings.update(build.timings_s)
                if len(sheet_rooms) < int(cfg.contact_sheet.rooms):
                    sheet_rooms.append(_sheet_room(build, int(cfg.contact_sheet.views_per_room)))
    except BaseException:
        for w in writers.values():
            w.__exit__(RuntimeError, None, None)
        raise
    finally:
        if pool:
            pool.close()
            pool.join()
    shards = {s: [p.name for p in w.close()] for s, w in writers.items()}
    counts = {s: w.count for s, w in writers.items()}
    if counts["train"] == 0:
        raise RuntimeError(f"no training chunks were written to {root / 'shards'}; see the manifest's skipped items")

    manifest = {
        "dataset": cfg.dataset.name,
        "preset": cfg.preset.name,
        "samples": counts,
        "shards": shards,
        "scenes": {"items": len(jobs), "built": scenes_built, "val_items": len(val), "cameras": cameras},
        "chunks": {"written": sum(counts.values()), "dropped_few_voxels": dropped},
        "skipped": {"items": skipped_items, "counts": dict(skipped_counts)},
        "statistics": {key: _summary([s[key] for s in stats]) for key in ("voxels", "views", "occupancy")},
        "timings_s": {**{k: round(v, 3) for k, v in timings.items()}, "total": round(time.perf_counter() - start, 3)},
        "config": resolved(cfg),
    }
    (root / "manifest.json").write_bytes(encode_json(manifest))
    if sheet_rooms:
        write_contact_sheet(sheet_rooms, root / "contact_sheet.png")
    log.info(f"wrote {counts} chunks to {root / 'shards'} in {manifest['timings_s']['total']:.1f} s")
    return manifest


def _sheet_room(build: SceneBuild, views: int) -> dict:
    return {
        "scene_id": build.scene_id,
        "floor_polygon": build.floor_polygon,
        "chunks": build.chunks,
        "camera_xy": build.camera_xy,
        "views": build.preview_views[:views],
        "w2c": build.preview_w2c[:views],
        "K": build.preview_K[:views],
    }
