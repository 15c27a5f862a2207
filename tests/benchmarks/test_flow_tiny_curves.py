"""benchmarks/flow_tiny_curves.py: one run per variant from the same seed, windows of the logged loss."""

from __future__ import annotations

from tests.conftest import load_script


def test_each_variant_trains_and_reports_its_loss_windows(tiny_latents, tmp_path):
    result = load_script("benchmarks/flow_tiny_curves.py").main([
        "--root", str(tmp_path), "--data", str(tiny_latents), "--steps", "6", "--window", "4",
        "--variant", "cells=preset.flow.patch_size=1", "--variant", "blocks=preset.flow.patch_size=2",
        "--common", "preset.flow.width=64", "--out", str(tmp_path / "curves.json"),
    ])
    cells, blocks = result["variants"]["cells"], result["variants"]["blocks"]
    assert len(cells["train_loss_windows"]) == len(blocks["train_loss_windows"]) == 2  # steps 1-4 and 5-6
    assert cells["train_loss_windows"] != blocks["train_loss_windows"]  # the override reached train.py
    assert cells["val_loss"] > 0 and blocks["val_loss"] > 0
    assert (tmp_path / "curves.json").is_file() and (tmp_path / "runs" / "tex_flow_blocks").is_dir()
