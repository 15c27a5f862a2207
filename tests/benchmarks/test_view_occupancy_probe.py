"""benchmarks/view_occupancy_probe.py on the tiny dataset: a position-prior line, then the head's curve."""

from __future__ import annotations

import json

import numpy as np

from tests.conftest import load_script


def test_probe_prints_the_prior_then_a_falling_loss(tiny_dataset, tmp_path):
    probe = load_script("benchmarks/view_occupancy_probe.py")
    out = tmp_path / "probe.jsonl"
    config = {"width": 32, "depth": 1, "num_heads": 2, "patch_size": 8, "depth_cue": {"bins": 8}, "position": True}
    lines = probe.main(["--shards", str(tiny_dataset / "shards"), "--steps", "12", "--every", "6", "--views", "2",
                        "--threads", "1", "--config", json.dumps(config), "--out", str(out)])
    assert [json.loads(x) for x in out.read_text().splitlines()] == lines
    base, *curve = lines
    assert base["baseline"] == "position_prior" and 0 <= base["val_iou"] <= 1 and base["config"]["width"] == 32
    assert [c["step"] for c in curve] == [0, 6, 12]
    assert all(0 <= c["val_iou"] <= 1 for c in curve)
    assert curve[-1]["loss"] < curve[0]["loss"], curve


def test_position_prior_scores_the_best_threshold():
    probe = load_script("benchmarks/view_occupancy_probe.py")
    floor = np.zeros((1, 4, 4, 4), np.float32)
    floor[..., 0] = 1
    train = [{"occupancy": floor}, {"occupancy": floor}, {"occupancy": np.zeros_like(floor)}]
    # Frequency 2/3 on the floor: any threshold below it predicts the floor, which the held-out chunk has.
    assert probe.position_prior(train, [{"occupancy": floor}])["val_iou"] == 1.0
    assert probe.position_prior(train, [{"occupancy": np.zeros_like(floor)}])["val_iou"] == 0.0
