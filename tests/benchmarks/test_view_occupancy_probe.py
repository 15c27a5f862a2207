"""benchmarks/view_occupancy_probe.py on the tiny dataset: a position-prior line, then the head's curve."""

from __future__ import annotations

import json

import numpy as np

from tests.conftest import load_script


def test_probe_prints_the_prior_then_a_falling_loss(tiny_dataset, tmp_path):
    probe = load_script("benchmarks/view_occupancy_probe.py")
    out = tmp_path / "probe.jsonl"
    config = {"width": 32, "depth": 1, "num_heads": 2, "patch_size": 8, "depth_cue": {"bins": 8}, "position": True}
    lines = probe.main(["--shards", str(tiny_dataset / "shards"), "--steps", "12", "--every", "6", "--views", "2",
                        "--threads", "1", "--config", json.dumps(config), "--out", str(out)])
    assert [json.loads(x) for x in out.read_text().splitlines()] == lines
    base, *curve = lines
    assert base["baseline"] == "position_prior" and 0 <= base["val_iou"] <= 1 and base["config"]["width"] == 32
    assert [c["step"] for c in curve] == [0, 6, 12]
    assert all(0 <= c["val_iou"] <= 1 for c in curve)
    assert curve[-1]["loss"] < curve[0]["loss"], curve


def test_position_prior_scores_the_best_threshold():
    probe = load_script("benchmarks/view_occupancy_probe.py")
    floor = np.zeros((1, 4, 4, 4), np.float32)
    floor[..., 0] = 1
    train = [{"occupancy": floor}, {"occupancy": floor}, {"occupancy": np.zeros_like(floor)}]
    # Frequency 2/3 on the floor: any threshold below it predicts the floor, which the held-out chunk has.
    assert probe.position_prior(train, [{"occupancy": floor}])["val_iou"] == 1.0
    assert probe.position_prior(train, [{"occupancy": np.zeros_like(floor)}])["val_iou"] == 0.0


def test_probe_starts_from_a_pretrained_encoder_and_its_depth_head(tiny_dataset, view_pretrain_run, monkeypatch):
    """--encoder-ckpt: the pathway reads through the frozen pretrained encoder, and the depth cue starts from the
    pretraining's depth head (the tiny pretraining has 64 bins over [0, 4), the cue's defaults)."""
    import torch

    probe = load_script("benchmarks/view_occupancy_probe.py")
    ckpt, _ = view_pretrain_run
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    stages, heads = [], []
    build = probe.build

    def spy(*args, **kwargs):
        stages.append(build(*args, **kwargs))
        heads.append(stages[-1].model.depth_cue.head.weight.detach().clone())  # as built, before any step
        return stages[-1]

    monkeypatch.setattr(probe, "build", spy)
    base, *curve = probe.main(["--shards", str(tiny_dataset / "shards"), "--steps", "4", "--every", "2", "--views",
                               "2", "--threads", "1", "--config", json.dumps({"depth_cue": {"bins": 64}}),
                               "--encoder-ckpt", str(ckpt)])
    assert base["encoder_ckpt"] == str(ckpt) and [c["step"] for c in curve] == [0, 2, 4]
    (stage,) = stages
    assert stage.image_encoder.frozen
    for name, value in stage.image_encoder.state_dict().items():
        assert torch.equal(value, state[f"image_encoder.{name}"]), name  # frozen: unchanged after training
    assert torch.equal(heads[0], state["head.depth_bins.weight"])  # the cue starts from the pretrained depth head
    assert not torch.equal(stage.model.depth_cue.head.weight, heads[0])  # and trains on
