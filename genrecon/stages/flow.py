"""The three flow stages (``ss_flow``, ``shape_flow``, ``tex_flow``) on the projection-conditioning backbone.

Each stage encodes the batch's posed views with the image encoder (tokens ``[B, N, T, C]``), lifts them onto
the voxels of the chunk (projection + view aggregator, owned by the flow transformer), takes the tokens of one
view as the cross-attention condition, and trains the rectified-flow velocity of its latent. The model is
built by Hydra as a partial so the stage can hand it the projection matched to the encoder's patch grid.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.profiler import record_function

from genrecon.data.augment import augment_chunk_batch, step_generator
from genrecon.geometry.floor_rays import append_chunk_floor_rays
from genrecon.metrics.occupancy import occupancy_iou
from genrecon.models.aggregator import ViewAggregator
from genrecon.models.depth_cue import DepthCue, histogram_logits, patch_depth_targets
from genrecon.models.flow_transformer import DenseFlowTransformer
from genrecon.models.image_encoder import ImageEncoder, encode_views
from genrecon.models.point_depth import (
    SimulatedPoints,
    draw_keep,
    kept_blocks,
    seen_points,
    simulate_sfm_points,
    snap_to_occupancy,
    stereo_points_of_views,
)
from genrecon.models.projection import Projection, coords_to_points
from genrecon.models.ss_vae import soft_dice_loss
from genrecon.objectives.rectified_flow import FlowLoss, RectifiedFlow
from genrecon.pipelines.sampler import DRAW_MEANS, EulerSampler, mean_of_draws, occupancy_logit, overridden
from genrecon.stages.base import Stage

LATENT_KEYS = {"ss": "ss_latent", "shape": "shape_feats", "tex": "tex_feats"}
# Images per encoder call: the default of encode_views, so both paths run the same batches.
ENCODE_CHUNK = 64


# evaluation batches whose stereo points the SS stage keeps (SparseStructureFlowStage.stereo_points)
STEREO_CACHE_BATCHES = 8


def load_latent_stats(path: str | Path | None, name: str, channels: int,
                      std_floor: float = 0.0) -> tuple[Tensor, Tensor]:
    """Per-channel mean/std of one latent from the dataset's ``stats.json`` (identity when ``path`` is None).

    ``std_floor`` > 0 raises every channel's std to at least that share of the largest one, so that a channel that
    carries almost nothing is not scaled up into unit-variance targets (see ``FlowStage``'s ``latent_std_floor``).
    """
    if not 0.0 <= std_floor < 1.0:
        raise ValueError(f"latent std floor must lie in [0, 1), got {std_floor}")
    if path is None:
        return torch.zeros(channels), torch.ones(channels)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"latent statistics {path} not found (written by the encode step of prepare.py)")
    stats = json.loads(path.read_text())
    if name not in stats:
        raise KeyError(f"{path}: no statistics for latent '{name}' (has {sorted(stats)})")
    mean, std = torch.tensor(stats[name]["mean"]), torch.tensor(stats[name]["std"])
    if mean.numel() != channels:
        raise ValueError(f"{path}: field '{name}.mean' has {mean.numel()} channels, the model expects {channels}")
    std = std.clamp(min=1e-6)
    return mean, torch.maximum(std, std_floor * std.max()) if std_floor > 0 else std


def pooled_r2(pred: Tensor, target: Tensor) -> Tensor:
    """Share of the variance of ``target [..., C]`` that ``pred`` explains, pooled over channels (each channel
    centred on its own mean)."""
    residual = (pred - target).pow(2).sum()
    total = (target - target.flatten(0, -2).mean(0)).pow(2).sum().clamp(min=1e-12)
    return 1.0 - residual / total


def host_to_device(values: Sequence[int], device: torch.device) -> Tensor:
    """Host ints -> int64 tensor on ``device`` without blocking the host (pinned memory, asynchronous copy)."""
    if device.type == "cuda":
        return torch.tensor(values, dtype=torch.long, pin_memory=True).to(device, non_blocking=True)
    return torch.tensor(values, dtype=torch.long, device=device)


def encode_counted_views(
    encoder: ImageEncoder, images: Tensor, view_counts: Sequence[int], chunk_size: int = ENCODE_CHUNK
) -> Tensor:
    """:func:`encode_views` for left-aligned views: sample b's real views are ``images[b, :view_counts[b]]``
    (as the collate pads them). images ``[B, N, 3, S, S]`` → tokens ``[B, N, T, C]``, zeros for padded views.

    The real views' rows are known on the host, so gathering and scattering them needs no device sync.
    """
    b, n = images.shape[:2]
    if len(view_counts) != b or any(not 0 <= c <= n for c in view_counts):
        raise ValueError(f"view_counts {tuple(view_counts)} do not fit views of shape {tuple(images.shape)}")
    rows_host = [i * n + j for i, c in enumerate(view_counts) for j in range(c)]
    t, c = encoder.num_tokens(images.shape[-1]), encoder.out_channels
    if not rows_host:
        return images.new_zeros(b, n, t, c)
    rows = host_to_device(rows_host, images.device)
    real = images.flatten(0, 1).index_select(0, rows)  # [M, 3, S, S], the order of images[view_mask]
    chunks = [encoder(real[i : i + chunk_size]) for i in range(0, real.shape[0], chunk_size)]
    encoded = torch.cat(chunks)
    tokens = images.new_zeros(b * n, t, c, dtype=encoded.dtype)
    tokens.index_copy_(0, rows, encoded)
    return tokens.view(b, n, t, c)


class FlowStage(Stage):
    """Shared training logic of the flow stages.

    Args:
        model: partial of a flow transformer; called with ``projection=`` and ``aggregator=``.
        image_encoder: the view encoder (trained with the stage unless built frozen).
        objective: rectified-flow objective (t schedule, CFG dropout).
        sampler: the Euler sampler used for validation samples (same code as inference).
        image_size: view size of the data (sets the encoder's patch grid for the projection).
        projection_conditioning: False trains the same model with cross-attention only (the ablation).
        latent_stats: ``stats.json`` of the latent shards; None keeps latents unnormalised.
        proj_batch_voxels: voxels projected per batch (a memory knob only).
        sample_batches: validation batches on which the stage also samples and scores full generations.
        compile_blocks: ``torch.compile`` each transformer block when training starts (regional compilation:
            the blocks share one graph). Fuses the norm / modulation / RoPE element-wise work of a small
            model's step, whose GPU step is otherwise bound by the host launching ~11k kernels (session 14
            profile). Packed blocks compile with dynamic sizes; their attention runs eager between graphs.
        latent_aux_weight: > 0 adds an auxiliary term (a deviation, off by default): a linear ``latent_head``
            reads each token's fused view feature ``cond_3d`` and predicts its clean normalised latent ``x0``
            (MSE). The flow loss reaches the image encoder and aggregator only through the zero-initialised
            injection layers, so an untrained pathway gets no signal from it; this term gives them a direct one.
            Validation logs ``val/latent_aux_r2``, the share of the latent's variance the views explain
            linearly, and ``val/latent_aux_r2_raw``, the same in the latent's own units (channels weighed by
            their variance, not by the normalisation).
        depth_supervision_weight: > 0 (a deviation, off by default; needs ``preset.flow.depth_cue``) trains the
            depth cue's head directly: for every patch of every view, the cross-entropy of its depth distribution
            against the depths of the chunk's own surface points seen through the patch
            (:func:`genrecon.models.depth_cue.patch_depth_targets`; :meth:`surface_points` says which points).
            No depth maps are needed: the targets come from the batch's structure. Validation logs
            ``val/depth_aux_hit``, the target mass within one bin of the predicted mode.
        depth_supervision_subcells: z-buffer cells per patch edge for those targets (and the SS stage's
            ``depth_cue_oracle``); surface points must project less than a cell apart: 2 for the 64³ occupancy, 1
            for 32³ latent cells at 256-pixel views.
        image_encoder_ckpt: a ``view_pretrain`` checkpoint (a deviation, off by default): the image encoder starts
            from its weights, with ``preset.flow.depth_cue`` the cue's depth head from its depth head and with
            ``preset.flow.cell_cue`` the cell cue's head from its dense cell head
            (:func:`genrecon.stages.view_pretrain.load_pretrained_view_encoder`). ``preset.image_encoder.frozen``
            keeps the encoder fixed, as the published flows keep DINOv3.
        latent_std_floor: > 0 (a deviation; 0 here, 0.1 in ``conf/stage/tex_flow.yaml``) normalises each
            latent channel by at least this share of the largest channel std. The texture VAE's block-mean
            shortcut leaves 5 of its 32 channels with std 0.16-0.52 and 27 with std 0.002-0.01 (every run
            since session 5); per-channel statistics scale those 27 up 100-500x into unit-variance targets,
            27/32 of the flow loss, while the decoded colour lives in the other 5. With a floor of 0.1 they
            stay below 0.2 in the model's units. Measured on the texture flow (session 12, same run): +0.52 ±
            0.13 dB one-step and +0.26 ± 0.16 dB sampled.
    """

    new_parameter_prefixes = ("aggregator", "proj_linears", "photo_cue", "depth_cue", "cell_cue", "point_grid",
                              "image_encoder", "latent_head")
    latent = "ss"

    def __init__(
        self,
        model: Callable[..., nn.Module],
        image_encoder: ImageEncoder,
        objective: RectifiedFlow,
        sampler: EulerSampler,
        image_size: int,
        latent_channels: int,
        projection_conditioning: bool = True,
        projection_sampling: str = "nearest",
        latent_stats: str | None = None,
        proj_batch_voxels: int = 8192,
        sample_batches: int = 1,
        finetune: dict[str, Any] | None = None,
        compile_blocks: bool = False,
        latent_aux_weight: float = 0.0,
        depth_supervision_weight: float = 0.0,
        depth_supervision_subcells: int = 2,
        image_encoder_ckpt: str | None = None,
        latent_std_floor: float = 0.0,
        **stage_kwargs: Any,
    ) -> None:
        super().__init__(**stage_kwargs)
        self.save_hyperparameters(ignore=["model", "image_encoder", "objective", "sampler"])
        self.image_encoder = image_encoder
        projection = aggregator = None
        if projection_conditioning:
            projection = Projection(
                image_encoder.num_global_tokens, image_encoder.patch_grid(image_size), projection_sampling
            )
            aggregator = ViewAggregator(image_encoder.out_channels)
        self.model = model(projection=projection, aggregator=aggregator)
        if image_encoder_ckpt:
            from genrecon.stages.view_pretrain import load_pretrained_view_encoder

            load_pretrained_view_encoder(image_encoder_ckpt, self.image_encoder, getattr(self.model, "depth_cue", None),
                                         getattr(self.model, "cell_cue", None))
        if finetune:
            self._setup_finetune(**finetune)
        self.objective = objective
        self.sampler = sampler
        self.proj_batch_voxels = proj_batch_voxels
        self.sample_batches = sample_batches
        self.compile_blocks = compile_blocks
        self.latent_aux_weight = float(latent_aux_weight)
        self.latent_head = None
        if self.latent_aux_weight > 0:
            if not self.model.has_cond_3d:
                raise ValueError("latent_aux_weight needs the projection conditioning (projection_conditioning)")
            self.latent_head = nn.Linear(self.model.cond_channels, latent_channels)
        self.depth_supervision_weight = float(depth_supervision_weight)
        self.depth_supervision_subcells = int(depth_supervision_subcells)
        if self.depth_supervision_weight > 0 and getattr(self.model, "depth_cue", None) is None:
            raise ValueError("depth_supervision_weight trains the depth cue: set preset.flow.depth_cue")
        mean, std = load_latent_stats(latent_stats, self.latent, latent_channels, latent_std_floor)
        self.register_buffer("latent_mean", mean)
        self.register_buffer("latent_std", std)

    def _setup_finetune(self, base_ckpt: str | None = None, genrecon_ckpt: str | None = None,
                        preset: str = "trellis2", lora_r: int = 8, lora_alpha: float = 16.0) -> None:
        from genrecon.modules.lora import apply_lora, freeze_base
        from genrecon.weights.trellis_flow import load_genrecon_flow, load_trellis_flow

        if base_ckpt:
            load_trellis_flow(base_ckpt, self.model, preset=preset)
        apply_lora(self.model, r=lora_r, alpha=lora_alpha)
        trainable = ("aggregator.", "proj_linears.", "photo_cue.", "depth_cue.", "cell_cue.")
        freeze_base(self.model, trainable_prefixes=trainable)
        if genrecon_ckpt:
            report = load_genrecon_flow(genrecon_ckpt, self.model)
            self.print(f"loaded GenRecon checkpoint {genrecon_ckpt}: {report}")

    def on_fit_start(self) -> None:
        super().on_fit_start()
        # At fit start, not at build: inference rebuilds the stage from its checkpoint and should not compile.
        if self.compile_blocks:
            # Packed blocks see another token count every batch: compile them for symbolic sizes at once, so
            # the first batches do not compile once static and again dynamic. Their attention and per-sample
            # modulation, which read the batch's layout, stay eager (packed_attention, _per_token).
            dense = isinstance(self.model, DenseFlowTransformer)
            blocks = [*self.model.blocks, *(getattr(self.model, "cell_blocks", None) or ())]
            for block in blocks:
                block.compile(dynamic=None if dense else True)

    # ------------------------------------------------------------------ conditioning
    def view_tokens(self, batch: dict[str, Any]) -> Tensor:
        """Image tokens ``[B, N, T, C]`` of the batch's views (zeros for padded views).

        With the collate's host-side ``view_counts`` the real views are gathered by index, without the device
        syncs of boolean-mask indexing (mask gather and scatter, and the scatter's backward); the same images
        go through the encoder in the same chunks, so the tokens and gradients are identical. An encoder with
        ``geometry_channels`` also gets the views' floor-ray maps (the chunk's floor is z = -0.5).
        """
        views = batch["views"]
        if self.image_encoder.geometry_channels:
            views = append_chunk_floor_rays(views, batch["w2c"], batch["intrinsics"], batch["view_mask"])
        counts = batch.get("view_counts")
        if counts is None:
            return encode_views(self.image_encoder, views, batch["view_mask"])
        return encode_counted_views(self.image_encoder, views, counts)

    @staticmethod
    def cond_2d(tokens: Tensor) -> Tensor:
        """One view's tokens for the cross-attention: the first sampled view of every sample."""
        return tokens[:, 0]

    def normalise(self, x: Tensor, channel_dim: int) -> Tensor:
        shape = [1] * x.dim()
        shape[channel_dim] = -1
        return (x - self.latent_mean.view(shape)) / self.latent_std.view(shape)

    def denormalise(self, x: Tensor, channel_dim: int) -> Tensor:
        shape = [1] * x.dim()
        shape[channel_dim] = -1
        return x * self.latent_std.view(shape) + self.latent_mean.view(shape)

    # ------------------------------------------------------------------ to be provided by each stage
    def flow_inputs(self, batch: dict[str, Any], tokens: Tensor) -> dict[str, Any]:
        """``x0``, ``cond_3d``, ``batch_idx`` and ``model_fn`` of the batch."""
        raise NotImplementedError

    # ------------------------------------------------------------------ steps
    def _loss(self, batch: dict[str, Any], train: bool, generator: torch.Generator | None = None,
              unconditional: bool = False, prepared: tuple[Tensor, dict[str, Any]] | None = None):
        """The flow loss of ``batch``; ``unconditional`` zeroes both conditions (the CFG negative) for every
        sample instead of a random p_uncond of them. ``prepared``: (tokens, flow_inputs) already computed for
        this batch, so a second loss on it does not encode and project the views again."""
        tokens, inputs = prepared if prepared is not None else self._prepare(batch)
        cond_2d, cond_3d = self.cond_2d(tokens), inputs["cond_3d"]
        if unconditional:
            cond_2d, cond_3d = torch.zeros_like(cond_2d), None
        with record_function("flow.objective"):
            return self.objective.loss(
                inputs["model_fn"], inputs["x0"], cond_2d, cond_3d,
                batch_idx=inputs["batch_idx"], cfg_dropout=train and not unconditional, generator=generator,
                return_x0=train and self.trains_x0_estimate,
            )

    def _prepare(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        """View tokens ``[B, N, T, C]`` and :meth:`flow_inputs` of the batch."""
        # Named ranges (free unless a profiler runs): benchmarks/flow_step.py --profile-steps splits the step by them.
        with record_function("flow.view_tokens"):
            tokens = self.view_tokens(batch)
        with record_function("flow.conditioning"):
            return tokens, self.flow_inputs(batch, tokens)

    @staticmethod
    def latent_tokens(x0: Tensor) -> Tensor:
        """The clean latent in the token layout of ``cond_3d``: dense ``[B, C, r, r, r]`` → ``[B, r³, C]``
        (x·r² + y·r + z, the dense model's token order); packed sparse ``[K, C]`` as it is."""
        return x0.flatten(2).transpose(1, 2) if x0.dim() == 5 else x0

    def _latent_aux(self, prepared: tuple[Tensor, dict[str, Any]]) -> tuple[Tensor, Tensor] | None:
        """(prediction, target) of the latent head in token layout, float32; None without the head."""
        if self.latent_head is None:
            return None
        inputs = prepared[1]
        return self.latent_head(inputs["cond_3d"]).float(), self.latent_tokens(inputs["x0"]).float()

    def surface_points(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """The chunk's surface as points ``[K, 3]`` (chunk frame) with their sample ``[K]``: the depth targets."""
        raise NotImplementedError(f"{type(self).__name__} has no surface points for depth supervision")

    @torch.no_grad()
    def surface_depth_targets(self, batch: dict[str, Any], num_samples: int) -> tuple[Tensor, Tensor]:
        """Depth distributions of the batch's surface points per patch of every view, in the depth cue's bins
        (:func:`genrecon.models.depth_cue.patch_depth_targets`): target ``[B, N, P², D]``, has ``[B, N, P²]``."""
        projection, cue = self.model.projection, self.model.depth_cue
        points, batch_idx = self.surface_points(batch)
        u, v, valid, depth = projection.project(points, batch_idx, batch["w2c"], batch["intrinsics"],
                                                batch["view_mask"])
        return patch_depth_targets(u, v, depth, valid, batch_idx, num_samples, projection.patch_grid,
                                   self.depth_supervision_subcells, cue.bins, cue.max_depth)

    def _depth_supervision(self, batch: dict[str, Any], tokens: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
        """(patch depth logits, target distributions, has-target mask) of the batch's views; None when off."""
        if self.depth_supervision_weight <= 0:
            return None
        target, has = self.surface_depth_targets(batch, tokens.shape[0])
        geometry = (batch["w2c"], batch["intrinsics"], batch["view_mask"])
        logits = self.model.depth_cue.patch_logits(tokens, self.model.projection.num_global_tokens, geometry)
        return logits, target, has

    def auxiliary_losses(self, batch: dict[str, Any], prepared: tuple[Tensor, dict[str, Any]]) -> dict[str, Tensor]:
        """Extra training terms ``{name: weighted loss}`` on the batch's prepared conditioning."""
        out = {}
        with record_function("flow.auxiliary"):
            aux = self._latent_aux(prepared)
            if aux is not None:
                out["latent_aux"] = self.latent_aux_weight * F.mse_loss(*aux)
            depth = self._depth_supervision(batch, prepared[0])
            if depth is not None:
                out["depth_aux"] = self.depth_supervision_weight * DepthCue.supervision_loss(*depth)
        return out

    # Whether training losses read the model's one-step x0 estimate (FlowLoss.x0_pred; see estimate_losses).
    trains_x0_estimate = False

    def estimate_losses(self, batch: dict[str, Any], out: FlowLoss) -> dict[str, Tensor]:
        """Extra training terms ``{name: weighted loss}`` on the model's x0 estimate ``out.x0_pred``."""
        return {}

    def augment(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The training batch as the loss sees it (a stage may transform its chunks; here unchanged)."""
        return batch

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        batch = self.augment(batch)
        prepared = self._prepare(batch)
        out = self._loss(batch, train=True, prepared=prepared)
        loss = out.loss
        extra = {**self.auxiliary_losses(batch, prepared), **self.estimate_losses(batch, out)}
        for name, value in extra.items():
            self.log(f"train/{name}", value, batch_size=out.t.numel())
            loss = loss + value
        self.log("train/loss", out.loss, prog_bar=True, batch_size=out.t.numel())
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        # A fixed generator per batch: the validation loss is comparable across checkpoints.
        prepared = self._prepare(batch)
        generator = torch.Generator(device=self.device).manual_seed(1000 + batch_idx)
        out = self._loss(batch, train=False, generator=generator, prepared=prepared)
        self.log("val/loss", out.loss, prog_bar=True, sync_dist=True, batch_size=out.t.numel())
        aux = self.auxiliary_metrics(batch, prepared)
        if aux:
            self.log_dict({f"val/{k}": v for k, v in aux.items()}, sync_dist=True, batch_size=out.t.numel())
        # The same t and noise without any condition: how much the views lower the loss (cond_gain > 0 once
        # the model uses them; ~0 while it has learnt only the unconditional prior).
        generator = torch.Generator(device=self.device).manual_seed(1000 + batch_idx)
        uncond = self._loss(batch, train=False, generator=generator, unconditional=True, prepared=prepared)
        self.log_dict({"val/loss_uncond": uncond.loss, "val/cond_gain": uncond.loss - out.loss}, sync_dist=True,
                      batch_size=out.t.numel())
        if batch_idx < self.sample_batches:
            metrics = self.sample_metrics(batch)
            if metrics:
                self.log_dict(metrics, sync_dist=True, batch_size=out.t.numel())

    def sample_metrics(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Metrics of full generations on a validation batch (stages that can score samples override)."""
        return {}

    def auxiliary_metrics(self, batch: dict[str, Any], prepared: tuple[Tensor, dict[str, Any]]) -> dict[str, Tensor]:
        """Validation metrics of the auxiliary terms."""
        out = {}
        aux = self._latent_aux(prepared)
        if aux is not None:
            pred, target = aux
            out["latent_aux_r2"] = pooled_r2(pred, target)
            # In the latent's own units: each channel weighs by the variance the decoder sees, whatever the
            # normalisation (comparable between runs with and without latent_std_floor).
            scale = self.latent_std.float()
            out["latent_aux_r2_raw"] = pooled_r2(pred * scale, target * scale)
        depth = self._depth_supervision(batch, prepared[0])
        if depth is not None:
            out["depth_aux_hit"] = DepthCue.mode_hit(*depth)
        return out

    @torch.no_grad()
    def latent_head_readout(self, batch: dict[str, Any]) -> Tensor | None:
        """The latent head's estimate of the batch's (normalised) latent from the fused views alone, in the layout
        :meth:`sample` returns; None without the head. A diagnostic beside the samples: where it scores as well as
        the flow, the flow adds nothing to a linear read-out of its own conditioning."""
        if self.latent_head is None:
            return None
        _, inputs = self._prepare(batch)
        pred, x0 = self.latent_head(inputs["cond_3d"]), inputs["x0"]
        return pred.transpose(1, 2).reshape(x0.shape) if x0.dim() == 5 else pred

    @torch.no_grad()
    def sample(self, batch: dict[str, Any], seed: int = 0,
               transform: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """Generate the batch's latent (normalised) with the stage's sampler from seeded noise; with the
        sampler's ``draws`` K > 1, the mean of K samples from successive noises of the same generator (the first
        is the single-draw sample). With ``transform``, the (float32) mean of ``transform(sample)`` instead: the
        SS flow averages decoded occupancy probabilities this way (``SparseStructureFlowStage.sample_occupancy``)."""
        tokens, inputs = self._prepare(batch)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        x0, cond_2d = inputs["x0"], self.cond_2d(tokens)

        def draw(_: int) -> Tensor:
            noise = torch.randn(x0.shape, generator=generator, device=self.device, dtype=x0.dtype)
            x = self.sampler.sample(inputs["model_fn"], noise, cond_2d, inputs["cond_3d"],
                                    batch_idx=inputs["batch_idx"])
            return x if transform is None else transform(x)

        mean = mean_of_draws(draw, self.sampler.draws)
        return mean.to(x0.dtype) if transform is None else mean


class SparseStructureFlowStage(FlowStage):
    """``stage=ss_flow``: dense latent ``[B, 8, r, r, r]``; samples are scored by occupancy IoU when a trained
    SS-VAE decoder is given (``ss_vae_ckpt``).

    ``occupancy_aux_weight > 0`` (a deviation, off by default) adds an auxiliary term: a linear
    ``occupancy_head`` reads each latent voxel's fused view feature ``cond_3d [B, r³, C]`` and predicts the
    ``f³`` occupancy bits of its block (``f = occupancy_resolution / r``), trained with BCE + soft Dice against
    the chunk's occupancy. It gives the image encoder and aggregator a dense, direct signal from the first step, where
    the flow loss reaches them only through the zero-initialised injection layers. Validation logs the head's
    IoU (``val/occ_aux_iou``): how much occupancy the views alone carry.

    ``decoded_occupancy_weight > 0`` (a deviation, off by default; needs ``ss_vae_ckpt``) adds BCE + soft Dice of
    the model's one-step x0 estimate, decoded by the frozen SS-VAE decoder, against the chunk's occupancy, on the
    samples that kept their conditions. The latent MSE weighs every latent error alike, the decoder does not;
    this term trains the very estimate that the best measured sampler decodes (the mean of one-step draws,
    session 19), in the units the IoU counts.

    ``depth_cue_oracle`` (a diagnostic, off; needs ``preset.flow.depth_cue`` and the ``occupancy`` field, in
    training and sampling alike) hands the depth cue the true depths instead of its head's estimate: per patch of
    every view, the distribution of the chunk's nearest occupied voxels (:meth:`surface_depth_targets`,
    :func:`genrecon.models.depth_cue.histogram_logits`). What the flow then scores bounds what better depth alone
    could buy with this cue; no posed-image input has these depths, so inference cannot use it.

    ``point_depth`` (a deviation, off by default; needs ``preset.flow.depth_cue``): the depth cue takes its depths
    from points where they fall into a patch, its head's estimate elsewhere
    (:meth:`genrecon.models.flow_transformer.DenseFlowTransformer.point_depth_logits`). Training and validation
    simulate structure-from-motion points from the chunk's occupancy (keyword arguments of
    :class:`genrecon.models.point_depth.SimulatedPoints`: the share of the seen surface voxels kept, jitter; needs
    the ``occupancy`` field) or, with ``source: stereo``, find them by plane-sweep stereo in the batch's views
    (``source: mixed``: stereo for a share of each training batch, simulated for the rest, stereo in evaluation);
    ``infer.py`` gives the scene's cleaned input points. With ``preset.flow.point_grid`` the same points, counted
    per occupancy voxel of every latent cell, are added to the 3-D condition
    (:class:`genrecon.models.point_grid.PointGridCue`); ``point_depth.depth_cue: false`` keeps them out of the
    depth cue.

    ``symmetry_augment`` (a deviation, off by default; needs ``ss_vae_ckpt`` and the ``occupancy`` field) turns each
    training chunk by a random multiple of 90° about z and mirrors it with probability 1/2, with its views and
    cameras (:func:`genrecon.data.augment.augment_chunk_batch`), and encodes its latent again with the frozen
    SS-VAE encoder: eight chunks out of each. Session 31 saw the views-only recipe on 4 GPUs overfit 432
    training chunks (training loss 0.18 → 0.08 over steps 1,000-4,600; the validation loss flat at 0.21 from step
    2,800). The draw depends only on ``augment_seed``, the step and the rank, so a resumed run repeats it.
    """

    latent = "ss"
    new_parameter_prefixes = (*FlowStage.new_parameter_prefixes, "occupancy_head")

    def __init__(self, *args: Any, ss_vae_ckpt: str | None = None, occ_threshold: float = 0.0,
                 occupancy_aux_weight: float = 0.0, occupancy_resolution: int = 64,
                 decoded_occupancy_weight: float = 0.0, depth_cue_oracle: bool = False,
                 point_depth: dict[str, Any] | None = None, symmetry_augment: bool = False, augment_seed: int = 0,
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.symmetry_augment = bool(symmetry_augment)
        self.augment_seed = int(augment_seed)
        self.occ_threshold = occ_threshold
        self.depth_cue_oracle = bool(depth_cue_oracle)
        self.point_depth = None if point_depth is None else SimulatedPoints(
            **{k: tuple(v) if k == "keep" else v for k, v in dict(point_depth).items()})
        if self.point_grid is not None and self.point_depth is None:
            raise ValueError("preset.flow.point_grid counts the input points: set stage.module.point_depth (their "
                             "source)")
        if (self.point_depth is not None and self.point_depth.depth_cue
                and getattr(self.model, "depth_cue", None) is None):
            raise ValueError("point_depth gives the depth cue its depths: set preset.flow.depth_cue (or "
                             "point_depth.depth_cue=false with preset.flow.point_grid)")
        if self.point_depth is not None and self.depth_cue_oracle:
            raise ValueError("depth_cue_oracle and point_depth both replace the depth cue's depths: choose one")
        if self.depth_cue_oracle:
            if getattr(self.model, "depth_cue", None) is None:
                raise ValueError("depth_cue_oracle replaces the depth cue's distributions: set preset.flow.depth_cue")
            # Its head is then never used: frozen, or DDP waits for gradients that never come.
            self.model.depth_cue.head.requires_grad_(False)
        self.occupancy_aux_weight = float(occupancy_aux_weight)
        self.decoded_occupancy_weight = float(decoded_occupancy_weight)
        self.trains_x0_estimate = self.decoded_occupancy_weight > 0
        self.occupancy_head = None
        if self.occupancy_aux_weight > 0:
            if not self.model.has_cond_3d:
                raise ValueError("occupancy_aux_weight needs the projection conditioning (projection_conditioning)")
            r = self.model.resolution
            if occupancy_resolution % r:
                raise ValueError(f"occupancy_resolution {occupancy_resolution} is not a multiple of the latent "
                                 f"resolution {r}")
            self.occupancy_factor = occupancy_resolution // r
            self.occupancy_head = nn.Linear(self.model.cond_channels, self.occupancy_factor**3)
        # Held outside the module tree (plain attribute): a frozen validation tool, not part of this stage, so
        # it stays out of checkpoints, the optimiser, EMA and DDP; moved to the device when used.
        decoder = encoder = None
        if ss_vae_ckpt:
            from genrecon.stages.ss_vae import SparseStructureVAEStage

            vae = SparseStructureVAEStage.load_from_checkpoint(ss_vae_ckpt, map_location="cpu")
            decoder = vae.decoder.eval().requires_grad_(False)
            if self.symmetry_augment:  # re-encodes the turned chunks' latents with the encode step's function
                encoder = vae.eval().requires_grad_(False)
        object.__setattr__(self, "ss_decoder", decoder)
        object.__setattr__(self, "ss_encoder", encoder)

    def flow_inputs(self, batch: dict[str, Any], tokens: Tensor) -> dict[str, Any]:
        cond_3d = None
        if self.model.has_cond_3d:
            depth_logits, points = None, None
            b = tokens.shape[0]
            if self.depth_cue_oracle:
                depth_logits = histogram_logits(*self.surface_depth_targets(batch, b))
            elif self.point_depth is not None:
                points, batch_idx = self.simulated_points(batch, b)
                if self.point_depth.depth_cue:
                    depth_logits = self.model.point_depth_logits(tokens, points, batch_idx, batch["w2c"],
                                                                 batch["intrinsics"], batch["view_mask"],
                                                                 self.depth_supervision_subcells)
            cond_3d = self.model.cond_3d_from_views(tokens, batch["w2c"], batch["intrinsics"], batch["view_mask"],
                                                    self.proj_batch_voxels, images=batch["views"],
                                                    depth_logits=depth_logits)
            if self.point_grid is not None:
                r = self.model.resolution
                counts = self.point_grid.counts(points, batch_idx, b, (r, r, r))
                cond_3d = cond_3d + self.point_grid(counts).to(cond_3d.dtype)
        return {"x0": self.normalise(batch["ss_latent"], 1), "cond_3d": cond_3d, "batch_idx": None,
                "model_fn": self.model}

    @property
    def point_grid(self) -> nn.Module | None:
        """The model's :class:`genrecon.models.point_grid.PointGridCue`, if it has one."""
        return getattr(self.model, "point_grid", None)

    @torch.no_grad()
    def simulated_points(self, batch: dict[str, Any], num_samples: int) -> tuple[Tensor, Tensor]:
        """Structure-from-motion stand-ins ``[M, 3]`` (chunk frame) with their sample ``[M]``: a share of the
        occupied voxels that some view sees, jittered (``point_depth``; in evaluation its ``eval_keep`` share,
        drawn with seed 0 so every scoring sees the same points), or with ``source: stereo`` :meth:`stereo_points`;
        ``source: mixed`` takes stereo points for the first ``stereo_share`` of a training batch (every chunk in
        evaluation) and simulated ones for the rest; ``source: none`` gives none (the views alone);
        ``source: stereo_oracle`` moves the stereo points onto the true surface (a diagnostic)."""
        cfg = self.point_depth
        if cfg.source == "none":
            device = batch["w2c"].device
            return torch.zeros(0, 3, device=device), torch.zeros(0, dtype=torch.long, device=device)
        if cfg.source == "stereo" or (cfg.source == "mixed" and not self.training):
            return self.stereo_points(batch)
        if cfg.source == "stereo_oracle":
            if "occupancy" not in batch:
                raise KeyError("point_depth.source stereo_oracle needs the 'occupancy' field in "
                               "stage.datamodule.fields")
            return snap_to_occupancy(*self.stereo_points(batch), batch["occupancy"])
        points, batch_idx = self.occupancy_points(batch, num_samples)
        if cfg.source != "mixed":
            return points, batch_idx
        k = max(1, round(cfg.stereo_share * num_samples))  # the batch is shuffled: its first chunks are any
        head = {key: batch[key][:k] for key in ("views", "w2c", "intrinsics", "view_mask")}
        stereo, stereo_idx = self.stereo_points(head)
        rest = batch_idx >= k
        return torch.cat([stereo, points[rest]]), torch.cat([stereo_idx, batch_idx[rest]])

    @torch.no_grad()
    def occupancy_points(self, batch: dict[str, Any], num_samples: int) -> tuple[Tensor, Tensor]:
        """The simulated points of :meth:`simulated_points` (``source: occupancy``)."""
        cfg, projection = self.point_depth, self.model.projection
        points, batch_idx = self.surface_points(batch)
        r = batch["occupancy"].shape[-1]
        u, v, valid, depth = projection.project(points, batch_idx, batch["w2c"], batch["intrinsics"],
                                                batch["view_mask"])
        cells = projection.patch_grid * self.depth_supervision_subcells
        seen = seen_points(u, v, depth, valid, batch_idx, num_samples, cells, cfg.tolerance / r)
        generator = None if self.training else torch.Generator(device=points.device).manual_seed(0)
        if self.training and cfg.block_keep < 1:  # whole regions without points, as stereo leaves plain walls
            seen = seen & kept_blocks(points, batch_idx, num_samples, r, cfg.block_size, cfg.block_keep)
        keep = draw_keep(cfg, num_samples, self.training, generator, points.device)
        return simulate_sfm_points(points, batch_idx, seen, keep, cfg.noise / r, generator, cfg.outliers,
                                   cfg.outlier_noise / r)

    @torch.no_grad()
    def stereo_points(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """Points ``[M, 3]`` (chunk frame) with their sample ``[M]`` that plane-sweep stereo finds in the batch's
        views (``point_depth.source: stereo``): the views only, no occupancy.

        In evaluation the points of the last ``STEREO_CACHE_BATCHES`` batches are kept and reused for a batch with
        the same views and cameras: they depend on nothing random, and scoring asks for each batch's condition once
        per draw and again per sampler variant (``benchmarks/flow_quality.py``: 16 one-step draws, four variants
        over every batch), each a full sweep."""
        inputs = tuple(batch[k] for k in ("views", "w2c", "intrinsics", "view_mask"))
        cache = [] if self.training else getattr(self, "_stereo_cache", [])
        for kept, config, out in cache:
            if config == self.point_depth and all(a.shape == b.shape and torch.equal(a, b)
                                                  for a, b in zip(kept, inputs)):
                return out
        views = inputs[0]  # [B, N, 3, H, W]
        with torch.autocast(views.device.type, enabled=False), record_function("cond.stereo"):
            out = stereo_points_of_views(views, batch["w2c"], batch["intrinsics"], batch["view_mask"],
                                         self.point_depth, self.model.depth_cue.max_depth)
        # copies: a batch changed in place afterwards must not match its old self; training lets them go
        kept = [] if self.training else [*cache, (tuple(t.clone() for t in inputs), self.point_depth, out)]
        self._stereo_cache = kept[-STEREO_CACHE_BATCHES:]
        return out

    def surface_points(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """Centres of the occupied voxels of ``occupancy [B, 1, R, R, R]``."""
        if "occupancy" not in batch:
            raise KeyError("ss_flow's depth targets (depth supervision, depth_cue_oracle, point_depth) need the "
                           "'occupancy' field in stage.datamodule.fields")
        occ = batch["occupancy"]
        idx = torch.nonzero(occ[:, 0] > 0.5)  # [K, 4] (b, x, y, z)
        return coords_to_points(idx[:, 1:], occ.shape[-1]), idx[:, 0]

    def occupancy_blocks(self, occupancy: Tensor) -> Tensor:
        """``[B, 1, R, R, R]`` occupancy → ``[B, r³, f³]``: each latent voxel's block, in token order
        (x·r² + y·r + z) and x-major within the block."""
        b, f, r = occupancy.shape[0], self.occupancy_factor, self.model.resolution
        blocks = occupancy.reshape(b, r, f, r, f, r, f).permute(0, 1, 3, 5, 2, 4, 6)
        return blocks.reshape(b, r**3, f**3)

    def _occupancy_logits(self, batch: dict[str, Any], prepared: tuple[Tensor, dict[str, Any]]) -> Tensor | None:
        if self.occupancy_head is None:
            return None
        if "occupancy" not in batch:
            raise KeyError("occupancy_aux_weight needs the 'occupancy' field in stage.datamodule.fields")
        return self.occupancy_head(prepared[1]["cond_3d"]).float()  # [B, r³, f³]

    def auxiliary_losses(self, batch: dict[str, Any], prepared: tuple[Tensor, dict[str, Any]]) -> dict[str, Tensor]:
        out = super().auxiliary_losses(batch, prepared)
        logits = self._occupancy_logits(batch, prepared)
        if logits is not None:
            # BCE + soft Dice, as the SS-VAE: chunks are ~6 % occupied, and BCE alone let the head settle on
            # "empty" (held-out head IoU 0.018 after 936 steps on the H200, session 5).
            target = self.occupancy_blocks(batch["occupancy"]).to(logits.dtype)
            bce = F.binary_cross_entropy_with_logits(logits, target)
            out["occ_aux"] = self.occupancy_aux_weight * (bce + soft_dice_loss(logits, target))
        return out

    def _check_decoder(self) -> None:
        # At training time, not at build: inference rebuilds the stage from its checkpoint without ss_vae_ckpt.
        if self.decoded_occupancy_weight > 0 and self.ss_decoder is None:
            raise ValueError("decoded_occupancy_weight needs the SS-VAE that decodes the estimate: set "
                             "stage.module.ss_vae_ckpt")
        if self.symmetry_augment and self.ss_encoder is None:
            raise ValueError("symmetry_augment re-encodes the turned chunks' latents: set stage.module.ss_vae_ckpt")

    def augment(self, batch: dict[str, Any]) -> dict[str, Any]:
        if not self.symmetry_augment:
            return batch
        if "occupancy" not in batch:
            raise KeyError("symmetry_augment needs the 'occupancy' field in stage.datamodule.fields")
        gen = step_generator(self.augment_seed, self.global_step, self.global_rank)
        n = batch["occupancy"].shape[0]
        turns = torch.randint(0, 4, (n,), generator=gen).tolist()
        mirror = torch.randint(0, 2, (n,), generator=gen).bool().tolist()
        return augment_chunk_batch(batch, turns, mirror, self.encode_occupancy)

    @torch.no_grad()
    def encode_occupancy(self, occupancy: Tensor) -> Tensor:
        """The SS-VAE posterior mean ``[B, 8, r, r, r]`` of ``occupancy [B, 1, R, R, R]``, in float32 as the encode
        step stored it (``symmetry_augment``; needs ``ss_vae_ckpt``)."""
        if self.ss_encoder is None:
            raise ValueError("encoding occupancy needs the SS-VAE: set stage.module.ss_vae_ckpt")
        vae = self.ss_encoder.to(occupancy.device)
        with torch.autocast(occupancy.device.type, enabled=False):
            return vae.encode(occupancy.float())

    def on_fit_start(self) -> None:
        self._check_decoder()
        super().on_fit_start()

    def estimate_losses(self, batch: dict[str, Any], out: FlowLoss) -> dict[str, Tensor]:
        losses = super().estimate_losses(batch, out)
        if self.decoded_occupancy_weight <= 0:
            return losses
        self._check_decoder()
        if "occupancy" not in batch:
            raise KeyError("decoded_occupancy_weight needs the 'occupancy' field in stage.datamodule.fields")
        keep = ~out.dropped  # an unconditional estimate is the prior's mean: no chunk's occupancy to match
        if not keep.any():
            return {**losses, "occ_decoded": out.x0_pred.sum() * 0.0}  # keeps every rank's graph alike under DDP
        decoder = self.ss_decoder.to(self.device)
        logits = decoder(self.denormalise(out.x0_pred[keep], 1)).float()  # [b, 1, R, R, R]
        target = batch["occupancy"][keep].to(logits.dtype)
        term = F.binary_cross_entropy_with_logits(logits, target) + soft_dice_loss(logits, target)
        return {**losses, "occ_decoded": self.decoded_occupancy_weight * term}

    def auxiliary_metrics(self, batch: dict[str, Any], prepared: tuple[Tensor, dict[str, Any]]) -> dict[str, Tensor]:
        out = super().auxiliary_metrics(batch, prepared)
        logits = self._occupancy_logits(batch, prepared)
        if logits is not None:
            pred, true = logits > 0, self.occupancy_blocks(batch["occupancy"]) > 0.5
            inter = (pred & true).sum().float()
            out["occ_aux_iou"] = inter / (pred | true).sum().clamp(min=1).float()
        return out

    @torch.no_grad()
    def sample_occupancy(self, batch: dict[str, Any], decoder: nn.Module, seed: int = 0,
                         draw_mean: str = "latent") -> Tensor:
        """Occupancy logits ``[B, 1, R, R, R]`` (float32) of the batch's sampled structure, decoded by ``decoder``
        (the SS-VAE's). With the sampler's ``draws`` K > 1, ``draw_mean`` says what is averaged over the draws:
        ``"latent"``, the mean latent decoded once, or ``"occupancy"``, the mean of the K decoded occupancy
        probabilities, returned as its logit. The second is the per-voxel posterior occupancy that a thresholded
        IoU rewards; a mean latent is decoded by a VAE that never saw one."""
        if draw_mean not in DRAW_MEANS:
            raise ValueError(f"draw_mean {draw_mean!r}: expected one of {DRAW_MEANS}")
        dtype = next(decoder.parameters()).dtype

        def decode(z: Tensor) -> Tensor:
            # outside any sampling autocast: logits near the threshold keep the decoder's own precision
            with torch.autocast(z.device.type, enabled=False):
                return decoder(self.denormalise(z, 1).to(dtype)).float()

        if draw_mean == "latent" or self.sampler.draws == 1:
            return decode(self.sample(batch, seed))
        return occupancy_logit(self.sample(batch, seed, transform=lambda z: torch.sigmoid(decode(z))))

    def sample_metrics(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """IoU of a sample (``val/sample_iou``) and of the one-step estimate of E[x0 | views] from the same noise
        (``val/x0_iou``). A sample's IoU can fall while the loss falls, as the flow sharpens its samples before it
        places them (session 17); the one-step estimate is the steadier measure of placement."""
        if self.ss_decoder is None or "occupancy" not in batch:
            return {}
        decoder, occ = self.ss_decoder.to(self.device), batch["occupancy"]
        out = {"val/sample_iou": occupancy_iou(self.sample_occupancy(batch, decoder), occ, self.occ_threshold)}
        with overridden(self.sampler, steps=1):
            out["val/x0_iou"] = occupancy_iou(self.sample_occupancy(batch, decoder), occ, self.occ_threshold)
        return {k: v.mean() for k, v in out.items()}


class _SparseFlowStage(FlowStage):
    def surface_points(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """Centres of the active latent cells (the coarse structure the stage generates on)."""
        coords = batch["shape_coords"]
        return coords_to_points(coords[:, 1:], self.model.resolution), coords[:, 0].long()

    def _cond_3d(self, batch: dict[str, Any], tokens: Tensor) -> Tensor | None:
        if not self.model.has_cond_3d:
            return None
        return self.model.cond_3d_from_views(batch["shape_coords"], tokens, batch["w2c"], batch["intrinsics"],
                                             batch["view_mask"], self.proj_batch_voxels, images=batch["views"])


class ShapeFlowStage(_SparseFlowStage):
    """``stage=shape_flow``: 32-channel latent on the ground-truth sparse coordinates, uniform t."""

    latent = "shape"

    def flow_inputs(self, batch: dict[str, Any], tokens: Tensor) -> dict[str, Any]:
        coords, offsets = batch["shape_coords"], batch.get("shape_token_offsets")

        def model_fn(x_t: Tensor, t: Tensor, c2: Tensor, c3: Tensor | None) -> Tensor:
            # Tokens stay in collate order through the objective and the sampler (CFG dropout and guidance
            # zero conditions with torch.where), so the collate's offsets describe x_t as well.
            return self.model(x_t, t, c2, c3, coords=coords, offsets=offsets)

        return {"x0": self.normalise(batch["shape_feats"], 1), "cond_3d": self._cond_3d(batch, tokens),
                "batch_idx": coords[:, 0].long(), "model_fn": model_fn}


class TextureFlowStage(_SparseFlowStage):
    """``stage=tex_flow``: input = noise (32) ‖ normalised shape latent (32), output the texture velocity (32).

    ``shape_stats``: the shape latent's statistics (the same ``stats.json``) for its normalisation.
    """

    latent = "tex"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        mean, std = load_latent_stats(self.hparams.get("latent_stats"), "shape", self.hparams["latent_channels"])
        self.register_buffer("shape_mean", mean)
        self.register_buffer("shape_std", std)

    def flow_inputs(self, batch: dict[str, Any], tokens: Tensor) -> dict[str, Any]:
        coords, offsets = batch["shape_coords"], batch.get("shape_token_offsets")
        shape = (batch["shape_feats"] - self.shape_mean) / self.shape_std

        def model_fn(x_t: Tensor, t: Tensor, c2: Tensor, c3: Tensor | None) -> Tensor:
            return self.model(x_t, t, c2, c3, coords=coords, concat_cond=shape, offsets=offsets)

        return {"x0": self.normalise(batch["tex_feats"], 1), "cond_3d": self._cond_3d(batch, tokens),
                "batch_idx": coords[:, 0].long(), "model_fn": model_fn}
