"""The flows' auxiliary view read-outs (deviations, off by default): the SS flow's occupancy head
(``occupancy_aux_weight``) and every flow's latent head (``latent_aux_weight``)."""

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


def _stage(weight: float = 1.0, projection: bool = True, latent_weight: float = 0.0,
           **extra) -> SparseStructureFlowStage:
    torch.manual_seed(0)
    encoder = SmallViT(width=32, depth=1, num_heads=2, patch_size=8, num_registers=0)
    model = partial(DenseFlowTransformer, **flow_preset("tiny"), attn_device="cpu", resolution=4, in_channels=8,
                    out_channels=8)
    return SparseStructureFlowStage(
        model=model, image_encoder=encoder, objective=RectifiedFlow(), sampler=EulerSampler(steps=2), image_size=32,
        latent_channels=8, projection_conditioning=projection, occupancy_aux_weight=weight, occupancy_resolution=8,
        sample_batches=0, latent_aux_weight=latent_weight, **extra,
    )


def _batch(b: int = 2, n: int = 2) -> dict:
    gen = torch.Generator().manual_seed(0)
    w2c = torch.eye(4).repeat(b, n, 1, 1)
    w2c[..., 2, 3] = 2.0  # cameras 2 units behind the chunk, looking along +z
    intrinsics = torch.tensor([[1.0, 0, 0.5], [0, 1.0, 0.5], [0, 0, 1]]).repeat(b, n, 1, 1)
    return {
        "views": torch.rand(b, n, 3, 32, 32, generator=gen), "w2c": w2c, "intrinsics": intrinsics,
        "view_mask": torch.ones(b, n, dtype=torch.bool), "view_counts": [n] * b,
        "ss_latent": torch.randn(b, 8, 4, 4, 4, generator=gen),
        "occupancy": (torch.rand(b, 1, 8, 8, 8, generator=gen) < 0.3).float(), "keys": [str(i) for i in range(b)],
    }


def test_occupancy_blocks_follow_the_token_order() -> None:
    stage, occ = _stage(), _batch()["occupancy"]
    blocks = stage.occupancy_blocks(occ)
    assert blocks.shape == (2, 64, 8)
    for b, x, y, z in [(0, 0, 0, 0), (1, 3, 1, 2), (0, 2, 3, 1)]:
        expected = occ[b, 0, 2 * x : 2 * x + 2, 2 * y : 2 * y + 2, 2 * z : 2 * z + 2].flatten()
        torch.testing.assert_close(blocks[b, x * 16 + y * 4 + z], expected)


def test_auxiliary_term_trains_the_view_pathway_from_the_first_step() -> None:
    """The flow loss cannot reach the image encoder at initialisation (the injections start at zero); the
    auxiliary term does, and it is added to the returned loss and logged."""
    batch, logged = _batch(), {}
    for weight in (0.0, 1.0):
        stage = _stage(weight)
        stage.log = lambda name, value, **kw: logged.__setitem__(name, float(value.detach() if hasattr(value, 'detach') else value))  # type: ignore[method-assign]
        torch.manual_seed(1)
        loss = stage.training_step(batch, 0)
        loss.backward()
        grad = sum(float(p.grad.abs().sum()) for p in stage.image_encoder.parameters() if p.grad is not None)
        if weight == 0:
            assert stage.occupancy_head is None and "train/occ_aux" not in logged
            assert grad == 0.0
        else:
            assert loss.item() == pytest.approx(logged["train/loss"] + logged["train/occ_aux"], rel=1e-5)
            assert grad > 0 and stage.occupancy_head.weight.grad.abs().sum() > 0
    groups = {g["name"]: g["params"] for g in stage.parameter_groups()}
    head = {id(p) for p in stage.occupancy_head.parameters()}
    assert head <= {id(p) for name, ps in groups.items() if name.startswith("new") for p in ps}


def test_validation_logs_the_heads_iou_and_the_term_can_be_fitted() -> None:
    stage, batch, logged = _stage(), _batch(), {}
    stage.log = lambda name, value, **kw: logged.__setitem__(name, float(value))  # type: ignore[method-assign]
    stage.log_dict = lambda d, **kw: logged.update({k: float(v) for k, v in d.items()})  # type: ignore[method-assign]
    with torch.no_grad():
        stage.validation_step(batch, 0)
        prepared = stage._prepare(batch)
        pred = stage.occupancy_head(prepared[1]["cond_3d"]) > 0
    true = stage.occupancy_blocks(batch["occupancy"]) > 0.5
    assert logged["val/occ_aux_iou"] == pytest.approx(float((pred & true).sum() / (pred | true).sum()), rel=1e-6)
    # A learnable target: a wall across the image plane (x < 3; the cameras look along z, so x separates the
    # voxels' projections, while z, the depth, would not).
    batch["occupancy"] = torch.zeros_like(batch["occupancy"])
    batch["occupancy"][:, :, :3] = 1.0
    losses = fit_auxiliary_term(stage, batch, "occ_aux")  # one batch: the term falls as the head, aggregator and encoder fit it
    assert losses[-1] < 0.5 * losses[0], losses


def test_auxiliary_heads_need_the_projection() -> None:
    with pytest.raises(ValueError, match="projection"):
        _stage(projection=False)
    with pytest.raises(ValueError, match="projection"):
        _stage(weight=0.0, projection=False, latent_weight=1.0)


