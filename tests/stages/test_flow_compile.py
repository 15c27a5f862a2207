"""``compile_blocks``: the dense flow's blocks are compiled at fit start, and compute what eager blocks do."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from genrecon.models.flow_transformer import DenseFlowTransformer, SparseFlowTransformer
from genrecon.models.image_encoder import SmallViT
from genrecon.models.presets import flow_preset
from genrecon.objectives.rectified_flow import RectifiedFlow
from genrecon.pipelines.sampler import EulerSampler
from genrecon.stages.flow import ShapeFlowStage, SparseStructureFlowStage


def _stage(cls, model_cls, compile_blocks: bool, **model_kw):
    torch.manual_seed(0)
    encoder = SmallViT(width=32, depth=1, num_heads=2, patch_size=8, num_registers=0)
    model = partial(model_cls, **flow_preset("tiny"), attn_device="cpu", **model_kw)
    return cls(model=model, image_encoder=encoder, objective=RectifiedFlow(), sampler=EulerSampler(steps=2),
               image_size=32, latent_channels=model_kw["in_channels"] if cls is SparseStructureFlowStage else 32,
               compile_blocks=compile_blocks)


def _dense(compile_blocks: bool):
    return _stage(SparseStructureFlowStage, DenseFlowTransformer, compile_blocks, resolution=4, in_channels=8,
                  out_channels=8)


def test_blocks_are_compiled_at_fit_start_only() -> None:
    stage = _dense(True)
    assert all(getattr(b, "_compiled_call_impl", None) is None for b in stage.model.blocks)  # not at build
    stage.on_fit_start()
    assert all(getattr(b, "_compiled_call_impl", None) is not None for b in stage.model.blocks)
    eager = _dense(False)
    eager.on_fit_start()
    assert all(getattr(b, "_compiled_call_impl", None) is None for b in eager.model.blocks)
    # Same parameters and state-dict keys: checkpoints do not depend on the flag.
    assert list(stage.state_dict()) == list(eager.state_dict())


def test_packed_models_refuse_compilation() -> None:
    with pytest.raises(ValueError, match="dense"):
        _stage(ShapeFlowStage, SparseFlowTransformer, True, resolution=8, in_channels=32, out_channels=32,
               attn_backend="sdpa_loop")


@pytest.mark.slow
def test_compiled_blocks_compute_what_eager_blocks_do() -> None:
    stage, eager = _dense(True), _dense(False)
    eager.load_state_dict(stage.state_dict())
    for s in (stage, eager):
        for p in (s.model.out_layer.weight, s.model.adaLN_modulation[1].weight):
            torch.nn.init.constant_(p, 0.01)
    stage.on_fit_start()
    g = torch.Generator().manual_seed(1)
    x, t, c = torch.randn(2, 8, 4, 4, 4, generator=g), torch.rand(2, generator=g), torch.randn(2, 5, 32, generator=g)
    out = stage.model(x, t, c)
    out.sum().backward()
    ref = eager.model(x, t, c)
    ref.sum().backward()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    grads = [(a.grad, b.grad) for a, b in zip(stage.model.parameters(), eager.model.parameters(), strict=True)
             if a.grad is not None]
    assert grads and all(torch.allclose(a, b, atol=1e-5, rtol=1e-4) for a, b in grads)
