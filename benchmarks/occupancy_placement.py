"""Where do SS samples put their voxels? Near misses, far misses and offsets, from saved grids (issue 5).

The SS flow's voxel-exact IoU at 64³ stays near 0.4 while 81 % of predicted and true voxels lie within one voxel
of each other (session 20). This splits each entry's errors of ``flow_quality.py --save-occupancy`` without
sampling again:

- ``fp_near`` / ``fp_far``: the share of predicted voxels that are false and lie within one voxel (26-neighbourhood)
  of a true voxel, or further away;
- ``fn_near`` / ``fn_far``: the share of true voxels that are missed and lie within one voxel of a predicted
  voxel, or further away;
- ``iou_best_shift`` and ``best_shift``: the IoU after moving the prediction by the integer shift in {-1, 0, 1}³
  that suits each chunk best, and the one shift that suits all chunks best (not (0, 0, 0): a systematic offset);
- ``iou_thin``: the IoU after keeping only the predicted voxels whose probability is a local maximum along the
  axis where it varies most (non-maximum suppression across the surface), for entries with probabilities;
- ``miss_distance``: how far each true voxel lies from the nearest predicted one (Euclidean, in voxel edges),
  as shares of the true voxels an evaluation view sees (``seen``) and of the rest (``hidden``) in the bins
  ``MISS_BINS`` (0: hit; up to √3: a 26-neighbour), pooled over the chunks: does the flow miss the surfaces its
  views show as far as the ones they hide?
- ``surface_recall``: the recall of the true voxels on each kind of surface (``surface_classes``: the floor, other
  horizontal surfaces, vertical ones), apart for those an evaluation view sees and the rest, pooled over the chunks,
  and ``surface_share`` (of the file): each kind's share of the true voxels and the share of it the views see.
  Session 30: vertical surfaces were 63 % of the true voxels, and samples scored with stereo's points found 10 % of
  the seen ones;
- ``view_bound`` (of the file, not of an entry): what the evaluation views allow at best. Per chunk the share of
  the true voxels within d voxels (Chebyshev: d dilations by the 26-neighbourhood) of a voxel the views see, for
  d = 0, 1, 2, 3: the IoU of an oracle that places every seen voxel exactly (exact depth) and adds exactly the
  true voxels within d of them (a perfect local prior behind the seen surfaces); its means and the chunks at or
  above 0.7.

    python benchmarks/occupancy_placement.py results/flow_quality_cell_x3_occupancy.npz [--out placement.json]

Prints one JSON object: per entry the mean of each measure and the per-chunk values.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from genrecon.metrics.occupancy import SURFACE_CLASSES, occupancy_fscore, occupancy_iou, surface_classes
from genrecon.utils.jsonl import emit_json

SHIFTS = list(itertools.product((-1, 0, 1), repeat=3))
# Upper edges (voxel edges) of the miss-distance bins [previous edge, edge): hit, a 26-neighbour (√3), further.
MISS_BINS = (0.5, 1.8, 3.0, 5.0, 8.0, float("inf"))


def unpack(bits: np.ndarray, resolution: int) -> np.ndarray:
    """``[n, R³/8]`` packed bits -> ``[n, R, R, R]`` bool (``np.packbits`` of C-order grids)."""
    return np.unpackbits(bits, axis=1)[:, : resolution**3].reshape(-1, resolution, resolution, resolution).astype(bool)


def shifted(grid: np.ndarray, shift: tuple[int, int, int]) -> np.ndarray:
    """The grid moved by an integer shift, zeros entering at the borders (no wrap-around)."""
    out = np.zeros_like(grid)
    src = tuple(slice(max(0, -s), grid.shape[a] - max(0, s)) for a, s in enumerate(shift))
    dst = tuple(slice(max(0, s), grid.shape[a] - max(0, -s)) for a, s in enumerate(shift))
    out[dst] = grid[src]
    return out


def _grids(grids: np.ndarray) -> torch.Tensor:
    """``[n, R, R, R]`` bool -> ``[n, 1, R, R, R]`` float, the layout of :mod:`genrecon.metrics.occupancy`."""
    return torch.from_numpy(np.ascontiguousarray(grids)).float()[:, None]


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Voxel-exact IoU of one ``[R, R, R]`` pair (:func:`occupancy_iou`)."""
    return float(occupancy_iou(_grids(pred[None]), _grids(truth[None]), 0.5)[0])