def test_occupancy_term_is_bce_plus_dice() -> None:
    """Plain BCE is nearly minimal for a head that calls every voxel empty on sparse occupancy; the Dice part
    is not (it is 1 for an all-empty prediction)."""
    from genrecon.models.ss_vae import soft_dice_loss

    stage, batch = _stage(), _batch()
    prepared = stage._prepare(batch)
    logits = stage.occupancy_head(prepared[1]["cond_3d"]).float()
    target = stage.occupancy_blocks(batch["occupancy"])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, target) + soft_dice_loss(logits, target)
    torch.testing.assert_close(stage.auxiliary_losses(batch, prepared)["occ_aux"], expected)
    empty = torch.full_like(logits, -20.0)
    assert soft_dice_loss(empty, target) > 0.99


def test_dense_latent_head_targets_the_token_layout_and_reports_r2() -> None:
    stage, batch = _stage(weight=0.0, latent_weight=2.0), _batch()
    prepared = stage._prepare(batch)
    x0 = prepared[1]["x0"]  # [B, 8, 4, 4, 4], normalised
    tokens = stage.latent_tokens(x0)
    assert tokens.shape == (2, 64, 8)
    torch.testing.assert_close(tokens[1, 1 * 16 + 2 * 4 + 3], x0[1, :, 1, 2, 3])
    pred = stage.latent_head(prepared[1]["cond_3d"])
    torch.testing.assert_close(stage.auxiliary_losses(batch, prepared)["latent_aux"],
                               2.0 * torch.nn.functional.mse_loss(pred, tokens))
    with torch.no_grad():  # a head that outputs the target exactly explains all of its variance
        stage.latent_head.weight.zero_()
        stage.latent_head.bias.copy_(tokens.mean((0, 1)))
    metrics = stage.auxiliary_metrics(batch, prepared)
    assert float(metrics["latent_aux_r2"]) == pytest.approx(0.0, abs=1e-5)  # the mean alone explains nothing
    assert float(metrics["latent_aux_r2_raw"]) == pytest.approx(0.0, abs=1e-5)


def test_raw_r2_weighs_channels_by_their_own_variance() -> None:
    """A prediction exact on a loud channel and useless on a quiet one: in normalised units (both unit variance)
    it explains half, in the latent's own units nearly all."""
    from genrecon.stages.flow import pooled_r2

    torch.manual_seed(0)
    target = torch.randn(4000, 2)  # normalised: unit variance in both channels
    pred = torch.stack([target[:, 0], torch.zeros(4000)], dim=1)
    assert float(pooled_r2(pred, target)) == pytest.approx(0.5, abs=0.02)
    scale = torch.tensor([0.5, 0.005])  # the channels' std in the latent's own units
    assert float(pooled_r2(pred * scale, target * scale)) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("cls,in_channels", [("ShapeFlowStage", 32), ("TextureFlowStage", 64)])
def test_sparse_latent_head_trains_the_view_pathway(cls, in_channels) -> None:
    torch.manual_seed(1)
    encoder = SmallViT(width=32, depth=1, num_heads=2, patch_size=8, num_registers=0)
    model = partial(SparseFlowTransformer, **flow_preset("tiny"), resolution=8, in_channels=in_channels,
                    out_channels=32, attn_backend="sdpa_loop", attn_device="cpu")
    stage = getattr(flow, cls)(model=model, image_encoder=encoder, objective=RectifiedFlow(t_schedule="uniform"),
                               sampler=EulerSampler(steps=2), image_size=SIZE, latent_channels=32,
                               latent_aux_weight=1.0)
    batch, logged = sparse_batch(), {}
    stage.log = lambda name, value, **kw: logged.__setitem__(name, float(value.detach()))  # type: ignore[method-assign]
    loss = stage.training_step(batch, 0)
    assert loss.item() == pytest.approx(logged["train/loss"] + logged["train/latent_aux"], rel=1e-5)
    loss.backward()
    assert sum(float(p.grad.abs().sum()) for p in stage.image_encoder.parameters() if p.grad is not None) > 0
    groups = {g["name"]: g["params"] for g in stage.parameter_groups()}
    new = {id(p) for name, ps in groups.items() if name.startswith("new") for p in ps}
    assert {id(p) for p in stage.latent_head.parameters()} <= new


def test_latent_head_readout_is_the_head_on_the_fused_views_in_the_sample_layout() -> None:
    """Dense (SS) and packed sparse (texture) stages: the read-out is the head applied to ``cond_3d``, shaped as
    ``sample`` returns; a stage without the head has none."""
    assert _stage(weight=0.0).latent_head_readout(_batch()) is None
    stage, batch = _stage(weight=0.0, latent_weight=1.0), _batch()
    with torch.no_grad():
        torch.nn.init.normal_(stage.latent_head.weight)
    prepared = stage._prepare(batch)
    readout = stage.latent_head_readout(batch)
    assert readout.shape == prepared[1]["x0"].shape == stage.sample(batch).shape  # [B, 8, 4, 4, 4]
    torch.testing.assert_close(stage.latent_tokens(readout), stage.latent_head(prepared[1]["cond_3d"]))

    torch.manual_seed(2)
    encoder = SmallViT(width=32, depth=1, num_heads=2, patch_size=8, num_registers=0)
    model = partial(SparseFlowTransformer, **flow_preset("tiny"), resolution=8, in_channels=64, out_channels=32,
                    attn_backend="sdpa_loop", attn_device="cpu")
    stage = flow.TextureFlowStage(model=model, image_encoder=encoder, objective=RectifiedFlow(t_schedule="uniform"),
                                  sampler=EulerSampler(steps=2), image_size=SIZE, latent_channels=32,
                                  latent_aux_weight=1.0)
    batch = sparse_batch()
    readout = stage.latent_head_readout(batch)
    assert readout.shape == stage.sample(batch).shape == (len(batch["shape_coords"]), 32)
    torch.testing.assert_close(readout, stage.latent_head(stage._prepare(batch)[1]["cond_3d"]))
