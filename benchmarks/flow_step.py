"""Step time of the real training step of the flow stages (and the SC-VAEs) on synthetic in-memory batches.

Made for choosing, per stage, the batch size, the attention backend and activation checkpointing on a GPU
*before* the real data exists: it needs no shards, so it can run on the GPU while ``prepare.py`` still builds
the data on the CPU.

    python benchmarks/flow_step.py --preset small --device cuda --out probe.json \\
        --stages ss_flow shape_flow tex_flow --batches 4 8 16 --steps 12 --warmup 4 \\
        [--tokens 4600] [--views 16] [--backends auto torch_varlen sdpa_loop] [--checkpoint both] \\
        [--time-budget 600] [--mem-fraction 1.0] [--profile-steps 3]                   # GPU
    python benchmarks/flow_step.py --preset tiny --device cpu --steps 2 --warmup 1      # CPU check (~15 s)

Defaults: the three flows, ``--batches 4 8 16`` and ``--checkpoint both`` on CUDA, ``--batches 1 2`` and
``--checkpoint off`` on the CPU (a check that the probe works, not a measurement), ``--backends auto``.

What runs, per configuration (stage x batch x attention backend x activation checkpointing):

* The stage is built exactly as ``train.py`` builds it: ``conf/train.yaml`` composed with Hydra's compose API
  and the overrides ``stage=<name> preset=<preset> dataset=synthetic hardware=gpu|cpu logger=none``,
  ``stage.module.latent_stats=null`` (identity normalisation: there are no statistics yet),
  ``stage.module.model.use_checkpoint=<bool>`` (VAEs: ``+stage.module.use_checkpoint``),
  ``+stage.module.model.attn_backend=<name>`` (flows; ``auto`` adds nothing) and any ``--extra`` overrides,
  then ``hydra.utils.instantiate(cfg.stage.module)`` after ``L.seed_everything(seed)``.
* Training is the real Lightning loop: ``Trainer(max_steps=warmup + steps + 1, precision="bf16-mixed"`` on
  CUDA else ``"32-true"``, no logger, no checkpoints, no validation) and ``trainer.fit``, so
  ``configure_optimizers`` (fused AdamW on CUDA, warm-up schedule), the stage's adaptive gradient clipping,
  the EMA callback from ``configure_callbacks`` and the host-to-device copy of every batch all run as in a
  training job.
* The batch is built once per (stage, batch size) and handed to the loop again every step (a DataLoader over
  the same collated dict, ``batch_size=None`` like the chunk datamodule; with ``--distinct-batches N``, N
  batches of other token counts and views in turn: what a kernel that plans per shape costs on a real stream),
  so data loading is not timed; the copy to the device is (from pinned memory on CUDA, as in training).
  Synthetic samples are ``genrecon.data.shards.ChunkSample`` objects run through the real ``select_fields``
  (the stage's datamodule ``fields``, the datamodule's view sampling: 1..``--views`` views per sample among
  those covering >= 40 % of the image) and ``collate``, so keys, dtypes and layout are those of a real batch:
  - views: random RGBA ``uint8`` images at the preset's ``image_size``; cameras on a sphere of radius
    0.9-1.8 chunk edges around the chunk, 5-45 degrees above it, looking at (near) its centre, field of
    view 50-75 degrees (``geometry.cameras.look_at`` / ``intrinsics_from_fov``), coverage from
    ``projected_box_coverage`` as the data builder computes it, so projections mostly land in the images;
  - sparse coordinates (shape/texture latents): a floor, two walls and random boxes' surfaces voxelised at
    the preset's ``shape_latent_resolution``, deduplicated, sorted by ``(x, y, z)`` as the encode step writes
    them, and trimmed at random to ``--tokens`` x U(0.7, 1.3) voxels per sample, so packed lengths differ;
    ``--tokens`` defaults to 4600 at a 32^3 grid, scaled with the grid's area (1150 at 16^3);
  - latents: standard normal (normalised latents are ~N(0, 1)); ``ss_latent [8, r, r, r]``;
  - VAEs (``shape_vae``, ``tex_vae``): an O-Voxel of the same kind of surface at ``ovoxel_resolution``
    (Morton-sorted, random offsets, flags and PBR), ``--vae-tokens`` voxels per sample (default:
    ``--tokens`` x ``shape_latent_factor``^2, the surface-area scaling; pass the manifest's mean if known).
* Timing: a callback synchronises the device and reads the clock at every ``on_train_batch_start``; step i
  takes ``start[i+1] - start[i]`` (its forward, backward, clipping, optimiser, EMA, logging and the next
  batch's copy to the device: everything a training step costs). That is why one extra step runs after the
  timed ones. The first ``--warmup`` steps (allocator growth, cuDNN/kernel selection) are left out. The
  synchronise costs little: the stage already waits for the device once per step (the adaptive clipper
  reads the gradient norm).
  Reported per configuration: median and mean step time, samples/s = batch / median, steps/s = 1 / median,
  the peak of ``torch.cuda.max_memory_allocated`` (GiB, reset per configuration, so weights, optimiser
  state and the EMA copy count), tokens and real views per batch, the last training loss.
* Failures: an out-of-memory error (``torch.OutOfMemoryError`` or a RuntimeError saying "out of memory")
  records ``oom: true``, frees memory (gc + ``empty_cache``) and goes on; larger batches of the same
  (stage, backend, checkpointing) are then skipped. Any other error is recorded in ``error``. A backend that
  does not exist for a model (``torch_varlen`` for the dense ``ss_flow``) or cannot run here (``flash_attn``
  not installed) is listed in ``skipped``. With ``--time-budget`` no configuration starts once the budget is
  spent (those are listed in ``skipped`` too). Order: first every stage with the first backend and the first
  checkpoint setting over all batch sizes, then the other settings, so each stage gets a baseline early.
* ``--mem-fraction f`` (CUDA) caps this process at ``f`` of the GPU memory
  (``torch.cuda.set_per_process_memory_fraction``), for a GPU that another job shares.

Profile (``--profile-steps N``): after the timed steps, N more run under ``torch.profiler`` (not timed with
the others: the profiler slows the host). ``profile`` reports per step: the wall time, the kernels' count and
summed time (``gpu_busy``), the CPU and device time of the step's named ranges (``flow.view_tokens``,
``flow.conditioning``, ``cond.visibility``, ``cond.project_aggregate``, ``flow.objective``,
``model.sparse_forward``, ``flow.auxiliary``), an ATen-call census by range (:func:`op_census`: what paces a
host-bound step) and the ops with the most device (else CPU) self time.

Output: one JSON object on stdout and in ``--out`` (rewritten after every configuration with
``"complete": false``): ``device``, ``torch``, ``preset``, ``args``, ``results`` (one entry per configuration
run: ``stage, batch, backend, resolved_backend, use_checkpoint, tokens_per_batch, views_per_batch, median_s,
mean_s, samples_per_s, steps_per_s, peak_mem_gb, oom, error, ...``), ``skipped``, ``mem_limit_gb`` and
``choice`` (per stage, see :func:`choose`; the memory limit is ``--mem-headroom`` x ``--mem-fraction`` x the
GPU's memory, the headroom for real batches with more views or tokens than the synthetic one and for
allocator fragmentation). Progress lines go to stderr.

Where the probe differs from a real ``train.py`` step: no validation, checkpoint or logger callbacks (they
do not run inside the timed steps of a real run either, except ``callbacks.run_stats`` and the LR monitor,
which are cheap); the batch is the same every step (a real stream varies views and token counts from batch
to batch); the DataLoader produces batches instantly (real loading must keep up, see
``stage.datamodule.num_workers``); one job alone on the GPU (``full_pipeline.py`` runs some flows side by side).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import inspect
import itertools
import json
import logging
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # conf/, datamodules/ and callbacks/ live next to the genrecon package
    sys.path.insert(0, str(ROOT))

FLOW_STAGES = ("ss_flow", "shape_flow", "tex_flow")
VAE_STAGES = ("shape_vae", "tex_vae")
STAGES = FLOW_STAGES + VAE_STAGES
# Attention layout of each flow: the dense model resolves dense backend names, the sparse ones packed names.
ATTENTION_KIND = {"ss_flow": "dense", "shape_flow": "varlen", "tex_flow": "varlen"}
# A bigger batch is chosen only if the best smaller one reaches less than this share of the best samples/s.
SPEEDUP_FRACTION = 0.75
# Active latent voxels per sample at a 32^3 grid when --tokens is not given (scaled with the grid's area): the
# synthetic rooms' training chunks hold 74k O-Voxels at 128^3 on average (session 13, 288 rooms), about 4.6k cells
# of the 32^3 latent (4,331 on the CPU's 40 rooms). Until session 13 this was 9000, twice the real count.
DEFAULT_TOKENS_32 = 4600
TOKEN_JITTER = 0.3
# Occupied voxels of a synthetic chunk's 64³ occupancy, in units of R²: a floor and two walls.
SURFACE_SHARE = 3
GIB = float(2**30)


def log(message: str) -> None:
    print(f"[flow_step] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ the choice


def _usable(result: dict[str, Any], mem_limit_gb: float | None) -> bool:
    if result.get("oom") or result.get("error"):
        return False
    sps = result.get("samples_per_s")
    if sps is None or not math.isfinite(sps) or sps <= 0:
        return False
    peak = result.get("peak_mem_gb")
    return mem_limit_gb is None or peak is None or peak <= mem_limit_gb


def choose(
    results: Sequence[dict[str, Any]], mem_limit_gb: float | None = None, fraction: float = SPEEDUP_FRACTION
) -> dict[str, dict[str, Any] | None]:
    """The configuration to train each stage with, from probe results.

    Rule, per stage: among the configurations that ran (no OOM, no error) and whose peak memory is at most
    ``mem_limit_gb`` (when given and measured), let S* be the highest samples/s. Take the SMALLEST batch size
    whose best configuration reaches ``fraction`` (0.75) x S*, and within that batch the configuration
    (backend, activation checkpointing) with the highest samples/s (ties: checkpointing off).

    Why not simply the highest samples/s: the runs this chooses for have a fixed wall-clock budget of a few
    hundred to a few thousand optimiser steps, where the number of steps matters as much as the samples seen.
    A bigger batch costs steps in proportion to its size and only pays when the step is host-bound (launch
    overhead, small kernels), i.e. when the extra samples are almost free; then it shows as a large gain in
    samples/s and passes the threshold. A gain below 1/0.75 = 1.33x is not worth the lost steps.

    Returns ``{stage: chosen result (plus best_samples_per_s, threshold_samples_per_s and ``overrides``, the
    train.py overrides of that configuration) or None}``, stages in the order they first appear in
    ``results``; None when no configuration of the stage is usable.
    """
    stages: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        stages.setdefault(result["stage"], []).append(result)
    out: dict[str, dict[str, Any] | None] = {}
    for stage, rows in stages.items():
        ok = [r for r in rows if _usable(r, mem_limit_gb)]
        if not ok:
            out[stage] = None
            continue
        best = max(r["samples_per_s"] for r in ok)
        threshold = fraction * best
        batch = min(r["batch"] for r in ok if r["samples_per_s"] >= threshold * (1.0 - 1e-9))
        pick = max((r for r in ok if r["batch"] == batch),
                   key=lambda r: (r["samples_per_s"], not r.get("use_checkpoint", False)))
        out[stage] = {**{k: v for k, v in pick.items() if k != "step_times_s"},
                      "best_samples_per_s": best, "threshold_samples_per_s": threshold,
                      "overrides": train_overrides(pick)}
    return out


def train_overrides(result: dict[str, Any]) -> list[str]:
    """The ``train.py`` overrides that train ``result``'s stage with its configuration."""
    ckpt = _hydra_value(bool(result.get("use_checkpoint", False)))
    out = [f"stage.datamodule.batch_size={result['batch']}"]
    if result["stage"] in FLOW_STAGES:
        out.append(f"stage.module.model.use_checkpoint={ckpt}")
        if result.get("backend", "auto") != "auto":
            out.append(f"+stage.module.model.attn_backend={result['backend']}")
    else:
        out.append(f"+stage.module.use_checkpoint={ckpt}")
    return out


