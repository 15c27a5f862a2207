"""benchmarks/next_device_run.sh: the planned device command parses and builds the flows it names (session 35 lost a
device call to arguments full_pipeline.py refused; this catches that on the CPU, whatever the plan)."""

from __future__ import annotations

import os
import subprocess

from tests.benchmarks.test_full_pipeline import flow_phase
from tests.conftest import ROOT, compose_config, load_script


def planned_args() -> list[str]:
    out = subprocess.run(["bash", str(ROOT / "benchmarks/next_device_run.sh")], capture_output=True, text=True,
                         env={**os.environ, "NEXT_RUN_PRINT_ARGS": "1"}, check=True, timeout=30)
    return out.stdout.splitlines()


def planned_flow_phase(tmp_path, monkeypatch):
    """The script, the planned arguments (device root moved under ``tmp_path``) and :func:`flow_phase` of them."""
    argv = planned_args()
    argv[argv.index("--root") + 1] = str(tmp_path)
    fp = load_script("benchmarks/full_pipeline.py")
    args = fp.parse_args([*argv, "--gpus", "1"])
    return (fp, args, *flow_phase(fp, args, monkeypatch))


def test_the_planned_command_parses_and_trains_every_flow_it_names(tmp_path, monkeypatch):
    assert "--resume" in planned_args(), "a repeated call must continue the run, not restart it"
    fp, args, _, batches = planned_flow_phase(tmp_path, monkeypatch)
    flows = {j.name: j.argv for j in batches[0]} if "flow" in args.phases else {}
    assert sorted(flows) == sorted([*args.flows, *fp.parse_flow_variants(args.flow_variant)])
    for name, job in flows.items():
        assert all(a in job for a in args.flow_args), name


def test_every_planned_training_job_composes_its_config(tmp_path, monkeypatch):
    """Each train.py job of the planned VAE and flow phases composes with Hydra as the device would: an override
    of a key the config lacks (written without '+') fails here, not a minute into a device call."""
    _, args, pipe, batches = planned_flow_phase(tmp_path, monkeypatch)
    pipe.vae()  # the same fake runner: appends the VAE phase's jobs to batches
    jobs = [j for batch in batches for j in batch if "train.py" in j.argv]
    names = {j.name for j in jobs}
    assert {"view_pretrain", *(f"view_pretrain_{v[0]}" for v in args.view_pretrain_variant)} <= names
    for job in jobs:
        overrides = job.argv[job.argv.index("train.py") + 1:]
        try:
            compose_config("train", overrides)
        except Exception as err:  # noqa: BLE001 - any composition error fails the plan, named by its job
            raise AssertionError(f"{job.name}: {err}") from err
