"""Held-out scores of several runs against the training they saw and the SS VAE they were decoded by.

``learning_curve.py`` fits one run scored at several lengths. Runs of different sessions differ in more than
length: GPUs, batch, rooms and, above all, the SS VAE whose latents the flow learns and whose decoder turns its
samples into occupancy. This script fits, over the runs' mean scores on the same first ``--first`` chunks,

    score ≈ a + b · log2(samples seen / 1000) + c · (the VAE's round-trip IoU on those chunks)

by least squares, with standard errors and the residual spread (the run-to-run noise the two terms leave), and
extends it to ``--target`` at ``--at-vae``: how many more doublings of samples the fit asks for. Both terms are
read from each ``flow_quality.py`` JSON (``results.<entry>.per_chunk.<metric>`` and
``results.ss_vae_roundtrip.per_chunk.iou``); the samples are the step count times the global batch given with the
file. Runs that differ in other ways too put those differences into the residual: a hint, not an A/B.

    python benchmarks/across_runs.py RUN [RUN ...] [--entry ss_flow@x0pavg8] [--metric iou] [--first 12]
        [--target 0.7] [--at-vae 0.985] [--figure fit.png] [--out fit.json]

RUN is ``PATH:batch=B`` (steps from the entry's ``checkpoint_step``) or ``PATH:batch=B:steps=S``. Prints one
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

TERMS = ("intercept", "per_doubling", "per_vae_iou")


def parse_run(text: str) -> tuple[Path, int, int | None]:
    """``PATH:batch=B[:steps=S]`` → ``(path, batch, steps or None)``."""
    path, *fields = text.split(":")
    keys: dict[str, int] = {}
    for f in fields:
        key, sep, value = f.partition("=")
        if not sep or key not in ("batch", "steps") or not value.isdigit() or int(value) < 1:
            raise SystemExit(f"across_runs.py: {text!r}: expected PATH:batch=B[:steps=S] with positive integers, "
                             f"got {f!r}")
        keys[key] = int(value)
    if "batch" not in keys:
        raise SystemExit(f"across_runs.py: {text!r}: the global batch is missing (PATH:batch=B[:steps=S])")
    return Path(path), keys["batch"], keys.get("steps")


def per_chunk(data: dict[str, Any], path: Path, entry: str, metric: str) -> list[float]:
    values = data.get("results", {}).get(entry, {}).get("per_chunk", {}).get(metric)
    if values is None:
        raise SystemExit(f"across_runs.py: {path} has no 'results.{entry}.per_chunk.{metric}'")
    return [math.nan if v is None else float(v) for v in values]


def load_run(text: str, entry: str, metric: str, first: int) -> dict[str, Any]:
    """One run's first ``first`` chunks, its mean score and VAE round trip there, and the samples it saw."""
    path, batch, steps = parse_run(text)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"across_runs.py: cannot read {path}: {e}") from None
    chunks = list(data.get("chunks", []))
    if len(chunks) < first:
        raise SystemExit(f"across_runs.py: {path} scored {len(chunks)} chunks, fewer than --first {first}")
    if steps is None:
        steps = data.get("results", {}).get(entry, {}).get("checkpoint_step")
        if steps is None:
            raise SystemExit(f"across_runs.py: {path} has no 'results.{entry}.checkpoint_step' (scored before "
                             f"session 31?): give it as {path}:batch={batch}:steps=S")
    score = np.array(per_chunk(data, path, entry, metric)[:first])
    vae = np.array(per_chunk(data, path, "ss_vae_roundtrip", "iou")[:first])
    return {"file": str(path), "chunks": chunks[:first], "steps": int(steps), "batch": batch,
            "samples": int(steps) * batch, "score": float(np.nanmean(score)), "vae_iou": float(np.nanmean(vae))}


def fit(runs: Sequence[dict[str, Any]], target: float | None = None,
        at_vae: float | None = None) -> dict[str, Any]:
    """Least squares of the runs' scores on log2(samples / 1000) and the VAE round trip (see the module doc)."""
    if len(runs) < 4:
        raise SystemExit(f"across_runs.py: {len(runs)} runs; three terms need four runs at least")
    for r in runs[1:]:
        if r["chunks"] != runs[0]["chunks"]:
            raise SystemExit(f"across_runs.py: {r['file']} was scored on other chunks than {runs[0]['file']}")
    x = np.log2([r["samples"] / 1000 for r in runs])
    v = np.array([r["vae_iou"] for r in runs])
    y = np.array([r["score"] for r in runs])
    design = np.c_[np.ones_like(x), x, v]  # [runs, 3]
    if np.linalg.matrix_rank(design) < 3:
        raise SystemExit("across_runs.py: the runs do not separate the terms (every run at one length, or one VAE "
                         "quality, or the two moving together)")
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ coef
    dof = len(runs) - 3
    s2 = float(resid @ resid / dof) if dof else math.nan
    se = np.sqrt(np.diag(s2 * np.linalg.inv(design.T @ design))) if dof else np.full(3, math.nan)
    out: dict[str, Any] = {
        "runs": [{**{k: r[k] for k in ("file", "steps", "batch", "samples", "score", "vae_iou")},
                  "fitted": float(f)} for r, f in zip(runs, design @ coef)],
        "chunks": len(runs[0]["chunks"]),
        "coefficients": {t: float(c) for t, c in zip(TERMS, coef)},
        "standard_errors": {t: float(s) for t, s in zip(TERMS, se)},
        "residual_sd": math.sqrt(s2) if dof else math.nan,
        "dof": dof,
    }
    if target is not None:
        vae_ref = float(v.max()) if at_vae is None else at_vae
        largest = max(r["samples"] for r in runs)
        reach: dict[str, Any] = {"value": target, "at_vae_iou": vae_ref}
        a, b, c = coef
        if b > 0:
            need = (target - a - c * vae_ref) / b  # log2(samples / 1000) where the fit reaches the target
            reach["samples"] = 1000 * 2.0 ** need
            reach["doublings_after_largest"] = need - math.log2(largest / 1000)
        else:
            reach["samples"] = reach["doublings_after_largest"] = None  # no length reaches it on this fit
        out["target"] = reach
    return out


