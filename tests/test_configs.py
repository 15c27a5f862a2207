"""Every stage composes with every dataset and hardware option, and the tree keeps its contracts."""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from tests.conftest import CONF_DIR, ROOT, compose_config

STAGES = sorted(p.stem for p in (CONF_DIR / "stage").glob("*.yaml"))
HARDWARE = sorted(p.stem for p in (CONF_DIR / "hardware").glob("*.yaml"))
DATASETS = sorted(p.stem for p in (CONF_DIR / "dataset").glob("*.yaml"))
PRESETS = sorted(p.stem for p in (CONF_DIR / "preset").glob("*.yaml"))


def test_tree_has_every_stage_and_hardware():
    assert STAGES == ["shape_flow", "shape_vae", "ss_flow", "ss_vae", "tex_flow", "tex_vae", "view_pretrain"]
    assert {"cpu", "gpu", "gpu_ddp", "slurm"} <= set(HARDWARE)
    assert {"tiny", "small", "trellis2"} <= set(PRESETS)


@pytest.mark.parametrize("stage,dataset,hardware", list(itertools.product(STAGES, DATASETS, HARDWARE)))
def test_train_composes(stage, dataset, hardware):
    cfg = compose_config("train", [f"stage={stage}", f"dataset={dataset}", f"hardware={hardware}"])
    assert cfg.stage.name == stage
    assert cfg.dataset.name == dataset
    # every object the task builds is instantiable by Hydra
    for node in (cfg.stage.module, cfg.stage.datamodule, cfg.trainer):
        assert "_target_" in node
    # interpolations that do not need a running Hydra job resolve
    OmegaConf.to_container(cfg.stage, resolve=True)
    OmegaConf.to_container(cfg.trainer, resolve=True)


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_presets_resolve(preset):
    cfg = compose_config("train", [f"preset={preset}", "stage=shape_vae"])
    levels = len(cfg.preset.sc_vae.channels)
    assert 2 ** (levels - 1) == cfg.preset.shape_latent_factor
    assert cfg.preset.ovoxel_resolution % cfg.preset.occupancy_resolution == 0
    assert cfg.preset.ovoxel_resolution // cfg.preset.shape_latent_factor == cfg.preset.shape_latent_resolution
    assert cfg.preset.image_encoder.width == cfg.preset.flow.cond_channels


def test_stage_dataset_specialisation_applies_only_to_its_pair():
    special = compose_config("train", ["stage=ss_flow", "dataset=front3d"])
    plain = compose_config("train", ["stage=ss_flow", "dataset=synthetic"])
    assert special.stage.datamodule.min_view_coverage == 0.3
    assert plain.stage.datamodule.min_view_coverage == 0.4


def test_run_dir_uses_run_name(monkeypatch):
    monkeypatch.setenv("GENRECON_RUN_NAME", "unit-run")
    cfg = compose_config("train", ["stage=ss_vae"])
    assert cfg.hydra.run.dir.endswith("logs/train/runs/unit-run")
    assert cfg.hydra.sweep.dir.endswith("logs/train/multiruns/unit-run")


def test_cli_composes_every_stage_job_config():
    """The command line composes a stage's job config; every stage composes alike (in-process: one interpreter
    start per stage cost 40 s of the suite)."""
    out = subprocess.run(
        [sys.executable, "train.py", "--cfg", "job", "stage=ss_flow", "dataset=synthetic", "hardware=cpu"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "name: ss_flow" in out.stdout
    for stage in STAGES:
        cfg = compose_config("train", [f"stage={stage}", "dataset=synthetic", "hardware=cpu"])
        assert cfg.stage.name == stage
        OmegaConf.to_yaml(cfg, resolve=False)  # what --cfg job prints


def test_unknown_option_stops_with_hydra_message():
    out = subprocess.run(
        [sys.executable, "train.py", "--cfg", "job", "stage=no_such_stage"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode != 0
    assert "Could not find 'stage/no_such_stage'" in out.stderr
    assert "Traceback" not in out.stderr


def test_entry_points_are_thin():
    for name in ("train.py", "infer.py", "prepare.py", "eval.py"):
        lines = (ROOT / name).read_text().splitlines()
        assert len(lines) < 100, f"{name} has {len(lines)} lines"


@pytest.mark.parametrize("experiment_name, stage, switches", [
    ("tex_flow_views", "tex_flow", ("LATENT_AUX", "VISIBILITY", "FROZEN_ENCODER", "DEPTH_CUE", "CELL_CUE")),
    ("ss_flow_views", "ss_flow", ("OCC_AUX", "FROZEN_ENCODER", "DEPTH_CUE", "CELL_CUE")),
])
def test_views_experiment_is_the_measured_cell_recipe(experiment_name: str, stage: str, switches: tuple) -> None:
    """conf/experiment/{tex,ss}_flow_views.yaml hold what full_pipeline.py's tex_flow_cell_end (session 18's best
    single-GPU texture flow) and ss_flow_cell runs (session 19; doubled rates on two GPUs) trained with: the same
    preset and stage module as their switches, learning rates, EMA and endpoint share on the command line."""
    from omegaconf import OmegaConf

    from tests.conftest import load_script

    fp = load_script("benchmarks/full_pipeline.py")
    ckpt = "stage.module.image_encoder_ckpt=/runs/view_pretrain.ckpt"
    experiment = compose_config("train", [f"experiment={experiment_name}",
                                          "view_encoder_ckpt=/runs/view_pretrain.ckpt"])
    recipe = compose_config("train", [
        f"stage={stage}", "preset=small", ckpt, *(getattr(fp, name) for name in switches), "stage.module.lr=3e-4",
        "stage.module.lr_new=1e-3", "stage.module.warmup_steps=200", "stage.module.ema_decay=0.995",
        "stage.module.ema_warmup=true", "stage.module.objective.p_endpoint=0.1"])
    assert OmegaConf.to_container(experiment.preset) == OmegaConf.to_container(recipe.preset)
    assert (OmegaConf.to_container(experiment.stage.module, resolve=True)
            == OmegaConf.to_container(recipe.stage.module, resolve=True))
    assert experiment.stage.name == stage and experiment.preset.flow.cell_cue.subdivisions == 4
    assert experiment.stage.module.objective.p_endpoint == 0.1 and experiment.stage.module.ema_warmup
    with pytest.raises(Exception, match="view_encoder_ckpt"):
        OmegaConf.to_container(compose_config("train", [f"experiment={experiment_name}"]).stage.module, resolve=True)
