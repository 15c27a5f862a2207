"""Structure visibility in the sparse flows (``preset.flow.visibility``, a deviation, off by default): the texture
flow trains with it through train.py, and the checkpoint rebuilds it from the file alone."""

from __future__ import annotations

import numpy as np
import torch

from genrecon.models.visibility import StructureVisibility
from tests.conftest import compose_config
from tests.stages.helpers import head_tail_ratio, run_train
from tests.stages.test_flow import FLOW_OVERRIDES


def test_visibility_is_off_by_default_and_reaches_the_sparse_models_only():
    cfg = compose_config("train", ["stage=tex_flow", "dataset=synthetic", "hardware=cpu"])
    assert cfg.preset.flow.visibility is None and cfg.stage.module.model.visibility is None
    for stage in ("tex_flow", "shape_flow"):
        cfg = compose_config("train", [f"stage={stage}", "hardware=cpu", "preset.flow.visibility={grid:32}"])
        assert dict(cfg.stage.module.model.visibility) == {"grid": 32}
    assert "visibility" not in compose_config("train", ["stage=ss_flow", "hardware=cpu"]).stage.module.model


def test_tex_flow_with_visibility_and_the_cell_cue_trains_and_reloads(tiny_latents, tmp_path):
    from genrecon.stages.loading import load_stage

    torch.manual_seed(0)
    overrides = [o.replace("stage.max_steps=120", "stage.max_steps=40") for o in FLOW_OVERRIDES]
    _, series = run_train(["stage=tex_flow", "preset.flow.visibility={grid:32}", "preset.flow.cell_cue={subdivisions:2}",
                           "++trainer.enable_checkpointing=true",
                           "callbacks=default", "callbacks.progress_bar=null", "callbacks.model_summary=null",
                           "stage.checkpoint_every_n_steps=40", *overrides], tiny_latents, tmp_path)
    loss = series["train/loss"]
    assert len(loss) == 40 and head_tail_ratio(loss, k=10) < 0.9, (np.mean(loss[:10]), np.mean(loss[-10:]))
    module = load_stage(next((tmp_path / "checkpoints").glob("last*.ckpt")), expected_stage="tex_flow", device="cpu")
    vis = module.model.visibility
    assert isinstance(vis, StructureVisibility) and vis.grid == 32 and vis.subdivisions == 2
    assert module.model.proj_linears[0].weight.abs().sum() > 0  # the pathway trained away from its zero init
    assert module.model.cell_cue.to_feature.weight.abs().sum() > 0  # so did the cell cue (sparse path)


def test_tex_flow_on_patched_blocks_trains_and_reloads(tiny_latents, tmp_path):
    """``preset.flow.patch_size=2`` (a deviation, off by default) reaches both sparse flows, trains the texture
    flow through train.py, and its checkpoint rebuilds the patched model from the file alone."""
    from genrecon.stages.loading import load_stage

    assert compose_config("train", ["stage=tex_flow", "hardware=cpu"]).stage.module.model.patch_size == 1
    for stage in ("tex_flow", "shape_flow"):
        cfg = compose_config("train", [f"stage={stage}", "hardware=cpu", "preset.flow.patch_size=2"])
        assert cfg.stage.module.model.patch_size == 2
    torch.manual_seed(0)
    overrides = [o.replace("stage.max_steps=120", "stage.max_steps=60") for o in FLOW_OVERRIDES]
    _, series = run_train(["stage=tex_flow", "preset.flow.patch_size=2", "++trainer.enable_checkpointing=true",
                           "callbacks=default", "callbacks.progress_bar=null", "callbacks.model_summary=null",
                           "stage.checkpoint_every_n_steps=60", *overrides], tiny_latents, tmp_path)
    loss = series["train/loss"]
    assert len(loss) == 60 and head_tail_ratio(loss, k=10) < 0.85, (np.mean(loss[:10]), np.mean(loss[-10:]))
    module = load_stage(next((tmp_path / "checkpoints").glob("last*.ckpt")), expected_stage="tex_flow", device="cpu")
    assert module.model.patch_size == 2 and module.model.fine_out.out_features == 32
    assert module.model.fine_out.weight.abs().sum() > 0 and module.model.cond_patch is not None
