"""Per-token modulation of the packed transformer block: one segment GEMM, exactly the former copy loop."""

from itertools import pairwise

import pytest
import torch

from genrecon.modules import transformer
from genrecon.modules.attention import PackedLayout
from genrecon.modules.transformer import SparseModulatedTransformerCrossBlock


def _loop_per_token(m: torch.Tensor, layout: PackedLayout) -> torch.Tensor:
    """The former implementation: each sample's row expanded over its tokens, concatenated."""
    return torch.cat([m[i].expand(end - start, -1) for i, (start, end) in enumerate(pairwise(layout.offsets))])


def _block() -> SparseModulatedTransformerCrossBlock:
    return SparseModulatedTransformerCrossBlock(32, 16, 2, attn_backend="sdpa_loop", attn_device="cpu")


OFFSETS = (0, 5, 5, 12, 30, 31)  # an empty sample and a one-token sample


def test_per_token_equals_the_copy_loop_and_its_gradient() -> None:
    g = torch.Generator().manual_seed(0)
    layout = PackedLayout.from_offsets(OFFSETS, "cpu")
    m = torch.randn(5, 6 * 32, generator=g)
    grad = torch.randn(OFFSETS[-1], 6 * 32, generator=g)

    m_new = m.clone().requires_grad_(True)
    out = _block()._per_token(m_new, layout)
    out.backward(grad)
    m_old = m.clone().requires_grad_(True)
    ref = _loop_per_token(m_old, layout)
    ref.backward(grad)

    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert torch.equal(out, ref)
    torch.testing.assert_close(m_new.grad, m_old.grad, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_per_token_is_exact_in_half_precision(dtype: torch.dtype) -> None:
    layout = PackedLayout.from_offsets(OFFSETS, "cpu")
    m = torch.randn(5, 24).to(dtype)
    out = _block()._per_token(m, layout)
    assert out.dtype == dtype and torch.equal(out, _loop_per_token(m, layout))


def test_per_token_never_mixes_samples() -> None:
    layout = PackedLayout.from_offsets(OFFSETS, "cpu")
    m = torch.randn(5, 24)
    changed = m.clone()
    changed[3] = torch.randn(24) * 1e30  # sample 3 only, huge but finite
    block = _block()
    a, b = block._per_token(m, layout), block._per_token(changed, layout)
    assert torch.equal(a[:12], b[:12]) and torch.equal(a[30:], b[30:])
    assert not torch.equal(a[12:30], b[12:30])


def test_per_token_keeps_the_one_sample_fast_path() -> None:
    m = torch.randn(1, 24)
    assert _block()._per_token(m, PackedLayout.from_offsets((0, 7), "cpu")) is m


def test_per_token_stays_exact_under_autocast_with_float32_rows() -> None:
    layout = PackedLayout.from_offsets(OFFSETS, "cpu")
    m = torch.randn(5, 24)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _block()._per_token(m, layout)
    assert out.dtype == torch.float32 and torch.equal(out, _loop_per_token(m, layout))


def test_per_token_copies_when_float32_gemms_would_round(monkeypatch) -> None:
    # TF32 (CUDA) or bf16 (oneDNN) float32 matmuls would round m: the block falls back to the copy loop.
    monkeypatch.setattr(transformer, "_fp32_gemm_is_exact", lambda device: False)
    layout = PackedLayout.from_offsets(OFFSETS, "cpu")
    m = torch.randn(5, 24)
    assert torch.equal(_block()._per_token(m, layout), _loop_per_token(m, layout))
    assert not layout._cache  # no segment matrix built


def test_segment_matrix_is_built_once_per_layout_and_dtype() -> None:
    layout = PackedLayout.from_offsets(OFFSETS, "cpu")
    seg = layout.segment_matrix(torch.float32)
    assert seg is layout.segment_matrix(torch.float32)
    expected = torch.zeros(OFFSETS[-1], 5)
    for b, (start, end) in enumerate(pairwise(OFFSETS)):
        expected[start:end, b] = 1
    assert torch.equal(seg, expected)
    assert layout.segment_matrix(torch.bfloat16).dtype == torch.bfloat16
    assert torch.equal(layout.segment_matrix(torch.bfloat16).float(), expected)
    assert layout.context(7) is layout.context(7)
    assert layout.context(7).offsets == tuple(b * 7 for b in range(6))


def test_layout_from_offsets_matches_from_batch_idx() -> None:
    batch_idx = torch.tensor([0, 0, 2, 2, 2])
    a = PackedLayout.from_batch_idx(batch_idx, 4)
    b = PackedLayout.from_offsets([0, 2, 2, 5, 5], "cpu")
    assert a.offsets == b.offsets and torch.equal(a.cu_seqlens, b.cu_seqlens)
    assert b.cu_seqlens.dtype == torch.int32
    assert torch.equal(a.segment_matrix(torch.float32), b.segment_matrix(torch.float32))
    for bad in ([], [1, 2], [0, 3, 2]):
        with pytest.raises(ValueError, match="offsets"):
            PackedLayout.from_offsets(bad, "cpu")
