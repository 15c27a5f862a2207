"""Shape / texture SC-VAEs: published structure on the meta device, subdivision data flow, tiny overfit."""

from __future__ import annotations

import pytest
import torch

from genrecon.models.sc_vae import (
    ShapeVAEDecoder,
    ShapeVAEEncoder,
    TextureVAEDecoder,
    TextureVAEEncoder,
    shape_vae_losses,
    texture_vae_losses,
)
from genrecon.modules.sparse.tensor import SparseTensor, feats_at

TINY_ENC = {"model_channels": (16, 32, 64), "num_blocks": (0, 1, 1), "latent_channels": 8}
TINY_DEC = {"model_channels": (64, 32, 16), "num_blocks": (1, 1, 0), "latent_channels": 8}


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


def _shell_voxels(res: int = 16) -> SparseTensor:
    """Two spherical shells with random O-Voxel shape features ``[offset - 0.5, flags - 0.5]``."""
    gen = torch.Generator().manual_seed(0)
    g = torch.stack(torch.meshgrid(*[torch.arange(res)] * 3, indexing="ij"), -1).float() + 0.5
    samples = []
    for cx, r in [(7.0, 5.0), (9.0, 4.0)]:
        c = ((g - torch.tensor([cx, 8.0, 8.0])).norm(dim=-1) - r).abs().lt(0.7).nonzero()
        offset = torch.rand(len(c), 3, generator=gen)
        flags = (torch.rand(len(c), 3, generator=gen) < 0.4).float()
        samples.append((c, torch.cat([offset, flags], 1) - 0.5))
    return SparseTensor.from_list(samples)


def _rows(coords: torch.Tensor) -> torch.Tensor:
    return torch.unique(coords, dim=0)


def test_published_configs_on_meta_device() -> None:
    with torch.device("meta"):
        models = {
            "shape_enc": ShapeVAEEncoder(),
            "shape_dec": ShapeVAEDecoder(),
            "tex_enc": TextureVAEEncoder(),
            "tex_dec": TextureVAEDecoder(),
        }
    expected = {
        "shape_enc": (354_385_392, 284),
        "shape_dec": (474_231_463, 292),
        "tex_enc": (354_385_392, 284),
        "tex_dec": (474_216_006, 284),
    }
    for name, model in models.items():
        assert (_num_params(model), len(model.state_dict())) == expected[name], name
    enc_sd, dec_sd = models["shape_enc"].state_dict(), models["shape_dec"].state_dict()
    assert enc_sd["input_layer.weight"].shape == (64, 6) and enc_sd["to_latent.weight"].shape == (64, 1024)
    assert enc_sd["blocks.1.4.conv1.weight"].shape == (32, 3, 3, 3, 128)  # S2C 128 → 256
    assert enc_sd["blocks.3.0.mlp.0.weight"].shape == (2048, 512)
    assert dec_sd["blocks.0.4.conv1.weight"].shape == (4096, 3, 3, 3, 1024)  # C2S 1024 → 512
    assert dec_sd["blocks.0.4.to_subdiv.weight"].shape == (8, 1024)
    assert dec_sd["output_layer.weight"].shape == (7, 64)
    assert not any("to_subdiv" in k for k in models["tex_dec"].state_dict())


def test_training_data_flow_and_output_ranges() -> None:
    torch.manual_seed(0)
    x = _shell_voxels()
    enc, dec = ShapeVAEEncoder(**TINY_ENC), ShapeVAEDecoder(**TINY_DEC, resolution=16)
    post = enc(x)
    assert post.z.feats.shape == post.mean.feats.shape == (len(post.z), 8)
    assert post.z.coords[:, 1:].max() < 4  # factor 4
    assert [s.feats.shape[1] for s in post.subs] == [8, 8] and post.subs[0].feats.dtype == torch.bool
    assert post.subs[0].coords is post.z.coords  # coarse → fine
    out, subs = dec(post.z, guide_subs=post.subs, return_subs=True)
    assert torch.equal(_rows(out.coords), _rows(x.coords))  # guided by the true masks
    assert [len(s) for s in subs] == [len(s) for s in post.subs]
    v, split = out.feats[:, :3], out.feats[:, 6]
    assert v.min() > -0.5 and v.max() < 1.5 and split.min() >= 0
    losses = shape_vae_losses(out, x, subs, post.subs, post.mean.feats, post.logvar.feats)
    assert set(losses) == {"vertex", "intersected", "subdiv", "kl", "loss"}
    assert all(torch.isfinite(v) for v in losses.values())


