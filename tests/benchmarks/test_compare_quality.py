"""benchmarks/compare_quality.py on flow_quality-shaped results written here."""

from __future__ import annotations

import json
import math

import pytest

from tests.conftest import load_script


def _script():
    return load_script("benchmarks/compare_quality.py")


def _result(path, chunks, entries, seed=0):
    data = {"chunks": chunks, "seed": seed,
            "results": {e: {"metrics": {}, "per_chunk": per} for e, per in entries.items()}}
    path.write_text(json.dumps(data))
    return path


def test_paired_difference_counts_the_chunks_won_and_its_standard_error():
    r = _script().paired_difference([0.5, 0.4, 0.3, 0.2], [0.4, 0.4, 0.1, 0.3])
    # differences 0.1, 0, 0.2, -0.1: mean 0.05, sample s.d. sqrt(0.0166..), s.e. that / 2
    assert r["diff"] == pytest.approx(0.05)
    assert r["se"] == pytest.approx(math.sqrt(((0.05**2) + 0.05**2 + 0.15**2 + 0.15**2) / 3) / 2)
    assert (r["better"], r["equal"], r["n"]) == (2, 1, 4)
    assert r["new"] == pytest.approx(0.35) and r["base"] == pytest.approx(0.3)
    # a chunk without a value in one run (None in the JSON) is left out of both
    gap = _script().paired_difference([0.5, None, 0.3], [0.4, 0.4, 0.1])
    assert gap["n"] == 2 and gap["diff"] == pytest.approx(0.15)


def test_main_compares_shared_entries_and_metrics(tmp_path):
    chunks = ["a", "b", "c"]
    new = _result(tmp_path / "new.json", chunks, {"ss_flow": {"iou": [0.3, 0.4, 0.5], "iou_32": [0.5, 0.5, 0.5]},
                                                  "ss_flow@x0": {"iou": [0.4, 0.4, 0.4]}})
    base = _result(tmp_path / "base.json", chunks, {"ss_flow": {"iou": [0.2, 0.4, 0.3]}})
    out = tmp_path / "cmp.json"
    r = _script().main([str(new), str(base), "--out", str(out)])
    assert list(r["comparisons"]) == ["ss_flow"] and list(r["comparisons"]["ss_flow"]) == ["iou"]
    row = r["comparisons"]["ss_flow"]["iou"]
    assert row["diff"] == pytest.approx(0.1) and row["better"] == 2 and row["equal"] == 1
    assert json.loads(out.read_text())["comparisons"]["ss_flow"]["iou"]["diff"] == pytest.approx(0.1)
    assert r["warnings"] == []


def test_one_file_against_one_of_its_own_entries(tmp_path):
    path = _result(tmp_path / "fq.json", ["a", "b"], {"ss_flow": {"iou": [0.3, 0.3]},
                                                      "ss_flow@x0pavg16": {"iou": [0.4, 0.2]}})
    r = _script().main([str(path), str(path), "--base-entry", "ss_flow", "--metrics", "iou"])
    assert r["comparisons"]["ss_flow - ss_flow"]["iou"]["diff"] == 0.0
    row = r["comparisons"]["ss_flow@x0pavg16 - ss_flow"]["iou"]
    assert row["diff"] == pytest.approx(0.0) and row["better"] == 1 and row["n"] == 2


def test_different_chunks_are_refused_unless_unpaired(tmp_path):
    new = _result(tmp_path / "train.json", ["t0", "t1", "t2"], {"ss_flow": {"iou": [0.5, 0.6, 0.7]}})
    base = _result(tmp_path / "val.json", ["v0", "v1"], {"ss_flow": {"iou": [0.4, 0.6]}})
    with pytest.raises(SystemExit, match="chunks differ.*train.json: 3.*val.json: 2.*position 0"):
        _script().main([str(new), str(base)])
    row = _script().main([str(new), str(base), "--unpaired"])["comparisons"]["ss_flow"]["iou"]
    assert row["diff"] == pytest.approx(0.1)
    assert row["se"] == pytest.approx(math.sqrt(0.01 / 3 + 0.02 / 2))
    assert (row["n_new"], row["n_base"]) == (3, 2)


def test_missing_entries_and_fields_are_named(tmp_path):
    good = _result(tmp_path / "a.json", ["x"], {"ss_flow": {"iou": [0.1]}})
    other = _result(tmp_path / "b.json", ["x"], {"ss_flow": {"iou": [0.2]}}, seed=3)
    with pytest.raises(SystemExit, match="b.json has no entry 'ss_flow@x0'"):
        _script().main([str(good), str(other), "--base-entry", "ss_flow@x0"])
    with pytest.raises(SystemExit, match=r"a.json has no 'results.ss_flow.per_chunk.precision'"):
        _script().main([str(good), str(other), "--metrics", "precision"])
    (tmp_path / "c.json").write_text(json.dumps({"results": {}}))
    with pytest.raises(SystemExit, match="c.json has no 'chunks' field"):
        _script().main([str(tmp_path / "c.json"), str(good)])
    assert "seeds differ" in _script().main([str(good), str(other)])["warnings"][0]


def test_first_pairs_the_shared_first_chunks_of_runs_scored_on_more(tmp_path):
    more = _result(tmp_path / "48.json", ["a", "b", "c", "d"], {"ss_flow": {"iou": [0.5, 0.3, 0.9, 0.9]}})
    fewer = _result(tmp_path / "12.json", ["a", "b"], {"ss_flow": {"iou": [0.4, 0.4]}})
    with pytest.raises(SystemExit, match="chunks differ"):
        _script().main([str(more), str(fewer)])
    r = _script().main([str(more), str(fewer), "--first", "2"])
    row = r["comparisons"]["ss_flow"]["iou"]
    assert row["n"] == 2 and row["diff"] == pytest.approx(0.0) and row["new"] == pytest.approx(0.4)
    assert r["first"] == 2
    with pytest.raises(SystemExit, match="--first 3: .*12.json has 2 chunks"):
        _script().main([str(more), str(fewer), "--first", "3"])
