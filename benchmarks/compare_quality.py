"""Paired per-chunk differences between two ``flow_quality.py`` results (issue 5's comparisons across runs).

Two runs scored on the same chunks with the same seed differ by chunk far less than their means spread, so each
comparison is made chunk by chunk: the mean difference, its standard error and how many chunks the new run wins.

    python benchmarks/compare_quality.py NEW.json BASE.json [--entries ss_flow ss_flow@x0pavg16]
        [--metrics iou iou_32] [--base-entry ss_flow] [--first N] [--unpaired] [--out compare.json]

By default every entry and metric the two files share is compared. ``--base-entry`` compares the new file's
entries against one entry of the base (``@x0pavg16`` against 12 steps in one file: pass the same file twice).
Chunk lists that differ are refused, naming the files and the first differing chunk; ``--unpaired`` compares them
anyway as two independent samples (means and Welch's standard error: e.g. training against held-out chunks).
``--first N`` compares the first N chunks of each: ``flow_quality.py`` takes the first ``--max-chunks`` held-out
chunks in shard order and draws its noise per batch of ``--batch-size``, so a run scored on 48 chunks holds the
same first 12, with the same draws, as one scored on 12 (at the same batch size).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from genrecon.utils.jsonl import emit_json


def load(path: str | Path) -> dict[str, Any]:
    """A ``flow_quality.py`` JSON, checked for the fields compared here (errors name the file and the field)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"compare_quality.py: cannot read {path}: {e}") from None
    for field in ("chunks", "results"):
        if field not in data:
            raise SystemExit(f"compare_quality.py: {path} has no '{field}' field (not a flow_quality.py result?)")
    return data


def first_chunks(data: dict[str, Any], n: int, path: str | Path = "RESULT") -> dict[str, Any]:
    """``data`` cut to its first ``n`` chunks: the chunk list and every per-chunk metric (errors name the file)."""
    if len(data["chunks"]) < n:
        raise SystemExit(f"compare_quality.py: --first {n}: {path} has {len(data['chunks'])} chunks")
    results = {}
    for entry, result in data["results"].items():
        result = dict(result)
        if "per_chunk" in result:
            result["per_chunk"] = {m: list(v)[:n] for m, v in result["per_chunk"].items()}
        results[entry] = result
    return {**data, "chunks": list(data["chunks"])[:n], "results": results}


def paired_difference(new: Sequence[float], base: Sequence[float]) -> dict[str, float | int]:
    """Mean of ``new - base`` per chunk, its standard error and the chunks where ``new`` is higher / equal.
    Chunks without a finite value in either run (``None`` in the JSON) are left out of ``n``."""
    a, b = np.asarray(new, dtype=float), np.asarray(base, dtype=float)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    d = a - b
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("nan")
    return {"new": float(a.mean()), "base": float(b.mean()), "diff": float(d.mean()), "se": se,
            "better": int((d > 0).sum()), "equal": int((d == 0).sum()), "n": len(d)}


def unpaired_difference(new: Sequence[float], base: Sequence[float]) -> dict[str, float | int]:
    """Difference of means of two independent samples and Welch's standard error (finite values only)."""
    a, b = (x[np.isfinite(x)] for x in (np.asarray(new, dtype=float), np.asarray(base, dtype=float)))
    var = sum(x.var(ddof=1) / len(x) if len(x) > 1 else float("nan") for x in (a, b))
    return {"new": float(a.mean()), "base": float(b.mean()), "diff": float(a.mean() - b.mean()),
            "se": float(math.sqrt(var)), "n_new": len(a), "n_base": len(b)}


def per_chunk(data: dict[str, Any], path: str | Path, entry: str, metric: str) -> list[float]:
    values = data["results"][entry].get("per_chunk", {}).get(metric)
    if values is None:
        raise SystemExit(f"compare_quality.py: {path} has no 'results.{entry}.per_chunk.{metric}'")
    return values


def compare(new: dict[str, Any], base: dict[str, Any], new_path: str | Path = "NEW", base_path: str | Path = "BASE",
            entries: Sequence[str] | None = None, metrics: Sequence[str] | None = None,
            base_entry: str | None = None, unpaired: bool = False) -> dict[str, Any]:
    """Per entry and metric, the new run against the base (``paired_difference`` or ``unpaired_difference``)."""
    if not unpaired and list(new["chunks"]) != list(base["chunks"]):
        first = next((i for i, (x, y) in enumerate(zip(new["chunks"], base["chunks"])) if x != y),
                     min(len(new["chunks"]), len(base["chunks"])))
        raise SystemExit(
            f"compare_quality.py: the chunks differ ({new_path}: {len(new['chunks'])}, {base_path}: "
            f"{len(base['chunks'])}; first difference at position {first}); pass --unpaired to compare them "
            "as independent samples")
    if entries is None:
        entries = [e for e in new["results"] if "per_chunk" in new["results"][e]
                   and (base_entry is not None or e in base["results"])]
    out: dict[str, Any] = {}
    for entry in entries:
        b_entry = base_entry or entry
        for data, path, name in ((new, new_path, entry), (base, base_path, b_entry)):
            if name not in data["results"]:
                raise SystemExit(f"compare_quality.py: {path} has no entry '{name}' in 'results' "
                                 f"(it has: {', '.join(data['results'])})")
        new_metrics = new["results"][entry].get("per_chunk", {})
        base_metrics = base["results"][b_entry].get("per_chunk", {})
        names = metrics if metrics is not None else [m for m in new_metrics if m in base_metrics]
        rows = {}
        for m in names:
            a, b = per_chunk(new, new_path, entry, m), per_chunk(base, base_path, b_entry, m)
            rows[m] = unpaired_difference(a, b) if unpaired else paired_difference(a, b)
        out[entry if base_entry is None else f"{entry} - {base_entry}"] = rows
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("new")
    p.add_argument("base")
    p.add_argument("--entries", nargs="+", default=None, help="entries of 'results' (default: all shared)")
    p.add_argument("--metrics", nargs="+", default=None, help="per-chunk metrics (default: all shared)")
    p.add_argument("--base-entry", default=None, help="compare every entry against this one entry of BASE")
    p.add_argument("--unpaired", action="store_true", help="different chunks: independent samples")
    p.add_argument("--first", type=int, default=None, metavar="N",
                   help="compare the first N chunks of each (a run scored on more chunks than the other)")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    new, base = load(a.new), load(a.base)
    if a.first is not None:
        new, base = first_chunks(new, a.first, a.new), first_chunks(base, a.first, a.base)
    warnings = []
    if not a.unpaired and new.get("seed") != base.get("seed"):
        warnings.append(f"seeds differ ({new.get('seed')} against {base.get('seed')}): the draws are not paired")
    result = {"new": a.new, "base": a.base, "paired": not a.unpaired, "first": a.first, "warnings": warnings,
              "comparisons": compare(new, base, a.new, a.base, a.entries, a.metrics, a.base_entry, a.unpaired)}
    emit_json(result, a.out)
    return result


if __name__ == "__main__":
    main()
