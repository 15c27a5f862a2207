"""How good are plane-sweep stereo points from a chunk's views? Settings against the SS stage's default, one run.

For the first held-out chunks of a shard directory (raw ``prepare.py`` shards or latent shards: views, cameras and
64³ occupancy), with the datamodule's evaluation choice of views, every setting runs
:func:`genrecon.geometry.stereo.sweep_stereo` + :func:`~genrecon.geometry.stereo.stereo_points` as
``stage.module.point_depth={source: stereo, ...}`` would, and reports per chunk:

- ``points_in_chunk``: the confident points inside the chunk cube;
- ``within_vox``: the share of them in an occupied voxel, within one voxel (26-neighbourhood) and within two;
- ``truth_covered``: the share of the occupied voxels with a point within one voxel;
- ``seen_covered_<class>``: the same share among the occupied voxels some of the chunk's views see, per kind of
  surface (:func:`genrecon.metrics.occupancy.surface_classes`: floor, other horizontal, vertical), and
  ``seen_share_<class>``: how many of that kind's voxels the views see;
- ``seconds`` of the sweep on this machine.

The first setting is the stage's default (``baseline``); the JSON compares each with it.

    python benchmarks/stereo_quality.py /tmp/gr/data/synthetic_small/shards --chunks 4 [--out stereo.json]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from datamodules.chunks import collate  # noqa: E402
from flow_quality import POINT_PRESETS, load_chunks, occupancy_visibility  # noqa: E402
from genrecon.metrics.occupancy import surface_classes  # noqa: E402
from genrecon.models.point_depth import SimulatedPoints, stereo_points_of_views  # noqa: E402
from genrecon.utils.jsonl import emit_json  # noqa: E402

# name -> SimulatedPoints fields (stereo ones); the first is the SS stage's default
SETTINGS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "refine": {"stereo_refine": True},
    "refine_consistent1": {"stereo_refine": True, "stereo_consistent": 1},
    "refine_consistent2": {"stereo_refine": True, "stereo_consistent": 2},
    "refine_consistent1_128px": {"stereo_refine": True, "stereo_consistent": 1, "stereo_size": 128},
    # looser matching, checked by more views: more coverage of faintly textured walls at the same accuracy?
    "score0.5_consistent2_128px": {"stereo_refine": True, "stereo_consistent": 2, "stereo_size": 128,
                                   "stereo_min_score": 0.5},
    "score0.3_consistent3_128px": {"stereo_refine": True, "stereo_consistent": 3, "stereo_size": 128,
                                   "stereo_min_score": 0.3},
    # candidates 1.3 voxels apart instead of 5.3 (192 over four chunk edges): fine textures (wood grain) peak
    # between the 48 default candidates and were missed (session 27, CPU)
    "depths192_score0.5_consistent2_128px": {"stereo_refine": True, "stereo_consistent": 2, "stereo_size": 128,
                                             "stereo_min_score": 0.5, "stereo_depths": 192},
    "depths192_score0.5_consistent1_128px": {"stereo_refine": True, "stereo_consistent": 1, "stereo_size": 128,
                                             "stereo_min_score": 0.5, "stereo_depths": 192},
    # + as many horizontal planes (floors seen at grazing angles): flow_quality.py's --point-depth=preset=...,
    # session 27's device scorings st2 and st1
    "horizontal_consistent2": {k: v for k, v in POINT_PRESETS["stereo_h2"].items() if k != "source"},
    "horizontal_consistent1": {k: v for k, v in POINT_PRESETS["stereo_h1"].items() if k != "source"},
    # + vertical planes in 2 / 4 orientations: walls and furniture sides seen at grazing angles (session 30)
    "hv2orient_consistent2": {k: v for k, v in {**POINT_PRESETS["stereo_h2"], "stereo_vertical": 2}.items()
                              if k != "source"},
    "hv4orient_consistent2": {k: v for k, v in POINT_PRESETS["stereo_hv2"].items() if k != "source"},
}
MAX_DEPTH = 4.0  # the depth cue's range in chunk units (preset.flow.depth_cue.max_depth), the sweep's candidates


def score_points(points: torch.Tensor, sample: torch.Tensor, occ: torch.Tensor,
                 seen: torch.Tensor | None = None) -> dict[str, list[float | None]]:
    """Per chunk: points inside the cube, their distance to the occupancy ``[B, R, R, R]`` bool (None: no point),
    its coverage, and with ``seen [B, R, R, R]`` (the occupied voxels the views see) the coverage of the seen
    voxels of each kind of surface."""
    b, r = occ.shape[0], occ.shape[-1]
    grids = [occ.float()[:, None]]
    for _ in range(2):
        grids.append(F.max_pool3d(grids[-1], 3, 1, 1))
    inside = (points.abs() <= 0.5).all(-1)
    idx = ((points[inside] + 0.5) * r).floor().long().clamp(0, r - 1)
    s = sample[inside]
    hits = torch.zeros(b, r, r, r)
    hits[s, idx[:, 0], idx[:, 1], idx[:, 2]] = 1
    near = F.max_pool3d(hits[:, None], 3, 1, 1)[:, 0] > 0
    out: dict[str, list[float | None]] = {"points_in_chunk": [], "within_vox_0": [], "within_vox_1": [], "within_vox_2": [],
                                   "truth_covered": []}
    for k in range(b):
        mine = s == k
        out["points_in_chunk"].append(int(mine.sum()))
        for d, g in enumerate(grids):
            on = g[k, 0, idx[mine, 0], idx[mine, 1], idx[mine, 2]] > 0
            out[f"within_vox_{d}"].append(round(on.float().mean().item(), 4) if mine.any() else None)
        out["truth_covered"].append(round(((near[k] & occ[k]).sum() / occ[k].sum().clamp(min=1)).item(), 4))
        if seen is None:
            continue
        for name, voxels in surface_classes(occ[k]).items():
            shown = voxels & seen[k]
            out.setdefault(f"seen_share_{name}", []).append(
                round((shown.sum() / voxels.sum()).item(), 4) if voxels.any() else None)
            out.setdefault(f"seen_covered_{name}", []).append(
                round(((near[k] & shown).sum() / shown.sum()).item(), 4) if shown.any() else None)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("shards", type=Path, help="a shard directory with val-*.tar (views, cameras, occupancy)")
    p.add_argument("--chunks", type=int, default=4)
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    _, items = load_chunks(args.shards, ["views", "occupancy"], args.chunks, args.views, args.seed, 1)
    batch = collate(items)
    views = batch["views"].float()
    b = views.shape[0]
    occ = batch["occupancy"][:, 0] > 0.5
    seen = torch.stack([occupancy_visibility(o, item) for o, item in zip(occ, items)])
    results: dict[str, Any] = {}
    names = ["baseline", *[s for s in args.settings if s != "baseline"]]
    for name in names:
        cfg = SimulatedPoints(source="stereo", **SETTINGS[name])
        start = time.perf_counter()
        points, sample = stereo_points_of_views(views, batch["w2c"], batch["intrinsics"], batch["view_mask"], cfg,
                                                MAX_DEPTH)  # as the SS stage finds them
        per_chunk = score_points(points, sample, occ, seen)
        means = {k: round(sum(x for x in v if x is not None) / max(1, sum(x is not None for x in v)), 4)
                 for k, v in per_chunk.items()}  # over the chunks with points
        results[name] = {"setting": SETTINGS[name], "seconds": round(time.perf_counter() - start, 2),
                         "mean": means, "per_chunk": per_chunk}
        if name != "baseline":
            base = results["baseline"]["mean"]
            results[name]["minus_baseline"] = {k: round(means[k] - base[k], 4) for k in means}
        print(f"{name}: {means}", file=sys.stderr, flush=True)
    emit_json({"shards": str(args.shards), "chunks": b, "views": args.views, "occupancy_resolution": occ.shape[-1],
               "device": "cpu", "results": results}, args.out)


if __name__ == "__main__":
    main()
