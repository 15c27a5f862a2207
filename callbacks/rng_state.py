"""Random-number-generator states in the checkpoint, one per rank, so a resumed run draws the same numbers.

Lightning restores the model, optimiser, schedulers, loops and stateful loaders, but not the global RNGs: a
run resumed at step ``k`` re-seeds from ``seed_everything`` and its noise (VAE posterior samples, flow
timesteps and noise, CFG dropout) is that of step 0, not of step ``k``. This callback saves the Python,
NumPy, torch CPU and CUDA generator states of **every** rank (gathered to rank zero when the checkpoint is
written; ranks can differ, e.g. when sparse batches have rank-dependent sizes) and puts each rank's state back
when training resumes. The train task always adds it (``genrecon/tasks/train.py``).

The states are stored as plain lists and tensors, so the checkpoint still loads with ``weights_only=True``.

Under DDP every rank starts from the same ``seed_everything`` seed, so without care all ranks would draw the
same flow noise and timesteps for their different samples. At ``setup`` (after the processes exist, before a
checkpoint's states are restored) rank ``r`` re-seeds its generators with ``seed + r``; rank 0 and
single-process runs keep the seed exactly.

Caveat: gathering is a collective, like the barrier Lightning runs after every ``save_checkpoint``; all ranks
must save together (Lightning's ModelCheckpoint and SLURM requeue handler do).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn


def capture_rng_state() -> dict[str, Any]:
    """This process's generator states, as ``weights_only``-loadable values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"].cpu())
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["torch_cuda"].cpu())


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class RNGStateCheckpoint(Callback):
    """Saves the generator states of every rank with each checkpoint and restores them on resume."""

    @property
    def state_key(self) -> str:
        return "RNGStateCheckpoint"

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        rank = int(getattr(trainer, "global_rank", 0))
        if stage == "fit" and rank > 0:
            seed = torch.initial_seed() + rank  # the seed_everything seed, offset per rank
            random.seed(seed)
            np.random.seed(seed % 2**32)
            torch.manual_seed(seed)  # CPU and every CUDA device

    def state_dict(self) -> dict[str, Any]:
        rank, world = _dist()
        state = capture_rng_state()
        if world == 1:
            return {"ranks": [state]}
        gathered: list[Any] = [None] * world
        torch.distributed.all_gather_object(gathered, state)
        return {"ranks": gathered}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        ranks = state_dict.get("ranks") or []
        if not ranks:
            return
        rank, world = _dist()
        if len(ranks) != world:
            rank_zero_warn(
                f"The checkpoint holds RNG states of {len(ranks)} rank(s) but this run has {world}; rank r "
                f"takes the state of rank r mod {len(ranks)}, so random draws after the resume differ from "
                "the original run."
            )
        restore_rng_state(ranks[rank % len(ranks)])
