"""The tolerant occupancy F-score: a wall shifted by one voxel is wrong for IoU and right within one voxel."""

import pytest
import torch

from genrecon.metrics.occupancy import occupancy_fscore
from genrecon.stages.ss_vae import occupancy_iou


def _wall(x: int, r: int = 16) -> torch.Tensor:
    occ = torch.zeros(1, 1, r, r, r)
    occ[0, 0, x] = 1.0
    return occ


def test_a_wall_one_voxel_off_scores_zero_iou_but_full_f_within_one_voxel():
    gt, pred = _wall(5), _wall(6) * 2 - 1  # logits: > 0 on the shifted wall
    assert occupancy_iou(pred, gt).item() == 0.0
    exact = occupancy_fscore(pred, gt, tolerance=0)
    assert exact["fscore"].item() == 0.0
    near = occupancy_fscore(pred, gt, tolerance=1)
    assert near["precision"].item() == near["recall"].item() == near["fscore"].item() == 1.0
    far = occupancy_fscore(_wall(8) * 2 - 1, gt, tolerance=1)  # three voxels off
    assert far["fscore"].item() == 0.0


def test_precision_and_recall_are_separate_and_per_sample():
    gt = torch.cat([_wall(5), _wall(5)])
    over = torch.cat([_wall(5), _wall(5)]) * 2 - 1
    over[0, 0, 12] = 1.0  # sample 0 adds a false wall far away: precision 1/2, recall 1
    scores = occupancy_fscore(over, gt, tolerance=1)
    assert scores["precision"].tolist() == pytest.approx([0.5, 1.0])
    assert scores["recall"].tolist() == pytest.approx([1.0, 1.0])
    assert scores["fscore"][0].item() == pytest.approx(2 * 0.5 / 1.5)


def test_empty_cases_and_unbatched_channel():
    empty = torch.zeros(2, 16, 16, 16)
    both = occupancy_fscore(empty - 1, empty)
    assert both["fscore"].tolist() == [1.0, 1.0]
    missed = occupancy_fscore(empty[:1] - 1, _wall(3)[:, 0])
    assert missed["recall"].item() == 0.0 and missed["fscore"].item() == 0.0
