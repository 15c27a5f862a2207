from itertools import pairwise

import pytest
import torch

from genrecon.pipelines.sampler import EulerSampler, overridden


def test_time_grid_and_rescale_t() -> None:
    assert EulerSampler(steps=4).timesteps() == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    s = 3.0
    grid = EulerSampler(steps=12, rescale_t=s).timesteps()
    base = torch.linspace(1, 0, 13, dtype=torch.float64)
    assert grid == pytest.approx((s * base / (1 + (s - 1) * base)).tolist())
    assert grid[0] == 1.0 and grid[-1] == 0.0
    assert all(a > b for a, b in pairwise(grid))
    # s > 1 spends the steps near t = 1: the first step is shorter than uniform.
    assert grid[0] - grid[1] < 1 / 12


@pytest.mark.parametrize("rescale_t", [1.0, 5.0])
def test_constant_velocity_is_integrated_exactly(rescale_t: float) -> None:
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    velocity = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    sampler = EulerSampler(steps=7, rescale_t=rescale_t, guidance_strength=3.0, guidance_rescale=0.0)
    # A field independent of the condition: CFG leaves it unchanged.
    out = sampler.sample(lambda x, t, c2, c3: velocity, noise, torch.ones(2, 1, 1))
    torch.testing.assert_close(out, noise - velocity, atol=1e-12, rtol=0)


def _recording_model(calls: list, v_pos: float = 2.0, v_neg: float = -1.0):
    def model(x, t, cond_2d, cond_3d):
        negative = not cond_2d.any()
        assert cond_3d is None or bool(cond_3d.any()) != negative  # both conditions dropped together
        calls.append((float(t[0]), negative))
        return torch.full_like(x, v_neg if negative else v_pos)

    return model


def test_guidance_interval_is_respected() -> None:
    calls: list = []
    sampler = EulerSampler(steps=12, guidance_strength=7.5, guidance_interval=(0.6, 1.0), rescale_t=5.0)
    sampler.sample(_recording_model(calls), torch.zeros(1, 4), torch.ones(1, 2, 3), torch.ones(1, 4, 3))
    times = sampler.timesteps()[:-1]
    for t in times:
        negatives = [neg for tc, neg in calls if tc == pytest.approx(t)]
        assert negatives.count(True) == (1 if 0.6 <= t <= 1.0 else 0)
        assert negatives.count(False) == 1
    assert any(t < 0.6 for t in times) and any(t >= 0.6 for t in times)

    calls.clear()
    EulerSampler(steps=5, guidance_strength=1.0).sample(
        _recording_model(calls), torch.zeros(1, 4), torch.ones(1, 2, 3)
    )
    assert len(calls) == 5 and not any(neg for _, neg in calls)  # w = 1: no negative pass at all


def test_cfg_combination() -> None:
    sampler = EulerSampler(steps=1, guidance_strength=3.0)
    v = sampler.velocity(_recording_model([]), torch.zeros(2, 4), 1.0, torch.ones(2, 2, 3))
    torch.testing.assert_close(v, torch.full((2, 4), 3.0 * 2.0 + (1 - 3.0) * -1.0))


def test_cfg_rescale_matches_reference_formula() -> None:
    g = torch.Generator().manual_seed(1)
    sigma, t, w, phi = 1e-5, 0.7, 4.0, 0.6
    x_t = torch.randn(2, 3, 5, generator=g, dtype=torch.float64)
    pos, neg = (
        torch.randn(2, 3, 5, generator=g, dtype=torch.float64),
        torch.randn(2, 3, 5, generator=g, dtype=torch.float64),
    )
    model = lambda x, tt, c2, c3: neg if not c2.any() else pos
    sampler = EulerSampler(sigma_min=sigma, guidance_strength=w, guidance_rescale=phi)
    v = sampler.velocity(model, x_t, t, torch.ones(2, 1, 1))

    s_t = sigma + (1 - sigma) * t
    cfg = w * pos + (1 - w) * neg
    x0_pos, x0_cfg = (1 - sigma) * x_t - s_t * pos, (1 - sigma) * x_t - s_t * cfg
    std = lambda a: a.std(dim=(1, 2), keepdim=True)
    x0 = phi * x0_cfg * std(x0_pos) / std(x0_cfg) + (1 - phi) * x0_cfg
    expected = (1 - sigma) * (x_t - (1 - t) * x0) / s_t - x0
    torch.testing.assert_close(v, expected)
    # Full rescale: the guided x0 prediction has the conditional prediction's std.
    sampler_full = EulerSampler(sigma_min=sigma, guidance_strength=w, guidance_rescale=1.0)
    v_full = sampler_full.velocity(model, x_t, t, torch.ones(2, 1, 1))
    torch.testing.assert_close(std((1 - sigma) * x_t - s_t * v_full), std(x0_pos))


