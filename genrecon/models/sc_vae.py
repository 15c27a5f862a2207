"""Sparse-convolution VAEs of TRELLIS.2: the shape VAE (O-Voxel flexible dual grid) and the texture VAE (PBR).

Both are sparse ConvNeXt U-Net halves. The encoder halves the grid at each ``SparseResBlockS2C3d``
(space-to-channel) and ends in a 32-channel Gaussian posterior; the decoder doubles it at each
``SparseResBlockC2S3d`` (channel-to-space), choosing which of the 8 children exist from either a guide or
its own subdivision logits. The published configs downsample by 16 (5 widths, 4 resampling blocks).

Subdivision data flow (all lists coarse → fine, one :class:`SparseTensor` with ``[N, 8]`` feats per ×2 step):

- encoder ``subs``: bool child masks cached by the space-to-channel steps (the ground truth);
- shape decoder in training: ``decoder(z, guide_subs=enc.subs, return_subs=True)`` expands with the true
  masks (so output coords = input coords as a set) and returns its predicted logits for the BCE loss;
- at inference: ``decoder(z, return_subs=True)`` expands where its logits are > 0 and returns them, and the
  texture decoder follows them with ``tex_decoder(tex_z, guide_subs=subs)`` (same coords, same order).

Guides are matched to the current voxels by coordinate, so they may come in any row order.
Module names follow TRELLIS.2 (``input_layer``, ``blocks.i.j``, ``to_latent``, ``from_latent``,
``output_layer``, ``to_subdiv``; sparse conv weights ``[C_out, 3, 3, 3, C_in]``), so published checkpoints
load without renaming.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from genrecon.models.ss_vae import gaussian_kl
from genrecon.modules.sparse.conv import SubmanifoldConv3d
from genrecon.modules.sparse.norm import SparseLayerNorm
from genrecon.modules.sparse.spatial import ChannelToSpatial, SpatialToChannel, child_mask
from genrecon.modules.sparse.tensor import SparseTensor, feats_at

SHAPE_CHANNELS = 6  # vertex offset - 0.5 (3) ‖ edge flags - 0.5 (3), see OVoxel.shape_features
SHAPE_OUT_CHANNELS = 7  # vertex offset (3) ‖ edge-flag logits (3) ‖ split weight (1)
PBR_CHANNELS = 6  # base colour (3), metallic, roughness, alpha, as uint8/255·2 - 1 in [-1, 1]
# Initial posterior log-variance with ``mean_shortcut`` (σ ≈ 0.05): sampling then keeps the block-mean code.
SHORTCUT_LOGVAR = -6.0
# Initial weight scale of the decoder's output layer with ``mean_shortcut``: the output starts within ~1e-4 of
# the block mean.
SHORTCUT_OUTPUT_STD = 1e-5


def _zero_(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def _silu(x: SparseTensor) -> SparseTensor:
    return x.replace(F.silu(x.feats))


def parent_rows(fine: SparseTensor, coarse: SparseTensor, factor: int) -> Tensor:
    """Row in ``coarse`` of each voxel of ``fine``'s ``factor``³ block: ``[K_fine]`` int64 (every parent must
    exist, as it does between an SC-VAE's input and latent)."""
    coords = fine.coords.clone()
    coords[:, 1:] = torch.div(coords[:, 1:], factor, rounding_mode="floor")
    rows = coarse.lookup(coords)
    if bool((rows < 0).any()):
        raise ValueError(f"{int((rows < 0).sum())} of {len(fine)} voxels have no parent at 1/{factor} resolution")
    return rows


def block_mean(fine: SparseTensor, coarse: SparseTensor, factor: int) -> Tensor:
    """Mean of ``fine.feats`` over each coarse voxel's ``factor``³ block: ``[N_coarse, C]`` (0 if empty)."""
    rows = parent_rows(fine, coarse, factor)
    feats = fine.feats.float()
    total = feats.new_zeros(len(coarse), feats.shape[1]).index_add_(0, rows, feats)
    count = torch.bincount(rows, minlength=len(coarse)).clamp_(min=1).to(feats.dtype)
    return total / count[:, None]


