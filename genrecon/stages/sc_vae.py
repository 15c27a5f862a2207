"""``stage=shape_vae`` and ``stage=tex_vae``: the sparse ConvNeXt VAEs on O-Voxel features.

Training follows TRELLIS.2 where the published recipe can run here: the decoder expands with the encoder's
true child masks (teacher forcing) and learns to predict them. The published shape VAE also has rendering
losses (mask, depth, normal, SSIM, LPIPS) that dominate its objective; without them the direct terms carry
the geometry, so their weights default to 1 (vertex, flags, subdivision) instead of 1e-2 / 0.1 / 0.1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from genrecon.data.augment import VoxelAugmentation, augment_voxels, step_generator
from genrecon.models.sc_vae import (
    ShapeLossWeights,
    ShapeVAEDecoder,
    ShapeVAEEncoder,
    TextureVAEDecoder,
    TextureVAEEncoder,
    shape_vae_losses,
    texture_vae_losses,
)
from genrecon.modules.sparse.tensor import SparseTensor, feats_at
from genrecon.stages.base import Stage


def _sparse(batch: dict[str, Any], key: str, device: torch.device | None = None) -> SparseTensor:
    coords, feats = batch["ovoxel_coords"], batch[key]
    if device is not None:
        coords, feats = coords.to(device), feats.to(device)
    return SparseTensor(coords, feats)


def voxel_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of two coordinate sets ``[N, 4]`` and ``[M, 4]`` (batch index included)."""
    key = torch.tensor([1 << 40, 1 << 26, 1 << 13, 1], device=a.device)
    ka, kb = (a.long() * key).sum(1), (b.long() * key).sum(1)
    inter = torch.isin(ka, kb).sum()
    return inter.float() / (len(ka) + len(kb) - inter).clamp(min=1).float()


