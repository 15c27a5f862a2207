"""benchmarks/view_colour_probe.py on the tiny dataset: the cell targets are the O-Voxels' mean colours, the
baselines come first, and the head starts at the constant baseline and learns."""

from __future__ import annotations

import json

import torch

from tests.conftest import load_script


def test_cell_colours_average_the_ovoxels_of_each_cell():
    probe = load_script("benchmarks/view_colour_probe.py")
    coords = torch.tensor([[0, 0, 0, 0], [0, 1, 1, 1], [0, 2, 0, 0], [1, 0, 0, 1]], dtype=torch.int32)
    pbr = torch.zeros(4, 6)
    pbr[:, 0] = torch.tensor([0.2, 0.4, 0.9, 0.5])
    active, colour = probe.cell_colours({"ovoxel_coords": coords, "ovoxel_pbr": pbr, "ovoxel_resolution": 4}, 2)
    assert active.tolist() == [[0, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0]]
    torch.testing.assert_close(colour[:, 0], torch.tensor([0.3, 0.9, 0.5]))


def test_probe_prints_the_baselines_then_a_learning_curve(tiny_dataset, tmp_path):
    probe = load_script("benchmarks/view_colour_probe.py")
    out = tmp_path / "probe.jsonl"
    config = {"width": 32, "depth": 1, "num_heads": 2, "patch_size": 8, "cells": 8, "lr": 3e-3}
    lines = probe.main(["--shards", str(tiny_dataset / "shards"), "--steps", "30", "--every", "15", "--views", "2",
                        "--threads", "1", "--config", json.dumps(config), "--out", str(out)])
    assert [json.loads(x) for x in out.read_text().splitlines()] == lines
    constant, readout, *curve = lines
    assert constant["baseline"] == "constant" and readout["baseline"] == "readout"
    assert constant["val_psnr"] > 0 and readout["val_psnr"] > 0 and constant["val_cells"] > 0
    assert [c["step"] for c in curve] == [0, 15, 30]
    # The head starts at the training mean (the constant baseline) and moves from there after one step.
    assert abs(curve[0]["val_psnr"] - constant["val_psnr"]) < 1.0
    assert curve[-1]["loss"] < curve[0]["loss"], curve