def test_packed_sparse_matches_dense() -> None:
    g = torch.Generator().manual_seed(2)
    noise = torch.randn(2, 6, 4, generator=g, dtype=torch.float64)
    w_pos, w_neg = (
        torch.randn(4, 4, generator=g, dtype=torch.float64),
        torch.randn(4, 4, generator=g, dtype=torch.float64),
    )

    def model(x, t, c2, c3):  # a linear field, same per token whatever the layout
        return x @ (w_neg if not c2.any() else w_pos) * t.mean()

    sampler = EulerSampler(
        steps=6, guidance_strength=5.0, guidance_rescale=0.7, guidance_interval=(0.5, 1.0), rescale_t=3.0
    )
    dense = sampler.sample(model, noise, torch.ones(2, 1, 1))
    batch_idx = torch.arange(2).repeat_interleave(6)
    packed = sampler.sample(model, noise.reshape(12, 4), torch.ones(2, 1, 1), batch_idx=batch_idx)
    torch.testing.assert_close(packed.view(2, 6, 4), dense)


def test_callback_runs_after_every_step_and_replaces_x() -> None:
    seen = []

    def callback(x, t, t_prev):
        seen.append((t, t_prev))
        return torch.zeros_like(x)

    sampler = EulerSampler(steps=4, rescale_t=2.0)
    out = sampler.sample(
        lambda x, t, c2, c3: torch.ones_like(x), torch.ones(1, 3), torch.ones(1, 1, 1), callback=callback
    )
    times = sampler.timesteps()
    assert seen == list(pairwise(times))
    assert not out.any()


def test_mean_of_draws_and_the_draws_setting() -> None:
    from genrecon.pipelines.sampler import mean_of_draws

    seen = []
    out = mean_of_draws(lambda j: seen.append(j) or torch.full((2,), float(j), dtype=torch.bfloat16), 4)
    assert seen == [0, 1, 2, 3] and out.dtype == torch.float32 and torch.equal(out, torch.full((2,), 1.5))
    # float32 draws, single and per-chunk lists: the sum never writes into a draw the caller still holds
    held = [torch.full((2,), float(j)) for j in range(3)]
    assert torch.equal(mean_of_draws(lambda j: held[j], 3), torch.full((2,), 1.0))
    parts = [[torch.full((1,), float(j)), torch.full((3,), 2.0 * j)] for j in range(3)]
    means = mean_of_draws(lambda j: parts[j], 3)
    assert torch.equal(means[0], torch.ones(1)) and torch.equal(means[1], torch.full((3,), 2.0))
    assert [float(h[0]) for h in held] == [0.0, 1.0, 2.0] and float(parts[0][1][0]) == 0.0
    assert EulerSampler().draws == 1 and EulerSampler(draws=8).draws == 8
    with pytest.raises(ValueError, match="draws"):
        EulerSampler(draws=0)


def test_overridden_settings_are_restored_after_the_body_and_after_an_error():
    sampler = EulerSampler(steps=12)
    with overridden(sampler, steps=1, draws=4) as s:
        assert s is sampler and (sampler.steps, sampler.draws) == (1, 4)
    assert (sampler.steps, sampler.draws) == (12, 1)
    with pytest.raises(RuntimeError), overridden(sampler, steps=3):
        raise RuntimeError("sampling failed")
    assert sampler.steps == 12
    with overridden(sampler, note="temporary"):
        assert sampler.note == "temporary"
    assert not hasattr(sampler, "note")
