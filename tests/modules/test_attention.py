import pytest
import torch

from genrecon.modules.attention import (
    MultiHeadCrossAttention,
    MultiHeadSelfAttention,
    PackedLayout,
    PackedMultiHeadCrossAttention,
    PackedMultiHeadSelfAttention,
    flash_attn_available,
    resolve_dense_backend,
    resolve_varlen_backend,
    scaled_dot_product,
    torch_varlen_available,
    varlen_attention,
)
from genrecon.modules.rope import rope_phases

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _dense_backends(device: str) -> list[str]:
    return ["sdpa", "naive"] + (["flash_attn"] if device == "cuda" and flash_attn_available() else [])


def _varlen_backends(device: str) -> list[str]:
    fused = []
    if device == "cuda" and flash_attn_available():
        fused.append("flash_attn")
    if torch_varlen_available(device):
        fused.append("torch_varlen")
    return ["sdpa_loop", "sdpa_loop_cudnn", "naive"] + fused


def _dtype(device: str) -> torch.dtype:
    # The fused kernels take half precision only; CPU checks run in float32.
    return torch.bfloat16 if device == "cuda" else torch.float32


def _tol(device: str) -> dict:
    return {"atol": 2e-2, "rtol": 2e-2} if device == "cuda" else {"atol": 1e-5, "rtol": 1e-5}


def _cu(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0] + lengths).cumsum(0).to(torch.int32)


@pytest.mark.parametrize("device", DEVICES)
def test_dense_backends_agree(device: str) -> None:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, 17, 16, generator=g).to(device, _dtype(device))
    k = torch.randn(2, 3, 11, 16, generator=g).to(device, _dtype(device))
    v = torch.randn(2, 3, 11, 16, generator=g).to(device, _dtype(device))
    ref = scaled_dot_product(q, k, v, "naive").float()
    for backend in _dense_backends(device):
        out = scaled_dot_product(q, k, v, backend)
        assert out.shape == (2, 3, 17, 16)
        torch.testing.assert_close(out.float(), ref, **_tol(device), msg=backend)


@pytest.mark.parametrize("device", DEVICES)
def test_varlen_backends_agree_with_per_sequence_reference(device: str) -> None:
    g = torch.Generator().manual_seed(1)
    lq, lk = [5, 0, 9, 3], [4, 6, 7, 2]  # an empty query sequence and cross-attention lengths
    q = torch.randn(sum(lq), 2, 16, generator=g).to(device, _dtype(device))
    k = torch.randn(sum(lk), 2, 16, generator=g).to(device, _dtype(device))
    v = torch.randn(sum(lk), 2, 16, generator=g).to(device, _dtype(device))
    cq, ck = _cu(lq).to(device), _cu(lk).to(device)
    # Reference: dense attention of each sequence on its own.
    ref = []
    for i in range(len(lq)):
        qi = q[cq[i] : cq[i + 1]].transpose(0, 1)[None]
        ki, vi = (t[ck[i] : ck[i + 1]].transpose(0, 1)[None] for t in (k, v))
        ref.append(scaled_dot_product(qi, ki, vi, "naive")[0].transpose(0, 1))
    ref = torch.cat(ref).float()
    for backend in _varlen_backends(device):
        out = varlen_attention(q, k, v, cq, ck, max(lq), max(lk), backend)
        assert out.shape == q.shape
        torch.testing.assert_close(out.float(), ref, **_tol(device), msg=backend)


