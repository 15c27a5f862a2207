"""Per-rank run bookkeeping: how many batches each rank ran, and optionally every step's loss.

``RunStats`` writes ``<dirpath>/rank_<r>_stats.json`` on every rank when ``fit`` ends (or fails): the number
of training and validation batches this process ran, the global step it started and stopped at, the epochs
it saw and the sample keys of its first batches. Rank-local files, no collectives: they stay correct when a
rank hangs or dies, which is when they are needed (does every rank run the same number of batches? do the
ranks see different samples?).

With ``step_log=true`` it also appends one JSON line per optimiser step to
``<dirpath>/rank_<r>_steps.jsonl`` (step, epoch, batch index, loss, learning rates, the metrics named in
``metrics``, pid, and ``time``: the wall clock (``time.time()``) at the end of the step, read after the loss
was copied to the host, so on a GPU it follows the step's kernels; ``benchmarks/ddp_scaling.py`` computes
throughput from it), flushed as it goes, so the record survives a SIGKILL and a resumed run appends to it;
the ``pid`` tells the processes apart.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


def _to_float(value: Any) -> float | None:
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().cpu()) if value.numel() == 1 else None
    if isinstance(value, int | float):
        return float(value)
    return None


class RunStats(Callback):
    """Rank-local counters written at fit end; see the module docstring.

    Args:
        dirpath: folder of the files (default: the trainer's ``default_root_dir``).
        step_log: also append every training step to ``rank_<r>_steps.jsonl``.
        metrics: logged metrics (``trainer.callback_metrics`` keys) added to each step line, e.g.
            ``[train/grad_norm, train/grad_clip]``.
        record_keys: sample keys of the first ``record_keys`` training batches kept in the stats file.
    """

    def __init__(
        self,
        dirpath: str | None = None,
        step_log: bool = False,
        metrics: Sequence[str] = (),
        record_keys: int = 4,
    ) -> None:
        self.dirpath = dirpath
        self.step_log = step_log
        self.metrics = list(metrics)
        self.record_keys = record_keys
        self._reset()

    def _reset(self) -> None:
        self.train_batches = 0
        self.val_batches = 0
        self.val_runs = 0
        self.first_step: int | None = None
        self.epochs: list[int] = []
        self.keys: list[list[str]] = []
        self._started = time.time()

    # ------------------------------------------------------------------ paths
    def _dir(self, trainer: L.Trainer) -> Path:
        return Path(self.dirpath or trainer.default_root_dir)

    def stats_path(self, trainer: L.Trainer) -> Path:
        return self._dir(trainer) / f"rank_{trainer.global_rank}_stats.json"

    def steps_path(self, trainer: L.Trainer) -> Path:
        return self._dir(trainer) / f"rank_{trainer.global_rank}_steps.jsonl"

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.first_step = trainer.global_step

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epochs.append(trainer.current_epoch)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.train_batches += 1
        if len(self.keys) < self.record_keys and isinstance(batch, dict) and "keys" in batch:
            self.keys.append([str(k) for k in batch["keys"]])
        if self.step_log:
            self._append_step(trainer, outputs, batch_idx)

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not trainer.sanity_checking:
            self.val_batches += 1

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.val_runs += 1

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, "finished")

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._write(trainer, f"failed: {type(exception).__name__}: {exception}")

    # ------------------------------------------------------------------ output
    def _append_step(self, trainer: L.Trainer, outputs: Any, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        record: dict[str, Any] = {
            "step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "batch_idx": batch_idx,
            "loss": _to_float(loss),
            "lr": [float(g["lr"]) for opt in trainer.optimizers for g in opt.param_groups],
            "pid": os.getpid(),
            "time": time.time(),
        }
        for name in self.metrics:
            record[name] = _to_float(trainer.callback_metrics.get(name))
        path = self.steps_path(trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    def stats(self, trainer: L.Trainer, status: str) -> dict[str, Any]:
        return {
            "status": status,
            "rank": trainer.global_rank,
            "local_rank": trainer.local_rank,
            "node_rank": trainer.node_rank,
            "world_size": trainer.world_size,
            "train_batches": self.train_batches,
            "val_batches": self.val_batches,
            "val_runs": self.val_runs,
            "first_step": self.first_step,
            "last_step": trainer.global_step,
            "epochs": self.epochs,
            "first_batch_keys": self.keys,
            "seconds": round(time.time() - self._started, 3),
            "pid": os.getpid(),
            "host": socket.gethostname(),
        }

    def _write(self, trainer: L.Trainer, status: str) -> None:
        path = self.stats_path(trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".json.tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.stats(trainer, status), indent=2) + "\n")
        os.replace(tmp, path)
