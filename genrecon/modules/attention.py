"""Attention with an explicit backend switch, dense and packed variable-length.

Dense tensors are [B, H, L, D]. Packed tensors are [total, H, D]: the tokens of all samples laid end to end,
sample b occupying rows ``cu_seqlens[b]:cu_seqlens[b+1]``. Packing beats padding for variable-length batches
(H100: a per-sequence SDPA loop reaches 340 useful TFLOP/s, padded+masked SDPA 77).

Backends are plain strings chosen by the caller (Hydra fills them); ``"auto"`` is resolved once, when a module
is built, for the device it will run on. Nothing is read from environment variables or global state.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from genrecon.modules.norms import MultiHeadRMSNorm
from genrecon.modules.rope import apply_rope

DENSE_BACKENDS = ("sdpa", "naive", "flash_attn")
VARLEN_BACKENDS = ("flash_attn", "torch_varlen", "sdpa_loop", "sdpa_loop_cudnn", "naive")
_HALF_DTYPES = (torch.float16, torch.bfloat16)


# ------------------------------------------------------------------------------------------------------------
# Backend availability and resolution
# ------------------------------------------------------------------------------------------------------------


def flash_attn_available() -> bool:
    """Whether the ``flash_attn`` package can be imported."""
    return importlib.util.find_spec("flash_attn") is not None


def _torch_varlen_fn():
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def torch_varlen_available(device: torch.device | str) -> bool:
    """``torch.nn.attention.varlen.varlen_attn`` exists in this build and can run on ``device``.

    It wraps the FlashAttention kernel: CUDA only, compute capability 8.0 or newer.
    """
    device = torch.device(device)
    if _torch_varlen_fn() is None or device.type != "cuda" or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(device) >= (8, 0)


def _default_device(device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dense_backend(backend: str, device: torch.device | str | None = None) -> str:
    """Turn a dense backend name (or ``"auto"``) into one that runs on ``device``.

    ``auto`` is SDPA everywhere: on CUDA it already dispatches bf16/fp16 to FlashAttention-2 kernels
    (430-480 TFLOP/s fwd+bwd measured on an H100), and unlike ``flash_attn`` it also accepts float32.
    device: where the module will run; None = CUDA if available, else CPU.
    """
    if backend == "auto":
        return "sdpa"
    if backend not in DENSE_BACKENDS:
        raise ValueError(
            f"unknown dense attention backend {backend!r}; choose from {('auto',) + DENSE_BACKENDS}"
        )
    if backend == "flash_attn":
        _require_flash_attn(_default_device(device))
    return backend


def resolve_varlen_backend(backend: str, device: torch.device | str | None = None) -> str:
    """Turn a packed-attention backend name (or ``"auto"``) into one that runs on ``device``.

    ``auto``: ``flash_attn`` on CUDA when installed, else ``sdpa_loop``. The loop is preferred over
    ``torch_varlen`` because it measured faster on an H100 for fwd+bwd over 8 sequences of 2.5k-20k tokens
    (340 vs 290 useful TFLOP/s) and it also accepts float32; ``torch_varlen`` stays available by name.
    ``sdpa_loop`` keeps cuDNN attention off (:data:`LOOP_SDPA_BACKENDS`); ``sdpa_loop_cudnn`` is the same loop
    with torch's own kernel choice, cuDNN first on Hopper, whose per-length plans pay only where lengths repeat.
    device: where the module will run; None = CUDA if available, else CPU.
    """
    device = _default_device(device)
    if backend == "auto":
        return "flash_attn" if device.type == "cuda" and flash_attn_available() else "sdpa_loop"
    if backend not in VARLEN_BACKENDS:
        raise ValueError(
            f"unknown varlen attention backend {backend!r}; choose from {('auto',) + VARLEN_BACKENDS}"
        )
    if backend == "flash_attn":
        _require_flash_attn(device)
    if backend == "torch_varlen" and not torch_varlen_available(device):
        raise RuntimeError(
            f"attention backend 'torch_varlen' cannot run on {device}: it needs "
            "torch.nn.attention.varlen.varlen_attn and a CUDA device of compute capability >= 8.0; "
            "use 'sdpa_loop' instead"
        )
    return backend


def _require_flash_attn(device: torch.device) -> None:
    if not flash_attn_available():
        raise ImportError(
            "attention backend 'flash_attn' was requested but the flash_attn package is not importable; "
            "install flash-attn (see README 'GPU environment') or choose 'sdpa' / 'sdpa_loop'"
        )
    if device.type != "cuda":
        raise RuntimeError(f"attention backend 'flash_attn' needs a CUDA device, got {device}")


def _check_half(q: Tensor, backend: str) -> None:
    if q.dtype not in _HALF_DTYPES:
        raise TypeError(
            f"attention backend {backend!r} needs float16/bfloat16 inputs, got {q.dtype}; "
            "run under torch.autocast or use the 'sdpa' / 'sdpa_loop' backend"
        )


# ------------------------------------------------------------------------------------------------------------
# Dense attention
# ------------------------------------------------------------------------------------------------------------


def _naive_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Reference softmax(q kᵀ/√D) v in float32; q [..., Lq, D], k/v [..., Lk, D]."""
    scale = q.shape[-1] ** -0.5
    logits = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    return torch.matmul(logits.softmax(dim=-1), v.float()).to(q.dtype)


