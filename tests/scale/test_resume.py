"""Exact resumption: a ``python train.py`` process killed with SIGKILL after step k and restarted with the
same command plus ``ckpt_path=last`` continues at step k with the losses of an uninterrupted run, including
the data-stream position, optimiser, LR warm-up, adaptive-clipping history, EMA and RNG states. Plus the
pieces that make it so, tested on their own, and the wandb run id pinned per run dir."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import time

import numpy as np
import pytest
import torch

from callbacks.rng_state import RNGStateCheckpoint, capture_rng_state, restore_rng_state
from datamodules.chunks import ChunkDataModule
from genrecon.utils.run_dir import pinned_wandb_id
from tests.scale.helpers import read_steps, run_train, start_train, tail, tiny_overrides, train_env, wait

# Checkpoint every K steps; 3 batches per epoch, so step K is in the middle of epoch 1. MAX_STEPS is a
# multiple of K: both runs then end with a periodic checkpoint (Lightning also writes last.ckpt at train end,
# but only in a process that has not saved one yet, i.e. in the resumed run and not in the reference).
K, MAX_STEPS = 4, 8
# Lightning does not count the epoch it enters on a resume at an epoch boundary as "ready"/"started" again:
# those two counters end one lower after such a resume. Bookkeeping only (nothing reads them to train).
LIGHTNING_EPOCH_COUNTER = re.compile(r"loops/fit_loop/epoch_progress/(total|current)/(ready|started): ")
STEP_KEYS = ("loss", "lr", "train/grad_norm", "train/grad_clip", "epoch", "batch_idx")
CKPT_KEYS = ("state_dict", "current_model_state", "averaging_state", "optimizer_states", "lr_schedulers",
             "grad_clipper", "loops", "global_step", "epoch")


def _args(shards, log_dir, k, max_steps):
    return tiny_overrides(shards, log_dir) + [
        "seed=3", "trainer.deterministic=true", "stage.datamodule.num_workers=0",
        f"stage.max_steps={max_steps}", f"stage.checkpoint_every_n_steps={k}",
        "stage.val_every_n_steps=3", "stage.val_batches=1",
        # EMA on (validation and checkpoints use it); warm-up longer than the run (LR changes every step);
        # a clipping window of 3 with a huge cap, so the clip value is the 95th percentile of the history.
        "stage.module.ema_decay=0.9", "stage.module.warmup_steps=20", "+stage.module.grad_clip_window=3",
        "stage.module.grad_clip_max=1000",
    ]


def _differences(a, b, path="") -> list[str]:
    """Paths where two nested checkpoint structures differ (tensors compared exactly)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        both = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
        return [] if both and a.shape == b.shape and torch.equal(a, b) else [path]
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{path}: keys {sorted(set(a) ^ set(b), key=str)}"]
        return [d for k in a for d in _differences(a[k], b[k], f"{path}/{k}")]
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        if len(a) != len(b):
            return [f"{path}: length"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{path}/{i}")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def kill_and_resume(shards, tmp_path, k: int, max_steps: int, extra: list[str] = (), ranks: int = 1) -> str:
    """Reference run; the same run killed with SIGKILL after step k; restarted with ``ckpt_path=last``.
    Asserts the resumed steps equal the reference ones on every rank; returns a timing line."""
    log_dir = tmp_path / "logs"
    args = _args(shards, log_dir, k, max_steps) + list(extra)
    # the uninterrupted reference runs alongside the first attempt (different run dirs; wall time only)
    ref_proc = start_train(args, train_env("reference"), tmp_path / "reference.log")

    # The interrupted run sleeps after steps k+1..2k-1 (timing only) so the kill lands before checkpoint 2k.
    brake = ["+callbacks.brake._target_=tests.scale.helpers.Brake", f"+callbacks.brake.first={k + 1}",
             f"+callbacks.brake.last={2 * k - 1}", "+callbacks.brake.seconds=0.5"]
    run = log_dir / "train" / "runs" / "killed"
    last, watched = run / "checkpoints" / "last.ckpt", run / f"rank_{ranks - 1}_steps.jsonl"
    t0 = time.time()
    proc = start_train(args + brake, train_env("killed"), tmp_path / "killed.log")
    deadline = time.time() + 240
    while True:  # poll for checkpoint k, then for the next step to be under way (the save is complete)
        assert proc.poll() is None, f"train.py ended before it was killed:\n{tail(tmp_path / 'killed.log')}"
        assert time.time() < deadline, "no checkpoint of step k in time"
        if (run / "checkpoints" / f"step_{k:07d}.ckpt").is_file() and last.is_file() and watched.is_file():
            if any(r["step"] > k for r in read_steps(watched)):
                break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole process group: Lightning's DDP children too
    assert proc.wait() == -signal.SIGKILL
    t_killed = time.time() - t0
    assert wait(ref_proc, 240, tmp_path / "reference.log") == 0, tail(tmp_path / "reference.log")
    t_ref = time.time() - t0
    assert not (run / "rank_0_stats.json").exists()  # killed: no fit-end hook ran
    saved = torch.load(last, weights_only=True)  # plain types only: loads with weights_only
    assert saved["global_step"] == k
    assert len(saved["callbacks"]["RNGStateCheckpoint"]["ranks"]) == ranks

    t0 = time.time()
    run_train(args + brake + ["ckpt_path=last"], train_env("killed"), tmp_path / "resumed.log")
    t_resumed = time.time() - t0

    for rank in range(ranks):
        ref_file = log_dir / "train" / "runs" / "reference" / f"rank_{rank}_steps.jsonl"
        reference = {r["step"]: r for r in read_steps(ref_file)}
        records = read_steps(run / f"rank_{rank}_steps.jsonl")
        first_pid, resumed_pid = records[0]["pid"], records[-1]["pid"]
        assert first_pid != resumed_pid
        resumed = [r for r in records if r["pid"] == resumed_pid]
        assert [r["step"] for r in resumed] == list(range(k + 1, max_steps + 1)), "did not resume at step k"
        for r in [r for r in records if r["pid"] == first_pid] + resumed:
            want = reference[r["step"]]
            got = {key: r[key] for key in STEP_KEYS}
            assert got == {key: want[key] for key in STEP_KEYS}, (rank, r["step"])
        # once the window (3) is full the clip value comes from the restored history, not from the cap
        assert all(r["train/grad_clip"] < 1000 for r in resumed if r["step"] > 3)
        stats = json.loads((run / f"rank_{rank}_stats.json").read_text())
        assert stats["first_step"] == k and stats["train_batches"] == max_steps - k

    # Final checkpoints identical: EMA weights (state_dict), current weights, optimiser, scheduler, clip
    # history, loops and the loader's position.
    a = torch.load(log_dir / "train" / "runs" / "reference" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(last, weights_only=True)
    for key in CKPT_KEYS:
        assert key in a
        diffs = [d for d in _differences(a[key], b[key], key) if not LIGHTNING_EPOCH_COUNTER.match(d)]
        assert not diffs, diffs
    return f"killed after {t_killed:.1f}s, reference done after {t_ref:.1f}s, resumed in {t_resumed:.1f}s"


def test_sigkill_after_step_k_then_resume_matches_uninterrupted_run(uneven_shards, tmp_path):
    """One process; step K is mid-epoch, so the loader has to skip the batches epoch 1 already consumed. The EMA
    warms up (its decay follows the update count, which the resumed run reads back from the saved average);
    the DDP test below keeps the plain EMA."""
    print(kill_and_resume(uneven_shards, tmp_path, K, MAX_STEPS, ["stage.module.ema_warmup=true"]))


@pytest.mark.slow
def test_ddp_sigkill_and_resume_is_exact_on_every_rank(uneven_shards, tmp_path):
    """Two DDP ranks (one batch per epoch each: every checkpoint is at an epoch end); per-rank RNG states."""
    ddp = ["trainer.devices=2", "+trainer.strategy=ddp"]
    print(kill_and_resume(uneven_shards, tmp_path, 2, 6, ddp, ranks=2))


# ---------------------------------------------------------------------------- the pieces, in-process


def test_loader_resume_position_rolls_over_at_epoch_end(uneven_shards):
    dm = ChunkDataModule(str(uneven_shards), fields=["occupancy"], batch_size=2)
    loader = dm.train_dataloader()
    assert len(loader) == 3
    reference = {e: [tuple(b["keys"]) for b in _epoch(loader, e)] for e in (0, 1)}
    loader.load_state_dict({"epoch": 0, "batches_done": 1})  # mid-epoch: skip one batch of epoch 0
    assert [tuple(b["keys"]) for b in loader] == reference[0][1:]
    loader.load_state_dict({"epoch": 0, "batches_done": 3})  # saved after the last batch: epoch 1 next
    assert [tuple(b["keys"]) for b in loader] == reference[1]


def _epoch(loader, epoch):
    loader.progress = lambda: (epoch, 0)
    return list(loader)


def test_loaders_do_not_draw_from_the_global_rng(uneven_shards):
    dm = ChunkDataModule(str(uneven_shards), fields=["occupancy"], batch_size=2, val_batches=1)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    iter(dm.train_dataloader()), iter(dm.val_dataloader())
    assert torch.equal(before, torch.get_rng_state())


def test_rng_states_round_trip_through_the_callback():
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    state = RNGStateCheckpoint().state_dict()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(2), np.random.seed(2), random.seed(2)
    RNGStateCheckpoint().load_state_dict(state)
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]
    restore_rng_state(capture_rng_state())  # idempotent on the current state


# ---------------------------------------------------------------------------- wandb run id


def test_wandb_id_is_pinned_per_run_dir(tmp_path):
    first = pinned_wandb_id(tmp_path / "run")
    assert (tmp_path / "run" / "wandb_id.txt").read_text().strip() == first
    assert pinned_wandb_id(tmp_path / "run") == first
    assert pinned_wandb_id(tmp_path / "other") != first


def test_resumed_run_continues_the_same_wandb_run(uneven_shards, tmp_path, monkeypatch):
    """train() twice in one output dir, the second with ckpt_path=last: wandb.init gets the same id."""
    import wandb

    from genrecon.tasks.train import train
    from tests.conftest import compose_config

    monkeypatch.setenv("WANDB_MODE", "disabled")
    ids = []
    real_init = wandb.init

    def spy(*args, **kwargs):
        ids.append(kwargs.get("id"))
        return real_init(*args, **kwargs)

    monkeypatch.setattr(wandb, "init", spy)
    out = tmp_path / "run"
    base = tiny_overrides(uneven_shards, tmp_path / "logs") + [
        "logger=wandb", "logger.wandb.offline=false", f"paths.output_dir={out}", "stage.val_every_n_steps=1",
        "stage.val_batches=1", "stage.checkpoint_every_n_steps=1",
    ]
    train(compose_config("train", base + ["stage.max_steps=1"]))
    train(compose_config("train", base + ["stage.max_steps=2", "ckpt_path=last"]))
    pinned = (out / "wandb_id.txt").read_text().strip()
    assert ids == [pinned, pinned]
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
