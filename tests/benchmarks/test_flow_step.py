"""benchmarks/flow_step.py: the probe runs the real training step of the flow stages on synthetic batches
(CPU, tiny preset), the synthetic batches have the real batch layout, and the batch-size choice rule."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from tests.conftest import load_script


def _flow_step():
    return load_script("benchmarks/flow_step.py")


FS = _flow_step()


def test_probe_times_the_flow_stages_on_cpu(tmp_path, capsys):
    out = tmp_path / "probe.json"
    stages = ["ss_flow", "shape_flow", "tex_flow"]
    report = FS.main([
        "--preset", "tiny", "--device", "cpu", "--stages", *stages, "--batches", "1", "2",
        "--steps", "2", "--warmup", "1", "--checkpoint", "off", "--tokens", "800", "--views", "4",
        "--out", str(out),
    ])
    assert report["complete"] and report["preset"] == "tiny" and report["torch"] == torch.__version__
    # stdout carries exactly the JSON; the file holds the same report
    assert json.loads(capsys.readouterr().out) == report
    assert json.loads(out.read_text()) == report

    results = report["results"]
    assert {(r["stage"], r["batch"]) for r in results} == {(s, b) for s in stages for b in (1, 2)}
    for r in results:
        assert r["error"] is None and r["oom"] is False, r
        assert r["median_s"] > 0 and r["mean_s"] > 0 and r["samples_per_s"] > 0 and r["steps_per_s"] > 0
        assert r["samples_per_s"] == pytest.approx(r["batch"] / r["median_s"])
        assert r["tokens_per_batch"] > 0 and r["views_per_batch"] >= r["batch"]
        assert len(r["step_times_s"]) == 2 and r["loss_finite"]
        assert r["use_checkpoint"] is False and r["backend"] == "auto"
        if r["stage"] == "ss_flow":  # dense: every voxel of the 16^3 latent grid is a token
            assert r["tokens_per_batch"] == r["batch"] * 16**3
    by_key = {(r["stage"], r["batch"]): r for r in results}
    # nested synthetic samples: batch 2 holds batch 1's sample plus one more
    assert by_key[("shape_flow", 2)]["tokens_per_batch"] > by_key[("shape_flow", 1)]["tokens_per_batch"]

    assert set(report["choice"]) == set(stages)
    for stage, pick in report["choice"].items():
        assert pick is not None and pick["stage"] == stage and pick["batch"] in (1, 2)
        assert pick["samples_per_s"] >= 0.75 * pick["best_samples_per_s"] - 1e-12
    assert report["choice"] == FS.choose(results)


def test_profile_splits_the_step_by_its_named_ranges(capsys):
    report = FS.main([
        "--preset", "tiny", "--device", "cpu", "--stages", "tex_flow", "--batches", "2", "--steps", "2",
        "--warmup", "1", "--profile-steps", "2", "--tokens", "300", "--views", "4",
        "--extra", "stage.module.latent_aux_weight=1.0",
        "--extra", "preset.flow.visibility={grid:16,subdivisions:1,tolerance:1.5,fallback:true}",
    ])
    capsys.readouterr()
    (r,) = report["results"]
    assert r["error"] is None and len(r["step_times_s"]) == 2  # the profiled steps are not timed
    prof = r["profile"]
    assert prof["steps"] == 2 and prof["wall_ms"] > 0 and prof["gpu_busy"] is None  # CPU: no kernels
    # Each part of the step ran once per step under its own range.
    for name in ("flow.view_tokens", "flow.conditioning", "cond.visibility", "cond.project_aggregate",
                 "flow.objective", "model.sparse_forward", "flow.auxiliary"):
        assert prof["ranges"][name]["calls"] == 1.0 and prof["ranges"][name]["cpu_ms"] > 0, name
    census = prof["census"]
    assert census["ops_per_step"] == pytest.approx(sum(census["by_range"].values()))
    assert census["by_range"]["backward"] > 0 and census["by_range"]["model.sparse_forward"] > 0
    # The attention ran per sample in the sparse forward; shape-only ops are not counted.
    assert census["top_by_range"]["model.sparse_forward"].get("aten::scaled_dot_product_attention", 0) >= 2
    assert not set(census["top"]) & FS.VIEW_OPS


def test_distinct_batches_bring_new_token_counts_every_step(capsys, monkeypatch):
    seen = []
    real = FS.time_config

    def spy(cfg, batches, *args, **kwargs):
        seen.append([FS.batch_tokens(b) for b in batches])
        return real(cfg, batches, *args, **kwargs)

    monkeypatch.setattr(FS, "time_config", spy)
    report = FS.main(["--preset", "tiny", "--device", "cpu", "--stages", "shape_flow", "--batches", "2",
                      "--steps", "3", "--warmup", "1", "--tokens", "300", "--views", "2", "--distinct-batches", "3"])
    capsys.readouterr()
    (r,) = report["results"]
    assert r["error"] is None and r["distinct_batches"] == 3 and len(r["step_times_s"]) == 3
    (tokens,) = seen
    assert len(tokens) == 3 and len(set(tokens)) == 3 and r["tokens_per_batch"] == tokens[0]


def test_synthetic_batches_have_the_real_layout():
    """The probe's batches carry what the chunk datamodule yields to each stage, in the same layout."""
    for stage, keys in {
        "ss_flow": {"ss_latent", "occupancy", "views", "w2c", "intrinsics", "view_mask"},
        "tex_flow": {"shape_coords", "shape_feats", "tex_feats", "views", "w2c", "intrinsics", "view_mask"},
        "tex_vae": {"ovoxel_coords", "ovoxel_pbr", "ovoxel_shape"},
    }.items():
        cfg = FS.compose(FS.base_overrides(stage, "tiny", torch.device("cpu"), []))
        batch = FS.synthetic_batch(cfg, 3, views=6, tokens=500, vae_tokens=3000, seed=0)
        assert keys <= set(batch), (stage, sorted(batch))
        assert batch["keys"] == [f"synthetic/{i:04d}" for i in range(3)]
        if "views" in batch:
            n = batch["views"].shape[1]
            assert batch["views"].shape == (3, n, 3, 64, 64) and batch["views"].dtype == torch.float32
            assert 1 <= n <= 6 and batch["view_mask"].dtype == torch.bool
            assert batch["view_mask"].any(1).all()
            # cameras look at the chunk: its centre projects inside every real view, in front of the camera
            w2c, K = batch["w2c"][batch["view_mask"]], batch["intrinsics"][batch["view_mask"]]
            centre = w2c[:, :3, 3]
            uv = (K @ (centre / centre[:, 2:]).unsqueeze(-1)).squeeze(-1)[:, :2]
            assert (centre[:, 2] > 0).all() and ((uv > 0) & (uv < 1)).all()
        if stage == "ss_flow":
            assert batch["ss_latent"].shape == (3, 8, 16, 16, 16)
            # a room corner's surfaces, as many voxels as a floor and two walls: what depth targets project
            occ, r = batch["occupancy"], int(cfg.preset.occupancy_resolution)
            assert occ.shape == (3, 1, r, r, r)
            assert (occ.flatten(1).sum(1) == FS.SURFACE_SHARE * r**2).all()
        if "shape_coords" in batch:
            coords = batch["shape_coords"]
            assert coords.dtype == torch.int32 and coords.shape[1] == 4
            assert batch["shape_feats"].shape == batch["tex_feats"].shape == (len(coords), 32)
            b = coords[:, 0]
            assert (b[1:] >= b[:-1]).all() and set(b.tolist()) == {0, 1, 2}
            counts = torch.bincount(b).tolist()
            assert all(500 * 0.7 - 1 <= c <= 500 * 1.3 + 1 for c in counts)
            assert 0 <= int(coords[:, 1:].min()) and int(coords[:, 1:].max()) < 16
            for i in range(3):  # unique and sorted by (x, y, z) within each sample, as the encode step writes
                c = coords[b == i, 1:].long()
                flat = c[:, 0] * 256 + c[:, 1] * 16 + c[:, 2]
                assert (flat[1:] > flat[:-1]).all()
        if "ovoxel_coords" in batch:
            assert batch["ovoxel_coords"].shape[1] == 4 and batch["ovoxel_pbr"].shape[1] == 6
            assert batch["ovoxel_resolution"] == 64


