"""``stage=view_pretrain`` (a deviation): the image encoder learns the renders' base colour, normals and depth
through train.py, and the flows start from it (``stage.module.image_encoder_ckpt``), frozen or not."""

from __future__ import annotations

import hydra
import numpy as np
import pytest
import torch

from genrecon.data.errors import DataFormatError
from genrecon.models.cell_cue import CellCue
from genrecon.models.depth_cue import DepthCue
from genrecon.stages.view_pretrain import load_pretrained_view_encoder
from tests.conftest import TINY_MODEL_OVERRIDES, compose_config
from tests.stages.helpers import head_tail_ratio, run_train
from tests.stages.test_flow import FLOW_OVERRIDES

DEPTH_CUE = "preset.flow.depth_cue={bins:64,max_depth:4.0}"
CELL_CUE = "preset.flow.cell_cue={subdivisions:4}"


@pytest.fixture(scope="module")
def pretrained(tiny_latents, view_pretrain_run):
    """(dataset root with latents, view_pretrain checkpoint, logged series)."""
    return tiny_latents, *view_pretrain_run


def test_pretraining_loss_falls(pretrained):
    _, _, series = pretrained
    loss = series["train/loss"]
    assert len(loss) == 60 and head_tail_ratio(loss, k=10) < 0.8, (np.mean(loss[:10]), np.mean(loss[-10:]))
    assert np.isfinite(series["val/base_colour_psnr"][-1]) and 0 <= series["val/depth_hit"][-1] <= 1


def test_flow_starts_from_the_pretrained_encoder_and_its_heads(pretrained):
    root, ckpt, _ = pretrained
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    cfg = compose_config("train", TINY_MODEL_OVERRIDES + [
        "stage=tex_flow", "hardware=cpu", f"dataset.root={root}", DEPTH_CUE, CELL_CUE, "preset.image_encoder.frozen=true",
        f"stage.module.image_encoder_ckpt={ckpt}"])
    stage = hydra.utils.instantiate(cfg.stage.module)
    for name, value in stage.image_encoder.state_dict().items():
        assert torch.equal(value, state[f"image_encoder.{name}"]), name
    assert torch.equal(stage.model.depth_cue.head.weight, state["head.depth_bins.weight"])
    assert torch.equal(stage.model.cell_cue.head.weight, state["head.dense.weight"])
    # Frozen: no encoder parameter reaches the optimiser; the depth head (part of the cue) still trains.
    trained = {id(p) for g in stage.parameter_groups() for p in g["params"]}
    assert not any(id(p) in trained for p in stage.image_encoder.parameters())
    assert id(stage.model.depth_cue.head.weight) in trained and id(stage.model.cell_cue.head.weight) in trained


def test_flow_with_a_frozen_pretrained_encoder_trains_and_reloads(pretrained, tmp_path):
    from genrecon.stages.loading import load_stage

    root, ckpt, _ = pretrained
    encoder_before = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    overrides = [o.replace("stage.max_steps=120", "stage.max_steps=40") for o in FLOW_OVERRIDES]
    _, series = run_train(["stage=ss_flow", DEPTH_CUE, CELL_CUE, "preset.image_encoder.frozen=true",
                           f"stage.module.image_encoder_ckpt={ckpt}", "++trainer.enable_checkpointing=true",
                           "callbacks=default", "callbacks.progress_bar=null", "callbacks.model_summary=null",
                           "stage.checkpoint_every_n_steps=40", *overrides], root, tmp_path)
    loss = series["train/loss"]
    assert len(loss) == 40 and head_tail_ratio(loss, k=10) < 0.9, (np.mean(loss[:10]), np.mean(loss[-10:]))
    # The checkpoint rebuilds without the pretraining file (its weights are in the state dict) ...
    ckpt.rename(ckpt.with_suffix(".moved"))
    try:
        module = load_stage(next((tmp_path / "checkpoints").glob("last*.ckpt")), expected_stage="ss_flow")
    finally:
        ckpt.with_suffix(".moved").rename(ckpt)
    # ... and the frozen encoder did not move.
    for name, value in module.image_encoder.state_dict().items():
        assert torch.equal(value, encoder_before[f"image_encoder.{name}"]), name


def test_loading_names_the_mismatch(pretrained, tmp_path):
    from genrecon.models.image_encoder import SmallViT

    _, ckpt, _ = pretrained
    with pytest.raises(DataFormatError, match="image_encoder"):
        load_pretrained_view_encoder(ckpt, SmallViT(width=32, depth=1, num_heads=2, patch_size=8))
    with pytest.raises(DataFormatError, match="depth_bins"):
        load_pretrained_view_encoder(ckpt, depth_cue=DepthCue(load_pretrained_view_encoder(ckpt).out_channels, 32))
    with pytest.raises(DataFormatError, match="subdivisions"):
        load_pretrained_view_encoder(ckpt, cell_cue=CellCue(load_pretrained_view_encoder(ckpt).out_channels, 2))
    flow_ckpt = tmp_path / "not_pretrain.ckpt"
    torch.save({"genrecon": {"stage": "tex_vae", "module": {}}, "state_dict": {}}, flow_ckpt)
    with pytest.raises(DataFormatError, match="expected 'view_pretrain'"):
        load_pretrained_view_encoder(flow_ckpt)


def test_a_floor_ray_encoder_pretrains_and_an_ss_flow_reads_it(tiny_latents, tmp_path):
    """``preset.image_encoder.geometry_channels=2``: the pretraining and the flow both hand the encoder its views'
    floor-ray maps (the flow in its chunk frame), so both train; an encoder without them refuses the checkpoint."""
    from genrecon.models.image_encoder import SmallViT

    geometry = "preset.image_encoder.geometry_channels=2"
    torch.manual_seed(0)
    _, series = run_train(TINY_MODEL_OVERRIDES + [
        "stage=view_pretrain", geometry, "stage.max_steps=30", "stage.val_every_n_steps=30", "stage.val_batches=1",
        "stage.datamodule.batch_size=8", "stage.module.ema_decay=null", "stage.module.warmup_steps=5", "seed=0",
        "++trainer.enable_checkpointing=true", "callbacks=default", "callbacks.progress_bar=null",
        "callbacks.model_summary=null", "stage.checkpoint_every_n_steps=30"], tiny_latents, tmp_path / "pre")
    assert len(series["train/loss"]) == 30 and head_tail_ratio(series["train/loss"], k=5) < 0.9
    ckpt = next((tmp_path / "pre" / "checkpoints").glob("last*.ckpt"))
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert state["image_encoder.backbone.embeddings.patch_embeddings.weight"].shape[1] == 5  # colour + 2 maps
    overrides = [o.replace("stage.max_steps=120", "stage.max_steps=10") for o in FLOW_OVERRIDES]
    _, flow = run_train(["stage=ss_flow", geometry, CELL_CUE, "preset.image_encoder.frozen=true",
                         f"stage.module.image_encoder_ckpt={ckpt}", *overrides], tiny_latents, tmp_path / "flow")
    assert len(flow["train/loss"]) == 10 and np.isfinite(flow["train/loss"]).all()
    encoder = load_pretrained_view_encoder(ckpt)
    assert encoder.geometry_channels == 2
    same_but_colour_only = dict(width=encoder.out_channels, depth=2, num_heads=2, patch_size=8, num_registers=0)
    load_pretrained_view_encoder(ckpt, SmallViT(**same_but_colour_only, geometry_channels=2))  # the same: loads
    with pytest.raises(DataFormatError, match="image_encoder"):
        load_pretrained_view_encoder(ckpt, SmallViT(**same_but_colour_only))
