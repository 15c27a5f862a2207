"""Submanifold conv equals a dense conv3d restricted to the active voxels, on CPU, for both strategies."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from genrecon.modules.sparse.conv import SubmanifoldConv3d, submanifold_conv3d
from genrecon.modules.sparse.tensor import SparseTensor


def _random_sparse(
    gen: torch.Generator, batch: int = 2, res: int = 7, channels: int = 5, density: float = 0.3
):
    mask = torch.rand(batch, res, res, res, generator=gen) < density
    dense = torch.randn(batch, channels, res, res, res, generator=gen) * mask[:, None]
    return SparseTensor.from_dense(dense, mask), dense, mask


def _dense_reference(dense: torch.Tensor, mask: torch.Tensor, conv: SubmanifoldConv3d) -> torch.Tensor:
    out = F.conv3d(dense, conv.weight.permute(0, 4, 1, 2, 3), conv.bias, padding=1)
    return out.permute(0, 2, 3, 4, 1)[mask]


@pytest.mark.parametrize("strategy", ["pairs", "gather"])
def test_matches_dense_conv3d(strategy: str) -> None:
    gen = torch.Generator().manual_seed(0)
    x, dense, mask = _random_sparse(gen)
    torch.manual_seed(0)
    conv = SubmanifoldConv3d(5, 6)
    x_feats = x.feats.clone().requires_grad_()
    out = submanifold_conv3d(x_feats, x.neighbour_map(3), conv.weight, conv.bias, strategy=strategy)

    dense_in = dense.clone().requires_grad_()
    weight = conv.weight.detach().clone().requires_grad_()
    bias = conv.bias.detach().clone().requires_grad_()
    ref = F.conv3d(dense_in, weight.permute(0, 4, 1, 2, 3), bias, padding=1).permute(0, 2, 3, 4, 1)[mask]
    assert out.shape == ref.shape == (len(x), 6)
    assert torch.allclose(out, ref, atol=1e-5, rtol=0)

    grad = torch.randn(out.shape, generator=gen)
    (out * grad).sum().backward()
    (ref * grad).sum().backward()
    assert torch.allclose(x_feats.grad, dense_in.grad.permute(0, 2, 3, 4, 1)[mask], atol=1e-5, rtol=0)
    # Weight/bias gradients sum over all voxels, so compare relative to their magnitude.
    assert torch.allclose(conv.weight.grad, weight.grad, atol=1e-5 * weight.grad.abs().max(), rtol=0)
    assert torch.allclose(conv.bias.grad, bias.grad, atol=1e-5 * bias.grad.abs().max(), rtol=0)


def test_module_forward_keeps_coords_and_matches_dense() -> None:
    gen = torch.Generator().manual_seed(1)
    x, dense, mask = _random_sparse(gen, channels=4)
    conv = SubmanifoldConv3d(4, 3, bias=False)
    y = conv(x)
    assert y.coords is x.coords
    assert torch.allclose(y.feats, _dense_reference(dense, mask, conv), atol=1e-5, rtol=0)


def test_batch_samples_do_not_mix() -> None:
    gen = torch.Generator().manual_seed(2)
    x, _, _ = _random_sparse(gen, channels=4)
    conv = SubmanifoldConv3d(4, 4)
    together = conv(x).feats
    for sl, (c, f) in zip(x.layout, x.to_list(), strict=True):
        alone = conv(SparseTensor.from_list([(c, f)])).feats
        assert torch.allclose(together[sl], alone, atol=1e-6, rtol=0)


def test_autocast_bf16_runs_and_keeps_fp32_param_grads() -> None:
    gen = torch.Generator().manual_seed(3)
    x, dense, mask = _random_sparse(gen, channels=4)
    conv = SubmanifoldConv3d(4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
    assert y.feats.dtype == torch.bfloat16
    y.feats.float().sum().backward()
    assert conv.weight.grad.dtype == torch.float32
    assert torch.allclose(y.feats.float(), _dense_reference(dense, mask, conv), atol=0.1, rtol=0.05)


def test_empty_tensor() -> None:
    x = SparseTensor(torch.zeros(0, 4, dtype=torch.int32), torch.zeros(0, 3), batch_size=1)
    assert SubmanifoldConv3d(3, 2)(x).feats.shape == (0, 2)


def test_backend_validation() -> None:
    with pytest.raises(ValueError, match="unknown sparse conv backend"):
        SubmanifoldConv3d(2, 2, backend="cudnn")
    for name in ("spconv", "flex_gemm"):
        error = ImportError if importlib.util.find_spec(name) is None else NotImplementedError
        with pytest.raises(error, match=name):
            SubmanifoldConv3d(2, 2, backend=name)
    with pytest.raises(ValueError, match="odd"):
        SubmanifoldConv3d(2, 2, kernel_size=2)
