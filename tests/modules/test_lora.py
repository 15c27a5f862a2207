import pytest
import torch
from torch import nn

from genrecon.models.flow_transformer import DenseFlowTransformer
from genrecon.models.presets import flow_preset
from genrecon.modules.lora import LoRALinear, apply_lora, freeze_base, lora_parameters, merge_lora


def _model() -> DenseFlowTransformer:
    torch.manual_seed(0)
    model = DenseFlowTransformer(**flow_preset("tiny"), resolution=3, in_channels=4, out_channels=4)
    # Non-zero output layer and modulation, so the output depends on every block.
    for p in (model.out_layer.weight, model.adaLN_modulation[1].weight):
        nn.init.normal_(p, std=0.05)
    return model.eval()


def _inputs() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    return (
        torch.randn(2, 4, 3, 3, 3, generator=g),
        torch.rand(2, generator=g),
        torch.randn(2, 5, 32, generator=g),
    )


def test_zero_b_leaves_output_unchanged_and_keys_follow_genrecon() -> None:
    model = _model()
    x, t, c = _inputs()
    before = model(x, t, c)
    wrapped = apply_lora(model, r=4, alpha=8)
    assert len(wrapped) == 5 * 2
    assert torch.equal(model(x, t, c), before)
    qkv = model.blocks[0].self_attn.to_qkv
    assert isinstance(qkv, LoRALinear) and qkv.scaling == 2.0
    sd = model.state_dict()
    assert sd["blocks.0.self_attn.to_qkv.lora_A"].shape == (4, 64)
    assert sd["blocks.0.self_attn.to_qkv.lora_B"].shape == (192, 4)
    assert sd["blocks.1.cross_attn.to_kv.lora_A"].shape == (4, 32)
    assert not sd["blocks.1.cross_attn.to_kv.lora_B"].any()
    assert sd["blocks.1.cross_attn.to_kv.lora_A"].std() > 0


def test_merge_equals_unmerged() -> None:
    model = _model()
    x, t, c = _inputs()
    base_keys = set(model.state_dict())
    apply_lora(model, r=4, alpha=8)
    for b in (p for n, p in model.named_parameters() if n.endswith("lora_B")):
        nn.init.normal_(b, std=0.1)
    unmerged = model(x, t, c)
    assert not torch.allclose(unmerged, _model()(x, t, c))
    assert len(merge_lora(model)) == 10
    assert set(model.state_dict()) == base_keys
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    torch.testing.assert_close(model(x, t, c), unmerged, atol=1e-5, rtol=1e-5)


def test_wrapping_shares_weights_and_trains_only_adapters() -> None:
    model = _model()
    weight = model.blocks[0].cross_attn.to_q.weight
    apply_lora(model, targets=["cross_attn.to_q"], r=2, alpha=2)
    assert model.blocks[0].cross_attn.to_q.weight is weight
    freeze_base(model, trainable_prefixes=("out_layer.",))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {
        "blocks.0.cross_attn.to_q.lora_A",
        "blocks.0.cross_attn.to_q.lora_B",
        "blocks.1.cross_attn.to_q.lora_A",
        "blocks.1.cross_attn.to_q.lora_B",
        "out_layer.weight",
        "out_layer.bias",
    }
    assert len(list(lora_parameters(model))) == 4
    x, t, c = _inputs()
    model(x, t, c).square().sum().backward()
    assert model.blocks[0].cross_attn.to_q.lora_B.grad.abs().sum() > 0
    assert weight.grad is None


def test_bad_targets_raise() -> None:
    model = _model()
    with pytest.raises(ValueError, match="matches no module"):
        apply_lora(model, targets=["self_attn.to_qkvv"])
    with pytest.raises(TypeError, match="nn.Linear"):
        apply_lora(model, targets=["self_attn"])
