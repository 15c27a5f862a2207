"""benchmarks/view_depth_by_surface.py: held-out depth error of view-pretraining checkpoints by surface class."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import load_script


def test_cells_are_classed_by_their_normal_against_world_up():
    script = load_script("benchmarks/view_depth_by_surface.py")
    w2c = torch.eye(4)[None]
    w2c[0, :3, :3] = torch.tensor([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])  # a level camera: world up is camera -y
    up, side, slanted, down = [0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, -0.6, 0.8], [0.0, 1.0, 0.0]
    normal = torch.tensor([up, side, slanted, down]).T.reshape(1, 3, 2, 2) * 3.0  # unnormalised, as pooled
    assert script.cell_classes(normal, w2c).flatten().tolist() == [0, 1, 2, 2]  # a ceiling is "other"


def test_scores_the_held_out_cells_of_each_checkpoint(tiny_dataset, view_pretrain_run, tmp_path, capsys):
    ckpt, _ = view_pretrain_run
    out = load_script("benchmarks/view_depth_by_surface.py").main([
        str(ckpt), str(ckpt), "--names", "a", "b", "--scenes", str(tiny_dataset / "scenes"), "--image-size", "32",
        "--batch-size", "5"])
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(out))
    a, b = out["results"]["a"], out["results"]["b"]
    assert a == {**b, "checkpoint": a["checkpoint"]}  # the same weights on the same views: the same scores
    assert a["all"]["cells"] == sum(a[c]["cells"] for c in ("floor", "vertical", "other")) > 0
    assert a["floor"]["cells"] > 0 and a["vertical"]["cells"] > 0
    parts = sum(a[c]["abs_rel"] * a[c]["cells"] for c in ("floor", "vertical", "other"))
    assert parts / a["all"]["cells"] == pytest.approx(a["all"]["abs_rel"], rel=1e-5)
    with pytest.raises(SystemExit, match="1 --names for 2 checkpoints"):
        load_script("benchmarks/view_depth_by_surface.py").main([
            str(ckpt), str(ckpt), "--names", "a", "--scenes", str(tiny_dataset / "scenes"), "--image-size", "32"])
