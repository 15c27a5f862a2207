"""Held-out scores of one recipe at several training lengths: the slope per doubling and where it points.

Issue 5 asks how far more training takes the SS flow. Given ``flow_quality.py`` results of the same run scored on
the same chunks after different numbers of steps, each chunk's metric is fit by least squares against log2(steps);
the mean of those slopes (with its standard error over chunks) is the gain per doubling of training. The line
through the means is extended to ``--target``: how many more doublings it needs. A curve that flattens faster than
log-linear needs more than that, so the extrapolation is a lower bound on the training, not a forecast.

    python benchmarks/learning_curve.py A.json B.json[@STEPS] ... [--entry ss_flow@x0pavg8] [--metric iou]
        [--global-batch 32] [--target 0.7] [--figure curve.png] [--out curve.json]

A file's length is its entry's ``checkpoint_step`` (recorded by ``flow_quality.py`` since session 31) unless
given after ``@``. ``--global-batch`` (samples per step over all GPUs) turns steps into samples seen. Prints one
JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from genrecon.utils.jsonl import emit_json

COLOURS = ((31, 119, 180), (214, 39, 40))


def parse_source(text: str) -> tuple[Path, int | None]:
    """``PATH`` or ``PATH@STEPS``."""
    path, sep, steps = text.rpartition("@")
    if sep and steps.isdigit():
        return Path(path), int(steps)
    return Path(text), None


def load_point(text: str, entry: str, metric: str) -> dict[str, Any]:
    """One file's chunks, per-chunk values and training steps (errors name the file and the field)."""
    path, steps = parse_source(text)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"learning_curve.py: cannot read {path}: {e}") from None
    result = data.get("results", {}).get(entry)
    if result is None:
        raise SystemExit(f"learning_curve.py: {path} has no 'results.{entry}' (it has: "
                         f"{', '.join(data.get('results', {})) or 'no results'})")
    values = result.get("per_chunk", {}).get(metric)
    if values is None:
        raise SystemExit(f"learning_curve.py: {path} has no 'results.{entry}.per_chunk.{metric}'")
    if steps is None:
        steps = result.get("checkpoint_step")
        if steps is None:
            raise SystemExit(f"learning_curve.py: {path} has no 'results.{entry}.checkpoint_step' (scored before "
                             f"session 31?): give the steps as {path}@STEPS")
    if steps < 1:
        raise SystemExit(f"learning_curve.py: {path}: steps must be at least 1, got {steps}")
    return {"file": str(path), "steps": int(steps), "chunks": list(data.get("chunks", [])),
            "values": [math.nan if v is None else float(v) for v in values]}


