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


def test_a_run_resumed_by_a_new_process_counts_training_time_only(tmp_path, capsys):
    """Session 29: a flow trained 233 steps in one device call and went on from step 234 in a later one, 172 s on.
    The pause between the processes is cut out, so the mean rate is the training rate, not diluted by the gap."""
    path = tmp_path / "steps_resumed.jsonl"
    first = [{"step": k, "time": 100.0 + 0.5 * k, "pid": 7} for k in range(1, 101)]
    second = [{"step": k, "time": 400.0 + 0.5 * (k - 101), "pid": 9} for k in range(101, 201)]
    path.write_text("".join(json.dumps(r) + "\n" for r in first + second))
    steps = SR.read_steps(path)
    assert steps[100] == (101, pytest.approx(150.5)) and steps[-1] == (200, pytest.approx(200.0))
    run = SR.main([str(path), "--window", "20"])["runs"]["resumed"]
    capsys.readouterr()
    assert run["seconds"] == pytest.approx(99.5) and run["mean_rate"] == pytest.approx(2.0)
    # a resume from an earlier checkpoint in the new process: the first process's later steps are dropped
    again = [{"step": k, "time": 900.0 + 0.5 * (k - 51), "pid": 11} for k in range(51, 61)]
    path.write_text("".join(json.dumps(r) + "\n" for r in first + again))
    steps = SR.read_steps(path)
    assert [k for k, _ in steps] == list(range(1, 61)) and steps[50][1] == pytest.approx(125.5)
