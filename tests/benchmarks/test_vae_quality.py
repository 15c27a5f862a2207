"""benchmarks/vae_quality.py on the tiny pipeline's held-out chunks, and its block-mean baseline."""

from __future__ import annotations

import json
import math

import numpy as np

from tests.conftest import load_script


def test_latent_cell_mean_averages_each_cell_and_nothing_across_cells():
    vq = load_script("benchmarks/vae_quality.py")
    coords = np.array([[0, 0, 0], [1, 1, 1], [4, 0, 0], [7, 3, 3]])  # cells (0,0,0) twice and (1,0,0) twice
    values = np.array([[0.0], [1.0], [0.2], [0.6]])
    out = vq.latent_cell_mean(coords, values, factor=4)
    np.testing.assert_allclose(out[:, 0], [0.5, 0.5, 0.4, 0.4], atol=1e-6)
    np.testing.assert_allclose(vq.latent_cell_mean(coords, values, factor=1), values, atol=1e-6)


def test_scores_the_three_vaes_and_the_block_mean_baseline(tiny_pipeline, tmp_path, capsys):
    root, ckpts = tiny_pipeline
    out = tmp_path / "vae_quality.json"
    summary = load_script("benchmarks/vae_quality.py").main([
        "--shards", str(root / "shards"), "--ss-vae", str(ckpts / "ss_vae.ckpt"),
        "--shape-vae", str(ckpts / "shape_vae.ckpt"), "--tex-vae", str(ckpts / "tex_vae.ckpt"),
        "--max-chunks", "2", "--samples", "4000", "--device", "cpu", "--out", str(out)])
    assert json.loads(out.read_text()) == summary
    assert json.loads(capsys.readouterr().out) == summary
    assert 0.0 <= summary["ss_iou"]["mean"] <= 1.0 and summary["ss_iou"]["n"] == 2
    assert summary["shape_chamfer_vox"]["mean"] >= 0 and 0.0 <= summary["shape_nc"]["mean"] <= 1.0
    for key in ("tex_psnr_db", "tex_block_mean_psnr_db"):
        assert summary[key]["n"] == 2 and math.isfinite(summary[key]["mean"]) and summary[key]["mean"] > 0