# ====================================================================== blocks
class SparseConvNeXtBlock3d(nn.Module):
    """``x + MLP(LN(conv(x)))`` at width ``C``; the MLP widens ×``mlp_ratio`` with SiLU and its output layer
    starts at zero."""

    def __init__(self, channels: int, mlp_ratio: int = 4, backend: str = "torch") -> None:
        super().__init__()
        self.conv = SubmanifoldConv3d(channels, channels, 3, backend=backend)
        self.norm = SparseLayerNorm(channels, elementwise_affine=True)
        self.mlp = nn.Sequential(
            nn.Linear(channels, channels * mlp_ratio),
            nn.SiLU(),
            _zero_(nn.Linear(channels * mlp_ratio, channels)),
        )

    def forward(self, x: SparseTensor) -> SparseTensor:
        h = self.norm(self.conv(x))
        return x.replace(x.feats + self.mlp(h.feats))


class SparseResBlockS2C3d(nn.Module):
    """×2 down, ``[K, C]`` → ``[N, C']``. Main path: LN → SiLU → conv to ``C'/8`` → space-to-channel →
    LN (no affine) → SiLU → zero-initialised conv. Skip: space-to-channel of ``x`` (``8C`` channels) averaged
    over groups of ``8C/C'`` consecutive channels. The output caches the ``[N, 8]`` child mask."""

    def __init__(self, channels: int, out_channels: int, backend: str = "torch") -> None:
        super().__init__()
        if out_channels % 8 or (8 * channels) % out_channels:
            raise ValueError(f"S2C block needs 8 | C_out and C_out | 8·C_in, got {channels} → {out_channels}")
        self.channels, self.out_channels = channels, out_channels
        self.norm1 = SparseLayerNorm(channels, elementwise_affine=True)
        self.conv1 = SubmanifoldConv3d(channels, out_channels // 8, 3, backend=backend)
        self.norm2 = SparseLayerNorm(out_channels, elementwise_affine=False)
        self.conv2 = _zero_(SubmanifoldConv3d(out_channels, out_channels, 3, backend=backend))
        self.to_coarse = SpatialToChannel()

    def forward(self, x: SparseTensor) -> SparseTensor:
        h = self.conv1(_silu(self.norm1(x)))
        c_h = self.out_channels // 8
        # Pack main path and skip in one space-to-channel pass; per child the channels are [h ‖ x].
        packed = self.to_coarse(x.replace(torch.cat([h.feats, x.feats.to(h.feats.dtype)], dim=1)))
        n = len(packed)
        per_child = packed.feats.view(n, 8, c_h + self.channels)
        main = per_child[..., :c_h].reshape(n, self.out_channels)
        skip = (
            per_child[..., c_h:]
            .reshape(n, self.out_channels, 8 * self.channels // self.out_channels)
            .mean(-1)
        )
        h = self.conv2(_silu(self.norm2(packed.replace(main))))
        return h.replace(h.feats + skip)


class SparseResBlockC2S3d(nn.Module):
    """×2 up, ``[N, C]`` → ``[M, C']``. Main path: LN → SiLU → conv to ``8C'`` → channel-to-space → LN (no
    affine) → SiLU → zero-initialised conv. Skip: ``x`` with each channel repeated ``8C'/C`` times, then the
    same channel-to-space. With ``pred_subdiv`` a ``to_subdiv`` Linear(C → 8) on the block input gives
    child logits.

    ``forward(x, guide)`` returns ``(out, logits)``: children come from ``guide`` (``[·, 8]`` bool mask or
    logits, thresholded at 0, matched to ``x`` by coordinates) if given, else from the predicted logits;
    ``logits`` is the predicted ``[N, 8]`` tensor on ``x``'s coords, or None without ``pred_subdiv``.

    ``skip="repeat"`` (a deviation, off by default) gives every child the same skip instead: ``x`` averaged
    over groups of ``C/C'`` consecutive channels, i.e. nearest-neighbour upsampling. The published slice skip
    hands each child a different eighth of the parent's channels, so a value the parent holds in one slice
    reaches one child only until the convolutions learn to spread it.
    """

    def __init__(
        self, channels: int, out_channels: int, pred_subdiv: bool = True, backend: str = "torch",
        skip: str = "slice",
    ) -> None:
        super().__init__()
        if (8 * out_channels) % channels:
            raise ValueError(f"C2S block needs C_in | 8·C_out, got {channels} → {out_channels}")
        if skip not in ("slice", "repeat"):
            raise ValueError(f"skip must be 'slice' or 'repeat', got {skip!r}")
        if skip == "repeat" and channels % out_channels:
            raise ValueError(f"skip='repeat' needs C_out | C_in, got {channels} → {out_channels}")
        self.skip = skip
        self.channels, self.out_channels = channels, out_channels
        self.norm1 = SparseLayerNorm(channels, elementwise_affine=True)
        self.conv1 = SubmanifoldConv3d(channels, out_channels * 8, 3, backend=backend)
        self.norm2 = SparseLayerNorm(out_channels, elementwise_affine=False)
        self.conv2 = _zero_(SubmanifoldConv3d(out_channels, out_channels, 3, backend=backend))
        self.to_subdiv = nn.Linear(channels, 8) if pred_subdiv else None
        self.to_fine = ChannelToSpatial()

    def forward(
        self, x: SparseTensor, guide: SparseTensor | None = None
    ) -> tuple[SparseTensor, SparseTensor | None]:
        logits = x.replace(self.to_subdiv(x.feats)) if self.to_subdiv is not None else None
        if guide is not None:
            g = feats_at(guide, x)
            mask = g if g.dtype == torch.bool else g > 0
        elif logits is not None:
            mask = logits.feats.detach() > 0
        else:
            raise ValueError("this decoder does not predict subdivisions: pass guide_subs")
        n, c = len(x), self.out_channels
        h = self.conv1(_silu(self.norm1(x)))
        if self.skip == "slice":
            skip = x.feats.to(h.feats.dtype).repeat_interleave(8 * c // self.channels, dim=1).view(n, 8, c)
        else:
            skip = x.feats.to(h.feats.dtype).view(n, c, self.channels // c).mean(-1)[:, None].expand(n, 8, c)
        # One channel-to-space pass for main path and skip: per child the channels are [h ‖ skip].
        packed = torch.cat([h.feats.view(n, 8, c), skip], dim=2).view(n, 16 * c)
        fine = self.to_fine(x.replace(packed), mask)
        main, skip = fine.feats.split(c, dim=1)
        h = self.conv2(_silu(self.norm2(fine.replace(main))))
        return h.replace(h.feats + skip), logits


# ====================================================================== encoder / decoder backbones
def _call(block: nn.Module, use_checkpoint: bool, *args: Any) -> Any:
    if use_checkpoint and torch.is_grad_enabled():
        return checkpoint(block, *args, use_reentrant=False)
    return block(*args)


class SCVAEPosterior(NamedTuple):
    """Encoder output. ``z``, ``mean``, ``logvar``: ``[N, latent]`` on the latent coords; ``subs``: child
    masks ``[N_l, 8]`` bool, one per downsampling, coarse → fine (the decoder's order)."""

    z: SparseTensor
    mean: SparseTensor
    logvar: SparseTensor
    subs: list[SparseTensor]


def _check_levels(model_channels: Sequence[int], num_blocks: Sequence[int]) -> None:
    if len(model_channels) != len(num_blocks) or len(model_channels) < 1:
        raise ValueError(
            f"model_channels {list(model_channels)} and num_blocks {list(num_blocks)} must match"
        )


class SCVAEEncoder(nn.Module):
    """Sparse ConvNeXt encoder: ``[K, in_channels]`` → posterior on a grid ``2**(L-1)`` times coarser.

    Args:
        in_channels: input feature channels.
        model_channels: width per level, fine → coarse (``[64, 128, 256, 512, 1024]`` published).
        latent_channels: latent width (32 published).
        num_blocks: ConvNeXt blocks per level (``[0, 4, 8, 16, 4]`` published).
        use_checkpoint: gradient checkpointing per block.
        backend: sparse conv backend (see :class:`SubmanifoldConv3d`).
        mean_shortcut: add each latent cell's input mean to its first ``in_channels`` latent channels and start
            ``to_latent`` at zero (log-variance at ``SHORTCUT_LOGVAR``), so the code starts as the block mean
            (a deviation, off; see :class:`SCVAEDecoder`).
    """

    def __init__(
        self,
        in_channels: int,
        model_channels: Sequence[int],
        latent_channels: int,
        num_blocks: Sequence[int],
        use_checkpoint: bool = False,
        backend: str = "torch",
        mean_shortcut: bool = False,
    ) -> None:
        super().__init__()
        _check_levels(model_channels, num_blocks)
        if mean_shortcut and in_channels > latent_channels:
            raise ValueError(f"mean_shortcut needs in_channels ≤ latent_channels, got {in_channels} > {latent_channels}")
        self.use_checkpoint = use_checkpoint
        self.mean_shortcut = mean_shortcut
        self.factor = 2 ** (len(model_channels) - 1)
        self.input_layer = nn.Linear(in_channels, model_channels[0])
        self.blocks = nn.ModuleList()
        for i, (ch, nb) in enumerate(zip(model_channels, num_blocks, strict=True)):
            level: list[nn.Module] = [SparseConvNeXtBlock3d(ch, backend=backend) for _ in range(nb)]
            if i < len(model_channels) - 1:
                level.append(SparseResBlockS2C3d(ch, model_channels[i + 1], backend=backend))
            self.blocks.append(nn.ModuleList(level))
        self.to_latent = nn.Linear(model_channels[-1], 2 * latent_channels)
        if mean_shortcut:
            _zero_(self.to_latent)
            nn.init.constant_(self.to_latent.bias[latent_channels:], SHORTCUT_LOGVAR)

    def forward(self, x: SparseTensor, sample_posterior: bool = True) -> SCVAEPosterior:
        h = x.replace(self.input_layer(x.feats))
        subs: list[SparseTensor] = []
        for level in self.blocks:
            for block in level:
                h = _call(block, self.use_checkpoint, h)
                if isinstance(block, SparseResBlockS2C3d):
                    subs.append(h.replace(child_mask(h)))
        stats = self.to_latent(F.layer_norm(h.feats.float(), h.feats.shape[-1:]))
        mean, logvar = stats.chunk(2, dim=1)
        if self.mean_shortcut:
            mean = mean + F.pad(block_mean(x, h, self.factor), (0, mean.shape[1] - x.feats.shape[1]))
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean) if sample_posterior else mean
        return SCVAEPosterior(h.replace(z), h.replace(mean), h.replace(logvar), subs[::-1])


class SCVAEDecoder(nn.Module):
    """Sparse ConvNeXt decoder: latent ``[N, latent_channels]`` → raw ``[M, out_channels]`` on a grid
    ``2**(L-1)`` times finer.

    Args:
        out_channels: output channels.
        model_channels: width per level, coarse → fine (``[1024, 512, 256, 128, 64]`` published).
        latent_channels: latent width.
        num_blocks: ConvNeXt blocks per level (``[4, 16, 8, 4, 0]`` published).
        pred_subdiv: give every up block a ``to_subdiv`` head.
        use_checkpoint, backend: as in :class:`SCVAEEncoder`.
        upsample_skip: ``"slice"`` (published) or ``"repeat"``; see :class:`SparseResBlockC2S3d`.
        mean_shortcut: add the first ``out_channels`` latent channels of each voxel's latent cell to its output
            and start ``output_layer`` near zero (a deviation, off). With the encoder's shortcut the untrained VAE
            is then the block-mean code (29.6 dB held out, ``benchmarks/texture_code_bound.py``), and training
            learns only the residual detail, instead of first learning to carry colour through every level.
    """

    def __init__(
        self,
        out_channels: int,
        model_channels: Sequence[int],
        latent_channels: int,
        num_blocks: Sequence[int],
        pred_subdiv: bool = True,
        use_checkpoint: bool = False,
        backend: str = "torch",
        upsample_skip: str = "slice",
        mean_shortcut: bool = False,
    ) -> None:
        super().__init__()
        _check_levels(model_channels, num_blocks)
        if mean_shortcut and out_channels > latent_channels:
            raise ValueError(f"mean_shortcut needs out_channels ≤ latent_channels, got {out_channels} > {latent_channels}")
        self.mean_shortcut = mean_shortcut
        self.pred_subdiv = pred_subdiv
        self.use_checkpoint = use_checkpoint
        self.from_latent = nn.Linear(latent_channels, model_channels[0])
        self.blocks = nn.ModuleList()
        for i, (ch, nb) in enumerate(zip(model_channels, num_blocks, strict=True)):
            level: list[nn.Module] = [SparseConvNeXtBlock3d(ch, backend=backend) for _ in range(nb)]
            if i < len(model_channels) - 1:
                level.append(SparseResBlockC2S3d(ch, model_channels[i + 1], pred_subdiv, backend=backend,
                                                 skip=upsample_skip))
            self.blocks.append(nn.ModuleList(level))
        self.output_layer = nn.Linear(model_channels[-1], out_channels)
        if mean_shortcut:
            # Near zero, not zero: with slice skips the finest features can start constant over channels (each
            # voxel gets one value of its ancestors, replicated), so their LayerNorm is 0; a zero output layer
            # would then pass no gradient back and neither it nor the zero-initialised convs could ever move
            # (measured: the tiny preset stayed exactly at the block mean). Adam scales the tiny gradients up.
            nn.init.normal_(self.output_layer.weight, std=SHORTCUT_OUTPUT_STD)
            nn.init.zeros_(self.output_layer.bias)

    @property
    def num_upsamples(self) -> int:
        return len(self.blocks) - 1

    def _decode(
        self, z: SparseTensor, guide_subs: Sequence[SparseTensor] | None
    ) -> tuple[SparseTensor, list[SparseTensor]]:
        """Raw output and the predicted child logits per up block (empty without ``pred_subdiv``)."""
        if guide_subs is not None and len(guide_subs) != self.num_upsamples:
            raise ValueError(f"guide_subs has {len(guide_subs)} entries, expected {self.num_upsamples}")
        h = z.replace(self.from_latent(z.feats))
        subs: list[SparseTensor] = []
        for i, level in enumerate(self.blocks):
            for block in level:
                if isinstance(block, SparseResBlockC2S3d):
                    guide = guide_subs[i] if guide_subs is not None else None
                    h, logits = _call(block, self.use_checkpoint, h, guide)
                    if logits is not None:
                        subs.append(logits)
                else:
                    h = _call(block, self.use_checkpoint, h)
        out = self.output_layer(F.layer_norm(h.feats.float(), h.feats.shape[-1:]).to(h.feats.dtype))
        if self.mean_shortcut:
            rows = parent_rows(h, z, 2**self.num_upsamples)
            out = out + z.feats[rows, : out.shape[1]].to(out.dtype)
        return h.replace(out), subs


class ShapeVAEEncoder(SCVAEEncoder):
    """Shape encoder on O-Voxel features ``[K, 6]`` = ``[vertex_offset - 0.5, flags - 0.5]``
    (``OVoxel.shape_features()``)."""

    def __init__(
        self,
        model_channels: Sequence[int] = (64, 128, 256, 512, 1024),
        latent_channels: int = 32,
        num_blocks: Sequence[int] = (0, 4, 8, 16, 4),
        use_checkpoint: bool = False,
        backend: str = "torch",
    ) -> None:
        super().__init__(SHAPE_CHANNELS, model_channels, latent_channels, num_blocks, use_checkpoint, backend)


class ShapeVAEDecoder(SCVAEDecoder):
    """Shape decoder: latent → ``[M, 7]`` O-Voxel prediction with subdivision heads.

    Output channels: ``[0:3]`` vertex offset ``(1 + 2m)·sigmoid(h) - m`` in ``(-m, 1 + m)`` voxel units
    (``m = voxel_margin``); ``[3:6]`` edge-flag logits; ``[6]`` split weight ``softplus(h) ≥ 0``.

    Args:
        resolution: fine grid size of the output (used by :func:`decode_to_mesh`).
        voxel_margin: how far (in voxels) a vertex may leave its voxel.
        others as in :class:`SCVAEDecoder`.
    """

    def __init__(
        self,
        model_channels: Sequence[int] = (1024, 512, 256, 128, 64),
        latent_channels: int = 32,
        num_blocks: Sequence[int] = (4, 16, 8, 4, 0),
        resolution: int = 256,
        voxel_margin: float = 0.5,
        use_checkpoint: bool = False,
        backend: str = "torch",
    ) -> None:
        super().__init__(
            SHAPE_OUT_CHANNELS, model_channels, latent_channels, num_blocks, True, use_checkpoint, backend
        )
        self.resolution = resolution
        self.voxel_margin = voxel_margin

    def forward(
        self, z: SparseTensor, guide_subs: Sequence[SparseTensor] | None = None, return_subs: bool = False
    ) -> SparseTensor | tuple[SparseTensor, list[SparseTensor]]:
        """``z [N, latent]`` → ``[M, 7]`` (see class doc); with ``return_subs`` also the predicted child
        logits, one ``[N_l, 8]`` tensor per up block, coarse → fine. ``guide_subs`` (e.g. the encoder's
        ``subs``) overrides the predicted masks for expanding."""
        raw, subs = self._decode(z, guide_subs)
        h = raw.feats.float()
        m = self.voxel_margin
        vertex = (1.0 + 2.0 * m) * torch.sigmoid(h[:, 0:3]) - m
        out = raw.replace(torch.cat([vertex, h[:, 3:6], F.softplus(h[:, 6:7])], dim=1))
        return (out, subs) if return_subs else out


class TextureVAEEncoder(SCVAEEncoder):
    """Texture encoder on PBR features ``[K, 6]`` in ``[-1, 1]`` (``uint8/255·2 - 1``)."""

    def __init__(
        self,
        in_channels: int = PBR_CHANNELS,
        model_channels: Sequence[int] = (64, 128, 256, 512, 1024),
        latent_channels: int = 32,
        num_blocks: Sequence[int] = (0, 4, 8, 16, 4),
        use_checkpoint: bool = False,
        backend: str = "torch",
        mean_shortcut: bool = False,
    ) -> None:
        super().__init__(in_channels, model_channels, latent_channels, num_blocks, use_checkpoint, backend,
                         mean_shortcut)


class TextureVAEDecoder(SCVAEDecoder):
    """Texture decoder: latent → ``[M, out_channels]`` PBR in ``[-1, 1]`` space (``·0.5 + 0.5`` gives
    ``[0, 1]``). It has no subdivision head and always follows ``guide_subs`` (the shape decoder's logits
    or the encoder's masks)."""

    def __init__(
        self,
        out_channels: int = PBR_CHANNELS,
        model_channels: Sequence[int] = (1024, 512, 256, 128, 64),
        latent_channels: int = 32,
        num_blocks: Sequence[int] = (4, 16, 8, 4, 0),
        use_checkpoint: bool = False,
        backend: str = "torch",
        upsample_skip: str = "slice",
        mean_shortcut: bool = False,
    ) -> None:
        super().__init__(
            out_channels, model_channels, latent_channels, num_blocks, False, use_checkpoint, backend,
            upsample_skip, mean_shortcut,
        )

    def forward(self, z: SparseTensor, guide_subs: Sequence[SparseTensor]) -> SparseTensor:
        """``z [N, latent]`` → ``[M, out_channels]`` on the voxels selected by ``guide_subs``."""
        return self._decode(z, guide_subs)[0]


# ====================================================================== losses
@dataclass(frozen=True)
class ShapeLossWeights:
    """Weights of the shape-VAE terms (TRELLIS.2 shape VAE config; rendering losses are the stage's)."""

    vertex: float = 1e-2
    intersected: float = 0.1
    subdiv: float = 0.1
    kl: float = 1e-6


def shape_vae_losses(
    recon: SparseTensor,
    target: SparseTensor,
    pred_subs: Sequence[SparseTensor],
    target_subs: Sequence[SparseTensor],
    mean: Tensor,
    logvar: Tensor,
    weights: ShapeLossWeights = ShapeLossWeights(),
) -> dict[str, Tensor]:
    """Shape-VAE losses.

    Args:
        recon: decoder output ``[M, 7]``, decoded with ``guide_subs=target_subs`` so its voxels are the
            target's (any order; rows are matched by coordinate).
        target: the encoder input ``[K, 6]`` (``[offset - 0.5, flags - 0.5]``).
        pred_subs: decoder child logits (``return_subs=True``), coarse → fine.
        target_subs: encoder child masks (``SCVAEPosterior.subs``), coarse → fine.
        mean, logvar: posterior ``[N, 32]`` (feats of ``SCVAEPosterior.mean/logvar``).
        weights: term weights.

    Returns ``{"vertex", "intersected", "subdiv", "kl", "loss"}``: MSE of the vertex offsets, BCE-with-logits
    of the edge flags, the sum over levels of the BCE-with-logits of the child logits, the Gaussian KL, and
    their weighted sum.
    """
    if len(pred_subs) != len(target_subs):
        raise ValueError(f"{len(pred_subs)} predicted subdivision levels but {len(target_subs)} targets")
    t = feats_at(target, recon).float() + 0.5
    r = recon.feats.float()
    vertex = F.mse_loss(r[:, 0:3], t[:, 0:3])
    intersected = F.binary_cross_entropy_with_logits(r[:, 3:6], t[:, 3:6])
    subdiv = sum(
        (
            F.binary_cross_entropy_with_logits(p.feats.float(), feats_at(g, p).float())
            for p, g in zip(pred_subs, target_subs, strict=True)
        ),
        torch.zeros((), device=r.device),
    )
    kl = gaussian_kl(mean, logvar)
    loss = (
        weights.vertex * vertex
        + weights.intersected * intersected
        + weights.subdiv * subdiv
        + weights.kl * kl
    )
    return {"vertex": vertex, "intersected": intersected, "subdiv": subdiv, "kl": kl, "loss": loss}


def texture_vae_losses(
    recon: SparseTensor, target: SparseTensor, mean: Tensor, logvar: Tensor, kl_weight: float = 1e-6,
    l2_weight: float = 0.0,
) -> dict[str, Tensor]:
    """Texture-VAE losses: ``{"l1", "l2", "kl", "loss"}`` with ``loss = l1 + l2_weight·l2 + kl_weight·kl``
    (``l2`` is the mean squared error; published: L1 only). ``recon`` and ``target`` are ``[K, 6]`` in the same
    (``[-1, 1]``) space on the same voxels (matched by coordinate)."""
    pred, true = recon.feats.float(), feats_at(target, recon).float()
    l1 = F.l1_loss(pred, true)
    l2 = F.mse_loss(pred, true) if l2_weight else l1.new_zeros(())
    kl = gaussian_kl(mean, logvar)
    return {"l1": l1, "l2": l2, "kl": kl, "loss": l1 + l2_weight * l2 + kl_weight * kl}


# ====================================================================== mesh extraction
def decode_to_mesh(recon: SparseTensor, resolution: int, use_split_weight: bool = True) -> list[Any]:
    """Per-sample meshes of a shape-decoder output ``[M, 7]`` on a ``resolution``³ grid.

    Edge flags are ``logit > 0``. Returns one ``genrecon.geometry.ovoxel.ContouredMesh`` (vertices in the
    chunk frame, faces) per batch entry.
    """
    from genrecon.geometry.ovoxel import ovoxel_to_mesh  # geometry pulls NumPy-heavy code: import on use

    meshes = []
    for coords, feats in recon.to_list():
        feats = feats.detach().float().cpu()
        meshes.append(
            ovoxel_to_mesh(
                coords=coords.cpu().numpy(),
                vertex_offset=feats[:, 0:3].numpy(),
                intersected=(feats[:, 3:6] > 0).numpy(),
                resolution=resolution,
                split_weight=feats[:, 6].numpy() if use_split_weight else None,
            )
        )
    return meshes