def _graph_node_names(t: torch.Tensor) -> set[str]:
    seen, stack, names = set(), [t.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack.extend(n for n, _ in node.next_functions)
    return names


@pytest.mark.parametrize("backend", ["sdpa_loop", "naive"])
def test_loop_attention_gradients_match_separate_sequences_without_per_sequence_slices(backend: str) -> None:
    g = torch.Generator().manual_seed(4)
    lq, lk = [5, 0, 9, 3], [4, 6, 7, 2]
    q, k, v = (torch.randn(sum(n), 2, 8, generator=g, requires_grad=True) for n in (lq, lk, lk))
    weight = torch.randn(sum(lq), 2, 8, generator=g)
    out = varlen_attention(q, k, v, _cu(lq), _cu(lk), max(lq), max(lk), backend)
    # The backward cuts the packed gradient with one split per tensor, not one full-size slice per sequence.
    assert "SliceBackward0" not in _graph_node_names(out)
    (out * weight).sum().backward()
    for i, (qa, qb, ka, kb) in enumerate(zip(_cu(lq)[:-1], _cu(lq)[1:], _cu(lk)[:-1], _cu(lk)[1:], strict=True)):
        qi, ki, vi = (t.detach()[a:b].clone().requires_grad_() for t, a, b in ((q, qa, qb), (k, ka, kb), (v, ka, kb)))
        if qb == qa:
            continue
        oi = scaled_dot_product(*(t.transpose(0, 1)[None] for t in (qi, ki, vi)), "naive")[0].transpose(0, 1)
        (oi * weight[qa:qb]).sum().backward()
        torch.testing.assert_close(q.grad[qa:qb], qi.grad, atol=1e-5, rtol=1e-5, msg=f"dq of sequence {i}")
        torch.testing.assert_close(k.grad[ka:kb], ki.grad, atol=1e-5, rtol=1e-5, msg=f"dk of sequence {i}")
        torch.testing.assert_close(v.grad[ka:kb], vi.grad, atol=1e-5, rtol=1e-5, msg=f"dv of sequence {i}")
    # The keys of the empty query sequence get no gradient.
    assert torch.count_nonzero(k.grad[4:10]) == 0 and torch.count_nonzero(v.grad[4:10]) == 0


def test_loop_attention_keeps_cudnn_attention_off_and_restores_the_flags(monkeypatch) -> None:
    import torch.nn.functional as F

    seen = []
    sdpa = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        seen.append((torch.backends.cuda.cudnn_sdp_enabled(), torch.backends.cuda.flash_sdp_enabled()))
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    before = torch.backends.cuda.cudnn_sdp_enabled()
    lengths = [5, 7, 3]
    q = torch.randn(sum(lengths), 2, 8)
    varlen_attention(q, q, q, _cu(lengths), _cu(lengths), 7, 7, "sdpa_loop")
    # cuDNN would build an execution plan per new sequence length; flash stays available.
    assert seen == [(False, True)] * 3
    assert torch.backends.cuda.cudnn_sdp_enabled() == before
    # The same loop left to torch's own choice.
    seen.clear()
    varlen_attention(q, q, q, _cu(lengths), _cu(lengths), 7, 7, "sdpa_loop_cudnn")
    assert seen == [(before, True)] * 3


@pytest.mark.parametrize("device", DEVICES)
def test_packed_attention_never_mixes_samples(device: str) -> None:
    g = torch.Generator().manual_seed(2)
    lengths = [6, 10, 4]
    cu = _cu(lengths).to(device)
    qkv = torch.randn(3, sum(lengths), 2, 16, generator=g).to(device, _dtype(device))
    changed = qkv.clone()
    changed[:, 6:16] = torch.randn(3, 10, 2, 16, generator=g).to(device, _dtype(device))  # sample 2 only
    for backend in _varlen_backends(device):
        a = varlen_attention(*qkv, cu, cu, 10, 10, backend)
        b = varlen_attention(*changed, cu, cu, 10, 10, backend)
        assert torch.equal(a[:6], b[:6]), backend
        assert torch.equal(a[16:], b[16:]), backend
        assert not torch.equal(a[6:16], b[6:16]), backend


def test_packed_self_attention_module_isolates_samples_and_matches_dense() -> None:
    torch.manual_seed(3)
    dense = MultiHeadSelfAttention(32, 2, backend="sdpa")
    packed = PackedMultiHeadSelfAttention(32, 2, backend="sdpa_loop")
    packed.load_state_dict(dense.state_dict())
    x = torch.randn(2, 8, 32)
    coords = torch.randint(0, 8, (2, 8, 3))
    phases = rope_phases(coords, 16)
    layout = PackedLayout.from_batch_idx(torch.arange(2).repeat_interleave(8), 2)
    out_packed = packed(x.reshape(16, 32), layout, phases.reshape(16, -1))
    torch.testing.assert_close(out_packed.view(2, 8, 32), dense(x, phases), atol=1e-5, rtol=1e-5)
    x2 = x.clone()
    x2[1] += 1.0
    out2 = packed(x2.reshape(16, 32), layout, phases.reshape(16, -1))
    assert torch.equal(out_packed[:8], out2[:8])


def test_packed_cross_attention_matches_dense() -> None:
    torch.manual_seed(4)
    dense = MultiHeadCrossAttention(32, 24, 4, backend="naive")
    packed = PackedMultiHeadCrossAttention(32, 24, 4, backend="naive")
    packed.load_state_dict(dense.state_dict())
    x, ctx = torch.randn(3, 5, 32), torch.randn(3, 7, 24)
    layout = PackedLayout.from_batch_idx(torch.arange(3).repeat_interleave(5), 3)
    torch.testing.assert_close(packed(x.reshape(15, 32), layout, ctx).view(3, 5, 32), dense(x, ctx))


def test_layout_from_batch_idx() -> None:
    layout = PackedLayout.from_batch_idx(torch.tensor([0, 0, 2, 2, 2]), 4)
    assert layout.offsets == (0, 2, 2, 5, 5)
    assert layout.cu_seqlens.tolist() == [0, 2, 2, 5, 5]
    assert layout.max_seqlen == 3 and layout.batch_size == 4
    with pytest.raises(ValueError, match="grouped"):
        PackedLayout.from_batch_idx(torch.tensor([1, 0]), 2)
    with pytest.raises(ValueError, match="out of range"):
        PackedLayout.from_batch_idx(torch.tensor([0, 3]), 2)


def test_resolver() -> None:
    assert resolve_dense_backend("auto", "cpu") == "sdpa"
    assert resolve_varlen_backend("auto", "cpu") == "sdpa_loop"
    assert resolve_varlen_backend("naive", "cpu") == "naive"
    with pytest.raises(ValueError, match="unknown"):
        resolve_dense_backend("xformers", "cpu")
    with pytest.raises(ValueError, match="unknown"):
        resolve_varlen_backend("sdpa", "cpu")
    with pytest.raises(RuntimeError, match="torch_varlen"):
        resolve_varlen_backend("torch_varlen", "cpu")
    if not flash_attn_available():
        with pytest.raises(ImportError, match="flash_attn"):
            resolve_dense_backend("flash_attn", "cpu")
    # Resolved once, at construction, and kept on the module.
    assert PackedMultiHeadSelfAttention(32, 2, attn_device="cpu").backend == "sdpa_loop"