def test_inference_subs_guide_the_texture_decoder() -> None:
    torch.manual_seed(1)
    x = _shell_voxels()
    enc, dec = ShapeVAEEncoder(**TINY_ENC), ShapeVAEDecoder(**TINY_DEC)
    tex_dec = TextureVAEDecoder(**TINY_DEC)
    with torch.no_grad():
        z = enc(x, sample_posterior=False).z
        shape, subs = dec(z, return_subs=True)
        tex = tex_dec(z, guide_subs=subs)
    assert len(subs) == 2 and subs[0].coords is z.coords
    assert torch.equal(tex.coords, shape.coords) and tex.feats.shape == (len(shape), 6)
    # Expansion follows the predicted logits: children where logit > 0.
    assert len(subs[1]) == int((subs[0].feats > 0).sum())
    with pytest.raises(ValueError, match="guide_subs"):
        tex_dec(z, guide_subs=subs[:1])


def test_gradient_checkpointing_matches() -> None:
    x = _shell_voxels()
    grads = []
    for use_checkpoint in (False, True):
        torch.manual_seed(2)
        enc = ShapeVAEEncoder(**TINY_ENC, use_checkpoint=use_checkpoint)
        dec = ShapeVAEDecoder(**TINY_DEC, use_checkpoint=use_checkpoint)
        post = enc(x, sample_posterior=False)
        out, subs = dec(post.z, guide_subs=post.subs, return_subs=True)
        shape_vae_losses(out, x, subs, post.subs, post.mean.feats, post.logvar.feats)["loss"].backward()
        grads.append(torch.cat([p.grad.flatten() for p in [*enc.parameters(), *dec.parameters()]]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_texture_losses() -> None:
    x = _shell_voxels()
    target = x.replace(torch.rand(len(x), 6) * 2 - 1)
    perm = torch.randperm(len(x))
    order = torch.argsort(x.coords[perm, 0], stable=True)
    shuffled = SparseTensor(x.coords[perm][order], target.feats[perm][order])
    zeros = torch.zeros(3, 4)
    losses = texture_vae_losses(shuffled, target, zeros, zeros)
    assert losses["l1"] == 0 and losses["kl"] == 0
    assert torch.equal(feats_at(target, shuffled), shuffled.feats)
    # The optional MSE term: off by default, weighted when on, on the coordinate-matched voxels.
    off = shuffled.replace(shuffled.feats + 0.5)
    plain = texture_vae_losses(off, target, zeros, zeros)
    with_l2 = texture_vae_losses(off, target, zeros, zeros, l2_weight=2.0)
    assert plain["l2"] == 0 and torch.isclose(plain["loss"], plain["l1"])
    torch.testing.assert_close(with_l2["l2"], torch.tensor(0.25))
    torch.testing.assert_close(with_l2["loss"], with_l2["l1"] + 0.5)


def test_tiny_shape_vae_overfits() -> None:
    torch.manual_seed(0)
    x = _shell_voxels()
    enc, dec = ShapeVAEEncoder(**TINY_ENC), ShapeVAEDecoder(**TINY_DEC)
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=3e-3)
    losses = []
    for _ in range(30):
        post = enc(x)
        out, subs = dec(post.z, guide_subs=post.subs, return_subs=True)
        loss = shape_vae_losses(out, x, subs, post.subs, post.mean.feats, post.logvar.feats)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_repeat_skip_gives_every_child_the_parents_grouped_mean() -> None:
    from genrecon.models.sc_vae import SparseResBlockC2S3d

    torch.manual_seed(0)
    parent = SparseTensor(torch.tensor([[0, 1, 1, 1], [0, 2, 1, 1]], dtype=torch.int32), torch.randn(2, 16))
    every_child = torch.ones(2, 8, dtype=torch.bool)
    for skip in ("slice", "repeat"):
        block = SparseResBlockC2S3d(16, 8, pred_subdiv=False, skip=skip)
        out, _ = block(parent, parent.replace(every_child))
        assert len(out) == 16 and out.feats.shape[1] == 8
        # conv2 starts at zero, so at initialisation the output is the skip alone.
        for p in range(2):
            children = out.feats[(out.coords[:, 1:] // 2 == parent.coords[p, 1:]).all(1)]
            same = torch.allclose(children, children[:1].expand_as(children))
            if skip == "repeat":
                assert same
                torch.testing.assert_close(children[0], parent.feats[p].view(8, 2).mean(1))
            else:
                assert not same  # each child holds its own slice of the parent's channels
    with pytest.raises(ValueError, match="skip"):
        SparseResBlockC2S3d(16, 8, skip="nearest")


def test_texture_decoder_with_repeat_skip_trains() -> None:
    enc, dec = TextureVAEEncoder(6, **TINY_ENC), TextureVAEDecoder(6, **TINY_DEC, upsample_skip="repeat")
    gen = torch.Generator().manual_seed(0)
    x = _shell_voxels()
    x = x.replace(torch.rand(len(x), 6, generator=gen) * 2 - 1)
    losses = _fit_texture_vae(enc, dec, x, steps=30)
    assert losses[-1] < 0.8 * losses[0]


def _fit_texture_vae(enc: TextureVAEEncoder, dec: TextureVAEDecoder, x: SparseTensor, steps: int) -> list[float]:
    """Adam (lr 3e-3) on the texture-VAE loss of ``x`` with the posterior mean; the L1 of every step."""
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=3e-3)
    losses = []
    for _ in range(steps):
        post = enc(x, sample_posterior=False)
        out = texture_vae_losses(dec(post.z, guide_subs=post.subs), x, post.mean.feats, post.logvar.feats)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["l1"].detach()))
    return losses


