"""Run names and output directories that agree across ranks, nodes and SLURM requeues.

Hydra resolves ``hydra.run.dir`` independently in every process that runs ``@hydra.main``. Under ``srun``
every rank does, so a timestamp would give each rank (and each requeue) its own directory. The run name is
therefore derived, in order, from an explicit ``GENRECON_RUN_NAME``, the SLURM job (array) id, which survives
``scontrol requeue``, the torchrun rendezvous id, and only then a timestamp. The first resolution is written
back to ``GENRECON_RUN_NAME`` so that processes started later by this one (Lightning's DDP launcher) inherit
the same name.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path

RUN_NAME_ENV = "GENRECON_RUN_NAME"


def derive_run_name(env: Mapping[str, str] | None = None, now: float | None = None) -> str:
    """The run name for the environment ``env`` (default: ``os.environ``); pure, for tests."""
    env = os.environ if env is None else env
    if env.get(RUN_NAME_ENV):
        return env[RUN_NAME_ENV]
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"slurm-{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    if env.get("SLURM_JOB_ID"):
        return f"slurm-{env['SLURM_JOB_ID']}"
    rdzv = env.get("TORCHELASTIC_RUN_ID")
    if rdzv and rdzv != "none":
        return f"torchrun-{rdzv}"
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S", time.localtime(now))
    # pid keeps two runs started in the same second apart (lightning-hydra-template issue #511).
    return f"{stamp}_{os.getpid()}"


def run_name() -> str:
    """Resolve the run name once per process tree and pin it in the environment."""
    name = derive_run_name()
    os.environ[RUN_NAME_ENV] = name
    return name


def project_root() -> str:
    """The repository root (the folder holding ``conf/``), or the working directory for installed copies."""
    here = Path(__file__).resolve().parents[2]
    return str(here if (here / "conf").is_dir() else Path.cwd())


def global_rank(env: Mapping[str, str] | None = None) -> int:
    """This process's rank as the launcher announced it (SLURM, torchrun, Lightning), before any init."""
    env = os.environ if env is None else env
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if env.get(key, "").isdigit():
            return int(env[key])
    return 0


def register_resolvers() -> None:
    """Register the OmegaConf resolvers the config tree uses (idempotent)."""
    from omegaconf import OmegaConf

    resolvers = {"run_name": run_name, "project_root": project_root, "mul": lambda a, b: a * b}
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


def quiet_hydra_argv(argv: list[str], env: Mapping[str, str] | None = None) -> list[str]:
    """Ranks started by ``srun`` or ``torchrun`` each run ``@hydra.main``; only rank zero should write
    ``.hydra/`` and the job log. Returns ``argv`` with the overrides that silence the other ranks."""
    if global_rank(env) == 0:
        return list(argv)
    given = {arg.split("=", 1)[0].lstrip("+~") for arg in argv[1:]}
    extra = [
        override
        for override in ("hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled")
        if override.split("=", 1)[0] not in given
    ]
    return list(argv) + extra


def resolve_ckpt_path(ckpt_path: str | None, output_dir: str | Path) -> str | None:
    """``"auto"`` picks the newest of Lightning's SLURM requeue checkpoints (``hpc_ckpt_*.ckpt`` in the run
    directory) and ``checkpoints/last*.ckpt``, so a requeued or restarted job resumes wherever it stopped,
    whether the requeue signal arrived or the node died; ``None`` when there is none. Other values pass."""
    if ckpt_path != "auto":
        return ckpt_path
    out = Path(output_dir)
    candidates = list(out.glob("hpc_ckpt_*.ckpt")) + list((out / "checkpoints").glob("last*.ckpt"))
    if not candidates:
        return None
    return str(max(candidates, key=lambda p: p.stat().st_mtime))


def pinned_wandb_id(output_dir: str | Path) -> str:
    """The wandb run id of this run directory, created once and kept next to the checkpoints, so a resumed
    or requeued run continues the same wandb run (WandbLogger passes ``resume="allow"``)."""
    path = Path(output_dir) / "wandb_id.txt"
    if path.is_file():
        return path.read_text().strip()
    run_id = os.urandom(4).hex()
    if global_rank() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(run_id + "\n")
    return run_id
