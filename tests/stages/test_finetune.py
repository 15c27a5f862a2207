"""GenRecon's fine-tuning mode: published base weights loaded, base frozen, LoRA + new modules train."""

import json

import torch
from safetensors.torch import save_file

from genrecon.models.flow_transformer import DenseFlowTransformer
from genrecon.models.image_encoder import SmallViT
from genrecon.models.presets import flow_preset
from genrecon.objectives.rectified_flow import RectifiedFlow
from genrecon.pipelines.sampler import EulerSampler
from genrecon.stages.flow import SparseStructureFlowStage
from genrecon.weights.trellis_flow import RECOMPUTED_KEYS


def _release(tmp_path):
    """A 'published' SS flow at the tiny preset's size: <stem>.json + <stem>.safetensors with base keys."""
    torch.manual_seed(1)
    base = DenseFlowTransformer(**flow_preset("tiny"), resolution=8, in_channels=8, out_channels=8)
    for p in base.parameters():  # non-trivial weights everywhere, including the zero-initialised ones
        torch.nn.init.normal_(p, std=0.02)
    state = {k: v.contiguous() for k, v in base.state_dict().items() if k not in RECOMPUTED_KEYS}
    stem = tmp_path / "ss_flow_tiny"
    save_file(state, str(stem) + ".safetensors")
    args = {"resolution": 8, "in_channels": 8, "out_channels": 8, **flow_preset("tiny"), "pe_mode": "rope",
            "share_mod": True, "qk_rms_norm": True, "qk_rms_norm_cross": True}
    (tmp_path / "ss_flow_tiny.json").write_text(json.dumps({"name": "SparseStructureFlowModel", "args": args}))
    return stem, base


def test_finetune_loads_base_freezes_it_and_trains_lora_and_new_modules(tmp_path):
    stem, base = _release(tmp_path)

    def model(**kw):
        return DenseFlowTransformer(**flow_preset("tiny"), resolution=8, in_channels=8, out_channels=8, **kw)

    stage = SparseStructureFlowStage(
        model=model, image_encoder=SmallViT(width=32, patch_size=8, frozen=True), objective=RectifiedFlow(),
        sampler=EulerSampler(), image_size=32, latent_channels=8,
        finetune={"base_ckpt": str(stem), "preset": "tiny"}, lr=3e-5, weight_decay=0.0, lr_new=1e-4,
        weight_decay_new=0.01,
    )
    # every base tensor comes from the release
    loaded = stage.model.state_dict()
    for key, value in base.state_dict().items():
        if key in RECOMPUTED_KEYS:
            continue
        assert torch.equal(loaded[key], value), key  # LoRALinear keeps the Linear's own key names
    trainable = {n for n, p in stage.named_parameters() if p.requires_grad}
    assert trainable and all(("lora_" in n) or n.startswith(("model.aggregator.", "model.proj_linears.")) for n in trainable)
    assert any("self_attn.to_qkv.lora_A" in n for n in trainable) and any("cross_attn.to_kv.lora_B" in n for n in trainable)
    # LoRA B = 0 and zero proj_linears: the fine-tune model starts as the published one
    x, t, c2 = torch.randn(2, 8, 8, 8, 8), torch.rand(2), torch.randn(2, 17, 32)
    assert torch.allclose(stage.model(x, t, c2, torch.randn(2, 512, 32)), base(x, t, c2), atol=1e-5)
    groups = {g["name"]: g for g in stage.parameter_groups()}
    assert groups["base"]["lr"] == 3e-5 and groups["base"]["weight_decay"] == 0.0  # LoRA matrices
    assert groups["new"]["lr"] == 1e-4 and groups["new"]["weight_decay"] == 0.01  # aggregator, proj_linears
    assert groups["new_no_decay"]["weight_decay"] == 0.0