def test_time_budget_skips_everything_when_spent(capsys):
    report = FS.main(["--preset", "tiny", "--device", "cpu", "--stages", "shape_flow", "--batches", "1",
                      "--steps", "1", "--warmup", "0", "--checkpoint", "both", "--time-budget", "0"])
    assert report["results"] == [] and report["choice"] == {}
    assert sorted(s["use_checkpoint"] for s in report["skipped"]) == [False, True]
    assert all(s["reason"] == "time budget spent" for s in report["skipped"])


def _r(stage: str, batch: int, sps: float | None, *, backend: str = "auto", ckpt: bool = False,
       peak: float | None = 10.0, oom: bool = False, error: str | None = None) -> dict[str, Any]:
    return {"stage": stage, "batch": batch, "backend": backend, "use_checkpoint": ckpt, "samples_per_s": sps,
            "median_s": batch / sps if sps else None, "peak_mem_gb": peak, "oom": oom, "error": error}


def test_choose_prefers_the_smallest_batch_near_the_best_throughput():
    results = [
        # a big batch that buys a lot (30 -> 50 samples/s): take it
        _r("ss_flow", 8, 30.0), _r("ss_flow", 16, 50.0),
        # a big batch that buys little (8 -> 9): keep the small one, more optimiser steps
        _r("shape_flow", 4, 8.0), _r("shape_flow", 8, 9.0),
        # within the chosen batch the fastest backend / checkpoint setting
        _r("tex_flow", 4, 9.0, backend="sdpa_loop"), _r("tex_flow", 4, 9.5, backend="torch_varlen"),
        _r("tex_flow", 4, 9.5, backend="torch_varlen", ckpt=True), _r("tex_flow", 8, 10.0),
    ]
    choice = FS.choose(results)
    assert list(choice) == ["ss_flow", "shape_flow", "tex_flow"]
    assert choice["ss_flow"]["batch"] == 16
    assert choice["shape_flow"]["batch"] == 4
    assert choice["shape_flow"]["best_samples_per_s"] == 9.0
    assert choice["shape_flow"]["threshold_samples_per_s"] == pytest.approx(6.75)
    assert (choice["tex_flow"]["batch"], choice["tex_flow"]["backend"]) == (4, "torch_varlen")
    assert choice["tex_flow"]["use_checkpoint"] is False  # equal speed: checkpointing off
    assert choice["tex_flow"]["overrides"] == [
        "stage.datamodule.batch_size=4", "stage.module.model.use_checkpoint=false",
        "+stage.module.model.attn_backend=torch_varlen"]
    assert choice["ss_flow"]["overrides"] == ["stage.datamodule.batch_size=16",
                                              "stage.module.model.use_checkpoint=false"]


