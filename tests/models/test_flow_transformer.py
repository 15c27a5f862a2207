import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from genrecon.models.aggregator import ViewAggregator
from genrecon.models.flow_transformer import DenseFlowTransformer, SparseFlowTransformer
from genrecon.models.presets import flow_preset
from genrecon.models.projection import Projection
from genrecon.modules.lora import apply_lora, freeze_base
from genrecon.modules.rope import grid_coords


def _tiny(cls, resolution=3, in_channels=4, out_channels=4, conditioned=False, **kw):
    extra = {}
    if conditioned:
        extra = {
            "projection": Projection(num_global_tokens=1, patch_grid=2),
            "aggregator": ViewAggregator(32),
        }
    return cls(
        **flow_preset("tiny"),
        resolution=resolution,
        in_channels=in_channels,
        out_channels=out_channels,
        **extra,
        **kw,
    )


def _randomise_outputs(model: nn.Module) -> None:
    # The zero-initialised output layer would hide every difference.
    for p in (model.out_layer.weight, model.adaLN_modulation[1].weight):
        nn.init.normal_(p, std=0.05)
    if getattr(model, "patch_size", 1) > 1:  # the patched model's per-cell head ends in its own zero layer
        nn.init.normal_(model.fine_out.weight, std=0.05)


def _views(batch: int, n_views: int = 3, g: torch.Generator | None = None):
    """Cameras on a ring looking at the chunk centre from 1.5 chunk edges away, plus random tokens."""
    w2c = torch.zeros(batch, n_views, 4, 4)
    for b in range(batch):
        for v in range(n_views):
            angle = 2 * torch.pi * (v + 0.3 * b) / n_views
            c, s = torch.cos(torch.tensor(angle)), torch.sin(torch.tensor(angle))
            # Camera at (1.5 c, 1.5 s, 0) looking at the origin, y down = world -z (OpenCV).
            z_axis = -torch.stack([c, s, torch.tensor(0.0)])
            x_axis = torch.stack([-s, c, torch.tensor(0.0)])
            y_axis = torch.cross(z_axis, x_axis, dim=0)
            rot = torch.stack([x_axis, y_axis, z_axis])
            w2c[b, v, :3, :3] = rot
            w2c[b, v, :3, 3] = -rot @ torch.stack([1.5 * c, 1.5 * s, torch.tensor(0.0)])
            w2c[b, v, 3, 3] = 1
    K = torch.tensor([[1.0, 0, 0.5], [0, 1.0, 0.5], [0, 0, 1]]).expand(batch, n_views, 3, 3)
    tokens = torch.randn(batch, n_views, 1 + 4, 32, generator=g)
    mask = torch.ones(batch, n_views, dtype=torch.bool)
    mask[-1, -1] = False  # a padded view
    return tokens, w2c, K, mask


# ------------------------------------------------------------------------------------------------------------
# Published TRELLIS.2 layout, built from the reference tables (formats-and-checkpoints.md §5.3, §6.2)
# ------------------------------------------------------------------------------------------------------------


def published_flow_shapes(in_ch: int, out_ch: int, dense: bool) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {
        "t_embedder.mlp.0.weight": (1536, 256),
        "t_embedder.mlp.0.bias": (1536,),
        "t_embedder.mlp.2.weight": (1536, 1536),
        "t_embedder.mlp.2.bias": (1536,),
        "adaLN_modulation.1.weight": (9216, 1536),
        "adaLN_modulation.1.bias": (9216,),
        "input_layer.weight": (1536, in_ch),
        "input_layer.bias": (1536,),
        "out_layer.weight": (out_ch, 1536),
        "out_layer.bias": (out_ch,),
    }
    if dense:
        shapes["rope_phases"] = (4096, 64)
    for n in range(30):
        b = f"blocks.{n}."
        shapes |= {
            b + "modulation": (9216,),
            b + "norm2.weight": (1536,),
            b + "norm2.bias": (1536,),
            b + "self_attn.to_qkv.weight": (4608, 1536),
            b + "self_attn.to_qkv.bias": (4608,),
            b + "self_attn.q_rms_norm.gamma": (12, 128),
            b + "self_attn.k_rms_norm.gamma": (12, 128),
            b + "self_attn.to_out.weight": (1536, 1536),
            b + "self_attn.to_out.bias": (1536,),
            b + "cross_attn.to_q.weight": (1536, 1536),
            b + "cross_attn.to_q.bias": (1536,),
            b + "cross_attn.to_kv.weight": (3072, 1024),
            b + "cross_attn.to_kv.bias": (3072,),
            b + "cross_attn.q_rms_norm.gamma": (12, 128),
            b + "cross_attn.k_rms_norm.gamma": (12, 128),
            b + "cross_attn.to_out.weight": (1536, 1536),
            b + "cross_attn.to_out.bias": (1536,),
            b + "mlp.mlp.0.weight": (8192, 1536),
            b + "mlp.mlp.0.bias": (8192,),
            b + "mlp.mlp.2.weight": (1536, 8192),
            b + "mlp.mlp.2.bias": (1536,),
        }
    return shapes


