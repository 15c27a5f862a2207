"""Hydra callback that summarises a multirun: every job's overrides, output dir and optimised metric.

``train()`` returns the metric named by ``optimized_metric`` (through ``train.py``'s ``main``). At the end of
every job of a multirun this callback writes ``<job output dir>/sweep_job.json`` and rewrites
``<sweep dir>/sweep_summary.{json,md}`` from all job records found under the sweep dir; at the end of the
multirun it writes the summary once more. Writing after every job matters because Hydra's basic sweeper raises
on the first failed job *before* ``on_multirun_end`` runs, and because with the submitit launcher the jobs end
in other processes (on other machines, sharing the file system) than the one that ends the multirun.

Statuses: ``completed`` (a finite value), ``no_metric`` (the job returned None, e.g.
``optimized_metric=null``), ``non_finite`` (NaN/inf), ``failed`` (the job raised; ``error`` holds the
exception), ``unfinished`` (a job dir with Hydra's ``.hydra/`` but no record: still running, or killed).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

JOB_FILE = "sweep_job.json"
SUMMARY = "sweep_summary"


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def job_record(config: DictConfig, job_return: JobReturn) -> dict[str, Any]:
    """What one job contributes to the summary."""
    hydra = config.hydra
    record: dict[str, Any] = {
        "num": int(hydra.job.num) if OmegaConf.select(hydra, "job.num") is not None else None,
        "id": str(OmegaConf.select(hydra, "job.id", default="")),
        "overrides": [str(o) for o in (job_return.overrides or OmegaConf.to_container(hydra.overrides.task))],
        "output_dir": str(hydra.runtime.output_dir),
        "metric": None,
        "value": None,
        "status": None,
        "error": None,
    }
    try:
        record["metric"] = OmegaConf.select(config, "optimized_metric", default=None)
    except Exception:  # an unresolvable interpolation must not hide the job's own outcome
        record["metric"] = None
    if job_return.status == JobStatus.COMPLETED:
        value = job_return._return_value
        if value is None:
            record["status"] = "no_metric"
        else:
            value = float(value)
            record["status"] = "completed" if math.isfinite(value) else "non_finite"
            record["value"] = value if math.isfinite(value) else None
    else:
        record["status"] = "failed"
        record["error"] = f"{type(job_return._return_value).__name__}: {job_return._return_value}"
    return record


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    """Job records under ``sweep_dir``, plus ``unfinished`` entries for job dirs that never wrote one."""
    records = []
    for path in sorted(sweep_dir.rglob(JOB_FILE)):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            records.append({"num": None, "output_dir": str(path.parent), "status": "failed",
                            "error": repr(exc), "overrides": [], "metric": None, "value": None})
    reported = {Path(r["output_dir"]).resolve() for r in records}
    for hydra_dir in sorted(sweep_dir.rglob(".hydra")):
        job_dir = hydra_dir.parent
        if job_dir.resolve() in reported or job_dir.resolve() == sweep_dir.resolve():
            continue
        overrides = hydra_dir / "overrides.yaml"
        records.append({
            "num": int(job_dir.name) if job_dir.name.isdigit() else None,
            "overrides": [str(o) for o in OmegaConf.load(overrides)] if overrides.is_file() else [],
            "output_dir": str(job_dir), "metric": None, "value": None, "status": "unfinished", "error": None,
        })
    return sorted(records, key=lambda r: (r.get("num") is None, r.get("num") or 0, r["output_dir"]))


def summarise(sweep_dir: Path, direction: str = "minimize", final: bool = False) -> dict[str, Any]:
    """Write ``sweep_summary.json`` and ``sweep_summary.md`` in ``sweep_dir``; returns the summary."""
    if direction not in ("minimize", "maximize"):
        raise ValueError(f"direction must be 'minimize' or 'maximize', got {direction!r}")
    jobs = collect(sweep_dir)
    done = [j for j in jobs if j["status"] == "completed"]
    pick = min if direction == "minimize" else max
    best = pick(done, key=lambda j: j["value"]) if done else None
    metrics = sorted({str(j["metric"]) for j in jobs if j.get("metric")})
    summary = {
        "sweep_dir": str(sweep_dir),
        "metric": metrics[0] if len(metrics) == 1 else metrics,
        "direction": direction,
        "final": final,
        "counts": {s: sum(j["status"] == s for j in jobs) for s in sorted({j["status"] for j in jobs})},
        "best": None if best is None else {k: best[k] for k in ("num", "value", "overrides", "output_dir")},
        "jobs": jobs,
    }
    _atomic_write(sweep_dir / f"{SUMMARY}.json", json.dumps(summary, indent=2) + "\n")
    _atomic_write(sweep_dir / f"{SUMMARY}.md", markdown(summary))
    return summary


def split_overrides(jobs: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """``(overrides every job shares, per job the overrides that vary)``: the table shows only the latter."""
    lists = [list(j.get("overrides") or []) for j in jobs]
    common = [o for o in lists[0] if all(o in other for other in lists[1:])] if len(lists) > 1 else []
    return common, [[o for o in own if o not in common] for own in lists]


def markdown(summary: dict[str, Any]) -> str:
    metric = summary["metric"]
    metric = metric if isinstance(metric, str) else ", ".join(metric) or "metric"
    common, varying = split_overrides(summary["jobs"])
    lines = [
        f"# Sweep summary: {metric} ({summary['direction']})",
        "",
        f"Sweep dir: `{summary['sweep_dir']}`" + ("" if summary["final"] else " (multirun not finished)"),
        "",
        "Overrides of every job: " + (" ".join(f"`{o}`" for o in common) or "(none)"),
        "",
        f"| job | overrides | {metric} | status | output dir |",
        "|---|---|---|---|---|",
    ]
    best_dir = summary["best"]["output_dir"] if summary["best"] else None
    for job, own in zip(summary["jobs"], varying):
        value = "" if job["value"] is None else f"{job['value']:.6g}"
        if job["output_dir"] == best_dir:
            value = f"**{value}** (best)"
        status = job["status"] + (f": {job['error']}" if job.get("error") else "")
        overrides = " ".join(f"`{o}`" for o in own) or "(none)"
        num = "" if job["num"] is None else str(job["num"])
        status = status.replace("|", "/")
        lines.append(f"| {num} | {overrides} | {value} | {status} | `{job['output_dir']}` |")
    return "\n".join(lines) + "\n"


class SweepSummary(Callback):
    """Configured under ``hydra.callbacks`` (conf/hydra/default.yaml); does nothing outside ``--multirun``.

    Args:
        direction: ``minimize`` or ``maximize``: which value is marked best.
    """

    def __init__(self, direction: str = "minimize") -> None:
        if direction not in ("minimize", "maximize"):
            raise ValueError(f"direction must be 'minimize' or 'maximize', got {direction!r}")
        self.direction = direction

    @staticmethod
    def _is_multirun(config: DictConfig) -> bool:
        return OmegaConf.select(config, "hydra.mode") == RunMode.MULTIRUN

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if not self._is_multirun(config):
            return
        record = job_record(config, job_return)
        _atomic_write(Path(record["output_dir"]) / JOB_FILE, json.dumps(record, indent=2) + "\n")
        summarise(Path(config.hydra.sweep.dir), self.direction)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        summarise(Path(config.hydra.sweep.dir), self.direction, final=True)
