"""The sbatch script matches the trainer; under SLURM every rank agrees on the run directory."""

import subprocess

import hydra
import pytest
from lightning.fabric.plugins.environments import SLURMEnvironment

from genrecon.utils.slurm import render_sbatch
from tests.conftest import compose_config


def test_sbatch_for_two_nodes_of_eight_gpus(tmp_path):
    text = render_sbatch(nodes=2, gpus_per_node=8)
    lines = text.splitlines()
    assert "#SBATCH --nodes=2" in lines
    assert "#SBATCH --ntasks-per-node=8" in lines
    assert "#SBATCH --gres=gpu:8" in lines
    assert "#SBATCH --signal=SIGUSR1@90" in lines
    srun = [ln for ln in lines if ln.startswith("srun ")]
    assert len(srun) == 1 and "python train.py" in srun[0]
    assert "slurm.nodes=2 slurm.gpus_per_node=8" in text and "ckpt_path=auto" in text
    script = tmp_path / "train.sbatch"
    script.write_text(text)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


def test_committed_sbatch_is_valid_bash(repo_root):
    assert subprocess.run(["bash", "-n", str(repo_root / "scripts/slurm/train.sbatch")]).returncode == 0


@pytest.mark.parametrize("rank", [0, 1])
def test_lightning_detects_slurm_and_ranks_share_the_run_dir(monkeypatch, rank):
    env = {
        "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "1", "SLURM_JOB_NAME": "genrecon",
        "SLURM_JOB_ID": "777", "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "SLURM_NODEID": "0",
        "SLURM_NODELIST": "node1",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("GENRECON_RUN_NAME", raising=False)
    cfg = compose_config("train", ["hardware=slurm", "slurm.gpus_per_node=2", "stage=ss_flow"])
    assert cfg.hydra.run.dir.endswith("logs/train/runs/slurm-777")
    plugin = hydra.utils.instantiate(cfg.trainer.plugins[0])
    assert isinstance(plugin, SLURMEnvironment) and SLURMEnvironment.detect()
    assert plugin.global_rank() == rank and plugin.world_size() == 2 and plugin.node_rank() == 0
    assert cfg.trainer.devices == 2 and cfg.trainer.num_nodes == 1
