#!/usr/bin/env python
"""``srun`` for one machine without SLURM: start N copies of a command as the tasks of one job step.

    python scripts/slurm/srun_local.py --ntasks 2 [--job-id 123456] [--job-name genrecon] \\
        [--output 'logs/srun-%j.%t.log'] [--kill-on-bad-exit=1] -- \\
        python train.py hardware=slurm slurm.gpus_per_node=2 ...

It exists so that the launch path of ``scripts/slurm/train.sbatch`` (``srun`` starts one process per GPU,
every process runs ``@hydra.main``, Lightning's ``SLURMEnvironment`` reads the ranks from the environment)
can be exercised on a workstation, a lone GPU box or a CPU in the tests. Every task gets the variables
srun gives a task of a one-node step with ``--ntasks-per-node=N``:

    SLURM_JOB_ID / SLURM_JOBID, SLURM_JOB_NAME, SLURM_PROCID, SLURM_LOCALID, SLURM_NODEID=0,
    SLURM_NTASKS / SLURM_NPROCS, SLURM_NTASKS_PER_NODE, SLURM_TASKS_PER_NODE, SLURM_NNODES /
    SLURM_JOB_NUM_NODES=1, SLURM_NODELIST / SLURM_JOB_NODELIST / SLURM_STEP_NODELIST, SLURM_STEP_ID=0,
    SLURM_STEP_NUM_TASKS, SLURM_STEP_NUM_NODES, SLURM_STEP_TASKS_PER_NODE, SLURM_SUBMIT_DIR,
    SLURM_SUBMIT_HOST, SLURMD_NODENAME, SLURM_CLUSTER_NAME (and SLURM_CPUS_PER_TASK with --cpus-per-task).

What Lightning (2.6) reads of these: ``SLURMEnvironment`` takes the world size from ``SLURM_NTASKS``, the
ranks from ``SLURM_PROCID``/``SLURM_LOCALID``/``SLURM_NODEID``, checks ``SLURM_NTASKS_PER_NODE`` against
``Trainer(devices)`` and ``SLURM_NNODES`` against ``num_nodes`` (and refuses ``SLURM_NTASKS > 1`` without
``SLURM_NTASKS_PER_NODE``), takes the main address from the first host of ``SLURM_NODELIST`` and the main
port from the job id (``15000 + last 4 digits``); a job name of ``bash`` or ``interactive`` switches SLURM
detection off, so those names are refused here. The default job id is a random one whose port is free.

CPU binding only with ``--cpus-per-task C``: task i is pinned to the i-th block of C CPUs of the launcher's
affinity (as srun's task/affinity plugin does), so its torch threads and DataLoader workers get that share;
``--cpu-bind=none`` keeps the variable but not the pinning. Without it every task may use every CPU.

Not emulated: GPU binding (each task inherits ``CUDA_VISIBLE_DEVICES`` and sees every GPU, as under
``--gres=gpu:N`` without ``--gpu-bind``; Lightning picks ``cuda:<SLURM_LOCALID>``), several nodes,
``scontrol`` (a requeue signal makes Lightning save ``hpc_ckpt_*.ckpt`` and then log that ``scontrol
requeue`` failed). Variables of other launchers (torchrun's ``RANK``/``LOCAL_RANK``/``WORLD_SIZE``/
``MASTER_ADDR``/``MASTER_PORT``/``TORCHELASTIC_*``, Lightning's ``PL_*`` seeds) and any ``SLURM_*`` of an
enclosing allocation are removed, so nothing overrides the emulated step.

Process handling, as srun's:
  * SIGTERM, SIGINT, SIGUSR1 and SIGUSR2 received by this launcher are forwarded to every task's main process
    only, not to its DataLoader workers (the default action of SIGUSR1 would end them; what a real SLURM
    signals depends on its configuration). A second SIGINT within 1 s kills the tasks, like srun's double
    Ctrl-C.
  * ``--kill-on-bad-exit=1`` (the default here, as in train.sbatch): when a task exits non-zero or by a
    signal, the other tasks get SIGTERM and, ``--kill-wait`` seconds later, SIGKILL (a rank stuck in a
    collective never returns to Python to handle SIGTERM). With ``=0`` the others run on.
  * ``--time-limit S``: after S seconds all tasks get SIGTERM, then SIGKILL after ``--kill-wait``.
  * Each task runs in its own process group (so kills reach its DataLoader workers) and dies with SIGKILL
    if the launcher itself is killed (Linux ``PR_SET_PDEATHSIG``): no orphaned ranks after a timeout.
  * The exit code is the worst task exit code (a task ended by signal ``s`` counts as ``128 + s``); tasks
    this launcher killed only count when no task failed by itself, so the first failure is what you see.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import os
import random
import signal
import socket
import sys
import time
from pathlib import Path
from subprocess import Popen

FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)
# Variables of other launchers that would override or confuse the emulated SLURM step.
STRIPPED = {
    "RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK", "ROLE_RANK", "ROLE_NAME",
    "ROLE_WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
    "PL_GLOBAL_SEED", "PL_SEED_WORKERS",
}
STRIPPED_PREFIXES = ("SLURM_", "SLURMD_", "TORCHELASTIC_", "TORCH_ELASTIC_", "OMPI_COMM_WORLD_", "PMI_")
INTERACTIVE_JOB_NAMES = ("bash", "interactive")  # Lightning's SLURMEnvironment ignores such jobs
PR_SET_PDEATHSIG = 1


def lightning_port(job_id: str) -> int:
    """The rendezvous port Lightning's ``SLURMEnvironment`` derives from the job id."""
    return 15000 + int(job_id[-4:])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_job_id(rng: random.Random | None = None) -> str:
    """A random 7-digit job id whose Lightning port (15000 + last 4 digits) is free on this machine."""
    rng = rng or random.Random()
    for _ in range(200):
        job_id = str(rng.randint(1_000_000, 9_999_999))
        if port_is_free(lightning_port(job_id)):
            return job_id
    raise RuntimeError("srun_local: no job id with a free port in 15000-24999")


