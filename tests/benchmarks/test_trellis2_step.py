"""benchmarks/trellis2_step.py: one forward + backward of the sparse flow on one packed sample, with a baseline
preset measured in the same run."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import load_script


def test_coords_are_distinct_cells_of_one_sample():
    bench = load_script("benchmarks/trellis2_step.py")
    coords = bench.random_coords(500, 16, torch.Generator().manual_seed(0))
    assert coords.shape == (500, 4) and coords.dtype == torch.int32
    assert (coords[:, 0] == 0).all() and coords[:, 1:].min() >= 0 and coords[:, 1:].max() < 16
    assert len({tuple(c) for c in coords[:, 1:].tolist()}) == 500
    with pytest.raises(ValueError, match="exceeds"):
        bench.random_coords(17**3, 16, torch.Generator())


def test_step_reports_both_presets_and_trains_every_transformer_weight(tmp_path):
    bench = load_script("benchmarks/trellis2_step.py")
    out = tmp_path / "step.json"
    report = bench.main(["--device", "cpu", "--preset", "tiny", "--baseline-preset", "tiny", "--tokens", "48",
                         "--cond-tokens", "41", "--steps", "1", "--warmup", "0", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    model = bench.build("tiny", 64, 32, torch.device("cpu"), False, "auto")
    names = [n for n, _ in model.named_parameters()]
    for entry in (report["baseline"], report["result"]):
        assert entry["params"] == sum(p.numel() for p in model.parameters())
        assert entry["loss_finite"] and entry["tokens"] == 48 and entry["median_s"] > 0
        # Only the view aggregator is idle: the 3-D condition is given as a feature.
        assert entry["params_with_grad"] == len([n for n in names if not n.startswith("aggregator.")])
        assert entry["peak_mem_gb"] is None
    assert report["ratio"]["params"] == 1.0


def test_in_channels_must_hold_the_concatenated_condition():
    bench = load_script("benchmarks/trellis2_step.py")
    with pytest.raises(SystemExit):
        bench.main(["--device", "cpu", "--in-channels", "32", "--out-channels", "32"])
