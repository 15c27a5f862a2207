"""benchmarks/tex_vae_curve.py on the tiny dataset: a baseline line, then a learning curve that improves."""

from __future__ import annotations

import json

from tests.conftest import load_script


def test_curve_starts_with_the_block_mean_baseline_and_learns(tiny_dataset, tmp_path):
    out = tmp_path / "curve.jsonl"
    lines = load_script("benchmarks/tex_vae_curve.py").main([
        "--shards", str(tiny_dataset / "shards"), "--steps", "30", "--every", "15",
        "--config", json.dumps({"sample_posterior": False, "augment": True}), "--out", str(out)])
    assert [json.loads(x) for x in out.read_text().splitlines()] == lines
    base, *curve = lines
    assert base["baseline"] == "block_mean" and base["factor"] == 4 and 10 < base["val_psnr"] < 60
    assert [c["step"] for c in curve] == [0, 15, 30]
    assert curve[-1]["val_psnr"] > curve[0]["val_psnr"] + 3
    assert curve[-1]["train_psnr"] > curve[0]["train_psnr"] + 3
