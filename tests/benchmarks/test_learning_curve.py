"""benchmarks/learning_curve.py on flow_quality-shaped results written here."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from tests.conftest import load_script


def _script():
    return load_script("benchmarks/learning_curve.py")


def _result(path, values, step=None, chunks=("a", "b", "c"), entry="ss_flow@x0pavg8"):
    per = {"metrics": {}, "per_chunk": {"iou": values}}
    if step is not None:
        per["checkpoint_step"] = step
    path.write_text(json.dumps({"chunks": list(chunks), "results": {entry: per}}))
    return path


def test_slopes_per_doubling_and_the_doublings_to_a_target(tmp_path, capsys):
    # each chunk rises exactly linearly in log2(steps): 0.02, 0.04 and 0.06 per doubling
    slopes, base = np.array([0.02, 0.04, 0.06]), np.array([0.30, 0.35, 0.40])
    files = []
    for steps in (1000, 2000, 8000):
        files.append(_result(tmp_path / f"s{steps}.json", list(base + slopes * math.log2(steps / 1000)), steps))
    figure = tmp_path / "curve.png"
    out = _script().main([str(f) for f in files] + ["--entry", "ss_flow@x0pavg8", "--global-batch", "32",
                                                      "--target", "0.55", "--figure", str(figure)])
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(out))  # stdout is exactly the result
    assert out["slope_per_doubling"] == pytest.approx(0.04)
    assert out["slope_se"] == pytest.approx(0.02 / math.sqrt(3))  # s.d. of (0.02, 0.04, 0.06) over sqrt(3)
    assert out["chunks_rising"] == 3 and out["chunks"] == 3
    assert [p["steps"] for p in out["points"]] == [1000, 2000, 8000]
    assert out["points"][-1]["samples"] == 8000 * 32
    assert out["points"][-1]["mean"] == pytest.approx(0.35 + 0.04 * 3)
    # from the fitted 0.47 at 8,000 steps, 0.08 more at 0.04 a doubling: 2 doublings, 32,000 steps
    assert out["fitted_last"] == pytest.approx(0.47)
    assert out["target"]["doublings_after_last"] == pytest.approx(2.0)
    assert out["target"]["steps"] == pytest.approx(32000)
    with Image.open(figure) as im:
        assert im.size == (720, 420) and np.asarray(im).std() > 0


def test_steps_given_after_the_path_override_the_checkpoint_step(tmp_path):
    a = _result(tmp_path / "a.json", [0.2, 0.2, 0.2])  # scored before checkpoint_step was recorded
    b = _result(tmp_path / "b.json", [0.3, 0.3, 0.3], step=999)
    out = _script().main([f"{a}@100", f"{b}@400", "--entry", "ss_flow@x0pavg8"])
    assert [p["steps"] for p in out["points"]] == [100, 400]
    assert out["slope_per_doubling"] == pytest.approx(0.05)
    assert "target" not in out


def test_a_falling_curve_reaches_no_target(tmp_path):
    a = _result(tmp_path / "a.json", [0.4, 0.4, 0.4], step=100)
    b = _result(tmp_path / "b.json", [0.3, 0.35, 0.45], step=200)
    out = _script().main([str(a), str(b), "--entry", "ss_flow@x0pavg8", "--target", "0.7"])
    assert out["slope_per_doubling"] < 0 and out["chunks_rising"] == 1
    assert out["target"]["doublings_after_last"] is None


def test_a_chunk_missing_in_one_file_is_left_out(tmp_path):
    a = _result(tmp_path / "a.json", [0.2, None, 0.2], step=100)
    b = _result(tmp_path / "b.json", [0.3, 0.9, 0.3], step=200)
    out = _script().main([str(a), str(b), "--entry", "ss_flow@x0pavg8"])
    assert out["chunks"] == 2 and out["slope_per_doubling"] == pytest.approx(0.1)


@pytest.mark.parametrize("case, message", [
    ("other_chunks", "other chunks"),
    ("no_step", "checkpoint_step"),
    ("no_entry", "no 'results.ss_flow@x0pavg8'"),
    ("one_length", "same step"),
])
def test_bad_input_names_the_file_and_the_field(tmp_path, case, message):
    a = _result(tmp_path / "a.json", [0.2, 0.2, 0.2], step=100)
    if case == "other_chunks":
        b = _result(tmp_path / "b.json", [0.3, 0.3, 0.3], step=200, chunks=("a", "b", "z"))
    elif case == "no_step":
        b = _result(tmp_path / "b.json", [0.3, 0.3, 0.3])
    elif case == "no_entry":
        b = _result(tmp_path / "b.json", [0.3, 0.3, 0.3], step=200, entry="ss_flow")
    else:
        b = _result(tmp_path / "b.json", [0.3, 0.3, 0.3], step=100)
    with pytest.raises(SystemExit, match=message) as err:
        _script().main([str(a), str(b), "--entry", "ss_flow@x0pavg8"])
    if case in ("no_step", "no_entry"):
        assert "b.json" in str(err.value)
