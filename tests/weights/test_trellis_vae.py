"""TRELLIS / TRELLIS.2 VAE loaders: published key names and shapes, strictness, preset checks, dtype casts.

The key tables below are written from the published layout (formats-and-checkpoints §5.4/§5.5), not from the
modules, so they check that the modules' names and shapes are the published ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from genrecon.models.sc_vae import ShapeVAEDecoder, TextureVAEDecoder, TextureVAEEncoder
from genrecon.models.ss_vae import SparseStructureDecoder, SparseStructureEncoder
from genrecon.modules.sparse.tensor import SparseTensor
from genrecon.weights.trellis_vae import (
    PUBLISHED_PRESETS,
    CheckpointError,
    build_trellis_vae,
    load_trellis_vae,
)

Shapes = dict[str, tuple[int, ...]]


# ---------------------------------------------------------------- published key tables
def _res_block(prefix: str, c: int) -> Shapes:
    out = {}
    for i in (1, 2):
        out[f"{prefix}.norm{i}.weight"] = out[f"{prefix}.norm{i}.bias"] = (c,)
        out[f"{prefix}.conv{i}.weight"], out[f"{prefix}.conv{i}.bias"] = (c, c, 3, 3, 3), (c,)
    return out


def ss_keys(args: dict, decoder: bool) -> Shapes:
    ch, nres, nmid, lat = (
        args["channels"],
        args["num_res_blocks"],
        args["num_res_blocks_middle"],
        args["latent_channels"],
    )
    keys: Shapes = {}
    first_in = lat if decoder else args["in_channels"]
    keys["input_layer.weight"], keys["input_layer.bias"] = (ch[0], first_in, 3, 3, 3), (ch[0],)
    mid = ch[0] if decoder else ch[-1]
    for i in range(nmid):
        keys.update(_res_block(f"middle_block.{i}", mid))
    idx = 0
    for level, c in enumerate(ch):
        for _ in range(nres):
            keys.update(_res_block(f"blocks.{idx}", c))
            idx += 1
        if level < len(ch) - 1:
            nxt = ch[level + 1]
            shape = (8 * nxt, c, 3, 3, 3) if decoder else (nxt, c, 2, 2, 2)
            keys[f"blocks.{idx}.conv.weight"], keys[f"blocks.{idx}.conv.bias"] = shape, (shape[0],)
            idx += 1
    out = args["out_channels"] if decoder else 2 * lat
    keys["out_layer.0.weight"] = keys["out_layer.0.bias"] = (ch[-1],)
    keys["out_layer.2.weight"], keys["out_layer.2.bias"] = (out, ch[-1], 3, 3, 3), (out,)
    return keys


def sc_keys(args: dict, decoder: bool, io: int, pred_subdiv: bool = False) -> Shapes:
    ch, nb, lat = args["model_channels"], args["num_blocks"], args["latent_channels"]
    keys: Shapes = {}
    if decoder:
        keys["from_latent.weight"], keys["from_latent.bias"] = (ch[0], lat), (ch[0],)
        keys["output_layer.weight"], keys["output_layer.bias"] = (io, ch[-1]), (io,)
    else:
        keys["input_layer.weight"], keys["input_layer.bias"] = (ch[0], io), (ch[0],)
        keys["to_latent.weight"], keys["to_latent.bias"] = (2 * lat, ch[-1]), (2 * lat,)
    for i, (c, n) in enumerate(zip(ch, nb, strict=True)):
        for j in range(n):
            p = f"blocks.{i}.{j}"
            keys[f"{p}.conv.weight"], keys[f"{p}.conv.bias"] = (c, 3, 3, 3, c), (c,)
            keys[f"{p}.norm.weight"] = keys[f"{p}.norm.bias"] = (c,)
            keys[f"{p}.mlp.0.weight"], keys[f"{p}.mlp.0.bias"] = (4 * c, c), (4 * c,)
            keys[f"{p}.mlp.2.weight"], keys[f"{p}.mlp.2.bias"] = (c, 4 * c), (c,)
        if i < len(ch) - 1:
            p, nxt = f"blocks.{i}.{n}", ch[i + 1]
            keys[f"{p}.norm1.weight"] = keys[f"{p}.norm1.bias"] = (c,)
            mid = 8 * nxt if decoder else nxt // 8
            keys[f"{p}.conv1.weight"], keys[f"{p}.conv1.bias"] = (mid, 3, 3, 3, c), (mid,)
            keys[f"{p}.conv2.weight"], keys[f"{p}.conv2.bias"] = (nxt, 3, 3, 3, nxt), (nxt,)
            if pred_subdiv:
                keys[f"{p}.to_subdiv.weight"], keys[f"{p}.to_subdiv.bias"] = (8, c), (8,)
    return keys


def published_keys(stem: str, args: dict | None = None) -> Shapes:
    name, preset = PUBLISHED_PRESETS[stem]
    args = args or preset
    return {
        "SparseStructureEncoder": lambda: ss_keys(args, decoder=False),
        "SparseStructureDecoder": lambda: ss_keys(args, decoder=True),
        "FlexiDualGridVaeEncoder": lambda: sc_keys(args, decoder=False, io=6),
        "FlexiDualGridVaeDecoder": lambda: sc_keys(args, decoder=True, io=7, pred_subdiv=True),
        "SparseUnetVaeEncoder": lambda: sc_keys(args, decoder=False, io=args["in_channels"]),
        "SparseUnetVaeDecoder": lambda: sc_keys(args, decoder=True, io=args["out_channels"]),
    }[name]()


# ---------------------------------------------------------------- helpers
def _write(tmp_path: Path, stem: str, name: str, args: dict, shapes: Shapes, seed: int = 0) -> Path:
    gen = torch.Generator().manual_seed(seed)
    tensors = {k: torch.randn(s, generator=gen).to(torch.float16) for k, s in shapes.items()}
    path = tmp_path / stem
    path.with_suffix(".json").write_text(json.dumps({"name": name, "args": args}))
    save_file(tensors, str(path.with_suffix(".safetensors")))
    return path


TINY_SC = {"latent_channels": 8, "use_fp16": True}
TINY_ENC = {
    "model_channels": [16, 32, 64],
    "num_blocks": [0, 1, 1],
    "block_type": ["SparseConvNeXtBlock3d"] * 3,
    "down_block_type": ["SparseResBlockS2C3d"] * 2,
    **TINY_SC,
}
TINY_DEC = {
    "model_channels": [64, 32, 16],
    "num_blocks": [1, 1, 0],
    "block_type": ["SparseConvNeXtBlock3d"] * 3,
    "up_block_type": ["SparseResBlockC2S3d"] * 2,
    **TINY_SC,
}


# ---------------------------------------------------------------- tests
@pytest.mark.parametrize("stem", sorted(PUBLISHED_PRESETS))
def test_published_keys_and_shapes_match_the_modules(stem: str) -> None:
    name, args = PUBLISHED_PRESETS[stem]
    with torch.device("meta"):
        module = build_trellis_vae(name, {**args, "use_fp16": True})
    have = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    assert have == published_keys(stem)


def test_load_ss_vae_pair(tmp_path: Path) -> None:
    enc_args = {
        "in_channels": 1,
        "latent_channels": 4,
        "num_res_blocks": 1,
        "num_res_blocks_middle": 1,
        "channels": [8, 16],
        "use_fp16": True,
    }
    dec_args = {
        "out_channels": 1,
        "latent_channels": 4,
        "num_res_blocks": 1,
        "num_res_blocks_middle": 1,
        "channels": [16, 8],
        "use_fp16": True,
    }
    enc_path = _write(
        tmp_path, "ss_enc", "SparseStructureEncoder", enc_args, ss_keys(enc_args, decoder=False)
    )
    dec_path = _write(tmp_path, "ss_dec", "SparseStructureDecoder", dec_args, ss_keys(dec_args, decoder=True))
    enc, dec = load_trellis_vae(enc_path), load_trellis_vae(dec_path, dtype=torch.float64)
    assert isinstance(enc, SparseStructureEncoder) and isinstance(dec, SparseStructureDecoder)
    assert all(p.dtype == torch.float32 and p.requires_grad for p in enc.parameters())
    assert all(p.dtype == torch.float64 for p in dec.parameters())
    from safetensors.torch import load_file

    saved = load_file(str(enc_path) + ".safetensors")
    assert all(torch.equal(v, saved[k].float()) for k, v in enc.state_dict().items())
    z, _, _ = enc(torch.rand(1, 1, 8, 8, 8))
    assert dec(z.double()).shape == (1, 1, 8, 8, 8)


def test_load_sc_vaes_and_run(tmp_path: Path) -> None:
    tex_enc_args = {"in_channels": 6, **TINY_ENC}
    tex_dec_args = {"out_channels": 6, "pred_subdiv": False, **TINY_DEC}
    shape_dec_args = {"resolution": 16, **TINY_DEC}
    paths = {
        "shape_dec": _write(
            tmp_path,
            "shape_dec",
            "FlexiDualGridVaeDecoder",
            shape_dec_args,
            sc_keys(shape_dec_args, decoder=True, io=7, pred_subdiv=True),
        ),
        "tex_enc": _write(
            tmp_path,
            "tex_enc",
            "SparseUnetVaeEncoder",
            tex_enc_args,
            sc_keys(tex_enc_args, decoder=False, io=6),
        ),
        "tex_dec": _write(
            tmp_path,
            "tex_dec",
            "SparseUnetVaeDecoder",
            tex_dec_args,
            sc_keys(tex_dec_args, decoder=True, io=6),
        ),
    }
    shape_dec = load_trellis_vae(paths["shape_dec"])
    tex_enc, tex_dec = load_trellis_vae(paths["tex_enc"]), load_trellis_vae(paths["tex_dec"])
    assert isinstance(shape_dec, ShapeVAEDecoder) and shape_dec.resolution == 16
    assert isinstance(tex_enc, TextureVAEEncoder) and isinstance(tex_dec, TextureVAEDecoder)
    coords = torch.unique(torch.randint(0, 16, (200, 3), generator=torch.Generator().manual_seed(0)), dim=0)
    x = SparseTensor.from_list([(coords, torch.rand(len(coords), 6) * 2 - 1)])
    with torch.no_grad():
        post = tex_enc(x, sample_posterior=False)
        out = tex_dec(post.z, guide_subs=post.subs)
    assert torch.equal(torch.unique(out.coords, dim=0), torch.unique(x.coords, dim=0))


def test_strict_keys_and_shapes(tmp_path: Path) -> None:
    args = {"in_channels": 6, **TINY_ENC}
    keys = sc_keys(args, decoder=False, io=6)
    extra = _write(tmp_path, "extra", "SparseUnetVaeEncoder", args, {**keys, "blocks.9.weight": (1,)})
    with pytest.raises(CheckpointError, match=r"extra\.safetensors.*unexpected \['blocks\.9\.weight'\]"):
        load_trellis_vae(extra)
    missing = _write(
        tmp_path,
        "missing",
        "SparseUnetVaeEncoder",
        args,
        {k: v for k, v in keys.items() if k != "to_latent.bias"},
    )
    with pytest.raises(CheckpointError, match=r"missing \['to_latent\.bias'\]"):
        load_trellis_vae(missing)
    wrong = _write(
        tmp_path, "wrong", "SparseUnetVaeEncoder", args, {**keys, "blocks.1.0.conv.weight": (32, 3, 3, 3, 16)}
    )
    with pytest.raises(CheckpointError, match=r"wrong\.safetensors: blocks\.1\.0\.conv\.weight has shape"):
        load_trellis_vae(wrong)


def test_config_errors_name_file_and_field(tmp_path: Path) -> None:
    args = {"in_channels": 6, **TINY_ENC}
    keys = sc_keys(args, decoder=False, io=6)
    path = _write(tmp_path, "tex_enc_next_dc_f16c32_fp16", "SparseUnetVaeEncoder", args, keys)
    with pytest.raises(CheckpointError, match=r"tex_enc_next_dc_f16c32_fp16\.json: args\.model_channels"):
        load_trellis_vae(path, preset="tex_enc_next_dc_f16c32_fp16")
    with pytest.raises(CheckpointError, match=r"\.json: name is 'SparseUnetVaeEncoder'"):
        load_trellis_vae(path, preset="shape_enc_next_dc_f16c32_fp16")
    odd = _write(tmp_path, "odd", "SparseUnetVaeEncoder", {**args, "attn_heads": 4}, keys)
    with pytest.raises(CheckpointError, match=r"odd\.json: unsupported field\(s\) \['attn_heads'\]"):
        load_trellis_vae(odd)
    blocks = _write(
        tmp_path, "blocks", "SparseUnetVaeEncoder", {**args, "block_type": "SparseResBlock3d"}, keys
    )
    with pytest.raises(CheckpointError, match=r"blocks\.json: args\.block_type"):
        load_trellis_vae(blocks)
    unknown = _write(tmp_path, "unknown", "ElasticSLatFlowModel", args, keys)
    with pytest.raises(CheckpointError, match=r"unknown\.json: name 'ElasticSLatFlowModel'"):
        load_trellis_vae(unknown)
