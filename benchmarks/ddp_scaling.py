"""DDP scaling of a flow stage launched the way ``scripts/slurm/train.sbatch`` launches it, on one machine.

Every run is ``python train.py hardware=slurm ...`` started by ``scripts/slurm/srun_local.py`` (an ``srun``
emulation: one process per GPU, Lightning's ``SLURMEnvironment`` takes the ranks from ``SLURM_*``), so the
code path is the cluster one, without SLURM. Phases, each in its own run directory under
``<log-dir>/train/runs/`` unless said otherwise:

  single        1 process (``slurm.gpus_per_node=1``), S steps, step log on, checkpoint at step S;
  multi         N processes, same per-GPU batch size, S steps, checkpoint at step S;
  resume_multi  N processes resume the step-S checkpoint of ``multi`` in its run dir (as a requeue would)
                for R more steps;
  resume_single 1 process resumes the same checkpoint in a separate run dir for R more steps.

Throughput comes from the wall-clock ``time`` of the per-step records of ``callbacks.run_stats``
(``rank_<r>_steps.jsonl``) between step W (warm-up, excluded) and step S: samples/s = (S - W) x per-GPU batch
x accumulation x ranks / elapsed; scaling efficiency = sps_N / (N x sps_1). It also reports the training
batches each rank ran (they must be equal, or DDP would hang), how the training shards split over ranks x
DataLoader workers, whether each resume started at the checkpoint step and reached S + R, the losses right
after the resumes, wall time, exit code and logs of every phase, GPU names, and GPU utilisation/memory sampled
with nvidia-smi during the timed steps. A phase that fails is reported (exit code and the tail of its logs)
and the benchmark goes on with what it can. One JSON object goes to stdout and to ``<out>/ddp_scaling.json``
(that file is also rewritten after every phase with ``"complete": false``, so a benchmark killed from outside
still leaves the phases it finished).

    python benchmarks/ddp_scaling.py --shards data/synthetic_small/latents --gpus 2
    python benchmarks/ddp_scaling.py --shards <latents> --cpu --gpus 2 --preset tiny --steps 12 \\
        --warmup 4 --resume-steps 3 --extra stage.datamodule.num_workers=0     # CPU check (gloo)

``--shards`` is the latent shard folder written by ``prepare.py steps=[encode]`` (``train-*.tar``,
``val-*.tar``, ``stats.json``; ``manifest.json`` there or one level up) or the dataset root holding it as
``latents/``. The stage reads it as ``stage.datamodule.shards`` and normalises with
``stage.module.latent_stats=<shards>/stats.json``.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SRUN_LOCAL = ROOT / "scripts" / "slurm" / "srun_local.py"
# No progress bar or model summary, CSV logger: nothing but the run itself in the logs and the timings.
QUIET = ["logger=csv", "callbacks.progress_bar=null", "+trainer.enable_progress_bar=false",
         "callbacks.model_summary=null", "trainer.enable_model_summary=false"]
CPU = ["trainer.accelerator=cpu", "trainer.precision=32-true"]
LOSSES_AFTER_RESUME = 5


# ---------------------------------------------------------------------------- small helpers


def _load_srun_local():
    spec = importlib.util.spec_from_file_location("srun_local", SRUN_LOCAL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _launcher_setup() -> None:
    """The srun_local process: its own session, SIGKILL when the benchmark dies (its tasks then follow)."""
    os.setsid()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def tail(path: Path, n: int = 40) -> str:
    if not path.is_file():
        return "<no log>"
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill
            pass
    return out


def device_info(cpu: bool) -> dict[str, Any]:
    """GPU count and names from a separate process (the benchmark itself must not hold a CUDA context)."""
    code = """
import json, torch, lightning
n = torch.cuda.device_count()
info = {"count": n, "names": [torch.cuda.get_device_name(i) for i in range(n)], "torch": torch.__version__,
        "cuda": torch.version.cuda, "lightning": lightning.__version__, "nccl": None}
