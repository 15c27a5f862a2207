"""benchmarks/step_rate.py: steps/s over time from RunStats step logs, the start-up ramp and its cost."""

from __future__ import annotations

import json

import pytest

from tests.conftest import load_script

SR = load_script("benchmarks/step_rate.py")


def _log(path, rates_and_counts, t0=1000.0, first_step=0):
    """A step log that runs ``count`` steps at ``rate`` steps/s for each (rate, count) in turn."""
    t, step, lines = t0, first_step, []
    for rate, count in rates_and_counts:
        for _ in range(count):
            step += 1
            t += 1.0 / rate
            lines.append(json.dumps({"step": step, "time": t, "loss": 0.1, "pid": 1}))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_slow_start_is_measured_as_ramp_and_lost_steps(tmp_path, capsys):
    log = _log(tmp_path / "steps_tex_flow_pre.jsonl", [(0.5, 100), (2.0, 1000)])
    report = SR.main([str(log), "--window", "20", "--out", str(tmp_path / "r.json"),
                      "--plot", str(tmp_path / "r.png")])
    capsys.readouterr()
    run = report["runs"]["tex_flow_pre"]
    assert run["steps"] == 1099 and run["seconds"] == pytest.approx(698.0)
    assert run["first_window_rate"] == pytest.approx(0.5) and run["steady_rate"] == pytest.approx(2.0)
    # The first window of fast steps only ends 10 s after the slow ones.
    assert run["ramp_s"] == pytest.approx(208.0)
    assert run["steps_lost_to_ramp"] == pytest.approx(2.0 * 698.0 - 1099, abs=0.2)
    assert json.loads((tmp_path / "r.json").read_text()) == report
    assert (tmp_path / "r.png").stat().st_size > 1000


def test_an_even_run_has_no_ramp_and_loses_nothing(tmp_path, capsys):
    report = SR.main([str(_log(tmp_path / "even.jsonl", [(3.0, 300)])), "--window", "30"])
    capsys.readouterr()
    run = report["runs"]["even"]
    assert run["steady_rate"] == pytest.approx(3.0) and run["ramp_s"] == pytest.approx(10.0)
    assert run["steps_lost_to_ramp"] == pytest.approx(0.0, abs=1e-6)


def test_resumed_steps_keep_their_last_time_and_bad_lines_name_the_file(tmp_path):
    path = tmp_path / "steps_x.jsonl"
    path.write_text('{"step": 1, "time": 1.0}\n{"step": 2, "time": 2.0}\n{"step": 2, "time": 5.0}\n\n')
    assert SR.read_steps(path) == [(1, 1.0), (2, 5.0)]
    # A restart from scratch that stops short: the first run's later steps must not stay behind (they would end
    # the run before it started).
    first = "".join(f'{{"step": {k}, "time": {10.0 + k}}}\n' for k in range(1, 6))
    path.write_text(first + '{"step": 1, "time": 100.0}\n{"step": 2, "time": 101.0}\n')
    assert SR.read_steps(path) == [(1, 100.0), (2, 101.0)]
    # A resume from step 3's checkpoint: steps 1-3 stay, 4 on are the resumed run's.
    path.write_text(first + '{"step": 4, "time": 50.0}\n{"step": 5, "time": 51.0}\n')
    assert SR.read_steps(path) == [(1, 11.0), (2, 12.0), (3, 13.0), (4, 50.0), (5, 51.0)]
    path.write_text('{"step": 1, "time": 1.0}\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"steps_x.jsonl: line 2"):
        SR.read_steps(path)
