"""Sinusoidal timestep embedding followed by an MLP (DiT / TRELLIS.2 ``t_embedder``)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def timestep_embedding(t: Tensor, dim: int = 256, max_period: float = 1e4) -> Tensor:
    """t [B] (the flows feed 1000·t) -> [B, dim] = [cos(t·f_k), sin(t·f_k)], f_k = max_period^(-k/half)."""
    if dim % 2:
        raise ValueError(f"timestep embedding dim must be even, got {dim}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    """t [B] -> [B, C]: sinusoidal(freq_dim) -> Linear -> SiLU -> Linear (keys ``mlp.0``, ``mlp.2``)."""

    def __init__(self, channels: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, channels), nn.SiLU(), nn.Linear(channels, channels))

    def forward(self, t: Tensor) -> Tensor:
        emb = timestep_embedding(t, self.freq_dim)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))
