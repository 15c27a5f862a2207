"""Fit the learning-rate decay to a wall-clock budget (``trainer.max_time``).

Time-budgeted runs (benchmarks on a lent GPU) do not know how many steps they will reach, so a step-based
cosine decay either ends early or never finishes. ``TimeBudgetDecay`` measures the step rate over the first
``measure_steps`` optimiser steps, predicts the step at which ``max_time`` runs out and sets the stage's
``decay_steps`` to it (times ``margin``): the cosine of :func:`genrecon.stages.base.lr_factor` then reaches its
floor just before the run ends. Rank 0's estimate is broadcast, so every DDP rank follows the same schedule;
the value is saved in checkpoints and restored on resume; a run resumed to *extend* its budget (a larger
``max_time``) sets ``refit_on_resume`` and re-measures, so its cosine restarts part-way and decays over the new
budget instead of staying at its floor. When the budget ends the run between two periodic
checkpoints, it also writes ``last.ckpt`` of the final step, so the minutes since the last checkpoint are not
lost. Without ``max_time`` it does nothing.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, Timer

log = logging.getLogger(__name__)


class TimeBudgetDecay(Callback):
    """Sets ``pl_module.decay_steps`` from the measured step rate and the time left (module docstring).

    Args:
        measure_steps: optimiser steps timed before the estimate (after the first, which compiles and warms
            caches).
        margin: fraction of the predicted remaining steps to decay over (< 1 leaves slack for validation and
            checkpoint pauses).
        refit_on_resume: on resume, measure again and fit the decay to the budget left now (for a resume
            that extends ``max_time``); False keeps the schedule the run started with.
    """

    def __init__(self, measure_steps: int = 50, margin: float = 0.9, refit_on_resume: bool = False) -> None:
        if measure_steps < 1 or not 0 < margin <= 1:
            raise ValueError("measure_steps must be >= 1 and margin in (0, 1]")
        self.measure_steps = measure_steps
        self.margin = margin
        self.refit_on_resume = refit_on_resume
        self.decay_steps: int | None = None
        self._start: tuple[float, int] | None = None

    @staticmethod
    def _timer(trainer: L.Trainer) -> Timer | None:
        return next((c for c in trainer.callbacks if isinstance(c, Timer)), None)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.decay_steps is None:
            return
        # Resumed. Until the refit (measure_steps later) the old schedule holds, at its floor if it had ended.
        pl_module.decay_steps = self.decay_steps
        if self.refit_on_resume:
            self.decay_steps, self._start = None, None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.decay_steps is not None or self._timer(trainer) is None:
            return
        step = trainer.global_step
        if self._start is None:  # the first step includes compilation and loader start-up: time from here
            self._start = (time.monotonic(), step)
            return
        t0, s0 = self._start
        if step - s0 < self.measure_steps:
            return
        rate = (step - s0) / max(time.monotonic() - t0, 1e-6)
        remaining = self._timer(trainer).time_remaining("train") or 0.0
        decay = int(step + rate * remaining * self.margin)
        decay = int(trainer.strategy.broadcast(decay, src=0))
        self.decay_steps = max(decay, step + 1)
        pl_module.decay_steps = self.decay_steps
        log.info(f"time budget: {rate:.2f} steps/s, {remaining:.0f} s left -> lr decays until step {decay}")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        ckpt = trainer.checkpoint_callback
        if self._timer(trainer) is None or ckpt is None or not getattr(ckpt, "dirpath", None):
            return
        if trainer.global_step > 0 and getattr(ckpt, "_last_global_step_saved", -1) != trainer.global_step:
            trainer.save_checkpoint(Path(ckpt.dirpath) / "last.ckpt")
            log.info(f"time budget: final checkpoint at step {trainer.global_step}")

    def state_dict(self) -> dict[str, Any]:
        return {"decay_steps": self.decay_steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.decay_steps = state_dict.get("decay_steps")