def task_env(base: dict[str, str], *, rank: int, ntasks: int, job_id: str, job_name: str, nodelist: str,
             cpus_per_task: int | None = None) -> dict[str, str]:
    """The environment of task ``rank`` of an ``ntasks``-task, one-node step (see the module docstring)."""
    env = {k: v for k, v in base.items() if k not in STRIPPED and not k.startswith(STRIPPED_PREFIXES)}
    host = socket.gethostname()
    n = str(ntasks)
    env.update({
        "SLURM_JOB_ID": job_id, "SLURM_JOBID": job_id, "SLURM_JOB_NAME": job_name,
        "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "SLURM_NODEID": "0",
        "SLURM_NTASKS": n, "SLURM_NPROCS": n, "SLURM_NTASKS_PER_NODE": n, "SLURM_TASKS_PER_NODE": n,
        "SLURM_NNODES": "1", "SLURM_JOB_NUM_NODES": "1",
        "SLURM_NODELIST": nodelist, "SLURM_JOB_NODELIST": nodelist,
        "SLURM_STEP_ID": "0", "SLURM_STEPID": "0", "SLURM_STEP_NUM_TASKS": n, "SLURM_STEP_NUM_NODES": "1",
        "SLURM_STEP_NODELIST": nodelist, "SLURM_STEP_TASKS_PER_NODE": n,
        "SLURM_SUBMIT_DIR": os.getcwd(), "SLURM_SUBMIT_HOST": host, "SLURMD_NODENAME": host,
        "SLURM_CLUSTER_NAME": "srun_local",
    })
    if cpus_per_task:
        env["SLURM_CPUS_PER_TASK"] = str(cpus_per_task)
    return env


def output_path(pattern: str, *, task: int, job_id: str, job_name: str) -> Path:
    """srun's filename pattern: ``%t`` task id, ``%j`` job id, ``%x`` job name, ``%%`` a percent sign."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "%" and i + 1 < len(pattern):
            token = pattern[i + 1]
            repl = {"t": str(task), "j": job_id, "x": job_name, "%": "%"}.get(token)
            if repl is None:
                raise ValueError(f"--output: unsupported pattern %{token} (use %t, %j, %x or %%)")
            out.append(repl)
            i += 2
            continue
        out.append(c)
        i += 1
    return Path("".join(out))


def cpu_blocks(ntasks: int, cpus_per_task: int) -> list[list[int]] | None:
    """Disjoint blocks of ``cpus_per_task`` CPUs of this process's affinity, one per task; None if too few."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    if ntasks * cpus_per_task > len(allowed):
        return None
    return [allowed[i * cpus_per_task:(i + 1) * cpus_per_task] for i in range(ntasks)]


