"""benchmarks/view_decode.py: the views decoded in threads equal the old stack-afterwards decoding exactly."""

from __future__ import annotations

import json

from tests.conftest import load_script


def test_in_thread_decoding_matches_the_stacked_baseline(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "view_decode.json"
    summary = load_script("benchmarks/view_decode.py").main([
        "--scenes", str(tiny_dataset / "scenes"), "--image-size", "32", "--threads", "2", "--repeats", "1",
        "--out", str(out)])
    assert json.loads(out.read_text()) == summary == json.loads(capsys.readouterr().out)
    assert summary["identical"] is True and summary["views"] > 0 and summary["threads"] == 2
    assert set(summary["seconds"]) == {"in_threads", "stack_afterwards"}