def thin(prob: np.ndarray, threshold: float) -> np.ndarray:
    """Voxels above ``threshold`` (a probability) that are a local maximum (>= both neighbours) of ``prob``
    along the axis with the largest absolute second difference there: the axis that crosses the surface."""
    p = torch.from_numpy(prob.astype(np.float32))
    padded = F.pad(p[None, None], (1, 1, 1, 1, 1, 1), mode="replicate")[0, 0]
    core = (slice(1, -1),) * 3
    keep, curvature = [], []
    for axis in range(3):
        lo = [slice(1, -1)] * 3
        hi = [slice(1, -1)] * 3
        lo[axis], hi[axis] = slice(0, -2), slice(2, None)
        before, after = padded[tuple(lo)], padded[tuple(hi)]
        keep.append((p >= before) & (p >= after))
        curvature.append((before + after - 2 * padded[core]).abs())
    axis = torch.stack(curvature).argmax(dim=0)
    peak = torch.stack(keep).gather(0, axis[None])[0]
    return ((p > threshold) & peak).numpy()


def placement(pred: np.ndarray, truth: np.ndarray, prob: np.ndarray | None = None,
              threshold: float = 0.5) -> dict[str, Any]:
    """Per-chunk measures of one entry: ``pred``/``truth`` ``[n, R, R, R]`` bool, ``prob`` the same shape in [0, 1].

    The near and far shares are differences of :func:`occupancy_fscore`'s precision and recall within one voxel
    and voxel-exact (its conventions for empty grids included)."""
    p, t = _grids(pred), _grids(truth)
    exact, within = occupancy_fscore(p, t, 0.5, tolerance=0), occupancy_fscore(p, t, 0.5, tolerance=1)
    out = {"iou": occupancy_iou(p, t, 0.5),
           "fp_near": within["precision"] - exact["precision"], "fp_far": 1 - within["precision"],
           "fn_near": within["recall"] - exact["recall"], "fn_far": 1 - within["recall"]}
    # [n, shifts]: each chunk's prediction moved by each shift, scored as a batch per shift
    per_shift = torch.stack([occupancy_iou(_grids(np.stack([shifted(g, s) for g in pred])), t, 0.5)
                             for s in SHIFTS], dim=1).numpy()
    out = {k: v.tolist() for k, v in out.items()}
    out["iou_best_shift"] = per_shift.max(axis=1).tolist()
    if prob is not None:
        out["iou_thin"] = occupancy_iou(_grids(np.stack([thin(q, threshold) for q in prob])), t, 0.5).tolist()
    best = int(per_shift.mean(axis=0).argmax())
    return {"mean": {k: float(np.mean(v)) for k, v in out.items()},
            "best_shift": list(SHIFTS[best]), "iou_at_best_shift": float(per_shift[:, best].mean()),
            "per_chunk": {k: [round(float(x), 5) for x in v] for k, v in out.items()}}


def miss_distance(pred: np.ndarray, truth: np.ndarray, seen: np.ndarray) -> dict[str, list[float]]:
    """Shares of the seen and of the hidden true voxels per distance bin (:data:`MISS_BINS`) to the nearest
    predicted voxel, pooled over chunks; ``[n, R, R, R]`` bool each. A chunk with no prediction counts its true
    voxels in the last bin."""
    counts = {"seen": np.zeros(len(MISS_BINS)), "hidden": np.zeros(len(MISS_BINS))}
    edges = np.array((-np.inf, *MISS_BINS))
    for p, t, s in zip(pred, truth, seen):
        dist = ndimage.distance_transform_edt(~p) if p.any() else np.full(p.shape, np.inf)
        for name, mask in (("seen", t & s), ("hidden", t & ~s)):
            counts[name] += np.histogram(dist[mask], bins=edges)[0]
    return {name: (c / max(c.sum(), 1)).tolist() for name, c in counts.items()}


