"""Dense read-outs for the view-encoder pretraining: cell pooling, per-patch depth histograms, the head's layout."""

from __future__ import annotations

import torch

from genrecon.models.depth_cue import DepthCue
from genrecon.models.view_heads import (
    ViewPropertyHead,
    patch_depth_histograms,
    pool_cells,
    view_property_losses,
)


def test_pool_cells_averages_only_valid_pixels():
    values = torch.arange(16.0).view(1, 1, 4, 4)
    valid = torch.ones(1, 4, 4, dtype=torch.bool)
    valid[0, 0, 0] = False  # the top-left cell loses its pixel 0
    valid[0, 2:, 2:] = False  # the bottom-right cell has none
    pooled, has = pool_cells(values, valid, 2)
    assert torch.allclose(pooled[0, 0, 0, 0], torch.tensor((1 + 4 + 5) / 3))
    assert torch.allclose(pooled[0, 0, 0, 1], torch.tensor((2 + 3 + 6 + 7) / 4))
    assert has.tolist() == [[[True, True], [True, False]]]
    assert pooled[0, 0, 1, 1] == 0


def test_patch_depth_histograms_bin_each_patch_like_the_depth_cue():
    depth = torch.zeros(1, 4, 8)
    depth[:, :, :4] = 1.3  # left patch: one depth
    depth[:, :2, 4:] = 0.2  # right patch: half at 0.2, half at 3.9
    depth[:, 2:, 4:] = 3.9
    valid = torch.ones(1, 4, 8, dtype=torch.bool)
    valid[:, 0, 0] = False
    hist, has = patch_depth_histograms(depth, valid, patch=4, bins=8, max_depth=4.0)
    assert hist.shape == (1, 2, 8) and has.all()
    assert hist[0, 0, 2] == 1.0  # 1.3 / 4 * 8 = 2.6 -> bin 2 (floor, as patch_depth_targets)
    assert hist[0, 1, 0] == 0.5 and hist[0, 1, 7] == 0.5
    none, has_none = patch_depth_histograms(depth, torch.zeros_like(valid), patch=4, bins=8, max_depth=4.0)
    assert not has_none.any() and none.sum() == 0


def test_head_maps_tokens_to_their_image_cells_and_matches_the_depth_cue():
    torch.manual_seed(0)
    head = ViewPropertyHead(channels=16, subdivisions=2, depth_bins=8, max_depth=4.0)
    assert head.depth_bins.weight.shape == DepthCue(16, bins=8).head.weight.shape
    tokens = torch.zeros(1, 1 + 9, 16)  # one global token, a 3x3 patch grid
    tokens[0, 1 + 5] = torch.randn(16)  # patch row 1, column 2
    cells, logits = head(tokens, num_global_tokens=1)
    assert cells["base_colour"].shape == (1, 3, 6, 6) and logits.shape == (1, 9, 8)
    # Only the 2x2 cells of patch (1, 2) differ from the head's response to all-zero tokens.
    blank, _ = head(torch.zeros_like(tokens), num_global_tokens=1)
    diff = (cells["log_depth"][0, 0] - blank["log_depth"][0, 0]).abs() > 0
    assert diff[2:4, 4:6].all() and diff.sum() == 4
    assert torch.allclose(cells["normal"].norm(dim=1), torch.ones(1, 6, 6))


def test_losses_reach_zero_error_on_their_own_targets():
    """A head whose outputs equal the pooled targets scores an exact PSNR ceiling and no normal or depth error."""
    torch.manual_seed(0)
    head = ViewPropertyHead(channels=8, subdivisions=1, depth_bins=4, max_depth=4.0)
    tokens = torch.randn(2, 4, 8)  # no global token, a 2x2 grid
    with torch.no_grad():
        cells, _ = head(tokens, 0)
    # Full-resolution targets that pool exactly to the head's cells (2x2 pixels per patch).
    up = lambda x: x.repeat_interleave(2, -1).repeat_interleave(2, -2)  # noqa: E731
    targets = {"base_colour": up(cells["base_colour"]), "normal": up(cells["normal"]),
               "depth": up(cells["log_depth"].exp())[:, 0], "valid": torch.ones(2, 4, 4, dtype=torch.bool)}
    loss, metrics = view_property_losses(head, tokens, 0, targets, patch=2, depth_unit_m=1.0,
                                         weights={"depth_bins": 0.0})
    assert metrics["loss_base_colour"] < 1e-6 and metrics["loss_log_depth"] < 1e-5
    assert metrics["normal_deg"] < 0.1 and metrics["base_colour_psnr"] > 60
    assert abs(loss.item() - (metrics["loss_base_colour"] + metrics["loss_normal"] + metrics["loss_log_depth"]).item()) < 1e-5
