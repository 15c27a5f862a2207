"""Quality benchmark (issue 8): GenRecon variants against TSDF fusion of ground-truth depth on held-out rooms.

    python benchmarks/quality.py --scenes-dir data/synthetic_small --split val \
        --variant genrecon=ckpt/genrecon --variant noproj=ckpt/noproj --views 8 --preset small \
        --out logs/quality [--parallel-variants] [--num-scenes 8]

Steps (every entry point runs as a subprocess, as scripts/demo.py does):

1. For each variant and scene, ``infer.py input=prepared input.scene_dir=<scene> ckpt_dir=<CKPT_DIR>
   num_imgs_per_scene=<views> preset=<preset> device=<device> paths.log_dir=<out>/<variant>`` with
   ``GENRECON_RUN_NAME=<scene_id>``: the reconstruction lands in ``<out>/<variant>/infer/runs/<scene_id>/``.
   Exit code, wall time and infer's ``summary.json`` (per-phase seconds, peak memory, chunks) are recorded in
   ``<out>/<variant>/records/<scene_id>.json``, the console output in ``<out>/<variant>/logs/<scene_id>.log``.
   A failed scene is recorded with the tail of its log and the benchmark goes on. ``--parallel-variants`` runs
   the variants side by side, variant i on GPU ``i mod <visible GPUs>`` (``CUDA_VISIBLE_DEVICES``).
2. TSDF reference: the ground-truth depth maps of the same input views the first variant used (its
   ``views.json``; if no variant produced one, the views are chosen exactly as infer.py chooses them) are
   fused by ``genrecon.pipelines.tsdf.tsdf_fusion`` (``--tsdf-voxel``, truncation 4 voxels, on CUDA when
   available) into ``<out>/tsdf/infer/runs/<scene_id>/{mesh.ply, views.json, summary.json}``.
3. ``eval.py pred_dir=<out>/<name>/infer/runs gt_dir=<scenes> scenes=[...] paths.log_dir=<out>/<name>`` for
   each variant and the TSDF (results in ``<out>/<name>/eval/runs/eval/results.json``); if the run over all
   scenes fails, each scene is scored on its own so one bad mesh does not lose the others.
4. ``<out>/quality.json`` (also printed to stdout as one JSON object), ``<out>/quality.md`` and
   ``<out>/quality.png`` (per scene: an input view, the ground truth and every method rendered from it).

Progress goes to stderr, one line per step. ``--reuse`` keeps the finished reconstructions of an earlier
run into the same ``--out`` (use it to continue a run that was interrupted). Infinite values (the Chamfer
distance of a scene whose prediction is empty after the envelope crop) are written as ``null`` in the JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TSDF = "tsdf"
# Column order of the tables; keys of eval.py's per-scene rows.
METRICS = ("chamfer_m", "f_harmonic", "f_arithmetic", "precision", "recall", "normal_consistency")
METRIC_HEADERS = ("CD (m)", "F_harm@10cm", "F_arith@10cm", "P@10cm", "R@10cm", "NC")
LOG_TAIL_LINES = 40
_print_lock = threading.Lock()


def log(message: str) -> None:
    with _print_lock:
        print(f"[quality {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- arguments
def _variant(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=CKPT_DIR, got {text!r}")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name == TSDF:
        raise argparse.ArgumentTypeError(
            f"variant name {name!r}: use letters, digits, '_', '-', '.' (not {TSDF!r})")
    return name, path


def _override(text: str) -> str:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected a Hydra override KEY=VALUE, got {text!r}")
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenes-dir", required=True, type=Path,
                   help="prepared scene folders <dir>/<scene_id>/{scene.json, mesh.ply, views/}; the dataset "
                        "root (holding scenes/, shards/, manifest.json) is accepted too")
    p.add_argument("--scenes", nargs="+", metavar="ID",
                   help="scene ids (default: all, or --split / --num-scenes)")
    p.add_argument("--split", choices=("val", "train"),
                   help="only the rooms of this split of the prepared dataset (read from its shards' "
                        "meta.json, as prepare.py wrote them; val = the held-out rooms)")
    p.add_argument("--num-scenes", type=int, metavar="K", help="the last K scene ids (natural sort order)")
    p.add_argument("--variant", action="append", type=_variant, required=True, metavar="NAME=CKPT_DIR",
                   help="repeatable; CKPT_DIR holds ss_vae.ckpt ... tex_flow.ckpt; the first is the main "
                        "model, the second the ablation it is compared with")
    p.add_argument("--views", type=int, default=8, help="infer.py num_imgs_per_scene")
    p.add_argument("--preset", default="small", help="infer.py preset=...")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--out", type=Path, default=ROOT / "logs" / "quality")
    p.add_argument("--tsdf", action=argparse.BooleanOptionalAction, default=True, help="TSDF reference")
    p.add_argument("--tsdf-voxel", type=float, default=0.02,
                   help="TSDF voxel size in metres (truncation = 4 voxels)")
    p.add_argument("--infer-arg", action="append", type=_override, default=[], metavar="KEY=VALUE",
                   help="extra Hydra override for infer.py (repeatable), e.g. glb.texture_size=512")
    p.add_argument("--eval-arg", action="append", type=_override, default=[], metavar="KEY=VALUE",
                   help="extra Hydra override for eval.py (repeatable), e.g. samples=100000")
    p.add_argument("--parallel-variants", action="store_true",
                   help="run the variants concurrently, variant i with CUDA_VISIBLE_DEVICES = i mod #GPUs "
                        "(the evaluations run concurrently too)")
    p.add_argument("--infer-timeout", type=float, default=0, help="seconds per infer.py run; 0 = no limit")
    p.add_argument("--reuse", action="store_true",
                   help="keep reconstructions that an earlier run into --out finished (scene.glb present)")
    p.add_argument("--time-budget", type=float, default=0,
                   help="seconds after which no new infer.py run starts (the rest is reported as skipped, "
                        "the report is still written); rerun the same command with --reuse to go on. "
                        "0 = no limit")
    p.add_argument("--figure-scenes", type=int, default=12, help="rows of quality.png (0: no picture)")
    p.add_argument("--figure-size", type=int, default=256, help="tile width of quality.png in pixels")
    args = p.parse_args(argv)
    names = [n for n, _ in args.variant]
    if len(set(names)) != len(names):
        p.error(f"variant names must differ: {names}")
    if args.views < 1 or args.tsdf_voxel <= 0:
        p.error("--views must be >= 1 and --tsdf-voxel > 0")
    return args


# ---------------------------------------------------------------------------------------------- scenes
def natural_key(text: str) -> list[Any]:
    """``synthetic_0_10`` after ``synthetic_0_9``: digit runs compare as numbers."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _is_scene(folder: Path) -> bool:
    return (folder / "scene.json").is_file()