def _block_mean_reference(x: SparseTensor, factor: int) -> torch.Tensor:
    """Per-voxel mean of its ``factor``³ block, by a Python loop over blocks."""
    out = torch.empty_like(x.feats)
    keys = [tuple([int(c[0])] + [int(v) // factor for v in c[1:]]) for c in x.coords]
    for key in set(keys):
        rows = torch.tensor([i for i, k in enumerate(keys) if k == key])
        out[rows] = x.feats[rows].mean(0)
    return out


def test_mean_shortcut_starts_as_the_block_mean_code() -> None:
    """With ``mean_shortcut`` the untrained VAE (posterior mean) returns each voxel's block mean (to 1e-3): the
    encoder puts the block means in the first channels, the decoder adds them back, all else starts at or
    near 0."""
    torch.manual_seed(0)
    enc = TextureVAEEncoder(6, **TINY_ENC, mean_shortcut=True)
    dec = TextureVAEDecoder(6, **TINY_DEC, mean_shortcut=True)
    gen = torch.Generator().manual_seed(1)
    x = _shell_voxels()
    x = x.replace(torch.rand(len(x), 6, generator=gen) * 2 - 1)
    post = enc(x, sample_posterior=False)
    assert torch.all(post.mean.feats[:, 6:] == 0)
    out = dec(post.mean, guide_subs=post.subs)
    torch.testing.assert_close(feats_at(out, x), _block_mean_reference(x, 4), rtol=0, atol=1e-3)
    assert float(post.logvar.feats.max()) < -5  # sampling keeps the code: σ ≈ 0.05
    # Off by default: the published layers start random, and the output is no block mean.
    plain = TextureVAEDecoder(6, **TINY_DEC)
    assert plain.output_layer.weight.abs().sum() > 0 and not TextureVAEEncoder(6, **TINY_ENC).mean_shortcut
    with pytest.raises(ValueError, match="latent_channels"):
        TextureVAEEncoder(6, **{**TINY_ENC, "latent_channels": 4}, mean_shortcut=True)


def test_mean_shortcut_vae_improves_on_the_block_mean() -> None:
    """Training from the block-mean start lowers the L1 below it: the residual path learns the detail (here
    colour gradients inside each block, which one mean per block cannot hold)."""
    torch.manual_seed(0)
    enc = TextureVAEEncoder(6, **TINY_ENC, mean_shortcut=True)
    dec = TextureVAEDecoder(6, **TINY_DEC, mean_shortcut=True)
    x = _shell_voxels()
    xyz = x.coords[:, 1:].float() / 16
    x = x.replace(torch.cat([torch.sin(6.0 * xyz), torch.cos(5.0 * xyz.flip(1))], 1) * 0.8)
    block_l1 = float((_block_mean_reference(x, 4) - x.feats).abs().mean())
    last = _fit_texture_vae(enc, dec, x, steps=50)[-1]
    assert last < 0.97 * block_l1, (last, block_l1)
