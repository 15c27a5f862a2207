import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from genrecon.models.aggregator import ViewAggregator
from genrecon.models.flow_transformer import DenseFlowTransformer, SparseFlowTransformer
from genrecon.models.presets import flow_preset
from genrecon.models.projection import Projection
from genrecon.modules.lora import apply_lora
from genrecon.weights.trellis_flow import (
    CheckpointError,
    check_state_dict,
    expected_shapes,
    load_genrecon_flow,
    load_trellis_flow,
)

# The tiny preset in the published layout: width C = 64, 2 blocks, 2 heads of 32, FFN 4C, cond 32.
C, L, H, D, FFN, CC = 64, 2, 2, 32, 256, 32


def published_shapes(in_ch: int, out_ch: int, resolution: int | None) -> dict[str, tuple[int, ...]]:
    """TRELLIS.2 flow key names and shapes (formats-and-checkpoints.md §5.3), sized like the tiny preset."""
    shapes = {
        "t_embedder.mlp.0.weight": (C, 256),
        "t_embedder.mlp.0.bias": (C,),
        "t_embedder.mlp.2.weight": (C, C),
        "t_embedder.mlp.2.bias": (C,),
        "adaLN_modulation.1.weight": (6 * C, C),
        "adaLN_modulation.1.bias": (6 * C,),
        "input_layer.weight": (C, in_ch),
        "input_layer.bias": (C,),
        "out_layer.weight": (out_ch, C),
        "out_layer.bias": (out_ch,),
    }
    if resolution is not None:
        shapes["rope_phases"] = (resolution**3, D // 2)
    for n in range(L):
        b = f"blocks.{n}."
        shapes |= {
            b + "modulation": (6 * C,),
            b + "norm2.weight": (C,),
            b + "norm2.bias": (C,),
            b + "self_attn.to_qkv.weight": (3 * C, C),
            b + "self_attn.to_qkv.bias": (3 * C,),
            b + "self_attn.q_rms_norm.gamma": (H, D),
            b + "self_attn.k_rms_norm.gamma": (H, D),
            b + "self_attn.to_out.weight": (C, C),
            b + "self_attn.to_out.bias": (C,),
            b + "cross_attn.to_q.weight": (C, C),
            b + "cross_attn.to_q.bias": (C,),
            b + "cross_attn.to_kv.weight": (2 * C, CC),
            b + "cross_attn.to_kv.bias": (2 * C,),
            b + "cross_attn.q_rms_norm.gamma": (H, D),
            b + "cross_attn.k_rms_norm.gamma": (H, D),
            b + "cross_attn.to_out.weight": (C, C),
            b + "cross_attn.to_out.bias": (C,),
            b + "mlp.mlp.0.weight": (FFN, C),
            b + "mlp.mlp.0.bias": (FFN,),
            b + "mlp.mlp.2.weight": (C, FFN),
            b + "mlp.mlp.2.bias": (C,),
        }
    return shapes


def random_state(
    shapes: dict[str, tuple[int, ...]], seed: int, dtype=torch.bfloat16
) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g).to(dtype) for k, s in shapes.items() if k != "rope_phases"}


def write_release(tmp: Path, name: str, args: dict, state: dict[str, torch.Tensor]) -> Path:
    stem = tmp / "ckpts" / "flow_tiny_bf16"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_name(stem.name + ".json").write_text(json.dumps({"name": name, "args": args}))
    save_file(state, str(stem.with_name(stem.name + ".safetensors")))
    return stem


def release_args(resolution: int, in_ch: int, out_ch: int, **overrides) -> dict:
    args = {
        "resolution": resolution,
        "in_channels": in_ch,
        "out_channels": out_ch,
        "model_channels": C,
        "cond_channels": CC,
        "num_blocks": L,
        "num_heads": H,
        "num_head_channels": 64,
        "mlp_ratio": 4.0,
        "pe_mode": "rope",
        "share_mod": True,
        "initialization": "scaled",
        "qk_rms_norm": True,
        "qk_rms_norm_cross": True,
        "dtype": "bfloat16",
        "use_checkpoint": False,
    }
    return args | overrides