# ------------------------------------------------------------------------------------------------ config


def _hydra_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _accepts(target: str, name: str) -> bool:
    """Whether the class ``target`` takes a keyword ``name`` (following ``**kwargs`` up the MRO)."""
    from hydra.utils import get_class

    try:
        cls = get_class(target)
    except Exception:  # noqa: BLE001 - an unknown target simply does not accept it
        return False
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters
        if name in params:
            return True
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return False
    return False


def _override(cfg: Any, key: str, value: Any) -> str | None:
    """``key=value`` if the composed ``cfg`` has ``key``, ``+key=value`` if the node's target class accepts it,
    else None."""
    from omegaconf import OmegaConf

    sentinel = object()
    if OmegaConf.select(cfg, key, default=sentinel, throw_on_missing=False) is not sentinel:
        return f"{key}={_hydra_value(value)}"
    parent, _, name = key.rpartition(".")
    node = OmegaConf.select(cfg, parent, default=None)
    if node is not None and "_target_" in node and _accepts(str(node._target_), name):
        return f"+{key}={_hydra_value(value)}"
    return None


def compose(overrides: Sequence[str]) -> Any:
    """``conf/train.yaml`` composed with ``overrides`` (what ``@hydra.main`` would hand ``train()``)."""
    from genrecon.utils.config import compose_entry_config

    return compose_entry_config(overrides)


