"""Helpers of the scale-out tests: test-size shards split unevenly, ``python train.py`` as users run it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from lightning.pytorch.callbacks import Callback

from tests.conftest import ROOT

# 7 training samples in shards of 3 -> shards of 3, 3 and 1 samples. With 2 ranks (one worker each) rank 0
# reads shards 0 and 2 (4 samples) and rank 1 shard 1 (3 samples): uneven in shards and in samples. 3
# validation samples in one shard: odd, so the validation split cannot be even either.
N_TRAIN, N_VAL, PER_SHARD = 7, 3, 3


def write_uneven_shards(root: Path) -> Path:
    """Tiny chunk shards (16³ occupancy, 2 views) written with the real shard writer; returns the folder."""
    from genrecon.data.shards import AtomicShardWriter
    from tests.data.test_shards import make_sample

    rng = np.random.default_rng(1)
    for split, n in (("train", N_TRAIN), ("val", N_VAL)):
        with AtomicShardWriter(root, split, PER_SHARD) as writer:
            for i in range(n):
                writer.write(make_sample(f"{split}room_{i:05d}_000", rng, n_views=2))
    (root / "manifest.json").write_text(json.dumps({"samples": {"train": N_TRAIN, "val": N_VAL}}))
    return root


def shard_of(key: str) -> int:
    """Index of the training shard that holds the sample ``key`` (``trainroom_<i>_000``)."""
    return int(key.split("_")[1]) // PER_SHARD


def tiny_overrides(shards: Path, log_dir: Path) -> list[str]:
    """The tiny ss_vae stage on ``shards``: CPU, full precision, only the callbacks the tests read."""
    return [
        "stage=ss_vae", "hardware=cpu", "logger=none", "callbacks=default",
        "preset.ss_vae.channels=[8,16,16]", "stage.datamodule.batch_size=2", "stage.module.warmup_steps=20",
        "callbacks.model_summary=null", "callbacks.progress_bar=null", "callbacks.lr_monitor=null",
        "trainer.enable_model_summary=false", "+trainer.enable_progress_bar=false",
        "callbacks.run_stats.step_log=true",
        f"dataset.shards={shards}", f"paths.log_dir={log_dir}",
    ]


def train_env(run_name: str | None = None) -> dict[str, str]:
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", PYTHONFAULTHANDLER="1",
               HYDRA_FULL_ERROR="1")
    env.pop("GENRECON_RUN_NAME", None)
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    if run_name:
        env["GENRECON_RUN_NAME"] = run_name
    return env


def start_train(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """``python train.py <args>`` in its own session (so a hang can be ended with its children)."""
    out = open(log, "w")
    return subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, env=env, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)


def wait(proc: subprocess.Popen, timeout: float, log: Path) -> int:
    """The exit code; a process still running after ``timeout`` is killed with its process group (a hang)."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise AssertionError(f"train.py did not finish within {timeout}s (hang?):\n{tail(log)}") from None


def run_train(args: list[str], env: dict[str, str], log: Path, timeout: float = 240) -> None:
    rc = wait(start_train(args, env, log), timeout, log)
    assert rc == 0, f"train.py exited with {rc}; log:\n{tail(log)}"


def tail(path: Path, n: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.is_file() else "<no log>"


def read_steps(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Brake(Callback):
    """Test scaffolding: sleeps after each training step in ``[first, last]`` so that a test polling from
    outside has time to kill the process between two checkpoints. Changes timing only, never numbers."""

    def __init__(self, first: int, last: int, seconds: float = 0.5) -> None:
        self.first, self.last, self.seconds = first, last, seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.first <= trainer.global_step <= self.last:
            time.sleep(self.seconds)
