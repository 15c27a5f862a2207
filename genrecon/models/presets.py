"""Size presets of the flow transformers: the architecture fields only.

Stage-specific fields (resolution, in_channels, out_channels) and backends are given next to a preset:
``DenseFlowTransformer(**flow_preset("trellis2"), resolution=16, in_channels=8, out_channels=8)``.
``cond_channels`` must equal the image encoder's token width.
"""

from __future__ import annotations

from typing import Any

FLOW_PRESETS: dict[str, dict[str, Any]] = {
    # CPU tests: head_dim 32 (5 RoPE frequencies per axis), a forward pass in milliseconds.
    "tiny": {"model_channels": 64, "num_blocks": 2, "num_heads": 2, "mlp_ratio": 4.0, "cond_channels": 32},
    # From scratch on one GPU: 50.9 M base parameters (54.4 M with the projection pathway). head_dim 64
    # (FlashAttention-friendly, 10 RoPE frequencies per axis); cond 384 = DINOv3 ViT-S/16 tokens. At 8 × 4096
    # tokens a step is ~2e13 FLOP, so ~100k steps fit in a few H100 hours; depth 12 keeps enough capacity
    # for 16³/32³ latents.
    "small": {
        "model_channels": 512,
        "num_blocks": 12,
        "num_heads": 8,
        "mlp_ratio": 4.0,
        "cond_channels": 384,
    },
    # Published TRELLIS.2 1.3B flows (SS / shape / tex): FFN int(1536 · 5.3334) = 8192, head_dim 128.
    "trellis2": {
        "model_channels": 1536,
        "num_blocks": 30,
        "num_heads": 12,
        "mlp_ratio": 5.3334,
        "cond_channels": 1024,
    },
}


def flow_preset(name: str) -> dict[str, Any]:
    """A copy of the named preset's constructor arguments."""
    if name not in FLOW_PRESETS:
        raise KeyError(f"unknown flow preset {name!r}; choose from {sorted(FLOW_PRESETS)}")
    return dict(FLOW_PRESETS[name])
