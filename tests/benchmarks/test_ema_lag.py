"""benchmarks/ema_lag.py: one run, three weight sets (raw, plain EMA, warmed-up EMA), each validated in full."""

from __future__ import annotations

import pytest

from tests.conftest import load_script


def test_weight_sets_are_validated_at_each_evaluation(tiny_dataset, tmp_path):
    result = load_script("benchmarks/ema_lag.py").main([
        "--root", str(tmp_path), "--data", str(tiny_dataset), "--steps", "6", "--evals", "2", "--batch", "4",
        "--decay", "0.999", "--out", str(tmp_path / "ema.json")])
    curves = result["curves"]
    assert [e["step"] for e in curves["raw"]] == [3, 6] and set(curves) == {"raw", "ema", "ema_warmup"}
    # At 0.999 the plain average is still nearly the initial weights, the raw weights have moved on: the
    # weight sets really are swapped in for validation.
    assert curves["ema"][-1]["val/loss"] != pytest.approx(curves["raw"][-1]["val/loss"], rel=1e-4)
    assert (tmp_path / "ema.json").is_file()


def test_a_zero_decay_average_is_the_raw_weights_and_evaluating_leaves_the_run_alone(tiny_latents, tmp_path):
    def run(evals: int) -> dict:
        return load_script("benchmarks/ema_lag.py").main([
            "--root", str(tmp_path), "--data", str(tiny_latents), "--stage", "tex_flow", "--steps", "6",
            "--evals", str(evals), "--decay", "0.0"])["curves"]

    once, twice = run(1), run(2)
    last = {name: curve[-1]["val/loss"] for name, curve in twice.items()}
    assert last["ema"] == pytest.approx(last["raw"], rel=1e-5) and last["ema_warmup"] == pytest.approx(last["raw"], rel=1e-5)
    # An evaluation at step 3 must not change what the run trains on (validation attaches the datamodule to its own
    # trainer and draws from the global generators): step 6 is the same with or without it.
    assert once["raw"][-1]["step"] == twice["raw"][-1]["step"] == 6
    assert once["raw"][-1]["val/loss"] == twice["raw"][-1]["val/loss"]
