"""Sparse-structure VAE: dense 3-D conv encoder/decoder between occupancy grids and a small dense latent.

Occupancy ``[B, 1, R, R, R]`` ↔ latent ``[B, 8, R/4, R/4, R/4]`` for the published three-level config (64³ →
16³). Module names follow TRELLIS v1's ``SparseStructureEncoder/Decoder`` (``input_layer``, ``blocks.i``,
``middle_block.i``, ``out_layer.0/2``) so its checkpoints load without renaming.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


class ChannelLayerNorm3d(nn.LayerNorm):
    """LayerNorm over the channel axis of ``[B, C, X, Y, Z]``, computed in fp32."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__(channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        h = x.permute(0, 2, 3, 4, 1).float()
        h = F.layer_norm(h, self.normalized_shape, self.weight.float(), self.bias.float(), self.eps)
        return h.permute(0, 4, 1, 2, 3).to(x.dtype)


class ResBlock3d(nn.Module):
    """``x + conv2(SiLU(LN(conv1(SiLU(LN(x))))))`` at constant width; ``conv2`` starts at zero so the block
    starts as the identity."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm1 = ChannelLayerNorm3d(channels)
        self.conv1 = nn.Conv3d(channels, channels, 3, padding=1)
        self.norm2 = ChannelLayerNorm3d(channels)
        self.conv2 = nn.Conv3d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return x + h


class DownsampleBlock3d(nn.Module):
    """×2 downsample by a stride-2, 2³ conv: ``[B, C_in, R]`` → ``[B, C_out, R/2]``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, 2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


def pixel_shuffle_3d(x: Tensor) -> Tensor:
    """``[B, 8·C, X, Y, Z]`` → ``[B, C, 2X, 2Y, 2Z]``; input channel ``c·8 + 4·dx + 2·dy + dz`` lands at
    ``(2x + dx, 2y + dy, 2z + dz)`` (TRELLIS v1 order)."""
    b, c8, x_, y_, z_ = x.shape
    c = c8 // 8
    x = x.reshape(b, c, 2, 2, 2, x_, y_, z_).permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(b, c, 2 * x_, 2 * y_, 2 * z_)


