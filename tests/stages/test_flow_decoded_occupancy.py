"""The SS flow's decoded-occupancy term (``decoded_occupancy_weight``, a deviation, off by default): BCE + soft Dice
of the one-step x0 estimate, decoded by the frozen SS-VAE decoder, against the chunk's occupancy."""

from __future__ import annotations

import pytest
import torch

from genrecon.models.ss_vae import SparseStructureDecoder
from genrecon.objectives.rectified_flow import RectifiedFlow
from tests.stages.test_flow_occupancy_aux import _batch, _stage


def _with_decoder(weight: float = 1.0):
    """The tiny SS flow (latent 4³ x 8, occupancy 8³) with a frozen decoder set as ``ss_vae_ckpt`` would set it."""
    stage = _stage(weight=0.0)
    torch.manual_seed(3)
    decoder = SparseStructureDecoder(latent_channels=8, num_res_blocks=1, channels=(16, 8),
                                     num_res_blocks_middle=1).eval().requires_grad_(False)
    object.__setattr__(stage, "ss_decoder", decoder)
    stage.decoded_occupancy_weight, stage.trains_x0_estimate = weight, weight > 0
    return stage


def _recorder(logged: dict):
    """A stand-in for ``LightningModule.log`` that keeps each value as a float."""
    return lambda name, value, **kw: logged.__setitem__(name, float(value.detach()))


def test_x0_from_velocity_inverts_the_path() -> None:
    """The x0 that the true velocity implies at x_t is x0 itself, for every t (dense and packed)."""
    flow, gen = RectifiedFlow(sigma_min=1e-5), torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 8, 4, 4, 4, generator=gen), torch.randn(3, 8, 4, 4, 4, generator=gen)
    t = torch.tensor([0.0, 0.37, 1.0])
    x_t = flow.add_noise(x0, t, noise)
    torch.testing.assert_close(flow.x0_from_velocity(x_t, t, flow.velocity_target(x0, noise)), x0)
    packed, batch_idx = torch.randn(7, 5, generator=gen), torch.tensor([0, 0, 1, 1, 1, 2, 2])
    eps = torch.randn(7, 5, generator=gen)
    x_t = flow.add_noise(packed, t, eps, batch_idx)
    torch.testing.assert_close(flow.x0_from_velocity(x_t, t, flow.velocity_target(packed, eps), batch_idx), packed)


def test_the_term_is_added_logged_and_reaches_the_model_but_not_the_decoder() -> None:
    batch, logged = _batch(), {}
    stage = _with_decoder()
    stage.log = _recorder(logged)  # type: ignore[method-assign]
    torch.manual_seed(1)
    loss = stage.training_step(batch, 0)
    loss.backward()
    assert loss.item() == pytest.approx(logged["train/loss"] + logged["train/occ_decoded"], rel=1e-5)
    assert logged["train/occ_decoded"] > 0
    assert all(p.grad is None for p in stage.ss_decoder.parameters())
    # The head of the transformer starts at zero, so the term's gradient reaches its output layer first.
    assert sum(float(p.grad.abs().sum()) for p in stage.model.parameters() if p.grad is not None) > 0
    # Off: the same step gives the flow loss alone and no estimate is kept.
    off, logged_off = _with_decoder(0.0), {}
    off.log = _recorder(logged_off)  # type: ignore[method-assign]
    torch.manual_seed(1)
    assert off.training_step(batch, 0).item() == pytest.approx(logged_off["train/loss"], rel=1e-6)
    assert "train/occ_decoded" not in logged_off
    torch.manual_seed(1)
    assert off._loss(batch, train=True).x0_pred is None


def test_dropped_samples_are_left_out_and_a_fully_dropped_batch_gives_zero() -> None:
    stage, batch = _with_decoder(), _batch()
    out = stage._loss(batch, train=True)
    out.dropped = torch.tensor([True, True])
    term = stage.estimate_losses(batch, out)["occ_decoded"]
    assert term.item() == 0.0 and term.requires_grad
    out.dropped = torch.tensor([False, True])
    one = stage.estimate_losses(batch, out)["occ_decoded"]
    ref = stage.estimate_losses({**batch, "occupancy": batch["occupancy"][:1]},
                                type(out)(out.loss, out.per_sample[:1], out.t[:1], torch.tensor([False]),
                                          out.x0_pred[:1]))["occ_decoded"]
    torch.testing.assert_close(one, ref)


def test_fitting_the_term_lowers_it_towards_its_floor() -> None:
    """Adam steps on one batch lower the decoded-occupancy term: it is a trainable signal. The batch's occupancy
    is what its latent decodes to, as for a trained SS-VAE; the floor is the term of the exact x0 (the untrained
    decoder's logits are small, so the floor is far from 0). Training closes most of the gap to it."""
    stage, batch = _with_decoder(), _batch()
    with torch.no_grad():
        batch["occupancy"] = (stage.ss_decoder(batch["ss_latent"]) > 0).float()
        out = stage._loss(batch, train=False)
        out.x0_pred = stage.normalise(batch["ss_latent"], 1)
        floor = stage.estimate_losses(batch, out)["occ_decoded"].item()
    assert 0 < batch["occupancy"].mean() < 1
    opt = torch.optim.Adam(stage.parameters(), lr=3e-3)
    losses = []
    for step in range(80):
        opt.zero_grad()
        gen = torch.Generator().manual_seed(step % 5)
        out = stage._loss(batch, train=True, generator=gen)
        out.dropped = torch.zeros_like(out.dropped)
        loss = stage.estimate_losses(batch, out)["occ_decoded"]
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert floor < last < first and last - floor < 0.3 * (first - floor), (floor, first, last)


def test_it_needs_the_ss_vae_to_train_but_not_to_load() -> None:
    """Inference rebuilds a stage from its checkpoint without ``ss_vae_ckpt`` (genrecon.stages.loading): that must
    work; training without the decoder must fail at fit start, naming the setting."""
    stage = _stage(weight=0.0, decoded_occupancy_weight=1.0)
    with pytest.raises(ValueError, match="ss_vae_ckpt"):
        stage.on_fit_start()
    with pytest.raises(ValueError, match="ss_vae_ckpt"):
        stage.training_step(_batch(), 0)
