"""Fit the learning-rate decay to a wall-clock budget (``trainer.max_time``).

Time-budgeted runs (benchmarks on a lent GPU) do not know how many steps they will reach, so a step-based
cosine decay either ends early or never finishes. ``TimeBudgetDecay`` measures the step rate over the first
``measure_steps`` optimiser steps, predicts the step at which ``max_time`` runs out and sets the stage's
``decay_steps`` to it (times ``margin``): the cosine of :func:`genrecon.stages.base.lr_factor` then reaches its
floor just before the run ends. The rate of the first steps can mislead (session 7: a job sharing the GPU
measured 0.75 steps/s over its first steps, ran at 1.7, and sat at its floor for 60 % of the run), so every
``refit_seconds`` (turned into a step interval at the first fit, the same on every rank) the rate of the last
interval predicts the end again; when it moves by more than ``refit_tolerance``, the decay end moves and the
cosine is re-anchored at the current step and progress, so the learning rate stays continuous. Rank 0's estimate is
broadcast, so every DDP rank follows the same schedule; the value is saved in checkpoints and restored on resume; a
run resumed to *extend* its budget (a larger ``max_time``) sets ``refit_on_resume`` and re-measures, so its cosine
restarts part-way and decays over the new budget instead of staying at its floor. When the budget ends the run
between two periodic checkpoints, it also writes ``last.ckpt`` of the final step, so the minutes since the last
checkpoint are not lost. With ``horizon_minutes`` the decay spans that much training time over all resumed runs
(a run spread over several device calls, each with its own ``max_time``) instead of ending with this run's budget.
Without ``max_time`` it does nothing.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, Timer

from genrecon.stages.base import decay_progress

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
        refit_seconds: about how often (wall clock, converted to steps at the first fit) the end is predicted
            again from the latest rate; None: fit once.
        refit_tolerance: relative change of the remaining decay steps that moves the end.
        horizon_minutes: the training time, counted over the resumed runs too (the timer's saved elapsed time),
            that the decay spans; None: this run's ``max_time``. A run that stops earlier stops above the floor.
            A run resumed with the horizon it was fitted to keeps its schedule whatever ``refit_on_resume`` says.
    """

    def __init__(self, measure_steps: int = 50, margin: float = 0.9, refit_on_resume: bool = False,
                 refit_seconds: float | None = 60.0, refit_tolerance: float = 0.1,
                 horizon_minutes: float | None = None) -> None:
        if measure_steps < 1 or not 0 < margin <= 1:
            raise ValueError("measure_steps must be >= 1 and margin in (0, 1]")
        if horizon_minutes is not None and horizon_minutes <= 0:
            raise ValueError("horizon_minutes must be positive or None")
        self.horizon_minutes = horizon_minutes
        if refit_seconds is not None and refit_seconds <= 0:
            raise ValueError("refit_seconds must be positive or None")
        self.measure_steps = measure_steps
        self.margin = margin
        self.refit_on_resume = refit_on_resume
        self.refit_seconds = refit_seconds
        self.refit_tolerance = refit_tolerance
        self.decay_steps: int | None = None
        self.anchor: tuple[int, float] | None = None
        self.refit_every: int | None = None  # steps between refits, fixed at the first fit
        self._start: tuple[float, int] | None = None
        self._last: tuple[float, int] | None = None  # clock and step of the latest fit
        self._saved_horizon: float | None = None  # the horizon of the schedule restored from a checkpoint

    @staticmethod
    def _timer(trainer: L.Trainer) -> Timer | None:
        return next((c for c in trainer.callbacks if isinstance(c, Timer)), None)

    def _remaining(self, trainer: L.Trainer) -> float:
        """Seconds of training the decay still spans: to ``horizon_minutes`` when set, else to ``max_time``."""
        timer = self._timer(trainer)
        if self.horizon_minutes is None:
            return timer.time_remaining("train") or 0.0
        return max(0.0, self.horizon_minutes * 60 - (timer.time_elapsed("train") or 0.0))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.decay_steps is None:
            return
        # Resumed. Until the refit (measure_steps later) the old schedule holds, at its floor if it had ended.
        pl_module.decay_steps, pl_module.decay_anchor = self.decay_steps, self.anchor
        self._last = None  # the clock of the old run means nothing now
        # A schedule fitted to this same horizon already spans the resumed runs: it holds (the periodic refits
        # still follow the rate); fitting it afresh would drop the refits' anchor and make the rate jump.
        same_horizon = self.horizon_minutes is not None and self._saved_horizon == self.horizon_minutes
        if self.refit_on_resume and not same_horizon:
            self.decay_steps, self.anchor, self._start = None, None, None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._timer(trainer) is None:
            return
        if self.decay_steps is not None:
            self._refit(trainer, pl_module)
            return
        step = trainer.global_step
        if self._start is None:  # the first step includes compilation and loader start-up: time from here
            self._start = (time.monotonic(), step)
            return
        t0, s0 = self._start
        if step - s0 < self.measure_steps:
            return
        now = time.monotonic()
        rate = (step - s0) / max(now - t0, 1e-6)
        remaining = self._remaining(trainer)
        decay = int(step + rate * remaining * self.margin)
        every = max(1, int(rate * self.refit_seconds)) if self.refit_seconds is not None else 0
        decay, every = trainer.strategy.broadcast((decay, every), src=0)
        self.decay_steps, self.anchor = max(int(decay), step + 1), None
        self.refit_every = int(every) or None
        self._last = (now, step)
        pl_module.decay_steps, pl_module.decay_anchor = self.decay_steps, None
        log.info(f"time budget: {rate:.2f} steps/s, {remaining:.0f} s left -> lr decays until step {decay}")

    def _refit(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Every ``refit_every`` steps (on every rank alike): predict the end from the latest interval's rate and
        move it, re-anchored for a continuous rate, when it changed by more than the tolerance."""
        step = trainer.global_step
        if self.refit_every is None or step % self.refit_every:
            return
        now = time.monotonic()
        if self._last is None:  # resumed: this interval starts the clock
            self._last = (now, step)
            return
        progress = decay_progress(step, int(pl_module.warmup_steps), self.decay_steps, self.anchor)
        t0, s0 = self._last
        self._last = (now, step)
        if progress >= 1.0 or step <= s0:
            return
        rate = (step - s0) / max(now - t0, 1e-6)
        remaining = self._remaining(trainer)
        decay = int(trainer.strategy.broadcast(int(step + rate * remaining * self.margin), src=0))
        if abs(decay - self.decay_steps) <= self.refit_tolerance * max(self.decay_steps - step, 1):
            return
        self.decay_steps, self.anchor = max(decay, step + 1), (step, progress)
        pl_module.decay_steps, pl_module.decay_anchor = self.decay_steps, self.anchor
        log.info(f"time budget: {rate:.2f} steps/s now, {remaining:.0f} s left -> lr decays until step {decay} "
                 f"(from progress {progress:.2f})")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        ckpt = trainer.checkpoint_callback
        if self._timer(trainer) is None or ckpt is None or not getattr(ckpt, "dirpath", None):
            return
        if trainer.global_step > 0 and getattr(ckpt, "_last_global_step_saved", -1) != trainer.global_step:
            if getattr(ckpt, "save_last", False) and hasattr(ckpt, "_save_last_checkpoint"):
                # Through ModelCheckpoint's own bookkeeping: it then skips its save at train end (Lightning >= 2.5),
                # which would otherwise write the same 1-GB state again as last-v1.ckpt beside this last.ckpt.
                ckpt._save_last_checkpoint(trainer, ckpt._monitor_candidates(trainer))
            else:
                trainer.save_checkpoint(Path(ckpt.dirpath) / "last.ckpt")
            log.info(f"time budget: final checkpoint at step {trainer.global_step}")

    def state_dict(self) -> dict[str, Any]:
        return {"decay_steps": self.decay_steps, "anchor": self.anchor, "refit_every": self.refit_every,
                "horizon_minutes": self.horizon_minutes}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.decay_steps = state_dict.get("decay_steps")
        anchor = state_dict.get("anchor")
        self.anchor = (int(anchor[0]), float(anchor[1])) if anchor is not None else None
        self.refit_every = state_dict.get("refit_every")
        self._saved_horizon = state_dict.get("horizon_minutes")
