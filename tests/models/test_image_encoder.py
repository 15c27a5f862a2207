"""Image encoders: token layout, output norm, freezing, published-checkpoint loading, batching, cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from genrecon.models.image_encoder import (
    CheckpointMismatchError,
    DinoV2Config,
    DinoV2Encoder,
    DinoV2ViT,
    DinoV3Config,
    DinoV3Encoder,
    DinoV3ViT,
    FeatureCache,
    SmallCNN,
    SmallViT,
    encode_views,
)

# ---------------------------------------------------------------------------------------------
# Published key names and shapes, written out independently of the model code.
# ---------------------------------------------------------------------------------------------


def dinov2_hub_shapes(
    c: int, depth: int, patch: int, img_size: int, registers: int = 0, swiglu: bool = False
) -> dict[str, tuple[int, ...]]:
    """facebookresearch/dinov2 hub state dict (block_chunks=0, layer scale on)."""
    grid = img_size // patch
    shapes: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, c),
        "pos_embed": (1, 1 + grid * grid, c),
        "mask_token": (1, c),
        "patch_embed.proj.weight": (c, 3, patch, patch),
        "patch_embed.proj.bias": (c,),
        "norm.weight": (c,),
        "norm.bias": (c,),
    }
    if registers:
        shapes["register_tokens"] = (1, registers, c)
    hidden = (int(4 * c * 2 / 3) + 7) // 8 * 8
    for i in range(depth):
        b = f"blocks.{i}"
        shapes |= {
            f"{b}.norm1.weight": (c,), f"{b}.norm1.bias": (c,),
            f"{b}.attn.qkv.weight": (3 * c, c), f"{b}.attn.qkv.bias": (3 * c,),
            f"{b}.attn.proj.weight": (c, c), f"{b}.attn.proj.bias": (c,),
            f"{b}.ls1.gamma": (c,),
            f"{b}.norm2.weight": (c,), f"{b}.norm2.bias": (c,),
            f"{b}.ls2.gamma": (c,),
        }  # fmt: skip
        if swiglu:
            shapes |= {
                f"{b}.mlp.w12.weight": (2 * hidden, c), f"{b}.mlp.w12.bias": (2 * hidden,),
                f"{b}.mlp.w3.weight": (c, hidden), f"{b}.mlp.w3.bias": (c,),
            }  # fmt: skip
        else:
            shapes |= {
                f"{b}.mlp.fc1.weight": (4 * c, c), f"{b}.mlp.fc1.bias": (4 * c,),
                f"{b}.mlp.fc2.weight": (c, 4 * c), f"{b}.mlp.fc2.bias": (c,),
            }  # fmt: skip
    return shapes


def dinov3_hf_shapes(
    c: int, inter: int, depth: int, patch: int, registers: int
) -> dict[str, tuple[int, ...]]:
    """transformers DINOv3ViTModel checkpoint (model.safetensors); no key bias."""
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.cls_token": (1, 1, c),
        "embeddings.mask_token": (1, 1, c),
        "embeddings.register_tokens": (1, registers, c),
        "embeddings.patch_embeddings.weight": (c, 3, patch, patch),
        "embeddings.patch_embeddings.bias": (c,),
        "norm.weight": (c,),
        "norm.bias": (c,),
    }
    for i in range(depth):
        b = f"layer.{i}"
        shapes |= {
            f"{b}.norm1.weight": (c,), f"{b}.norm1.bias": (c,),
            f"{b}.attention.q_proj.weight": (c, c), f"{b}.attention.q_proj.bias": (c,),
            f"{b}.attention.k_proj.weight": (c, c),
            f"{b}.attention.v_proj.weight": (c, c), f"{b}.attention.v_proj.bias": (c,),
            f"{b}.attention.o_proj.weight": (c, c), f"{b}.attention.o_proj.bias": (c,),
            f"{b}.layer_scale1.lambda1": (c,),
            f"{b}.norm2.weight": (c,), f"{b}.norm2.bias": (c,),
            f"{b}.mlp.up_proj.weight": (inter, c), f"{b}.mlp.up_proj.bias": (inter,),
            f"{b}.mlp.down_proj.weight": (c, inter), f"{b}.mlp.down_proj.bias": (c,),
            f"{b}.layer_scale2.lambda1": (c,),
        }  # fmt: skip
    return shapes


def dinov3_meta_shapes(
    c: int, depth: int, patch: int, registers: int, head_dim: int
) -> dict[str, tuple[int, ...]]:
    """facebookresearch/dinov3 checkpoint (.pth): fused qkv with a k-bias mask, RoPE periods buffer."""
    shapes: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, c),
        "storage_tokens": (1, registers, c),
        "mask_token": (1, c),
        "patch_embed.proj.weight": (c, 3, patch, patch),
        "patch_embed.proj.bias": (c,),
        "rope_embed.periods": (head_dim // 4,),
        "norm.weight": (c,),
        "norm.bias": (c,),
    }
    for i in range(depth):
        b = f"blocks.{i}"
        shapes |= {
            f"{b}.norm1.weight": (c,), f"{b}.norm1.bias": (c,),
            f"{b}.attn.qkv.weight": (3 * c, c), f"{b}.attn.qkv.bias": (3 * c,), f"{b}.attn.qkv.bias_mask": (3 * c,),
            f"{b}.attn.proj.weight": (c, c), f"{b}.attn.proj.bias": (c,),
            f"{b}.ls1.gamma": (c,),
            f"{b}.norm2.weight": (c,), f"{b}.norm2.bias": (c,),
            f"{b}.mlp.fc1.weight": (4 * c, c), f"{b}.mlp.fc1.bias": (4 * c,),
            f"{b}.mlp.fc2.weight": (c, 4 * c), f"{b}.mlp.fc2.bias": (c,),
            f"{b}.ls2.gamma": (c,),
        }  # fmt: skip
    return shapes


def random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * 0.1 for k, s in shapes.items()}


def model_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


TINY_V2 = DinoV2Config(embed_dim=32, depth=2, num_heads=2, patch_size=14, img_size=56)
TINY_V3 = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_register_tokens": 4,
}


# ---------------------------------------------------------------------------------------------
# Token layout, output norm, freezing
# ---------------------------------------------------------------------------------------------


def test_vit_token_layout() -> None:
    enc = SmallViT(width=32, depth=1, num_heads=2, patch_size=8, num_registers=3)
    tokens = enc(torch.rand(2, 3, 32, 32))
    assert enc.num_global_tokens == 1 + 3
    assert enc.patch_grid(32) == 4
    assert tokens.shape == (2, 4 + 4 * 4, 32) == (2, enc.num_tokens(32), enc.out_channels)


def test_vit_patch_tokens_follow_row_major_v_u_order() -> None:
    # Zero everything but the patch embedding: each patch token is then a function of its own pixels.
    enc = SmallViT(width=32, depth=1, num_heads=2, patch_size=8, num_registers=0)
    for layer in enc.backbone.layer:
        for scale in (layer.layer_scale1, layer.layer_scale2):
            nn.init.zeros_(scale.lambda1)
    image = torch.zeros(1, 3, 32, 32)
    image[..., 8:16, 24:32] = 1.0  # row (v) 1, column (u) 3
    tokens = enc(image)[0, 1:]
    changed = (tokens - tokens[0]).abs().sum(-1) > 1e-4
    assert changed.nonzero().flatten().tolist() == [1 * 4 + 3]


def test_cnn_token_layout() -> None:
    enc = SmallCNN(channels=(8, 16, 16), out_channels=24)
    tokens = enc(torch.rand(3, 3, 32, 32))
    assert (enc.patch_size, enc.num_global_tokens, enc.patch_grid(32)) == (8, 1, 4)
    assert tokens.shape == (3, 1 + 16, 24)


@pytest.mark.parametrize("make", [lambda g: SmallViT(width=32, depth=1, num_heads=2, geometry_channels=g),
                                  lambda g: SmallCNN(channels=(8, 8), out_channels=16, geometry_channels=g)])
def test_geometry_channels_are_read_after_the_colour(make) -> None:
    torch.manual_seed(0)
    enc = make(2).eval()
    images = torch.rand(2, 5, 32, 32)
    tokens = enc(images)
    assert enc.geometry_channels == 2 and tokens.shape[0] == 2
    # the extra maps reach the tokens, unnormalised: other maps, other tokens; the same maps, the same tokens
    other = images.clone()
    other[:, 3:] += 1.0
    assert not torch.allclose(enc(other), tokens, atol=1e-4)
    torch.testing.assert_close(enc(images.clone()), tokens)
    with pytest.raises(ValueError, match=r"expected images \[M, 5, H, W\] \(colour \+ 2 geometry"):
        enc(images[:, :3])
    with pytest.raises(ValueError, match=r"expected images \[M, 3, H, W\]"):
        make(0)(images)
    with pytest.raises(ValueError, match="geometry_channels: 0 .* or 2"):
        make(3)


def test_image_side_not_a_patch_multiple_is_resized() -> None:
    enc = DinoV2Encoder.from_config(TINY_V2)
    assert enc.patch_grid(64) == 4
    assert enc(torch.rand(1, 3, 64, 64)).shape == (1, 1 + 16, 32)


def _randomise(module: nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.3)


@pytest.mark.parametrize(
    "make",
    [
        lambda: SmallViT(width=32, depth=1, num_heads=2),
        lambda: SmallCNN(channels=(8, 8, 8, 8), out_channels=16),
        lambda: DinoV2Encoder.from_config(TINY_V2),
        lambda: DinoV3Encoder.from_config(DinoV3Config(**TINY_V3)),
    ],
)
def test_output_is_layernorm_without_affine(make) -> None:
    enc = make()
    _randomise(enc)  # includes the backbone's own final norm, which must not be applied
    side = 4 * enc.patch_size
    tokens = enc(torch.rand(2, 3, side, side))
    torch.testing.assert_close(tokens.mean(-1), torch.zeros(tokens.shape[:-1]), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        tokens.var(-1, unbiased=False), torch.ones(tokens.shape[:-1]), atol=1e-3, rtol=0
    )
    top_level_norms = [m for m in enc.children() if isinstance(m, nn.LayerNorm)]
    assert not top_level_norms


def test_frozen_encoder_has_no_trainable_params() -> None:
    for enc in (
        DinoV3Encoder.from_config(DinoV3Config(**TINY_V3)),
        SmallViT(width=32, depth=1, num_heads=2, frozen=True),
    ):
        assert enc.frozen
        assert not any(p.requires_grad for p in enc.parameters())
        enc.train()  # as Lightning does each epoch
        assert not enc.training and not any(m.training for m in enc.modules())
        assert not enc(torch.rand(1, 3, 32, 32)).requires_grad


def test_unfrozen_dino_keeps_unused_checkpoint_params_frozen() -> None:
    enc = DinoV3Encoder.from_config(DinoV3Config(**TINY_V3), frozen=False)
    trainable = {n for n, p in enc.named_parameters() if p.requires_grad}
    assert "backbone.embeddings.mask_token" not in trainable
    assert not {"backbone.norm.weight", "backbone.norm.bias"} & trainable
    enc(torch.rand(1, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None for n, p in enc.named_parameters() if n in trainable)


def test_small_vit_trains() -> None:
    enc = SmallViT(width=32, depth=1, num_heads=2)
    assert enc.training and all(p.requires_grad for p in enc.parameters())
    enc(torch.rand(1, 3, 32, 32)).square().mean().backward()
    assert all(p.grad is not None for p in enc.parameters())


# ---------------------------------------------------------------------------------------------
# Real configurations on the meta device
# ---------------------------------------------------------------------------------------------


def test_real_dinov2_vitl14_matches_published_layout() -> None:
    with torch.device("meta"):
        model = DinoV2ViT(DinoV2Config.from_variant("vitl14"))
    assert model_shapes(model) == dinov2_hub_shapes(1024, 24, 14, 518)
    assert sum(p.numel() for p in model.parameters()) == 304_368_640


def test_real_dinov3_vitl16_matches_published_layout() -> None:
    with torch.device("meta"):
        model = DinoV3ViT(DinoV3Config())
    shapes = dinov3_hf_shapes(1024, 4096, 24, 16, 4)
    assert model_shapes(model) == shapes and len(shapes) == 415
    assert sum(p.numel() for p in model.parameters()) == 303_129_600


def test_dinov2_variants() -> None:
    reg = DinoV2Config.from_variant("dinov2_vitb14_reg")
    assert (reg.embed_dim, reg.depth, reg.num_register_tokens, reg.interpolate_offset) == (768, 12, 4, 0.0)
    assert DinoV2Config.from_variant("vitg14").ffn_layer == "swiglu"
    with pytest.raises(ValueError, match="unknown DINOv2 variant"):
        DinoV2Config.from_variant("vitx14")


# ---------------------------------------------------------------------------------------------
# Loading published layouts
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("registers, swiglu", [(0, False), (4, False), (0, True)])
def test_dinov2_loads_hub_state_dict(tmp_path: Path, registers: int, swiglu: bool) -> None:
    config = DinoV2Config(
        embed_dim=32, depth=2, num_heads=2, img_size=56, num_register_tokens=registers,
        ffn_layer="swiglu" if swiglu else "mlp",
    )  # fmt: skip
    state = random_state(dinov2_hub_shapes(32, 2, 14, 56, registers, swiglu))
    torch.save(state, tmp_path / "dinov2.pth")
    enc = DinoV2Encoder.from_local(tmp_path / "dinov2.pth", config)
    loaded = enc.backbone.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert enc(torch.rand(1, 3, 56, 56)).shape == (1, 1 + registers + 16, 32)


def test_dinov2_wrong_key_fails_naming_file_and_key(tmp_path: Path) -> None:
    state = random_state(dinov2_hub_shapes(32, 2, 14, 56))
    state["blocks.1.attn.qkv_typo.weight"] = state.pop("blocks.1.attn.qkv.weight")
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointMismatchError) as err:
        DinoV2Encoder.from_local(path, TINY_V2)
    assert str(path) in str(err.value)
    assert "blocks.1.attn.qkv.weight" in str(err.value) and "blocks.1.attn.qkv_typo.weight" in str(err.value)


def test_dinov2_wrong_shape_fails(tmp_path: Path) -> None:
    state = random_state(dinov2_hub_shapes(32, 2, 14, 56))
    state["pos_embed"] = torch.zeros(1, 10, 32)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointMismatchError, match="pos_embed"):
        DinoV2Encoder.from_local(tmp_path / "bad.pth", TINY_V2)


def _hf_snapshot(directory: Path, state: dict[str, torch.Tensor]) -> Path:
    directory.mkdir()
    save_file(state, str(directory / "model.safetensors"))
    config = {"architectures": ["DINOv3ViTModel"], "model_type": "dinov3_vit", "patch_size": 16,
              "image_size": 224, "hidden_act": "gelu", "layerscale_value": 1.0, **TINY_V3}  # fmt: skip
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def test_dinov3_loads_hf_snapshot(tmp_path: Path) -> None:
    state = random_state(dinov3_hf_shapes(32, 64, 2, 16, 4))
    enc = DinoV3Encoder.from_local(_hf_snapshot(tmp_path / "snap", state))
    assert enc.frozen and enc.num_global_tokens == 5
    loaded = enc.backbone.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert enc(torch.rand(1, 3, 32, 32)).shape == (1, 5 + 4, 32)


def test_dinov3_meta_checkpoint_equals_hf_conversion(tmp_path: Path) -> None:
    # No config.json: the architecture is inferred (64-d heads, as in every published DINOv3 ViT).
    meta = random_state(dinov3_meta_shapes(64, 2, 16, 4, head_dim=64))
    for i in range(2):
        meta[f"blocks.{i}.attn.qkv.bias_mask"] = torch.cat([torch.ones(64), torch.zeros(64), torch.ones(64)])
    torch.save(meta, tmp_path / "dinov3_meta.pth")
    enc = DinoV3Encoder.from_local(tmp_path / "dinov3_meta.pth")
    assert enc.backbone.config.num_attention_heads == 1 and enc.out_channels == 64

    # The same weights written by hand in the transformers layout give the same tokens.
    hf = {
        "embeddings.cls_token": meta["cls_token"],
        "embeddings.mask_token": meta["mask_token"][None],
        "embeddings.register_tokens": meta["storage_tokens"],
        "embeddings.patch_embeddings.weight": meta["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.bias": meta["patch_embed.proj.bias"],
        "norm.weight": meta["norm.weight"],
        "norm.bias": meta["norm.bias"],
    }
    for i in range(2):
        b, layer = f"blocks.{i}", f"layer.{i}"
        q, k, v = meta[f"{b}.attn.qkv.weight"].chunk(3)
        qb, _, vb = meta[f"{b}.attn.qkv.bias"].chunk(3)
        hf |= {
            f"{layer}.attention.q_proj.weight": q, f"{layer}.attention.q_proj.bias": qb,
            f"{layer}.attention.k_proj.weight": k,
            f"{layer}.attention.v_proj.weight": v, f"{layer}.attention.v_proj.bias": vb,
            f"{layer}.attention.o_proj.weight": meta[f"{b}.attn.proj.weight"],
            f"{layer}.attention.o_proj.bias": meta[f"{b}.attn.proj.bias"],
            f"{layer}.layer_scale1.lambda1": meta[f"{b}.ls1.gamma"],
            f"{layer}.layer_scale2.lambda1": meta[f"{b}.ls2.gamma"],
            f"{layer}.mlp.up_proj.weight": meta[f"{b}.mlp.fc1.weight"],
            f"{layer}.mlp.up_proj.bias": meta[f"{b}.mlp.fc1.bias"],
            f"{layer}.mlp.down_proj.weight": meta[f"{b}.mlp.fc2.weight"],
            f"{layer}.mlp.down_proj.bias": meta[f"{b}.mlp.fc2.bias"],
        }  # fmt: skip
        for norm in ("norm1", "norm2"):
            hf |= {f"{layer}.{norm}.{p}": meta[f"{b}.{norm}.{p}"] for p in ("weight", "bias")}
    save_file({k: t.contiguous() for k, t in hf.items()}, str(tmp_path / "hf.safetensors"))
    enc_hf = DinoV3Encoder.from_local(tmp_path / "hf.safetensors", config=enc.backbone.config)
    images = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(enc(images), enc_hf(images))


def test_dinov3_wrong_key_fails_naming_file_and_key(tmp_path: Path) -> None:
    state = random_state(dinov3_hf_shapes(32, 64, 2, 16, 4))
    state["layer.0.attention.k_proj.bias"] = torch.zeros(32)  # DINOv3 has no key bias
    snapshot = _hf_snapshot(tmp_path / "snap", state)
    with pytest.raises(CheckpointMismatchError) as err:
        DinoV3Encoder.from_local(snapshot)
    assert str(snapshot / "model.safetensors") in str(err.value)
    assert "layer.0.attention.k_proj.bias" in str(err.value)


def test_dinov3_config_rejects_other_models() -> None:
    with pytest.raises(ValueError, match="model_type"):
        DinoV3Config.from_hf_dict({"model_type": "dinov2"})


# ---------------------------------------------------------------------------------------------
# Batched views and the cache
# ---------------------------------------------------------------------------------------------


def test_encode_views_encodes_real_views_only() -> None:
    enc = SmallCNN(channels=(8, 8, 8, 8), out_channels=16).eval()
    images = torch.rand(2, 3, 3, 32, 32)
    view_mask = torch.tensor([[True, False, True], [True, True, False]])
    calls: list[int] = []
    enc.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    tokens = encode_views(enc, images, view_mask, chunk_size=3)
    assert tokens.shape == (2, 3, 1 + 4, 16)
    assert calls == [3, 1]  # 4 real views in chunks of 3
    assert torch.equal(tokens[0, 1], torch.zeros(5, 16)) and torch.equal(tokens[1, 2], torch.zeros(5, 16))
    torch.testing.assert_close(tokens[1, 1], enc(images[1, 1:2])[0])
    torch.testing.assert_close(tokens, encode_views(enc, images, view_mask, chunk_size=1))


def test_encode_views_without_real_views() -> None:
    enc = SmallCNN(channels=(8, 8, 8, 8), out_channels=16)
    tokens = encode_views(enc, torch.rand(1, 2, 3, 32, 32), torch.zeros(1, 2, dtype=torch.bool))
    assert torch.equal(tokens, torch.zeros(1, 2, 5, 16))


def test_feature_cache_roundtrip(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    key = "scene_0001/chunk_3/7/dinov3_vitl16"
    tokens = torch.randn(21, 32)
    assert key not in cache and cache.get(key) is None
    cache.put(key, tokens)
    assert key in cache
    assert cache.path(key) == tmp_path / "scene_0001/chunk_3/7/dinov3_vitl16.safetensors"
    stored = cache.get(key)
    assert stored.dtype == torch.float16
    torch.testing.assert_close(stored, tokens.half())
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("key", ["", "a//b", "../x", "a/./b", "/abs"])
def test_feature_cache_rejects_bad_keys(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError):
        FeatureCache(tmp_path).path(key)