try:
    info["nccl"] = ".".join(map(str, torch.cuda.nccl.version())) if n else None
except Exception as exc:
    info["nccl"] = f"unknown ({exc})"
print(json.dumps(info))
"""
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        info = json.loads(out.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, json.JSONDecodeError, IndexError) as exc:
        info = {"count": 0, "names": [], "error": str(exc)}
    info.update(accelerator="cpu" if cpu else "gpu", host=socket.gethostname(),
                cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"), cpu_count=os.cpu_count())
    return info


def resolve_shards(path: Path) -> Path:
    if not list(path.glob("train-*.tar")) and (path / "latents").is_dir():
        return path / "latents"
    return path


def shard_samples(path: Path) -> int:
    """Samples in one WebDataset tar (distinct keys: the member name up to the first dot of its basename)."""
    keys = set()
    with tarfile.open(path) as tar:
        for member in tar:
            if member.isfile():
                base = member.name.rsplit("/", 1)
                stem = base[-1].split(".", 1)[0]
                keys.add((base[0] if len(base) > 1 else "", stem))
    return len(keys)


def manifest(shards: Path) -> dict[str, Any]:
    for path in (shards / "manifest.json", shards.parent / "manifest.json"):
        if path.is_file():
            return json.loads(path.read_text())
    return {}


def shard_split(shards: list[Path], counts: list[int], ranks: int, workers: int) -> dict[str, Any]:
    """How ``datamodules.chunks.ChunkStream`` hands the training shards to ranks x workers: slot
    ``rank * W + worker`` reads ``shards[slot::slots]``, or every shard when there are fewer shards than
    slots."""
    w = max(1, workers)
    slots = ranks * w
    names = [p.name for p in shards]
    from datamodules.chunks import slot_shards  # the datamodule's own rule, so the report cannot drift

    shared = len(shards) < slots
    per_slot = [slot_shards(range(len(shards)), s, slots) for s in range(slots)]
    per_rank = [sorted({i for s in range(r * w, (r + 1) * w) for i in per_slot[s]}) for r in range(ranks)]
    samples = [sum(counts[i] for i in idx) for idx in per_rank]
    return {
        "ranks": ranks, "workers_per_rank": workers, "slots": slots,
        "every_slot_reads_every_shard": shared,
        "shards_per_slot": [len(s) for s in per_slot],
        "shards_per_rank": [[names[i] for i in idx] for idx in per_rank],
        "samples_per_rank": samples,
        "uneven": len({len(s) for s in per_slot}) > 1 or len(set(samples)) > 1,
    }


class GpuSampler:
    """nvidia-smi utilisation and memory per GPU, sampled while the timed steps run."""

    QUERY = ["nvidia-smi", "--query-gpu=index,name,utilization.gpu,memory.used",
             "--format=csv,noheader,nounits"]

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and shutil.which("nvidia-smi") is not None
        self.samples: list[list[tuple[int, float, float]]] = []
        self.apps: str | None = None

    def sample(self) -> None:
        if not self.enabled:
            return
        try:
            out = subprocess.run(self.QUERY, capture_output=True, text=True, timeout=20).stdout
            rows = []
            for line in out.strip().splitlines():
                idx, _name, util, mem = [x.strip() for x in line.split(",")]
                rows.append((int(idx), float(util), float(mem)))
            self.samples.append(rows)
            if self.apps is None:
                query = ["nvidia-smi", "--query-compute-apps=pid,gpu_bus_id,used_memory",
                         "--format=csv,noheader"]
                self.apps = subprocess.run(query, capture_output=True, text=True, timeout=20).stdout.strip()
        except (subprocess.SubprocessError, ValueError, OSError):
            pass

    def summary(self) -> dict[str, Any] | None:
        if not self.samples:
            return None
        per_gpu: dict[int, list[tuple[float, float]]] = {}
        for rows in self.samples:
            for idx, util, mem in rows:
                per_gpu.setdefault(idx, []).append((util, mem))
        return {
            "samples": len(self.samples),
            "mean_util_pct": {i: round(sum(u for u, _ in v) / len(v), 1) for i, v in per_gpu.items()},
            "max_mem_mib": {i: max(m for _, m in v) for i, v in per_gpu.items()},
            "compute_apps": self.apps,
        }


# ---------------------------------------------------------------------------- one phase


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.srun_local = _load_srun_local()
        self.log_dir = Path(args.log_dir).resolve()
        self.runs = self.log_dir / "train" / "runs"
        self.prefix = f"ddp-{time.strftime('%Y%m%d-%H%M%S')}"

    def base_overrides(self) -> list[str]:
        a = self.args
        return [
            f"stage={a.stage}", f"preset={a.preset}",
            f"stage.datamodule.shards={a.shards}", f"stage.module.latent_stats={a.stats}",
            f"paths.log_dir={self.log_dir}", *QUIET, "callbacks.run_stats.step_log=true",
            f"stage.val_every_n_steps={a.steps + a.resume_steps + 1000}",
            f"stage.val_batches={a.val_batches}",
            f"stage.checkpoint_every_n_steps={a.steps}", "hardware=slurm", "slurm.nodes=1",
            "slurm.requeue_signal=SIGUSR1", *(CPU if a.cpu else []), *a.extra,
        ]

    def run_phase(self, name: str, ranks: int, run_name: str, max_steps: int,
                  ckpt_path: str | None = None) -> dict[str, Any]:
        a = self.args
        overrides = self.base_overrides() + [f"slurm.gpus_per_node={ranks}", f"stage.max_steps={max_steps}"]
        if ckpt_path:
            overrides.append(f"ckpt_path={ckpt_path}")
        job_id = self.srun_local.free_job_id()
        task_log = self.log_dir / f"{name}.task%t.log"
        launcher_log = self.log_dir / f"{name}.srun.log"
        cmd = [sys.executable, str(SRUN_LOCAL), "--ntasks", str(ranks), "--job-id", job_id,
               "--job-name", "genrecon-ddp-bench", "--output", str(task_log), "--kill-wait", "30",
               "--time-limit", str(a.timeout)]
        if a.cpus_per_task:
            cmd += ["--cpus-per-task", str(a.cpus_per_task)]
        cmd += ["--", sys.executable, "train.py", *overrides]
        env = dict(os.environ, GENRECON_RUN_NAME=run_name, PYTHONFAULTHANDLER="1", HYDRA_FULL_ERROR="1",
                   NCCL_ASYNC_ERROR_HANDLING="1", TORCH_NCCL_ASYNC_ERROR_HANDLING="1", WANDB_MODE="offline")
        env.setdefault("NCCL_DEBUG", "WARN")
        if a.omp_threads:
            env["OMP_NUM_THREADS"] = str(a.omp_threads)
        run_dir = self.runs / run_name
        # A resume in an existing run dir: the stats files of the earlier phase (kept under <log-dir>/stats)
        # go, and only the step records appended from now on belong to this phase.
        offsets = [len(read_jsonl(run_dir / f"rank_{r}_steps.jsonl")) for r in range(ranks)]
        for r in range(ranks):
            (run_dir / f"rank_{r}_stats.json").unlink(missing_ok=True)
        sampler = GpuSampler(not a.cpu)
        print(f"[ddp_scaling] {name}: {ranks} process(es), steps -> {max_steps}, run {run_dir}",
              file=sys.stderr, flush=True)
        start = time.time()
        with open(launcher_log, "w") as out:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    preexec_fn=_launcher_setup)
            deadline = start + a.timeout + 90
            next_sample = 0.0
            try:
                while proc.poll() is None:
                    if time.time() > deadline:  # the launcher's own time limit failed
                        break
                    if sampler.enabled and time.time() >= next_sample:
                        rows = read_jsonl(run_dir / "rank_0_steps.jsonl")[offsets[0]:]
                        if rows and (ckpt_path or rows[-1]["step"] > a.warmup):
                            sampler.sample()
                        next_sample = time.time() + a.sample_every
                    time.sleep(0.5)
            finally:  # timeout, or the benchmark itself is stopped: the launcher goes, its tasks with it
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        wall = time.time() - start
        task_logs = [self.log_dir / f"{name}.task{t}.log" for t in range(ranks)]
        result: dict[str, Any] = {
            "ranks": ranks, "job_id": job_id, "run_dir": str(run_dir), "exit_code": proc.returncode,
            "wall_s": round(wall, 2), "logs": [str(launcher_log)] + [str(p) for p in task_logs],
            "command": " ".join(cmd[cmd.index("--") + 1:]),
        }
        result.update(self.read_run(run_dir, ranks, max_steps, offsets,
                                    resumed_from=a.steps if ckpt_path else None))
        result["gpu_monitor"] = sampler.summary()
        # keep this phase's per-rank stats (a resume in the same run dir overwrites them)
        keep = self.log_dir / "stats" / name
        keep.mkdir(parents=True, exist_ok=True)
        for r in range(ranks):
            if (run_dir / f"rank_{r}_stats.json").is_file():
                shutil.copy(run_dir / f"rank_{r}_stats.json", keep / f"rank_{r}_stats.json")
        ok = proc.returncode == 0 and result.get("finished", False)
        result["status"] = "ok" if ok else "failed"
        if not ok:
            result["log_tail"] = {str(p): tail(p) for p in [launcher_log, *task_logs]}
        print(f"[ddp_scaling] {name}: exit {proc.returncode} after {wall:.1f}s", file=sys.stderr, flush=True)
        return result

    def read_run(self, run_dir: Path, ranks: int, max_steps: int, offsets: list[int],
                 resumed_from: int | None) -> dict[str, Any]:
        """Per-rank stats and step records of this phase (records after ``offsets``, of this phase's pid)."""
        a = self.args
        stats = []
        for r in range(ranks):
            p = run_dir / f"rank_{r}_stats.json"
            stats.append(json.loads(p.read_text()) if p.is_file() else None)
        records = []
        for r in range(ranks):
            rows = read_jsonl(run_dir / f"rank_{r}_steps.jsonl")[offsets[r]:]
            pid = stats[r]["pid"] if stats[r] else (rows[-1]["pid"] if rows else None)
            records.append([x for x in rows if x.get("pid") == pid])
        batches = [s["train_batches"] if s else None for s in stats]
        out: dict[str, Any] = {
            "train_batches_per_rank": batches,
            "equal_batches_per_rank": None not in batches and len(set(batches)) == 1,
            "val_batches_per_rank": [s["val_batches"] if s else None for s in stats],
            "first_step_per_rank": [s["first_step"] if s else None for s in stats],
            "last_step_per_rank": [s["last_step"] if s else None for s in stats],
            "world_size": [s["world_size"] if s else None for s in stats],
            "status_per_rank": [s["status"] if s else None for s in stats],
            "finished": all(s and s["status"] == "finished" and s["last_step"] == max_steps for s in stats),
        }
        if resumed_from is None:
            out.update(throughput(records, a.warmup, max_steps, self.samples_per_step(ranks)))
            out["losses_at_end"] = [[x["step"], x["loss"]] for x in records[0][-3:]] if records[0] else []
        else:
            first = [rows[0]["step"] if rows else None for rows in records]
            out.update({
                "resumed_from_step": resumed_from,
                "first_logged_step_per_rank": first,
                "started_at_checkpoint_step": (all(s and s["first_step"] == resumed_from for s in stats)
                                               and all(f == resumed_from + 1 for f in first)),
                "losses_after_resume": [[x["step"], x["loss"]] for x in records[0][:LOSSES_AFTER_RESUME]]
                if records[0] else [],
                "losses_finite": all(x["loss"] is not None and abs(x["loss"]) < float("inf")
                                     for rows in records for x in rows),
            })
        return out

    def samples_per_step(self, ranks: int) -> int:
        return self.args.batch_size * self.args.accumulate * ranks


def throughput(records: list[list[dict[str, Any]]], warmup: int, last: int, samples_per_step: int) -> dict:
    """Samples/s between the end of step ``warmup`` and the end of step ``last`` (a step ends when its slowest
    rank logs it), plus step-time statistics."""
    by_step: dict[int, float] = {}
    for rows in records:
        for x in rows:
            by_step[x["step"]] = max(by_step.get(x["step"], 0.0), x["time"])
    steps = sorted(s for s in by_step if warmup <= s <= last)
    if len(records) == 0 or any(not rows for rows in records) or len(steps) < 2 or steps[0] != warmup \
            or steps[-1] != last:
        return {"samples_per_s": None, "timed_steps": 0, "throughput_error": "step records missing"}
    elapsed = by_step[last] - by_step[warmup]
    deltas = sorted(by_step[b] - by_step[a] for a, b in zip(steps, steps[1:]))
    n = last - warmup
    return {
        "timed_steps": n, "timed_s": round(elapsed, 3),
        "samples_per_s": round(n * samples_per_step / elapsed, 3) if elapsed > 0 else None,
        "step_time_s": {"mean": round(elapsed / n, 4), "median": round(deltas[len(deltas) // 2], 4),
                        "p90": round(deltas[int(0.9 * (len(deltas) - 1))], 4), "max": round(deltas[-1], 4)},
        "samples_per_step": samples_per_step,
    }


# ---------------------------------------------------------------------------- config


def composed(args: argparse.Namespace) -> dict[str, Any]:
    """The per-GPU batch size, gradient accumulation and loader workers of the runs, from the composed config
    (also checks the overrides before any GPU time is spent)."""
    from hydra.core.global_hydra import GlobalHydra

    from genrecon.utils.config import compose_entry_config

    overrides = [f"stage={args.stage}", f"preset={args.preset}", f"stage.datamodule.shards={args.shards}",
                 *QUIET, "hardware=slurm", "slurm.gpus_per_node=1", *(CPU if args.cpu else []), *args.extra]
    saved = os.environ.get("GENRECON_RUN_NAME")
    cfg = compose_entry_config(overrides)
    GlobalHydra.instance().clear()
    if saved is None:
        os.environ.pop("GENRECON_RUN_NAME", None)
    return {
        "batch_size": int(cfg.stage.datamodule.batch_size),
        "accumulate": int(cfg.trainer.accumulate_grad_batches),
        "num_workers": int(cfg.stage.datamodule.num_workers),
        "precision": str(cfg.trainer.precision),
        "accelerator": str(cfg.trainer.accelerator),
        "ema_decay": cfg.stage.module.get("ema_decay"),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", required=True, type=Path, help="latent shard folder (or dataset root)")
    p.add_argument("--stats", type=Path, default=None,
                   help="latent stats.json (default: <shards>/stats.json)")
    p.add_argument("--gpus", type=int, default=None,
                   help="processes of the multi-process phases (default: torch.cuda.device_count(); "
                        "2 with --cpu)")
    p.add_argument("--steps", type=int, default=150, help="steps of the single and multi phases (S)")
    p.add_argument("--warmup", type=int, default=30, help="steps excluded from the timing (W)")
    p.add_argument("--resume-steps", type=int, default=20, help="steps run by each resume (R)")
    p.add_argument("--stage", default="shape_flow")
    p.add_argument("--preset", default="small")
    p.add_argument("--val-batches", type=int, default=1, help="stage.val_batches (validation never runs)")
    p.add_argument("--log-dir", type=Path, default=None,
                   help="run dirs and logs (default: logs/ddp_scaling/<timestamp>)")
    p.add_argument("--out", type=Path, default=None, help="folder of ddp_scaling.json (default: --log-dir)")
    p.add_argument("--extra", action="append", default=[], metavar="OVERRIDE",
                   help="Hydra override added to every run (repeatable)")
    p.add_argument("--cpu", action="store_true", help="CPU processes with gloo (tests): " + " ".join(CPU))
    p.add_argument("--timeout", type=float, default=1800,
                   help="seconds per phase before its tasks are killed")
    p.add_argument("--sample-every", type=float, default=5.0, help="seconds between nvidia-smi samples")
    p.add_argument("--cpus-per-task", type=int, default=None,
                   help="pin every process to its own block of this many CPUs, as srun --cpus-per-task "
                        "(the same share for the 1- and N-process runs; default: no pinning)")
    p.add_argument("--skip-single", action="store_true", help="no single phase (efficiency then unknown)")
    args = p.parse_args(argv)
    if not 1 <= args.warmup <= args.steps - 2:
        p.error("--warmup must be between 1 and --steps - 2 (the timing starts at the end of step W)")
    if args.resume_steps < 1:
        p.error("--resume-steps must be >= 1")
    args.shards = resolve_shards(args.shards.resolve())
    args.stats = (args.stats or args.shards / "stats.json").resolve()
    if not list(args.shards.glob("train-*.tar")):
        p.error(f"--shards {args.shards}: no train-*.tar")
    if not args.stats.is_file():
        p.error(f"latent statistics {args.stats} not found (written by prepare.py steps=[encode])")
    args.log_dir = args.log_dir or ROOT / "logs" / "ddp_scaling" / time.strftime("%Y-%m-%d_%H-%M-%S")
    args.out = args.out or args.log_dir
    return args


# ---------------------------------------------------------------------------- main


def _stop(signum: int, _frame) -> None:
    raise SystemExit(128 + signum)  # unwinds through run_phase, which kills the running phase


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    t_start = time.time()
    Path(args.log_dir).mkdir(parents=True, exist_ok=True)
    devices = device_info(args.cpu)
    if args.gpus is None:
        args.gpus = 2 if args.cpu else devices.get("count", 0)
    cfg = composed(args)
    args.batch_size, args.accumulate = cfg["batch_size"], cfg["accumulate"]
    n = args.gpus
    # On the CPU, every process would start as many torch threads as there are cores (nothing launched by
    # srun_local goes through Lightning's own launcher, which would split them): give the 1- and the
    # N-process runs the same per-process share, or the comparison measures oversubscription.
    args.omp_threads = None
    if args.cpu and "OMP_NUM_THREADS" not in os.environ:
        args.omp_threads = max(1, (args.cpus_per_task or (os.cpu_count() or 1) // max(1, n)))

    train_shards = sorted(args.shards.glob("train-*.tar"))
    counts = [shard_samples(p) for p in train_shards]
    shards = {
        "dir": str(args.shards), "stats": str(args.stats),
        "train_shards": len(train_shards), "val_shards": len(list(args.shards.glob("val-*.tar"))),
        "train_samples_per_shard": counts, "manifest_samples": manifest(args.shards).get("samples"),
        "split_single": shard_split(train_shards, counts, 1, cfg["num_workers"]),
        "split_multi": shard_split(train_shards, counts, n, cfg["num_workers"]),
    }
    report: dict[str, Any] = {
        "benchmark": "ddp_scaling",
        "config": {"stage": args.stage, "preset": args.preset, "gpus": n, "steps": args.steps,
                   "warmup": args.warmup, "resume_steps": args.resume_steps,
                   "per_gpu_batch_size": args.batch_size,
                   **{k: v for k, v in cfg.items() if k != "batch_size"},
                   "cpu": args.cpu, "cpus_per_task": args.cpus_per_task,
                   "omp_num_threads": args.omp_threads or os.environ.get("OMP_NUM_THREADS"),
                   "extra": args.extra, "log_dir": str(Path(args.log_dir).resolve()),
                   "launcher": "scripts/slurm/srun_local.py"},
        "devices": devices, "shards": shards, "phases": {}, "complete": False,
    }
    if n < 1:
        report["error"] = "no GPUs found (use --cpu or --gpus)"
        return finish(report, args, t_start)

    bench = Bench(args)
    phases = report["phases"]
    S, R = args.steps, args.resume_steps

    def run(name: str, *phase_args) -> None:
        phases[name] = bench.run_phase(name, *phase_args)
        summarize(report, n)
        save(report, args)  # what is done survives a kill of the benchmark itself

    try:
        if not args.skip_single:
            run("single", 1, f"{bench.prefix}-1proc", S)
        multi_name = f"{bench.prefix}-{n}proc"
        run("multi", n, multi_name, S)
        ckpt = bench.runs / multi_name / "checkpoints" / f"step_{S:07d}.ckpt"
        if not ckpt.is_file():
            ckpt = bench.runs / multi_name / "checkpoints" / "last.ckpt"
        if ckpt.is_file():
            # a copy: the resume in the same run dir writes new checkpoints next to it
            kept = Path(args.log_dir) / f"multi_step_{S}.ckpt"
            shutil.copy(ckpt, kept)
            run("resume_multi", n, multi_name, S + R, str(kept))
            run("resume_single", 1, f"{multi_name}-resume1", S + R, str(kept))
            phases["resume_multi"]["checkpoint"] = phases["resume_single"]["checkpoint"] = str(kept)
        else:
            for name in ("resume_multi", "resume_single"):
                phases[name] = {"status": "skipped", "reason": f"no checkpoint of step {S} in {ckpt.parent}"}
    except (SystemExit, KeyboardInterrupt) as exc:  # SIGTERM / Ctrl-C: keep what was measured
        report["stopped"] = f"{type(exc).__name__} {getattr(exc, 'code', '')}".strip()
        summarize(report, n)
        save(report, args)
        raise
    summarize(report, n)
    return finish(report, args, t_start)


def summarize(report: dict[str, Any], n: int) -> None:
    """The headline numbers from the phases run so far."""
    phases = report["phases"]
    sps1 = phases.get("single", {}).get("samples_per_s")
    spsn = phases.get("multi", {}).get("samples_per_s")
    report["samples_per_s"] = {"1": sps1, str(n): spsn}
    report["speedup"] = round(spsn / sps1, 3) if sps1 and spsn else None
    report["scaling_efficiency"] = round(spsn / (n * sps1), 3) if sps1 and spsn else None
    ran = [p for p in phases.values() if "train_batches_per_rank" in p]
    report["equal_batches_per_rank"] = bool(ran) and all(p["equal_batches_per_rank"] for p in ran)
    resumes = [phases.get(k, {}) for k in ("resume_multi", "resume_single")]
    report["resumes_started_at_checkpoint"] = all(p.get("started_at_checkpoint_step") for p in resumes)
    report["resumes_finished"] = all(p.get("finished") for p in resumes)
    report["exit_codes"] = {k: p.get("exit_code") for k, p in phases.items()}
    report["ok"] = bool(phases) and all(p.get("status") == "ok" for p in phases.values())


def save(report: dict[str, Any], args: argparse.Namespace) -> str:
    """Write ``<out>/ddp_scaling.json`` (atomically); ``complete`` is false until the end."""
    text = json.dumps(report, indent=2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "ddp_scaling.json.tmp"
    tmp.write_text(text + "\n")
    os.replace(tmp, out / "ddp_scaling.json")
    return text


def finish(report: dict[str, Any], args: argparse.Namespace, t_start: float) -> int:
    report["total_wall_s"] = round(time.time() - t_start, 1)
    report.setdefault("ok", False)
    report["complete"] = True
    print(save(report, args), flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