def base_overrides(stage: str, preset: str, device: torch.device, extra: Sequence[str]) -> list[str]:
    hardware = "gpu" if device.type == "cuda" else "cpu"
    mine = []
    for item in extra:
        prefix, sep, rest = item.partition(":")
        if sep and prefix in STAGES and "=" not in prefix:
            if prefix == stage:
                mine.append(rest)
        else:
            mine.append(item)
    return [f"stage={stage}", f"preset={preset}", "dataset=synthetic", f"hardware={hardware}", "logger=none",
            *mine]


def stage_config(stage: str, preset: str, device: torch.device, use_checkpoint: bool, backend: str,
                 extra: Sequence[str]) -> Any:
    """The composed config of one probe configuration (see the module docstring for the overrides)."""
    base = base_overrides(stage, preset, device, extra)
    cfg = compose(base)
    wanted: list[tuple[str, Any]] = [("stage.module.latent_stats", None)]
    if stage in FLOW_STAGES:
        wanted.append(("stage.module.model.use_checkpoint", use_checkpoint))
        if backend != "auto":
            wanted.append(("stage.module.model.attn_backend", backend))
        default_attn = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if device.type != default_attn.type:  # "auto" is resolved for CUDA whenever CUDA is visible
            wanted.append(("stage.module.model.attn_device", device.type))
    else:
        wanted.append(("stage.module.use_checkpoint", use_checkpoint))
    overrides = []
    for key, value in wanted:
        override = _override(cfg, key, value)
        if override is None:
            if key.endswith("latent_stats"):
                continue
            raise ValueError(f"{stage}: the config has no '{key}' and its target does not accept it")
        overrides.append(override)
    return compose(base + overrides)