def _child_setup(cpus: list[int] | None = None) -> None:
    """In each task before exec: own process group; SIGKILL when the launcher dies (Linux only); CPU
    affinity when binding."""
    os.setpgid(0, 0)
    if cpus:
        os.sched_setaffinity(0, cpus)
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass
    for sig in FORWARDED_SIGNALS:  # tasks start with default dispositions whatever the launcher had
        signal.signal(sig, signal.SIG_DFL)


def exit_code(returncode: int) -> int:
    """A Popen return code as a shell reports it (killed by signal s -> 128 + s)."""
    return 128 - returncode if returncode < 0 else returncode


class Step:
    """The running tasks of one emulated job step."""

    def __init__(self, args: argparse.Namespace, command: list[str]) -> None:
        self.args = args
        self.command = command
        self.procs: list[Popen] = []
        self.killed_by_us: set[int] = set()
        self.kill_deadline: float | None = None
        self.pending: list[int] = []
        self.last_sigint = 0.0

    def log(self, msg: str) -> None:
        if not self.args.quiet:
            print(f"srun_local: {msg}", file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ signals
    def _on_signal(self, signum: int, _frame) -> None:
        self.pending.append(signum)

    def _handle_pending(self) -> None:
        while self.pending:
            signum = self.pending.pop(0)
            if signum == signal.SIGINT:
                now = time.monotonic()
                if now - self.last_sigint < 1.0:
                    self.log("second SIGINT within 1 s: killing the tasks")
                    self.terminate(signal.SIGKILL)
                    continue
                self.last_sigint = now
            self.log(f"forwarding {signal.Signals(signum).name} to the tasks")
            for proc in self.procs:
                if proc.poll() is None:
                    try:
                        os.kill(proc.pid, signum)
                    except ProcessLookupError:
                        pass

    # ------------------------------------------------------------------ killing
    def terminate(self, first: int = signal.SIGTERM) -> None:
        """Signal every running task's process group; SIGKILL follows after --kill-wait seconds."""
        for i, proc in enumerate(self.procs):
            if proc.poll() is None:
                self.killed_by_us.add(i)
                try:
                    os.killpg(proc.pid, first)
                except ProcessLookupError:
                    pass
        if first != signal.SIGKILL and self.kill_deadline is None:
            self.kill_deadline = time.monotonic() + self.args.kill_wait

    # ------------------------------------------------------------------ main loop
    def run(self) -> int:
        args = self.args
        job_name = args.job_name
        for sig in FORWARDED_SIGNALS:
            signal.signal(sig, self._on_signal)
        files = []
        blocks = None
        if args.cpus_per_task and args.cpu_bind != "none":
            blocks = cpu_blocks(args.ntasks, args.cpus_per_task)
            if blocks is None:
                self.log(f"{args.ntasks} x {args.cpus_per_task} CPUs exceed the CPUs available: not binding")
        try:
            for rank in range(args.ntasks):
                env = task_env(dict(os.environ), rank=rank, ntasks=args.ntasks, job_id=args.job_id,
                               job_name=job_name, nodelist=args.nodelist, cpus_per_task=args.cpus_per_task)
                stdout = None
                if args.output:
                    path = output_path(args.output, task=rank, job_id=args.job_id, job_name=job_name)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    stdout = open(path, "ab" if args.open_mode == "append" else "wb")
                    files.append(stdout)
                setup = functools.partial(_child_setup, blocks[rank] if blocks else None)
                self.procs.append(Popen(self.command, env=env, stdout=stdout,
                                        stderr=None if stdout is None else stdout, preexec_fn=setup))
            self.log(f"job {args.job_id} ({job_name}): {args.ntasks} task(s), pids "
                     f"{[p.pid for p in self.procs]}, port {lightning_port(args.job_id)}")
            return self._wait()
        finally:
            if any(p.poll() is None for p in self.procs):  # an exception in the launcher itself
                self.terminate(signal.SIGKILL)
            for f in files:
                f.close()

    def _wait(self) -> int:
        args = self.args
        start = time.monotonic()
        reported: set[int] = set()
        while True:
            self._handle_pending()
            running = 0
            for i, proc in enumerate(self.procs):
                rc = proc.poll()
                if rc is None:
                    running += 1
                    continue
                if i in reported:
                    continue
                reported.add(i)
                if rc != 0:
                    how = f"signal {signal.Signals(-rc).name}" if rc < 0 else f"exit code {rc}"
                    self.log(f"task {i} ended with {how}")
                    if args.kill_on_bad_exit and i not in self.killed_by_us and running_others(self.procs, i):
                        self.log("--kill-on-bad-exit: terminating the other tasks")
                        self.terminate(signal.SIGTERM)
            if running == 0:
                break
            now = time.monotonic()
            if args.time_limit and now - start > args.time_limit and self.kill_deadline is None:
                self.log(f"time limit of {args.time_limit}s reached: terminating the tasks")
                self.terminate(signal.SIGTERM)
            if self.kill_deadline is not None and now > self.kill_deadline:
                self.log(f"tasks still running {args.kill_wait}s after SIGTERM: SIGKILL")
                self.terminate(signal.SIGKILL)
                self.kill_deadline = float("inf")
            time.sleep(0.05)
        codes = [exit_code(p.returncode) for p in self.procs]
        own = [c for i, c in enumerate(codes) if i not in self.killed_by_us]
        worst = max(own, default=0)
        if worst == 0 and self.killed_by_us:  # stopped by the launcher only (time limit, double SIGINT)
            worst = max(codes) or 1
        self.log(f"exit codes {codes} -> {worst}")
        return worst


def running_others(procs: list[Popen], i: int) -> bool:
    return any(p.poll() is None for j, p in enumerate(procs) if j != i)


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    if "--" in argv:
        split = argv.index("--")
        own, command = argv[:split], argv[split + 1:]
    else:
        own, command = argv, []
    p = argparse.ArgumentParser(
        prog="srun_local.py", description="Emulate `srun` on one machine (see the module docstring).",
        usage="%(prog)s --ntasks N [options] -- command [args...]",
    )
    p.add_argument("-n", "--ntasks", type=int, default=1, help="number of tasks (ranks) on this machine")
    p.add_argument("--job-id", default=None,
                   help="SLURM_JOB_ID (default: random, with a free Lightning port)")
    p.add_argument("-J", "--job-name", default="srun_local", help="SLURM_JOB_NAME (not bash/interactive)")
    p.add_argument("--nodelist", default="127.0.0.1",
                   help="SLURM_NODELIST: Lightning's MASTER_ADDR (default 127.0.0.1; the hostname also works "
                        "where it resolves)")
    p.add_argument("-c", "--cpus-per-task", type=int, default=None,
                   help="sets SLURM_CPUS_PER_TASK and pins task i to the i-th block of that many CPUs")
    p.add_argument("--cpu-bind", choices=("cores", "none"), default="cores",
                   help="none: no pinning with --cpus-per-task")
    p.add_argument("-o", "--output", default=None,
                   help="per-task log file pattern: %%t task id, %%j job id, %%x job name (default: inherit)")
    p.add_argument("--open-mode", choices=("truncate", "append"), default="truncate")
    p.add_argument("-K", "--kill-on-bad-exit", type=int, nargs="?", const=1, default=1, choices=(0, 1),
                   help="1 (default): a task failing ends the others; 0: they run on")
    p.add_argument("--kill-wait", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL")
    p.add_argument("--time-limit", type=float, default=None, help="seconds before the tasks are terminated")
    p.add_argument("-Q", "--quiet", action="store_true", help="no srun_local messages on stderr")
    args = p.parse_args(own)
    if not command:
        p.error("no command: put it after `--`")
    if args.ntasks < 1:
        p.error("--ntasks must be at least 1")
    if args.job_name in INTERACTIVE_JOB_NAMES:
        p.error(f"--job-name {args.job_name!r} turns Lightning's SLURM detection off; choose another name")
    if args.job_id is None:
        args.job_id = free_job_id()
    elif not args.job_id.isdigit() or len(args.job_id) < 4:
        p.error("--job-id must be a number of at least 4 digits (Lightning takes its port from the last 4)")
    elif not port_is_free(lightning_port(args.job_id)):
        print(f"srun_local: warning: port {lightning_port(args.job_id)} of job id {args.job_id} is in use",
              file=sys.stderr)
    return args, command


def main(argv: list[str] | None = None) -> int:
    args, command = parse_args(sys.argv[1:] if argv is None else argv)
    return Step(args, command).run()


if __name__ == "__main__":
    sys.exit(main())