def genrecon_extra_shapes() -> dict[str, tuple[int, ...]]:
    shapes = {
        "aggregator.feature_mlp.0.weight": (1024, 3072),
        "aggregator.feature_mlp.0.bias": (1024,),
        "aggregator.feature_mlp.2.weight": (1024, 1024),
        "aggregator.feature_mlp.2.bias": (1024,),
        "aggregator.feature_mlp.4.weight": (1024, 1024),
        "aggregator.feature_mlp.4.bias": (1024,),
        "aggregator.weight_mlp.0.weight": (1024, 3072),
        "aggregator.weight_mlp.0.bias": (1024,),
        "aggregator.weight_mlp.2.weight": (1, 1024),
        "aggregator.weight_mlp.2.bias": (1,),
    }
    lora = {
        "self_attn.to_qkv": (1536, 4608),
        "self_attn.to_out": (1536, 1536),
        "cross_attn.to_q": (1536, 1536),
        "cross_attn.to_kv": (1024, 3072),
        "cross_attn.to_out": (1536, 1536),
    }
    for n in range(30):
        shapes |= {f"proj_linears.{n}.weight": (1536, 1024), f"proj_linears.{n}.bias": (1536,)}
        for name, (fan_in, fan_out) in lora.items():
            shapes[f"blocks.{n}.{name}.lora_A"] = (8, fan_in)
            shapes[f"blocks.{n}.{name}.lora_B"] = (fan_out, 8)
    return shapes


def _meta_trellis2(cls, in_ch: int, out_ch: int, conditioned: bool = False):
    with torch.device("meta"):
        extra = {"projection": Projection(5, 32), "aggregator": ViewAggregator(1024)} if conditioned else {}
        return cls(
            **flow_preset("trellis2"),
            resolution=16 if cls is DenseFlowTransformer else 32,
            in_channels=in_ch,
            out_channels=out_ch,
            attn_device="cpu",
            **extra,
        )


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    ("cls", "in_ch", "out_ch", "params"),
    [
        (DenseFlowTransformer, 8, 8, 1_292_179_976),
        (SparseFlowTransformer, 32, 32, 1_292_253_728),
        (SparseFlowTransformer, 64, 32, 1_292_302_880),
    ],
)
def test_trellis2_preset_matches_published_layout(cls, in_ch: int, out_ch: int, params: int) -> None:
    model = _meta_trellis2(cls, in_ch, out_ch)
    assert sum(p.numel() for p in model.parameters()) == params
    published = published_flow_shapes(in_ch, out_ch, dense=cls is DenseFlowTransformer)
    assert len(published) == (641 if cls is DenseFlowTransformer else 640)
    assert _shapes(model) == published
    if cls is DenseFlowTransformer:
        assert model.rope_phases.dtype == torch.complex64


