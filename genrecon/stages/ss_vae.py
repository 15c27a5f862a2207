"""``stage=ss_vae``: the sparse-structure VAE, dense occupancy ``[B,1,R,R,R]`` <-> latent ``[B,8,R/4,...]``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from genrecon.metrics.occupancy import occupancy_iou
from genrecon.models.ss_vae import SparseStructureDecoder, SparseStructureEncoder, ss_vae_losses
from genrecon.stages.base import Stage


class SparseStructureVAEStage(Stage):
    """Dice + BCE + KL on occupancy; validation reports the loss and the IoU of the decoded posterior mean.

    Args:
        channels: encoder widths fine to coarse (the decoder mirrors them); published ``[32, 128, 512]``.
        latent_channels: 8 as published. Other args: :class:`Stage`.
    """

    def __init__(
        self,
        channels: Sequence[int] = (32, 128, 512),
        num_res_blocks: int = 2,
        num_res_blocks_middle: int = 2,
        latent_channels: int = 8,
        kl_weight: float = 1e-3,
        use_checkpoint: bool = False,
        **stage_kwargs: Any,
    ) -> None:
        super().__init__(**stage_kwargs)
        self.save_hyperparameters()
        channels = list(channels)
        self.encoder = SparseStructureEncoder(1, latent_channels, num_res_blocks, channels, num_res_blocks_middle,
                                              use_checkpoint)
        self.decoder = SparseStructureDecoder(1, latent_channels, num_res_blocks, channels[::-1],
                                              num_res_blocks_middle, use_checkpoint)
        self.kl_weight = kl_weight

    def forward(self, occupancy: Tensor, sample_posterior: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        z, mean, logvar = self.encoder(occupancy, sample_posterior=sample_posterior)
        return self.decoder(z), mean, logvar

    @torch.no_grad()
    def encode(self, occupancy: Tensor) -> Tensor:
        """Posterior mean ``[B, 8, r, r, r]`` (what the encode step stores)."""
        return self.encoder(occupancy, sample_posterior=False)[1]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        logits, mean, logvar = self(batch["occupancy"])
        losses = ss_vae_losses(logits, batch["occupancy"], mean, logvar, self.kl_weight)
        self.log_dict({f"train/{k}": v for k, v in losses.items() if k != "loss"})
        self.log("train/loss", losses["loss"], prog_bar=True)
        return losses["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        logits, mean, logvar = self(batch["occupancy"], sample_posterior=False)
        losses = ss_vae_losses(logits, batch["occupancy"], mean, logvar, self.kl_weight)
        iou = occupancy_iou(logits, batch["occupancy"]).mean()
        self.log_dict({"val/loss": losses["loss"], "val/iou": iou}, prog_bar=True, sync_dist=True)
