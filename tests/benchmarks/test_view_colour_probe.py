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


def test_visibility_option_adds_the_visible_read_out_and_masks_the_pathway(tiny_dataset, tmp_path, monkeypatch):
    probe = load_script("benchmarks/view_colour_probe.py")
    config = {"width": 32, "depth": 1, "num_heads": 2, "patch_size": 8, "cells": 8, "lr": 3e-3}
    argv = ["--shards", str(tiny_dataset / "shards"), "--steps", "4", "--every", "2", "--views", "2", "--threads", "1",
            "--config", json.dumps(config)]
    masks = []
    aggregate = probe.project_and_aggregate

    def spy(*args, visible=None, **kwargs):
        masks.append(visible)
        return aggregate(*args, visible=visible, **kwargs)

    monkeypatch.setattr(probe, "project_and_aggregate", spy)
    plain = probe.main(argv)
    assert all(m is None for m in masks) and [x.get("baseline") for x in plain[:3]] == ["constant", "readout", None]
    masks.clear()
    constant, readout, visible, *curve = probe.main(argv + ["--visibility"])
    assert masks and all(isinstance(m, torch.Tensor) and m.dtype == torch.bool for m in masks)
    assert constant["visibility"] is True and visible["baseline"] == "readout_visible"
    assert 0 < visible["kept_projections"] <= 1 and 0 < visible["val_cells_seen"] <= 1
    assert visible["val_psnr"] > 0 and visible["val_psnr_seen"] > 0 and readout["val_psnr_seen"] > 0
    assert [c["step"] for c in curve] == [0, 2, 4] and all(c["val_psnr_seen"] > 0 for c in curve)
    # Same baselines either way; the flag changes only the pathway (and adds its read-out).
    assert plain[0]["val_psnr"] == constant["val_psnr"] and plain[1] == readout


def test_visible_read_out_ignores_the_views_that_do_not_see_the_cell():
    probe = load_script("benchmarks/view_colour_probe.py")
    from tests.models.test_visibility import R, cameras, walls

    active = torch.cat([torch.zeros(128, 1, dtype=torch.long), walls()], 1)
    w2c, K, mask = cameras([[0.0, -2.0, 0.1], [0.0, 2.0, 0.1]])
    colours = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # the front camera sees red, the back one green
    batch = {"w2c": w2c, "intrinsics": K, "view_mask": mask,
             "views": colours[None, :, :, None, None].expand(1, 2, 3, 16, 16).contiguous()}
    seen = probe.cell_views(batch, active, R, probe.StructureVisibility())
    assert seen.valid.all() and torch.equal(seen.fused, seen.visible)
    torch.testing.assert_close(probe.pixel_readout(batch, active, R), torch.tensor([0.5, 0.5, 0.0]).expand(128, 3))
    read = probe.pixel_readout(batch, active, R, seen.visible)
    torch.testing.assert_close(read[:64], colours[0].expand(64, 3))
    torch.testing.assert_close(read[64:], colours[1].expand(64, 3))


def test_probe_reads_through_a_frozen_pretrained_encoder(tiny_dataset, view_pretrain_run, tmp_path):
    """--encoder-ckpt: the probe's pathway starts from a view_pretrain checkpoint (its own architecture) and, unless
    --train-encoder, trains only the aggregator and the head."""
    from genrecon.stages.view_pretrain import load_pretrained_view_encoder

    probe = load_script("benchmarks/view_colour_probe.py")
    ckpt, _ = view_pretrain_run
    built = []
    load = probe.load_pretrained_view_encoder
    probe.load_pretrained_view_encoder = lambda path: built.append(load(path)) or built[-1]
    lines = probe.main(["--shards", str(tiny_dataset / "shards"), "--steps", "6", "--every", "3", "--views", "2",
                        "--threads", "1", "--config", json.dumps({"cells": 8, "lr": 3e-3}),
                        "--encoder-ckpt", str(ckpt)])
    constant, _, *curve = lines
    assert constant["encoder_ckpt"] == str(ckpt) and constant["train_encoder"] is False
    assert [c["step"] for c in curve] == [0, 3, 6] and curve[-1]["val_psnr"] != curve[0]["val_psnr"]  # head trains
    (encoder,) = built
    reference = load_pretrained_view_encoder(ckpt)
    assert encoder.frozen and all(torch.equal(a, b) for a, b in zip(encoder.state_dict().values(),
                                                                      reference.state_dict().values()))


def test_the_config_chooses_the_projection_sampling(tiny_dataset, monkeypatch):
    probe = load_script("benchmarks/view_colour_probe.py")
    built = []

    class Spy(probe.Projection):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(probe, "Projection", Spy)
    config = {"width": 32, "depth": 1, "num_heads": 2, "patch_size": 8, "cells": 8, "sampling": "bilinear"}
    lines = probe.main(["--shards", str(tiny_dataset / "shards"), "--steps", "2", "--every", "2", "--views", "2",
                        "--threads", "1", "--config", json.dumps(config)])
    assert [p.sampling for p in built] == ["bilinear"] and lines[-1]["step"] == 2
