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


SBATCH_TEMPLATE = """#!/usr/bin/env bash
# GenRecon training on SLURM: {nodes} node(s) x {gpus_per_node} GPU(s), one task per GPU.
# Rendered by `python scripts/slurm/render_sbatch.py`; submit with `sbatch <this file> [hydra overrides]`.
#SBATCH --job-name={job_name}
#SBATCH --nodes={nodes}
#SBATCH --ntasks-per-node={gpus_per_node}
#SBATCH --gres=gpu:{gpus_per_node}
#SBATCH --cpus-per-task={cpus_per_task}
#SBATCH --mem=0
#SBATCH --time={time}
#SBATCH --signal=SIGUSR1@90
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=logs/slurm/%x-%j.out
{partition_line}
set -euo pipefail
cd "${{SLURM_SUBMIT_DIR:-$(pwd)}}"
mkdir -p logs/slurm

# One run directory for every rank and every requeue: the job id survives `scontrol requeue`.
export GENRECON_RUN_NAME="${{GENRECON_RUN_NAME:-slurm-${{SLURM_JOB_ID}}}}"
export PYTHONFAULTHANDLER=1
export NCCL_ASYNC_ERROR_HANDLING=1

# Lightning owns the requeue (SIGUSR1 above -> hpc checkpoint + scontrol requeue); ckpt_path=auto resumes
# from the newest requeue or last checkpoint of the run directory after a requeue or a crash.
srun --kill-on-bad-exit=1 python train.py \\
  hardware=slurm slurm.nodes={nodes} slurm.gpus_per_node={gpus_per_node} \\
  slurm.requeue_signal=SIGUSR1 ckpt_path=auto "$@"
"""


def render_sbatch(
    nodes: int,
    gpus_per_node: int,
    job_name: str = "genrecon",
    time: str = "48:00:00",
    cpus_per_task: int = 12,
    partition: str | None = None,
) -> str:
    """The sbatch script for ``nodes`` x ``gpus_per_node``; its task counts match ``hardware=slurm``."""
    if nodes < 1 or gpus_per_node < 1:
        raise ValueError(f"nodes and gpus_per_node must be positive, got {nodes} x {gpus_per_node}")
    return SBATCH_TEMPLATE.format(
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        job_name=job_name,
        time=time,
        cpus_per_task=cpus_per_task,
        partition_line=f"#SBATCH --partition={partition}" if partition else "",
    )