@pytest.mark.parametrize(
    ("name", "cls", "in_ch", "out_ch", "resolution"),
    [
        ("SparseStructureFlowModel", DenseFlowTransformer, 8, 8, 4),
        ("SLatFlowModel", SparseFlowTransformer, 32, 32, 32),
        ("ElasticSLatFlowModel", SparseFlowTransformer, 64, 32, 32),
    ],
)
def test_release_loads_strictly_and_completely(tmp_path, name, cls, in_ch, out_ch, resolution) -> None:
    dense = cls is DenseFlowTransformer
    shapes = published_shapes(in_ch, out_ch, resolution if dense else None)
    state = random_state(shapes, seed=0)  # rope_phases omitted, as a release may do
    stem = write_release(tmp_path, name, release_args(resolution, in_ch, out_ch), state)
    model = load_trellis_flow(stem, preset="tiny")
    assert type(model) is cls and model.resolution == resolution
    loaded = model.state_dict()
    assert {k: tuple(v.shape) for k, v in loaded.items()} == shapes
    for key, value in state.items():
        assert torch.equal(loaded[key], value.float()), key
    if dense:
        assert loaded["rope_phases"].dtype == torch.complex64 and loaded["rope_phases"].abs().min() > 0.99


def test_release_into_a_conditioned_model_keeps_the_new_modules(tmp_path) -> None:
    state = random_state(published_shapes(8, 8, 4), seed=1)
    state["rope_phases"] = torch.zeros(64, 16, dtype=torch.complex64)  # present: accepted, then recomputed
    stem = write_release(tmp_path, "SparseStructureFlowModel", release_args(4, 8, 8), state)
    model = load_trellis_flow(stem, preset="tiny", projection=Projection(1, 2), aggregator=ViewAggregator(CC))
    assert not any(p.any() for p in model.proj_linears.parameters())
    assert model.rope_phases.abs().min() > 0.99
    # Into an existing, LoRA-adapted model: the base tensors load, the adapters stay.
    target = DenseFlowTransformer(**flow_preset("tiny"), resolution=4, in_channels=8, out_channels=8)
    apply_lora(target, r=2, alpha=4)
    load_trellis_flow(stem, target, preset="tiny")
    assert torch.equal(
        target.blocks[1].self_attn.to_qkv.weight, state["blocks.1.self_attn.to_qkv.weight"].float()
    )
    assert not target.blocks[1].self_attn.to_qkv.lora_B.any()


def test_release_errors_name_the_file_and_field(tmp_path) -> None:
    shapes = published_shapes(8, 8, 4)
    good = random_state(shapes, seed=2)
    bad = dict(good)
    bad["blocks.1.cross_attn.to_kv.weight"] = torch.zeros(2 * C, CC + 1)
    stem = write_release(tmp_path, "SparseStructureFlowModel", release_args(4, 8, 8), bad)
    with pytest.raises(
        CheckpointError,
        match=r"flow_tiny_bf16\.safetensors.*\n.*wrong shape: "
        r"blocks\.1\.cross_attn\.to_kv\.weight: file \(128, 33\), model \(128, 32\)",
    ):
        load_trellis_flow(stem, preset="tiny")

    missing = {k: v for k, v in good.items() if k != "blocks.0.modulation"}
    stem = write_release(tmp_path, "SparseStructureFlowModel", release_args(4, 8, 8), missing)
    with pytest.raises(CheckpointError, match=r"missing: blocks\.0\.modulation"):
        load_trellis_flow(stem, preset="tiny")

    unknown = good | {"pos_emb": torch.zeros(64, C)}
    stem = write_release(tmp_path, "SparseStructureFlowModel", release_args(4, 8, 8), unknown)
    with pytest.raises(CheckpointError, match=r"unknown: pos_emb"):
        load_trellis_flow(stem, preset="tiny")

    for field, value in (("num_blocks", 3), ("pe_mode", "ape"), ("model_channels", 128), ("patch_size", 2)):
        stem = write_release(
            tmp_path, "SparseStructureFlowModel", release_args(4, 8, 8, **{field: value}), good
        )
        with pytest.raises(CheckpointError, match=rf"flow_tiny_bf16\.json: .*args\.{field}"):
            load_trellis_flow(stem, preset="tiny")
    stem = write_release(tmp_path, "SparseStructureFlowModel", release_args(4, 8, 8), good)
    with pytest.raises(CheckpointError, match=r"flow_tiny_bf16\.json: .*args\.model_channels.*trellis2"):
        load_trellis_flow(stem)  # the trellis2 preset by default
    stem = write_release(tmp_path, "SomethingElse", release_args(4, 8, 8), good)
    with pytest.raises(CheckpointError, match="field 'name'"):
        load_trellis_flow(stem, preset="tiny")


