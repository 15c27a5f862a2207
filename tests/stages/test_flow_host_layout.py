"""The flow stages hand the collate's host-side packing (token offsets, view counts) to the model and the view
encoder: the same losses and gradients, bit for bit, without the device syncs of reading them back."""

import inspect
from functools import partial

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from genrecon.data.batching import collate
from genrecon.models.flow_transformer import SparseFlowTransformer
from genrecon.models.image_encoder import SmallCNN, SmallViT, encode_views
from genrecon.models.presets import flow_preset
from genrecon.objectives.rectified_flow import RectifiedFlow
from genrecon.pipelines.sampler import EulerSampler
from genrecon.stages.flow import ENCODE_CHUNK, ShapeFlowStage, TextureFlowStage, encode_counted_views

HOST_KEYS = ("shape_token_offsets", "view_counts")
SIZE = 16


class _SyncOps(TorchDispatchMode):
    """Records the aten ops that read device values back to the host (a sync on CUDA), boolean-mask indexing
    (an implicit nonzero) included."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in ("_local_scalar_dense", "nonzero", "bincount", "is_nonzero"):
            self.seen.append(name)
        elif name in ("index", "index_put", "index_put_") and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1]
        ):
            self.seen.append(f"{name}[bool mask]")
        return func(*args, **(kwargs or {}))


def test_encode_counted_views_matches_encode_views_bitwise() -> None:
    assert inspect.signature(encode_views).parameters["chunk_size"].default == ENCODE_CHUNK
    torch.manual_seed(0)
    enc = SmallCNN(channels=(8, 8, 8, 8), out_channels=16)
    images = torch.rand(3, 4, 3, 32, 32)
    counts = (2, 0, 3)
    mask = torch.zeros(3, 4, dtype=torch.bool)
    for b, n in enumerate(counts):
        mask[b, :n] = True
    images[~mask] = 0  # padded views are zeros, as collated
    for chunk in (2, 64):
        enc.zero_grad()
        ref = encode_views(enc, images, mask, chunk_size=chunk)
        ref.square().sum().backward()
        ref_grads = [p.grad.clone() for p in enc.parameters()]
        enc.zero_grad()
        out = encode_counted_views(enc, images, counts, chunk_size=chunk)
        out.square().sum().backward()
        assert torch.equal(out, ref)
        assert all(torch.equal(p.grad, g) for p, g in zip(enc.parameters(), ref_grads, strict=True))
    assert torch.equal(encode_counted_views(enc, images, (0, 0, 0)), torch.zeros(3, 4, 5, 16))
    with pytest.raises(ValueError, match="view_counts"):
        encode_counted_views(enc, images, (5, 0, 0))


def _batch(seed: int = 0, lengths=(9, 0, 14, 5), views=(2, 1, 3, 1)) -> dict:
    rng = np.random.default_rng(seed)
    items = []
    for i, (tokens, n) in enumerate(zip(lengths, views, strict=True)):
        flat = rng.choice(8**3, size=tokens, replace=False)
        coords = np.stack(np.unravel_index(flat, (8, 8, 8)), axis=1).astype(np.int32)
        w2c = np.tile(np.eye(4, dtype=np.float32), (n, 1, 1))
        w2c[:, 2, 3] = 1.5  # chunk in front of the camera
        intr = np.tile(np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]], np.float32), (n, 1, 1))
        latents = {
            "shape_coords": coords,
            "shape_feats": rng.standard_normal((tokens, 32)).astype(np.float32),
            "tex_feats": rng.standard_normal((tokens, 32)).astype(np.float32),
        }
        items.append({"key": f"s{i}", "views": rng.integers(0, 255, (n, SIZE, SIZE, 4), dtype=np.uint8),
                      "w2c": w2c, "intrinsics": intr, "shape_latent": latents, "tex_latent": latents})
    return collate(items)


def _stage(cls, in_channels: int):
    torch.manual_seed(1)
    encoder = SmallViT(width=32, depth=1, num_heads=2, patch_size=8, num_registers=0)
    model = partial(SparseFlowTransformer, **flow_preset("tiny"), resolution=8, in_channels=in_channels,
                    out_channels=32, attn_backend="sdpa_loop", attn_device="cpu")
    stage = cls(model=model, image_encoder=encoder, objective=RectifiedFlow(t_schedule="uniform", p_uncond=0.5),
                sampler=EulerSampler(steps=2, guidance_strength=3.0), image_size=SIZE, latent_channels=32)
    for p in (stage.model.out_layer.weight, stage.model.adaLN_modulation[1].weight):
        torch.nn.init.normal_(p, std=0.05)
    for linear in stage.model.proj_linears:
        torch.nn.init.normal_(linear.weight, std=0.1)
    return stage


@pytest.mark.parametrize(("cls", "in_channels"), [(ShapeFlowStage, 32), (TextureFlowStage, 64)])
def test_flow_stage_passes_host_layout_and_keeps_results(cls, in_channels: int) -> None:
    stage = _stage(cls, in_channels)
    batch = _batch()
    assert all(k in batch for k in HOST_KEYS)
    seen_offsets = []
    forward = stage.model.forward

    def spy(*args, **kwargs):
        seen_offsets.append(kwargs.get("offsets"))
        return forward(*args, **kwargs)

    stage.model.forward = spy
    results = []
    for host in (True, False):
        b = batch if host else {k: v for k, v in batch.items() if k not in HOST_KEYS}
        stage.zero_grad(set_to_none=True)
        out = stage._loss(b, train=True, generator=torch.Generator().manual_seed(3))
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in stage.named_parameters() if p.grad is not None}
        sample = stage.sample(b, seed=4)
        results.append((out.loss.detach(), out.dropped, grads, sample))
    assert seen_offsets[0] == batch["shape_token_offsets"] and seen_offsets[-1] is None
    (loss, dropped, grads, sample), (loss_ref, dropped_ref, grads_ref, sample_ref) = results
    assert torch.equal(dropped, dropped_ref) and torch.equal(loss, loss_ref)
    assert "image_encoder.backbone.embeddings.patch_embeddings.weight" in grads
    assert grads.keys() == grads_ref.keys() and all(torch.equal(grads[n], grads_ref[n]) for n in grads)
    assert torch.equal(sample, sample_ref)


def test_flow_stage_step_has_no_read_back_with_the_host_keys(monkeypatch) -> None:
    """With the host keys a training loss reads nothing back from the device; without them the views and
    the layout add their syncs."""
    stage = _stage(ShapeFlowStage, 32)
    batch = _batch()
    host_reads: list[str] = []
    for name in ("tolist", "item"):
        original = getattr(torch.Tensor, name)

        def record(self, *args, _name=name, _original=original, **kwargs):
            host_reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, record)
    seen = {}
    for host in (True, False):
        b = batch if host else {k: v for k, v in batch.items() if k not in HOST_KEYS}
        host_reads.clear()
        with _SyncOps() as ops:
            stage._loss(b, train=True).loss.backward()
        seen[host] = ops.seen + host_reads
    assert seen[True] == []
    # views: mask gather and scatter, and the scatter's backward (a mask gather again); layout: sortedness,
    # counts and their host copy.
    assert sorted(seen[False]) == sorted(
        ["index[bool mask]", "index_put_[bool mask]", "index[bool mask]", "_local_scalar_dense", "bincount",
         "tolist"]
    )


def test_validation_logs_the_gain_of_the_conditions() -> None:
    """val/cond_gain = loss without conditions - loss with them, on the same t and noise: 0 for an untrained
    pathway (zero-initialised injections, conditions zeroed alike), non-zero once the injections train."""
    stage = _stage(ShapeFlowStage, 32)
    batch = _batch()
    logged: dict[str, float] = {}
    stage.log = lambda name, value, **kw: logged.__setitem__(name, float(value))  # type: ignore[method-assign]
    stage.log_dict = lambda d, **kw: logged.update({k: float(v) for k, v in d.items()})  # type: ignore[method-assign]
    stage.sample_batches = 0
    with torch.no_grad():
        stage.validation_step(batch, 0)
        # Cross-attention to the views is live at init, so the gain need not be 0; the uncond loss is the
        # loss of the fully zeroed conditions, recomputed here by hand.
        gen = torch.Generator().manual_seed(1000)
        ref = stage._loss(batch, train=False, generator=gen, unconditional=True).loss
    assert logged["val/loss_uncond"] == pytest.approx(float(ref), rel=1e-6)
    assert logged["val/cond_gain"] == pytest.approx(logged["val/loss_uncond"] - logged["val/loss"], abs=1e-6)
    before = logged["val/cond_gain"]
    with torch.no_grad():  # open the projection pathway: its condition now moves the conditional loss only
        for linear in stage.model.proj_linears:
            torch.nn.init.normal_(linear.weight, std=0.5)
        stage.validation_step(batch, 0)
    assert logged["val/loss_uncond"] == pytest.approx(float(ref), rel=1e-6)
    assert logged["val/cond_gain"] != pytest.approx(before, abs=1e-6)