def resolve_backend(stage: str, backend: str, device: torch.device) -> str:
    """The attention backend a flow's layers will use (the project's own resolution); raises if it cannot."""
    if stage not in ATTENTION_KIND:
        if backend != "auto":
            raise ValueError("attention backends do not apply to the VAE stages")
        return "n/a"
    from genrecon.modules import attention

    if ATTENTION_KIND[stage] == "dense":
        return attention.resolve_dense_backend(backend, device)
    return attention.resolve_varlen_backend(backend, device)


# ------------------------------------------------------------------------------------------------ synthetic data


def default_tokens(resolution: int) -> int:
    return round(DEFAULT_TOKENS_32 * (resolution / 32) ** 2)


def _box_shell(occ: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
    x0, y0, z0 = lo
    x1, y1, z1 = hi
    occ[x0:x1, y0:y1, [z0, z1 - 1]] = True
    occ[x0:x1, [y0, y1 - 1], z0:z1] = True
    occ[[x0, x1 - 1], y0:y1, z0:z1] = True


def surface_voxels(rng: np.random.Generator, resolution: int, target: int) -> np.ndarray:
    """``[K, 3]`` int32 voxels of a room-corner-like surface at ``resolution``, sorted by (x, y, z), K = target.

    A floor (2 % above the bottom, as training chunks sit 2 cm below the floor), two adjacent walls and the
    shells of random boxes until there are at least ``target`` voxels (random free voxels if boxes cannot get
    there), then a random subset of ``target`` of them.
    """
    r = int(resolution)
    target = int(min(max(target, 1), r**3))
    occ = np.zeros((r, r, r), dtype=bool)
    floor = min(r - 1, max(0, round(0.02 * r)))
    occ[:, :, floor] = True
    occ[0, :, floor:] = True
    occ[:, 0, floor:] = True
    small, large = max(2, r // 16), max(3, r // 3)
    for _ in range(1000):
        if int(occ.sum()) >= target:
            break
        size = rng.integers(small, large + 1, size=3)
        lo = rng.integers(0, np.maximum(1, r - size + 1))
        if rng.random() < 0.7:  # furniture stands on the floor
            lo[2] = min(floor, r - size[2])
        hi = np.minimum(lo + size, r)
        _box_shell(occ, lo, hi)
    count = int(occ.sum())
    if count < target:
        free = np.flatnonzero(~occ.reshape(-1))
        occ.reshape(-1)[rng.choice(free, size=target - count, replace=False)] = True
    coords = np.argwhere(occ)  # C order: sorted by (x, y, z)
    if len(coords) > target:
        coords = coords[np.sort(rng.choice(len(coords), size=target, replace=False))]
    return coords.astype(np.int32)


def synthetic_cameras(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``w2c [n, 4, 4]``, normalised ``K [n, 3, 3]`` (float32, chunk frame) and the chunk's coverage ``[n]``."""
    from genrecon.geometry.cameras import (
        box_corners_and_centre,
        intrinsics_from_fov,
        look_at,
        projected_box_coverage,
    )

    az = rng.uniform(0.0, 2.0 * np.pi, n)
    el = np.radians(rng.uniform(5.0, 45.0, n))
    dist = rng.uniform(0.9, 1.8, n)
    eye = dist[:, None] * np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], axis=1)
    w2c = look_at(eye, rng.normal(0.0, 0.08, (n, 3)))
    K = intrinsics_from_fov(np.radians(rng.uniform(50.0, 75.0, n)))
    coverage = projected_box_coverage(w2c, K, np.broadcast_to(box_corners_and_centre(), (n, 9, 3)))
    return w2c.astype(np.float32), K.astype(np.float32), np.asarray(coverage, dtype=np.float32)


def synthetic_sample(rng: np.random.Generator, key: str, preset: Any, fields: Sequence[str], views: int,
                     tokens: int, vae_tokens: int) -> Any:
    """One ``ChunkSample`` with what ``fields`` need (the arrays a decoded shard sample would hold)."""
    from genrecon.data.shards import ChunkSample
    from genrecon.geometry.morton import morton_argsort
    from genrecon.geometry.ovoxel import OVoxel

    size, occ_res = int(preset.image_size), int(preset.occupancy_resolution)
    n_cand = views + 8 if "views" in fields else 0
    w2c, K, coverage = synthetic_cameras(rng, n_cand) if n_cand else (
        np.zeros((0, 4, 4), np.float32), np.zeros((0, 3, 3), np.float32), np.zeros(0, np.float32))
    images = np.zeros((n_cand, size, size, 4) if n_cand else (0, 1, 1, 4), np.uint8)
    if n_cand:
        images[..., :3] = rng.integers(0, 256, (n_cand, size, size, 3), dtype=np.uint8)
        images[..., 3] = 255
    latents: dict[str, np.ndarray] = {}
    if "ss_latent" in fields:
        r = int(preset.ss_latent_resolution)
        latents["ss_latent"] = rng.standard_normal((8, r, r, r), dtype=np.float32)
    if "shape_latent" in fields or "tex_latent" in fields:
        res, c = int(preset.shape_latent_resolution), int(preset.latent_channels)
        k = max(1, round(tokens * float(rng.uniform(1.0 - TOKEN_JITTER, 1.0 + TOKEN_JITTER))))
        coords = surface_voxels(rng, res, k)
        latents["shape_coords"] = coords.astype(np.uint16)
        latents["shape_feats"] = rng.standard_normal((len(coords), c), dtype=np.float32)
        latents["tex_feats"] = rng.standard_normal((len(coords), c), dtype=np.float32)
    occupancy = np.zeros((occ_res, occ_res, occ_res), dtype=bool)
    if "occupancy" in fields:  # a room corner's surfaces: what depth targets and point depths project
        occupancy[tuple(surface_voxels(rng, occ_res, SURFACE_SHARE * occ_res**2).T)] = True
    ovoxel: dict[str, np.ndarray] = {}
    if "ovoxel" in fields:
        res = int(preset.ovoxel_resolution)
        k = max(1, round(vae_tokens * float(rng.uniform(1.0 - TOKEN_JITTER, 1.0 + TOKEN_JITTER))))
        coords = surface_voxels(rng, res, k)
        coords = coords[morton_argsort(coords)]
        ovoxel = OVoxel(res, coords, rng.random((len(coords), 3), dtype=np.float32),
                        rng.random((len(coords), 3)) < 0.3, rng.random((len(coords), 6), dtype=np.float32)).pack()
    return ChunkSample(
        key=key,
        meta={"ovoxel_resolution": int(preset.ovoxel_resolution), "num_views": n_cand,
              "occupancy_resolution": occ_res},
        views=images,
        w2c=w2c,
        intrinsics=K,
        coverage=coverage,
        chunk_from_world=np.eye(4),
        occupancy=occupancy,
        ovoxel=ovoxel,
        latents=latents,
    )


def synthetic_batch(cfg: Any, batch_size: int, views: int, tokens: int, vae_tokens: int, seed: int,
                    fixed_views: bool = False) -> dict[str, Any]:
    """A collated batch for ``cfg.stage``: the real ``select_fields`` + ``collate`` on synthetic samples."""
    from genrecon.data.batching import ViewSampling, collate, select_fields

    dm = cfg.stage.datamodule
    fields = list(dm.fields)
    sampling = ViewSampling(max_views=views, min_coverage=float(dm.get("min_view_coverage", 0.4)),
                            fixed_count=views if fixed_views else None)
    items = []
    for i in range(batch_size):
        rng = np.random.default_rng([seed, i])  # nested: batch b+1 extends batch b
        sample = synthetic_sample(rng, f"synthetic/{i:04d}", cfg.preset, fields, views, tokens, vae_tokens)
        items.append(select_fields(sample, fields, sampling, rng))
    return collate(items)


def batch_tokens(batch: dict[str, Any]) -> int:
    """Tokens of the stage's model in ``batch``: packed latent voxels, O-Voxel voxels or dense latent voxels."""
    if "shape_coords" in batch:
        return int(batch["shape_coords"].shape[0])
    if "ovoxel_coords" in batch:
        return int(batch["ovoxel_coords"].shape[0])
    if "ss_latent" in batch:
        return int(batch["ss_latent"].shape[0] * np.prod(batch["ss_latent"].shape[2:]))
    return 0


# ------------------------------------------------------------------------------------------------ timing


class _Repeat(torch.utils.data.Dataset):
    """``n`` batches cycling through the prebuilt ones."""

    def __init__(self, batches: Sequence[dict[str, Any]], n: int) -> None:
        self.batches, self.n = list(batches), n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.batches[index % len(self.batches)]


def _step_timer(device: torch.device):
    import lightning as L

    class StepTimer(L.Callback):
        """Clock (after a device synchronise) at the start of every training batch."""

        def __init__(self) -> None:
            self.starts: list[float] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            self.starts.append(time.perf_counter())

    return StepTimer()


# Named ranges of the flow step (``record_function`` in genrecon/stages/flow.py and models/flow_transformer.py).
PROFILE_PREFIXES = ("flow.", "cond.", "model.")


def _profile_window(device: torch.device, start: int, steps: int):
    """A callback that runs ``torch.profiler`` over training batches ``start .. start + steps - 1``."""
    import lightning as L
    from torch.profiler import ProfilerActivity, profile

    class ProfileWindow(L.Callback):
        def __init__(self) -> None:
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
            self.profiler = profile(activities=activities)
            self.active = False
            self.done = False

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if batch_idx == start and not self.done:
                self.profiler.__enter__()
                self.active = True
            elif batch_idx == start + steps and self.active:
                self.profiler.__exit__(None, None, None)
                self.active, self.done = False, True

    return ProfileWindow()


# Shape-only ATen calls: no kernel, little host time; left out of the op census.
VIEW_OPS = frozenset(f"aten::{n}" for n in (
    "view", "reshape", "_reshape_alias", "_unsafe_view", "slice", "select", "as_strided", "t", "transpose",
    "permute", "expand", "unsqueeze", "squeeze", "flatten", "unflatten", "narrow", "split", "split_with_sizes",
    "chunk", "unbind", "alias", "detach", "empty", "empty_like", "empty_strided", "lift_fresh", "numpy_T",
    "result_type", "size", "stride", "is_nonzero", "resolve_conj", "resolve_neg", "view_as", "expand_as"))


def op_census(events: Sequence[Any], steps: int) -> dict[str, Any]:
    """Top-level ATen calls per step (a call made inside another ATen call is not counted again; shape-only
    ops are left out), by where they run: the innermost named range, ``backward`` (autograd's engine) or
    ``other`` (optimiser, EMA, clipping, Lightning). Each call costs host time whether or not the GPU is busy:
    where the step is host-bound, this count is what sets its length."""
    by_range: dict[str, int] = {}
    by_op: dict[str, int] = {}
    by_range_op: dict[str, dict[str, int]] = {}
    for e in events:
        if not e.name.startswith("aten::") or e.name in VIEW_OPS:
            continue
        parent = e.cpu_parent
        if parent is not None and parent.name.startswith("aten::"):
            continue
        where = "other"
        while parent is not None:
            if parent.name.startswith(PROFILE_PREFIXES):
                where = parent.name
                break
            if parent.name.startswith("autograd::engine"):
                where = "backward"
            parent = parent.cpu_parent
        by_range[where] = by_range.get(where, 0) + 1
        by_op[e.name] = by_op.get(e.name, 0) + 1
        ops = by_range_op.setdefault(where, {})
        ops[e.name] = ops.get(e.name, 0) + 1

    def top(counts: dict[str, int], n: int) -> dict[str, float]:
        return {k: v / steps for k, v in sorted(counts.items(), key=lambda kv: kv[1], reverse=True)[:n]}

    return {"ops_per_step": sum(by_range.values()) / steps,
            "by_range": {k: v / steps for k, v in sorted(by_range.items())},
            "top": top(by_op, 15), "top_by_range": {k: top(v, 8) for k, v in sorted(by_range_op.items())}}


def profile_summary(profiler: Any, steps: int, wall_s: float, top: int = 15) -> dict[str, Any]:
    """Per-step split of a profiled window: the named ranges' CPU and device time, the kernels' total time and
    count (GPU busy share = kernel time / wall; far below 1 means the host, not the GPU, sets the pace), the
    op census (:func:`op_census`) and the ops with the most device (else CPU) self time."""
    events = profiler.events()
    # Device activity without the named ranges' own spans on the GPU timeline (they would count twice).
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA
               and not getattr(e, "is_user_annotation", False)]
    kernel_ms = sum(e.time_range.elapsed_us() for e in kernels) / 1e3 / steps
    averages = profiler.key_averages()
    ranges = {a.key: {"cpu_ms": round(a.cpu_time_total / 1e3 / steps, 3),
                      "device_ms": round(a.device_time_total / 1e3 / steps, 3),
                      "calls": a.count / steps}
              for a in averages if a.key.startswith(PROFILE_PREFIXES)}
    by = "self_device_time_total" if kernels else "self_cpu_time_total"
    ops = sorted(averages, key=lambda a: getattr(a, by), reverse=True)[:top]
    wall_ms = wall_s * 1e3 / steps
    return {
        "steps": steps, "wall_ms": round(wall_ms, 3), "kernel_ms": round(kernel_ms, 3),
        "kernels_per_step": len(kernels) / steps,
        "gpu_busy": round(kernel_ms / wall_ms, 3) if kernels and wall_ms > 0 else None,
        "ranges": ranges,
        "census": op_census(events, steps),
        "top_ops": [{"op": a.key[:80], "self_ms": round(getattr(a, by) / 1e3 / steps, 3),
                     "calls": a.count / steps} for a in ops],
    }


