"""What every GenRecon stage shares: optimiser groups, warm-up schedule, adaptive clipping, EMA.

A stage is a thin LightningModule around a model and a loss. This base gives it the published training
recipe (AdamW (0.9, 0.95), linear warm-up then constant, EMA of the weights, gradient clipping at the 95th
percentile of recent norms capped at 1.0) so the stages themselves only say what a step computes.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging
from torch import nn


def to_primitive(value: Any) -> Any:
    """OmegaConf containers and tuples -> plain dicts and lists, recursively."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, dict):
        return {k: to_primitive(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_primitive(v) for v in value]
    return value


def clean_name(name: str) -> str:
    """A parameter name without the wrappers FSDP and activation checkpointing insert."""
    for wrapper in ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod."):
        name = name.replace(wrapper, "")
    return name


def is_decayed(name: str, param: nn.Parameter) -> bool:
    """Weight decay applies to weight matrices only: never to biases, norms, embeddings' scalars or gains."""
    return param.ndim >= 2 and "norm" not in name and not name.endswith(".bias")


class AdaptiveGradClipper:
    """Clips the global gradient norm at ``min(max_norm, percentile of the last `window` norms)`` once the
    window is full (``max_norm`` before); the history is part of the checkpoint so a resumed run clips the
    same way."""

    def __init__(self, max_norm: float = 1.0, percentile: float = 95.0, window: int = 1000) -> None:
        self.max_norm = max_norm
        self.percentile = percentile
        self.history: deque[float] = deque(maxlen=window)

    def clip_value(self) -> float:
        if len(self.history) < (self.history.maxlen or 0):
            return self.max_norm
        return float(min(self.max_norm, np.percentile(np.fromiter(self.history, float), self.percentile)))

    def __call__(self, parameters: Iterable[nn.Parameter], clip_fn=None) -> tuple[float, float]:
        """Clip in place; returns ``(norm before clipping, clip value used)``. ``clip_fn(value) -> norm``
        replaces torch's clip for sharded models, whose global norm only the wrapper can compute."""
        value = self.clip_value()
        if clip_fn is not None:
            norm = float(clip_fn(value))
        else:
            params = [p for p in parameters if p.grad is not None]
            if not params:
                return 0.0, value
            norm = float(torch.nn.utils.clip_grad_norm_(params, value))
        if np.isfinite(norm):
            self.history.append(norm)
        return norm, value

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history.clear()
        self.history.extend(state.get("history", []))


def ema_decay_at(decay: float, updates: int, warmup: bool) -> float:
    """The EMA's decay at its ``updates``-th average (the first copies the weights): ``decay``, or with
    ``warmup`` min(decay, (1 + n) / (10 + n)), so the starting weights fade as fast as the run goes on."""
    return min(decay, (1.0 + updates) / (10.0 + updates)) if warmup else decay


def ema_multi_avg_fn(decay: float, warmup: bool = False) -> Any:
    """``torch.optim.swa_utils.AveragedModel``'s ``multi_avg_fn``: one fused lerp over all parameters with the
    decay of :func:`ema_decay_at`.

    The average calls it once per (device, dtype) group of tensors at every update. With ``warmup`` each group
    counts its own updates, from the saved ``n_averaged`` read once (a host sync), so a resumed run continues
    the same decays without a sync per step."""
    counts: dict[tuple[int, int], int] = {}

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        d = decay
        if warmup:
            group = (averaged[0].data_ptr(), len(averaged))  # the averaged tensors' storage: fixed for the run
            n = counts[group] = counts[group] + 1 if group in counts else int(n_averaged)
            d = ema_decay_at(decay, n, True)
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1.0 - d)
        else:
            for a, c in zip(averaged, current, strict=True):
                a.copy_(a * d + c * (1.0 - d))

    return update


class FusedEMA(EMAWeightAveraging):
    """Lightning's EMA with one fused (foreach) update over all parameters per step instead of one per tensor
    (~1.6k small ops per step for a flow stage, profiled), and the same checkpoint state key, so runs saved
    before this class resume with their average.

    ``warmup`` (a deviation, see :func:`ema_decay_at`): a plain EMA still holds decay^n of the initial weights
    after n steps, 6 % for session 15's 2,765-step view pretraining at 0.999, and averages over about
    1 / (1 - decay) steps however short the run; with warm-up it spans about a tenth of the steps so far, up to
    that.
    """

    def __init__(self, decay: float, warmup: bool = False) -> None:
        super().__init__(decay=decay)
        self._kwargs.pop("avg_fn", None)
        self._kwargs["multi_avg_fn"] = ema_multi_avg_fn(decay, warmup)

    @property
    def state_key(self) -> str:
        return "EMAWeightAveraging"


def lr_factor(step: int, warmup: int, decay: int | None = None, min_ratio: float = 0.1,
              anchor: tuple[int, float] | None = None) -> float:
    """Learning-rate multiplier at optimiser ``step``: linear warm-up over ``warmup`` steps, then constant, or
    with ``decay`` a cosine from 1 at the end of the warm-up to ``min_ratio`` at step ``decay``.

    ``anchor`` = (step a, progress q) re-times the cosine from step a on: progress runs linearly from q at a to 1
    at ``decay`` (default (warmup, 0)). Moving ``decay`` with the anchor at the current step and progress keeps
    the rate continuous (``callbacks.time_budget`` refits the decay end that way when the step rate changes).
    """
    warm = min(1.0, (step + 1) / max(1, warmup))
    if decay is None or step < warmup:
        return warm
    progress = decay_progress(step, warmup, decay, anchor)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def decay_progress(step: int, warmup: int, decay: int, anchor: tuple[int, float] | None = None) -> float:
    """The cosine's progress in [0, 1] at ``step`` under :func:`lr_factor`'s schedule."""
    if step < warmup:
        return 0.0
    a, q = anchor if anchor is not None else (warmup, 0.0)
    return min(1.0, q + (1.0 - q) * max(0, step - a) / max(1, decay - a))