def scaled_dot_product(q: Tensor, k: Tensor, v: Tensor, backend: str = "sdpa") -> Tensor:
    """Unmasked attention. q [B, H, Lq, D], k/v [B, H, Lk, D] -> [B, H, Lq, D].

    backend: "sdpa" | "naive" | "flash_attn" | "auto" (resolved for q's device).
    """
    backend = resolve_dense_backend(backend, q.device) if backend == "auto" else backend
    if backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v)
    if backend == "naive":
        return _naive_attention(q, k, v)
    if backend == "flash_attn":
        _check_half(q, backend)
        from flash_attn import flash_attn_func

        # flash_attn wants [B, L, H, D].
        out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)
    raise ValueError(f"unknown dense attention backend {backend!r}; choose from {DENSE_BACKENDS}")


# ------------------------------------------------------------------------------------------------------------
# Packed variable-length attention
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PackedLayout:
    """Where each sample's tokens sit in a packed [total, ...] tensor.

    cu_seqlens [B+1] int32 on the tokens' device (for the fused kernels); offsets: the same numbers on the
    host, so the loop backends, ``max_seqlen`` and per-sample slicing need no device sync per call.
    A layout lives for one model forward; device tensors derived from it (``segment_matrix``,
    ``context``) are built on first use and cached in it, so every block shares them.
    """

    cu_seqlens: Tensor
    offsets: tuple[int, ...]
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def batch_size(self) -> int:
        return len(self.offsets) - 1

    @property
    def total(self) -> int:
        return self.offsets[-1]

    @property
    def max_seqlen(self) -> int:
        return max((b - a for a, b in pairwise(self.offsets)), default=0)

    @classmethod
    def from_batch_idx(cls, batch_idx: Tensor, batch_size: int, *, check_sorted: bool = True) -> PackedLayout:
        """batch_idx [total] int, non-decreasing (tokens grouped by sample); empty samples are allowed.

        Reads the counts back to the host (device syncs): prefer :meth:`from_offsets` when the offsets are
        known on the host. check_sorted=False skips the grouping check, for callers that just sorted.
        """
        batch_idx = batch_idx.long()
        if check_sorted and batch_idx.numel() and bool((batch_idx[1:] < batch_idx[:-1]).any()):
            raise ValueError("packed tokens must be grouped by sample (batch index non-decreasing)")
        counts = torch.bincount(batch_idx, minlength=batch_size)
        if counts.numel() != batch_size:
            raise ValueError(f"batch index {int(batch_idx.max())} out of range for batch size {batch_size}")
        offsets = [0]
        for n in counts.tolist():
            offsets.append(offsets[-1] + n)
        cu = torch.tensor(offsets, dtype=torch.int32, device=batch_idx.device)
        return cls(cu_seqlens=cu, offsets=tuple(offsets))

    @classmethod
    def from_offsets(cls, offsets: Sequence[int], device: torch.device | str) -> PackedLayout:
        """Layout from host offsets [B+1] (0, ..., total; sample b is rows offsets[b]:offsets[b+1]).

        No device sync: on CUDA, cu_seqlens is copied asynchronously from pinned host memory.
        """
        offsets = tuple(int(o) for o in offsets)
        if not offsets or offsets[0] != 0 or any(b < a for a, b in pairwise(offsets)):
            raise ValueError(f"offsets must start at 0 and be non-decreasing, got {offsets}")
        device = torch.device(device)
        if device.type == "cuda":
            # A plain torch.tensor(..., device=cuda) copies from pageable memory and blocks the host.
            cu = torch.tensor(offsets, dtype=torch.int32, pin_memory=True).to(device, non_blocking=True)
        else:
            cu = torch.tensor(offsets, dtype=torch.int32, device=device)
        return cls(cu_seqlens=cu, offsets=offsets)

    @classmethod
    def uniform(cls, batch_size: int, length: int, device: torch.device | str) -> PackedLayout:
        """Layout of a dense [B, L, ...] tensor viewed as packed [B·L, ...]."""
        offsets = tuple(b * length for b in range(batch_size + 1))
        # arange runs on the device; torch.tensor(offsets, device=cuda) would be a blocking copy per call.
        cu = torch.arange(batch_size + 1, dtype=torch.int32, device=device) * length
        return cls(cu_seqlens=cu, offsets=offsets)

    def _cached(self, key: tuple, build):
        # Inference tensors cannot be saved for backward: never hand one built in inference mode to a
        # forward that records a graph.
        key = (*key, torch.is_inference_mode_enabled())
        value = self._cache.get(key)
        if value is None:
            value = self._cache[key] = build()
        return value

    def context(self, length: int) -> PackedLayout:
        """Layout of a dense per-sample context [B, length, ...] viewed as packed (cross-attention keys)."""
        return self._cached(
            ("context", length), lambda: PackedLayout.uniform(self.batch_size, length, self.cu_seqlens.device)
        )

    def segment_matrix(self, dtype: torch.dtype) -> Tensor:
        """One-hot [total, B] in ``dtype``: row k has a 1 in the column of token k's sample.

        ``segment_matrix(m.dtype) @ m`` spreads per-sample rows m [B, C] over the tokens [total, C] in one
        GEMM, whose backward (Sᵀ @ grad) is one plain GEMM too: no atomics, unlike a gather's scatter-add.
        Built on the device from cu_seqlens (no sync), once per layout and dtype.
        """

        def build() -> Tensor:
            cu = self.cu_seqlens
            token = torch.arange(self.total, dtype=cu.dtype, device=cu.device).unsqueeze(1)
            return ((token >= cu[:-1]) & (token < cu[1:])).to(dtype)

        return self._cached(("segments", dtype), build)