def test_choose_never_picks_oom_failed_or_over_memory_configs():
    results = [
        _r("ss_flow", 4, 10.0, peak=20.0),
        _r("ss_flow", 8, 40.0, peak=70.0),                    # fastest, but over the memory limit
        _r("ss_flow", 16, None, oom=True, peak=79.0),          # out of memory
        _r("ss_flow", 32, 90.0, error="RuntimeError: boom"),   # failed
        _r("shape_flow", 8, None, oom=True),
        _r("tex_flow", 8, 5.0, peak=None),                     # CPU: no memory figure, never filtered
    ]
    choice = FS.choose(results, mem_limit_gb=60.0)
    assert choice["ss_flow"]["batch"] == 4
    assert choice["shape_flow"] is None
    assert choice["tex_flow"]["batch"] == 8
    # without the limit the 70 GB config wins; the OOM and the failed one never do
    assert FS.choose(results)["ss_flow"]["batch"] == 8


@pytest.mark.slow
def test_depth_cue_cost_compares_the_cues_with_the_recipe_on_the_cpu(tmp_path):
    """benchmarks/depth_cue_cost.sh: three flow_step.py runs and their comparison (about a minute on the CPU)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHON=sys.executable)
    subprocess.run(["bash", "benchmarks/depth_cue_cost.sh", str(tmp_path), "cpu", "tiny", "1", "1", "1", "1"],
                   check=True, env=env, capture_output=True, timeout=600)
    report = json.loads((tmp_path / "depth_cue_cost.json").read_text())
    assert set(report["arms"]) == {"recipe", "points", "stereo", "sweep"} and report["arms"]["recipe"]["vs_recipe"] == 1.0
    assert "cond.point_depth" in report["arms"]["points"]["ranges_ms"]
    assert "cond.plane_sweep" in report["arms"]["sweep"]["ranges_ms"]
