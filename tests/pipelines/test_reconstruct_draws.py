"""SceneReconstructor with a sampler's ``draws`` > 1: each chunk's latent is the mean over K joint samples, each
from its own noise of the scene's generator."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from genrecon.pipelines import reconstruct as rc


def _reconstructor(monkeypatch, draws: int):
    rec = rc.SceneReconstructor.__new__(rc.SceneReconstructor)
    rec.settings = rc.ReconstructionSettings(samplers={"tex": {"steps": 1, "draws": draws}})
    rec.device = torch.device("cpu")
    rec.stages = {"tex_flow": SimpleNamespace(model=SimpleNamespace(out_channels=4))}
    monkeypatch.setattr(rec, "_cond_3d", lambda *a, **k: None)
    noises = []

    def joint(sampler, model_fn, layout, noise, *args, **kwargs):
        # A stand-in joint sampler: two chunks of 2 and 3 cells, a sample that depends on the noise.
        assert sampler.steps == 1
        noises.append(noise.clone())
        return [noise[:2] * 2 + 1, noise[2:] * 2 + 1]

    monkeypatch.setattr(rc, "sample_sparse_joint", joint)
    layout = SimpleNamespace(resolution=8, global_coords=np.zeros((5, 3), dtype=np.int64))
    out = rec._sample_sparse("tex_flow", layout, torch.zeros(1, 2, 3), np.array([0, 1]), None, None,
                             torch.Generator().manual_seed(0), None)
    return out, noises


def test_each_chunks_latent_is_the_mean_over_the_draws(monkeypatch):
    single, first = _reconstructor(monkeypatch, 1)
    mean, noises = _reconstructor(monkeypatch, 3)
    assert len(first) == 1 and len(noises) == 3 and [m.shape for m in mean] == [(2, 4), (3, 4)]
    torch.testing.assert_close(noises[0], first[0])  # the first draw is the single-draw sample
    assert not torch.allclose(noises[0], noises[1])
    stacked = torch.stack(noises).mean(0) * 2 + 1
    torch.testing.assert_close(torch.cat(mean), stacked)
    torch.testing.assert_close(single[0], first[0][:2] * 2 + 1)


def test_an_unknown_ss_draw_mean_is_named():
    assert rc.ReconstructionSettings(ss_draw_mean="occupancy").ss_draw_mean == "occupancy"
    with pytest.raises(ValueError, match="ss_draw_mean 'median'"):
        rc.ReconstructionSettings(ss_draw_mean="median")
