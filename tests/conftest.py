"""Shared fixtures: config composition through Hydra's compose API, repository paths."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from genrecon.utils.run_dir import register_resolvers
from genrecon.utils.test_size import (  # noqa: F401 (tests import the overrides from here)
    TINY_DATA_OVERRIDES, TINY_MODEL_OVERRIDES, tiny_vae_overrides,
)

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
register_resolvers()

SESSION_START = time.monotonic()


def pytest_runtest_logfinish(nodeid: str, location: tuple) -> None:
    """With ``GENRECON_TEST_BUDGET_S`` set (``.ci/run`` sets it), stop between tests once the run has lasted that
    long: pytest then still prints its summary and slowest tests, which a killed run never does."""
    budget = os.environ.get("GENRECON_TEST_BUDGET_S")
    if budget and time.monotonic() - SESSION_START > float(budget):
        pytest.exit(f"the test run passed GENRECON_TEST_BUDGET_S={budget} s after {nodeid}", returncode=3)


def compose_config(config_name: str, overrides: list[str] | None = None) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with overrides, as the entry points would (hydra node included)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides or [], return_hydra_config=True)
    # ${hydra:...} interpolations (paths.output_dir) resolve only once HydraConfig is set, as in a real job.
    HydraConfig.instance().set_config(cfg)
    return cfg


def load_script(relative_path: str) -> ModuleType:
    """Import a repository script that is not in a package (``benchmarks/*.py``, ``scripts/slurm/*.py``)."""
    path = ROOT / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    # Registered while it executes: dataclasses look their module up in sys.modules.
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(spec.name, None)
    return module


@pytest.fixture
def repo_root() -> Path:
    return ROOT


@pytest.fixture(autouse=True)
def _fresh_run_name():
    """Composing a config pins GENRECON_RUN_NAME in the environment (as in a real job); tests start clean."""
    saved = os.environ.pop("GENRECON_RUN_NAME", None)
    yield
    os.environ.pop("GENRECON_RUN_NAME", None)
    if saved is not None:
        os.environ["GENRECON_RUN_NAME"] = saved


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A small synthetic dataset written by the real prepare task (shared by the tests of a session)."""
    from genrecon.tasks.prepare import prepare

    data_dir = tmp_path_factory.mktemp("data")
    cfg = compose_config("prepare", TINY_DATA_OVERRIDES + [f"paths.data_dir={data_dir}", f"paths.log_dir={data_dir}/logs"])
    prepare(cfg)
    os.environ.pop("GENRECON_RUN_NAME", None)
    return Path(cfg.dataset.root)


@pytest.fixture(scope="session")
def tiny_latents(tiny_dataset, tmp_path_factory) -> Path:
    """``tiny_dataset`` plus SS, shape and texture latents from VAEs briefly trained by train.py; returns the
    dataset root (latent shards in ``<root>/latents``)."""
    from genrecon.tasks.prepare import prepare
    from genrecon.tasks.train import train

    ckpts = {}
    for stage in ("ss_vae", "shape_vae", "tex_vae"):
        out = tmp_path_factory.mktemp(f"{stage}_run")
        cfg = compose_config("train", tiny_vae_overrides(stage, tiny_dataset, out))
        train(cfg)
        ckpts[stage] = out / "checkpoints" / "last.ckpt"
    cfg = compose_config("prepare", TINY_DATA_OVERRIDES + [
        "steps=[encode]", f"encode.ss_vae_ckpt={ckpts['ss_vae']}", f"encode.shape_vae_ckpt={ckpts['shape_vae']}",
        f"encode.tex_vae_ckpt={ckpts['tex_vae']}", f"dataset.root={tiny_dataset}",
    ])
    prepare(cfg)
    os.environ.pop("GENRECON_RUN_NAME", None)
    return tiny_dataset


@pytest.fixture(scope="session")
def view_pretrain_run(tiny_dataset, tmp_path_factory) -> tuple[Path, dict[str, list[float]]]:
    """(checkpoint, logged series) of a 60-step ``stage=view_pretrain`` run on ``tiny_dataset``'s room renders, at
    the sizes of ``TINY_MODEL_OVERRIDES`` (no EMA, so the checkpoint holds the trained weights)."""
    import torch

    from tests.stages.helpers import run_train

    out = tmp_path_factory.mktemp("view_pretrain")
    torch.manual_seed(0)
    _, series = run_train(TINY_MODEL_OVERRIDES + [
        "stage=view_pretrain", "stage.max_steps=60", "stage.val_every_n_steps=60", "stage.val_batches=1",
        "stage.datamodule.batch_size=8", "stage.module.ema_decay=null", "stage.module.warmup_steps=5", "seed=0",
        "++trainer.enable_checkpointing=true", "callbacks=default", "callbacks.progress_bar=null",
        "callbacks.model_summary=null", "stage.checkpoint_every_n_steps=60",
    ], tiny_dataset, out)
    os.environ.pop("GENRECON_RUN_NAME", None)
    return next((out / "checkpoints").glob("last*.ckpt")), series


# A complete tiny pipeline at the tiny preset's grid sizes (tiling needs latent grids that are multiples of 16).
STAGES = ("ss_vae", "shape_vae", "tex_vae", "ss_flow", "shape_flow", "tex_flow")
PIPELINE_DATA = ["dataset=synthetic", "dataset.num_scenes=3", "dataset.val_fraction=0.34",
                 "preset.ss_vae.channels=[8,8]", "preset.sc_vae.channels=[8,16,16]", "preset.image_size=32"]
PIPELINE_PREPARE = PIPELINE_DATA + ["render.max_cameras=16", "chunks.per_scene=2", "contact_sheet.rooms=1"]


def _train_stage(stage: str, root: Path, out: Path, extra: Sequence[str] = ()) -> Path:
    from genrecon.tasks.train import train

    cfg = compose_config("train", PIPELINE_DATA + [
        f"stage={stage}", "hardware=cpu", "logger=none", "stage.max_steps=3", "stage.val_every_n_steps=3",
        "stage.val_batches=1", "stage.datamodule.batch_size=2", "stage.checkpoint_every_n_steps=3",
        "callbacks.model_summary=null", "callbacks.lr_monitor=null", "callbacks.progress_bar=null",
        f"dataset.root={root}", f"paths.output_dir={out}", *extra,
    ] + (["stage.module.sample_batches=0"] if stage.endswith("flow") else []))
    train(cfg)
    return out / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    """(dataset root, checkpoint folder) of a complete tiny pipeline: prepare -> 3 VAEs -> encode -> 3 flows."""
    from genrecon.tasks.prepare import prepare

    base = tmp_path_factory.mktemp("pipeline")
    cfg = compose_config("prepare", PIPELINE_PREPARE + [f"paths.data_dir={base}/data", f"paths.log_dir={base}/logs"])
    prepare(cfg)
    root = Path(cfg.dataset.root)
    ckpts = base / "ckpts"
    ckpts.mkdir()
    for stage in STAGES[:3]:
        shutil.copy(_train_stage(stage, root, base / stage), ckpts / f"{stage}.ckpt")
    prepare(compose_config("prepare", PIPELINE_PREPARE + [
        "steps=[encode]", f"dataset.root={root}", *(f"encode.{s}_ckpt={ckpts / (s + '.ckpt')}" for s in STAGES[:3])
    ]))
    for stage in STAGES[3:]:
        shutil.copy(_train_stage(stage, root, base / stage), ckpts / f"{stage}.ckpt")
    os.environ.pop("GENRECON_RUN_NAME", None)
    return root, ckpts


