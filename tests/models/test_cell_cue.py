"""Sub-patch cell cue (a deviation, off by default): the cell under each (voxel, view) projection, laid out as the
pretraining's dense head, and a pathway unchanged at initialisation."""

from __future__ import annotations

import pytest
import torch

from genrecon.models.cell_cue import CellCue
from genrecon.models.flow_transformer import DenseFlowTransformer
from genrecon.models.presets import flow_preset
from genrecon.models.view_heads import DENSE_CHANNELS, ViewPropertyHead
from tests.models.test_depth_cue import assert_cue_starts_closed_and_trains, pathway_model


def test_pick_reads_the_pretraining_heads_cell_at_every_pixel_cell() -> None:
    torch.manual_seed(0)
    p, s, c = 3, 4, 8
    head, cue = ViewPropertyHead(c, subdivisions=s), CellCue(c, subdivisions=s)
    cue.head.load_state_dict(head.dense.state_dict())
    tokens = torch.randn(1, p * p, c)
    maps, _ = head(tokens, num_global_tokens=0)
    q = p * s
    rows, cols = torch.meshgrid(torch.arange(q), torch.arange(q), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()
    # A point anywhere inside pixel cell (row, col): here a quarter of the way into it.
    u, v = ((cols + 0.25) / q)[:, None], ((rows + 0.75) / q)[:, None]  # [Q², 1 view]
    patch = (rows // s) * p + cols // s
    cells = cue.head(tokens[0, patch])[:, None]  # what nearest projection gathers: [Q², 1, s²·7]
    picked = cue.pick(cells, u, v, p)[:, 0]  # [Q², 7]
    torch.testing.assert_close(picked[:, 6], maps["log_depth"][0, 0, rows, cols])
    torch.testing.assert_close(torch.sigmoid(picked[:, :3]), maps["base_colour"][0, :, rows, cols].T)
    assert cue.extra_channels == s * s * DENSE_CHANNELS


@pytest.mark.parametrize("depth_cue", [None, {"bins": 16, "max_depth": 4.0}])
def test_untrained_cue_leaves_the_pathway_as_published_and_trains(depth_cue) -> None:
    plain, cued = pathway_model(depth_cue), pathway_model(depth_cue, {"subdivisions": 2})
    cued.load_state_dict(plain.state_dict(), strict=False)  # shared weights equal; the cue's own as built
    assert_cue_starts_closed_and_trains(plain, cued, cued.cell_cue)


def test_open_cue_tells_cells_of_one_patch_apart() -> None:
    """The published pathway gives every point of a patch the same token; the cue separates points in different
    cells of it and only those."""
    torch.manual_seed(3)
    cue = CellCue(16, subdivisions=4)
    with torch.no_grad():
        cue.to_feature.weight.normal_()
    feats = torch.randn(1, 1, 16).expand(3, 1, 16)
    cells = cue.head(torch.randn(16)).expand(3, 1, -1)  # one token's cells under all three points
    # Patch grid 4: the patch [0.25, 0.5) in u has cells of width 1/16; points 0 and 1 share a cell, 2 does not.
    u = torch.tensor([[0.251], [0.31], [0.49]])
    out = cue(feats, cells, u, torch.full((3, 1), 0.3), torch.ones(3, 1), patch_grid=4)
    torch.testing.assert_close(out[0], out[1])
    assert not torch.allclose(out[0], out[2])


def test_cue_needs_nearest_sampling_and_the_pathway() -> None:
    with pytest.raises(ValueError, match="nearest"):
        pathway_model(cell_cue={"subdivisions": 4}, sampling="bilinear")
    cfg = {**flow_preset("tiny"), "cond_channels": 16}
    with pytest.raises(ValueError, match="cell_cue"):
        DenseFlowTransformer(resolution=4, in_channels=8, out_channels=8, **cfg, attn_device="cpu",
                             cell_cue={"subdivisions": 4})
