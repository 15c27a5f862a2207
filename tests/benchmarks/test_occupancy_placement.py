"""benchmarks/occupancy_placement.py on grids built here: a wall one voxel off, a thick band, a far blob."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import load_script

R = 16


def _script():
    return load_script("benchmarks/occupancy_placement.py")


def _wall(x: int) -> np.ndarray:
    g = np.zeros((R, R, R), dtype=bool)
    g[x] = True
    return g


def test_a_wall_one_voxel_off_is_a_near_miss_that_the_best_shift_undoes():
    truth, pred = _wall(5)[None], _wall(6)[None]
    r = _script().placement(pred, truth)
    m = r["mean"]
    assert m["iou"] == 0.0
    assert m["fp_near"] == 1.0 and m["fp_far"] == 0.0 and m["fn_near"] == 1.0 and m["fn_far"] == 0.0
    assert m["iou_best_shift"] == 1.0
    assert r["best_shift"] == [-1, 0, 0] and r["iou_at_best_shift"] == 1.0


def test_a_far_blob_is_a_far_miss():
    truth = _wall(2)[None]
    pred = np.zeros_like(truth)
    pred[0, 10:12, 4:8, 4:8] = True
    m = _script().placement(pred, truth)["mean"]
    assert m["fp_far"] == 1.0 and m["fp_near"] == 0.0 and m["fn_far"] == 1.0 and m["iou_best_shift"] == 0.0


def test_thinning_a_blurred_wall_keeps_its_peak_layer():
    truth = _wall(8)
    prob = np.zeros((R, R, R), dtype=np.float32)
    prob[7], prob[8], prob[9] = 0.6, 0.9, 0.7  # a thick band, most probable on the true layer
    thick = prob > 0.5
    s = _script()
    assert s.iou(thick, truth) == pytest.approx(1 / 3)
    assert s.iou(s.thin(prob, 0.5), truth) == 1.0
    r = s.placement(thick[None], truth[None], prob[None])
    assert r["mean"]["iou_thin"] == 1.0 and r["mean"]["fp_near"] == pytest.approx(2 / 3)


def test_analyse_reads_a_saved_occupancy_file(tmp_path):
    truth = np.stack([_wall(3), _wall(9)])
    pred = np.stack([_wall(3), _wall(10)])
    pack = lambda g: np.packbits(g.reshape(len(g), -1), axis=1)  # noqa: E731
    path = tmp_path / "fq_occupancy.npz"
    np.savez_compressed(path, chunks=np.array(["a", "b"]), resolution=np.int64(R), truth=pack(truth),
                        seen=pack(truth), **{"ss_flow.pred": pack(pred),
                                              "ss_flow.prob": (pred * 255).astype(np.uint8)})
    out = tmp_path / "placement.json"
    result = _script().main([str(path), "--out", str(out)])
    assert out.is_file() and result["chunks"] == ["a", "b"] and result["resolution"] == R
    entry = result["results"]["ss_flow"]
    assert entry["per_chunk"]["iou"] == [1.0, 0.0] and entry["mean"]["iou_best_shift"] == 1.0
    assert entry["mean"]["iou_thin"] == pytest.approx(0.5)
    assert entry["miss_distance"]["seen"][0] == pytest.approx(0.5) and entry["miss_distance"]["hidden"] == [0.0] * 6


def test_miss_distance_splits_seen_and_hidden_true_voxels_by_how_far_they_are_missed():
    truth = (_wall(2) | _wall(13))[None]
    seen = _wall(2)[None]  # the wall at 2 is seen, the one at 13 hidden
    pred = (_wall(3) | _wall(6))[None]  # seen wall one voxel off; hidden wall's nearest prediction 7 voxels away
    d = _script().miss_distance(pred, truth, seen)
    assert d["seen"] == [0.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert d["hidden"] == [0.0, 0.0, 0.0, 0.0, 1.0, 0.0]  # in [5, 8)
    # No prediction at all: every true voxel in the last bin.
    empty = _script().miss_distance(np.zeros_like(pred), truth, seen)
    assert empty["seen"][-1] == 1.0 and empty["hidden"][-1] == 1.0


def test_view_bound_counts_the_true_voxels_within_reach_of_the_seen_ones():
    # A slab three voxels thick whose front layer the views see, and a wall far behind that they do not.
    truth = (_wall(4) | _wall(5) | _wall(6) | _wall(12))[None]
    seen = _wall(4)[None]
    b = _script().view_bound(truth, seen)
    assert b["mean"] == pytest.approx({"d0": 0.25, "d1": 0.5, "d2": 0.75, "d3": 0.75})
    assert b["chunks_at_0.7"] == {"d0": 0, "d1": 0, "d2": 1, "d3": 1}
    # A diagonal neighbour counts at d = 1 (26-neighbourhood).
    corner = np.zeros((1, R, R, R), dtype=bool)
    corner[0, 5, 5, 5] = corner[0, 6, 6, 6] = True
    assert _script().view_bound(corner, corner & ~_wall(6)[None], (1,))["mean"]["d1"] == 1.0


def test_surface_recall_splits_floor_and_walls_seen_and_hidden():
    floor = np.zeros((R, R, R), dtype=bool)
    floor[:, :, 0] = True
    truth = (floor | _wall(2) | _wall(13))[None]  # walls stand on the floor (x = 2 and x = 13)
    seen = (floor | _wall(2))[None]  # the wall at 13 is hidden
    pred = (floor | _wall(2))[None]  # floor and the seen wall found, the hidden one not
    script = _script()
    rec = script.surface_recall(pred, truth, seen)
    # the hidden wall's voxels one above the floor count as floor
    assert rec["floor"] == {"seen": 1.0, "hidden": 0.0} and rec["vertical"] == {"seen": 1.0, "hidden": 0.0}
    assert rec["horizontal"] == {"seen": None, "hidden": None}
    share = script.surface_share(truth, seen)
    n_floor, n_walls = R * R + 2 * R, 2 * R * (R - 2)  # the walls' two lowest layers count as floor
    assert share["floor"]["of_truth"] == pytest.approx(n_floor / (n_floor + n_walls), abs=1e-5)
    assert share["vertical"]["of_truth"] == pytest.approx(n_walls / (n_floor + n_walls), abs=1e-5)
    assert share["vertical"]["seen"] == pytest.approx(0.5)
    assert share["floor"]["seen"] == pytest.approx((R * R + R) / n_floor, abs=1e-5)
