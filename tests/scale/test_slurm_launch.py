"""``hardware=slurm`` launched as ``scripts/slurm/train.sbatch`` launches it (``srun``: one process per
device, each running ``@hydra.main``, Lightning's ``SLURMEnvironment`` reading the ranks from the
environment), emulated by ``scripts/slurm/srun_local.py`` on the CPU with gloo, on shards that split
unevenly over the ranks: no hang, equal batch counts, one run dir named from the job id. Plus the
launcher's own behaviour (environment, kill-on-bad-exit, signals, no orphans)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, load_script
from tests.scale.helpers import shard_of, tail, tiny_overrides, train_env, wait

SRUN_LOCAL = ROOT / "scripts" / "slurm" / "srun_local.py"
MAX_STEPS, VAL_EVERY, VAL_BATCHES = 4, 2, 1
# What hardware=slurm needs on a CPU: everything else (DDPStrategy, the SLURMEnvironment plugin and its
# requeue signal, devices = slurm.gpus_per_node, num_nodes = slurm.nodes) is exactly the GPU configuration.
CPU_SLURM = ["trainer.accelerator=cpu", "trainer.precision=32-true", "stage.datamodule.num_workers=0"]


def _srun_local():
    return load_script("scripts/slurm/srun_local.py")


def _srun(args: list[str], log, timeout: float) -> int:
    out = open(log, "w")
    proc = subprocess.Popen([sys.executable, str(SRUN_LOCAL), *args], cwd=ROOT, env=train_env(), stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)
    return wait(proc, timeout, log)


def test_srun_launch_of_hardware_slurm_on_uneven_shards(uneven_shards, tmp_path):
    log_dir = tmp_path / "logs"
    job_id = _srun_local().free_job_id()
    overrides = [a for a in tiny_overrides(uneven_shards, log_dir) if not a.startswith("hardware=")]
    # the sbatch line: hardware=slurm slurm.nodes=1 slurm.gpus_per_node=<tasks> slurm.requeue_signal=SIGUSR1
    args = overrides + [
        "hardware=slurm", "slurm.nodes=1", "slurm.gpus_per_node=2", "slurm.requeue_signal=SIGUSR1",
        "ckpt_path=auto", *CPU_SLURM,
        f"stage.max_steps={MAX_STEPS}", f"stage.val_every_n_steps={VAL_EVERY}",
        f"stage.val_batches={VAL_BATCHES}",
        "stage.checkpoint_every_n_steps=100", "callbacks.run_stats.step_log=true",
    ]
    log = tmp_path / "srun.log"
    start = time.time()
    rc = _srun(["--ntasks", "2", "--job-id", job_id, "--job-name", "genrecon", "--kill-wait", "5",
                "--output", str(tmp_path / "task-%t.log"), "--", sys.executable, "train.py", *args], log, 240)
    elapsed = time.time() - start
    logs = "\n".join(f"--- task {t}:\n{tail(tmp_path / f'task-{t}.log')}" for t in (0, 1))
    assert rc == 0, f"srun_local exited with {rc}:\n{tail(log)}\n{logs}"

    runs = list((log_dir / "train" / "runs").iterdir())
    assert [r.name for r in runs] == [f"slurm-{job_id}"], f"not one run dir named from the job id: {runs}"
    run = runs[0]
    stats = [json.loads((run / f"rank_{r}_stats.json").read_text()) for r in (0, 1)]
    for rank, s in enumerate(stats):
        assert s["status"] == "finished", s["status"]
        assert (s["rank"], s["local_rank"], s["node_rank"], s["world_size"]) == (rank, rank, 0, 2)
        assert s["train_batches"] == MAX_STEPS and s["last_step"] == MAX_STEPS
        assert s["val_batches"] == (MAX_STEPS // VAL_EVERY) * VAL_BATCHES
    assert stats[0]["train_batches"] == stats[1]["train_batches"]
    assert stats[0]["pid"] != stats[1]["pid"]  # two processes started by the launcher, not by Lightning
    # the shards are uneven: rank 0 reads shards 0 and 2 (4 samples), rank 1 shard 1 (3 samples)
    seen = [{shard_of(k) for batch in s["first_batch_keys"] for k in batch} for s in stats]
    assert seen[0] <= {0, 2} and seen[1] == {1}, seen
    # the step logs carry wall-clock times (throughput) and every rank logged every step
    for rank in (0, 1):
        steps = [json.loads(x) for x in (run / f"rank_{rank}_steps.jsonl").read_text().splitlines()]
        assert [r["step"] for r in steps] == list(range(1, MAX_STEPS + 1))
        times = [r["time"] for r in steps]
        assert times == sorted(times) and times[0] > start
    # Lightning took the cluster environment from the plugin and the ranks from SLURM_*: rank 1 ran quietly
    # (hydra/job_logging=disabled via SLURM_PROCID), rank 0 wrote the job log and .hydra/.
    assert (run / ".hydra" / "config.yaml").is_file() and "[rank: 1]" not in (run / "train.log").read_text()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    print(f"srun_local 2 tasks, hardware=slurm on CPU/gloo, {MAX_STEPS} steps: {elapsed:.1f}s")


# ---------------------------------------------------------------------------- the launcher alone


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_srun_local_gives_each_task_the_srun_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "7")
    monkeypatch.setenv("MASTER_PORT", "1")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")
    code = ("import json, os; json.dump({k: v for k, v in os.environ.items() if k.startswith(('SLURM',"
            " 'RANK', 'MASTER', 'TORCHELASTIC'))},"
            " open(os.environ['OUT'] + os.environ['SLURM_PROCID'], 'w'))")
    monkeypatch.setenv("OUT", str(tmp_path / "env"))
    rc = subprocess.run([sys.executable, str(SRUN_LOCAL), "-n", "3", "--job-id", "4242424", "-J", "bench",
                         "--quiet", "--", *_py(code)], timeout=60).returncode
    assert rc == 0
    envs = [json.loads((tmp_path / f"env{r}").read_text()) for r in range(3)]
    for rank, env in enumerate(envs):
        assert (env["SLURM_PROCID"], env["SLURM_LOCALID"], env["SLURM_NODEID"]) == (str(rank), str(rank), "0")
        assert env["SLURM_NTASKS"] == env["SLURM_NTASKS_PER_NODE"] == "3" and env["SLURM_NNODES"] == "1"
        assert env["SLURM_JOB_ID"] == "4242424" and env["SLURM_JOB_NAME"] == "bench"
        assert env["SLURM_NODELIST"] == env["SLURM_JOB_NODELIST"] == "127.0.0.1"
        assert not {"RANK", "MASTER_PORT", "TORCHELASTIC_RUN_ID"} & set(env)

    # what Lightning makes of it, in the environment of task 1
    from lightning.fabric.plugins.environments import SLURMEnvironment

    monkeypatch.delenv("RANK"), monkeypatch.delenv("MASTER_PORT")
    for key, value in envs[1].items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    slurm = SLURMEnvironment()
    assert SLURMEnvironment.detect() and slurm.job_id() == 4242424
    assert (slurm.world_size(), slurm.global_rank(), slurm.local_rank(), slurm.node_rank()) == (3, 1, 1, 0)
    slurm.validate_settings(num_devices=3, num_nodes=1)
    assert slurm.main_address == "127.0.0.1" and slurm.main_port == 15000 + 2424


def test_srun_local_kill_on_bad_exit_returns_the_failing_code(tmp_path):
    # task 1 fails after 0.5 s; task 0 ignores SIGTERM (as Lightning's SLURM handler does) and sleeps on
    code = ("import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(0.5)\n"
            "if os.environ['SLURM_PROCID'] == '1': raise SystemExit(3)\ntime.sleep(60)")
    start = time.time()
    proc = subprocess.run([sys.executable, str(SRUN_LOCAL), "-n", "2", "--kill-wait", "1", "--", *_py(code)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert time.time() - start < 30
    assert "task 1 ended with exit code 3" in proc.stderr and "SIGKILL" in proc.stderr

    # without kill-on-bad-exit the others run to their end; the worst code wins
    code = "import os, sys; sys.exit(int(os.environ['SLURM_PROCID']) * 2)"
    proc = subprocess.run([sys.executable, str(SRUN_LOCAL), "-n", "3", "--kill-on-bad-exit=0", "--",
                           *_py(code)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 4, proc.stderr


def test_srun_local_forwards_signals_and_writes_per_task_output(tmp_path):
    code = ("import os, signal, sys, time\n"
            "def h(s, f): print('got', signal.Signals(s).name, flush=True); sys.exit(10 + s)\n"
            "signal.signal(signal.SIGUSR1, h)\nprint('ready', flush=True)\ntime.sleep(60)")
    proc = subprocess.Popen([sys.executable, str(SRUN_LOCAL), "-n", "2", "-o", str(tmp_path / "t%t-%j.out"),
                             "--job-id", "5555", "--", *_py(code)], stderr=subprocess.PIPE, text=True)
    outs = [tmp_path / f"t{t}-5555.out" for t in (0, 1)]
    deadline = time.time() + 60
    while not all(p.is_file() and "ready" in p.read_text() for p in outs):
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(timeout=60) == 10 + signal.SIGUSR1
    assert all("got SIGUSR1" in p.read_text() for p in outs)


def test_tasks_die_with_a_killed_launcher(tmp_path):
    """A test timeout kills the launcher's process group; the tasks (own process groups) must not survive."""
    code = ("import os, time; open(os.environ['OUT'] + os.environ['SLURM_PROCID'], 'w')"
            ".write(str(os.getpid())); time.sleep(120)")
    env = dict(os.environ, OUT=str(tmp_path / "pid"))
    proc = subprocess.Popen([sys.executable, str(SRUN_LOCAL), "-n", "2", "-Q", "--", *_py(code)], env=env,
                            start_new_session=True)
    pids = [tmp_path / f"pid{t}" for t in (0, 1)]
    deadline = time.time() + 60
    while not all(p.is_file() and p.read_text() for p in pids):
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    for pid in (int(p.read_text()) for p in pids):
        while _alive(pid):
            assert time.time() < deadline, f"task {pid} survived its launcher"
            time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for its new parent to reap it is dead too
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[-1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("name", ["bash", "interactive"])
def test_srun_local_refuses_job_names_that_switch_slurm_detection_off(name):
    proc = subprocess.run([sys.executable, str(SRUN_LOCAL), "-n", "1", "-J", name, "--", "true"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "detection" in proc.stderr