class Stage(L.LightningModule):
    """Base LightningModule of the stages.

    Args:
        lr: learning rate of the base parameters; ``lr_new`` (default ``lr``) of parameters whose name starts
            with one of ``new_parameter_prefixes`` (the conditioning pathway when fine-tuning).
        weight_decay / weight_decay_new: AdamW decay of weight matrices in each group (never biases or norms).
        warmup_steps: linear warm-up from 0, then constant (the published schedule has no decay).
        decay_steps: if set, cosine decay after the warm-up, reaching ``min_lr_ratio`` × lr at step
            ``decay_steps`` and staying there: for short, time-budgeted runs, where a constant rate leaves the
            weights noisy at the end. None (default): the published constant rate.
        ema_decay: EMA of the weights (validation and checkpoints' ``state_dict`` use the average); None: off.
        ema_warmup: ramp the EMA's decay up with the step count (:class:`FusedEMA`); False: the published EMA.
        grad_clip_max / grad_clip_percentile / grad_clip_window: adaptive clipping; ``grad_clip_max=None``
            switches clipping off.
    """

    new_parameter_prefixes: Sequence[str] = ()

    def __init__(
        self,
        lr: float = 1e-4,
        lr_new: float | None = None,
        weight_decay: float = 0.0,
        weight_decay_new: float | None = None,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 0,
        decay_steps: int | None = None,
        min_lr_ratio: float = 0.1,
        ema_decay: float | None = None,
        ema_warmup: bool = False,
        grad_clip_max: float | None = 1.0,
        grad_clip_percentile: float = 95.0,
        grad_clip_window: int = 1000,
    ) -> None:
        super().__init__()
        self.lr = lr
        self.lr_new = lr if lr_new is None else lr_new
        self.weight_decay = weight_decay
        self.weight_decay_new = weight_decay if weight_decay_new is None else weight_decay_new
        self.betas = tuple(betas)
        self.warmup_steps = warmup_steps
        self.decay_steps = decay_steps
        self.decay_anchor: tuple[int, float] | None = None  # set with decay_steps by callbacks.time_budget
        self.min_lr_ratio = min_lr_ratio
        self.ema_decay = ema_decay
        self.ema_warmup = ema_warmup
        self.clipper = (
            AdaptiveGradClipper(grad_clip_max, grad_clip_percentile, grad_clip_window) if grad_clip_max else None
        )
        # Set by the train task: the resolved Hydra config that built this module, saved with every checkpoint
        # so inference can rebuild the stage without the training config (genrecon.stages.loading).
        self.build_config: dict[str, Any] | None = None

    # ------------------------------------------------------------------ optimisation
    def setup(self, stage: str) -> None:
        # Decided on the unwrapped model: FSDP later flattens every parameter to 1-D.
        self._decayed = {clean_name(n) for n, p in self.named_parameters() if is_decayed(n, p)}

    def parameter_groups(self) -> list[dict[str, Any]]:
        decayed = getattr(self, "_decayed", None)
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            name = clean_name(name)
            new = any(name.startswith(p) or f".{p}" in name for p in self.new_parameter_prefixes)
            decay = name in decayed if decayed is not None else is_decayed(name, param)
            groups.setdefault((new, decay), []).append(param)
        out = []
        for (new, decayed), params in sorted(groups.items()):
            wd = (self.weight_decay_new if new else self.weight_decay) if decayed else 0.0
            out.append({"params": params, "lr": self.lr_new if new else self.lr, "weight_decay": wd,
                        "name": f"{'new' if new else 'base'}{'' if decayed else '_no_decay'}"})
        return out

    def configure_optimizers(self) -> dict[str, Any]:
        groups = self.parameter_groups()
        fused = all(p.is_cuda for g in groups for p in g["params"])
        optimizer = torch.optim.AdamW(groups, betas=self.betas, eps=1e-8, fused=fused or None)

        def factor(step: int) -> float:
            # Reads decay_steps on every step: callbacks.time_budget may set it once the step rate is known.
            return lr_factor(step, int(self.warmup_steps), self.decay_steps, self.min_lr_ratio, self.decay_anchor)

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        if self.clipper is None:
            return
        wrapped = getattr(self.trainer.strategy, "model", None) if self._trainer is not None else None
        clip_fn = wrapped.clip_grad_norm_ if type(wrapped).__name__ == "FullyShardedDataParallel" else None
        norm, value = self.clipper((p for g in optimizer.param_groups for p in g["params"]), clip_fn)
        self.log_dict({"train/grad_norm": norm, "train/grad_clip": value}, on_step=True, prog_bar=False)

    def configure_callbacks(self) -> list[L.Callback]:
        if self.ema_decay is None:
            return []
        return [FusedEMA(decay=self.ema_decay, warmup=self.ema_warmup)]

    # ------------------------------------------------------------------ checkpoint extras
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Hydra hands lists/dicts in as OmegaConf containers; plain types keep checkpoints loadable with
        # torch's weights_only=True default.
        if "hyper_parameters" in checkpoint:
            checkpoint["hyper_parameters"] = to_primitive(dict(checkpoint["hyper_parameters"]))
        if self.clipper is not None:
            checkpoint["grad_clipper"] = self.clipper.state_dict()
        if self.build_config is not None:
            checkpoint["genrecon"] = to_primitive(self.build_config)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.clipper is not None and "grad_clipper" in checkpoint:
            self.clipper.load_state_dict(checkpoint["grad_clipper"])
