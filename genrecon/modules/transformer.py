"""Modulated transformer blocks of the flow models (TRELLIS.2 ``ModulatedTransformerCrossBlock`` layout).

One block: LN → adaLN shift/scale → self-attention (RoPE, QK RMSNorm) → gated residual; affine LN →
cross-attention to image tokens → plain residual; LN → adaLN → FFN → gated residual. The adaLN modulation is
computed once for the whole model from the time embedding (share_mod); each block adds its own learned bias
``modulation`` [6C] (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp).
"""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from genrecon.modules.attention import (
    MultiHeadCrossAttention,
    MultiHeadSelfAttention,
    PackedLayout,
    PackedMultiHeadCrossAttention,
    PackedMultiHeadSelfAttention,
)
from genrecon.modules.norms import LayerNorm32


def _fp32_gemm_is_exact(device: torch.device) -> bool:
    """Whether a float32 GEMM on ``device`` multiplies in full precision (no TF32 / bf16 input rounding)."""
    if device.type == "cuda":
        backend = torch.backends.cuda.matmul
    elif device.type == "cpu":
        backend = getattr(torch.backends.mkldnn, "matmul", None)
    else:
        backend = None
    precision = getattr(backend, "fp32_precision", None)  # torch >= 2.9
    if precision is not None:
        return precision in ("none", "ieee")
    try:  # older torch: the legacy switches (newer ones refuse to read them once the new API was used)
        if device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
            return False
        return torch.get_float32_matmul_precision() == "highest"
    except RuntimeError:
        return False