# ------------------------------------------------------------------------------------------------------------
# GenRecon checkpoints
# ------------------------------------------------------------------------------------------------------------


def genrecon_model(seed: int) -> DenseFlowTransformer:
    torch.manual_seed(seed)
    model = DenseFlowTransformer(
        **flow_preset("tiny"),
        resolution=4,
        in_channels=8,
        out_channels=8,
        projection=Projection(1, 2),
        aggregator=ViewAggregator(CC),
    )
    apply_lora(model, r=8, alpha=16)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    return model


def test_genrecon_layout_is_base_plus_lora_aggregator_and_proj_linears() -> None:
    shapes = {k: tuple(s) for k, s in expected_shapes(genrecon_model(0)).items()}
    base = published_shapes(8, 8, 4)
    extra = {k: s for k, s in shapes.items() if k not in base}
    assert set(base) <= set(shapes)
    assert len(extra) == L * 10 + 10 + 2 * L  # LoRA A/B on 5 linears per block, aggregator, proj_linears
    assert extra["blocks.0.cross_attn.to_kv.lora_A"] == (8, CC)
    assert extra["blocks.0.cross_attn.to_kv.lora_B"] == (2 * C, 8)
    assert extra["aggregator.feature_mlp.0.weight"] == (CC, 3 * CC)
    assert extra["proj_linears.1.weight"] == (C, CC)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"ema_state_dict": sd, "step": 7},
        lambda sd: {"state_dict": {"module." + k: v for k, v in sd.items()}},
        lambda sd: {"model": {"denoiser." + k: v for k, v in sd.items()}, "optimizer": {"lr": torch.ones(1)}},
        lambda sd: {"state_dict": {"model." + k: v for k, v in sd.items()} | {"ema.shadow": torch.ones(3)}},
    ],
)
def test_genrecon_checkpoint_loads_through_wrappers(tmp_path, wrap) -> None:
    source = genrecon_model(0)
    state = {k: v.to(torch.bfloat16) for k, v in source.state_dict().items() if k != "rope_phases"}
    torch.save(wrap(state), tmp_path / "sparse_structure.pt")
    target = genrecon_model(1)
    report = load_genrecon_flow(tmp_path / "sparse_structure.pt", target)
    assert report.loaded == len(state)
    loaded = target.state_dict()
    for key, value in state.items():
        assert torch.equal(loaded[key], value.float()), key


def test_genrecon_checkpoint_must_match_exactly(tmp_path) -> None:
    state = dict(genrecon_model(0).state_dict())
    path = tmp_path / "shape_slat.pt"
    torch.save({k: v for k, v in state.items() if not k.endswith("proj_linears.1.bias")}, path)
    with pytest.raises(CheckpointError, match=r"shape_slat\.pt.*\n.*missing: proj_linears\.1\.bias"):
        load_genrecon_flow(path, genrecon_model(1))
    torch.save(state | {"blocks.0.self_attn.to_qkv.lora_A": torch.zeros(4, C)}, path)
    with pytest.raises(CheckpointError, match=r"wrong shape: blocks\.0\.self_attn\.to_qkv\.lora_A"):
        load_genrecon_flow(path, genrecon_model(1))
    # A plain TRELLIS.2 model has no LoRA or projection keys: the GenRecon file does not fit it.
    torch.save(state, path)
    plain = DenseFlowTransformer(**flow_preset("tiny"), resolution=4, in_channels=8, out_channels=8)
    with pytest.raises(CheckpointError, match=r"unknown: aggregator"):
        load_genrecon_flow(path, plain)


def test_check_state_dict_accepts_the_trellis2_table_on_meta() -> None:
    with torch.device("meta"):
        model = DenseFlowTransformer(
            **flow_preset("trellis2"), resolution=16, in_channels=8, out_channels=8, attn_device="cpu"
        )
    expected = expected_shapes(model)
    state = {k: torch.empty(s, device="meta") for k, s in expected.items()}
    check_state_dict(state, expected, "ss_flow_img_dit_1_3B_64_bf16.safetensors")
    state["blocks.29.mlp.mlp.0.weight"] = torch.empty(8192, 1024, device="meta")
    with pytest.raises(
        CheckpointError,
        match=r"blocks\.29\.mlp\.mlp\.0\.weight: file \(8192, 1024\), "
        r"model \(8192, 1536\)",
    ):
        check_state_dict(state, expected, "ss_flow_img_dit_1_3B_64_bf16.safetensors")