@pytest.mark.parametrize(("cls", "keys"), [(DenseFlowTransformer, 1011), (SparseFlowTransformer, 1010)])
def test_trellis2_with_lora_and_projection_matches_genrecon_layout(cls, keys: int) -> None:
    model = _meta_trellis2(
        cls,
        8 if cls is DenseFlowTransformer else 32,
        8 if cls is DenseFlowTransformer else 32,
        conditioned=True,
    )
    with torch.device("meta"):
        apply_lora(model, r=8, alpha=16)
    shapes = _shapes(model)
    assert len(shapes) == keys
    published = published_flow_shapes(
        8 if cls is DenseFlowTransformer else 32,
        8 if cls is DenseFlowTransformer else 32,
        cls is DenseFlowTransformer,
    )
    assert shapes == published | genrecon_extra_shapes()
    freeze_base(model, trainable_prefixes=("aggregator.", "proj_linears."))
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert sum(v for n, v in trainable.items() if "lora_" in n) == 4_669_440
    assert sum(v for n, v in trainable.items() if n.startswith("aggregator.")) == 8_393_729
    assert sum(v for n, v in trainable.items() if n.startswith("proj_linears.")) == 47_232_000


# ------------------------------------------------------------------------------------------------------------
# Behaviour (tiny preset, CPU)
# ------------------------------------------------------------------------------------------------------------


def test_dense_shapes_and_zero_init_output() -> None:
    model = _tiny(DenseFlowTransformer)
    x, t, c = torch.randn(2, 4, 3, 3, 3), torch.rand(2), torch.randn(2, 5, 32)
    out = model(x, t, c)
    assert out.shape == (2, 4, 3, 3, 3)
    assert not out.any()  # zero-initialised output layer
    with pytest.raises(ValueError, match="grid"):
        model(torch.randn(2, 4, 4, 4, 4), t, c)


def test_sparse_shapes_order_and_raw_or_object_inputs() -> None:
    torch.manual_seed(0)
    model = _tiny(SparseFlowTransformer, resolution=8)
    _randomise_outputs(model)
    coords = torch.cat([torch.tensor([[0]] * 5 + [[1]] * 9), torch.randint(0, 8, (14, 3))], 1).int()
    feats, t, c = torch.randn(14, 4), torch.rand(2), torch.randn(2, 5, 32)
    out = model(feats, t, c, coords=coords)
    assert out.shape == (14, 4)

    class Sparse:
        def __init__(self, coords, feats):
            self.coords, self.feats = coords, feats

    torch.testing.assert_close(model(Sparse(coords, feats), t, c), out)
    # Interleaved samples come back in the caller's order.
    perm = torch.randperm(14)
    torch.testing.assert_close(model(feats[perm], t, c, coords=coords[perm]), out[perm], atol=1e-5, rtol=1e-5)
    # Sample 0 alone gives the same output: attention never crosses samples.
    alone = model(feats[:5], t[:1], c[:1], coords=coords[:5])
    torch.testing.assert_close(alone, out[:5], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="coords"):
        model(feats, t, c)


def test_concat_cond_is_appended_to_the_input_channels() -> None:
    torch.manual_seed(6)
    model = _tiny(SparseFlowTransformer, resolution=8, in_channels=8)  # texture flow: noise ‖ shape latent
    _randomise_outputs(model)
    coords = torch.cat([torch.zeros(6, 1), torch.randint(0, 8, (6, 3))], 1).int()
    noise, shape, t, c = torch.randn(6, 4), torch.randn(6, 4), torch.rand(1), torch.randn(1, 5, 32)
    out = model(noise, t, c, coords=coords, concat_cond=shape)
    torch.testing.assert_close(out, model(torch.cat([noise, shape], 1), t, c, coords=coords))
    assert out.shape == (6, 4)


def test_dense_and_sparse_agree_on_a_full_grid() -> None:
    torch.manual_seed(1)
    dense = _tiny(DenseFlowTransformer, resolution=4)
    _randomise_outputs(dense)
    sparse = _tiny(SparseFlowTransformer, resolution=4)
    state = {k: v for k, v in dense.state_dict().items() if k != "rope_phases"}
    sparse.load_state_dict(state, strict=True)
    x, t, c = torch.randn(2, 4, 4, 4, 4), torch.rand(2), torch.randn(2, 5, 32)
    ijk = grid_coords(4)
    coords = torch.cat([torch.arange(2).repeat_interleave(64)[:, None], ijk.repeat(2, 1)], 1).int()
    feats = x.flatten(2).transpose(1, 2).reshape(128, 4)
    out_sparse = sparse(feats, t, c, coords=coords)
    out_dense = dense(x, t, c).flatten(2).transpose(1, 2).reshape(128, 4)
    torch.testing.assert_close(out_sparse, out_dense, atol=1e-5, rtol=1e-5)


