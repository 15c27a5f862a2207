"""Sparse-structure VAE: published structure on the meta device, pixel-shuffle order, losses, tiny overfit."""

from __future__ import annotations

import pytest
import torch

from genrecon.models.ss_vae import (
    SparseStructureDecoder,
    SparseStructureEncoder,
    pixel_shuffle_3d,
    ss_vae_losses,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The CI machine's 2 cores are shared with other jobs; under contention OpenMP barriers of the many small
    ops here stall for seconds, so this module runs single-threaded (measured: 2-6 s instead of 18-90 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_published_config_on_meta_device() -> None:
    with torch.device("meta"):
        enc = SparseStructureEncoder(1, 8, 2, [32, 128, 512], 2)
        dec = SparseStructureDecoder(1, 8, 2, [512, 128, 32], 2)
        z, mean, logvar = enc(torch.empty(2, 1, 64, 64, 64))
        logits = dec(z)
    assert _num_params(enc) == 59_298_192 and len(enc.state_dict()) == 74
    assert _num_params(dec) == 73_671_201 and len(dec.state_dict()) == 74
    assert z.shape == mean.shape == logvar.shape == (2, 8, 16, 16, 16)
    assert logits.shape == (2, 1, 64, 64, 64)
    sd = enc.state_dict()
    assert sd["blocks.2.conv.weight"].shape == (128, 32, 2, 2, 2)
    assert sd["out_layer.2.weight"].shape == (16, 512, 3, 3, 3)
    assert dec.state_dict()["blocks.2.conv.weight"].shape == (1024, 512, 3, 3, 3)


def test_pixel_shuffle_order() -> None:
    x = torch.arange(16.0).view(1, 16, 1, 1, 1)  # 2 output channels × 8 sub-positions
    y = pixel_shuffle_3d(x)
    assert y.shape == (1, 2, 2, 2, 2)
    for c in range(2):
        for dx in range(2):
            for dy in range(2):
                for dz in range(2):
                    assert y[0, c, dx, dy, dz] == c * 8 + 4 * dx + 2 * dy + dz


def test_losses() -> None:
    target = torch.zeros(1, 1, 4, 4, 4)
    target[..., :2] = 1
    good = ss_vae_losses(
        20 * (2 * target - 1), target, torch.zeros(1, 2, 1, 1, 1), torch.zeros(1, 2, 1, 1, 1)
    )
    bad = ss_vae_losses(-20 * (2 * target - 1), target, torch.ones(1, 2, 1, 1, 1), torch.zeros(1, 2, 1, 1, 1))
    assert set(good) == {"bce", "dice", "kl", "loss"}
    assert good["bce"] < 1e-6 and good["dice"] < 1e-6 and good["kl"] == 0
    assert bad["bce"] > 10 and bad["dice"] > 0.9 and torch.isclose(bad["kl"], torch.tensor(0.5))
    assert torch.isclose(bad["loss"], bad["bce"] + bad["dice"] + 1e-3 * bad["kl"])


def _shells(res: int = 16) -> torch.Tensor:
    g = torch.stack(torch.meshgrid(*[torch.arange(res)] * 3, indexing="ij"), 0).float() + 0.5
    occ = []
    for cx, r in [(6.0, 4.0), (9.0, 5.0)]:
        d = (g - torch.tensor([cx, 8.0, 8.0])[:, None, None, None]).norm(dim=0)
        occ.append(((d - r).abs() < 1).float())
    return torch.stack(occ)[:, None]


def test_tiny_vae_overfits() -> None:
    torch.manual_seed(0)
    occ = _shells()
    enc = SparseStructureEncoder(1, 4, 1, [8, 16, 32], 1)
    dec = SparseStructureDecoder(1, 4, 1, [32, 16, 8], 1)
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=3e-3)
    losses = []
    for _ in range(40):
        z, mean, logvar = enc(occ)
        assert z.shape == (2, 4, 4, 4, 4)
        loss = ss_vae_losses(dec(z), occ, mean, logvar)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