# SDPA kernels of the per-sequence loop: every kernel but cuDNN's. cuDNN attention (which torch picks first on
# Hopper) builds and caches an execution plan per distinct sequence length; packed chunks bring new lengths every
# batch (4.6k ± 30 % cells), so its cache fills only over thousands of steps, each miss costing a plan build.
LOOP_SDPA_BACKENDS = (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH)


def _loop_attention(
    q: Tensor, k: Tensor, v: Tensor, offsets_q: Sequence[int], offsets_k: Sequence[int], naive: bool,
    kernels: Sequence[SDPBackend] | None = LOOP_SDPA_BACKENDS,
) -> Tensor:
    """Per-sequence attention; each output row depends only on its own sequence, bit for bit.

    The packed tensors are cut with one ``split`` each rather than one slice per sequence: a slice's backward
    writes its gradient into a zero tensor of the whole packed size, so B slices cost B full-size fills and
    B - 1 full-size adds per tensor, where ``split``'s backward is a single concatenation. SDPA may use only
    ``kernels`` (None: torch's choice)."""
    len_q = [b - a for a, b in pairwise(offsets_q)]
    len_k = [b - a for a, b in pairwise(offsets_k)]
    outs = []
    with contextlib.nullcontext() if naive or kernels is None else sdpa_kernel(list(kernels)):
        for qi, ki, vi in zip(q.split(len_q), k.split(len_k), v.split(len_k), strict=True):
            if qi.shape[0] == 0:
                continue
            # [L, H, D] -> [1, H, L, D]
            qi, ki, vi = (t.transpose(0, 1).unsqueeze(0) for t in (qi, ki, vi))
            oi = _naive_attention(qi, ki, vi) if naive else F.scaled_dot_product_attention(qi, ki, vi)
            outs.append(oi.squeeze(0).transpose(0, 1))
    if not outs:
        return q.new_empty(0, q.shape[1], v.shape[-1])
    return torch.cat(outs, dim=0)


