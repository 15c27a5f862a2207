"""benchmarks/start_run.sh: the device launcher starts a command in the background from a copy of the repository,
follows it with watch_run.sh, and refuses a second start while the first still runs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _start(src: Path, root: Path, seconds: int, *command: str, **env: str) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, START_RUN_WHEELS="none", START_RUN_REPO=str(src.parent / "repo"), **env)
    return subprocess.run(["bash", "benchmarks/start_run.sh", str(root), str(seconds), "--", *command], cwd=src,
                          env=full_env, capture_output=True, text=True, timeout=120)


def _source_tree(tmp_path: Path) -> Path:
    """A checkout holding only the two scripts: what start_run.sh copies and runs from."""
    src = tmp_path / "src"
    (src / "benchmarks").mkdir(parents=True)
    for name in ("start_run.sh", "watch_run.sh"):
        shutil.copy(ROOT / "benchmarks" / name, src / "benchmarks" / name)
    return src


def test_start_run_launches_watches_and_refuses_a_second_start(tmp_path):
    src = _source_tree(tmp_path)
    root, out = tmp_path / "run", tmp_path / "out"
    results = root / "results"
    job = f"echo ran in $PWD >> {results}/progress.log; sleep 1; echo 1 > {results}/DONE"
    done = _start(src, root, 30, "bash", "-c", job, OUT=str(out))
    assert done.returncode == 0, done.stderr
    # it ran in the copy, and watch_run printed its progress and packed it
    assert f"ran in {tmp_path / 'repo'}" in done.stdout and (tmp_path / "repo" / "benchmarks" / "watch_run.sh").is_file()
    with tarfile.open(out / "results.tar.gz") as tar:
        assert "./DONE" in tar.getnames()

    # a run that is still going: the watch gives up after its seconds, and a second start is refused
    first = _start(src, root, 1, "sleep", "60", OUT=str(out))
    pid = int((root / "run.pid").read_text())
    try:
        assert first.returncode == 0 and os.getpgid(pid) == pid  # its own session: killable as a group
        second = _start(src, root, 1, "true")
        assert second.returncode == 3 and "still going" in second.stderr
    finally:
        os.killpg(pid, signal.SIGKILL)


def test_watch_run_splits_an_archive_too_large_to_come_back(tmp_path):
    results, out = tmp_path / "results", tmp_path / "out"
    results.mkdir()
    (results / "big.bin").write_bytes(os.urandom(5000))  # incompressible: the archive outgrows 2,000 bytes
    (results / "DONE").write_text("1")
    env = dict(os.environ, WATCH_RUN_PART_BYTES="2000")
    subprocess.run(["bash", str(ROOT / "benchmarks" / "watch_run.sh"), str(results), str(out), "5"], env=env,
                   check=True, capture_output=True, timeout=60)
    parts = sorted(out.glob("results.tar.gz.part*"))
    assert len(parts) >= 3 and not (out / "results.tar.gz").exists()
    assert all(p.stat().st_size <= 2000 for p in parts)
    joined = tmp_path / "joined.tar.gz"
    joined.write_bytes(b"".join(p.read_bytes() for p in parts))
    with tarfile.open(joined) as tar:
        assert tar.extractfile("./big.bin").read() == (results / "big.bin").read_bytes()


def test_watch_ends_early_when_the_run_dies_and_shows_its_output(tmp_path):
    src = _source_tree(tmp_path)
    root, out = tmp_path / "run", tmp_path / "out"
    job = "echo 'error: --vaes: flow run shape_flow needs the latents of shape_vae' >&2; exit 2"
    started = time.monotonic()
    died = _start(src, root, 100, "bash", "-c", job, OUT=str(out))
    # session 35: such a run was watched for its full 9 minutes; now the watch ends within a poll or two
    assert time.monotonic() - started < 60
    assert "ended without" in died.stdout and "needs the latents of shape_vae" in died.stdout
    with tarfile.open(out / "results.tar.gz") as tar:  # its output comes back with the results
        assert "needs the latents" in tar.extractfile("./pipeline.out").read().decode()