class FeedForward(nn.Module):
    """x [..., C] -> [..., C]: Linear(C→hidden), GELU(tanh), Linear(hidden→C); keys ``mlp.0``, ``mlp.2``."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, channels)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(x)


class ModulatedTransformerCrossBlock(nn.Module):
    """Dense block. x [B, L, C], mod [B, 6C], context [B, T, C_ctx], phases [L, D/2] complex -> [B, L, C]."""

    # The only difference from the packed block's layers: which attention modules it builds.
    self_attention_cls: type[nn.Module] = MultiHeadSelfAttention
    cross_attention_cls: type[nn.Module] = MultiHeadCrossAttention

    def __init__(
        self,
        channels: int,
        ctx_channels: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        *,
        qk_rms_norm: bool = True,
        qk_rms_norm_cross: bool = True,
        attn_backend: str = "auto",
        attn_device: torch.device | str | None = None,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.use_checkpoint = use_checkpoint
        self.norm1 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.norm2 = LayerNorm32(channels, elementwise_affine=True, eps=1e-6)
        self.norm3 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.self_attn = self._self_attention(channels, num_heads, qk_rms_norm, attn_backend, attn_device)
        self.cross_attn = self._cross_attention(
            channels, ctx_channels, num_heads, qk_rms_norm_cross, attn_backend, attn_device
        )
        self.mlp = FeedForward(channels, int(channels * mlp_ratio))
        self.modulation = nn.Parameter(torch.randn(6 * channels) / channels**0.5)

    def _self_attention(self, channels, num_heads, qk_rms_norm, backend, attn_device) -> nn.Module:
        return self.self_attention_cls(
            channels, num_heads, qk_rms_norm=qk_rms_norm, use_rope=True, backend=backend, attn_device=attn_device
        )

    def _cross_attention(self, channels, ctx_channels, num_heads, qk_rms_norm, backend, attn_device) -> nn.Module:
        return self.cross_attention_cls(
            channels, ctx_channels, num_heads, qk_rms_norm=qk_rms_norm, backend=backend, attn_device=attn_device
        )

    def _per_token(self, m: Tensor, layout: PackedLayout | None) -> Tensor:
        """Per-sample vectors [B, C] broadcastable against the tokens: [B, 1, C]."""
        return m.unsqueeze(1)

    def _attend_self(self, h: Tensor, phases: Tensor | None, layout: PackedLayout | None) -> Tensor:
        return self.self_attn(h, phases)

    def _attend_cross(self, h: Tensor, context: Tensor, layout: PackedLayout | None) -> Tensor:
        return self.cross_attn(h, context)

    def _forward(
        self, x: Tensor, mod: Tensor, context: Tensor, phases: Tensor | None, layout: PackedLayout | None
    ) -> Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self._per_token(
            (self.modulation + mod).to(mod.dtype), layout
        ).chunk(6, dim=-1)
        h = self.norm1(x) * (1 + scale_msa) + shift_msa
        x = x + self._attend_self(h, phases, layout) * gate_msa
        x = x + self._attend_cross(self.norm2(x), context, layout)
        h = self.norm3(x) * (1 + scale_mlp) + shift_mlp
        return x + self.mlp(h) * gate_mlp

    def forward(
        self,
        x: Tensor,
        mod: Tensor,
        context: Tensor,
        phases: Tensor | None = None,
        layout: PackedLayout | None = None,
    ) -> Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            # Recompute activations in backward: trades ~30 % more compute for block-sized activation memory.
            return checkpoint(self._forward, x, mod, context, phases, layout, use_reentrant=False)
        return self._forward(x, mod, context, phases, layout)


class SparseModulatedTransformerCrossBlock(ModulatedTransformerCrossBlock):
    """Packed block. x [K, C] grouped by sample, mod [B, 6C], context [B, T, C_ctx], phases [K, D/2],
    layout: where each sample's tokens are -> [K, C]. Same parameters and key names as the dense block."""

    self_attention_cls = PackedMultiHeadSelfAttention
    cross_attention_cls = PackedMultiHeadCrossAttention

    @torch.compiler.disable
    def _per_token(self, m: Tensor, layout: PackedLayout | None) -> Tensor:
        """[B, C] -> [K, C] (or [1, C] for one sample, which broadcasts as is). Not compiled (it reads the
        layout's per-batch cache), like :func:`packed_attention`.

        One GEMM with the layout's one-hot segment matrix S [K, B] (built once per forward, shared by all
        blocks): row k is 1·m[b] + 0·(other rows), exactly m[b] whenever m is finite, so a sample's output
        never depends on another's values. The backward Sᵀ @ grad is one plain GEMM; a gather
        ``m[batch_idx]`` would be an atomic scatter-add of K rows onto B rows, which made a 1.3B-parameter
        step ~4x slower on an H100, and the former per-sample expand + cat cost ~7·B small ops per block
        (forward + backward). Only S (K·B elements, shared by the blocks) is kept for backward.
        """
        if m.shape[0] == 1:
            return m
        if m.dtype == torch.float32 and not _fp32_gemm_is_exact(m.device):
            # TF32 / bf16 fp32-matmul modes would round m: copy the rows instead (exact, B ops per call).
            bounds = pairwise(layout.offsets)
            return torch.cat([m[i].expand(end - start, -1) for i, (start, end) in enumerate(bounds)])
        segments = layout.segment_matrix(m.dtype)
        device_type = m.device.type
        if torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) != m.dtype:
            # Autocast would round m to its lower precision; the copy must stay exact.
            with torch.autocast(device_type, enabled=False):
                return torch.mm(segments, m)
        return torch.mm(segments, m)

    def _attend_self(self, h: Tensor, phases: Tensor | None, layout: PackedLayout | None) -> Tensor:
        return self.self_attn(h, layout, phases)

    def _attend_cross(self, h: Tensor, context: Tensor, layout: PackedLayout | None) -> Tensor:
        return self.cross_attn(h, layout, context)

    def forward(
        self,
        x: Tensor,
        mod: Tensor,
        context: Tensor,
        phases: Tensor | None = None,
        layout: PackedLayout | None = None,
    ) -> Tensor:
        if layout is None:
            raise ValueError("the packed block needs the token layout")
        return super().forward(x, mod, context, phases, layout)
