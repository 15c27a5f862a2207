"""Worker pools share the cores: each spawned worker starts with cores // workers BLAS/OpenMP/torch threads."""

from __future__ import annotations

import os

from genrecon.utils.workers import THREAD_VARS, spawn_pool, thread_limited_env, threads_per_worker


def _report(_: int) -> dict:
    import torch

    return {"env": {k: os.environ.get(k) for k in THREAD_VARS}, "torch": torch.get_num_threads(),
            "cpus": sorted(os.sched_getaffinity(0))}


def test_threads_per_worker_divides_the_cores_and_never_reaches_zero():
    assert threads_per_worker(62, cpus=64) == 1
    assert threads_per_worker(15, cpus=64) == 4
    assert threads_per_worker(2, cpus=2) == 1
    assert threads_per_worker(8, cpus=2) == 1
    assert threads_per_worker(1, cpus=16) == 16


def test_thread_env_is_set_for_children_then_restored_and_user_values_win(monkeypatch):
    for key in THREAD_VARS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "7")
    with thread_limited_env(3) as seen:
        assert seen == {"OMP_NUM_THREADS": "3", "OPENBLAS_NUM_THREADS": "3", "MKL_NUM_THREADS": "7",
                        "NUMEXPR_NUM_THREADS": "3"}
    assert os.environ["MKL_NUM_THREADS"] == "7"
    assert all(k not in os.environ for k in THREAD_VARS if k != "MKL_NUM_THREADS")


def test_spawned_workers_start_with_their_share_of_threads(monkeypatch):
    """Two workers on two cores: one thread each (without the limit torch would start two in each), pinned to one
    core."""
    workers = 2
    for key in THREAD_VARS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    pool = spawn_pool(workers)
    try:
        reports = pool.map(_report, range(workers))
    finally:
        pool.close()
        pool.join()
    for report in reports:
        assert report["env"]["OMP_NUM_THREADS"] == report["env"]["OPENBLAS_NUM_THREADS"] == "1"
        assert report["torch"] == 1
    assert "OMP_NUM_THREADS" not in os.environ  # the parent's environment is unchanged
    assert all(len(r["cpus"]) == 1 for r in reports)


def test_each_worker_takes_the_next_block_of_cores():
    """The initializer pins worker k to cores [k·t, (k+1)·t) of the allowed set; a worker past the blocks keeps
    the mask it inherited (run here in-process, the affinity and torch threads restored after)."""
    import multiprocessing as mp

    import torch

    from genrecon.utils.workers import _init_worker

    before, threads_before = os.sched_getaffinity(0), torch.get_num_threads()
    cpus = sorted(before)
    try:
        slots = mp.Value("i", len(cpus) - 1)
        _init_worker(1, slots, cpus)
        assert os.sched_getaffinity(0) == {cpus[-1]} and slots.value == len(cpus)
        assert torch.get_num_threads() == 1
        os.sched_setaffinity(0, before)
        _init_worker(1, slots, cpus)  # no block left: unpinned
        assert os.sched_getaffinity(0) == before
    finally:
        os.sched_setaffinity(0, before)
        torch.set_num_threads(threads_before)