class ShapeVAEStage(Stage):
    """Shape SC-VAE: ``[K, 6]`` dual-grid features -> 32-channel latent at ``1/2**(levels-1)`` -> ``[K, 7]``.

    Args:
        resolution: O-Voxel grid size of the data.
        channels: widths fine -> coarse (the decoder mirrors them); ``len(channels) - 1`` downsamplings.
        encoder_blocks / decoder_blocks: ConvNeXt blocks per level (decoder coarse -> fine).
        loss_weights: ``ShapeLossWeights`` fields (see the module docstring for the defaults).
    """

    def __init__(
        self,
        resolution: int,
        channels: Sequence[int],
        encoder_blocks: Sequence[int],
        decoder_blocks: Sequence[int],
        latent_channels: int = 32,
        loss_weights: dict[str, float] | None = None,
        use_checkpoint: bool = False,
        conv_backend: str = "torch",
        **stage_kwargs: Any,
    ) -> None:
        super().__init__(**stage_kwargs)
        self.save_hyperparameters()
        channels = list(channels)
        self.resolution = resolution
        self.encoder = ShapeVAEEncoder(channels, latent_channels, list(encoder_blocks), use_checkpoint, conv_backend)
        self.decoder = ShapeVAEDecoder(channels[::-1], latent_channels, list(decoder_blocks), resolution,
                                       use_checkpoint=use_checkpoint, backend=conv_backend)
        self.weights = ShapeLossWeights(**{"vertex": 1.0, "intersected": 1.0, "subdiv": 1.0, **(loss_weights or {})})

    def _step(self, batch: dict[str, Any], sample_posterior: bool) -> tuple[dict[str, Tensor], Any, SparseTensor]:
        x = _sparse(batch, "ovoxel_shape")
        post = self.encoder(x, sample_posterior=sample_posterior)
        recon, subs = self.decoder(post.z, guide_subs=post.subs, return_subs=True)
        losses = shape_vae_losses(recon, x, subs, post.subs, post.mean.feats, post.logvar.feats, self.weights)
        return losses, post, recon

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        losses, _, _ = self._step(batch, sample_posterior=True)
        self.log_dict({f"train/{k}": v for k, v in losses.items() if k != "loss"}, batch_size=len(batch["keys"]))
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=len(batch["keys"]))
        return losses["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        losses, post, recon = self._step(batch, sample_posterior=False)
        target = feats_at(_sparse(batch, "ovoxel_shape"), recon) + 0.5
        pred = recon.feats
        flag_acc = ((pred[:, 3:6] > 0) == (target[:, 3:6] > 0.5)).float().mean()
        vertex_err = (pred[:, 0:3] - target[:, 0:3]).norm(dim=1).mean()  # in voxel edges
        # Free-running decode: the voxel set the predicted subdivisions produce.
        free = self.decoder(post.mean)
        iou = voxel_iou(free.coords, batch["ovoxel_coords"])
        n = len(batch["keys"])
        self.log_dict({"val/loss": losses["loss"], "val/flag_acc": flag_acc, "val/vertex_err_vox": vertex_err,
                       "val/voxel_iou": iou}, prog_bar=True, sync_dist=True, batch_size=n)

    @torch.no_grad()
    def encode(self, batch: dict[str, Any], device: torch.device) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean of a collated batch: ``coords [L, 4]`` (batch, x, y, z) and ``feats [L, C]``."""
        post = self.encoder(_sparse(batch, "ovoxel_shape", device), sample_posterior=False)
        return post.mean.coords.cpu().numpy(), post.mean.feats.float().cpu().numpy()

    @torch.no_grad()
    def decode(self, latent: SparseTensor) -> tuple[SparseTensor, list[SparseTensor]]:
        """Free-running decode: ``[M, 7]`` O-Voxel prediction and the predicted child logits (texture guide)."""
        return self.decoder(latent, return_subs=True)


class TextureVAEStage(Stage):
    """Texture SC-VAE on the 6 PBR channels (``[-1, 1]``); its decoder follows given subdivisions.

    Validation reports the base-colour PSNR (in ``[0, 1]``) on the voxels.
    """

    def __init__(
        self,
        resolution: int,
        channels: Sequence[int],
        encoder_blocks: Sequence[int],
        decoder_blocks: Sequence[int],
        latent_channels: int = 32,
        kl_weight: float = 1e-6,
        use_checkpoint: bool = False,
        conv_backend: str = "torch",
        l2_weight: float = 0.0,
        augment: dict[str, bool] | None = None,
        augment_seed: int = 0,
        upsample_skip: str = "slice",
        mean_shortcut: bool = False,
        **stage_kwargs: Any,
    ) -> None:
        super().__init__(**stage_kwargs)
        self.save_hyperparameters()
        channels = list(channels)
        self.resolution = resolution
        # Training-time turns, mirrors and colour-channel swaps (genrecon/data/augment.py); None: off.
        self.augment = VoxelAugmentation(**augment) if augment is not None else None
        self.augment_seed = int(augment_seed)
        self.encoder = TextureVAEEncoder(6, channels, latent_channels, list(encoder_blocks), use_checkpoint,
                                         conv_backend, mean_shortcut)
        self.decoder = TextureVAEDecoder(6, channels[::-1], latent_channels, list(decoder_blocks), use_checkpoint,
                                         conv_backend, upsample_skip, mean_shortcut)
        self.kl_weight = kl_weight
        self.l2_weight = l2_weight

    @staticmethod
    def _input(batch: dict[str, Any], device: torch.device | None = None) -> SparseTensor:
        x = _sparse(batch, "ovoxel_pbr", device)
        return x.replace(x.feats * 2.0 - 1.0)

    def _step(self, batch: dict[str, Any], sample_posterior: bool) -> tuple[dict[str, Tensor], SparseTensor]:
        x = self._input(batch)
        post = self.encoder(x, sample_posterior=sample_posterior)
        recon = self.decoder(post.z, guide_subs=post.subs)
        return texture_vae_losses(recon, x, post.mean.feats, post.logvar.feats, self.kl_weight,
                                  self.l2_weight), recon

    def _augmented(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The batch with each chunk transformed by its own draw; the draw depends only on the seed, the step
        and the rank, so a resumed run sees the same augmentations as an uninterrupted one."""
        gen = step_generator(self.augment_seed, self.global_step, self.global_rank)
        coords, pbr = augment_voxels(batch["ovoxel_coords"], batch["ovoxel_pbr"], self.resolution, gen, self.augment)
        return {**batch, "ovoxel_coords": coords, "ovoxel_pbr": pbr}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        if self.augment is not None:
            batch = self._augmented(batch)
        losses, _ = self._step(batch, sample_posterior=True)
        self.log_dict({"train/l1": losses["l1"], "train/kl": losses["kl"]}, batch_size=len(batch["keys"]))
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=len(batch["keys"]))
        return losses["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        losses, recon = self._step(batch, sample_posterior=False)
        target = feats_at(self._input(batch), recon)
        rgb_pred = (recon.feats[:, :3] * 0.5 + 0.5).clamp(0, 1)
        rgb_true = target[:, :3] * 0.5 + 0.5
        psnr = -10.0 * torch.log10(torch.mean((rgb_pred - rgb_true) ** 2).clamp(min=1e-10))
        self.log_dict({"val/loss": losses["loss"], "val/base_color_psnr": psnr}, prog_bar=True, sync_dist=True,
                      batch_size=len(batch["keys"]))

    @torch.no_grad()
    def encode(self, batch: dict[str, Any], device: torch.device, coords: np.ndarray) -> np.ndarray:
        """Posterior mean feats ``[L, C]`` on ``coords`` (the shape latent's coordinates)."""
        post = self.encoder(self._input(batch, device), sample_posterior=False)
        want = SparseTensor(torch.as_tensor(coords, device=device), torch.zeros(len(coords), 1, device=device))
        if not torch.equal(post.mean.coords.cpu(), torch.as_tensor(coords)):
            raise RuntimeError("texture latent coordinates differ from the shape latent's; the VAEs disagree on "
                               "the number of downsamplings")
        return feats_at(post.mean, want).float().cpu().numpy()

    @torch.no_grad()
    def decode(self, latent: SparseTensor, guide_subs: Sequence[SparseTensor]) -> SparseTensor:
        """PBR attributes in ``[0, 1]`` (``[M, 6]``) on the voxels the guide (shape decoder) selects."""
        out = self.decoder(latent, guide_subs=guide_subs)
        return out.replace((out.feats * 0.5 + 0.5).clamp(0, 1))
