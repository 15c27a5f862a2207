"""The tolerant occupancy F-score: a wall shifted by one voxel is wrong for IoU and right within one voxel."""

import pytest
import torch

from genrecon.metrics.occupancy import occupancy_fscore, occupancy_iou, pooled_occupancy_iou


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


def test_pooled_iou_scores_the_structure_the_shape_flow_receives():
    gt = _wall(4)
    inside = _wall(5) * 2 - 1  # one voxel off, inside the same 2-voxel cell: 0 at full resolution, 1 pooled
    assert occupancy_iou(inside, gt).item() == 0.0
    assert pooled_occupancy_iou(inside, gt, factor=2).item() == 1.0
    across = _wall(6) * 2 - 1  # one voxel further: another cell, still wrong after pooling
    assert pooled_occupancy_iou(across, gt, factor=2).item() == 0.0
    # factor 1 is the plain IoU, per sample, unbatched channel accepted
    pair = torch.cat([_wall(4), _wall(9)]) * 2 - 1
    both = torch.cat([gt, gt])
    assert pooled_occupancy_iou(pair, both, factor=1).tolist() == occupancy_iou(pair, both).tolist()
    assert pooled_occupancy_iou(pair[:, 0], both[:, 0], factor=4).tolist() == [1.0, 0.0]
    # pooling equals max-pooling the logits then thresholding (what genrecon/pipelines/reconstruct.py does)
    logits = torch.randn(3, 1, 8, 8, 8)
    target = (torch.rand(3, 1, 8, 8, 8) > 0.7).float()
    pooled_logits = torch.nn.functional.max_pool3d(logits, 2)
    pooled_target = torch.nn.functional.max_pool3d(target, 2)
    assert torch.equal(pooled_occupancy_iou(logits, target, -0.5, 2), occupancy_iou(pooled_logits, pooled_target, -0.5))
    with pytest.raises(ValueError, match="divisible"):
        pooled_occupancy_iou(torch.zeros(1, 1, 6, 6, 6), torch.zeros(1, 1, 6, 6, 6), factor=4)


def test_top_fraction_mask_occupies_exactly_the_largest_logits():
    from genrecon.metrics.occupancy import top_fraction_mask

    logits = torch.tensor([[0.1, 5.0, -3.0, 2.0], [-1.0, -2.0, -0.5, -4.0]]).view(2, 1, 2, 2)
    mask = top_fraction_mask(logits, 0.5)
    assert mask.shape == logits.shape and mask.dtype == torch.bool
    assert mask.flatten(1).tolist() == [[False, True, False, True], [True, False, True, False]]
    # per-sample fractions; all-negative logits still give their share (a plain threshold at 0 gives none)
    per = top_fraction_mask(logits, torch.tensor([0.25, 0.75])).flatten(1)
    assert per.sum(1).tolist() == [1, 3] and per[0, 1] and not per[1, 3]
    # saturated logits (all tied): still exactly k voxels
    flat = top_fraction_mask(torch.full((1, 1, 4, 4, 4), 9.0), 0.125)
    assert int(flat.sum()) == 8
    assert not top_fraction_mask(logits, 0.0).any()
    with pytest.raises(ValueError, match="fraction"):
        top_fraction_mask(logits, 1.5)


def test_surface_classes_split_a_room_corner_into_floor_table_top_and_walls() -> None:
    from genrecon.metrics.occupancy import SURFACE_CLASSES, surface_classes

    r = 16
    occ = torch.zeros(r, r, r, dtype=torch.bool)
    occ[:, :, 0] = True  # floor
    occ[0, :, :] = True  # a wall (normal x)
    occ[:, r - 1, :] = True  # another (normal y)
    occ[5:9, 5:9, 6] = True  # a table top, in the air
    classes = surface_classes(occ)
    assert tuple(classes) == SURFACE_CLASSES
    total = sum(c.long() for c in classes.values())
    assert torch.equal(total.bool(), occ) and int(total.max()) == 1  # a partition of the occupied voxels
    assert int(classes["horizontal"].sum()) == 16 and classes["horizontal"][5:9, 5:9, 6].all()
    assert classes["floor"][3, 3, 0] and classes["floor"][3, 3, 1] == occ[3, 3, 1]
    assert classes["vertical"][0, 4, 8] and classes["vertical"][7, r - 1, 8]
    assert not classes["vertical"][7, 7, 6] and not classes["horizontal"][0, 4, 8]