def _is_oom(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, torch.OutOfMemoryError) or "out of memory" in str(seen).lower():
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Lightning's info lines and warnings off stdout (stdout carries the JSON)."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def time_config(cfg: Any, batch: dict[str, Any] | Sequence[dict[str, Any]], device: torch.device, steps: int,
                warmup: int, seed: int, profile_steps: int = 0) -> dict[str, Any]:
    """Build the stage from ``cfg`` and run ``warmup + steps + 1`` real training steps on ``batch`` (a list of
    batches: one after another, cycling), then ``profile_steps`` more under ``torch.profiler``, summarised in
    ``profile``."""
    batches = [batch] if isinstance(batch, dict) else list(batch)
    import hydra
    import lightning as L
    from omegaconf import OmegaConf

    out: dict[str, Any] = {"oom": False, "error": None}
    # One more batch closes the profiled window (its start ends the last profiled step).
    total = warmup + steps + 1 + (profile_steps + 1 if profile_steps else 0)
    module = trainer = timer = window = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    try:
        with _quiet(), tempfile.TemporaryDirectory(prefix="flow_step_") as tmp:
            L.seed_everything(seed, workers=True, verbose=False)
            module = hydra.utils.instantiate(cfg.stage.module)
            module.build_config = {"stage": cfg.stage.name,
                                   "module": OmegaConf.to_container(cfg.stage.module, resolve=True),
                                   "preset": OmegaConf.to_container(cfg.preset, resolve=True)}
            out["params_m"] = round(sum(p.numel() for p in module.parameters()) / 1e6, 3)
            timer = _step_timer(device)
            callbacks = [timer]
            if profile_steps:
                window = _profile_window(device, warmup + steps + 1, profile_steps)
                callbacks.append(window)
            trainer = L.Trainer(
                max_steps=total, max_epochs=1, accelerator="gpu" if device.type == "cuda" else "cpu",
                devices=[device.index or 0] if device.type == "cuda" else 1,
                precision="bf16-mixed" if device.type == "cuda" else "32-true",
                logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                limit_val_batches=0, num_sanity_val_steps=0, callbacks=callbacks, default_root_dir=tmp,
                gradient_clip_val=None, deterministic=False, benchmark=False,
            )
            # Pinned on CUDA, as the chunk datamodule's loaders pin: the copy is timed as in a training job.
            loader = torch.utils.data.DataLoader(_Repeat(batches, total), batch_size=None, shuffle=False,
                                                 num_workers=0, pin_memory=device.type == "cuda")
            trainer.fit(module, train_dataloaders=loader)
            loss = trainer.callback_metrics.get("train/loss")
            loss = None if loss is None else float(loss)
            out["loss"] = loss if loss is None or math.isfinite(loss) else None  # JSON has no NaN
            out["loss_finite"] = loss is not None and math.isfinite(loss)
    except Exception as exc:  # noqa: BLE001 - every failure is a result, the probe goes on
        out["oom"] = _is_oom(exc)
        out["error"] = None if out["oom"] else f"{type(exc).__name__}: {str(exc)[:400]}"
        if out["oom"]:
            out["error_detail"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    out["wall_s"] = round(time.perf_counter() - started, 2)
    if device.type == "cuda":
        out["peak_mem_gb"] = round(torch.cuda.max_memory_allocated(device) / GIB, 3)
    else:
        out["peak_mem_gb"] = None
    starts = list(timer.starts) if timer is not None else []
    if window is not None and window.done and not (out["oom"] or out["error"]):
        first = warmup + steps + 1
        out["profile"] = profile_summary(window.profiler, profile_steps,
                                         starts[first + profile_steps] - starts[first])
    del module, trainer, timer, window
    _free(device)
    if out["oom"] or out["error"]:
        return out
    times = [b - a for a, b in itertools.pairwise(starts)][warmup:warmup + steps]
    if len(times) < steps:
        out["error"] = f"only {len(times)} of {steps} timed steps ran"
        return out
    median = statistics.median(times)
    out.update(median_s=median, mean_s=statistics.fmean(times), min_s=min(times), max_s=max(times),
               steps_per_s=1.0 / median, step_times_s=[round(t, 5) for t in times])
    return out


# ------------------------------------------------------------------------------------------------ driver


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    p.add_argument("--stages", nargs="+", default=list(FLOW_STAGES), choices=STAGES)
    p.add_argument("--batches", nargs="+", type=int, default=None,
                   help="batch sizes (default 4 8 16 on CUDA, 1 2 on the CPU)")
    p.add_argument("--steps", type=int, default=12, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=4, help="untimed steps before them")
    p.add_argument("--tokens", type=int, default=None,
                   help=f"mean active latent voxels per sample (default {DEFAULT_TOKENS_32} at 32^3, area-scaled)")
    p.add_argument("--vae-tokens", type=int, default=None,
                   help="mean O-Voxel voxels per sample for the VAEs (default tokens x shape_latent_factor^2)")
    p.add_argument("--views", type=int, default=16, help="max views per sample (the datamodule's max_views)")
    p.add_argument("--fixed-views", action="store_true",
                   help="every sample gets exactly --views views (worst case) instead of U{1..views}")
    p.add_argument("--backends", nargs="+", default=["auto"],
                   help="attention backends to try (names of genrecon.modules.attention; auto = as train.py)")
    p.add_argument("--checkpoint", choices=("both", "on", "off"), default=None,
                   help="activation checkpointing of the transformer blocks (default both on CUDA, off on CPU)")
    p.add_argument("--time-budget", type=float, default=None, help="seconds; no configuration starts after it")
    p.add_argument("--mem-fraction", type=float, default=1.0, help="CUDA: cap this process at this share")
    p.add_argument("--mem-headroom", type=float, default=0.9,
                   help="choice: peak memory must stay below headroom x mem-fraction x GPU memory")
    p.add_argument("--extra", action="append", default=[],
                   help="extra Hydra override for every stage, or STAGE:override for one (repeatable)")
    p.add_argument("--profile-steps", type=int, default=0,
                   help="after the timed steps, run this many more under torch.profiler and report their split "
                        "by the step's named ranges, kernel time and launches (entry 'profile')")
    p.add_argument("--distinct-batches", type=int, default=1,
                   help="cycle through this many synthetic batches of different token counts and views (1: the "
                        "same batch every step; more shows what new shapes cost, as a real data stream brings)")
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.distinct_batches < 1:
        p.error("--steps and --distinct-batches must be >= 1 and --warmup >= 0")
    cuda = torch.device(args.device).type == "cuda"
    if args.batches is None:
        args.batches = [4, 8, 16] if cuda else [1, 2]
    if args.checkpoint is None:
        args.checkpoint = "both" if cuda else "off"
    if any(b < 1 for b in args.batches):
        p.error("--batches must be positive")
    args.batches = sorted(set(args.batches))
    return args


def _write(report: dict[str, Any], out: Path | None) -> None:
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, out)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
        if args.mem_fraction < 1.0:
            torch.cuda.set_per_process_memory_fraction(args.mem_fraction, device)
    mem_limit = None
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory / GIB
        mem_limit = round(args.mem_headroom * args.mem_fraction * total, 3)
    checkpoints = {"both": [False, True], "on": [True], "off": [False]}[args.checkpoint]

    report: dict[str, Any] = {
        "device": device_name(device), "torch": torch.__version__, "preset": args.preset,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "mem_limit_gb": mem_limit, "results": [], "skipped": [], "choice": {}, "complete": False,
    }
    t0 = time.monotonic()

    # Per stage: the preset-dependent sizes and which backend names are distinct and runnable here.
    plans: dict[str, dict[str, Any]] = {}
    for stage in args.stages:
        cfg = compose(base_overrides(stage, args.preset, device, args.extra))
        res = int(cfg.preset.shape_latent_resolution)
        tokens = args.tokens if args.tokens is not None else default_tokens(res)
        if tokens > res**3:
            log(f"{stage}: --tokens {tokens} exceeds the {res}^3 grid; capped at {res**3}")
            tokens = res**3
        factor = int(cfg.preset.get("shape_latent_factor", 1))
        vae_tokens = args.vae_tokens if args.vae_tokens is not None else tokens * factor**2
        vae_tokens = min(vae_tokens, int(cfg.preset.ovoxel_resolution) ** 3)
        backends: list[tuple[str, str]] = []
        for backend in dict.fromkeys(args.backends):
            try:
                resolved = resolve_backend(stage, backend, device)
            except Exception as exc:  # noqa: BLE001
                report["skipped"].append({"stage": stage, "backend": backend,
                                          "reason": f"{type(exc).__name__}: {exc}"})
                log(f"{stage}: backend {backend} skipped ({exc})")
                continue
            same = next((b for b, r in backends if r == resolved), None)
            if same is not None:
                report["skipped"].append({"stage": stage, "backend": backend,
                                          "reason": f"resolves to {resolved}, the same as {same}"})
                continue
            backends.append((backend, resolved))
        plans[stage] = {"tokens": tokens, "vae_tokens": vae_tokens, "backends": backends}

    # Pass 1: each stage's first setting over all batches (a baseline for every stage early); pass 2: the rest.
    settings = {s: [(b, ck) for ck in checkpoints for b in plans[s]["backends"]] for s in args.stages}
    order = [(s, settings[s][:1]) for s in args.stages] + [(s, settings[s][1:]) for s in args.stages]
    batches: dict[tuple[str, int], dict[str, Any]] = {}
    oom_at: dict[tuple[str, str, bool], int] = {}
    for stage, stage_settings in order:
        plan = plans[stage]
        for (backend, resolved), use_ckpt in stage_settings:
            for batch_size in args.batches:
                entry = {"stage": stage, "batch": batch_size, "backend": backend, "use_checkpoint": use_ckpt}
                if args.time_budget is not None and time.monotonic() - t0 >= args.time_budget:
                    report["skipped"].append({**entry, "reason": "time budget spent"})
                    continue
                smaller = oom_at.get((stage, backend, use_ckpt))
                if smaller is not None and batch_size > smaller:
                    report["skipped"].append({**entry, "reason": f"batch {smaller} ran out of memory"})
                    continue
                cfg = stage_config(stage, args.preset, device, use_ckpt, backend, args.extra)
                key = (stage, batch_size)
                if key not in batches:
                    # Batch i > 0 has other token counts and views (seed + 1000 i): new shapes every step.
                    batches[key] = [synthetic_batch(cfg, batch_size, args.views, plan["tokens"], plan["vae_tokens"],
                                                    args.seed + 1000 * i, args.fixed_views)
                                    for i in range(args.distinct_batches)]
                batch = batches[key][0]
                result = {**entry, "resolved_backend": resolved,
                          "tokens_per_batch": batch_tokens(batch),
                          "views_per_batch": int(batch["view_mask"].sum()) if "view_mask" in batch else 0,
                          "distinct_batches": args.distinct_batches}
                log(f"{stage} batch={batch_size} backend={backend} ({resolved}) checkpoint={use_ckpt} "
                    f"tokens={result['tokens_per_batch']} views={result['views_per_batch']} ...")
                timed = time_config(cfg, batches[key], device, args.steps, args.warmup, args.seed,
                                    args.profile_steps)
                result.update(timed)
                result.setdefault("median_s", None)
                result.setdefault("mean_s", None)
                result.setdefault("steps_per_s", None)
                result["samples_per_s"] = (batch_size / result["median_s"]) if result["median_s"] else None
                report["results"].append(result)
                if result["oom"]:
                    oom_at[(stage, backend, use_ckpt)] = batch_size
                    log(f"  out of memory (peak {result['peak_mem_gb']} GiB)")
                elif result["error"]:
                    log(f"  error: {result['error']}")
                else:
                    peak = "" if result["peak_mem_gb"] is None else f", peak {result['peak_mem_gb']:.2f} GiB"
                    log(f"  median {result['median_s']:.4f} s, {result['samples_per_s']:.2f} samples/s{peak}")
                report["elapsed_s"] = round(time.monotonic() - t0, 1)
                _write(report, args.out)

    report["choice"] = choose(report["results"], mem_limit)
    report["complete"] = True
    report["elapsed_s"] = round(time.monotonic() - t0, 1)
    _write(report, args.out)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
