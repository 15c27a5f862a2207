"""The whole GenRecon pipeline on a GPU machine, time-budgeted, every acceptance measurement in one go.

    python benchmarks/full_pipeline.py --root /tmp/gr            # GPU machine (1 or more GPUs)
    python benchmarks/full_pipeline.py --root /tmp/gr --cpu --preset tiny --scenes 6 ...   # CPU dry run

Phases (each the real entry point as a subprocess; ``--phases`` picks a subset and their order, later phases
reuse earlier outputs under ``--root``):

1. ``prepare``  synthetic rooms -> chunk shards (``prepare.py``); with ``--probe``, beside it on the idle GPU,
   the step-time probe of the flow stages on synthetic batches (``benchmarks/flow_step.py``), from which
   ``--flow-batch auto`` picks each flow's batch size, attention backend and activation checkpointing.
2. ``vae``      the three VAEs side by side for ``--vae-minutes`` of wall clock each (``train.py``), the learning
   rate decayed over the budget (``callbacks.time_budget``); ``--tex-vae-variant`` runs train beside the main
   texture VAE on its GPU and are scored by ``vae_quality.py`` (an A/B measured in the same run);
   ``--ss-vae-variant NAME`` runs ``ss_vae_NAME`` beside the main SS VAE, whose latents the encoding writes to
   ``latents_ss_vae_NAME`` and on which a ``--flow-variant`` with ``ss_vae=NAME`` trains and is scored (an SS-VAE
   A/B through the flow it feeds). With ``--view-pretrain-minutes`` the view encoder pretrains beside them
   (``stage=view_pretrain``) for the ``*_pre`` flows; it goes on beside the encoding, and the phase after that
   waits for it. ``--view-pretrain-variant NAME`` runs ``view_pretrain_NAME`` beside it, whose encoder a
   ``--flow-variant`` with ``view_pretrain=NAME`` loads instead (a view-encoder A/B through the flow it feeds).
3. ``encode``   latent shards + statistics (``prepare.py steps=[encode]``, and once more for each SS-VAE
   variant), beside it the held-out VAE quality (``benchmarks/vae_quality.py``), which the next phase waits for.
4. ``ddp``      shape-flow DDP scaling over all GPUs, resumed on N and on 1 GPU (``benchmarks/ddp_scaling.py``),
   alone on the machine so the timings are clean.
5. ``flow``     the flows of ``--flows`` (ss_flow, shape_flow, tex_flow and the ablations without projection
   conditioning) side by side for ``--flow-minutes``; with ``--tex-vae-extend-minutes`` the texture VAE
   resumes beside them for that much longer (run ``tex_vae_long``; the latents keep the encode-time VAE).
   With ``--resume-flows`` flows that have a checkpoint continue from it (a machine kept across calls);
   ``--resume`` also skips the phases an earlier call finished (``<root>/phases/<phase>.done``).
6. ``flow_quality``  the flows' held-out chunk metrics (``benchmarks/flow_quality.py``) and the extended
   texture VAE's held-out quality.
7. ``quality``  held-out rooms reconstructed end to end by both variants + the TSDF reference
   (``benchmarks/quality.py``).

With ``--deadline-minutes`` (a lent machine's budget) the flows train only for what is left once the earlier
phases are done, less ``--reserve-minutes`` for their scoring, so a slow data phase shortens the flows instead of
losing the scores (session 10 lost them).

Jobs of one phase share the GPUs round-robin (``CUDA_VISIBLE_DEVICES``); ``--place NAME=GPUS`` puts job NAME on
other GPUs, and a training job given several (``--place tex_flow_pre=0,1,2``) runs DDP over them
(``hardware=gpu_ddp``). Everything a person needs lands in
``<root>/results``: one log per job, ``progress.jsonl`` (a line per finished job: exit code, seconds), the
metrics files and the benchmark JSONs; ``DONE`` marks the end. A failed job is recorded and the phases that
do not depend on it go on.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DDP_BASE_PORT = 29500  # + the first GPU of a multi-GPU job: its MASTER_PORT
PHASES = ("prepare", "vae", "vae_variants", "encode", "ddp", "flow", "flow_quality", "quality")
FLOWS = ("ss_flow", "ss_flow_noproj", "ss_flow_photo", "ss_flow_aux", "ss_flow_depth", "ss_flow_dsup", "shape_flow",
         "shape_flow_noproj", "tex_flow", "tex_flow_photo", "tex_flow_aux", "tex_flow_depth", "tex_flow_dsup",
         "tex_flow_vis", "tex_flow_visphoto", "ss_flow_pre", "tex_flow_pre", "ss_flow_cell", "tex_flow_cell",
         "tex_flow_nofloor", "tex_flow_pre_nofloor", "ss_flow_pre_noproj", "tex_flow_pre_patch2",
         "tex_flow_pre_patch2_b16")
# The photo-consistency cue (genrecon/models/photo_consistency.py) switched on for the *_photo runs.
PHOTO_CUE = "preset.flow.photo_cue={subdivisions:4,hidden:256}"
# The auxiliary view read-outs switched on for the *_aux runs: the SS flow's occupancy head
# (SparseStructureFlowStage) and the texture flow's latent head (FlowStage).
OCC_AUX = "stage.module.occupancy_aux_weight=1.0"
LATENT_AUX = "stage.module.latent_aux_weight=1.0"
# The ray-depth cue (genrecon/models/depth_cue.py) on top of the auxiliary heads for the *_depth runs.
DEPTH_CUE = "preset.flow.depth_cue={bins:64,max_depth:4.0}"
# ... and with that cue's depth head supervised by the chunk's surface depths for the *_dsup runs.
DEPTH_SUP = "stage.module.depth_supervision_weight=1.0"
# Structure visibility (genrecon/models/visibility.py) on top of the latent head for the *_vis runs: the texture flow
# fuses only the views whose z-buffer of the active cells shows the cell; *_visphoto adds the photo cue, which then
# also counts only those views (2 sub-points per edge: the visibility z-buffer's own sampling).
VISIBILITY = "preset.flow.visibility={grid:64,subdivisions:2,tolerance:1.5,fallback:true}"
VIS_PHOTO_CUE = "preset.flow.photo_cue={subdivisions:2,hidden:256}"
# The *_pre runs start from the pretrained view encoder (stage=view_pretrain, frozen as the published flows keep
# DINOv3) and its depth head in the depth cue, on top of their family's auxiliary head (and visibility for texture).
FROZEN_ENCODER = "preset.image_encoder.frozen=true"
# The *_cell runs add the sub-patch cell cue (genrecon/models/cell_cue.py) to their *_pre run, its head loaded from
# the pretraining's dense cells.
CELL_CUE = "preset.flow.cell_cue={subdivisions:4}"
# The runs that load the pretrained view encoder (a --flow-variant of one may load a --view-pretrain-variant's).
ENCODER_RUNS = ("ss_flow_pre", "tex_flow_pre", "ss_flow_pre_noproj", "ss_flow_cell", "tex_flow_cell",
                "tex_flow_pre_nofloor", "tex_flow_pre_patch2", "tex_flow_pre_patch2_b16")
# The texture flow normalises its latent with a std floor (FlowStage's latent_std_floor, 0.1 in
# conf/stage/tex_flow.yaml since session 12): its 27 near-constant channels are not scaled up into unit-
# variance targets. The *_nofloor runs switch it off (the published per-channel normalisation).
NO_FLOOR = "stage.module.latent_std_floor=0.0"
# The *_patch2 run: the sparse flow's blocks over occupied 2³ blocks of cells (SparseFlowTransformer's patch_size),
# about 4 times fewer tokens; compared with its base run at equal time, i.e. more steps.
PATCH2 = "preset.flow.patch_size=2"
# ... at 16 chunks per GPU (*_b16): the blocks' best throughput on an H100 (session 14: 28.3 against 20.8 chunks/s
# per cell at 8). Run-specific, so it wins over --flow-batch and --flow-args.
BATCH16 = "stage.datamodule.batch_size=16"
VAES = ("ss_vae", "shape_vae", "tex_vae")
# Phases that may start while detached jobs of the phase before still run (see Pipeline.run).
OVERLAPS = ("encode",)
# Phases that --resume skips once done: their outputs (data, VAEs, latents, timings) stay valid; the flows resume
# from their checkpoints instead (--resume-flows) and every scoring runs again on the newer weights.
RESUMABLE = ("prepare", "vae", "vae_variants", "encode", "ddp")
# Detached scoring jobs the flow phase does not wait for: they only read checkpoints and write a JSON (session 14:
# the VAE scoring held the flows back 45 s after the encoding had ended).
SCORING_JOBS = ("vae_quality",)
MAIN_FLOWS = ("ss_flow", "shape_flow", "tex_flow")
STAGES = ("ss_vae", "shape_vae", "tex_vae", "ss_flow", "shape_flow", "tex_flow")


def default_flow_gpus(runs: list[str], gpus: int) -> dict[str, int]:
    """Where each flow job runs when ``--place`` names none. With two or more GPUs the SS flows go on GPU 0 and
    the shape and texture flows (and the extended texture VAE) on GPU 1, so each flow trains beside its variants
    under equal conditions. When only one of the two families trains and its runs divide evenly over the GPUs
    (as many runs as GPUs, or a multiple), they go round-robin instead: the shares stay equal and no GPU idles
    (session 30: two SS arms on a two-GPU machine shared GPU 0 at 3.5 steps/s each while GPU 1 idled)."""
    if gpus < 2 or not runs:
        return {r: 0 for r in runs}
    by_family = {r: 0 if r.startswith("ss_") else 1 for r in runs}
    used = min(gpus, len(runs))
    if len(set(by_family.values())) == 1 and len(runs) % used == 0:
        return {r: i % used for i, r in enumerate(runs)}
    return by_family


@dataclass
class Job:
    name: str
    argv: list[str]
    gpu: int | tuple[int, ...] | None = None  # several: the job sees all of them (a DDP training run)
    env: dict[str, str] = field(default_factory=dict)


class Running:
    """A started job; a watcher thread notes when it exits, so a job reaped late (detached, or waited for after
    a longer one) still reports its own duration."""

    def __init__(self, job: Job, proc: subprocess.Popen, log: Any, start: float) -> None:
        self.job, self.proc, self.log, self.start = job, proc, log, start
        self.end: float | None = None
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        self.proc.wait()
        self.end = time.time()

    def wait(self) -> tuple[int, float]:
        """(exit code, end time)."""
        rc = self.proc.wait()
        self._watcher.join()
        self.log.close()
        return rc, float(self.end)


def flow_stage(run: str) -> str:
    """The stage a flow run trains: ``ss_flow_noproj`` -> ``ss_flow``."""
    return next(s for s in ("ss_flow", "shape_flow", "tex_flow") if run.startswith(s))


def parse_named_entries(entries: list[str], option: str, example: str,
                        problem: Callable[[str, str, dict], str | None]) -> dict[str, tuple[str, list[str]]]:
    """Entries ``"NAME=BASE:A;B"`` -> ``{NAME: (BASE, [A, B])}``; ``problem(name, base, parsed so far)`` names
    what is wrong with one (None: fine; name is "" when the form is wrong), and the option exits with it."""
    parsed: dict[str, tuple[str, list[str]]] = {}
    for entry in entries:
        name, sep, rest = entry.partition("=")
        base, colon, items = rest.partition(":")
        if not (sep and colon and base):
            name = ""
        why = problem(name, base, parsed)
        if why:
            raise SystemExit(f"{option} {entry!r}: {why}, e.g. {example}")
        parsed[name] = (base, [x for x in items.split(";") if x])
    return parsed


def parse_flow_variants(entries: list[str], known: tuple[str, ...] = FLOWS) -> dict[str, tuple[str, list[str]]]:
    """``["tex_flow_pre_ln=tex_flow_pre:a=1;b=2"]`` -> ``{"tex_flow_pre_ln": ("tex_flow_pre", ["a=1", "b=2"])}``:
    a flow run NAME that trains like the run BASE plus these Hydra overrides (after ``--flow-args``)."""

    def problem(name: str, base: str, parsed: dict) -> str | None:
        stage = next((s for s in MAIN_FLOWS if name.startswith(s + "_")), None)
        if not name:
            return "expected NAME=BASE:OVERRIDE[;OVERRIDE...]"
        if base not in known:
            return f"BASE {base!r} is not a flow run ({', '.join(known)})"
        if stage is None or not base.startswith(stage):
            return f"NAME must start with its base's stage and an underscore ({flow_stage(base)}_...)"
        if name in known or name in parsed:
            return f"NAME {name!r} is taken"
        return None

    return parse_named_entries(entries, "--flow-variant",
                               "tex_flow_pre_ln=tex_flow_pre:stage.module.objective.t_schedule=logit_normal", problem)


def parse_scoring_extras(entries: list[str]) -> dict[str, tuple[str, list[str]]]:
    """``["flow_quality_cell_train=flow_quality_cell:--split=train"]`` -> ``{"flow_quality_cell_train":
    ("flow_quality_cell", ["--split=train"])}``: score family FAMILY's checkpoints again as NAME with these extra
    ``flow_quality.py`` arguments."""

    def problem(name: str, family: str, parsed: dict) -> str | None:
        if not name.startswith("flow_quality") or not family.startswith("flow_quality"):
            return "expected NAME=FAMILY:ARG[;ARG...], both names flow_quality_..."
        if name in parsed or name == family:
            return f"NAME {name!r} is taken"
        return None

    return parse_named_entries(entries, "--flow-quality-extra",
                               "flow_quality_cell_train=flow_quality_cell:--split=train", problem)


def variant_family(name: str) -> str:
    """The flow_quality family a --flow-variant is scored as: ``tex_flow_pre_ln`` -> ``flow_quality_pre_ln``."""
    return "flow_quality_" + name.removeprefix(flow_stage(name) + "_")


def parse_run_variants(entries: list[list[str]], minutes: float, option: str) -> dict[str, tuple[float, list[str]]]:
    """``[["short", "minutes=1.5", "a=1"]]`` -> ``{"short": (1.5, ["a=1"])}``: the runs of ``option`` (e.g.
    ``--ss-vae-variant``), each trained for its own ``minutes=`` (else ``minutes``) with these overrides."""
    parsed: dict[str, tuple[float, list[str]]] = {}
    for name, *overrides in entries:
        if not name.isidentifier() or name in parsed:
            raise SystemExit(f"{option} {name!r}: NAME must be a new identifier, e.g. {option} short minutes=1.5")
        budgets = [o for o in overrides if o.startswith("minutes=")]
        try:
            budget = float(budgets[-1].split("=", 1)[1]) if budgets else minutes
        except ValueError:
            raise SystemExit(f"{option} {name}: {budgets[-1]!r} is not minutes=NUMBER") from None
        parsed[name] = (budget, [o for o in overrides if not o.startswith("minutes=")])
    return parsed


def parse_ss_vae_variants(entries: list[list[str]], vae_minutes: float) -> dict[str, tuple[float, list[str]]]:
    """SS VAE runs ``ss_vae_<NAME>``, trained with ``--ss-vae-args`` and their own overrides."""
    return parse_run_variants(entries, vae_minutes, "--ss-vae-variant")


def parse_view_pretrain_variants(entries: list[list[str]], minutes: float) -> dict[str, tuple[float, list[str]]]:
    """View pretraining runs ``view_pretrain_<NAME>``, trained with ``--view-pretrain-args`` and their own
    overrides."""
    return parse_run_variants(entries, minutes, "--view-pretrain-variant")


def take_binding(overrides: list[str], key: str) -> tuple[str | None, list[str]]:
    """A flow variant's ``KEY=NAME`` (``ss_vae=NAME``: it trains on ``--ss-vae-variant NAME``'s latents;
    ``view_pretrain=NAME``: it loads ``--view-pretrain-variant NAME``'s encoder) and its other overrides."""
    bound = [o.split("=", 1)[1] for o in overrides if o.startswith(f"{key}=")]
    return (bound[-1] if bound else None), [o for o in overrides if not o.startswith(f"{key}=")]