def test_projection_pathway_is_inert_at_init_and_streams() -> None:
    torch.manual_seed(2)
    g = torch.Generator().manual_seed(3)
    model = _tiny(DenseFlowTransformer, conditioned=True)
    _randomise_outputs(model)
    assert len(model.proj_linears) == 2
    tokens, w2c, K, mask = _views(2, g=g)
    cond_3d = model.cond_3d_from_views(tokens, w2c, K, mask, batch_voxels=7)
    assert cond_3d.shape == (2, 27, 32) and cond_3d.abs().sum() > 0
    torch.testing.assert_close(model.cond_3d_from_views(tokens, w2c, K, mask, batch_voxels=10_000), cond_3d)
    x, t, c = (
        torch.randn(2, 4, 3, 3, 3, generator=g),
        torch.rand(2, generator=g),
        torch.randn(2, 5, 32, generator=g),
    )
    out = model(x, t, c, cond_3d)
    assert torch.equal(out, model(x, t, c, torch.zeros_like(cond_3d)))
    assert torch.equal(out, model(x, t, c, None))
    for linear in model.proj_linears:
        nn.init.normal_(linear.weight, std=0.1)
    assert not torch.allclose(model(x, t, c, cond_3d), out)


def test_cond_3d_gradients_reach_the_aggregator_through_checkpointed_batches(monkeypatch) -> None:
    import genrecon.models.aggregator as aggregator_module

    recomputed = []
    real_checkpoint = aggregator_module.activation_checkpoint

    def counting_checkpoint(*args, **kwargs):
        recomputed.append(1)
        return real_checkpoint(*args, **kwargs)

    monkeypatch.setattr(aggregator_module, "activation_checkpoint", counting_checkpoint)
    torch.manual_seed(4)
    model = _tiny(SparseFlowTransformer, resolution=4, conditioned=True)
    _randomise_outputs(model)
    for linear in model.proj_linears:
        nn.init.normal_(linear.weight, std=0.1)
    nn.init.normal_(model.aggregator.feature_mlp[4].weight, std=0.1)
    coords = torch.cat([torch.tensor([[0]] * 6 + [[1]] * 4), torch.randint(0, 4, (10, 3))], 1).int()
    tokens, w2c, K, mask = _views(2)
    grads = []
    # Streamed in 4 checkpointed batches, in one, and in 4 kept batches (proj_checkpoint off): same gradients.
    for batch_voxels, keep in ((3, False), (100, False), (3, True)):
        model.proj_checkpoint = not keep
        recomputed.clear()
        model.zero_grad()
        cond_3d = model.cond_3d_from_views(coords, tokens, w2c, K, mask, batch_voxels=batch_voxels)
        out = model(
            torch.randn(10, 4, generator=torch.Generator().manual_seed(0)),
            torch.full((2,), 0.5),
            torch.zeros(2, 5, 32),
            cond_3d,
            coords=coords,
        )
        out.square().sum().backward()
        grads.append(model.aggregator.feature_mlp[4].weight.grad.clone())
        assert len(recomputed) == (0 if keep else -(-10 // batch_voxels))
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grads[0], grads[2], atol=1e-5, rtol=1e-4)


def test_gradient_checkpointing_matches() -> None:
    torch.manual_seed(5)
    plain = _tiny(DenseFlowTransformer)
    _randomise_outputs(plain)
    ckpt = _tiny(DenseFlowTransformer, use_checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())
    x, t, c = torch.randn(2, 4, 3, 3, 3), torch.rand(2), torch.randn(2, 5, 32)
    outs = []
    for model in (plain, ckpt):
        out = model(x, t, c)
        out.square().sum().backward()
        outs.append((out, model.blocks[0].mlp.mlp[0].weight.grad))
    torch.testing.assert_close(outs[0][0], outs[1][0])
    torch.testing.assert_close(outs[0][1], outs[1][1])


def test_rope_table_survives_dtype_casts() -> None:
    model = _tiny(DenseFlowTransformer)
    table = model.rope_phases.clone()
    model.to(torch.bfloat16)
    assert model.input_layer.weight.dtype == torch.bfloat16
    assert model.rope_phases.dtype == torch.complex64 and torch.equal(model.rope_phases, table)
    with torch.device("meta"):
        meta = _tiny(DenseFlowTransformer)
    meta.to_empty(device="cpu")
    assert torch.equal(meta.rope_phases, table)


def test_projection_needs_aggregator() -> None:
    with pytest.raises(ValueError, match="both"):
        _tiny(DenseFlowTransformer, projection=Projection(1, 2))


# ------------------------------------------------------------------------------------------------------------
# Host offsets: the packed layout without device syncs
# ------------------------------------------------------------------------------------------------------------

SYNC_OPS = ("_local_scalar_dense", "nonzero", "bincount", "is_nonzero")


class _SyncOps(TorchDispatchMode):
    """Counts the aten ops that read device values back to the host (a sync on CUDA)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in SYNC_OPS:
            self.seen.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def _packed_inputs(lengths=(5, 0, 9, 3), g=None):
    coords = torch.cat(
        [torch.cat([torch.full((n, 1), b), torch.randint(0, 4, (n, 3), generator=g)], 1) for b, n in enumerate(lengths)]
    ).int()
    offsets = tuple(int(x) for x in torch.tensor([0, *lengths]).cumsum(0))
    return coords, offsets


@pytest.mark.parametrize("use_checkpoint", [False, True])
def test_sparse_offsets_give_bitwise_the_same_output_and_gradients(use_checkpoint: bool) -> None:
    torch.manual_seed(7)
    g = torch.Generator().manual_seed(8)
    model = _tiny(SparseFlowTransformer, resolution=4, conditioned=True, use_checkpoint=use_checkpoint)
    _randomise_outputs(model)
    for linear in model.proj_linears:
        nn.init.normal_(linear.weight, std=0.1)
    coords, offsets = _packed_inputs(g=g)
    tokens, w2c, K, mask = _views(4, g=g)
    feats, t, c = torch.randn(len(coords), 4, generator=g), torch.rand(4, generator=g), torch.randn(4, 5, 32)
    results = []
    for kwargs in ({}, {"offsets": offsets}, {"offsets": list(offsets)}):
        model.zero_grad(set_to_none=True)
        cond_3d = model.cond_3d_from_views(coords, tokens, w2c, K, mask)
        out = model(feats, t, c, cond_3d, coords=coords, **kwargs)
        out.square().sum().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (ref, ref_grads), *others = results
    assert ref.abs().sum() > 0 and len(ref_grads) > 10
    for out, grads in others:
        assert torch.equal(out, ref)
        assert grads.keys() == ref_grads.keys()
        assert all(torch.equal(grads[n], ref_grads[n]) for n in ref_grads), "gradients differ"


def test_sparse_samples_stay_bitwise_isolated() -> None:
    torch.manual_seed(9)
    model = _tiny(SparseFlowTransformer, resolution=4)
    _randomise_outputs(model)
    coords, offsets = _packed_inputs((6, 8, 5))
    feats, t, c = torch.randn(19, 4), torch.rand(3), torch.randn(3, 5, 32)
    out = model(feats, t, c, coords=coords, offsets=offsets)
    feats2, t2, c2 = feats.clone(), t.clone(), c.clone()
    feats2[6:14] += 1.0
    t2[1] = 1 - t2[1]  # a different modulation row for sample 1 only
    c2[1] *= 3
    out2 = model(feats2, t2, c2, coords=coords, offsets=offsets)
    assert torch.equal(out[:6], out2[:6]) and torch.equal(out[14:], out2[14:])
    assert not torch.equal(out[6:14], out2[6:14])


def test_sparse_forward_with_offsets_reads_nothing_back(monkeypatch) -> None:
    torch.manual_seed(10)
    model = _tiny(SparseFlowTransformer, resolution=4)
    coords, offsets = _packed_inputs()
    feats, t, c = torch.randn(len(coords), 4), torch.rand(4), torch.randn(4, 5, 32)
    with _SyncOps() as without:
        model(feats, t, c, coords=coords)
    assert without.seen  # the detector sees the syncs of the fallback path

    def no_readback(*args, **kwargs):
        raise AssertionError("device value read back to the host")

    monkeypatch.setattr(torch.Tensor, "tolist", no_readback)
    monkeypatch.setattr(torch.Tensor, "item", no_readback)
    with _SyncOps() as with_offsets:
        out = model(feats, t, c, coords=coords, offsets=offsets)
        out.sum().backward()
    assert with_offsets.seen == []


def test_sparse_offsets_must_fit_the_inputs() -> None:
    model = _tiny(SparseFlowTransformer, resolution=4)
    coords, _ = _packed_inputs((3, 4))
    feats, t, c = torch.randn(7, 4), torch.rand(2), torch.randn(2, 5, 32)
    with pytest.raises(ValueError, match="offsets"):
        model(feats, t, c, coords=coords, offsets=(0, 3, 6))
    with pytest.raises(ValueError, match="offsets"):
        model(feats, t, c, coords=coords, offsets=(0, 3, 4, 7))
    with pytest.raises(ValueError, match="offsets"):
        model(feats, t, c, coords=coords, offsets=(0, 5, 4))


# ------------------------------------------------------------------------------------------------------------
# Photo-consistency cue (genrecon/models/photo_consistency.py)
# ------------------------------------------------------------------------------------------------------------


def test_photo_cue_adds_the_colour_statistics_to_the_fused_condition() -> None:
    torch.manual_seed(4)
    g = torch.Generator().manual_seed(5)
    plain = _tiny(DenseFlowTransformer, conditioned=True)
    cued = _tiny(DenseFlowTransformer, conditioned=True, photo_cue={"subdivisions": 2, "hidden": 16})
    cued.load_state_dict(plain.state_dict(), strict=False)  # same base and aggregator; the cue is extra
    assert {k.split(".")[0] for k in set(cued.state_dict()) - set(plain.state_dict())} == {"photo_cue"}
    tokens, w2c, K, mask = _views(2, g=g)
    images = torch.rand(2, tokens.shape[1], 3, 16, 16, generator=g)
    with pytest.raises(ValueError, match="photo-consistency"):
        cued.cond_3d_from_views(tokens, w2c, K, mask)
    c_plain = plain.cond_3d_from_views(tokens, w2c, K, mask)
    c_cued = cued.cond_3d_from_views(tokens, w2c, K, mask, batch_voxels=7, images=images)
    points = torch.cat([coords_points(3)] * 2)
    bidx = torch.arange(2).repeat_interleave(27)
    cue = cued.photo_cue(images, points, bidx, w2c, K, mask).view(2, 27, -1)
    torch.testing.assert_close(c_cued, c_plain + cue)
    # The pathway stays inert at init: the zero-initialised injections hide the cue too.
    _randomise_outputs(cued)
    x, t, c = torch.randn(2, 4, 3, 3, 3, generator=g), torch.rand(2, generator=g), torch.randn(2, 5, 32, generator=g)
    assert torch.equal(cued(x, t, c, c_cued), cued(x, t, c, None))


def coords_points(resolution: int) -> torch.Tensor:
    from genrecon.models.projection import voxel_centers

    return voxel_centers(resolution)


def test_photo_cue_needs_the_projection_pathway() -> None:
    with pytest.raises(ValueError, match="projection pathway"):
        _tiny(DenseFlowTransformer, photo_cue={"subdivisions": 2})


# ------------------------------------------------------------------------------------------------------------
# Patched sparse flow (patch_size > 1, a deviation): blocks over occupied 2³ blocks of cells
# ------------------------------------------------------------------------------------------------------------


def _unique_cells(lengths, resolution, g):
    """Packed coords [K, 4] of ``lengths[b]`` distinct random cells per sample, grouped by sample."""
    rows = []
    for b, n in enumerate(lengths):
        flat = torch.randperm(resolution**3, generator=g)[:n]
        xyz = torch.stack([flat // resolution**2, (flat // resolution) % resolution, flat % resolution], 1)
        rows.append(torch.cat([torch.full((n, 1), b), xyz], 1))
    return torch.cat(rows).int()


@pytest.mark.parametrize("cell_blocks", [0, 1])
def test_patched_sparse_flow_runs_on_blocks_and_keeps_the_token_order(cell_blocks: int) -> None:
    torch.manual_seed(11)
    g = torch.Generator().manual_seed(12)
    model = _tiny(SparseFlowTransformer, resolution=6, patch_size=2, patch_cell_blocks=cell_blocks)
    assert len(model.cell_blocks) == cell_blocks
    _randomise_outputs(model)
    coords = _unique_cells((30, 0, 50), 6, g)
    feats, t, c = torch.randn(len(coords), 4, generator=g), torch.rand(3, generator=g), torch.randn(3, 5, 32)
    seen: list[int] = []
    model.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    out = model(feats, t, c, coords=coords)
    assert out.shape == (len(coords), 4) and out.abs().sum() > 0
    blocks = {(int(b), int(x) // 2, int(y) // 2, int(z) // 2) for b, x, y, z in coords.tolist()}
    assert seen == [len(blocks)] and len(blocks) < len(coords)
    # Any token order gives the same per-token velocities.
    perm = torch.randperm(len(coords), generator=g)
    out_perm = model(feats[perm], t, c, coords=coords[perm])
    torch.testing.assert_close(out_perm, out[perm], rtol=1e-5, atol=1e-6)
    # Each cell's velocity depends on where it sits in its block: the same input in two children of one block
    # gives different outputs.
    pair = torch.tensor([[0, 0, 0, 0], [0, 1, 1, 1]], dtype=torch.int32)
    same = torch.randn(1, 4, generator=g).expand(2, 4)
    two = model(same, t[:1], c[:1], coords=pair)
    assert not torch.allclose(two[0], two[1])


def test_patched_sparse_flow_keeps_samples_isolated_and_starts_at_zero() -> None:
    """With its cell blocks (one by default), which attend per sample at full resolution."""
    torch.manual_seed(13)
    g = torch.Generator().manual_seed(14)
    model = _tiny(SparseFlowTransformer, resolution=6, patch_size=2)
    coords = _unique_cells((20, 25, 15), 6, g)
    feats, t, c = torch.randn(len(coords), 4, generator=g), torch.rand(3, generator=g), torch.randn(3, 5, 32)
    assert model(feats, t, c, coords=coords).abs().max() == 0  # zero-initialised un-patchify: zero velocity
    _randomise_outputs(model)
    out = model(feats, t, c, coords=coords)
    feats2, t2, c2 = feats.clone(), t.clone(), c.clone()
    feats2[20:45] += 1.0
    t2[1] = 1 - t2[1]
    c2[1] *= 3
    out2 = model(feats2, t2, c2, coords=coords)
    assert torch.equal(out[:20], out2[:20]) and torch.equal(out[45:], out2[45:])
    assert not torch.equal(out[20:45], out2[20:45])


def test_patched_projection_pathway_is_inert_at_init_and_pools_the_childrens_mean() -> None:
    torch.manual_seed(15)
    g = torch.Generator().manual_seed(16)
    model = _tiny(SparseFlowTransformer, resolution=4, conditioned=True, patch_size=2)
    _randomise_outputs(model)
    coords = _unique_cells((12, 9), 4, g)
    tokens, w2c, K, mask = _views(2, g=g)
    feats, t, c = torch.randn(len(coords), 4, generator=g), torch.rand(2, generator=g), torch.randn(2, 5, 32)
    cond_3d = model.cond_3d_from_views(coords, tokens, w2c, K, mask)
    assert cond_3d.shape == (len(coords), 32)  # fused per cell, pooled per block inside the model
    with_cond = model(feats, t, c, cond_3d, coords=coords)
    torch.testing.assert_close(with_cond, model(feats, t, c, None, coords=coords), rtol=0, atol=0)
    # The pooling starts as the mean over a block's 8 cells (absent ones count as zero).
    v = torch.randn(32, generator=g)
    pooled = model.cond_patch(v.repeat(8)[None])[0]
    torch.testing.assert_close(pooled, v, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.cond_patch(torch.cat([v, torch.zeros(7 * 32)])[None])[0], v / 8,
                               rtol=1e-5, atol=1e-6)
    # Once the injection has weights the condition reaches the output.
    for linear in model.proj_linears:
        nn.init.normal_(linear.weight, std=0.1)
    assert not torch.allclose(model(feats, t, c, cond_3d, coords=coords), with_cond)


def test_patch_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="patch_size"):
        _tiny(SparseFlowTransformer, resolution=4, patch_size=0)