def varlen_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens_q: Tensor,
    cu_seqlens_k: Tensor,
    max_q: int,
    max_k: int,
    backend: str = "sdpa_loop",
    *,
    offsets_q: Sequence[int] | None = None,
    offsets_k: Sequence[int] | None = None,
) -> Tensor:
    """Unmasked attention within each packed sequence. q [Tq, H, D], k/v [Tk, H, D] -> [Tq, H, D].

    cu_seqlens_q/k [B+1] int32: sequence b is rows cu[b]:cu[b+1]; max_q/max_k: the longest lengths.
    backend: "flash_attn" | "torch_varlen" | "sdpa_loop" | "sdpa_loop_cudnn" | "naive" | "auto" (resolved for
    q's device).
    offsets_q/k: host copies of cu_seqlens for the loop backends (avoids a device sync); read from the
    tensors when omitted.
    """
    backend = resolve_varlen_backend(backend, q.device) if backend == "auto" else backend
    if backend in ("sdpa_loop", "sdpa_loop_cudnn", "naive"):
        offsets_q = list(offsets_q) if offsets_q is not None else cu_seqlens_q.tolist()
        offsets_k = list(offsets_k) if offsets_k is not None else cu_seqlens_k.tolist()
        kernels = LOOP_SDPA_BACKENDS if backend == "sdpa_loop" else None
        return _loop_attention(q, k, v, offsets_q, offsets_k, naive=backend == "naive", kernels=kernels)
    cu_q = cu_seqlens_q.to(device=q.device, dtype=torch.int32)
    cu_k = cu_seqlens_k.to(device=q.device, dtype=torch.int32)
    if backend == "flash_attn":
        _check_half(q, backend)
        from flash_attn import flash_attn_varlen_func

        return flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k)
    if backend == "torch_varlen":
        _check_half(q, backend)
        return _torch_varlen_fn()(q, k, v, cu_q, cu_k, max_q, max_k)
    raise ValueError(f"unknown varlen attention backend {backend!r}; choose from {VARLEN_BACKENDS}")


@torch.compiler.disable
def packed_attention(
    q: Tensor, k: Tensor, v: Tensor, layout: PackedLayout, kv: PackedLayout | int, backend: str
) -> Tensor:
    """:func:`varlen_attention` of packed queries q [Tq, H, D] in ``layout`` against keys/values k, v [Tk, H, D]
    in the layout ``kv``, or, given an int T, against a dense per-sample context of T tokens ([B·T, H, D]).

    Outside ``torch.compile``: the layout (host offsets, a per-batch cache) changes every batch, so a compiled
    block runs its projections, norms and RoPE as compiled code and calls this as it is (one graph break)."""
    kv_layout = layout.context(kv) if isinstance(kv, int) else kv
    return varlen_attention(
        q,
        k,
        v,
        layout.cu_seqlens,
        kv_layout.cu_seqlens,
        layout.max_seqlen,
        kv_layout.max_seqlen,
        backend,
        offsets_q=layout.offsets,
        offsets_k=kv_layout.offsets,
    )


# ------------------------------------------------------------------------------------------------------------
# Attention modules (key names follow TRELLIS.2: to_qkv / to_q / to_kv / to_out / q_rms_norm / k_rms_norm)
# ------------------------------------------------------------------------------------------------------------


