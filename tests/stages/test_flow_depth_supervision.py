"""Depth supervision of the ray-depth cue (``depth_supervision_weight``, a deviation, off by default): the cue's
per-patch depth distribution is trained against the depths of the batch's own surface points."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from genrecon.models.flow_transformer import DenseFlowTransformer, SparseFlowTransformer
from genrecon.models.image_encoder import SmallViT
from genrecon.models.presets import flow_preset
from genrecon.objectives.rectified_flow import RectifiedFlow
from genrecon.pipelines.sampler import EulerSampler
from genrecon.stages import flow
from genrecon.stages.flow import SparseStructureFlowStage
from tests.stages.helpers import fit_auxiliary_term
from tests.stages.test_flow_host_layout import SIZE
from tests.stages.test_flow_host_layout import _batch as sparse_batch
from tests.stages.test_flow_occupancy_aux import _batch

CUE = {"bins": 8, "max_depth": 4.0}


def _stage(weight: float = 1.0, depth_cue: dict | None = CUE, **stage_kwargs) -> SparseStructureFlowStage:
    torch.manual_seed(0)
    encoder = SmallViT(width=32, depth=1, num_heads=2, patch_size=8, num_registers=1)
    model = partial(DenseFlowTransformer, **flow_preset("tiny"), attn_device="cpu", resolution=4, in_channels=8,
                    out_channels=8, depth_cue=depth_cue)
    return SparseStructureFlowStage(
        model=model, image_encoder=encoder, objective=RectifiedFlow(), sampler=EulerSampler(steps=2), image_size=32,
        latent_channels=8, sample_batches=0, depth_supervision_weight=weight, depth_supervision_subcells=2,
        **stage_kwargs,
    )


def _capture(stage) -> dict:
    logged: dict = {}
    stage.log = lambda name, value, **kw: logged.__setitem__(name, float(value.detach() if torch.is_tensor(value) else value))  # type: ignore[method-assign]
    stage.log_dict = lambda d, **kw: logged.update({k: float(v) for k, v in d.items()})  # type: ignore[method-assign]
    return logged


def test_term_reaches_the_depth_head_and_image_encoder_and_is_added() -> None:
    batch = _batch()
    stage = _stage()
    logged = _capture(stage)
    loss = stage.training_step(batch, 0)
    assert loss.item() == pytest.approx(logged["train/loss"] + logged["train/depth_aux"], rel=1e-5)
    loss.backward()
    assert stage.model.depth_cue.head.weight.grad.abs().sum() > 0
    assert sum(float(p.grad.abs().sum()) for p in stage.image_encoder.parameters() if p.grad is not None) > 0
    # Off: no term, and (the injections start at zero) no gradient reaches the image encoder at all.
    stage = _stage(weight=0.0)
    logged = _capture(stage)
    stage.training_step(batch, 0).backward()
    assert "train/depth_aux" not in logged
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in stage.image_encoder.parameters())


def test_targets_come_from_the_occupied_voxels_and_the_term_can_be_fitted() -> None:
    stage, batch = _stage(), _batch()
    # A wall at x index 5 of the 8³ grid. The cameras look along +z from z = -2, so they see the wall edge-on:
    # only the patches of its thin column get a target.
    batch["occupancy"] = torch.zeros_like(batch["occupancy"])
    batch["occupancy"][:, :, 5] = 1.0
    points, batch_idx = stage.surface_points(batch)
    assert points.shape == (2 * 64, 3) and torch.equal(batch_idx.bincount(), torch.tensor([64, 64]))
    torch.testing.assert_close(points[:, 0], torch.full((128,), 5.5 / 8 - 0.5))
    logits, target, has = stage._depth_supervision(batch, stage._prepare(batch)[0])
    assert logits.shape == target.shape == (2, 2, 16, 8) and has.any() and not has.all()
    losses = fit_auxiliary_term(stage, batch, "depth_aux")
    assert losses[-1] < 0.5 * losses[0], losses
    logged = _capture(stage)
    with torch.no_grad():
        stage.validation_step(batch, 0)
    assert logged["val/depth_aux_hit"] > 0.9


def test_depth_supervision_needs_the_depth_cue() -> None:
    with pytest.raises(ValueError, match="depth_cue"):
        _stage(depth_cue=None)


@pytest.mark.parametrize("cls,in_channels", [("ShapeFlowStage", 32), ("TextureFlowStage", 64)])
def test_sparse_stages_supervise_with_their_active_cells(cls, in_channels) -> None:
    torch.manual_seed(1)
    encoder = SmallViT(width=32, depth=1, num_heads=2, patch_size=8, num_registers=0)
    model = partial(SparseFlowTransformer, **flow_preset("tiny"), resolution=8, in_channels=in_channels,
                    out_channels=32, attn_backend="sdpa_loop", attn_device="cpu", depth_cue=CUE)
    stage = getattr(flow, cls)(model=model, image_encoder=encoder, objective=RectifiedFlow(t_schedule="uniform"),
                               sampler=EulerSampler(steps=2), image_size=SIZE, latent_channels=32,
                               depth_supervision_weight=1.0, depth_supervision_subcells=1)
    batch = sparse_batch()
    points, batch_idx = stage.surface_points(batch)
    torch.testing.assert_close(points, (batch["shape_coords"][:, 1:].float() + 0.5) / 8 - 0.5)
    assert torch.equal(batch_idx, batch["shape_coords"][:, 0].long())
    logged = _capture(stage)
    loss = stage.training_step(batch, 0)
    assert torch.isfinite(loss) and logged["train/depth_aux"] > 0
    loss.backward()
    assert stage.model.depth_cue.head.weight.grad.abs().sum() > 0


def test_a_sweeping_depth_cue_is_supervised_through_its_cameras_and_conditions_the_flow() -> None:
    """With ``sweep`` the cue's logits need the batch's cameras, in the supervision and in the conditioning."""
    batch = _batch()
    stage = _stage(depth_cue={**CUE, "sweep": {"channels": 4}})
    logged = _capture(stage)
    loss = stage.training_step(batch, 0)
    assert logged["train/depth_aux"] > 0
    loss.backward()
    sweep = stage.model.depth_cue.sweep
    assert sweep.to_logits.weight.grad.abs().sum() > 0  # the zero-initialised read-out learns first
    assert [n for n, p in stage.named_parameters() if p.requires_grad and p.grad is None] == []
    # Once the read-out is open, the first view's depth logits depend on where the second camera is.
    torch.nn.init.normal_(sweep.to_logits.weight)
    tokens, cue, g = stage._prepare(batch)[0], stage.model.depth_cue, stage.model.projection.num_global_tokens
    moved = batch["w2c"].clone()
    moved[:, 1, 0, 3] += 0.3  # the second camera moved sideways
    first = [cue.token_logits(tokens, g, (w2c, batch["intrinsics"], batch["view_mask"]))[:, 0]
             for w2c in (batch["w2c"], moved)]
    assert not torch.allclose(*first)
