"""Multirun: ``python train.py -m seed=1,2`` gives two runs under one sweep dir and a summary of the returned
metric (genrecon/utils/sweep.py, configured under hydra.callbacks)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from hydra.core.utils import JobReturn, JobStatus
from hydra.types import RunMode
from omegaconf import OmegaConf

from genrecon.utils.sweep import SweepSummary
from tests.scale.helpers import run_train, tiny_overrides, train_env


def test_multirun_of_two_seeds_writes_two_runs_and_a_summary(uneven_shards, tmp_path):
    log_dir = tmp_path / "logs"
    args = ["-m", "seed=1,2"] + tiny_overrides(uneven_shards, log_dir) + [
        "stage.max_steps=2", "stage.val_every_n_steps=2", "stage.val_batches=1",
        "stage.checkpoint_every_n_steps=100", "callbacks.run_stats.step_log=false",
    ]
    run_train(args, train_env("sweep-test"), tmp_path / "sweep.log")

    sweep = log_dir / "train" / "multiruns" / "sweep-test"
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    assert not (log_dir / "train" / "runs").exists()
    for num in ("0", "1"):
        assert (sweep / num / ".hydra" / "config.yaml").is_file()
        assert (sweep / num / "checkpoints" / "last.ckpt").is_file()

    summary = json.loads((sweep / "sweep_summary.json").read_text())
    assert summary["final"] and summary["metric"] == "val/loss" and summary["counts"] == {"completed": 2}
    jobs = summary["jobs"]
    assert [j["num"] for j in jobs] == [0, 1]
    assert [o for o in jobs[0]["overrides"] if o.startswith("seed=")] == ["seed=1"]
    assert [o for o in jobs[1]["overrides"] if o.startswith("seed=")] == ["seed=2"]
    for job in jobs:
        assert Path(job["output_dir"]) == sweep / str(job["num"])
        assert job["status"] == "completed" and math.isfinite(job["value"])
    best = min(jobs, key=lambda j: j["value"])
    assert summary["best"]["num"] == best["num"] and summary["best"]["value"] == best["value"]
    md = (sweep / "sweep_summary.md").read_text()
    assert "| 0 | `seed=1` |" in md and "| 1 | `seed=2` |" in md and "(best)" in md


def _job(sweep: Path, num: int, status: JobStatus, value, overrides: list[str]):
    config = OmegaConf.create({
        "optimized_metric": "val/iou",
        "hydra": {"mode": "MULTIRUN", "sweep": {"dir": str(sweep)},
                  "runtime": {"output_dir": str(sweep / str(num))},
                  "job": {"num": num, "id": f"job{num}"}, "overrides": {"task": overrides}},
    })
    config.hydra.mode = RunMode.MULTIRUN
    ret = JobReturn(overrides=overrides, status=status)
    ret._return_value = value
    (sweep / str(num)).mkdir(parents=True, exist_ok=True)
    return config, ret


def test_summary_lists_failed_missing_and_unfinished_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    cb = SweepSummary(direction="maximize")
    jobs = [
        _job(sweep, 0, JobStatus.COMPLETED, 0.5, ["lr=1"]),
        _job(sweep, 1, JobStatus.FAILED, ValueError("Invalid learning rate: -1"), ["lr=-1"]),
        _job(sweep, 2, JobStatus.COMPLETED, None, ["lr=2"]),
        _job(sweep, 3, JobStatus.COMPLETED, float("nan"), ["lr=3"]),
        _job(sweep, 4, JobStatus.COMPLETED, 0.7, ["lr=4"]),
    ]
    for config, ret in jobs:
        cb.on_job_end(config, ret)
    # a job that started (Hydra wrote .hydra/) but never reported: killed, or still running
    (sweep / "5" / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(["lr=5"]), sweep / "5" / ".hydra" / "overrides.yaml")
    # the summary exists before the multirun ends (the basic sweeper raises on a failed job before that)
    partial = json.loads((sweep / "sweep_summary.json").read_text())
    assert partial["final"] is False and len(partial["jobs"]) == 5

    cb.on_multirun_end(jobs[0][0])
    summary = json.loads((sweep / "sweep_summary.json").read_text())
    status = {j["num"]: j["status"] for j in summary["jobs"]}
    assert status == {0: "completed", 1: "failed", 2: "no_metric", 3: "non_finite", 4: "completed",
                      5: "unfinished"}
    assert "Invalid learning rate" in summary["jobs"][1]["error"]
    assert summary["best"]["num"] == 4 and summary["best"]["value"] == 0.7  # maximize
    md = (sweep / "sweep_summary.md").read_text()
    assert "failed: ValueError" in md and "unfinished" in md and "**0.7** (best)" in md


def test_summary_callback_is_configured_and_silent_outside_multirun(tmp_path):
    from tests.conftest import compose_config

    cfg = compose_config("train", [])
    assert cfg.hydra.callbacks.sweep_summary._target_ == "genrecon.utils.sweep.SweepSummary"
    config, ret = _job(tmp_path, 0, JobStatus.COMPLETED, 1.0, [])
    config.hydra.mode = RunMode.RUN
    SweepSummary().on_job_end(config, ret)
    assert not list(tmp_path.rglob("sweep_*"))
