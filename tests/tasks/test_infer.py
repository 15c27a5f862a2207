"""infer.py end to end on a tiny synthetic room with tiny checkpoints trained by train.py in the fixture."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from genrecon.tasks.infer import infer
from genrecon.tasks.prepare import prepare
from genrecon.tasks.train import train
from tests.conftest import compose_config

STAGES = ("ss_vae", "shape_vae", "tex_vae", "ss_flow", "shape_flow", "tex_flow")
DATA = ["dataset=synthetic", "dataset.num_scenes=3", "dataset.val_fraction=0.34", "preset.ss_vae.channels=[8,8,16]",
        "preset.sc_vae.channels=[8,16,16]", "preset.image_size=32"]
PREPARE = DATA + ["render.max_cameras=16", "chunks.per_scene=2", "contact_sheet.rooms=1"]


def _train(stage: str, root: Path, out: Path) -> Path:
    cfg = compose_config("train", DATA + [
        f"stage={stage}", "hardware=cpu", "logger=none", "stage.max_steps=3", "stage.val_every_n_steps=3",
        "stage.val_batches=1", "stage.datamodule.batch_size=2", "stage.checkpoint_every_n_steps=3",
        "callbacks.model_summary=null", "callbacks.lr_monitor=null", "callbacks.progress_bar=null",
        f"dataset.root={root}", f"paths.output_dir={out}",
    ] + (["stage.module.sample_batches=0"] if stage.endswith("flow") else []))
    train(cfg)
    return out / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    """(dataset root, checkpoint folder) of a complete tiny pipeline: prepare -> 3 VAEs -> encode -> 3 flows."""
    base = tmp_path_factory.mktemp("pipeline")
    cfg = compose_config("prepare", PREPARE + [f"paths.data_dir={base}/data", f"paths.log_dir={base}/logs"])
    prepare(cfg)
    root = Path(cfg.dataset.root)
    ckpts = base / "ckpts"
    ckpts.mkdir()
    for stage in STAGES[:3]:
        shutil.copy(_train(stage, root, base / stage), ckpts / f"{stage}.ckpt")
    prepare(compose_config("prepare", PREPARE + [
        "steps=[encode]", f"dataset.root={root}", *(f"encode.{s}_ckpt={ckpts / (s + '.ckpt')}" for s in STAGES[:3])
    ]))
    for stage in STAGES[3:]:
        shutil.copy(_train(stage, root, base / stage), ckpts / f"{stage}.ckpt")
    os.environ.pop("GENRECON_RUN_NAME", None)
    return root, ckpts


def _infer(root: Path, ckpts: Path, out: Path, extra=()):
    scene = sorted((root / "scenes").iterdir())[-1]
    cfg = compose_config("infer", [
        "input=prepared", f"input.scene_dir={scene}", f"ckpt_dir={ckpts}", f"paths.output_dir={out}",
        "num_imgs_per_scene=8", "min_points_per_chunk=20", "points.radius_m=0.5", "occ_threshold=-20", "glb.texture_size=128",
        "samplers.ss.steps=3", "samplers.shape.steps=3", "samplers.tex.steps=3", *extra,
    ])
    return infer(cfg)


def test_infer_writes_textured_glb_and_summary(tiny_pipeline, tmp_path):
    root, ckpts = tiny_pipeline
    summary = _infer(root, ckpts, tmp_path)
    glb = trimesh.load(tmp_path / "scene.glb")
    geoms = list(glb.geometry.values())
    assert geoms
    for g in geoms:
        material = g.visual.material
        assert isinstance(material, trimesh.visual.material.PBRMaterial)
        assert material.baseColorTexture is not None and material.metallicRoughnessTexture is not None
        assert g.visual.uv.shape == (len(g.vertices), 2)
    assert trimesh.load(tmp_path / "mesh.ply").faces.shape[0] == summary["faces"] > 0
    assert (tmp_path / "preview.png").stat().st_size > 0
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["chunks"] >= 1 and {"ss_sampling", "shape_sampling", "decode", "export"} <= set(saved["phases"])
    assert len(json.loads((tmp_path / "views.json").read_text())["views"]) == saved["num_views"] <= 8


def test_wrong_checkpoint_for_stage_fails_without_glb(tiny_pipeline, tmp_path):
    root, ckpts = tiny_pipeline
    bad = tmp_path / "ckpts"
    shutil.copytree(ckpts, bad)
    shutil.copy(ckpts / "shape_vae.ckpt", bad / "ss_vae.ckpt")
    with pytest.raises(Exception, match="ss_vae.ckpt.*genrecon.stage.*shape_vae"):
        _infer(root, bad, tmp_path / "out")
    assert not (tmp_path / "out" / "scene.glb").exists()


def test_missing_view_image_names_the_file(tiny_pipeline, tmp_path):
    root, ckpts = tiny_pipeline
    scene = tmp_path / "scene"
    shutil.copytree(sorted((root / "scenes").iterdir())[-1], scene)
    (scene / "views" / "rgba_001.png").unlink()
    cfg = compose_config("infer", ["input=prepared", f"input.scene_dir={scene}", f"ckpt_dir={ckpts}",
                                   f"paths.output_dir={tmp_path / 'out'}"])
    with pytest.raises(Exception, match="rgba_001.png"):
        infer(cfg)
    assert not (tmp_path / "out" / "scene.glb").exists()
