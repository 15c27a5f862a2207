"""``benchmarks/ddp_scaling.py``: its arithmetic (throughput from step records, the shard split over ranks
x workers) in-process, and the whole benchmark on the CPU (gloo) on tiny shape-flow latent shards split
unevenly over two ranks: every phase finishes, equal batches per rank, both resumes start at the
checkpoint."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, TINY_MODEL_OVERRIDES, load_script
from tests.scale.helpers import train_env

SCRIPT = ROOT / "benchmarks" / "ddp_scaling.py"


def _bench():
    return load_script("benchmarks/ddp_scaling.py")


def test_throughput_counts_samples_after_the_warmup_on_the_slowest_rank():
    bench = _bench()
    # rank 1 is 0.1 s behind rank 0 at every step; steps 2..6 take 0.5 s each on both
    records = [[{"step": s, "time": 100 + 0.5 * s} for s in range(1, 7)],
               [{"step": s, "time": 100.1 + 0.5 * s} for s in range(1, 7)]]
    out = bench.throughput(records, warmup=2, last=6, samples_per_step=8)
    assert out["timed_steps"] == 4 and out["timed_s"] == pytest.approx(2.0)
    assert out["samples_per_s"] == pytest.approx(16.0)
    assert out["step_time_s"]["median"] == pytest.approx(0.5)
    # a rank without records (it died) gives no number rather than a wrong one
    assert bench.throughput([records[0], []], 2, 6, 8)["samples_per_s"] is None


def test_shard_split_follows_the_chunk_stream_rule():
    bench = _bench()
    shards = [Path(f"train-{i:06d}.tar") for i in range(3)]
    split = bench.shard_split(shards, [3, 3, 1], ranks=2, workers=1)
    assert split["shards_per_rank"] == [["train-000000.tar", "train-000002.tar"], ["train-000001.tar"]]
    assert split["samples_per_rank"] == [4, 3] and split["uneven"]
    assert not split["every_slot_reads_every_shard"]
    # fewer shards than ranks x workers: every slot reads every shard (resampled), nothing is uneven
    split = bench.shard_split(shards, [3, 3, 1], ranks=2, workers=2)
    assert split["every_slot_reads_every_shard"] and split["shards_per_slot"] == [3, 3, 3, 3]
    assert not split["uneven"]


def test_a_failing_phase_is_reported_and_the_resumes_are_skipped(tmp_path):
    """A run that dies (here: a learning rate that is a string, found when the optimiser is built) gives
    its exit code and log tail in the JSON, the phases that need its checkpoint are skipped, exit code 1."""
    shards = tmp_path / "latents"
    shards.mkdir()
    with tarfile.open(shards / "train-000000.tar", "w") as tar:  # never read: the run fails before
        info = tarfile.TarInfo("a.meta.json")
        tar.addfile(info, io.BytesIO(b""))
    stats = {"mean": [0.0] * 32, "std": [1.0] * 32}
    (shards / "stats.json").write_text(json.dumps({"shape": stats, "tex": stats}))
    cmd = [sys.executable, str(SCRIPT), "--shards", str(shards), "--cpu", "--gpus", "2", "--preset", "tiny",
           "--skip-single", "--steps", "4", "--warmup", "1", "--log-dir", str(tmp_path / "logs"),
           "--extra", "stage.module.lr=oops", "--extra", "stage.datamodule.num_workers=0", "--timeout", "120"]
    proc = subprocess.run(cmd, cwd=ROOT, env=train_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    multi = report["phases"]["multi"]
    assert multi["status"] == "failed" and multi["exit_code"] == 1
    assert any("TypeError" in text for text in multi["log_tail"].values())
    assert report["phases"]["resume_multi"]["status"] == report["phases"]["resume_single"]["status"] == "skipped"
    assert not report["ok"] and report["complete"] and report["scaling_efficiency"] is None


def resplit_latents(src: Path, dst: Path, per_shard: int) -> Path:
    """A copy of the latent shard folder whose training samples are re-packed ``per_shard`` to a tar."""
    dst.mkdir(parents=True)
    for path in src.iterdir():
        if path.is_file() and not path.name.startswith("train-"):
            shutil.copy(path, dst / path.name)
    samples: dict[str, list[tuple[tarfile.TarInfo, bytes]]] = {}
    for path in sorted(src.glob("train-*.tar")):
        with tarfile.open(path) as tar:
            for member in tar:
                if member.isfile():
                    samples.setdefault(member.name.split(".", 1)[0], []).append(
                        (member, tar.extractfile(member).read()))
    keys = list(samples)
    for i in range(0, len(keys), per_shard):
        with tarfile.open(dst / f"train-{i // per_shard:06d}.tar", "w") as tar:
            for key in keys[i:i + per_shard]:
                for member, data in samples[key]:
                    tar.addfile(member, io.BytesIO(data))
    return dst


STEPS, WARMUP, RESUME = 8, 3, 2
# tiny shape flow (TINY_MODEL_OVERRIDES as the flow tests use them), CPU-sized batches, no loader workers
EXTRA = TINY_MODEL_OVERRIDES + ["stage.datamodule.batch_size=2", "stage.datamodule.max_views=4",
                                "stage.datamodule.num_workers=0", "stage.module.sample_batches=0"]


@pytest.mark.slow
def test_ddp_scaling_benchmark_on_cpu(tiny_latents, tmp_path):
    shards = resplit_latents(tiny_latents / "latents", tmp_path / "latents", per_shard=3)
    n_train = len(list(shards.glob("train-*.tar")))
    assert n_train == 3  # 9 samples: rank 0 reads shards 0 and 2, rank 1 shard 1
    out = tmp_path / "out"
    cmd = [sys.executable, str(SCRIPT), "--shards", str(shards), "--cpu", "--gpus", "2", "--preset", "tiny",
           "--steps", str(STEPS), "--warmup", str(WARMUP), "--resume-steps", str(RESUME),
           "--log-dir", str(tmp_path / "logs"), "--out", str(out), "--timeout", "240"]
    for override in EXTRA:
        cmd += ["--extra", override]
    start = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=train_env(), capture_output=True, text=True, timeout=900)
    elapsed = time.time() - start
    assert proc.returncode == 0, f"{proc.stderr[-4000:]}\n{proc.stdout[-4000:]}"
    report = json.loads(proc.stdout)
    assert json.loads((out / "ddp_scaling.json").read_text()) == report

    assert report["ok"] and set(report["phases"]) == {"single", "multi", "resume_multi", "resume_single"}
    assert all(p["exit_code"] == 0 and p["status"] == "ok" for p in report["phases"].values())
    assert report["scaling_efficiency"] > 0 and report["samples_per_s"]["1"] > 0
    assert report["samples_per_s"]["2"] > 0
    single, multi = report["phases"]["single"], report["phases"]["multi"]
    assert single["train_batches_per_rank"] == [STEPS] and multi["train_batches_per_rank"] == [STEPS, STEPS]
    assert multi["world_size"] == [2, 2] and multi["timed_steps"] == STEPS - WARMUP
    assert multi["samples_per_step"] == 2 * 2 and single["samples_per_step"] == 2
    assert report["equal_batches_per_rank"]
    assert report["shards"]["split_multi"]["uneven"] and report["shards"]["train_shards"] == 3
    for name, ranks in (("resume_multi", 2), ("resume_single", 1)):
        phase = report["phases"][name]
        assert phase["started_at_checkpoint_step"] and phase["finished"], phase
        assert phase["first_step_per_rank"] == [STEPS] * ranks
        assert phase["last_step_per_rank"] == [STEPS + RESUME] * ranks
        assert phase["train_batches_per_rank"] == [RESUME] * ranks
        assert [s for s, _ in phase["losses_after_resume"]] == list(range(STEPS + 1, STEPS + RESUME + 1))
        assert phase["losses_finite"]
    assert report["resumes_started_at_checkpoint"] and report["resumes_finished"]
    # the N-process resume continued in the run dir of the multi phase, the 1-process one in its own
    assert report["phases"]["resume_multi"]["run_dir"] == multi["run_dir"]
    assert report["phases"]["resume_single"]["run_dir"] != multi["run_dir"]
    for phase in report["phases"].values():
        assert all(Path(log).is_file() for log in phase["logs"])
    print(f"ddp_scaling --cpu ({STEPS}+{RESUME} steps, 4 phases): {elapsed:.1f}s; "
          f"phases {[p['wall_s'] for p in report['phases'].values()]}")
