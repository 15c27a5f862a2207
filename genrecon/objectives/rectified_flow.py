"""Rectified-flow objective (TRELLIS / TRELLIS.2 / GenRecon).

Path: x_t = (1 − t)·x0 + (σ_min + (1 − σ_min)·t)·ε, t ∈ [0, 1] (t = 1 is noise).
Target velocity: v = (1 − σ_min)·ε − x0. Loss: MSE over all elements (for packed sparse feats, over all active
voxels' features of the batch). Classifier-free guidance is trained by zeroing cond_2d AND cond_3d together
for a random p_uncond of the samples.

Tensors are either dense [B, ...] or packed sparse feats [K, C] with ``batch_idx`` [K] naming each token's
sample.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

# model_fn(x_t, t [B] in [0, 1], cond_2d, cond_3d) -> predicted velocity, shaped like x_t.
ModelFn = Callable[[Tensor, Tensor, Tensor, Tensor | None], Tensor]

T_SCHEDULES = ("logit_normal", "uniform")


def per_sample(values: Tensor, x: Tensor, batch_idx: Tensor | None) -> Tensor:
    """Broadcast per-sample values [B] against x: dense x [B, ...] -> [B, 1, ...]; packed [K, C] -> [K, 1]."""
    if batch_idx is None:
        return values.view(-1, *([1] * (x.dim() - 1)))
    return values[batch_idx].view(-1, *([1] * (x.dim() - 1)))


def x0_from_velocity(x_t: Tensor, t: Tensor | float, v: Tensor, sigma_min: float) -> Tensor:
    """The x0 that velocity ``v`` implies at ``x_t`` on the path x_t = (1 − t)·x0 + (σ + (1 − σ)·t)·ε,
    v = (1 − σ)·ε − x0: (1 − σ)·x_t − (σ + (1 − σ)·t)·v; ``t`` broadcastable against ``x_t``."""
    return (1 - sigma_min) * x_t - (sigma_min + (1 - sigma_min) * t) * v


@dataclass
class FlowLoss:
    """loss: scalar MSE; per_sample [B]: each sample's MSE (for logging by t); t [B]; dropped [B] bool;
    x0_pred (like x0, with its graph): the model's one-step estimate of x0, only when ``loss(return_x0=True)``."""

    loss: Tensor
    per_sample: Tensor
    t: Tensor
    dropped: Tensor
    x0_pred: Tensor | None = None


