"""Normalisation layers of the flow transformers (TRELLIS.2 layout, so published weights load by name)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LayerNorm32(nn.LayerNorm):
    """LayerNorm computed in float32 and cast back: bf16 statistics over wide channels lose precision."""

    def forward(self, x: Tensor) -> Tensor:
        """x [..., C] -> [..., C] in x's dtype."""
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


class MultiHeadRMSNorm(nn.Module):
    """Per-head RMSNorm of queries/keys: ``F.normalize(x) · gamma · √D`` with a learned gamma [H, D].

    Normalising q and k bounds the attention logits, which keeps bf16 training of wide models stable.
    """

    def __init__(self, head_dim: int, num_heads: int) -> None:
        super().__init__()
        self.scale = math.sqrt(head_dim)
        self.gamma = nn.Parameter(torch.ones(num_heads, head_dim))

    def forward(self, x: Tensor) -> Tensor:
        """x [..., H, D] -> [..., H, D] in x's dtype (computed in float32)."""
        return (F.normalize(x.float(), dim=-1) * self.gamma.float() * self.scale).to(x.dtype)
