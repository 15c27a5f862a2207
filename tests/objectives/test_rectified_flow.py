import pytest
import torch

from genrecon.objectives.rectified_flow import RectifiedFlow

SIGMA = 1e-5


def test_path_endpoints_and_velocity_is_the_time_derivative() -> None:
    flow = RectifiedFlow(sigma_min=SIGMA)
    g = torch.Generator().manual_seed(0)
    x0, eps = (
        torch.randn(3, 4, 5, generator=g, dtype=torch.float64),
        torch.randn(3, 4, 5, generator=g, dtype=torch.float64),
    )
    torch.testing.assert_close(flow.add_noise(x0, torch.zeros(3, dtype=torch.float64), eps), x0 + SIGMA * eps)
    torch.testing.assert_close(flow.add_noise(x0, torch.ones(3, dtype=torch.float64), eps), eps)
    t = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    h = 1e-6
    numeric = (flow.add_noise(x0, t + h, eps) - flow.add_noise(x0, t - h, eps)) / (2 * h)
    torch.testing.assert_close(flow.velocity_target(x0, eps), numeric)


def test_t_schedules() -> None:
    g = torch.Generator().manual_seed(1)
    t = RectifiedFlow(t_schedule="logit_normal", mean=1.0, std=1.0).sample_t(20_000, generator=g)
    logit = torch.log(t / (1 - t))
    assert abs(logit.mean() - 1.0) < 0.05 and abs(logit.std() - 1.0) < 0.05
    u = RectifiedFlow(t_schedule="uniform").sample_t(20_000, generator=g)
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.02
    with pytest.raises(ValueError, match="t_schedule"):
        RectifiedFlow(t_schedule="cosine")


def test_oracle_model_has_zero_loss_dense_and_sparse() -> None:
    flow = RectifiedFlow(sigma_min=SIGMA, p_uncond=0.0)
    g = torch.Generator().manual_seed(2)
    x0, noise = torch.randn(2, 8, 3, 3, 3, generator=g), torch.randn(2, 8, 3, 3, 3, generator=g)
    oracle = lambda x_t, t, c2, c3: flow.velocity_target(x0, noise)
    out = flow.loss(oracle, x0, torch.zeros(2, 4, 6), noise=noise, generator=g)
    assert out.loss == 0 and out.per_sample.shape == (2,) and out.t.shape == (2,)

    batch_idx = torch.tensor([0, 0, 0, 1, 1])
    feats, eps = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    out = flow.loss(
        lambda *a: flow.velocity_target(feats, eps),
        feats,
        torch.zeros(2, 4, 6),
        batch_idx=batch_idx,
        noise=eps,
    )
    assert out.loss == 0


def test_sparse_loss_and_noise_are_per_sample() -> None:
    flow = RectifiedFlow(sigma_min=SIGMA, p_uncond=0.0)
    g = torch.Generator().manual_seed(3)
    batch_idx = torch.tensor([0, 0, 1, 1, 1, 1])
    feats, eps = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    t = torch.tensor([0.25, 0.75])
    x_t = flow.add_noise(feats, t, eps, batch_idx)
    torch.testing.assert_close(x_t[:2], flow.add_noise(feats[:2], t[:1], eps[:2]))
    torch.testing.assert_close(x_t[2:], flow.add_noise(feats[2:], t[1:], eps[2:]))
    seen = {}

    def zero_model(x, tt, c2, c3):
        seen["x_t"] = x
        return torch.zeros_like(x)

    out = flow.loss(zero_model, feats, torch.zeros(2, 1, 3), batch_idx=batch_idx, t=t, noise=eps)
    torch.testing.assert_close(seen["x_t"], x_t)
    target = flow.velocity_target(feats, eps)
    torch.testing.assert_close(out.loss, target.square().mean())  # over all active voxels' features
    torch.testing.assert_close(
        out.per_sample, torch.stack([target[:2].square().mean(), target[2:].square().mean()])
    )


def test_cfg_dropout_zeroes_both_conditions_jointly() -> None:
    flow = RectifiedFlow(p_uncond=0.5)
    g = torch.Generator().manual_seed(4)
    cond_2d = torch.randn(16, 3, 4) + 5
    cond_3d_dense = torch.randn(16, 7, 4) + 5
    c2, c3, dropped = flow.drop_conditions(cond_2d, cond_3d_dense, generator=g)
    assert 0 < dropped.sum() < 16
    assert (c2[dropped] == 0).all() and (c3[dropped] == 0).all()
    assert torch.equal(c2[~dropped], cond_2d[~dropped]) and torch.equal(c3[~dropped], cond_3d_dense[~dropped])

    batch_idx = torch.arange(16).repeat_interleave(2)
    cond_3d = (torch.randn(32, 4) + 5).requires_grad_()
    c2, c3, dropped = flow.drop_conditions(cond_2d, cond_3d, batch_idx, generator=g)
    token_dropped = dropped[batch_idx]
    assert (c3[token_dropped] == 0).all() and torch.equal(c3[~token_dropped], cond_3d[~token_dropped])
    assert (c2[dropped] == 0).all()
    c3.sum().backward()  # the kept samples keep their graph to the aggregator
    assert torch.equal(cond_3d.grad[:, 0], (~token_dropped).float())


def test_loss_passes_dropped_conditions_and_can_skip_dropout() -> None:
    flow = RectifiedFlow(p_uncond=1.0)
    seen = {}

    def model(x, t, c2, c3):
        seen.update(c2=c2, c3=c3)
        return torch.zeros_like(x)

    x0 = torch.randn(2, 3)
    out = flow.loss(model, x0, torch.ones(2, 4, 5), torch.ones(2, 6, 5))
    assert out.dropped.all() and not seen["c2"].any() and not seen["c3"].any()
    out = flow.loss(model, x0, torch.ones(2, 4, 5), torch.ones(2, 6, 5), cfg_dropout=False)
    assert not out.dropped.any() and seen["c2"].all() and seen["c3"].all()


def test_endpoint_share_draws_t_equal_to_one_and_leaves_the_rest_of_the_schedule() -> None:
    n = 20000
    published = RectifiedFlow(t_schedule="uniform").sample_t(n, generator=torch.Generator().manual_seed(1))
    off = RectifiedFlow(t_schedule="uniform", p_endpoint=0.0).sample_t(n, generator=torch.Generator().manual_seed(1))
    assert torch.equal(published, off)
    mixed = RectifiedFlow(t_schedule="uniform", p_endpoint=0.2).sample_t(n, generator=torch.Generator().manual_seed(1))
    at_one = mixed == 1.0
    assert abs(at_one.float().mean().item() - 0.2) < 0.015 and (published < 1.0).all()
    # The others keep their uniform draw: the same times as without the endpoint share.
    assert torch.equal(mixed[~at_one], published[~at_one])
    assert (RectifiedFlow(p_endpoint=1.0).sample_t(8) == 1.0).all()
    with pytest.raises(ValueError, match="p_endpoint"):
        RectifiedFlow(p_endpoint=1.5)
