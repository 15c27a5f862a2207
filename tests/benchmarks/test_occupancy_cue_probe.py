"""benchmarks/occupancy_cue_probe.py on the tiny dataset: both probes run, IoUs are in range, and the
features are what the docstring says (7 voxels x 5 statistics)."""

from __future__ import annotations

import json

import numpy as np

from tests.conftest import load_script


def _probe():
    return load_script("benchmarks/occupancy_cue_probe.py")


def test_probe_scores_both_feature_sets(tiny_dataset, tmp_path):
    probe = _probe()
    shards = str(tiny_dataset / "shards")
    _, feats, pos, occ = next(probe.chunk_features(shards, "train", 4, np.random.default_rng(0)))
    r3 = occ.numel()
    assert feats.shape == (r3, 35) and pos.shape == (r3, 3) and set(occ.unique().tolist()) <= {0.0, 1.0}
    assert float(pos.min()) > 0 and float(pos.max()) < 1
    # Coverage (last statistic of the voxel itself) is a fraction of the views.
    assert 0 <= float(feats[:, 4].min()) and float(feats[:, 4].max()) <= 1 and float(feats[:, 4].max()) > 0
    out = tmp_path / "probe.json"
    result = probe.main(["--shards", shards, "--views", "4", "--steps", "5", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    for name in ("position_only", "photo_stats_and_position"):
        entry = result[name]
        assert 0 <= entry["train_iou"] <= 1 and 0 <= entry["heldout_iou_mean"] <= 1
        assert len(entry["heldout_iou"]) == len(result["chunks"]["val"]) >= 1