class UpsampleBlock3d(nn.Module):
    """×2 upsample: 3³ conv to ``8·C_out`` channels, then :func:`pixel_shuffle_3d`."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels * 8, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return pixel_shuffle_3d(self.conv(x))


def _run(blocks: nn.Sequential | nn.ModuleList, h: Tensor, use_checkpoint: bool) -> Tensor:
    for block in blocks:
        if use_checkpoint and torch.is_grad_enabled():
            h = checkpoint(block, h, use_reentrant=False)
        else:
            h = block(h)
    return h


class SparseStructureEncoder(nn.Module):
    """Occupancy ``[B, in_channels, R, R, R]`` → ``(z, mean, logvar)``, each ``[B, latent, R/f, R/f, R/f]``
    with ``f = 2**(len(channels) - 1)``.

    Args:
        in_channels: input channels (1 for occupancy).
        latent_channels: latent channels (8 published).
        num_res_blocks: residual blocks per level (2 published).
        channels: width per level (``[32, 128, 512]`` published).
        num_res_blocks_middle: residual blocks after the last level (2 published).
        use_checkpoint: gradient checkpointing per block.
    """

    def __init__(
        self,
        in_channels: int = 1,
        latent_channels: int = 8,
        num_res_blocks: int = 2,
        channels: Sequence[int] = (32, 128, 512),
        num_res_blocks_middle: int = 2,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.latent_channels = latent_channels
        self.use_checkpoint = use_checkpoint
        self.input_layer = nn.Conv3d(in_channels, channels[0], 3, padding=1)
        blocks: list[nn.Module] = []
        for i, ch in enumerate(channels):
            blocks += [ResBlock3d(ch) for _ in range(num_res_blocks)]
            if i < len(channels) - 1:
                blocks.append(DownsampleBlock3d(ch, channels[i + 1]))
        self.blocks = nn.ModuleList(blocks)
        self.middle_block = nn.Sequential(*[ResBlock3d(channels[-1]) for _ in range(num_res_blocks_middle)])
        self.out_layer = nn.Sequential(
            ChannelLayerNorm3d(channels[-1]),
            nn.SiLU(),
            nn.Conv3d(channels[-1], 2 * latent_channels, 3, padding=1),
        )

    def forward(self, x: Tensor, sample_posterior: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        h = self.input_layer(x)
        h = _run(self.blocks, h, self.use_checkpoint)
        h = _run(self.middle_block, h, self.use_checkpoint)
        mean, logvar = self.out_layer(h).chunk(2, dim=1)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean) if sample_posterior else mean
        return z, mean, logvar


class SparseStructureDecoder(nn.Module):
    """Latent ``[B, latent_channels, r, r, r]`` → occupancy logits ``[B, out_channels, r·f, ...]``.

    Args mirror :class:`SparseStructureEncoder`; ``channels`` runs coarse to fine (``[512, 128, 32]``
    published) and the middle blocks run first, at the coarse width.
    """

    def __init__(
        self,
        out_channels: int = 1,
        latent_channels: int = 8,
        num_res_blocks: int = 2,
        channels: Sequence[int] = (512, 128, 32),
        num_res_blocks_middle: int = 2,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.use_checkpoint = use_checkpoint
        self.input_layer = nn.Conv3d(latent_channels, channels[0], 3, padding=1)
        self.middle_block = nn.Sequential(*[ResBlock3d(channels[0]) for _ in range(num_res_blocks_middle)])
        blocks: list[nn.Module] = []
        for i, ch in enumerate(channels):
            blocks += [ResBlock3d(ch) for _ in range(num_res_blocks)]
            if i < len(channels) - 1:
                blocks.append(UpsampleBlock3d(ch, channels[i + 1]))
        self.blocks = nn.ModuleList(blocks)
        self.out_layer = nn.Sequential(
            ChannelLayerNorm3d(channels[-1]), nn.SiLU(), nn.Conv3d(channels[-1], out_channels, 3, padding=1)
        )

    def forward(self, z: Tensor) -> Tensor:
        h = self.input_layer(z)
        h = _run(self.middle_block, h, self.use_checkpoint)
        h = _run(self.blocks, h, self.use_checkpoint)
        return self.out_layer(h)


def gaussian_kl(mean: Tensor, logvar: Tensor) -> Tensor:
    """Mean over all elements of ``KL(N(mean, exp(logvar)) || N(0, 1))`` per element: scalar."""
    return 0.5 * torch.mean(mean.float().pow(2) + logvar.float().exp() - logvar.float() - 1.0)


def soft_dice_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Soft Dice loss over all elements with +1 smoothing: ``1 - (2·Σpt + 1) / (Σp + Σt + 1)``, ``p = σ(logits)``.
    Unlike BCE it is not minimised by predicting "empty" everywhere on sparse occupancy."""
    p = torch.sigmoid(logits.float())
    target = target.to(p.dtype)
    return 1.0 - (2.0 * (p * target).sum() + 1.0) / (p.sum() + target.sum() + 1.0)


def ss_vae_losses(
    logits: Tensor, target: Tensor, mean: Tensor, logvar: Tensor, kl_weight: float = 1e-3
) -> dict[str, Tensor]:
    """Losses of the sparse-structure VAE.

    Args:
        logits: decoder output ``[B, 1, R, R, R]``.
        target: occupancy ``[B, 1, R, R, R]`` in {0, 1} (any dtype).
        mean, logvar: posterior ``[B, C, r, r, r]``.
        kl_weight: weight of the KL term (1e-3 published).

    Returns ``{"bce", "dice", "kl", "loss"}`` with ``loss = bce + dice + kl_weight·kl``. Dice is the soft
    Dice loss over the whole batch with +1 smoothing: ``1 - (2·Σpt + 1) / (Σp + Σt + 1)``.
    """
    logits = logits.float()
    target = target.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, target)
    dice = soft_dice_loss(logits, target)
    kl = gaussian_kl(mean, logvar)
    return {"bce": bce, "dice": dice, "kl": kl, "loss": bce + dice + kl_weight * kl}