def fit_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares ``y ≈ a + b·x`` → ``(a, b)``."""
    b, a = np.polyfit(x, y, 1)
    return float(a), float(b)


def learning_curve(points: Sequence[dict[str, Any]], target: float | None = None,
                   global_batch: int = 1) -> dict[str, Any]:
    """The per-chunk and mean fits of ``values`` against log2(steps) over ``points`` (see the module doc)."""
    if len(points) < 2:
        raise SystemExit("learning_curve.py: needs results at two training lengths at least")
    points = sorted(points, key=lambda p: p["steps"])
    if len({p["steps"] for p in points}) < 2:
        raise SystemExit("learning_curve.py: every file was scored at the same step; the curve needs two lengths")
    first = points[0]
    for p in points[1:]:
        if p["chunks"] != first["chunks"]:
            raise SystemExit(f"learning_curve.py: {p['file']} was scored on other chunks than {first['file']}")
    x = np.log2([p["steps"] for p in points])
    y = np.array([p["values"] for p in points])  # [files, chunks]
    keep = np.isfinite(y).all(axis=0)  # a chunk without a value in some file is left out
    if not keep.any():
        raise SystemExit("learning_curve.py: no chunk has a value in every file")
    slopes = np.array([fit_line(x, y[:, c])[1] for c in np.flatnonzero(keep)])
    means = y[:, keep].mean(axis=1)
    intercept, slope = fit_line(x, means)
    n = len(slopes)
    out: dict[str, Any] = {
        "points": [{"file": p["file"], "steps": p["steps"], "samples": p["steps"] * global_batch,
                    "mean": float(m)} for p, m in zip(points, means)],
        "chunks": n,
        "slope_per_doubling": slope,
        "slope_se": float(slopes.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan,
        "chunks_rising": int((slopes > 0).sum()),
        "intercept_log2": intercept,
        "fitted_last": intercept + slope * float(x[-1]),
    }
    if target is not None:
        reach: dict[str, Any] = {"value": target}
        if slope > 0:
            doublings = (target - out["fitted_last"]) / slope
            reach["doublings_after_last"] = doublings
            reach["steps"] = points[-1]["steps"] * 2.0 ** doublings
            reach["samples"] = reach["steps"] * global_batch
        else:
            reach["doublings_after_last"] = None  # the curve does not rise: no length reaches it
        out["target"] = reach
    return out


def plot(points: Sequence[dict[str, Any]], curve: dict[str, Any], out: Path, label: str,
         target: float | None = None, size: tuple[int, int] = (720, 420)) -> None:
    """Each chunk's metric (grey) and the mean (blue) against log2(steps), the fitted line and the target (red)."""
    from PIL import Image, ImageDraw

    points = sorted(points, key=lambda p: p["steps"])
    w, h = size
    left, right, top, bottom = 60, 20, 30, 50
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    xs = [math.log2(p["steps"]) for p in points]
    x_lo, x_hi = math.floor(xs[0]), math.ceil(xs[-1]) + 1
    ys = [v for p in points for v in p["values"] if math.isfinite(v)] + ([target] if target is not None else [])
    y_lo, y_hi = 0.0, max(1e-6, max(ys) * 1.05)

    def xy(x: float, y: float) -> tuple[float, float]:
        return (left + (w - left - right) * (x - x_lo) / (x_hi - x_lo),
                h - bottom - (h - top - bottom) * (y - y_lo) / (y_hi - y_lo))

    draw.rectangle([left, top, w - right, h - bottom], outline="black")
    for i in range(x_lo, x_hi + 1):
        x, _ = xy(i, 0)
        draw.line([x, top, x, h - bottom], fill=(225, 225, 225))
        draw.text((x - 14, h - bottom + 6), f"{2 ** i:g}", fill="black")
    for i in range(6):
        v = y_lo + (y_hi - y_lo) * i / 5
        _, y = xy(x_lo, v)
        draw.line([left, y, w - right, y], fill=(225, 225, 225))
        draw.text((8, y - 6), f"{v:.2f}", fill="black")
    for c in range(len(points[0]["values"])):
        line = [xy(x, p["values"][c]) for x, p in zip(xs, points) if math.isfinite(p["values"][c])]
        if len(line) > 1:
            draw.line(line, fill=(190, 190, 190), width=1)
    a, b = curve["intercept_log2"], curve["slope_per_doubling"]
    draw.line([xy(x_lo, a + b * x_lo), xy(x_hi, a + b * x_hi)], fill=COLOURS[0], width=1)
    for x, p in zip(xs, curve["points"]):
        cx, cy = xy(x, p["mean"])
        draw.ellipse([cx - 4, cy - 4, cx + 4, cy + 4], fill=COLOURS[0])
    if target is not None:
        _, ty = xy(x_lo, target)
        for x0 in range(left, w - right, 12):  # dashed
            draw.line([x0, ty, min(x0 + 6, w - right), ty], fill=COLOURS[1], width=1)
        draw.text((w - right - 90, ty - 14), f"target {target:g}", fill=COLOURS[1])
    draw.text((w / 2 - 80, h - 22), "training steps (log scale)", fill="black")
    draw.text((left, 8), f"{label}: {b:+.3f} per doubling (± {curve['slope_se']:.3f}, "
                         f"{curve['chunks_rising']}/{curve['chunks']} chunks rising)", fill="black")
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("results", nargs="+", help="flow_quality.py JSONs, each optionally PATH@STEPS")
    p.add_argument("--entry", default="ss_flow", help="entry of 'results' (e.g. ss_flow@x0pavg8)")
    p.add_argument("--metric", default="iou", help="per-chunk metric")
    p.add_argument("--global-batch", type=int, default=1, help="samples per step over all GPUs")
    p.add_argument("--target", type=float, default=None, help="the value to extrapolate to (issue 5: 0.7)")
    p.add_argument("--figure", default=None, help="PNG of the curve")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    points = [load_point(s, a.entry, a.metric) for s in a.results]
    curve = learning_curve(points, a.target, a.global_batch)
    result = {"entry": a.entry, "metric": a.metric, "global_batch": a.global_batch, **curve}
    if a.figure:
        plot(points, curve, Path(a.figure), f"{a.entry} {a.metric}", a.target)
        result["figure"] = a.figure
    emit_json(result, a.out)
    return result


if __name__ == "__main__":
    main()
