"""benchmarks/across_runs.py on flow_quality-shaped results written here."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from tests.conftest import load_script

ENTRY = "ss_flow@x0pavg8"


def _script():
    return load_script("benchmarks/across_runs.py")


def _result(path, scores, vae, step=None, chunks=("a", "b", "c", "d")):
    per = {"per_chunk": {"iou": list(scores)}}
    if step is not None:
        per["checkpoint_step"] = step
    path.write_text(json.dumps({"chunks": list(chunks), "results": {
        ENTRY: per, "ss_vae_roundtrip": {"per_chunk": {"iou": list(vae)}}}}))
    return path


def _runs(tmp_path, a=-0.2, b=0.03, c=0.5, noise=()):
    """Five runs whose mean over the first 3 chunks is exactly a + b log2(k samples) + c vae (+ noise);
    the 4th chunk (outside --first 3) is off the model."""
    specs = [(500, 16, 0.90), (1000, 16, 0.95), (2000, 32, 0.92), (4000, 32, 0.98), (800, 8, 0.80)]
    texts = []
    for i, (steps, batch, vae) in enumerate(specs):
        score = a + b * math.log2(steps * batch / 1000) + c * vae + (noise[i] if noise else 0.0)
        spread = np.array([-0.01, 0.0, 0.01])  # chunks differ; their mean is the run's score
        path = _result(tmp_path / f"r{i}.json", [*(score + spread), 9.0], [*(vae - spread), -9.0], step=steps)
        texts.append(f"{path}:batch={batch}")
    return texts


def test_recovers_the_terms_and_the_samples_to_a_target(tmp_path, capsys):
    figure = tmp_path / "fit.png"
    out = _script().main(_runs(tmp_path) + ["--first", "3", "--target", "0.7", "--at-vae", "1.0",
                                            "--figure", str(figure)])
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(out))  # stdout is exactly the result
    coef = out["coefficients"]
    assert coef["intercept"] == pytest.approx(-0.2, abs=1e-9)
    assert coef["per_doubling"] == pytest.approx(0.03, abs=1e-9)
    assert coef["per_vae_iou"] == pytest.approx(0.5, abs=1e-9)
    assert out["residual_sd"] == pytest.approx(0.0, abs=1e-9) and out["dof"] == 2
    assert [r["samples"] for r in out["runs"]] == [8000, 16000, 64000, 128000, 6400]
    # 0.7 = -0.2 + 0.03 x + 0.5 -> x = 13.33: 1000 * 2^13.33 samples, 13.33 - log2(128) doublings past the largest
    need = (0.7 + 0.2 - 0.5) / 0.03
    assert out["target"]["samples"] == pytest.approx(1000 * 2 ** need)
    assert out["target"]["doublings_after_largest"] == pytest.approx(need - 7)
    with Image.open(figure) as im:
        assert im.size == (720, 420) and np.asarray(im).std() > 0


def test_noise_goes_to_the_residual_and_the_standard_errors(tmp_path):
    out = _script().main(_runs(tmp_path, noise=(0.02, -0.01, -0.02, 0.01, 0.0)) + ["--first", "3"])
    assert out["residual_sd"] > 0.005
    assert all(s > 0 for s in out["standard_errors"].values())
    assert "target" not in out
    # the fitted values plus the residuals give back the scores
    assert all(abs(r["score"] - r["fitted"]) < 0.05 for r in out["runs"])


def test_steps_given_with_the_run_override_the_checkpoint_step(tmp_path):
    texts = _runs(tmp_path)
    texts[0] = texts[0] + ":steps=250"
    out = _script().main(texts + ["--first", "3"])
    assert out["runs"][0]["steps"] == 250 and out["runs"][0]["samples"] == 4000


def test_a_flat_curve_reaches_no_target(tmp_path):
    out = _script().main(_runs(tmp_path, b=0.0) + ["--first", "3", "--target", "0.7"])
    assert out["target"]["samples"] is None and out["target"]["doublings_after_largest"] is None


def test_bad_input_names_the_file_and_the_field(tmp_path):
    script = _script()
    texts = _runs(tmp_path)
    with pytest.raises(SystemExit, match="four runs"):
        script.main(texts[:3] + ["--first", "3"])
    with pytest.raises(SystemExit, match="global batch is missing"):
        script.main([texts[0].split(":")[0]] + texts[1:])
    with pytest.raises(SystemExit, match="positive integers"):
        script.main([texts[0] + ":steps=0"] + texts[1:])
    no_step = _result(tmp_path / "old.json", [0.3] * 4, [0.9] * 4)
    with pytest.raises(SystemExit, match=r"old\.json has no 'results\.ss_flow@x0pavg8\.checkpoint_step'"):
        script.main([f"{no_step}:batch=8"] + texts[1:] + ["--first", "3"])
    other = _result(tmp_path / "other.json", [0.3] * 4, [0.9] * 4, step=100, chunks=("a", "b", "x", "d"))
    with pytest.raises(SystemExit, match="other.json was scored on other chunks"):
        script.main(texts[1:] + [f"{other}:batch=8", "--first", "3"])
    with pytest.raises(SystemExit, match="fewer than --first 12"):
        script.main(texts)
    same = [str(_result(tmp_path / f"same{i}.json", [0.3] * 4, [0.9] * 4, step=100)) + ":batch=8"
            for i in range(4)]
    with pytest.raises(SystemExit, match="do not separate the terms"):
        script.main(same + ["--first", "3"])
