"""``preset.flow.point_grid`` (a deviation, off): the SS flow's 3-D condition gets the stage's points counted per
occupancy voxel of each latent cell."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from genrecon.models.flow_transformer import DenseFlowTransformer
from genrecon.models.image_encoder import SmallViT
from genrecon.models.presets import flow_preset
from genrecon.objectives.rectified_flow import RectifiedFlow
from genrecon.pipelines.sampler import EulerSampler
from genrecon.stages.flow import SparseStructureFlowStage
from tests.stages.test_flow_depth_supervision import CUE
from tests.stages.test_flow_occupancy_aux import _batch

GRID = {"subdivisions": 2}  # the test batch: a 4³ latent of an 8³ occupancy
POINTS = {"keep": [1.0, 1.0], "eval_keep": 1.0, "noise": 0.0, "depth_cue": False}


def _stage(point_depth: dict | None = POINTS, point_grid: dict | None = GRID,
           depth_cue: dict | None = None) -> SparseStructureFlowStage:
    torch.manual_seed(0)
    encoder = SmallViT(width=32, depth=1, num_heads=2, patch_size=8, num_registers=1)
    model = partial(DenseFlowTransformer, **flow_preset("tiny"), attn_device="cpu", resolution=4, in_channels=8,
                    out_channels=8, depth_cue=depth_cue, point_grid=point_grid)
    return SparseStructureFlowStage(
        model=model, image_encoder=encoder, objective=RectifiedFlow(), sampler=EulerSampler(steps=2), image_size=32,
        latent_channels=8, sample_batches=0, depth_supervision_subcells=2, point_depth=point_depth,
    )


def test_condition_adds_the_seen_voxels_counted_per_cell() -> None:
    batch = _batch()
    stage = _stage().eval()
    tokens = stage._prepare(batch)[0]
    plain = stage.flow_inputs(batch, tokens)["cond_3d"]  # untrained cue: nothing added
    torch.nn.init.normal_(stage.model.point_grid.to_feature.weight)
    cond = stage.flow_inputs(batch, tokens)["cond_3d"]
    points, idx = stage.simulated_points(batch, 2)
    counts = stage.point_grid.counts(points, idx, 2, (4, 4, 4))
    torch.testing.assert_close(cond, plain + stage.point_grid(counts))
    # The seen voxels, no more: every count lies on an occupied voxel (no jitter).
    occ = batch["occupancy"][:, 0]
    fine = counts.view(2, 4, 4, 4, 2, 2, 2).permute(0, 1, 4, 2, 5, 3, 6).reshape(2, 8, 8, 8)
    assert fine.sum() > 0 and ((fine > 0) <= (occ > 0.5)).all()


def test_training_reaches_every_trainable_parameter_with_and_without_the_depth_cue() -> None:
    batch = _batch()
    for point_depth, depth_cue in [(POINTS, None), ({**POINTS, "depth_cue": True, "keep": [0.1, 1.0]}, CUE)]:
        stage = _stage(point_depth, depth_cue=depth_cue)
        stage.log = stage.log_dict = lambda *a, **k: None  # type: ignore[method-assign]
        stage.training_step(batch, 0).backward()
        assert stage.model.point_grid.to_feature.weight.grad is not None
        assert [n for n, p in stage.named_parameters() if p.requires_grad and p.grad is None] == []
        # One registration: the stage reaches the cue through its model, and checkpoints hold it once.
        assert [k for k in stage.state_dict() if "point_grid" in k] == ["model.point_grid.to_feature.weight",
                                                                        "model.point_grid.to_feature.bias"]
        with torch.no_grad():
            assert stage.eval().sample(batch, seed=0).shape == batch["ss_latent"].shape


def test_point_grid_needs_a_source_of_points_and_the_depth_cue_needs_its_cue() -> None:
    with pytest.raises(ValueError, match="point_depth"):
        _stage(point_depth=None)
    with pytest.raises(ValueError, match="depth_cue"):
        _stage({**POINTS, "depth_cue": True})
    with pytest.raises(ValueError, match="aggregator"):
        DenseFlowTransformer(**flow_preset("tiny"), resolution=4, in_channels=8, out_channels=8,
                             point_grid=GRID)