def _count(n: float) -> str:
    """12.3k, 4.1M, 60G: an axis label for a number of samples."""
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"


def plot(result: dict[str, Any], out: Path, label: str, size: tuple[int, int] = (720, 420)) -> None:
    """Each run's score moved to the reference VAE quality along the fitted VAE term, against log2(samples):
    the runs as dots, the fitted line, and the target (dashed red) if given."""
    from PIL import Image, ImageDraw

    a, b, c = (result["coefficients"][t] for t in TERMS)
    reach = result.get("target")
    vae_ref = reach["at_vae_iou"] if reach else max(r["vae_iou"] for r in result["runs"])
    xs = [math.log2(r["samples"] / 1000) for r in result["runs"]]
    ys = [r["score"] + c * (vae_ref - r["vae_iou"]) for r in result["runs"]]
    x_lo = math.floor(min(xs))
    x_hi = max(math.ceil(max(xs)) + 1, x_lo + 2)
    if reach and reach.get("samples"):
        x_hi = max(x_hi, min(math.ceil(math.log2(reach["samples"] / 1000)), x_lo + 30))
    y_top = max(ys + ([reach["value"]] if reach else [])) * 1.08
    w, h = size
    left, right, top, bottom = 60, 20, 30, 50
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)

    def xy(x: float, y: float) -> tuple[float, float]:
        return (left + (w - left - right) * (x - x_lo) / (x_hi - x_lo), h - bottom - (h - top - bottom) * y / y_top)

    draw.rectangle([left, top, w - right, h - bottom], outline="black")
    for i in range(x_lo, x_hi + 1, max(1, math.ceil((x_hi - x_lo) / 8))):
        gx, _ = xy(i, 0)
        draw.line([gx, top, gx, h - bottom], fill=(225, 225, 225))
        draw.text((gx - 14, h - bottom + 6), _count(1000 * 2.0 ** i), fill="black")
    for i in range(6):
        _, gy = xy(x_lo, y_top * i / 5)
        draw.text((8, gy - 6), f"{y_top * i / 5:.2f}", fill="black")
    draw.line([xy(x_lo, a + b * x_lo + c * vae_ref), xy(x_hi, a + b * x_hi + c * vae_ref)], fill=(31, 119, 180))
    for x, y in zip(xs, ys):
        cx, cy = xy(x, y)
        draw.ellipse([cx - 4, cy - 4, cx + 4, cy + 4], fill=(31, 119, 180))
    if reach:
        _, ty = xy(x_lo, reach["value"])
        for x0 in range(left, w - right, 12):
            draw.line([x0, ty, min(x0 + 6, w - right), ty], fill=(214, 39, 40))
        draw.text((w - right - 90, ty - 14), f"target {reach['value']:g}", fill=(214, 39, 40))
    draw.text((w / 2 - 120, h - 22), "samples seen (log scale), scores at VAE IoU "
                                     f"{vae_ref:.3f}", fill="black")
    se = result["standard_errors"]
    draw.text((left, 8), f"{label}: {b:+.3f} (± {se['per_doubling']:.3f}) per doubling, {c:+.2f} (± "
                         f"{se['per_vae_iou']:.2f}) per unit VAE IoU, {len(xs)} runs", fill="black")
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", metavar="RUN", help="PATH:batch=B[:steps=S] of flow_quality.py JSONs")
    p.add_argument("--entry", default="ss_flow@x0pavg8", help="entry of 'results'")
    p.add_argument("--metric", default="iou", help="per-chunk metric")
    p.add_argument("--first", type=int, default=12, help="score the runs on their first N chunks (shared)")
    p.add_argument("--target", type=float, default=None, help="the value to extrapolate to (issue 5: 0.7)")
    p.add_argument("--at-vae", type=float, default=None, help="VAE IoU for the extrapolation (default: the best)")
    p.add_argument("--figure", default=None, help="PNG of the fit")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    if a.first < 1:
        raise SystemExit(f"across_runs.py: --first must be at least 1, got {a.first}")
    runs = [load_run(text, a.entry, a.metric, a.first) for text in a.runs]
    result = {"entry": a.entry, "metric": a.metric, **fit(runs, a.target, a.at_vae)}
    if a.figure:
        plot(result, Path(a.figure), f"{a.entry} {a.metric}")
        result["figure"] = a.figure
    emit_json(result, a.out)
    return result


if __name__ == "__main__":
    main()
