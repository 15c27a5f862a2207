"""``prepare.py`` on the same rooms with each rasteriser backend: wall time, the task's own timings, and how far
the outputs differ from the first backend's (the baseline, measured in the same run).

Renders are two thirds of ``prepare.py``'s CPU time at the small preset (session 39: 1,733 of 2,604 CPU-seconds
for 320 rooms), and the first device call of every session spends 220 s on it; the GPU rasteriser is ~5 times
faster per view (``render_backends.py``). This measures what that buys the whole build::

    python benchmarks/prepare_rasteriser.py --rooms 32 --workers 15 --backends embree nvdiffrast --out r.json

nvdiffrast compiles its plugin on first use; the script does that once before timing and puts the built plugin on
the workers' ``PYTHONPATH`` (``../shared/reference/h100-measurements.md``).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGETS = {"embree": "genrecon.render.embree.EmbreeRasterizer",
           "nvdiffrast": "genrecon.render.nvdiffrast.NvdiffrastRasterizer"}


def nvdiffrast_env(env: dict[str, str]) -> dict[str, str]:
    """Build nvdiffrast's plugin once (untimed) and return ``env`` with the built plugin importable."""
    subprocess.run([sys.executable, "-c", "import nvdiffrast.torch as dr; dr.RasterizeCudaContext()"],
                   env=env, check=False, capture_output=True)
    plugin = sorted(glob.glob(os.path.expanduser("~/.cache/torch_extensions/*/nvdiffrast_plugin*")))
    if plugin:
        env = {**env, "PYTHONPATH": f"{env.get('PYTHONPATH', '')}:{plugin[0]}"}
    return env


def run_prepare(backend: str, root: Path, args: argparse.Namespace, env: dict[str, str]) -> dict:
    """One ``prepare.py`` build with ``backend``; its wall time and manifest."""
    cmd = [sys.executable, "prepare.py", f"preset={args.preset}", f"dataset.num_scenes={args.rooms}",
           f"num_workers={args.workers}", f"paths.data_dir={root}", f"paths.log_dir={root}/logs",
           f"render.rasterizer._target_={TARGETS[backend]}", f"render.scale={args.scale}",
           f"render.max_cameras={args.max_cameras}", *args.override]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        return {"backend": backend, "rc": proc.returncode, "wall_s": round(wall, 1), "tail": proc.stderr[-2000:]}
    path = next(root.glob("*/manifest.json"))  # the dataset folder prepare.py names after the preset
    manifest = json.loads(path.read_text())
    return {"backend": backend, "rc": 0, "wall_s": round(wall, 1), "timings_s": manifest["timings_s"],
            "chunks": manifest["chunks"], "samples": manifest["samples"], "cameras": manifest["scenes"]["cameras"],
            "dataset": str(path.parent)}


def samples(dataset: str) -> dict:
    """Every chunk sample of a built dataset (train and val shards), by key; views kept as PNG bytes until read."""
    import webdataset as wds

    from genrecon.data.shards import decode_chunk_sample

    # both splits, whatever exists: a build of one or two rooms may have no held-out shard
    urls = sorted(str(p) for p in (Path(dataset) / "shards").glob("*.tar"))
    pipe = wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples())
    return {s["__key__"]: decode_chunk_sample(s, views="lazy", parts=("occupancy",)) for s in pipe}


def compare(base: str, other: str) -> dict:
    """How ``other``'s chunks differ from ``base``'s: same keys and cameras, view pixels, occupancy."""
    a, b = samples(base), samples(other)
    common = sorted(set(a) & set(b))
    rgb_diff, alpha_agree, same_views, occ_equal, same_cameras = [], [], 0, 0, 0
    for key in common:
        sa, sb = a[key], b[key]
        occ_equal += int(np.array_equal(sa.occupancy, sb.occupancy))
        if len(sa.views) != len(sb.views):
            continue
        same_cameras += int(np.allclose(sa.w2c, sb.w2c) and np.allclose(sa.intrinsics, sb.intrinsics))
        same_views += 1
        va, vb = np.asarray(sa.views, np.float32), np.asarray(sb.views, np.float32)
        alpha_agree.append(float(((va[..., 3] > 127) == (vb[..., 3] > 127)).mean()))
        rgb_diff.append(float(np.abs(va[..., :3] - vb[..., :3]).mean()))
    return {"chunks_base": len(a), "chunks_other": len(b), "common": len(common), "same_view_count": same_views,
            "same_cameras": same_cameras, "occupancy_equal": occ_equal,
            "alpha_agreement": float(np.mean(alpha_agree)) if alpha_agree else None,
            "rgb_mean_abs_diff_0_255": float(np.mean(rgb_diff)) if rgb_diff else None}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rooms", type=int, default=32)
    p.add_argument("--workers", type=int, default=15)
    p.add_argument("--preset", default="small")
    # full_pipeline.py's prepare phase: room renders at the view size, at most 32 cameras a room
    p.add_argument("--scale", type=int, default=1, help="render.scale (full_pipeline.py: 1)")
    p.add_argument("--max-cameras", type=int, default=32, help="render.max_cameras (full_pipeline.py: 32)")
    p.add_argument("--backends", nargs="+", default=["embree", "nvdiffrast"], choices=sorted(TARGETS))
    p.add_argument("--root", type=Path, default=Path("/tmp/prepare_rasteriser"))
    p.add_argument("--override", action="append", default=[], help="extra prepare.py override (repeatable)")
    p.add_argument("--out", type=Path, default=None, help="JSON written after every build")
    args = p.parse_args(argv)
    env = dict(os.environ, PYTHONPATH=f"{ROOT}:{os.environ.get('PYTHONPATH', '')}")
    if "nvdiffrast" in args.backends:
        env = nvdiffrast_env(env)
    result: dict = {"rooms": args.rooms, "workers": args.workers, "preset": args.preset, "scale": args.scale,
                    "max_cameras": args.max_cameras, "runs": []}
    for i, backend in enumerate(args.backends):
        result["runs"].append(run_prepare(backend, args.root / f"{i}_{backend}", args, env))
        if args.out:
            args.out.write_text(json.dumps(result, indent=1))
    base = result["runs"][0]
    for run in result["runs"][1:]:
        if base["rc"] == 0 and run["rc"] == 0:
            run["speedup_wall"] = round(base["wall_s"] / run["wall_s"], 2)
            run["speedup_render"] = round(base["timings_s"]["render"] / max(run["timings_s"]["render"], 1e-9), 2)
            run["against_base"] = compare(base["dataset"], run["dataset"])
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