class _SelfAttentionProjections(nn.Module):
    """Fused qkv projection, optional QK RMSNorm, optional RoPE, output projection."""

    def __init__(
        self, channels: int, num_heads: int, *, qkv_bias: bool, qk_rms_norm: bool, use_rope: bool
    ) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels {channels} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = channels // num_heads
        self.use_rope = use_rope
        self.to_qkv = nn.Linear(channels, 3 * channels, bias=qkv_bias)
        if qk_rms_norm:
            self.q_rms_norm = MultiHeadRMSNorm(self.head_dim, num_heads)
            self.k_rms_norm = MultiHeadRMSNorm(self.head_dim, num_heads)
        else:
            self.q_rms_norm = self.k_rms_norm = None
        self.to_out = nn.Linear(channels, channels)

    def _qkv(self, x: Tensor, phases: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """x [..., L, C] -> q, k, v [..., L, H, D]; RMSNorm before RoPE, as in TRELLIS.2."""
        q, k, v = self.to_qkv(x).unflatten(-1, (3, self.num_heads, self.head_dim)).unbind(-3)
        if self.q_rms_norm is not None:
            q, k = self.q_rms_norm(q), self.k_rms_norm(k)
        if self.use_rope:
            if phases is None:
                raise ValueError("this attention layer uses RoPE: pass phases")
            q, k = apply_rope(q, phases), apply_rope(k, phases)
        return q, k, v


class MultiHeadSelfAttention(_SelfAttentionProjections):
    """Dense self-attention. x [B, L, C], phases [L, D/2] or [B, L, D/2] complex -> [B, L, C]."""

    def __init__(
        self,
        channels: int,
        num_heads: int,
        *,
        qkv_bias: bool = True,
        qk_rms_norm: bool = True,
        use_rope: bool = True,
        backend: str = "auto",
        attn_device: torch.device | str | None = None,
    ) -> None:
        super().__init__(channels, num_heads, qkv_bias=qkv_bias, qk_rms_norm=qk_rms_norm, use_rope=use_rope)
        self.backend = resolve_dense_backend(backend, attn_device)

    def forward(self, x: Tensor, phases: Tensor | None = None) -> Tensor:
        q, k, v = (t.transpose(1, 2) for t in self._qkv(x, phases))  # [B, H, L, D]
        out = scaled_dot_product(q, k, v, self.backend).transpose(1, 2)
        return self.to_out(out.flatten(-2))


class PackedMultiHeadSelfAttention(_SelfAttentionProjections):
    """Self-attention within each sample of packed tokens. x [K, C], phases [K, D/2] complex -> [K, C]."""

    def __init__(
        self,
        channels: int,
        num_heads: int,
        *,
        qkv_bias: bool = True,
        qk_rms_norm: bool = True,
        use_rope: bool = True,
        backend: str = "auto",
        attn_device: torch.device | str | None = None,
    ) -> None:
        super().__init__(channels, num_heads, qkv_bias=qkv_bias, qk_rms_norm=qk_rms_norm, use_rope=use_rope)
        self.backend = resolve_varlen_backend(backend, attn_device)

    def forward(self, x: Tensor, layout: PackedLayout, phases: Tensor | None = None) -> Tensor:
        q, k, v = self._qkv(x, phases)  # [K, H, D]
        out = packed_attention(q, k, v, layout, layout, self.backend)
        return self.to_out(out.flatten(-2))


class _CrossAttentionProjections(nn.Module):
    """Query projection from x, fused kv projection from the context, optional QK RMSNorm, no RoPE."""

    def __init__(
        self, channels: int, ctx_channels: int, num_heads: int, *, qkv_bias: bool, qk_rms_norm: bool
    ) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels {channels} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = channels // num_heads
        self.to_q = nn.Linear(channels, channels, bias=qkv_bias)
        self.to_kv = nn.Linear(ctx_channels, 2 * channels, bias=qkv_bias)
        if qk_rms_norm:
            self.q_rms_norm = MultiHeadRMSNorm(self.head_dim, num_heads)
            self.k_rms_norm = MultiHeadRMSNorm(self.head_dim, num_heads)
        else:
            self.q_rms_norm = self.k_rms_norm = None
        self.to_out = nn.Linear(channels, channels)

    def _q(self, x: Tensor) -> Tensor:
        q = self.to_q(x).unflatten(-1, (self.num_heads, self.head_dim))
        return self.q_rms_norm(q) if self.q_rms_norm is not None else q

    def _kv(self, context: Tensor) -> tuple[Tensor, Tensor]:
        k, v = self.to_kv(context).unflatten(-1, (2, self.num_heads, self.head_dim)).unbind(-3)
        return (self.k_rms_norm(k) if self.k_rms_norm is not None else k), v


class MultiHeadCrossAttention(_CrossAttentionProjections):
    """Dense cross-attention. x [B, L, C], context [B, T, C_ctx] -> [B, L, C]."""

    def __init__(
        self,
        channels: int,
        ctx_channels: int,
        num_heads: int,
        *,
        qkv_bias: bool = True,
        qk_rms_norm: bool = True,
        backend: str = "auto",
        attn_device: torch.device | str | None = None,
    ) -> None:
        super().__init__(channels, ctx_channels, num_heads, qkv_bias=qkv_bias, qk_rms_norm=qk_rms_norm)
        self.backend = resolve_dense_backend(backend, attn_device)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        q = self._q(x).transpose(1, 2)
        k, v = (t.transpose(1, 2) for t in self._kv(context))
        out = scaled_dot_product(q, k, v, self.backend).transpose(1, 2)
        return self.to_out(out.flatten(-2))


class PackedMultiHeadCrossAttention(_CrossAttentionProjections):
    """Packed queries attend to their own sample's context. x [K, C], context [B, T, C_ctx] -> [K, C]."""

    def __init__(
        self,
        channels: int,
        ctx_channels: int,
        num_heads: int,
        *,
        qkv_bias: bool = True,
        qk_rms_norm: bool = True,
        backend: str = "auto",
        attn_device: torch.device | str | None = None,
    ) -> None:
        super().__init__(channels, ctx_channels, num_heads, qkv_bias=qkv_bias, qk_rms_norm=qk_rms_norm)
        self.backend = resolve_varlen_backend(backend, attn_device)

    def forward(self, x: Tensor, layout: PackedLayout, context: Tensor) -> Tensor:
        batch, length = context.shape[:2]
        if batch != layout.batch_size:
            raise ValueError(f"context has batch {batch}, packed tokens have {layout.batch_size} samples")
        q = self._q(x)  # [K, H, D]
        k, v = (t.flatten(0, 1) for t in self._kv(context))  # [B·T, H, D]
        out = packed_attention(q, k, v, layout, length, self.backend)
        return self.to_out(out.flatten(-2))