def locate_scenes(path: Path) -> tuple[Path, Path | None]:
    """``(folder of scene folders, dataset root with manifest.json / shards or None)`` for ``--scenes-dir``,
    which may name the scenes folder or the dataset root above it."""
    path = path.expanduser().resolve()
    if not path.is_dir():
        raise SystemExit(f"--scenes-dir: no folder {path}")
    if (path / "scenes").is_dir() and not any(_is_scene(c) for c in path.iterdir() if c.is_dir()):
        path = path / "scenes"
    root = path.parent
    has_root = (root / "manifest.json").is_file() or (root / "shards").is_dir()
    return path, (root if has_root else None)


def all_scene_ids(scenes_dir: Path) -> list[str]:
    return sorted((c.name for c in scenes_dir.iterdir() if c.is_dir() and _is_scene(c)), key=natural_key)


def split_scene_ids(root: Path | None, split: str, available: list[str]) -> list[str]:
    """The rooms of ``split``: the ``scene_id`` of every chunk in ``<root>/shards/<split>-*.tar`` (prepare.py
    splits by room, never by chunk). Without shards, the manifest's count of held-out items taken from the
    end of the natural order (prepare.py holds out the last items), with a warning."""
    if root is None:
        raise SystemExit(f"--split {split}: no manifest.json or shards/ next to the scenes folder")
    ids: set[str] = set()
    for shard in sorted((root / "shards").glob(f"{split}-*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.name.endswith("meta.json"):
                    ids.add(str(json.load(tar.extractfile(member))["scene_id"]))
    if ids:
        missing = sorted(ids - set(available))
        if missing:
            log(f"warning: {len(missing)} {split} rooms have no scene folder: {missing[:5]}")
        return [s for s in available if s in ids]
    manifest = root / "manifest.json"
    if not manifest.is_file():
        raise SystemExit(f"--split {split}: no {split}-*.tar shards and no manifest.json in {root}")
    n_val = int(json.loads(manifest.read_text())["scenes"]["val_items"])
    log(f"warning: no {split} shards in {root / 'shards'}; taking the manifest's {n_val} held-out items as "
        f"the last {n_val} scene ids")
    return available[len(available) - n_val:] if split == "val" else available[: len(available) - n_val]


def select_scenes(args: argparse.Namespace, scenes_dir: Path, root: Path | None) -> list[str]:
    available = all_scene_ids(scenes_dir)
    if not available:
        raise SystemExit(f"no scene folders (with scene.json) in {scenes_dir}")
    if args.scenes:
        missing = [s for s in args.scenes if s not in available]
        if missing:
            raise SystemExit(f"--scenes: no scene folder for {missing} in {scenes_dir}")
        ids = list(args.scenes)
    else:
        ids = split_scene_ids(root, args.split, available) if args.split else available
    if args.num_scenes:
        ids = ids[-args.num_scenes:]
    if not ids:
        raise SystemExit("no scenes selected")
    return ids


# ---------------------------------------------------------------------------------------------- helpers
_SAFE_VALUE = re.compile(r"[A-Za-z0-9_./+\-@]+")


def hydra_value(value: Any) -> str:
    """A value for a Hydra override: plain when safe, otherwise single-quoted (paths with spaces etc.)."""
    text = str(value)
    if _SAFE_VALUE.fullmatch(text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def merge_overrides(base: list[str], extra: list[str]) -> list[str]:
    """``base`` overrides, dropping the keys that ``extra`` (the user's) sets, then ``extra``."""
    keys = {e.split("=", 1)[0].lstrip("+~") for e in extra}
    return [b for b in base if b.split("=", 1)[0].lstrip("+~") not in keys] + list(extra)


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


def last_error_line(text: str) -> str:
    """The last line of a log that names an error (the exception message), or ''."""
    for line in reversed(text.splitlines()):
        if re.search(r"(Error|Exception|error:)", line) and "HYDRA_FULL_ERROR" not in line:
            return line.strip()[:300]
    return ""


def finite_or_none(value: Any) -> Any:
    """Strict JSON: non-finite floats become None, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


def gpu_assignment(num_variants: int, env: dict[str, str] | None = None, device_count: int | None = None
                   ) -> list[str | None]:
    """``CUDA_VISIBLE_DEVICES`` of variant i under ``--parallel-variants``: GPU ``i mod count`` of the GPUs
    this process sees (an existing ``CUDA_VISIBLE_DEVICES`` list is respected); None for all without GPUs."""
    env = os.environ if env is None else env
    if device_count is None:
        import torch

        device_count = torch.cuda.device_count()
    if device_count <= 0:
        return [None] * num_variants
    visible = env.get("CUDA_VISIBLE_DEVICES")
    ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else []
    ids = ids[:device_count] or [str(i) for i in range(device_count)]
    return [ids[i % len(ids)] for i in range(num_variants)]


def run_in_threads(jobs: list[Any], parallel: bool) -> list[Any]:
    """Call each job (a zero-argument callable), in threads when ``parallel``; the results in order."""
    if not parallel or len(jobs) < 2:
        return [job() for job in jobs]
    results: list[Any] = [None] * len(jobs)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            results[i] = jobs[i]()
        except BaseException as exc:  # surfaced below, after every thread has ended
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


# ---------------------------------------------------------------------------------------------- inference
def infer_overrides(args: argparse.Namespace, scene_dir: Path, ckpt_dir: str | Path, log_dir: Path
                    ) -> list[str]:
    base = ["input=prepared", f"input.scene_dir={hydra_value(scene_dir)}",
            f"ckpt_dir={hydra_value(ckpt_dir)}", f"num_imgs_per_scene={args.views}", f"preset={args.preset}",
            f"device={args.device}", f"paths.log_dir={hydra_value(log_dir)}"]
    return merge_overrides(base, args.infer_arg)


def summarise_infer(summary: dict[str, Any]) -> dict[str, Any]:
    phases = summary.get("phases", {})
    peaks_gpu = [p["peak_gpu_mb"] for p in phases.values() if "peak_gpu_mb" in p]
    peaks_rss = [p["peak_rss_mb"] for p in phases.values() if "peak_rss_mb" in p]
    return {
        "infer_seconds": summary.get("total_seconds"),
        "phase_seconds": {k: p.get("seconds") for k, p in phases.items()},
        "peak_gpu_mb": max(peaks_gpu) if peaks_gpu else None,
        "peak_rss_mb": max(peaks_rss) if peaks_rss else None,
        **{k: summary.get(k) for k in ("chunks", "faces", "num_views", "coarse_voxels", "fine_voxels",
                                       "dropped_chunks", "chunk_edge_m", "device")},
    }


def run_infer(args: argparse.Namespace, variant: str, ckpt_dir: str, scene_id: str, scenes_dir: Path,
              cuda_devices: str | None, label: str) -> dict[str, Any]:
    """One ``infer.py`` run; returns (and writes) its record."""
    base = args.out / variant
    skipped = {"variant": variant, "scene_id": scene_id, "ok": False, "skipped": True,
               "error": "skipped: --time-budget spent"}
    run_dir = base / "infer" / "runs" / scene_id
    record_path = base / "records" / f"{scene_id}.json"
    log_path = base / "logs" / f"{scene_id}.log"
    if args.reuse and record_path.is_file() and (run_dir / "scene.glb").is_file():
        record = json.loads(record_path.read_text())
        if record.get("ok"):
            record["reused"] = True
            log(f"[{variant} {label}] {scene_id}: reused ({record['seconds']:.1f} s earlier)")
            return record
    if args.time_budget and time.perf_counter() - args.start_time > args.time_budget:
        log(f"[{variant} {label}] {scene_id}: skipped (--time-budget {args.time_budget:g} s spent)")
        return skipped
    shutil.rmtree(run_dir, ignore_errors=True)  # a stale mesh.ply must not count as this run's result
    record_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(ROOT / "infer.py"),
           *infer_overrides(args, scenes_dir / scene_id, Path(ckpt_dir).expanduser().resolve(), base)]
    env = dict(os.environ, GENRECON_RUN_NAME=scene_id, PYTHONUNBUFFERED="1")
    if cuda_devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = cuda_devices
    gpu = f" (CUDA_VISIBLE_DEVICES={cuda_devices})" if cuda_devices is not None else ""
    log(f"[{variant} {label}] {scene_id}: infer ...{gpu}")
    start = time.perf_counter()
    timed_out = False
    with open(log_path, "w") as fh:
        fh.write("$ " + shlex.join(cmd) + "\n")
        fh.flush()
        try:
            rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, check=False,
                                timeout=args.infer_timeout or None).returncode
        except subprocess.TimeoutExpired:
            rc, timed_out = -9, True
    seconds = time.perf_counter() - start
    ok = rc == 0 and (run_dir / "mesh.ply").is_file() and (run_dir / "views.json").is_file()
    record: dict[str, Any] = {
        "variant": variant, "scene_id": scene_id, "ok": ok, "returncode": rc, "timed_out": timed_out,
        "seconds": round(seconds, 3), "run_dir": str(run_dir), "log": str(log_path),
        "command": shlex.join(cmd), "cuda_visible_devices": cuda_devices,
    }
    if (run_dir / "summary.json").is_file():
        record["summary"] = json.loads((run_dir / "summary.json").read_text())
        record.update(summarise_infer(record["summary"]))
    if (run_dir / "views.json").is_file():
        record["views"] = json.loads((run_dir / "views.json").read_text())["views"]
    if not ok:
        why = "timed out" if timed_out else f"exit code {rc}" if rc else "no mesh.ply / views.json"
        record["log_tail"] = tail(log_path)
        message = last_error_line(record["log_tail"])
        record["error"] = f"{why}: {message}" if message else why
        log(f"[{variant} {label}] {scene_id}: FAILED ({why}) after {seconds:.1f} s; log {log_path}\n"
            + "\n".join("    " + line for line in record["log_tail"].splitlines()[-8:]))
    else:
        gpu = f", peak GPU {record['peak_gpu_mb']:.0f} MB" if record.get("peak_gpu_mb") else ""
        log(f"[{variant} {label}] {scene_id}: ok in {seconds:.1f} s (infer {record.get('infer_seconds')} s, "
            f"{record.get('chunks')} chunks, {record.get('num_views')} views, {record.get('faces')} faces"
            f"{gpu})")
    record_path.write_text(json.dumps(finite_or_none(record), indent=1))
    return record


def run_variant(args: argparse.Namespace, variant: str, ckpt_dir: str, scene_ids: list[str], scenes_dir: Path,
                cuda_devices: str | None) -> dict[str, dict[str, Any]]:
    n = len(scene_ids)
    return {s: run_infer(args, variant, ckpt_dir, s, scenes_dir, cuda_devices, f"{i + 1}/{n}")
            for i, s in enumerate(scene_ids)}


# ---------------------------------------------------------------------------------------------- TSDF
def compute_views(args: argparse.Namespace, scene_dir: Path) -> list[int]:
    """The input views infer.py would choose for this scene with these overrides: cleaned points -> tiling ->
    ``select_images`` (evenly spaced along capture order among the cameras that see a chunk)."""
    from hydra.core.global_hydra import GlobalHydra

    from genrecon.geometry.tiling import select_images
    from genrecon.tasks.infer import load_input, tile_points
    from genrecon.utils.config import compose_entry_config

    cfg = compose_entry_config(infer_overrides(args, scene_dir, "unused", args.out / "unused"), "infer")
    GlobalHydra.instance().clear()
    views, raw_points = load_input(cfg)
    tiling = tile_points(raw_points, cfg)
    return [int(i) for i in select_images(views.w2c, views.K, tiling.chunks, int(cfg.num_imgs_per_scene))]


def tsdf_views(args: argparse.Namespace, scene_id: str, scenes_dir: Path, variants: list[str],
               records: dict[str, dict[str, dict[str, Any]]]) -> tuple[list[int], str, list[str]]:
    """``(views, where they came from, notes)``: the first variant's ``views.json`` that exists, else the
    views computed as infer.py would. Notes flag variants that used other views."""
    chosen, source = None, None
    notes = []
    for variant in variants:
        views = records.get(variant, {}).get(scene_id, {}).get("views")
        if views is None:
            continue
        if chosen is None:
            chosen, source = [int(v) for v in views], f"views.json of {variant}"
        elif [int(v) for v in views] != chosen:
            notes.append(f"{variant} used views {views}, not {chosen}")
    if chosen is None:
        chosen, source = compute_views(args, scenes_dir / scene_id), "computed as infer.py selects them"
    return chosen, source, notes


def tsdf_device(choice: str):
    import torch

    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda")


def run_tsdf(args: argparse.Namespace, scene_id: str, scenes_dir: Path, views: list[int], source: str,
             label: str) -> dict[str, Any]:
    """Fuse the ground-truth depth maps of ``views`` into ``<out>/tsdf/infer/runs/<scene_id>/mesh.ply``."""
    import numpy as np
    import torch
    import trimesh

    from genrecon.pipelines.tsdf import tsdf_fusion
    from genrecon.render.shading import load_depth_png

    run_dir = args.out / TSDF / "infer" / "runs" / scene_id
    record: dict[str, Any] = {"variant": TSDF, "scene_id": scene_id, "views": views, "view_source": source,
                              "run_dir": str(run_dir), "voxel_size_m": args.tsdf_voxel,
                              "trunc_m": 4 * args.tsdf_voxel}
    summary_path = run_dir / "summary.json"
    if args.reuse and summary_path.is_file() and (run_dir / "mesh.ply").is_file():
        old = json.loads(summary_path.read_text())
        if old.get("views") == views and old.get("voxel_size_m") == args.tsdf_voxel:
            log(f"[{TSDF} {label}] {scene_id}: reused ({old['seconds']:.1f} s earlier)")
            return {**record, **old, "ok": True, "reused": True}
    shutil.rmtree(run_dir, ignore_errors=True)
    start = time.perf_counter()
    try:
        device = tsdf_device(args.device)
        folder = scenes_dir / scene_id
        meta = json.loads((folder / "scene.json").read_text())
        w2c = np.asarray(meta["w2c"], np.float64)[views]
        K = np.asarray(meta["intrinsics"], np.float64)[views]
        depths = [load_depth_png(folder / "views" / f"depth_{v:03d}.png") for v in views]
        if len({d.shape for d in depths}) != 1:
            raise ValueError(f"depth maps of different sizes: {sorted({d.shape for d in depths})}")
        depth = torch.from_numpy(np.stack(depths))

        def fuse(d: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
            return tsdf_fusion(d, w2c, K, voxel_size=args.tsdf_voxel, trunc=4 * args.tsdf_voxel)

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            try:
                vertices, faces = fuse(depth.to(device))
                torch.cuda.synchronize(device)
                record["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
            except torch.cuda.OutOfMemoryError:
                log(f"[{TSDF} {label}] {scene_id}: out of GPU memory, fusing on the CPU")
                torch.cuda.empty_cache()
                device = torch.device("cpu")
                vertices, faces = fuse(depth)
        else:
            vertices, faces = fuse(depth)
        seconds = time.perf_counter() - start
        if len(faces) == 0:
            raise ValueError("the fused surface is empty")
        run_dir.mkdir(parents=True, exist_ok=True)
        trimesh.Trimesh(vertices, faces, process=False).export(run_dir / "mesh.ply")
        (run_dir / "views.json").write_text(json.dumps({"views": views}))
        record.update(ok=True, seconds=round(seconds, 3), faces=len(faces), vertices=len(vertices),
                      device=str(device))
        summary_path.write_text(json.dumps(record, indent=1))
        log(f"[{TSDF} {label}] {scene_id}: ok in {seconds:.1f} s on {device} ({len(views)} views from "
            f"{source}, {len(faces)} faces)")
    except Exception as exc:  # recorded; the benchmark goes on
        import traceback

        record.update(ok=False, seconds=round(time.perf_counter() - start, 3),
                      error=f"{type(exc).__name__}: {exc}", log_tail=traceback.format_exc()[-3000:])
        log(f"[{TSDF} {label}] {scene_id}: FAILED: {record['error']}")
    return record


# ---------------------------------------------------------------------------------------------- evaluation
def eval_command(args: argparse.Namespace, name: str, scene_ids: list[str], scenes_dir: Path) -> list[str]:
    scenes = "[" + ",".join("'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'" for s in scene_ids) + "]"
    base = [f"pred_dir={hydra_value(args.out / name / 'infer' / 'runs')}",
            f"gt_dir={hydra_value(scenes_dir)}", f"scenes={scenes}",
            f"paths.log_dir={hydra_value(args.out / name)}"]
    return [sys.executable, str(ROOT / "eval.py"), *merge_overrides(base, args.eval_arg)]


def _eval_once(args: argparse.Namespace, name: str, scene_ids: list[str], scenes_dir: Path, run_name: str
               ) -> tuple[int, dict[str, Any] | None, str, Path]:
    cmd = eval_command(args, name, scene_ids, scenes_dir)
    out_dir = args.out / name / "eval" / "runs" / run_name
    results_path = out_dir / "results.json"
    results_path.unlink(missing_ok=True)
    log_path = args.out / name / "logs" / f"{run_name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, GENRECON_RUN_NAME=run_name, PYTHONUNBUFFERED="1")
    with open(log_path, "w") as fh:
        fh.write("$ " + shlex.join(cmd) + "\n")
        fh.flush()
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT,
                            check=False).returncode
    results = None
    if rc == 0 and results_path.is_file():
        # eval.py writes Infinity for an empty prediction's Chamfer distance; Python's json reads it
        results = json.loads(results_path.read_text())
    return rc, results, shlex.join(cmd), log_path


def run_eval(args: argparse.Namespace, name: str, scene_ids: list[str], scenes_dir: Path) -> dict[str, Any]:
    """Score ``name``'s reconstructions of ``scene_ids``: per-scene rows (eval.py's), failures, commands."""
    record: dict[str, Any] = {"name": name, "rows": {}, "failures": {}, "commands": []}
    if not scene_ids:
        log(f"[eval {name}] nothing to score")
        return record
    log(f"[eval {name}] {len(scene_ids)} scenes ...")
    start = time.perf_counter()
    rc, results, cmd, log_path = _eval_once(args, name, scene_ids, scenes_dir, "eval")
    record["commands"].append(cmd)
    if results is not None:
        record["rows"] = {r["scene_id"]: r for r in results["scenes"]}
        record["results_json"] = str(args.out / name / "eval" / "runs" / "eval" / "results.json")
    else:
        log(f"[eval {name}] failed (exit code {rc}, log {log_path}); scoring the scenes one by one")
        for scene_id in scene_ids:
            rc1, res1, cmd1, log1 = _eval_once(args, name, [scene_id], scenes_dir, f"eval_{scene_id}")
            record["commands"].append(cmd1)
            if res1 is not None:
                record["rows"][scene_id] = res1["scenes"][0]
            else:
                log_tail = tail(log1)
                error = f"eval.py exit code {rc1}: {last_error_line(log_tail)}"
                record["failures"][scene_id] = {"error": error, "log": str(log1), "log_tail": log_tail}
                log(f"[eval {name}] {scene_id}: FAILED (log {log1})")
    record["seconds"] = round(time.perf_counter() - start, 3)
    for scene_id, row in record["rows"].items():
        log(f"[eval {name}] {scene_id}: " + " ".join(f"{k}={row[k]:.4f}" for k in METRICS))
    log(f"[eval {name}] done in {record['seconds']:.1f} s")
    return record


def mean_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Equal-weight means over scenes, as eval.py averages them."""
    return {k: mean([float(r[k]) for r in rows]) for k in METRICS}


# ---------------------------------------------------------------------------------------------- picture
def _grey_tile(w: int, h: int, text: str):
    from PIL import Image, ImageDraw

    tile = Image.new("RGB", (w, h), (128, 128, 128))
    ImageDraw.Draw(tile).text((8, h // 2 - 6), text, fill=(235, 235, 235))
    return tile


def _render_mesh(path: Path, w2c, K, w: int, h: int):
    """Shaded render of a PLY (vertex colours if it has them, light grey otherwise) from one camera."""
    import numpy as np
    import trimesh
    from PIL import Image

    from genrecon.geometry.mesh import PBRMaterial, PBRMesh
    from genrecon.render.embree import EmbreeRasterizer
    from genrecon.render.shading import render_views

    m = trimesh.load(path, force="mesh", process=False)
    if len(m.faces) == 0:
        return _grey_tile(w, h, "empty mesh")
    colours = None
    if getattr(m.visual, "kind", None) == "vertex":
        colours = np.asarray(m.visual.vertex_colors, np.float32)[:, :3] / 255.0
    elif getattr(m.visual, "kind", None) == "face":
        # per-face colours -> vertex colours (average of the faces that share a vertex is fine for a picture)
        fc = np.asarray(m.visual.face_colors, np.float32)[:, :3] / 255.0
        colours = np.zeros((len(m.vertices), 3), np.float32)
        count = np.zeros(len(m.vertices), np.float32)
        for k in range(3):
            np.add.at(colours, m.faces[:, k], fc)
            np.add.at(count, m.faces[:, k], 1.0)
        colours /= np.maximum(count, 1.0)[:, None]
    base = (1.0, 1.0, 1.0) if colours is not None else (0.75, 0.75, 0.75)
    mesh = PBRMesh(np.asarray(m.vertices), np.asarray(m.faces), np.zeros(len(m.faces), np.int32),
                   [PBRMaterial("m", base, roughness=0.8)], vertex_color=colours)
    rgba = render_views(mesh, EmbreeRasterizer(), np.asarray(w2c)[None], np.asarray(K)[None], w, h).rgba[0]
    rgb = rgba[..., :3].copy()
    rgb[rgba[..., 3] == 0] = (40, 40, 48)
    return Image.fromarray(rgb)


def make_figure(args: argparse.Namespace, path: Path, scene_ids: list[str], scenes_dir: Path,
                methods: list[tuple[str, str]], scene_views: dict[str, list[int]]) -> None:
    """Rows: scenes; columns: an input view, the ground truth and each method rendered from that camera."""
    import numpy as np
    from PIL import Image, ImageDraw

    tile_w = int(args.figure_size)
    columns = ["input view", "ground truth"] + [label for label, _ in methods]
    rows = []
    for scene_id in scene_ids[: args.figure_scenes]:
        folder = scenes_dir / scene_id
        views = scene_views.get(scene_id) or [0]
        view = int(views[len(views) // 2])
        try:
            meta = json.loads((folder / "scene.json").read_text())
            w0, h0 = (int(s) for s in meta["image_size"])
            tile_h = max(16, round(tile_w * h0 / w0))
            w2c, K = np.asarray(meta["w2c"])[view], np.asarray(meta["intrinsics"])[view]
        except Exception as exc:  # an unreadable scene.json: a row of grey tiles
            tile_h = tile_w * 3 // 4
            rows.append([_grey_tile(tile_w, tile_h, f"scene.json: {type(exc).__name__}") for _ in columns])
            continue
        tiles = []
        try:
            rgba = Image.open(folder / "views" / f"rgba_{view:03d}.png").convert("RGBA")
            bg = Image.new("RGBA", rgba.size, (40, 40, 48, 255))
            tiles.append(Image.alpha_composite(bg, rgba).convert("RGB").resize((tile_w, tile_h)))
        except Exception as exc:
            tiles.append(_grey_tile(tile_w, tile_h, f"no input view ({type(exc).__name__})"))
        for mesh_path in [folder / "mesh.ply"] + [Path(d) / scene_id / "mesh.ply" for _, d in methods]:
            try:
                tiles.append(_render_mesh(mesh_path, w2c, K, tile_w, tile_h) if mesh_path.is_file()
                             else _grey_tile(tile_w, tile_h, "missing"))
            except Exception as exc:  # a picture must never stop the benchmark
                tiles.append(_grey_tile(tile_w, tile_h, f"render failed: {type(exc).__name__}"))
        draw = ImageDraw.Draw(tiles[0])
        draw.rectangle((0, 0, 8 + 7 * len(f"{scene_id} view {view}"), 14), fill=(0, 0, 0))
        draw.text((4, 2), f"{scene_id} view {view}", fill=(255, 255, 255))
        rows.append(tiles)
    if not rows:
        return
    header_h, pad = 20, 4
    width = len(columns) * (tile_w + pad) + pad
    height = header_h + sum(r[0].size[1] + pad for r in rows) + pad
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for c, label in enumerate(columns):
        draw.text((pad + c * (tile_w + pad) + 4, 4), label[: tile_w // 6], fill=(0, 0, 0))
    y = header_h
    for tiles in rows:
        for c, tile in enumerate(tiles):
            sheet.paste(tile, (pad + c * (tile_w + pad), y))
        y += tiles[0].size[1] + pad
    sheet.save(path)


# ---------------------------------------------------------------------------------------------- report
def machine_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "platform": platform.platform(), "cpu_count": os.cpu_count(),
                            "cpu": platform.processor()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info["cuda_available"] = torch.cuda.is_available()
    if info["cuda_available"]:
        info["cuda"] = torch.version.cuda
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    cpu = f"CPU ({info['cpu']}, {info['cpu_count']} cores)"
    info["device"] = f"{info['gpus'][0]} x{len(info['gpus'])}" if info.get("gpus") else cpu
    try:
        git = ["git", "-C", str(ROOT)]
        info["git_commit"] = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True,
                                            timeout=10, check=False).stdout.strip()
        info["git_dirty"] = bool(subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"],
                                                capture_output=True, text=True, timeout=10,
                                                check=False).stdout.strip())
    except (OSError, subprocess.SubprocessError):  # no git: the report goes without the commit
        pass
    return info


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if math.isinf(value):
            return "∞"
        return f"{value:.{digits}f}"
    return str(value)


def compare_lines(report: dict[str, Any], variants: list[str], tsdf_label: str) -> list[str]:
    """The verdicts (markdown bullets): the main variant against the first ablation on F@10cm, and each of
    them against the TSDF reference, on the scenes both methods scored. Also fills ``report["comparison"]``
    and ``report["tsdf_gap"]``."""
    methods = report["methods"]
    lines = []

    def common(a: str, b: str) -> list[str]:
        return sorted(set(methods[a]["per_scene"]) & set(methods[b]["per_scene"]), key=natural_key)

    def means(name: str, scenes: list[str]) -> dict[str, float]:
        return mean_metrics([methods[name]["per_scene"][s] for s in scenes])

    main = variants[0]
    if len(variants) >= 2:
        other = variants[1]
        scenes = common(main, other)
        if scenes:
            a, b = means(main, scenes), means(other, scenes)
            d_h, d_a = a["f_harmonic"] - b["f_harmonic"], a["f_arithmetic"] - b["f_arithmetic"]
            per_a, per_b = methods[main]["per_scene"], methods[other]["per_scene"]
            wins = sum(per_a[s]["f_harmonic"] > per_b[s]["f_harmonic"] for s in scenes)
            verdict = "beats" if d_h > 0 else "does not beat"
            lines.append(
                f"- **{main} {verdict} {other} on F@10cm** ({len(scenes)} common scenes): "
                f"F_harm {a['f_harmonic']:.4f} vs {b['f_harmonic']:.4f} ({d_h:+.4f}), "
                f"F_arith {a['f_arithmetic']:.4f} vs {b['f_arithmetic']:.4f} ({d_a:+.4f}); "
                f"CD {_fmt(a['chamfer_m'])} vs {_fmt(b['chamfer_m'])} m; higher F_harm in "
                f"{wins}/{len(scenes)} scenes.")
            report["comparison"] = {"main": main, "ablation": other, "scenes": scenes,
                                    "main_beats_ablation_f_harm": bool(d_h > 0), "delta_f_harmonic": d_h,
                                    "delta_f_arithmetic": d_a, "main_wins_scenes": wins}
        else:
            lines.append(f"- {main} vs {other}: no scene scored by both.")
    if TSDF in methods:
        for name in variants[:2]:
            scenes = common(name, TSDF)
            if not scenes:
                lines.append(f"- gap of {name} to the TSDF reference: no scene scored by both.")
                continue
            a, t = means(name, scenes), means(TSDF, scenes)
            gap = {k: a[k] - t[k] for k in METRICS}
            lines.append(
                f"- gap of {name} to {tsdf_label} ({len(scenes)} scenes): "
                f"F_harm {a['f_harmonic']:.4f} vs {t['f_harmonic']:.4f} ({gap['f_harmonic']:+.4f}), "
                f"F_arith {a['f_arithmetic']:.4f} vs {t['f_arithmetic']:.4f} ({gap['f_arithmetic']:+.4f}), "
                f"CD {_fmt(a['chamfer_m'])} vs {_fmt(t['chamfer_m'])} m, "
                f"NC {a['normal_consistency']:.4f} vs {t['normal_consistency']:.4f}.")
            deltas = {f"delta_{k}": v for k, v in gap.items()}
            report.setdefault("tsdf_gap", {})[name] = {"scenes": scenes, **deltas}
    return lines


def markdown(report: dict[str, Any], variants: list[str], tsdf_label: str, verdicts: list[str]) -> str:
    methods, cfg, machine = report["methods"], report["config"], report["machine"]
    names = [n for n in [*variants, TSDF] if n in methods]
    n = len(report["scenes"])
    shown = ", ".join(report["scenes"][:12]) + (" …" if n > 12 else "")
    commit = machine.get("git_commit", "?")[:10] + (" (dirty)" if machine.get("git_dirty") else "")
    mode = "variants run in parallel" if cfg["parallel_variants"] else "variants run one after another"
    out = [
        "# GenRecon quality benchmark", "",
        f"{report['date']} · {machine['device']} · torch {machine['torch']} · commit {commit}", "",
        (f"{n} scenes ({shown}) from `{cfg['scenes_dir']}`; {cfg['views']} input views; preset "
         f"`{cfg['preset']}`; device `{cfg['device']}`; TSDF voxel {cfg['tsdf_voxel']} m, truncation "
         f"{4 * cfg['tsdf_voxel']:g} m; {mode}."), "",
    ]
    if report.get("skipped"):
        count = sum(len(v) for v in report["skipped"].values())
        out += [(f"**Incomplete**: {count} runs were skipped by --time-budget; rerun the same command with "
                 "`--reuse` to finish them."), ""]
    out += [
        ("Means over the scenes each method scored (eval.py: prediction cropped to the observation envelope, "
         "10 cm threshold). Seconds per scene: infer.py wall time including process start and checkpoint "
         "loading; TSDF: the fusion."), "",
        "| method | scenes | " + " | ".join(METRIC_HEADERS) + " | s / scene |",
        "|---|---|" + "---|" * (len(METRIC_HEADERS) + 1),
    ]
    for name in names:
        m = methods[name]
        label = tsdf_label if name == TSDF else name
        values = " | ".join(_fmt(m["mean"].get(k)) for k in METRICS)
        out.append(f"| {label} | {m['scenes_scored']}/{n} | {values} | {_fmt(m['seconds_per_scene'], 1)} |")
    out += ["", *verdicts, "", "## Per scene", "",
            "| scene | method | " + " | ".join(METRIC_HEADERS) + " | faces in envelope | s |",
            "|---|---|" + "---|" * (len(METRIC_HEADERS) + 2)]
    for scene_id in report["scenes"]:
        for name in names:
            m = methods[name]
            label = "TSDF" if name == TSDF else name
            row = m["per_scene"].get(scene_id)
            if row is None:
                why = m["failures"].get(scene_id, {}).get("error", "not scored").replace("|", "/")[:120]
                status = why if why.startswith("skipped") else f"failed: {why}"
                out.append(f"| {scene_id} | {label} | {status} |" + " |" * (len(METRIC_HEADERS) + 1))
                continue
            values = " | ".join(_fmt(row.get(k)) for k in METRICS)
            faces = row.get("pred_faces_in_envelope", "–")
            secs = _fmt(m["seconds"].get(scene_id), 1)
            out.append(f"| {scene_id} | {label} | {values} | {faces} | {secs} |")
    timing = [(name, methods[name]["timings"]) for name in variants if methods[name]["timings"]]
    if timing:
        phases = list(dict.fromkeys(p for _, t in timing for p in t["phase_seconds"]))
        out += ["", "## Inference timings (mean seconds per scene; peaks: maximum over scenes)", "",
                "| variant | " + " | ".join(phases)
                + " | infer total | wall | chunks | peak GPU MB | peak RSS MB |",
                "|---|" + "---|" * (len(phases) + 5)]
        for name, t in timing:
            cells = [_fmt(t["phase_seconds"].get(p), 2) for p in phases]
            cells += [_fmt(t["infer_seconds"], 1), _fmt(t["wall_seconds"], 1), _fmt(t["chunks"], 1),
                      _fmt(t["peak_gpu_mb"], 0), _fmt(t["peak_rss_mb"], 0)]
            out.append(f"| {name} | " + " | ".join(cells) + " |")
    failures = [(name, s, f) for name in names for s, f in methods[name]["failures"].items()]
    if failures:
        out += ["", "## Failures", ""]
        for name, s, f in failures:
            out.append(f"- {name} / {s}: {f.get('error')}" + (f" (log `{f['log']}`)" if f.get("log") else ""))
    out += ["", ("Picture: `quality.png` (per scene: an input view, the ground truth and each method "
                 "rendered from that camera). Everything else: `quality.json`."), ""]
    return "\n".join(out)


def method_report(name: str, infer_records: dict[str, dict[str, Any]], evaluation: dict[str, Any],
                  scene_ids: list[str]) -> dict[str, Any]:
    per_scene = {s: evaluation["rows"][s] for s in scene_ids if s in evaluation["rows"]}
    failures: dict[str, Any] = {}
    for s in scene_ids:
        rec = infer_records.get(s)
        if rec is not None and not rec.get("ok"):
            keys = ("error", "returncode", "log", "log_tail")
            failures[s] = {k: rec[k] for k in keys if rec.get(k) is not None}
        elif s in evaluation["failures"]:
            failures[s] = evaluation["failures"][s]
    ok = [r for r in infer_records.values() if r.get("ok")]
    seconds = {s: r.get("seconds") for s, r in infer_records.items() if r.get("ok")}
    timings: dict[str, Any] = {}
    if name != TSDF and ok:
        phases = list(dict.fromkeys(p for r in ok for p in r.get("phase_seconds", {})))
        timings = {
            "phase_seconds": {p: mean([r["phase_seconds"][p] for r in ok if p in r.get("phase_seconds", {})])
                              for p in phases},
            "infer_seconds": mean([r["infer_seconds"] for r in ok if r.get("infer_seconds") is not None]),
            "wall_seconds": mean([r["seconds"] for r in ok]),
            "chunks": mean([r["chunks"] for r in ok if r.get("chunks") is not None]),
            "peak_gpu_mb": max([r["peak_gpu_mb"] for r in ok if r.get("peak_gpu_mb")], default=None),
            "peak_rss_mb": max([r["peak_rss_mb"] for r in ok if r.get("peak_rss_mb")], default=None),
        }
    return {
        "mean": mean_metrics(list(per_scene.values())) if per_scene else {k: float("nan") for k in METRICS},
        "scenes_scored": len(per_scene),
        "per_scene": per_scene,
        "seconds": seconds,
        "seconds_per_scene": mean(list(seconds.values())) if seconds else float("nan"),
        "timings": timings,
        "failures": failures,
        "infer": infer_records,
        "eval_seconds": evaluation.get("seconds"),
        "eval_commands": evaluation["commands"],
        "results_json": evaluation.get("results_json"),
    }


# ---------------------------------------------------------------------------------------------- main
def check_checkpoints(variants: list[tuple[str, str]]) -> None:
    """infer.py would fail on every scene without them: say so once, up front."""
    for name, ckpt in variants:
        stages = ("ss_vae", "shape_vae", "tex_vae", "ss_flow", "shape_flow", "tex_flow")
        missing = [f"{s}.ckpt" for s in stages if not (Path(ckpt).expanduser() / f"{s}.ckpt").is_file()]
        if missing:
            raise SystemExit(f"--variant {name}={ckpt}: missing {', '.join(missing)}")


def run_tsdf_all(args: argparse.Namespace, scene_ids: list[str], scenes_dir: Path, variants: list[str],
                 records: dict[str, dict[str, dict[str, Any]]], scene_views: dict[str, list[int]],
                 view_notes: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for i, scene_id in enumerate(scene_ids):
        label = f"{i + 1}/{len(scene_ids)}"
        if all(records[n][scene_id].get("skipped") for n in variants):
            out[scene_id] = {"variant": TSDF, "scene_id": scene_id, "ok": False, "skipped": True,
                             "error": "skipped: --time-budget spent"}
            continue
        try:
            views, source, notes = tsdf_views(args, scene_id, scenes_dir, variants, records)
        except Exception as exc:  # recorded; the benchmark goes on
            out[scene_id] = {"variant": TSDF, "scene_id": scene_id, "ok": False,
                             "error": f"choosing the views: {type(exc).__name__}: {exc}"}
            log(f"[{TSDF} {label}] {scene_id}: FAILED choosing the views: {exc}")
            continue
        if notes:
            view_notes[scene_id] = notes
            log(f"[{TSDF} {label}] {scene_id}: warning: " + "; ".join(notes))
        scene_views[scene_id] = views
        out[scene_id] = run_tsdf(args, scene_id, scenes_dir, views, source, label)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    start = args.start_time = time.perf_counter()
    args.out = args.out.expanduser().resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    scenes_dir, root = locate_scenes(args.scenes_dir)
    scene_ids = select_scenes(args, scenes_dir, root)
    variants = [name for name, _ in args.variant]
    check_checkpoints(args.variant)
    log(f"{len(scene_ids)} scenes from {scenes_dir}: {', '.join(scene_ids)}")
    log(f"variants: {', '.join(f'{n}={c}' for n, c in args.variant)}; out {args.out}")

    # 1. inference
    devices = gpu_assignment(len(variants)) if args.parallel_variants else [None] * len(variants)
    jobs = [lambda n=n, c=c, d=d: run_variant(args, n, c, scene_ids, scenes_dir, d)
            for (n, c), d in zip(args.variant, devices, strict=True)]
    records = dict(zip(variants, run_in_threads(jobs, args.parallel_variants), strict=True))

    # 2. TSDF reference
    scene_views: dict[str, list[int]] = {}
    view_notes: dict[str, list[str]] = {}
    if args.tsdf:
        records[TSDF] = run_tsdf_all(args, scene_ids, scenes_dir, variants, records, scene_views, view_notes)
    for scene_id in scene_ids:
        views = next((records[n][scene_id]["views"] for n in variants if records[n][scene_id].get("views")),
                     None)
        if scene_id not in scene_views and views:
            scene_views[scene_id] = views

    # 3. evaluation
    names = [*variants, *([TSDF] if args.tsdf else [])]
    eval_jobs = [lambda n=n: run_eval(args, n, [s for s in scene_ids if records[n][s].get("ok")], scenes_dir)
                 for n in names]
    evaluations = dict(zip(names, run_in_threads(eval_jobs, args.parallel_variants), strict=True))

    # 4. report
    n_views = max((len(v) for v in scene_views.values()), default=args.views)
    tsdf_label = f"TSDF of GT depth (same {n_views} views)"
    report: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine_info(),
        "config": {"scenes_dir": str(scenes_dir), "variants": dict(args.variant), "views": args.views,
                   "preset": args.preset, "device": args.device, "tsdf": args.tsdf,
                   "tsdf_voxel": args.tsdf_voxel, "infer_args": args.infer_arg, "eval_args": args.eval_arg,
                   "parallel_variants": args.parallel_variants,
                   "cuda_visible_devices": dict(zip(variants, devices, strict=True)), "out": str(args.out),
                   "argv": sys.argv if argv is None else ["benchmarks/quality.py", *argv]},
        "scenes": scene_ids,
        "views": scene_views,
        "view_mismatches": view_notes,
        "methods": {n: method_report(n, records[n], evaluations[n], scene_ids) for n in names},
    }
    report["means"] = {n: report["methods"][n]["mean"] for n in names}
    verdicts = compare_lines(report, variants, tsdf_label)
    report["verdicts"] = [v.removeprefix("- ").replace("**", "") for v in verdicts]
    report["failures"] = {n: m["failures"] for n, m in report["methods"].items() if m["failures"]}
    report["tsdf_label"] = tsdf_label
    report["skipped"] = {n: sorted((s for s, r in records[n].items() if r.get("skipped")), key=natural_key)
                         for n in names if any(r.get("skipped") for r in records[n].values())}
    report["complete"] = not report["skipped"]
    figure = args.out / "quality.png"
    figure.unlink(missing_ok=True)
    if args.figure_scenes > 0:
        t0 = time.perf_counter()
        try:
            methods = [(n, str(args.out / n / "infer" / "runs")) for n in variants]
            if args.tsdf:
                methods.append(("TSDF", str(args.out / TSDF / "infer" / "runs")))
            make_figure(args, figure, scene_ids, scenes_dir, methods, scene_views)
            log(f"picture {figure} in {time.perf_counter() - t0:.1f} s")
        except Exception as exc:  # a picture must never cost the numbers
            log(f"warning: picture failed: {type(exc).__name__}: {exc}")
    report["outputs"] = {"json": str(args.out / "quality.json"), "markdown": str(args.out / "quality.md"),
                         "picture": str(figure) if figure.is_file() else None}
    report["seconds"] = round(time.perf_counter() - start, 3)
    (args.out / "quality.md").write_text(markdown(report, variants, tsdf_label, verdicts))  # inf shown as ∞
    report = finite_or_none(report)
    text = json.dumps(report, indent=1, allow_nan=False)
    (args.out / "quality.json").write_text(text)
    log(f"done in {report['seconds']:.1f} s: {args.out / 'quality.md'}")
    for line in verdicts:
        log(line.replace("**", ""))
    print(text, flush=True)
    return report


if __name__ == "__main__":
    main()
