"""``depth_cue_oracle`` (a diagnostic, off): the SS flow's depth cue reads the true depths of the chunk's surface
instead of its head's estimate, in training and sampling alike."""

from __future__ import annotations

import pytest
import torch

from genrecon.stages.flow import SparseStructureFlowStage
from tests.stages.test_flow_depth_supervision import CUE
from tests.stages.test_flow_depth_supervision import _stage as supervised_stage
from tests.stages.test_flow_occupancy_aux import _batch


def _stage(oracle: bool = True, depth_cue: dict | None = CUE) -> SparseStructureFlowStage:
    return supervised_stage(weight=0.0, depth_cue=depth_cue, depth_cue_oracle=oracle)


def test_oracle_conditioning_follows_the_occupancy_not_the_head() -> None:
    batch = _batch()
    stage = _stage()
    # The cue's injection starts at zero; open it so the evidence shows in cond_3d.
    torch.nn.init.normal_(stage.model.depth_cue.to_feature.weight)
    tokens = stage._prepare(batch)[0]
    cond = stage.flow_inputs(batch, tokens)["cond_3d"]
    # The head no longer matters ...
    torch.nn.init.normal_(stage.model.depth_cue.head.weight)
    torch.testing.assert_close(stage.flow_inputs(batch, tokens)["cond_3d"], cond)
    # ... the occupancy does: another structure, another conditioning.
    moved = dict(batch, occupancy=batch["occupancy"].flip(-1))
    assert not torch.allclose(stage.flow_inputs(moved, tokens)["cond_3d"], cond)
    # Without the oracle the head's estimate is used and the occupancy is not read.
    stage.depth_cue_oracle = False
    plain = stage.flow_inputs(batch, tokens)["cond_3d"]
    torch.testing.assert_close(stage.flow_inputs(moved, tokens)["cond_3d"], plain)
    assert not torch.allclose(plain, cond)


def test_oracle_trains_every_trainable_parameter_samples_and_needs_the_occupancy() -> None:
    batch = _batch()
    stage = _stage()
    stage.log = stage.log_dict = lambda *a, **k: None  # type: ignore[method-assign]
    loss = stage.training_step(batch, 0)
    assert torch.isfinite(loss)
    loss.backward()
    # The unused depth head is frozen: under DDP every trainable parameter must be in the graph.
    assert not any(p.requires_grad for p in stage.model.depth_cue.head.parameters())
    assert [n for n, p in stage.named_parameters() if p.requires_grad and p.grad is None] == []
    with torch.no_grad():
        assert stage.sample(batch, seed=0).shape == batch["ss_latent"].shape
    with pytest.raises(KeyError, match="occupancy"):
        stage.flow_inputs({k: v for k, v in batch.items() if k != "occupancy"}, stage._prepare(batch)[0])


def test_oracle_needs_the_depth_cue() -> None:
    with pytest.raises(ValueError, match="depth_cue"):
        _stage(depth_cue=None)