class RectifiedFlow:
    """Rectified flow with logit-normal or uniform t and joint CFG dropout of both conditions."""

    def __init__(
        self,
        sigma_min: float = 1e-5,
        t_schedule: str = "logit_normal",
        mean: float = 1.0,
        std: float = 1.0,
        p_uncond: float = 0.1,
        p_endpoint: float = 0.0,
    ) -> None:
        """t_schedule "logit_normal": t = sigmoid(N(mean, std)) (sparse structure, biased to noisy t);
        "uniform": t ~ U(0, 1) (shape and texture).

        p_endpoint (a deviation, 0 as published): a share of the samples gets t = 1 exactly, pure noise, where
        the velocity target asks for E[x0 | condition], the sampler's first step and the whole of a one-step
        sample. Session 15 measured how much that end matters: logit-normal(1, 1) for the texture flow, which
        almost never draws t > 0.99, cost 1.66 dB of one-step PSNR against uniform t (and gained 0.32 dB at
        12 steps)."""
        if t_schedule not in T_SCHEDULES:
            raise ValueError(f"unknown t_schedule {t_schedule!r}; choose from {T_SCHEDULES}")
        if not 0.0 <= p_uncond <= 1.0:
            raise ValueError(f"p_uncond must be in [0, 1], got {p_uncond}")
        if not 0.0 <= p_endpoint <= 1.0:
            raise ValueError(f"p_endpoint must be in [0, 1], got {p_endpoint}")
        self.sigma_min = sigma_min
        self.t_schedule = t_schedule
        self.mean = mean
        self.std = std
        self.p_uncond = p_uncond
        self.p_endpoint = p_endpoint

    def sample_t(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """[B] float32 times in (0, 1), and exactly 1 for a share ``p_endpoint`` of them."""
        if self.t_schedule == "uniform":
            t = torch.rand(batch_size, device=device, generator=generator)
        else:
            normal = torch.randn(batch_size, device=device, generator=generator)
            t = torch.sigmoid(normal * self.std + self.mean)
        if self.p_endpoint > 0:
            # Drawn after t, so p_endpoint = 0 keeps the published stream of times bit for bit.
            end = torch.rand(batch_size, device=device, generator=generator) < self.p_endpoint
            t = torch.where(end, torch.ones_like(t), t)
        return t

    def add_noise(self, x0: Tensor, t: Tensor, noise: Tensor, batch_idx: Tensor | None = None) -> Tensor:
        """x_t = (1 − t)·x0 + (σ_min + (1 − σ_min)·t)·ε; t [B], x0/noise dense [B, ...] or packed [K, C]."""
        tt = per_sample(t, x0, batch_idx).to(x0.dtype)
        return (1 - tt) * x0 + (self.sigma_min + (1 - self.sigma_min) * tt) * noise

    def velocity_target(self, x0: Tensor, noise: Tensor) -> Tensor:
        """v = (1 − σ_min)·ε − x0 = d x_t / dt."""
        return (1 - self.sigma_min) * noise - x0

    def x0_from_velocity(self, x_t: Tensor, t: Tensor, v: Tensor, batch_idx: Tensor | None = None) -> Tensor:
        """:func:`x0_from_velocity` with per-sample ``t [B]`` (dense ``x_t`` or packed with ``batch_idx``)."""
        return x0_from_velocity(x_t, per_sample(t, x_t, batch_idx).to(v.dtype), v, self.sigma_min)

    def drop_conditions(
        self,
        cond_2d: Tensor,
        cond_3d: Tensor | None = None,
        batch_idx: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        """Zero both conditions of a random p_uncond of the samples (the CFG negative is zeros of both).

        cond_2d [B, T, C]; cond_3d dense [B, V, C] or packed [K, C] with batch_idx [K].
        Returns (cond_2d, cond_3d, dropped [B] bool). ``where`` keeps cond_3d's graph for the kept samples.
        """
        batch = cond_2d.shape[0]
        dropped = torch.rand(batch, device=cond_2d.device, generator=generator) < self.p_uncond
        cond_2d = torch.where(per_sample(dropped, cond_2d, None), torch.zeros_like(cond_2d), cond_2d)
        if cond_3d is not None:
            mask = per_sample(dropped, cond_3d, batch_idx)
            cond_3d = torch.where(mask, torch.zeros_like(cond_3d), cond_3d)
        return cond_2d, cond_3d, dropped

    def loss(
        self,
        model_fn: ModelFn,
        x0: Tensor,
        cond_2d: Tensor,
        cond_3d: Tensor | None = None,
        *,
        batch_idx: Tensor | None = None,
        t: Tensor | None = None,
        noise: Tensor | None = None,
        cfg_dropout: bool = True,
        generator: torch.Generator | None = None,
        return_x0: bool = False,
    ) -> FlowLoss:
        """Flow-matching MSE for one batch.

        x0 dense [B, ...] or packed feats [K, C] with batch_idx [K] (B = cond_2d.shape[0]); cond as in
        ``drop_conditions``; t [B] and noise (like x0) are drawn when omitted; cfg_dropout=False for
        validation; return_x0 also returns the prediction as an x0 estimate (``FlowLoss.x0_pred``).
        """
        batch = cond_2d.shape[0]
        if t is None:
            t = self.sample_t(batch, x0.device, generator)
        if noise is None:
            noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        dropped = torch.zeros(batch, dtype=torch.bool, device=x0.device)
        if cfg_dropout and self.p_uncond > 0:
            cond_2d, cond_3d, dropped = self.drop_conditions(cond_2d, cond_3d, batch_idx, generator)
        x_t = self.add_noise(x0, t, noise, batch_idx)
        pred = model_fn(x_t, t, cond_2d, cond_3d)
        target = self.velocity_target(x0, noise)
        if pred.shape != target.shape:
            raise ValueError(
                f"model output {tuple(pred.shape)} does not match the target {tuple(target.shape)}"
            )
        sq = (pred.float() - target.float()).square()
        if batch_idx is None:
            sample_mse = sq.flatten(1).mean(dim=1)
        else:
            token_mse = sq.mean(dim=-1)
            # index_add, not bincount: bincount reads its range back to the host (a sync before backward).
            counts = torch.zeros(batch, device=sq.device).index_add_(0, batch_idx, torch.ones_like(token_mse))
            sample_mse = torch.zeros(batch, device=sq.device).index_add_(0, batch_idx, token_mse) / counts.clamp(min=1)
        x0_pred = self.x0_from_velocity(x_t, t, pred.float(), batch_idx) if return_x0 else None
        return FlowLoss(loss=sq.mean(), per_sample=sample_mse.detach(), t=t, dropped=dropped, x0_pred=x0_pred)
