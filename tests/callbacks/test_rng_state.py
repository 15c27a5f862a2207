"""Ranks draw different noise: rank r re-seeds with seed + r at setup; rank 0 keeps its state untouched."""

import random
from types import SimpleNamespace

import lightning as L
import numpy as np
import torch

from callbacks.rng_state import RNGStateCheckpoint, capture_rng_state


def _draws():
    return torch.rand(4), np.random.rand(4), random.random()


def test_ranks_get_distinct_seeds_and_rank_zero_is_unchanged():
    L.seed_everything(5)
    before = capture_rng_state()
    RNGStateCheckpoint().setup(SimpleNamespace(global_rank=0), None, "fit")
    after = capture_rng_state()
    assert torch.equal(before["torch"], after["torch"]) and before["python"] == after["python"]
    rank0 = _draws()

    L.seed_everything(5)
    RNGStateCheckpoint().setup(SimpleNamespace(global_rank=1), None, "fit")
    assert torch.initial_seed() == 6
    rank1 = _draws()
    assert not torch.equal(rank0[0], rank1[0]) and not np.array_equal(rank0[1], rank1[1]) and rank0[2] != rank1[2]

    # deterministic per rank, and only for fitting
    L.seed_everything(5)
    RNGStateCheckpoint().setup(SimpleNamespace(global_rank=1), None, "fit")
    assert torch.equal(_draws()[0], rank1[0])
    L.seed_everything(5)
    RNGStateCheckpoint().setup(SimpleNamespace(global_rank=1), None, "validate")
    assert torch.equal(_draws()[0], rank0[0])