def _max_time(minutes: float) -> str:
    seconds = int(round(minutes * 60))
    return f"00:{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def resume_overrides(ckpt: Path) -> list[str]:
    """``train.py`` overrides that continue a time-budgeted run from ``ckpt`` with a larger ``max_time``: its
    learning-rate decay is fitted again to the extended budget (``callbacks.time_budget``)."""
    return [f"ckpt_path={ckpt}", "+callbacks.time_budget.refit_on_resume=true"]


def timer_minutes(ckpt: Path) -> float:
    """Minutes of fitting that Lightning's ``Timer`` saved in checkpoint ``ckpt`` (memory-mapped: the weights are
    not read)."""
    import torch

    state = torch.load(ckpt, map_location="cpu", mmap=True, weights_only=False)
    timer = next((v for k, v in state.get("callbacks", {}).items() if k.startswith("Timer")), None)
    if timer is None:
        raise SystemExit(f"--resume-flows: {ckpt} has no Timer state (callbacks.Timer), so the time already trained "
                         "is unknown; was it written by a run with trainer.max_time?")
    return timer["time_elapsed"]["train"] / 60


class Pipeline:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.root = Path(args.root).resolve()
        self.data = self.root / "data"
        self.logs = self.root / "logs"
        self.results = self.root / "results"
        self.results.mkdir(parents=True, exist_ok=True)
        self.dataset = self.data / f"synthetic_{args.preset}"
        self.runs = self.logs / "train" / "runs"
        self.gpus = 0 if args.cpu else (args.gpus if args.gpus is not None else _gpu_count())
        self.env = dict(os.environ, PYTHONPATH=f"{ROOT}:{os.environ.get('PYTHONPATH', '')}",
                        WANDB_MODE="disabled", PYTHONUNBUFFERED="1", HYDRA_FULL_ERROR="1")
        # The sparse flows allocate differently sized activations every step; growable segments keep the caching
        # allocator from fragmenting and from freeing and retrying when a new size does not fit (a value the user
        # set is kept). The slow first minutes of sessions 10-14 were torch's cuDNN attention planning for every
        # new sequence length (session 15: 2.04 against 0.31 s a step), which sdpa_loop no longer uses.
        self.env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
        self.place = parse_placement(args.place)
        self.ss_vae_variants = parse_ss_vae_variants(args.ss_vae_variant, args.vae_minutes)
        self.view_variants = parse_view_pretrain_variants(args.view_pretrain_variant, args.view_pretrain_minutes)
        # --flow-variant runs, their ss_vae=NAME and view_pretrain=NAME taken out once: the --ss-vae-variant whose
        # latents each trains on, the --view-pretrain-variant whose encoder it loads
        self.variants, self.variant_ss_vae, self.variant_view = {}, {}, {}
        for name, (base, overrides) in parse_flow_variants(args.flow_variant).items():
            self.variant_ss_vae[name], rest = take_binding(overrides, "ss_vae")
            self.variant_view[name], rest = take_binding(rest, "view_pretrain")
            self.variants[name] = (base, rest)
        self.scoring_extras = parse_scoring_extras(args.flow_quality_extra)
        self.pending: list[Running] = []  # detached jobs (see run)
        # --resume: a phase whose jobs all ended with 0 leaves phases/<phase>.done, and a later call skips it
        self.phase: str | None = None
        self.phase_jobs: dict[str, list[str]] = {}
        self.codes: dict[str, int] = {}
        self.t0 = time.time()

    def gpu_of(self, name: str, default: int) -> int | tuple[int, ...]:
        """Where job ``name`` runs: its ``--place`` GPUs, else ``default``."""
        gpus = self.place.get(name)
        return default if gpus is None else (gpus[0] if len(gpus) == 1 else gpus)

    # ------------------------------------------------------------------ running
    def log(self, message: str) -> None:
        line = f"[{time.time() - self.t0:7.1f}s] {message}"
        print(line, flush=True)
        with open(self.results / "progress.log", "a") as f:
            f.write(line + "\n")

    def run(self, jobs: list[Job], detach: tuple[str, ...] = ()) -> dict[str, int]:
        """Start ``jobs`` together, wait for all but those named in ``detach``; returns exit codes by name.

        Detached jobs go on beside the next phase and are waited for by :meth:`join`, which every phase but
        ``encode`` calls first: the encoding needs the VAEs only, not the view pretraining beside them."""
        self.phase_jobs.setdefault(self.phase, []).extend(job.name for job in jobs)
        running = [self._start(job) for job in jobs]
        self.pending += [r for r in running if r.job.name in detach]
        return self._wait([r for r in running if r.job.name not in detach])

    def join(self, keep: tuple[str, ...] = ()) -> dict[str, int]:
        """Wait for the detached jobs of earlier phases, but those named in ``keep``, and collect their metrics."""
        running = [r for r in self.pending if r.job.name not in keep]
        self.pending = [r for r in self.pending if r.job.name in keep]
        codes = self._wait(running)
        for name in codes:
            self.collect_metrics(name)
        return codes

    def _start(self, job: Job) -> Running:
        env = dict(self.env, **job.env)
        gpus = job.gpu if isinstance(job.gpu, tuple) else (job.gpu,)
        if job.gpu is not None and self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g % self.gpus) for g in gpus)
        if job.gpu is not None and len(gpus) > 1 and "MASTER_PORT" not in env:
            # DDP jobs side by side (on disjoint GPUs) each get their own rendezvous port, so two that start at
            # once cannot draw the same free port
            env["MASTER_PORT"] = str(DDP_BASE_PORT + min(gpus))
        log = open(self.results / f"{job.name}.log", "w")
        log.write(f"$ {' '.join(job.argv)}\n")
        log.flush()
        self.log(f"start {job.name} (gpu {env.get('CUDA_VISIBLE_DEVICES', '-')})")
        proc = subprocess.Popen(job.argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        return Running(job, proc, log, time.time())

    def _wait(self, running: list[Running]) -> dict[str, int]:
        """Wait for ``running`` in order; each job's record has its own end time, however late it is reaped."""
        codes = {}
        for r in running:
            rc, end = r.wait()
            codes[r.job.name] = self.codes[r.job.name] = rc
            self.log(f"{'done' if rc == 0 else 'FAILED'} {r.job.name}: rc {rc}, {end - r.start:.0f} s "
                     f"(ended at {end - self.t0:.1f} s)")
            with open(self.results / "progress.jsonl", "a") as f:
                f.write(json.dumps({"job": r.job.name, "rc": rc, "seconds": round(end - r.start, 1),
                                    "end_s": round(end - self.t0, 1)}) + "\n")
        return codes

    def python(self, *args: str) -> list[str]:
        return [sys.executable, *args]

    # ------------------------------------------------------------------ common overrides
    def common(self) -> list[str]:
        return [f"preset={self.args.preset}", f"paths.data_dir={self.data}", f"paths.log_dir={self.logs}"]

    def train_args(self, stage: str, minutes: float, extra: list[str], devices: int = 1) -> list[str]:
        """``train.py`` of ``stage`` for ``minutes``; ``devices`` > 1: DDP over that many GPUs (CPU: processes)."""
        a = self.args
        if a.cpu:
            ddp = [f"trainer.devices={devices}", "+trainer.strategy=ddp"] if devices > 1 else []
            hardware = ["hardware=cpu", *ddp]
        else:
            hardware = ["hardware=gpu_ddp"] if devices > 1 else ["hardware=gpu"]
        return self.python(
            "train.py", f"stage={stage}", *self.common(), *hardware, "logger=csv",
            "stage.max_steps=10000000", f"+trainer.max_time={_max_time(minutes)}",
            f"stage.checkpoint_every_n_steps={a.checkpoint_every}", f"stage.datamodule.num_workers={a.loader_workers}",
            "+stage.datamodule.batches_per_epoch=500", "+trainer.enable_progress_bar=false",
            "callbacks.progress_bar=null", "callbacks.model_summary=null",
            "+callbacks.time_budget._target_=callbacks.time_budget.TimeBudgetDecay", *extra,
        )

    def ckpt(self, run: str) -> Path:
        return self.runs / run / "checkpoints" / "last.ckpt"

    def latents(self, ss_vae: str | None = None) -> Path:
        """The latent shards: the encode-time VAEs' (``latents``), or ``--ss-vae-variant ss_vae``'s."""
        return self.dataset / ("latents" if ss_vae is None else f"latents_ss_vae_{ss_vae}")

    def view_pretrain_overrides(self, name: str) -> list[str]:
        """A flow's overrides to load ``--view-pretrain-variant name``'s encoder: its checkpoint, and the
        variant's ``preset.image_encoder.*`` overrides (the architecture the checkpoint must load into)."""
        _, overrides = self.view_variants[name]
        return [f"stage.module.image_encoder_ckpt={self.ckpt(f'view_pretrain_{name}')}",
                *(o for o in overrides if o.startswith("preset.image_encoder."))]

    def ss_vae_overrides(self, name: str) -> list[str]:
        """``train.py`` overrides that put a flow on ``--ss-vae-variant name``: its VAE, latents and their
        statistics."""
        latents = self.latents(name)
        return [f"stage.module.ss_vae_ckpt={self.ckpt(f'ss_vae_{name}')}", f"stage.datamodule.shards={latents}",
                f"stage.module.latent_stats={latents / 'stats.json'}"]

    def collect_metrics(self, run: str) -> None:
        for path in sorted((self.runs / run / "csv").glob("version_*/metrics.csv"))[-1:]:
            shutil.copy(path, self.results / f"metrics_{run}.csv")
        steps = self.runs / run / "rank_0_steps.jsonl"  # RunStats' step log, where the run switched it on
        if steps.is_file():
            shutil.copy(steps, self.results / f"steps_{run}.jsonl")

    # ------------------------------------------------------------------ phases
    def prepare(self) -> None:
        a = self.args
        probe = a.probe and (self.gpus > 0 or a.cpu)
        workers = max(1, a.workers - 2) if probe else a.workers  # leave the probe a core or two
        jobs = [Job("prepare", self.python(
            "prepare.py", *self.common(), f"dataset.num_scenes={a.scenes}", f"dataset.val_fraction={a.val_fraction}",
            *([f"dataset.val_items='{a.val_items}'"] if a.val_items else []),
            f"num_workers={workers}", "render.scale=1", f"render.max_cameras={a.max_cameras}",
            f"shards.samples_per_shard={a.samples_per_shard}",
        ), env={"GENRECON_RUN_NAME": "prepare"})]
        if probe:
            stages = sorted({flow_stage(f) for f in a.flows})
            jobs.append(Job("flow_step", self.python(
                "benchmarks/flow_step.py", "--preset", a.preset, "--device", "cpu" if a.cpu else "cuda",
                "--stages", *stages, "--batches", *map(str, a.probe_batches), "--out", str(self.probe_json),
                "--time-budget", str(a.probe_budget), *a.probe_args), gpu=0))
        self.run(jobs)
        for name in ("manifest.json", "contact_sheet.png"):
            if (self.dataset / name).is_file():
                shutil.copy(self.dataset / name, self.results / name)

    def vae(self) -> None:
        a = self.args
        extra = {"ss_vae": a.ss_vae_args, "shape_vae": a.shape_vae_args, "tex_vae": a.tex_vae_args}
        # By default GPU 0: the SS-VAE (small, dense) beside the shape VAE and the view pretraining; the texture
        # VAE, the slowest to converge, has a GPU of its own when there are two, and when it does not train the
        # pretraining takes that GPU (--place moves any of them).
        spare = 1 if self.gpus >= 2 and "tex_vae" not in a.vaes else 0
        defaults = {"ss_vae": 0, "shape_vae": 0, "tex_vae": 1, "view_pretrain": spare}
        gpu = {s: self.gpu_of(s, g) for s, g in defaults.items()}
        jobs = [Job(s, self.train_args(s, a.vae_minutes, [
            f"stage.val_every_n_steps={a.val_every}", "stage.val_batches=3", *extra[s]], devices=_count(gpu[s])),
            gpu=gpu[s], env={"GENRECON_RUN_NAME": s}) for s in a.vaes]
        # --tex-vae-variant runs train beside the main texture VAE on its GPU (the same share each): an A/B of
        # the VAE the latents are encoded with against variants with only their own overrides.
        jobs += [self.tex_variant_job(name, overrides, gpu=1, common=[]) for name, *overrides in a.tex_vae_variant]
        # --ss-vae-variant runs: the main SS VAE's arguments plus their own, by default on the second GPU.
        for name, (minutes, overrides) in self.ss_vae_variants.items():
            run = f"ss_vae_{name}"
            where = self.gpu_of(run, 1 if self.gpus >= 2 else 0)
            jobs.append(Job(run, self.train_args("ss_vae", minutes, [
                f"stage.val_every_n_steps={a.val_every}", "stage.val_batches=3", *a.ss_vae_args, *overrides],
                devices=_count(where)), gpu=where, env={"GENRECON_RUN_NAME": run}))
        if a.view_pretrain_minutes > 0:
            argv = self.train_args("view_pretrain", a.view_pretrain_minutes, [
                f"stage.val_every_n_steps={a.val_every}", "stage.val_batches=4", *a.view_pretrain_args],
                devices=_count(gpu["view_pretrain"]))
            jobs.append(Job("view_pretrain", argv, gpu=gpu["view_pretrain"],
                            env={"GENRECON_RUN_NAME": "view_pretrain"}))
        # --view-pretrain-variant runs: the main pretraining's arguments plus their own, on its GPU by default.
        for name, (minutes, overrides) in self.view_variants.items():
            run = f"view_pretrain_{name}"
            where = self.gpu_of(run, gpu["view_pretrain"])
            jobs.append(Job(run, self.train_args("view_pretrain", minutes, [
                f"stage.val_every_n_steps={a.val_every}", "stage.val_batches=4", *a.view_pretrain_args, *overrides],
                devices=_count(where)), gpu=where, env={"GENRECON_RUN_NAME": run}))
        # The pretraining's time budget starts after it has decoded every render, so it ends after the VAEs:
        # the encoding starts without it (session 11: it ended 109 s after them, and the rest waited).
        self.run(jobs, detach=("view_pretrain", *(f"view_pretrain_{n}" for n in self.view_variants)))
        for s in [*a.vaes, *(f"ss_vae_{name}" for name in self.ss_vae_variants)]:
            self.collect_metrics(s)
        self.score_tex_variants()

    def tex_variant_job(self, name: str, overrides: list[str], gpu: int, common: list[str]) -> Job:
        a = self.args
        return Job(f"tex_vae_{name}", self.train_args("tex_vae", a.vae_minutes, [
            f"stage.val_every_n_steps={a.val_every}", "stage.val_batches=3", *common, *overrides]),
            gpu=gpu, env={"GENRECON_RUN_NAME": f"tex_vae_{name}"})

    def score_tex_variants(self) -> None:
        """Held-out quality (``vae_quality.py``) of every trained ``--tex-vae-variant``, one job per GPU."""
        names = [v[0] for v in self.args.tex_vae_variant if self.ckpt(f"tex_vae_{v[0]}").is_file()]
        self.run([Job(f"vae_quality_{name}", self.python(
            "benchmarks/vae_quality.py", "--shards", str(self.dataset / "shards"),
            "--tex-vae", str(self.ckpt(f"tex_vae_{name}")),
            "--out", str(self.results / f"vae_quality_{name}.json")), gpu=i) for i, name in enumerate(names)])
        for name in names:
            self.collect_metrics(f"tex_vae_{name}")

    def vae_variants(self) -> None:
        """Texture VAEs that differ only in ``--tex-vae-variant NAME OVERRIDE...``, trained side by side (one per
        GPU, round-robin) for ``--vae-minutes`` on the same shards, then scored by ``vae_quality.py``: an A/B
        whose baseline is measured in the same run (give one variant no overrides)."""
        a = self.args
        self.run([self.tex_variant_job(name, overrides, gpu=i, common=a.tex_vae_args)
                  for i, (name, *overrides) in enumerate(a.tex_vae_variant)])
        self.score_tex_variants()

    def vae_flags(self, *names: str) -> list[str]:
        """``--ss-vae PATH ...`` of those of ``names`` this run has (``--vaes``), for the scoring scripts."""
        flag = {"ss_vae": "--ss-vae", "shape_vae": "--shape-vae", "tex_vae": "--tex-vae"}
        return [x for s in names if s in self.args.vaes for x in (flag[s], str(self.ckpt(s)))]

    def encode(self) -> None:
        ckpts = {s: self.ckpt(s) for s in self.args.vaes}
        shards = str(self.dataset / "shards")
        encode = ["prepare.py", "steps=[encode]", *self.common(),
                  f"shards.samples_per_shard={self.args.samples_per_shard}"]
        jobs = [
            Job("encode", self.python(*encode, *(f"encode.{s}_ckpt={p}" for s, p in ckpts.items())),
                gpu=0, env={"GENRECON_RUN_NAME": "encode"}),
            Job("vae_quality", self.python(
                "benchmarks/vae_quality.py", "--shards", shards, *self.vae_flags(*VAES),
                "--out", str(self.results / "vae_quality.json")), gpu=1),
        ]
        # Each --ss-vae-variant's SS latents in a folder of their own; its round trip scored like the main one's.
        for i, name in enumerate(self.ss_vae_variants, start=1):
            run, gpu = f"ss_vae_{name}", i % max(self.gpus, 1)
            jobs.append(Job(f"encode_{run}", self.python(
                *encode, f"encode.ss_vae_ckpt={self.ckpt(run)}", f"encode.out_dir={self.latents(name).name}"),
                gpu=gpu, env={"GENRECON_RUN_NAME": f"encode_{run}"}))
            jobs.append(Job(f"vae_quality_{run}", self.python(
                "benchmarks/vae_quality.py", "--shards", shards, "--ss-vae", str(self.ckpt(run)),
                "--out", str(self.results / f"vae_quality_{run}.json")), gpu=(gpu + 1) % max(self.gpus, 1)))
        scoring = tuple(j.name for j in jobs if j.name.startswith("vae_quality"))
        self.run(jobs, detach=scoring)  # scoring only: the next phase joins it
        for name in [None, *self.ss_vae_variants]:
            stats = self.latents(name) / "stats.json"
            if stats.is_file():
                suffix = "" if name is None else f"_ss_vae_{name}"
                shutil.copy(stats, self.results / f"latent_stats{suffix}.json")

    @property
    def probe_json(self) -> Path:
        return self.results / "flow_step.json"

    def flow_overrides(self, stage: str, sharing: int) -> list[str]:
        """Batch size / attention backend / checkpointing of ``stage`` from the probe (``--flow-batch auto``),
        for a GPU shared by ``sharing`` jobs; a fixed ``--flow-batch N`` sets the batch size only."""
        a = self.args
        if a.flow_batch == "none":
            return []
        if a.flow_batch != "auto":
            return [f"stage.datamodule.batch_size={int(a.flow_batch)}"]
        if not self.probe_json.is_file():
            self.log(f"{stage}: no probe results, default batch size")
            return []
        from flow_step import choose  # a sibling script (benchmarks/ is sys.path[0]); imported once, then cached

        probe = json.loads(self.probe_json.read_text())
        # The probe's limit is its usable share of one GPU (headroom x memory); jobs on one GPU split it.
        limit = probe["mem_limit_gb"] / max(1, sharing) if probe.get("mem_limit_gb") else None
        best = choose([r for r in probe["results"] if r["stage"] == stage], mem_limit_gb=limit).get(stage)
        if not best:
            self.log(f"{stage}: no probe configuration fits {limit} GB, default batch size")
            return []
        self.log(f"{stage} ({sharing} job(s) on its GPU, {limit} GB each): probe choice batch {best['batch']}, "
                 f"{best.get('samples_per_s')} samples/s -> {best['overrides']}")
        return list(best["overrides"])

    def flow_budget(self) -> float:
        """Minutes the flows may train: ``--flow-minutes``, shortened under ``--deadline-minutes`` so that the flows,
        their start-up and the scoring after them (``--reserve-minutes``) end before the deadline."""
        a = self.args
        if a.deadline_minutes is None:
            return a.flow_minutes
        left = a.deadline_minutes - (time.time() - self.t0) / 60 - a.reserve_minutes
        minutes = round(min(a.flow_minutes, left), 1)
        if minutes < a.flow_minutes:
            self.log(f"deadline: {left + a.reserve_minutes:.1f} min left, {a.reserve_minutes} min kept for scoring "
                     f"-> flows train {minutes} min instead of {a.flow_minutes}")
        return minutes

    def flow(self) -> None:
        a = self.args
        minutes = self.flow_budget()
        if minutes < 1.0:
            self.log(f"flow: skipped, only {minutes} min left before the deadline")
            return
        noproj = ["stage.module.projection_conditioning=false"]
        ss = [f"stage.module.ss_vae_ckpt={self.ckpt('ss_vae')}"]
        extra = {"ss_flow": ss, "ss_flow_noproj": ss + noproj, "ss_flow_photo": ss + [PHOTO_CUE],
                 "ss_flow_aux": ss + [OCC_AUX], "ss_flow_depth": ss + [OCC_AUX, DEPTH_CUE],
                 "ss_flow_dsup": ss + [OCC_AUX, DEPTH_CUE, DEPTH_SUP], "shape_flow": [],
                 "shape_flow_noproj": noproj, "tex_flow": [], "tex_flow_photo": [PHOTO_CUE],
                 "tex_flow_aux": [LATENT_AUX], "tex_flow_depth": [LATENT_AUX, DEPTH_CUE],
                 "tex_flow_dsup": [LATENT_AUX, DEPTH_CUE, DEPTH_SUP], "tex_flow_vis": [LATENT_AUX, VISIBILITY],
                 "tex_flow_visphoto": [LATENT_AUX, VISIBILITY, VIS_PHOTO_CUE]}
        encoder = [f"stage.module.image_encoder_ckpt={self.ckpt('view_pretrain')}", FROZEN_ENCODER]
        pre = [*encoder, DEPTH_CUE]
        extra.update({"ss_flow_pre": ss + [OCC_AUX, *pre], "tex_flow_pre": [LATENT_AUX, VISIBILITY, *pre],
                      # the ablation of ss_flow_pre: the same frozen pretrained encoder for the cross-attention
                      # tokens, no projection (so neither the occupancy head nor the depth cue, which read it)
                      "ss_flow_pre_noproj": ss + noproj + encoder})
        extra.update({"ss_flow_cell": extra["ss_flow_pre"] + [CELL_CUE],
                      "tex_flow_cell": extra["tex_flow_pre"] + [CELL_CUE], "tex_flow_nofloor": [NO_FLOOR],
                      "tex_flow_pre_nofloor": extra["tex_flow_pre"] + [NO_FLOOR],
                      "tex_flow_pre_patch2": extra["tex_flow_pre"] + [PATCH2],
                      "tex_flow_pre_patch2_b16": extra["tex_flow_pre"] + [PATCH2, BATCH16]})
        for name, (base, overrides) in self.variants.items():
            bound, view = self.variant_ss_vae[name], self.variant_view[name]
            # ss_vae=NAME / view_pretrain=NAME: after the base run's overrides, so that the variant's VAE and
            # latents, or its encoder (and the encoder architecture it was pretrained with), win
            extra[name] = (extra[base] + (self.ss_vae_overrides(bound) if bound else [])
                           + (self.view_pretrain_overrides(view) if view else []) + overrides)
        runs = [f for f in FLOWS if f in a.flows] + list(self.variants)
        if a.tex_vae_extend_minutes > 0:
            runs.append("tex_vae_long")
        defaults = default_flow_gpus(runs, self.gpus)
        gpu = {r: self.gpu_of(r, defaults[r]) for r in runs}
        sharing = {r: sum(1 for o in runs if set(_gpu_set(gpu[o])) & set(_gpu_set(gpu[r]))) for r in runs}
        horizon = ([f"+callbacks.time_budget.horizon_minutes={a.flow_horizon_minutes}"]
                   if a.flow_horizon_minutes else [])
        jobs = []
        for run in runs:
            if run == "tex_vae_long":
                # Resume the encode-time texture VAE in a run of its own (its checkpoint must stay the one the
                # latents were encoded with); the timer's elapsed time is restored, so the budget is the total.
                argv = self.train_args("tex_vae", a.vae_minutes + a.tex_vae_extend_minutes, [
                    f"stage.val_every_n_steps={a.val_every}", "stage.val_batches=3", *a.tex_vae_args,
                    *resume_overrides(self.ckpt("tex_vae"))])
            else:
                stage = flow_stage(run)
                total, resume = self.flow_resume(run, minutes)
                # A flow and its ablation train with the same configuration: both follow the main flow's probe.
                # Every step's wall time (rank 0's log is enough): the start-up ramp, measured (step_rate.py).
                argv = self.train_args(stage, total, [
                    f"stage.val_every_n_steps={a.flow_val_every}", "stage.val_batches=2",
                    "callbacks.run_stats.step_log=true",
                    *self.flow_overrides(stage, sharing[run]), *a.flow_args, *extra[run], *resume, *horizon],
                    devices=_count(gpu[run]))
            jobs.append(Job(run, argv, gpu=gpu[run], env={"GENRECON_RUN_NAME": run}))
        self.run(jobs)
        for run in runs:
            self.collect_metrics(run)
        logs = sorted(self.results.glob("steps_*.jsonl"))
        if logs:
            self.run([Job("step_rate", self.python(
                "benchmarks/step_rate.py", *map(str, logs), "--out", str(self.results / "step_rate.json"),
                "--plot", str(self.results / "step_rate.png")))])

    def flow_resume(self, run: str, minutes: float) -> tuple[float, list[str]]:
        """The ``max_time`` (minutes) of flow ``run`` and the overrides that resume it.

        With ``--resume-flows`` a run that has a checkpoint continues from it for ``minutes`` more. Lightning's
        timer restores the time already spent, which can exceed the earlier budget (the timer is checked between
        steps and validations), so the total is that saved time plus ``minutes``; the learning-rate decay is
        refitted to it. A lent machine that stays up across calls thus trains one flow over several calls, each
        ending with scores."""
        if not (self.args.resume_flows and self.ckpt(run).is_file()):
            return minutes, []
        before = timer_minutes(self.ckpt(run))
        total = round(before + minutes, 1)
        self.log(f"{run}: resumes after {before:.1f} min for {minutes} min more ({total} in all)")
        return total, resume_overrides(self.ckpt(run))

    def checkpoint_dirs(self) -> dict[str, Path]:
        """``ckpt/genrecon`` and ``ckpt/noproj``: the six files infer.py reads, as links to the runs."""
        variants = {"genrecon": {}, "noproj": {"ss_flow": "ss_flow_noproj", "shape_flow": "shape_flow_noproj"}}
        out = {}
        for variant, renames in variants.items():
            folder = self.root / "ckpt" / variant
            folder.mkdir(parents=True, exist_ok=True)
            for stage in STAGES:
                link = folder / f"{stage}.ckpt"
                link.unlink(missing_ok=True)
                link.symlink_to(self.ckpt(renames.get(stage, stage)))
            out[variant] = folder
        return out

    def quality(self) -> None:
        a = self.args
        dirs = self.checkpoint_dirs()
        device = ["--device", "cpu"] if a.cpu else ["--device", "cuda"]
        # One variant per GPU when there are two; the infer timings are upper bounds when they share a machine.
        self.run([Job("quality", self.python(
            "benchmarks/quality.py", "--scenes-dir", str(self.dataset / "scenes"), "--split", "val",
            "--num-scenes", str(a.quality_scenes), "--views", "8", "--preset", a.preset, *device,
            "--out", str(self.root / "quality"), *(f"--variant={k}={v}" for k, v in dirs.items()),
            "--time-budget", str(a.quality_budget), *(["--parallel-variants"] if self.gpus > 1 else []),
            *(f"--infer-arg={x}" for x in a.infer_args)))])
        for name in ("quality.json", "quality.md", "quality.png"):
            if (self.root / "quality" / name).is_file():
                shutil.copy(self.root / "quality" / name, self.results / name)

    def flow_quality(self) -> None:
        """Held-out chunk metrics of the trained flows: the published design with its ablations, and (when
        trained) each variant family (photo, aux, depth, dsup, vis, visphoto, pre) against the same ablation, one job
        per GPU."""
        a = self.args
        device = ["--device", "cpu"] if a.cpu else ["--device", "cuda"]
        have = lambda run: self.ckpt(run).is_file()  # noqa: E731
        flags = {"ss_flow": "--ss-flow", "ss_flow_noproj": "--ss-flow-ablation", "shape_flow": "--shape-flow",
                 "shape_flow_noproj": "--shape-flow-ablation", "tex_flow": "--tex-flow"}
        # The ablation of the runs on the pretrained encoder: the one with that encoder when it was trained.
        pre_ablation = "ss_flow_pre_noproj" if have("ss_flow_pre_noproj") else "ss_flow_noproj"
        families = {"flow_quality": {run: run for run in flags},
                    "flow_quality_photo": {"ss_flow": "ss_flow_photo", "ss_flow_noproj": "ss_flow_noproj",
                                           "tex_flow": "tex_flow_photo"},
                    "flow_quality_aux": {"ss_flow": "ss_flow_aux", "ss_flow_noproj": "ss_flow_noproj",
                                         "tex_flow": "tex_flow_aux"},
                    "flow_quality_depth": {"ss_flow": "ss_flow_depth", "ss_flow_noproj": "ss_flow_noproj",
                                           "tex_flow": "tex_flow_depth"},
                    "flow_quality_dsup": {"ss_flow": "ss_flow_dsup", "ss_flow_noproj": "ss_flow_noproj",
                                          "tex_flow": "tex_flow_dsup"},
                    # Texture-only families: structure visibility exists in the sparse flows only.
                    "flow_quality_vis": {"tex_flow": "tex_flow_vis"},
                    "flow_quality_pre": {"ss_flow": "ss_flow_pre", "ss_flow_noproj": pre_ablation,
                                         "tex_flow": "tex_flow_pre"},
                    "flow_quality_cell": {"ss_flow": "ss_flow_cell", "ss_flow_noproj": pre_ablation,
                                          "tex_flow": "tex_flow_cell"},
                    "flow_quality_visphoto": {"tex_flow": "tex_flow_visphoto"},
                    # The std-floor A/Bs: against tex_flow (family flow_quality) and tex_flow_pre (flow_quality_pre).
                    "flow_quality_nofloor": {"tex_flow": "tex_flow_nofloor"},
                    "flow_quality_pre_nofloor": {"tex_flow": "tex_flow_pre_nofloor"},
                    "flow_quality_pre_patch2": {"tex_flow": "tex_flow_pre_patch2"},
                    "flow_quality_pre_patch2_b16": {"tex_flow": "tex_flow_pre_patch2_b16"}}
        # Each --flow-variant scores as a family of its own: tex_flow_pre_ln -> flow_quality_pre_ln.
        families.update({variant_family(name): {flow_stage(name): name} for name in self.variants})
        # family -> (its VAEs and checkpoints, extra flow_quality.py arguments after --flow-quality-args, latents)
        scored: dict[str, tuple[list[str], list[str], Path]] = {}
        for name, runs in families.items():
            # A variant family is scored only when one of its variant runs (a run not named after its slot) exists,
            # the base family only when a main flow does: ablations alone are scored within the variant families.
            mains = [r for slot, r in runs.items() if r != slot] if name != "flow_quality" else list(MAIN_FLOWS)
            if not any(have(r) for r in mains):
                continue
            ckpts = [x for slot, run in runs.items() if have(run) for x in (flags[slot], str(self.ckpt(run)))]
            if not ckpts:
                continue
            # The shape VAE only where a shape flow is scored (its round trip meshes every chunk).
            vaes = self.vae_flags("ss_vae", *(["shape_vae"] if "--shape-flow" in ckpts else []), "tex_vae")
            # A flow on an --ss-vae-variant's latents is scored on those latents and decoded by that VAE.
            bound = next((self.variant_ss_vae[r] for r in runs.values() if self.variant_ss_vae.get(r)), None)
            if bound:
                vaes = ["--ss-vae", str(self.ckpt(f"ss_vae_{bound}"))]
            scored[name] = ([*vaes, *ckpts], [], self.latents(bound))
        # --flow-quality-extra: a family's checkpoints scored once more, with other arguments (e.g. --split train).
        for name, (family, extra) in self.scoring_extras.items():
            if family in scored:
                scored[name] = (scored[family][0], extra, scored[family][2])
            else:
                self.log(f"flow_quality: {name} skipped, its family {family} is not scored in this run")
        jobs = [Job(name, self.python(
            "benchmarks/flow_quality.py", "--latents", str(latents), *inputs, *device,
            "--max-chunks", str(a.flow_quality_chunks), "--out", str(self.results / f"{name}.json"),
            "--figure", str(self.results / f"{name}.png"), *a.flow_quality_args, *extra), gpu=gpu)
            for gpu, (name, (inputs, extra, latents)) in enumerate(scored.items())]
        if have("tex_vae_long"):
            jobs.append(Job("vae_quality_long", self.python(
                "benchmarks/vae_quality.py", "--shards", str(self.dataset / "shards"),
                "--tex-vae", str(self.ckpt("tex_vae_long")), *device,
                "--out", str(self.results / "vae_quality_tex_long.json")), gpu=1))
        self.run(jobs)

    def ddp(self) -> None:
        a = self.args
        if not a.cpu and self.gpus < 2:
            self.log("ddp: skipped, fewer than 2 GPUs")
            return
        self.run([Job("ddp_scaling", self.python(
            "benchmarks/ddp_scaling.py", "--shards", str(self.dataset / "latents"),
            "--gpus", str(self.gpus if not a.cpu else 2), "--steps", str(a.ddp_steps),
            "--warmup", str(max(1, a.ddp_steps // 4)), "--resume-steps", str(a.ddp_resume_steps),
            "--log-dir", str(self.root / "ddp"), "--out", str(self.results), "--preset", a.preset,
            "--timeout", str(a.ddp_timeout), *(["--cpu"] if a.cpu else []), *(f"--extra={x}" for x in a.ddp_args)))])

    def phase_marker(self, phase: str) -> Path:
        return self.root / "phases" / f"{phase}.done"

    def mark_finished_phases(self, finished: list[str]) -> None:
        """Leave ``phases/<phase>.done`` for each finished phase of :data:`RESUMABLE` whose jobs, detached ones
        included, all ended with exit code 0."""
        for phase in finished:
            jobs = self.phase_jobs.get(phase, [])
            marker = self.phase_marker(phase)
            if phase in RESUMABLE and jobs and not marker.is_file() and all(self.codes.get(j) == 0 for j in jobs):
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.write_text(json.dumps({"jobs": jobs, "end_s": round(time.time() - self.t0, 1)}) + "\n")

    def main(self) -> None:
        self.log(f"phases {self.args.phases}; {self.gpus} GPU(s); root {self.root}")
        finished = []
        for phase in self.args.phases:
            if self.args.resume and self.phase_marker(phase).is_file():
                self.log(f"=== {phase}: done by an earlier call ({self.phase_marker(phase)}), skipped")
                continue
            if phase not in OVERLAPS:
                self.join(keep=SCORING_JOBS if phase == "flow" else ())
                self.mark_finished_phases(finished)
            self.log(f"=== {phase}")
            self.phase = phase
            getattr(self, phase)()
            finished.append(phase)
        self.join()
        self.mark_finished_phases(finished)
        (self.results / "DONE").write_text(f"{time.time() - self.t0:.0f}\n")
        self.log("all phases done")


def _gpu_set(gpu: int | tuple[int, ...]) -> tuple[int, ...]:
    return gpu if isinstance(gpu, tuple) else (gpu,)


def _count(gpu: int | tuple[int, ...]) -> int:
    return len(_gpu_set(gpu))


def parse_placement(entries: list[str]) -> dict[str, tuple[int, ...]]:
    """``["tex_flow_pre=0,1", "ss_vae=2"]`` -> ``{"tex_flow_pre": (0, 1), "ss_vae": (2,)}``."""
    place = {}
    for entry in entries:
        name, sep, gpus = entry.partition("=")
        try:
            ids = tuple(int(g) for g in gpus.split(","))
        except ValueError:
            ids = ()
        if not sep or not name or not ids or min(ids) < 0 or len(set(ids)) != len(ids):
            raise SystemExit(f"--place {entry!r}: expected NAME=GPU[,GPU...] with distinct GPU indices, e.g. "
                             "tex_flow_pre=0,1")
        place[name] = ids
    return place


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except ImportError:
        return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="data, runs and results go under this folder")
    p.add_argument("--phases", nargs="+", default=list(PHASES), choices=PHASES)
    p.add_argument("--preset", default="small")
    p.add_argument("--cpu", action="store_true", help="dry run on the CPU (use with --preset tiny)")
    p.add_argument("--gpus", type=int, default=None, help="GPUs to use (default: all visible)")
    p.add_argument("--place", action="append", default=[], metavar="NAME=GPU[,GPU...]",
                   help="run job NAME (a VAE, view_pretrain or a flow run) on these GPUs instead of its default; "
                        "several GPUs: DDP (repeatable)")
    p.add_argument("--scenes", type=int, default=80)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--val-items", metavar="START:STOP",
                   help="hold out these rooms instead of the last --val-fraction (dataset.val_items): the same "
                        "held-out chunks at any --scenes, e.g. 144:160, session 29's, with --scenes 320")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    p.add_argument("--max-cameras", type=int, default=32)
    p.add_argument("--loader-workers", type=int, default=4)
    p.add_argument("--vae-minutes", type=float, default=5.5)
    p.add_argument("--flow-minutes", type=float, default=6.0)
    p.add_argument("--deadline-minutes", type=float, default=None,
                   help="the whole pipeline must end within this many minutes (a lent machine's budget): the flows "
                        "train for what is left after the earlier phases, less --reserve-minutes")
    p.add_argument("--reserve-minutes", type=float, default=2.5,
                   help="with --deadline-minutes: kept for the flows' start-up and checkpoint and the phases after "
                        "them")
    p.add_argument("--val-every", type=int, default=300)
    p.add_argument("--flow-val-every", type=int, default=1000)
    p.add_argument("--flows", nargs="*", default=list(FLOWS), choices=FLOWS,
                   help="flow runs of the flow phase (none: only the --flow-variant runs)")
    p.add_argument("--vaes", nargs="+", default=list(VAES), choices=VAES,
                   help="the VAEs this run trains, encodes with and scores (ss_vae alone: a run of SS flows only)")
    p.add_argument("--flow-batch", default="none",
                   help="'auto': per-flow batch size, attention backend and checkpointing from the probe; "
                        "an integer: that batch size for every flow; 'none': the stage configs' own")
    p.add_argument("--tex-vae-extend-minutes", type=float, default=0.0,
                   help="resume the texture VAE beside the flows for this many more minutes (run tex_vae_long)")
    p.add_argument("--resume", action="store_true",
                   help="go on from an earlier call of the same command under --root (a lent machine kept across "
                        "calls): phases done then (phases/<phase>.done) are skipped, the flows resume "
                        "(--resume-flows), the scorings run again")
    p.add_argument("--resume-flows", action="store_true",
                   help="flow runs with a checkpoint under --root resume from it and train this call's budget "
                        "more (a lent machine kept across calls: each call ends with scores)")
    p.add_argument("--flow-horizon-minutes", type=float, default=None,
                   help="the flows' learning rate decays over this much training in all, over resumed calls "
                        "(callbacks.time_budget horizon_minutes), not over each call's budget")
    p.add_argument("--probe", action="store_true", help="run benchmarks/flow_step.py beside prepare")
    p.add_argument("--probe-batches", type=int, nargs="+", default=[4, 8, 16])
    p.add_argument("--probe-budget", type=float, default=150.0, help="seconds of probing (no new config after)")
    p.add_argument("--probe-args", action="append", default=[])
    p.add_argument("--checkpoint-every", type=int, default=500, help="the time budget also saves the final step")
    p.add_argument("--quality-scenes", type=int, default=4)
    p.add_argument("--quality-budget", type=int, default=270, help="seconds after which no new infer run starts")
    p.add_argument("--flow-quality-chunks", type=int, default=24)
    p.add_argument("--ddp-steps", type=int, default=120)
    p.add_argument("--ddp-resume-steps", type=int, default=20)
    p.add_argument("--ddp-timeout", type=int, default=300, help="seconds per DDP benchmark phase")
    p.add_argument("--samples-per-shard", type=int, default=8,
                   help="small shards: with 2 ranks x 8 loader workers every slot still gets its own shards")
    # extra Hydra overrides per job family (repeatable)
    p.add_argument("--ss-vae-args", action="append", default=[])
    p.add_argument("--shape-vae-args", action="append", default=[])
    p.add_argument("--tex-vae-args", action="append", default=[])
    p.add_argument("--tex-vae-variant", nargs="+", action="append", default=[], metavar="NAME [OVERRIDE ...]",
                   help="a texture VAE run named NAME with these overrides (repeatable). Phase vae_variants: "
                        "the variants alone, one per GPU, each also with --tex-vae-args; phase vae: beside the "
                        "main texture VAE on its GPU, with their own overrides only")
    p.add_argument("--ss-vae-variant", nargs="+", action="append", default=[], metavar="NAME [OVERRIDE ...]",
                   help="also train SS VAE run ss_vae_NAME in phase vae (--ss-vae-args plus these overrides; "
                        "minutes=M: its own budget; --place ss_vae_NAME=GPU, default the second GPU), encode its "
                        "latents into latents_ss_vae_NAME and score its round trip; a flow variant with "
                        "ss_vae=NAME among its overrides trains and is scored on them (repeatable)")
    p.add_argument("--flow-args", action="append", default=[])
    p.add_argument("--flow-variant", action="append", default=[], metavar="NAME=BASE:OVERRIDE[;OVERRIDE...]",
                   help="also train flow run NAME: run BASE plus these overrides, scored as family "
                        "flow_quality_<NAME without its stage> (repeatable; --place NAME=GPUS places it)")
    p.add_argument("--view-pretrain-minutes", type=float, default=0.0,
                   help="pretrain the view encoder beside the VAEs for this long (needed by the *_pre flows)")
    p.add_argument("--view-pretrain-args", action="append", default=[])
    p.add_argument("--view-pretrain-variant", nargs="+", action="append", default=[],
                   metavar="NAME [OVERRIDE ...]",
                   help="also pretrain view_pretrain_NAME in phase vae (--view-pretrain-args plus these overrides; "
                        "minutes=M: its own budget; --place view_pretrain_NAME=GPU, default the main one's GPU); a "
                        "flow variant of a *_pre or *_cell run with view_pretrain=NAME among its overrides loads "
                        "its encoder, with its preset.image_encoder.* overrides (repeatable)")
    p.add_argument("--infer-args", action="append", default=[])
    p.add_argument("--flow-quality-args", action="append", default=[])
    p.add_argument("--flow-quality-extra", action="append", default=[], metavar="NAME=FAMILY:ARG[;ARG...]",
                   help="also score family FAMILY's checkpoints as NAME with these extra flow_quality.py arguments, "
                        "one more job (GPU), e.g. flow_quality_cell_train=flow_quality_cell:--split=train")
    p.add_argument("--ddp-args", action="append", default=[])
    args = p.parse_args(argv)
    problem = missing_vae(args.vaes, [*args.flows, *(v.split("=", 1)[0] for v in args.flow_variant)])
    if "tex_vae" not in args.vaes and (args.tex_vae_extend_minutes > 0 or args.tex_vae_variant):
        problem = "--vaes: --tex-vae-extend-minutes and --tex-vae-variant need tex_vae"
    problem = problem or ss_vae_variant_problem(args) or view_variant_problem(args)
    if problem:
        p.error(problem)
    args.resume_flows = args.resume_flows or args.resume
    return args


def ss_vae_variant_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with ``--ss-vae-variant`` and the flow variants bound to one (``ss_vae=NAME``), or None."""
    if args.ss_vae_variant and "ss_vae" not in args.vaes:
        return "--vaes: --ss-vae-variant needs ss_vae (it trains beside it)"
    names = parse_ss_vae_variants(args.ss_vae_variant, args.vae_minutes)
    for run, (_, overrides) in parse_flow_variants(args.flow_variant).items():
        bound, _ = take_binding(overrides, "ss_vae")
        if bound is not None and not run.startswith("ss_flow"):
            return f"--flow-variant {run}: ss_vae=NAME is for SS flows only (their latents are the SS VAE's)"
        if bound is not None and bound not in names:
            return f"--flow-variant {run}: ss_vae={bound} names no --ss-vae-variant ({', '.join(sorted(names))})"
    return None


def view_variant_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with ``--view-pretrain-variant`` and the flow variants bound to one, or None."""
    if args.view_pretrain_variant and args.view_pretrain_minutes <= 0:
        return "--view-pretrain-variant needs --view-pretrain-minutes (it trains beside the main pretraining)"
    names = parse_view_pretrain_variants(args.view_pretrain_variant, args.view_pretrain_minutes)
    for run, (base, overrides) in parse_flow_variants(args.flow_variant).items():
        bound, _ = take_binding(overrides, "view_pretrain")
        if bound is not None and base not in ENCODER_RUNS:
            return (f"--flow-variant {run}: view_pretrain=NAME needs a base that loads the pretrained encoder "
                    f"({', '.join(ENCODER_RUNS)}), not {base}")
        if bound is not None and bound not in names:
            return (f"--flow-variant {run}: view_pretrain={bound} names no --view-pretrain-variant "
                    f"({', '.join(sorted(names))})")
    return None


def missing_vae(vaes: list[str], flow_runs: list[str]) -> str | None:
    """What ``--vaes`` leaves out that these flow runs (or the encoding) need, or None."""
    if "tex_vae" in vaes and "shape_vae" not in vaes:
        return "--vaes: tex_vae needs shape_vae (texture latents live on the shape latent's voxels)"
    needs = {"ss_flow": ("ss_vae",), "shape_flow": ("shape_vae",), "tex_flow": ("shape_vae", "tex_vae")}
    for run in flow_runs:
        stage = next((s for s in needs if run.startswith(s)), "")  # a malformed variant is named later
        lacking = [v for v in needs.get(stage, ()) if v not in vaes]
        if lacking:
            return f"--vaes: flow run {run} needs the latents of {', '.join(lacking)}"
    return None


if __name__ == "__main__":
    Pipeline(parse_args()).main()