def surface_recall(pred: np.ndarray, truth: np.ndarray, seen: np.ndarray) -> dict[str, dict[str, float | None]]:
    """Recall per kind of surface (:data:`SURFACE_CLASSES`) of the seen and of the hidden true voxels, pooled over
    the chunks; ``[n, R, R, R]`` bool each. None where a kind has no such voxel."""
    classes = surface_classes(torch.from_numpy(truth))
    p, s = torch.from_numpy(pred), torch.from_numpy(seen)
    out: dict[str, dict[str, float | None]] = {}
    for name in SURFACE_CLASSES:
        out[name] = {}
        for part, mask in (("seen", classes[name] & s), ("hidden", classes[name] & ~s)):
            n = int(mask.sum())
            out[name][part] = round(int((p & mask).sum()) / n, 5) if n else None
    return out


def surface_share(truth: np.ndarray, seen: np.ndarray) -> dict[str, dict[str, float]]:
    """Each kind of surface's share of the true voxels and the share of its voxels the views see (pooled)."""
    classes = surface_classes(torch.from_numpy(truth))
    total, s = max(int(truth.sum()), 1), torch.from_numpy(seen)
    return {name: {"of_truth": round(int(c.sum()) / total, 5),
                   "seen": round(int((c & s).sum()) / max(int(c.sum()), 1), 5)} for name, c in classes.items()}


def view_bound(truth: np.ndarray, seen: np.ndarray, distances: tuple[int, ...] = (0, 1, 2, 3)) -> dict[str, Any]:
    """The oracle IoU per distance d (see the module docstring): ``truth``, ``seen`` ``[n, R, R, R]`` bool.
    With the seen voxels as the prediction it is their recall within d voxels (``occupancy_fscore``)."""
    per_chunk = {f"d{d}": occupancy_fscore(_grids(seen), _grids(truth), 0.5, d)["recall"].tolist()
                 for d in distances}
    return {"mean": {k: float(np.mean(v)) for k, v in per_chunk.items()},
            "chunks_at_0.7": {k: int(np.sum(np.array(v) >= 0.7)) for k, v in per_chunk.items()},
            "per_chunk": {k: [round(x, 5) for x in v] for k, v in per_chunk.items()}}


def analyse(path: Path, threshold: float = 0.5) -> dict[str, Any]:
    """Every entry of one ``--save-occupancy`` file; ``threshold`` the probability :func:`thin` keeps above."""
    data = np.load(path)
    r = int(data["resolution"])
    truth, seen = unpack(data["truth"], r), unpack(data["seen"], r)
    entries = sorted(k[: -len(".pred")] for k in data.files if k.endswith(".pred"))
    results = {}
    for entry in entries:
        prob = data[f"{entry}.prob"].astype(np.float32) / 255 if f"{entry}.prob" in data.files else None
        pred = unpack(data[f"{entry}.pred"], r)
        results[entry] = placement(pred, truth, prob, threshold)
        results[entry]["miss_distance"] = miss_distance(pred, truth, seen)
        results[entry]["surface_recall"] = surface_recall(pred, truth, seen)
    return {"file": str(path), "chunks": [str(c) for c in data["chunks"]], "resolution": r,
            "thin_threshold": threshold, "miss_bins": list(MISS_BINS), "view_bound": view_bound(truth, seen),
            "surface_share": surface_share(truth, seen), "results": results}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("arrays", help="a flow_quality.py --save-occupancy .npz")
    p.add_argument("--thin-threshold", type=float, default=0.5, help="probability the thinned voxels keep above")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args(argv)
    result = analyse(Path(args.arrays), args.thin_threshold)
    emit_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
