"""benchmarks/stereo_quality.py's scoring of stereo points against the occupancy, on grids built here."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import load_script

R = 16


def test_score_points_splits_the_coverage_of_seen_voxels_by_kind_of_surface():
    sq = load_script("benchmarks/stereo_quality.py")
    occ = torch.zeros(1, R, R, R, dtype=torch.bool)
    occ[0, :, :, 0] = True  # floor
    occ[0, 2, :, :] = True  # a wall x = 2 standing on it
    seen = occ.clone()
    seen[0, 2, R // 2:, :] = False  # half the wall hidden
    # points on the floor's first row and on the wall's lowest visible voxels above the floor layers
    idx = torch.tensor([[i, 0, 0] for i in range(R)] + [[2, j, 5] for j in range(R // 2)]).float()
    points = (idx + 0.5) / R - 0.5
    out = sq.score_points(points, torch.zeros(len(points), dtype=torch.long), occ, seen)
    assert out["points_in_chunk"] == [len(points)] and out["within_vox_0"] == [1.0]
    # within one voxel of a floor point: rows 0 and 1 of the floor layer, and of layer 1 the wall's voxels by them
    floor = occ[0] & (torch.arange(R)[None, None, :] < 2)
    assert out["seen_covered_floor"][0] == pytest.approx((2 * R + 2) / int((floor & seen[0]).sum()), abs=1e-4)
    wall_seen = int((occ[0] & seen[0] & (torch.arange(R)[None, None, :] >= 2)).sum())
    assert out["seen_covered_vertical"][0] == pytest.approx(3 * (R // 2) / wall_seen, abs=1e-4)  # z 4-6, seen rows
    assert out["seen_share_vertical"][0] == pytest.approx(0.5) and out["seen_share_horizontal"] == [None]
    assert out["seen_covered_horizontal"] == [None]
