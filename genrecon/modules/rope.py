"""3-D rotary position embedding over integer voxel coordinates (TRELLIS.2 layout).

Each head dimension pair ``(2j, 2j+1)`` is one complex number. The first ``3·F`` pairs rotate by
``coord_axis · freq_k`` with ``F = head_dim // 2 // 3`` frequencies per axis (x block, then y, then z);
the remaining pairs (one at head_dim 128) are left unrotated.
"""

from __future__ import annotations

import torch
from torch import Tensor

NUM_AXES = 3


def rope_frequencies(head_dim: int, theta: float = 1e4, device: torch.device | str | None = None) -> Tensor:
    """Per-axis frequencies ``1 / theta^(k/F)``, k = 0..F-1, F = head_dim // 2 // 3. Returns [F] float32."""
    freq_dim = head_dim // 2 // NUM_AXES
    if freq_dim < 1:
        raise ValueError(f"head_dim {head_dim} is too small for 3-D RoPE (needs at least {2 * NUM_AXES})")
    exponents = torch.arange(freq_dim, dtype=torch.float32, device=device) / freq_dim
    return 1.0 / (theta**exponents)


def rope_phases(coords: Tensor, head_dim: int, theta: float = 1e4) -> Tensor:
    """Unit complex rotations for integer coordinates.

    coords [..., 3] (any integer or float dtype) -> phases [..., head_dim // 2] complex64.
    """
    if coords.shape[-1] != NUM_AXES:
        raise ValueError(f"coords must end in {NUM_AXES} axes, got shape {tuple(coords.shape)}")
    if head_dim % 2:
        raise ValueError(f"head_dim must be even for RoPE, got {head_dim}")
    freqs = rope_frequencies(head_dim, theta, coords.device)
    angles = (coords.float().unsqueeze(-1) * freqs).flatten(-2)  # [..., 3F], axis-major
    pad = head_dim // 2 - angles.shape[-1]
    # Zero angle = identity rotation for the pairs left over after 3 equal axis blocks.
    angles = torch.cat([angles, angles.new_zeros(*angles.shape[:-1], pad)], dim=-1)
    return torch.polar(torch.ones_like(angles), angles)


def apply_rope(x: Tensor, phases: Tensor) -> Tensor:
    """Rotate x [..., L, H, D] by phases [..., L, D/2] (broadcast over heads); returns x's dtype."""
    if torch.compiler.is_compiling():
        return rotate_pairs(x, phases)
    x_complex = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    rotated = x_complex * phases.unsqueeze(-2)
    return torch.view_as_real(rotated).flatten(-2).to(x.dtype)


def rotate_pairs(x: Tensor, phases: Tensor) -> Tensor:
    """:func:`apply_rope` in real arithmetic, (a, b) -> (a·cos − b·sin, a·sin + b·cos): what compiled blocks run,
    since inductor generates no code for complex tensors (eager, the complex product is fewer kernels)."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    a, b = pairs[..., 0], pairs[..., 1]
    cos, sin = phases.real.unsqueeze(-2), phases.imag.unsqueeze(-2)
    return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2).to(x.dtype)


def grid_coords(resolution: int, device: torch.device | str | None = None) -> Tensor:
    """Integer coordinates of an R³ grid in ``meshgrid(indexing="ij")`` order: [R³, 3] int64."""
    axis = torch.arange(resolution, device=device)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, NUM_AXES)
