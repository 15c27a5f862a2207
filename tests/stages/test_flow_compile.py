"""``compile_blocks``: the flows' blocks are compiled at fit start, and compute what eager blocks do (dense, and
packed with a new token count every batch)."""

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


def _packed(compile_blocks: bool, **model_kw):
    return _stage(ShapeFlowStage, SparseFlowTransformer, compile_blocks, resolution=8, in_channels=32,
                  out_channels=32, attn_backend="sdpa_loop", **model_kw)


@pytest.mark.parametrize("patch_size", [1, 2])
def test_packed_blocks_and_cell_blocks_are_compiled_at_fit_start(patch_size: int) -> None:
    stage = _packed(True, patch_size=patch_size)
    blocks = [*stage.model.blocks, *(stage.model.cell_blocks if patch_size > 1 else ())]
    assert len(blocks) > len(stage.model.blocks) or patch_size == 1
    stage.on_fit_start()
    assert all(getattr(b, "_compiled_call_impl", None) is not None for b in blocks)


def _packed_batch(lengths: list[int], seed: int):
    g = torch.Generator().manual_seed(seed)
    coords = torch.cat([torch.cat([torch.full((n, 1), b), torch.randperm(512, generator=g)[:n, None]
                                   .div(torch.tensor([64, 8, 1]), rounding_mode="floor").remainder(8)], 1)
                        for b, n in enumerate(lengths)])
    feats = torch.randn(sum(lengths), 32, generator=g)
    return feats, coords, torch.rand(len(lengths), generator=g), torch.randn(len(lengths), 5, 32, generator=g)


def _twins(make):
    """(to be compiled, eager) stages with the same weights; the zero-initialised output layer and modulation
    are set non-zero so that every parameter gets a gradient."""
    stage, eager = make(True), make(False)
    eager.load_state_dict(stage.state_dict())
    for s in (stage, eager):
        for p in (s.model.out_layer.weight, s.model.adaLN_modulation[1].weight):
            torch.nn.init.constant_(p, 0.01)
    return stage, eager


def _assert_same_gradients(stage, eager) -> None:
    grads = [(a.grad, b.grad) for a, b in zip(stage.model.parameters(), eager.model.parameters(), strict=True)
             if b.grad is not None]
    assert grads and all(torch.allclose(a, b, atol=1e-5, rtol=1e-4) for a, b in grads)


def test_compiled_packed_blocks_compute_what_eager_blocks_do_for_any_token_count() -> None:
    from torch._dynamo.utils import counters

    stage, eager = _twins(_packed)
    torch._dynamo.reset()
    stage.on_fit_start()
    graphs = []
    for seed, lengths in enumerate([[37, 52], [61, 23], [44, 45]]):  # a new token count every batch
        feats, coords, t, ctx = _packed_batch(lengths, seed)
        for s in (stage, eager):
            s.model.zero_grad()
        out = stage.model(feats, t, ctx, coords=coords)
        out.square().sum().backward()
        ref = eager.model(feats, t, ctx, coords=coords)
        ref.square().sum().backward()
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        _assert_same_gradients(stage, eager)
        graphs.append(counters["stats"]["unique_graphs"])
    # Compiled for symbolic sizes once: later token counts reuse the graphs.
    assert graphs[0] > 0 and graphs[1] == graphs[0] == graphs[2]


@pytest.mark.slow
def test_compiled_blocks_compute_what_eager_blocks_do() -> None:
    stage, eager = _twins(_dense)
    stage.on_fit_start()
    g = torch.Generator().manual_seed(1)
    x, t, c = torch.randn(2, 8, 4, 4, 4, generator=g), torch.rand(2, generator=g), torch.randn(2, 5, 32, generator=g)
    out = stage.model(x, t, c)
    out.sum().backward()
    ref = eager.model(x, t, c)
    ref.sum().backward()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    _assert_same_gradients(stage, eager)
