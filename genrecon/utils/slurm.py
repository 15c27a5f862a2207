"""SLURM integration: the Lightning cluster environment with the requeue signal named in the config."""

from __future__ import annotations

import signal

from lightning.pytorch.plugins.environments import SLURMEnvironment


def slurm_environment(requeue_signal: str = "SIGUSR1", auto_requeue: bool = True) -> SLURMEnvironment:
    """``SLURMEnvironment`` whose requeue signal is given by name (``SIGUSR1`` for sbatch ``--signal``,
    ``SIGUSR2`` under the submitit launcher), so exactly one side owns the requeue."""
    try:
        sig = signal.Signals[requeue_signal]
    except KeyError as exc:
        raise ValueError(f"hardware.slurm.requeue_signal: unknown signal {requeue_signal!r}") from exc
    return SLURMEnvironment(auto_requeue=auto_requeue, requeue_signal=sig)
