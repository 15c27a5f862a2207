"""FlowStage.sample with the sampler's ``draws``: the mean of K samples from successive noises."""

from __future__ import annotations

import torch

from genrecon.pipelines.sampler import EulerSampler
from tests.stages.test_flow_occupancy_aux import _batch, _stage


def test_draws_average_samples_from_successive_noises_of_the_seeded_generator() -> None:
    stage, batch = _stage(weight=0.0), _batch()
    stage.eval()
    with torch.no_grad():
        for p in stage.model.parameters():  # the zero-initialised output would make every velocity zero
            p.add_(0.05 * torch.randn_like(p))
    stage.sampler = EulerSampler(steps=1)
    with torch.no_grad():
        single = stage.sample(batch, seed=3)
        stage.sampler.draws = 3
        mean = stage.sample(batch, seed=3)
        # By hand: three noises drawn one after the other from the seed's generator, one Euler step each.
        tokens, inputs = stage._prepare(batch)
        gen = torch.Generator().manual_seed(3)
        draws = [stage.sampler.sample(inputs["model_fn"], torch.randn(inputs["x0"].shape, generator=gen),
                                      stage.cond_2d(tokens), inputs["cond_3d"], batch_idx=inputs["batch_idx"])
                 for _ in range(3)]
    torch.testing.assert_close(single, draws[0])
    torch.testing.assert_close(mean, sum(draws) / 3)
    # The draws differ, so their mean is closer to zero spread than any one of them: it is not a copy.
    assert (draws[0] - draws[1]).abs().max() > 1e-3 and mean.std() < draws[0].std()
