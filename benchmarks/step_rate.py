"""Training speed over time from the per-step logs of ``callbacks.run_stats.RunStats`` (``step_log=true``):
steps/s in sliding windows, how long the start-up ramp lasted, and a figure of the runs side by side.

``full_pipeline.py`` switches the step log on for its flows and copies rank 0's ``rank_0_steps.jsonl`` of each
run to ``results/steps_<run>.jsonl``; this script then writes ``step_rate.json`` and ``step_rate.png`` there.

    python benchmarks/step_rate.py results/steps_*.jsonl --window 50 --out step_rate.json --plot step_rate.png

Per run: ``steps``, ``seconds`` (first to last logged step), ``mean_rate`` (steps/s over the whole run),
``first_window_rate`` (the first ``--window`` steps), ``steady_rate`` (the median windowed rate over the
run's second half), ``ramp_s`` (seconds from the first step until a window first reaches ``--reach`` (0.9) of
the steady rate) and ``steps_lost_to_ramp`` (how many more steps the run would have made at the steady rate
from its first step: steady_rate x seconds - steps). A window spanning a validation pause reads low, so the
steady rate is a median, not a mean.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def read_steps(path: Path) -> list[tuple[int, float]]:
    """(global step, wall time) of one rank's log, in order. The log is appended to, so a step at or below the one
    before starts a resumed (or restarted) run: the earlier records from that step on are dropped, repeated steps
    keep the last time, and a restart that stops short leaves none of the first run's later steps behind.

    Where the records name their process (``pid``, as ``RunStats`` writes), a new process is a resume, possibly in
    a later device call: the pause before its first step is cut out (that step follows the last kept one by the
    last step interval), so rates and durations count training time only, as they do for the first process."""
    steps: list[tuple[int, float]] = []
    offset, pid = 0.0, None
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step, when = int(record["step"]), float(record["time"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: line {n} is not a step record with 'step' and 'time' ({exc})") from exc
        while steps and steps[-1][0] >= step:
            steps.pop()
        if record.get("pid") != pid:
            if pid is not None and steps:
                interval = steps[-1][1] - steps[-2][1] if len(steps) > 1 else 0.0
                offset = when - (steps[-1][1] + interval)
            pid = record.get("pid")
        steps.append((step, when - offset))
    return steps


def windowed_rates(steps: Sequence[tuple[int, float]], window: int) -> list[tuple[float, float]]:
    """(seconds since the first step at the window's end, steps/s over the window) for every window of
    ``window`` logged steps."""
    if len(steps) <= window:
        return []
    t0 = steps[0][1]
    out = []
    for (s_a, t_a), (s_b, t_b) in zip(steps, steps[window:], strict=False):
        if t_b > t_a:
            out.append((t_b - t0, (s_b - s_a) / (t_b - t_a)))
    return out


def summarise(steps: Sequence[tuple[int, float]], window: int, reach: float = 0.9) -> dict[str, Any]:
    """The per-run numbers of the module docstring (None where the run is too short for a window)."""
    if len(steps) < 2:
        return {"steps": len(steps), "seconds": 0.0, "mean_rate": None, "first_window_rate": None,
                "steady_rate": None, "ramp_s": None, "steps_lost_to_ramp": None}
    seconds = steps[-1][1] - steps[0][1]
    made = steps[-1][0] - steps[0][0]
    rates = windowed_rates(steps, window)
    late = [r for t, r in rates if t >= seconds / 2]
    steady = statistics.median(late) if late else None
    ramp = next((t for t, r in rates if r >= reach * steady), None) if steady else None
    return {
        "steps": made,
        "seconds": round(seconds, 2),
        "mean_rate": made / seconds if seconds > 0 else None,
        "first_window_rate": rates[0][1] if rates else None,
        "steady_rate": steady,
        "ramp_s": None if ramp is None else round(ramp, 2),
        "steps_lost_to_ramp": None if steady is None else round(steady * seconds - made, 1),
    }


COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207))


def plot(curves: dict[str, list[tuple[float, float]]], out: Path, window: int,
         size: tuple[int, int] = (800, 450)) -> None:
    """Steps/s against minutes, one line per run, drawn with PIL (the project's figures need no plotting library)."""
    from PIL import Image, ImageDraw

    w, h = size
    left, right, top, bottom = 60, 20, 30, 50
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    points = [pt for rates in curves.values() for pt in rates]
    t_max = max((t for t, _ in points), default=1.0) / 60 or 1.0
    r_max = max((r for _, r in points), default=1.0) * 1.1 or 1.0

    def xy(minutes: float, rate: float) -> tuple[float, float]:
        return (left + (w - left - right) * minutes / t_max, h - bottom - (h - top - bottom) * rate / r_max)

    draw.rectangle([left, top, w - right, h - bottom], outline="black")
    for i in range(6):  # grid and tick labels
        m, r = t_max * i / 5, r_max * i / 5
        x, _ = xy(m, 0)
        _, y = xy(0, r)
        draw.line([x, top, x, h - bottom], fill=(225, 225, 225))
        draw.line([left, y, w - right, y], fill=(225, 225, 225))
        draw.text((x - 10, h - bottom + 6), f"{m:.1f}", fill="black")
        draw.text((8, y - 6), f"{r:.2f}", fill="black")
    draw.text((w / 2 - 70, h - 22), "minutes since the first step", fill="black")
    draw.text((left, 8), f"steps/s, windows of {window} steps", fill="black")
    for i, (name, rates) in enumerate(curves.items()):
        colour = COLOURS[i % len(COLOURS)]
        if len(rates) > 1:
            draw.line([xy(t / 60, r) for t, r in rates], fill=colour, width=2)
        draw.text((w - right - 230, top + 8 + 14 * i), name, fill=colour)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)


def run_name(path: Path) -> str:
    stem = path.stem
    return stem[len("steps_"):] if stem.startswith("steps_") else stem


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("logs", nargs="+", type=Path, help="rank_0_steps.jsonl / steps_<run>.jsonl files, one per run")
    p.add_argument("--window", type=int, default=50, help="logged steps per rate window")
    p.add_argument("--reach", type=float, default=0.9, help="share of the steady rate that ends the ramp")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    p.add_argument("--plot", type=Path, default=None, help="PNG of steps/s against time, every run")
    args = p.parse_args(argv)
    if args.window < 1 or not 0 < args.reach <= 1:
        p.error("--window must be >= 1 and --reach in (0, 1]")
    report: dict[str, Any] = {"window": args.window, "reach": args.reach, "runs": {}}
    curves = {}
    for path in args.logs:
        if not path.is_file():
            p.error(f"{path}: no such file")
        steps = read_steps(path)
        name = run_name(path)
        report["runs"][name] = summarise(steps, args.window, args.reach)
        curves[name] = windowed_rates(steps, args.window)
    text = json.dumps(report, indent=2)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    if args.plot is not None:
        plot(curves, args.plot, args.window)
    print(text)
    return report


if __name__ == "__main__":
    main()
