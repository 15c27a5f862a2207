"""Process pools whose workers share the machine's cores instead of each taking all of them.

A spawned worker that imports numpy or torch starts one BLAS/OpenMP thread per core. With one worker per core
that is cores² threads, and OpenBLAS threads spin while they wait: ``prepare.py`` with 62 workers on a 64-core
machine ran at a load average of 1,100 and took 4.3x the CPU time per room it took with 15 workers on 16 cores
(session 10, `benchmarks/RESULTS.md`). So each worker gets ``cores // workers`` threads (at least one), set
through the environment the children inherit at start; variables the user has set are left alone. Where the OS
allows it, each worker is also pinned to its own ``threads`` cores: thread pools that read no environment variable
(Embree's TBB, used by the rasteriser) size themselves from the affinity mask, and whatever still oversubscribes
stays on the worker's own cores.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.pool import Pool
from typing import Any

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def _allowed_cpus() -> list[int] | None:
    """The cores of this process's affinity mask; None where the OS has none."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None


def available_cpus() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    cpus = _allowed_cpus()
    return len(cpus) if cpus is not None else (os.cpu_count() or 1)


def threads_per_worker(workers: int, cpus: int | None = None) -> int:
    """Threads each of ``workers`` processes may use on ``cpus`` cores (default: this machine's)."""
    return max(1, int(cpus or available_cpus()) // max(1, int(workers)))


@contextmanager
def thread_limited_env(threads: int) -> Iterator[dict[str, str]]:
    """Set the unset ``THREAD_VARS`` to ``threads`` while processes are started inside, then restore them.

    Yields the variables as the children see them."""
    added = {k: str(threads) for k in THREAD_VARS if k not in os.environ}
    os.environ.update(added)
    try:
        yield {k: os.environ[k] for k in THREAD_VARS}
    finally:
        for key in added:
            os.environ.pop(key, None)


def _init_worker(threads: int, slots: Any, cpus: list[int] | None) -> None:
    """Pool initializer: pin this worker to the next free block of ``threads`` cores (when ``cpus`` is known and
    there are enough), and set torch's thread count (torch read OMP_NUM_THREADS at import if it was imported)."""
    if cpus is not None and hasattr(os, "sched_setaffinity"):
        with slots.get_lock():
            slot = slots.value
            slots.value += 1
        block = cpus[slot * threads:(slot + 1) * threads]
        if len(block) == threads:  # a restarted worker beyond the blocks keeps the parent's mask
            try:
                os.sched_setaffinity(0, block)
            except OSError:  # a container may forbid it; the thread limit still holds
                pass
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def spawn_pool(workers: int, pin: bool = True) -> Pool:
    """A ``spawn`` pool of ``workers`` processes, each limited to ``threads_per_worker(workers)`` threads and, with
    ``pin``, to cores of its own.

    spawn, not fork: the caller may hold CUDA contexts and thread pools that a forked child must not touch."""
    threads = threads_per_worker(workers)
    ctx = mp.get_context("spawn")
    cpus = _allowed_cpus() if pin else None
    with thread_limited_env(threads):
        return ctx.Pool(workers, initializer=_init_worker, initargs=(threads, ctx.Value("i", 0), cpus))
