"""Held-out quality of the three flow stages on the validation chunks of the latent shards; prints JSON.

    python benchmarks/flow_quality.py --latents data/synthetic_small/latents \
        --ss-vae ss_vae.ckpt --shape-vae shape_vae.ckpt --tex-vae tex_vae.ckpt \
        --ss-flow ss_flow.ckpt --shape-flow shape_flow.ckpt --tex-flow tex_flow.ckpt \
        [--ss-flow-ablation ss_flow_noproj.ckpt] [--shape-flow-ablation shape_flow_noproj.ckpt] \
        [--max-chunks 24] [--views 8] [--figure flow_quality.png] [--out flow_quality.json]

Any subset of checkpoints may be given; a metric runs when its flow and decoding VAE are there.

* Chunks: the first ``--max-chunks`` samples of the ``val-*.tar`` shards (held-out rooms), in shard order
  (``--split train``: of the ``train-*.tar`` shards, the rooms the flows learned from).
* Views: the datamodule's evaluation choice (``ChunkDataModule(eval_views=V).val_views``: exactly V views,
  fewer if fewer cover >= 40 % of the image, drawn without replacement), each chunk with the generator the
  validation stream gives it with batch size 1, ``default_rng([seed, 0, 0, 0, chunk_index, 0])``. The choice
  depends only on ``--seed`` and the chunk, never on ``--batch-size`` or on the checkpoint.
* Noise: ``stage.sample(batch, seed)`` with one seed per batch derived from ``(--seed, batch index)``; a flow
  and its ablation get the same chunks, views and noise (the noise of a chunk also depends on
  ``--batch-size``: keep it fixed when comparing runs). The stage's own sampler (steps, CFG) unless
  ``--steps``. Sampling runs under bf16 autocast on CUDA (``--precision fp32`` to turn it off); the VAE
  decoders and all metrics run in fp32.
* SS flow (issue 5): sampled latent -> ``denormalise`` -> SS-VAE decoder -> occupancy IoU (logit > the
  stage's ``occ_threshold``) against the chunk's ground-truth occupancy; ``iou_<R>`` the same after OR-pooling
  both onto the shape latent grid (R³, the structure the shape flow receives), ``iou_t-1`` / ``iou_<R>_t-1`` at
  ``infer.py``'s threshold (``--infer-occ-threshold``), ``fscore_1vox`` / ``fscore_2vox`` within one / two
  voxels (Chebyshev); ``precision``, and ``recall_seen`` / ``recall_hidden`` over the true voxels some evaluation
  view sees / none does (z-buffer of the true occupancy, ``occupancy_visibility``; ``seen_share``). Reference:
  the SS-VAE round trip (posterior mean of the true occupancy, decoded). ``--save-occupancy`` also writes the
  grids beside ``--out`` (:func:`occupancy_arrays_path`) for ``benchmarks/occupancy_placement.py``.
* Shape flow (issue 6): 32-ch latent sampled on the ground-truth latent coordinates, denormalised, decoded by
  the shape VAE with free-running subdivisions, dual-contoured (``decode_to_mesh``) and compared with the
  ground-truth O-Voxel mesh on ``--samples`` area-uniform samples each: Chamfer (mean of both directional mean
  nearest-neighbour distances), precision / recall / F-score (harmonic) at 2 voxel edges, normal consistency
  (mean |n.n'| both ways, no cutoff, as in vae_quality.py); distances in voxel edges of the O-Voxel grid.
  An empty decoded mesh scores F = P = R = NC = 0 and no Chamfer (counted in ``empty``). Reference: the shape
  VAE round trip (posterior mean of the true O-Voxel, free-running decode), as in vae_quality.py.
* Texture flow (issue 6): texture latent sampled conditioned on the ground-truth shape latent (as trained),
  denormalised, decoded by the texture VAE following the subdivisions of the ground-truth structure: the
  texture encoder's posterior child masks of the true O-Voxel (the same masks as the shape VAE encoder's, as
  both are the child masks of the true voxel pyramid), so the decoded voxels are the true ones. Base colour
  is looked up (sparse trilinear) at ``--samples`` samples of the ground-truth surface in the decoded and the
  true volume: PSNR in dB; ``psnr_seen_db`` / ``psnr_hidden_db`` over the samples some evaluation view sees /
  none does (z-buffer of the true O-Voxels, ``probe_visibility``; ``seen_share``). Reference: the texture VAE
  round trip, exactly as vae_quality.py. A flow trained with a latent head (``latent_aux_weight``) also gets
  ``tex_flow@head``: the head's linear read-out of the fused views, decoded and scored the same way, i.e. what
  the flow adds to its own conditioning.
* ``latent_check``: max |stored latent - latent re-encoded by the given VAE|; large values mean the VAE
  checkpoints are not the ones that wrote the latent shards (then the flow numbers are not meaningful).
  ``stats_check``: max |checkpoint normalisation - stats.json next to the shards|.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds

from datamodules.chunks import ChunkDataModule
from genrecon.data.batching import collate, select_fields
from genrecon.data.shards import decode_chunk_sample, shard_urls
from genrecon.geometry.ovoxel import ContouredMesh, OVoxel, ovoxel_to_mesh
from genrecon.metrics.image import array_psnr
from genrecon.metrics.occupancy import occupancy_fscore, occupancy_iou, pooled_occupancy_iou, top_fraction_mask
from genrecon.metrics.surface import (
    chamfer,
    normal_consistency,
    precision_recall_fscore,
    sample_mesh,
    surface_distances,
)
from genrecon.models.sc_vae import decode_to_mesh
from genrecon.models.visibility import StructureVisibility
from genrecon.modules.sparse.tensor import SparseTensor, feats_at
from genrecon.pipelines.glb import sample_voxel_attributes
from genrecon.pipelines.sampler import overridden
from genrecon.stages.flow import load_latent_stats
from genrecon.stages.loading import load_stage
from genrecon.stages.sc_vae import TextureVAEStage
from genrecon.utils.jsonl import emit_json

FSCORE_VOXELS = 2.0  # F-score threshold in voxel edges of the O-Voxel grid
# Occupancy F-score tolerance in voxels of the 64³ grid, beside the voxel-exact IoU of issue 5 (a wall one voxel
# off scores 0 IoU; genrecon/metrics/occupancy.py).
OCC_TOLERANCE_VOXELS = 1
LATENT_TOLERANCE = 0.05  # latent_check above this warns (latents are O(1); TF32 convs differ by ~1e-3)


# ============================================================================ helpers
def derive_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summarise(values: list[float | None]) -> dict[str, Any]:
    """mean/min/max over the finite values (``n``: how many), rounded for reading."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return {"mean": None, "min": None, "max": None, "n": 0}
    return {"mean": round(float(np.mean(finite)), 5), "min": round(min(finite), 5),
            "max": round(max(finite), 5), "n": len(finite)}


def _round(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), 5)


class Timer:
    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self) -> Timer:
        sync(self.device)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        sync(self.device)
        self.seconds = time.perf_counter() - self.start


# ============================================================================ data
class Chunk:
    """One held-out chunk: its key, view count, ground-truth O-Voxel and lazily built ground-truth surface."""

    def __init__(self, index: int, key: str, n_views: int, vox: OVoxel, seed: int, samples: int) -> None:
        self.index, self.key, self.n_views, self.vox = index, key, n_views, vox
        self.seed, self.samples = seed, samples
        self._mesh = self._surface = self._colour = None

    @property
    def resolution(self) -> int:
        return int(self.vox.resolution)

    def mesh(self):
        if self._mesh is None:
            self._mesh = ovoxel_to_mesh(self.vox)
        return self._mesh

    def surface(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``--samples`` area-uniform samples of the true mesh in voxel units, and their normals."""
        if self._surface is None:
            m = self.mesh()
            seed = derive_seed(self.seed, self.index, 0)
            pts, nrm = sample_mesh(m.vertices, m.faces, self.samples, seed=seed)
            self._surface = (torch.from_numpy(pts * self.resolution), torch.from_numpy(nrm))
        return self._surface[0].to(device), self._surface[1].to(device)

    def colour_probe(self) -> tuple[np.ndarray, np.ndarray]:
        """Texture probe points on the true surface and the true base colour there (as vae_quality.py)."""
        if self._colour is None:
            from genrecon.geometry.mesh import sample_surface

            m = self.mesh()
            rng = np.random.default_rng(derive_seed(self.seed, self.index, 2))
            pts, _, _ = sample_surface(m.vertices, m.faces, self.samples, rng)
            truth = sample_voxel_attributes(pts, self.vox.coords, self.vox.attributes[:, :3],
                                            np.full(3, -0.5), 1.0 / self.resolution)
            self._colour = (pts, truth)
        return self._colour


def load_chunks(latents: Path, fields: list[str], max_chunks: int, views: int, seed: int, samples: int,
                split: str = "val"):
    """The first chunks of ``split`` (the held-out ones by default; ``train`` measures how far the flows fit the
    chunks they learned from) and their selected fields (numpy), with the datamodule's evaluation views."""
    sampling = ChunkDataModule(str(latents), fields, eval_views=views, seed=seed).val_views
    chunks, items = [], []
    stream = wds.DataPipeline(wds.SimpleShardList(shard_urls(latents, split)), wds.tarfile_to_samples())
    for g, raw in enumerate(stream):
        if g >= max_chunks:
            break
        sample = decode_chunk_sample(raw, views=True)
        # The validation stream's per-sample generator for batch `g` of size 1 (rank 0, one worker, epoch 0).
        rng = np.random.default_rng([seed, 0, 0, 0, g, 0])
        item = select_fields(sample, fields, sampling, rng)
        vox = item["ovoxel"] if "ovoxel" in item else OVoxel.unpack(sample.ovoxel, int(sample.meta[
            "ovoxel_resolution"]))
        chunks.append(Chunk(g, sample.key, len(item.get("views", [])), vox, seed, samples))
        items.append(item)
    if not chunks:
        raise SystemExit(f"no {split} chunks in {latents}")
    return chunks, items


# ============================================================================ metrics
def surface_scores(mesh, chunk: Chunk, device: torch.device) -> dict[str, float | None]:
    """Chamfer / P / R / F at 2 voxel edges / NC of a contoured mesh against the chunk's true mesh."""
    empty = {"chamfer_vox": None, "precision": 0.0, "recall": 0.0, "fscore": 0.0, "normal_consistency": 0.0,
             "faces": 0}
    if len(mesh.faces) == 0:
        return empty
    try:
        seed = derive_seed(chunk.seed, chunk.index, 1)
        pts, nrm = sample_mesh(mesh.vertices, mesh.faces, chunk.samples, seed=seed)
    except ValueError:  # faces of zero area only
        return empty
    gt_pts, gt_nrm = chunk.surface(device)
    pred_pts = torch.from_numpy(pts * chunk.resolution).to(device)
    match = surface_distances(pred_pts, gt_pts)
    prf = precision_recall_fscore(pred_pts, gt_pts, FSCORE_VOXELS, match=match)
    nc = normal_consistency(pred_pts, torch.from_numpy(nrm).to(device), gt_pts, gt_nrm, cutoff=float("inf"),
                            match=match)
    return {"chamfer_vox": float(chamfer(pred_pts, gt_pts, match=match)),
            "precision": float(prf["precision"]), "recall": float(prf["recall"]),
            "fscore": float(prf["f_harmonic"]), "normal_consistency": float(nc),
            "faces": int(len(mesh.faces))}


def colour_psnr_split(coords: np.ndarray, rgb: np.ndarray, chunk: Chunk, seen: np.ndarray) -> dict[str, float]:
    """Base-colour PSNR over the probe points (as ``vae_quality.py``: the true surface's samples, the colour of the
    voxel under each), and apart over those some evaluation view sees and those none does (``seen [P]``; None
    where a part is empty)."""
    pts, truth = chunk.colour_probe()
    pred = sample_voxel_attributes(pts, coords, rgb, np.full(3, -0.5), 1.0 / chunk.resolution)
    part = lambda m: array_psnr(pred[m], truth[m]) if m.any() else None  # noqa: E731
    return {"psnr_db": array_psnr(pred, truth), "psnr_seen_db": part(seen), "psnr_hidden_db": part(~seen)}


# Named point sources for --point-depth=preset=NAME (the settings session 27 scored on the device; CPU quality in
# benchmarks/stereo_quality.py): stereo over 192 fronto-parallel depths and 192 horizontal planes at 128 px, NCC
# ≥ 0.5, refined, confirmed by two (stereo_h2) or one (stereo_h1) other views.
POINT_PRESETS: dict[str, dict[str, Any]] = {
    "stereo_h2": {"source": "stereo", "stereo_refine": True, "stereo_consistent": 2, "stereo_size": 128,
                  "stereo_min_score": 0.5, "stereo_depths": 192, "stereo_horizontal": True},
    "stereo_h1": {"source": "stereo", "stereo_refine": True, "stereo_consistent": 1, "stereo_size": 128,
                  "stereo_min_score": 0.5, "stereo_depths": 192, "stereo_horizontal": True},
    # + vertical planes in four orientations (walls and furniture sides at grazing angles; session 30)
    "stereo_hv2": {"source": "stereo", "stereo_refine": True, "stereo_consistent": 2, "stereo_size": 128,
                   "stereo_min_score": 0.5, "stereo_depths": 192, "stereo_horizontal": True, "stereo_vertical": 4},
}


def point_depth_for_scoring(config: Any, keep: float | None, overrides: list[str]) -> Any:
    """A point-depth flow's :class:`~genrecon.models.point_depth.SimulatedPoints` for scoring: ``keep`` as its
    ``eval_keep`` and each ``FIELD=VALUE`` of ``overrides`` set (``source=stereo``: a flow trained on simulated
    points scored on the stereo points of the evaluation views alone). Values take the type of the field's
    current value (``true``/``false`` for booleans); an unknown field or a value of the wrong type raises.
    ``preset=NAME`` sets the fields of :data:`POINT_PRESETS` ``[NAME]`` (later items may change them)."""
    changes: dict[str, Any] = {} if keep is None else {"eval_keep": keep}
    fields = {f.name for f in dataclasses.fields(config)}
    for item in overrides:
        name, sep, text = item.partition("=")
        if name == "preset" and sep:
            if text not in POINT_PRESETS:
                raise ValueError(f"--point-depth {item!r}: unknown preset, expected one of {sorted(POINT_PRESETS)}")
            changes.update(POINT_PRESETS[text])
            continue
        if not sep or name not in fields:
            raise ValueError(f"--point-depth {item!r}: expected FIELD=VALUE with FIELD one of {sorted(fields)}")
        current = getattr(config, name)
        try:
            if isinstance(current, bool):
                if text.lower() not in ("true", "false"):
                    raise ValueError(text)
                value: Any = text.lower() == "true"
            elif isinstance(current, tuple):
                value = tuple(type(c)(v) for c, v in zip(current, text.split(","), strict=True))
            else:
                value = type(current)(text)
        except ValueError as err:
            raise ValueError(f"--point-depth {item!r}: {text!r} is not a {type(current).__name__} "
                             f"like the current {current!r}") from err
        changes[name] = value
    return dataclasses.replace(config, **changes)  # the dataclass checks the combination


def seen_by_views(cells: torch.Tensor, points: torch.Tensor, item: dict[str, Any], cell: float,
                  subdivisions: int) -> torch.Tensor:
    """``[P]`` bool: which ``points [P, 3]`` some evaluation view of ``item`` sees past the structure ``cells
    [K, 3]`` (cell centres of edge ``cell``, chunk frame). A z-buffer of the cells per view
    (:class:`StructureVisibility`: 64² pixels, ``subdivisions``³ sub-points per cell, 1.5 cells of slack, no
    fallback): a point is seen when it is no deeper than the nearest structure at its pixel plus the slack.
    Geometry outside the chunk hides nothing, so the seen share is an upper bound."""
    device = points.device
    if not len(item.get("w2c", [])):
        return torch.zeros(len(points), dtype=torch.bool, device=device)
    vis = StructureVisibility(grid=64, subdivisions=subdivisions, tolerance=1.5, fallback=False)
    w2c = torch.as_tensor(np.asarray(item["w2c"]), dtype=torch.float32, device=device)[None]
    K = torch.as_tensor(np.asarray(item["intrinsics"]), dtype=torch.float32, device=device)[None]
    mask = torch.ones(w2c.shape[:2], dtype=torch.bool, device=device)
    zbuf = vis.zbuffer(cells, torch.zeros(len(cells), dtype=torch.long, device=device), w2c, K, mask, cell)
    batch = torch.zeros(len(points), dtype=torch.long, device=device)
    return vis.visible(zbuf, points, batch, w2c, K, mask, cell).any(dim=1)


def probe_visibility(chunk: Chunk, item: dict[str, Any], device: torch.device) -> np.ndarray:
    """``[P]`` bool: which texture-probe points of the chunk some of its evaluation views see, past the true
    O-Voxel cells (:func:`seen_by_views`, 2³ sub-points per cell)."""
    pts, _ = chunk.colour_probe()
    cell = 1.0 / chunk.resolution
    centres = torch.as_tensor((chunk.vox.coords + 0.5) * cell - 0.5, dtype=torch.float32, device=device)
    probe = torch.as_tensor(pts, dtype=torch.float32, device=device)
    return seen_by_views(centres, probe, item, cell, subdivisions=2).cpu().numpy()


def occupancy_visibility(occ: torch.Tensor, item: dict[str, Any]) -> torch.Tensor:
    """``[R, R, R]`` bool: which occupied voxels of the true grid ``occ [R, R, R]`` some evaluation view of the
    chunk sees (False elsewhere): the voxels as both the structure and the probes of :func:`seen_by_views`, 4³
    sub-points per voxel so that no hole opens at close range. The split of an SS sample's recall into what the
    views show and what a prior must fill in."""
    res = occ.shape[-1]
    grid = occ > 0.5
    seen = torch.zeros_like(grid)
    if not grid.any():
        return seen
    coords = grid.nonzero()
    centres = (coords.float() + 0.5) / res - 0.5
    hit = seen_by_views(centres, centres, item, 1.0 / res, subdivisions=4)
    seen[tuple(coords[hit].T)] = True
    return seen


# ============================================================================ runner
class Benchmark:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = resolve_device(args.device)
        self.bf16 = self.device.type == "cuda" and args.precision == "bf16"
        self.results: dict[str, Any] = {}
        self.latent_check: dict[str, float] = {}
        self.stats_check: dict[str, float] = {}
        self.warnings: list[str] = []
        self.figure: dict[str, dict[int, Any]] = {}  # column -> chunk index -> picture payload
        self.figure_chunks = set(range(args.figure_chunks)) if args.figure else set()
        self._seen: dict[int, np.ndarray] = {}  # chunk index -> which texture-probe points its views see
        self._occ_seen: dict[int, torch.Tensor] = {}  # chunk index -> which true occupied voxels its views see
        # --save-occupancy: array name -> chunk index -> per-chunk array (see occupancy_arrays_path)
        self.occupancy_arrays: dict[str, dict[int, np.ndarray]] | None = {} if args.save_occupancy else None
        self.occupancy_resolution = 0
        latents = Path(args.latents)
        stats_path = latents / "stats.json"
        self.stats = json.loads(stats_path.read_text()) if stats_path.is_file() else None
        manifest = latents / "manifest.json"
        preset = json.loads(manifest.read_text()).get("config", {}).get("preset", {}) if manifest.is_file() else {}
        self.structure_resolution = args.structure_resolution or preset.get("shape_latent_resolution")

    # ------------------------------------------------------------------ plumbing
    def load(self, path: str, stage: str):
        with Timer(self.device) as t:
            module = load_stage(path, expected_stage=stage, device=self.device)
        if getattr(module, "point_depth", None) is not None:
            module.point_depth = point_depth_for_scoring(module.point_depth, self.args.point_keep,
                                                         getattr(self.args, "point_depth", None) or [])
        return module, t.seconds

    @property
    def pooled_key(self) -> str:
        return f"iou_{self.structure_resolution}"

    def pool_factor(self, occupancy: torch.Tensor) -> int:
        """How many occupancy voxels per shape latent cell along each axis (64³ -> 32³: 2)."""
        if not self.structure_resolution:
            raise ValueError(f"{self.args.latents}/manifest.json has no config.preset.shape_latent_resolution: "
                             "pass --structure-resolution")
        r, s = int(occupancy.shape[-1]), int(self.structure_resolution)
        if r % s:
            raise ValueError(f"--structure-resolution {s} does not divide the occupancy grid {r}")
        return r // s

    def batches(self):
        bs = self.args.batch_size
        for k in range(0, len(self.items), bs):
            idx = list(range(k, min(k + bs, len(self.items))))
            yield k // bs, idx, to_device(collate([self.items[i] for i in idx]), self.device)

    def flow_meta(self, name: str, stage, path: str, load_s: float, ablation: bool) -> dict[str, Any]:
        if self.args.steps is not None:
            stage.sampler.steps = int(self.args.steps)
        proj = bool(stage.hparams.get("projection_conditioning", True))
        if ablation and proj:
            self.warnings.append(f"{name}: {path} was trained with projection conditioning ON "
                                 "(not the ablation)")
        if not ablation and not proj:
            self.warnings.append(f"{name}: {path} was trained with projection conditioning OFF")
        floor = float(stage.hparams.get("latent_std_floor", 0.0))
        if self.stats is not None and stage.latent in self.stats:
            # The reference as the stage builds it from stats.json (with its std floor, if it was trained with one).
            mean, std = load_latent_stats(Path(self.args.latents) / "stats.json", stage.latent,
                                          stage.latent_mean.numel(), std_floor=floor)
            diff = max((stage.latent_mean.cpu() - mean).abs().max().item(),
                       (stage.latent_std.cpu() - std).abs().max().item())
            self.stats_check[name] = round(diff, 6)
            if diff > 1e-3:
                self.warnings.append(f"{name}: its latent normalisation differs from {self.args.latents}/"
                                     f"stats.json by {diff:.3g} (trained on other latents?)")
        s = stage.sampler
        meta = {"checkpoint": str(path), "checkpoint_step": getattr(stage, "checkpoint_step", None),
                "projection_conditioning": proj, "latent_std_floor": floor, "load_seconds": round(load_s, 2),
                "sampler": {"steps": s.steps, "guidance_strength": s.guidance_strength,
                            "guidance_rescale": s.guidance_rescale,
                            "guidance_interval": list(s.guidance_interval), "rescale_t": s.rescale_t}}
        points = getattr(stage, "point_depth", None)
        if points is not None:  # the points it was scored with, as resolved (presets and overrides applied)
            meta["point_depth"] = dataclasses.asdict(points)
        return meta

    def sample(self, stage, batch: dict[str, Any], k: int, decoder=None,
               draw_mean: str = "latent") -> tuple[torch.Tensor, float]:
        """The batch's sampled latent, or with ``decoder`` (the SS-VAE's) its occupancy logits averaged over the
        sampler's draws as ``draw_mean`` says; and the seconds it took."""
        seed = derive_seed(self.args.seed, k)
        with Timer(self.device) as t, torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.bf16):
            if decoder is None:
                x = stage.sample(batch, seed=seed)
            else:
                x = stage.sample_occupancy(batch, decoder, seed=seed, draw_mean=draw_mean)
        return x.float(), t.seconds

    def record(self, name: str, meta: dict[str, Any], per_chunk: dict[str, list], seconds: float,
               sample_seconds: float | None = None, extra: dict[str, Any] | None = None) -> None:
        n = len(self.chunks)
        entry = dict(meta)
        entry["metrics"] = {m: summarise(v) for m, v in per_chunk.items() if m != "faces"}
        entry.update(extra or {})
        entry["per_chunk"] = {m: [_round(x) if isinstance(x, float) else x for x in v]
                              for m, v in per_chunk.items()}
        entry["seconds"] = round(seconds, 2)
        if sample_seconds is not None:
            entry["sample_seconds"] = round(sample_seconds, 2)
            entry["sample_seconds_per_chunk"] = round(sample_seconds / n, 3)
        self.results[name] = entry

    def keep(self, column: str, index: int, payload: Any) -> None:
        if index in self.figure_chunks:
            self.figure.setdefault(column, {})[index] = payload

    # ------------------------------------------------------------------ SS (issue 5)
    def occupancy_scores(self, logits: torch.Tensor, occ: torch.Tensor, threshold: float,
                         seen: torch.Tensor | None = None) -> dict[str, list]:
        """Per-chunk SS scores of one batch: voxel-exact IoU, the IoU on the shape latent grid, the F-score within
        a voxel, the occupied shares of prediction and truth, and both IoUs again at the inference pipeline's
        threshold (``conf/infer.yaml`` occ_threshold) and each ``--occ-threshold-sweep`` logit (``iou_t<T>``)
        where they differ from the stage's. With ``seen [B, 1, R, R, R]`` (:func:`occupancy_visibility`): the
        precision, the recall of the true voxels the views see and of those they do not, and the seen share of
        the true voxels (None where a part is empty)."""
        factor = self.pool_factor(occ)
        pred = logits > threshold
        truth = occ > 0.5
        out = {"iou": occupancy_iou(logits, occ, threshold).tolist(),
               self.pooled_key: pooled_occupancy_iou(logits, occ, threshold, factor).tolist(),
               "fscore_1vox": occupancy_fscore(logits, occ, threshold, OCC_TOLERANCE_VOXELS)["fscore"].tolist(),
               # two voxels of a 64³ chunk of 2.7-3.0 m: 8-9 cm, near the published scene F-score's 10 cm
               "fscore_2vox": occupancy_fscore(logits, occ, threshold, 2)["fscore"].tolist(),
               "occupied_fraction": pred.flatten(1).float().mean(1).tolist(),
               "truth_fraction": truth.flatten(1).float().mean(1).tolist()}
        if seen is not None:
            ratio = lambda num, den: [n / d if d else None  # noqa: E731
                                      for n, d in zip(num.flatten(1).sum(1).tolist(), den.flatten(1).sum(1).tolist())]
            hidden = truth & ~seen
            out.update({"precision": ratio(pred & truth, pred), "recall_seen": ratio(pred & seen, seen),
                        "recall_hidden": ratio(pred & hidden, hidden), "seen_share": ratio(seen & truth, truth)})
        extra = [self.args.infer_occ_threshold, *self.args.occ_threshold_sweep]
        for t in dict.fromkeys(t for t in extra if t is not None and t != threshold):
            out[f"iou_t{t:g}"] = occupancy_iou(logits, occ, t).tolist()
            out[f"{self.pooled_key}_t{t:g}"] = pooled_occupancy_iou(logits, occ, t, factor).tolist()
        # Calibration probes: the same logits' largest share f of voxels; "ftruth" takes each chunk's true
        # share, an upper bound of what an estimate of the amount could give, not a method.
        fractions = {f"f{f:g}": f for f in self.args.occ_fraction_sweep}
        if self.args.occ_fraction_oracle:
            fractions["ftruth"] = (occ > 0.5).flatten(1).float().mean(1)
        for key, f in fractions.items():
            mask = top_fraction_mask(logits, f).float()
            out[f"iou_{key}"] = occupancy_iou(mask, occ, 0.5).tolist()
            out[f"{self.pooled_key}_{key}"] = pooled_occupancy_iou(mask, occ, 0.5, factor).tolist()
        return out

    def save_occupancy(self, name: str, idx: list[int], grids: torch.Tensor) -> None:
        """With ``--save-occupancy``: keep the batch's ``[B, 1, R, R, R]`` grids as array ``name`` (bool grids as
        packed bits, float grids as probabilities quantised to uint8)."""
        if self.occupancy_arrays is None:
            return
        store = self.occupancy_arrays.setdefault(name, {})
        for j, i in enumerate(idx):
            g = grids[j, 0]
            if g.dtype == torch.bool:
                store[i] = np.packbits(g.cpu().numpy().ravel())
            else:
                store[i] = (g.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()

    def write_occupancy(self, path: Path) -> None:
        """One compressed ``.npz``: ``chunks`` (keys), ``resolution``, and per array ``[n, ...]`` in chunk order."""
        arrays = {name: np.stack([per[i] for i in sorted(per)]) for name, per in self.occupancy_arrays.items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, chunks=np.array([c.key for c in self.chunks]),
                            resolution=np.int64(self.occupancy_resolution), **arrays)

    def occupancy_seen(self, idx: list[int], occ: torch.Tensor) -> torch.Tensor:
        """``[B, 1, R, R, R]``: :func:`occupancy_visibility` of the batch's chunks (built once per chunk)."""
        for j, i in enumerate(idx):
            if i not in self._occ_seen:
                self._occ_seen[i] = occupancy_visibility(occ[j, 0], self.items[i])
        return torch.stack([self._occ_seen[i] for i in idx])[:, None]

    def run_ss(self) -> None:
        a = self.args
        vae, vae_s = self.load(a.ss_vae, "ss_vae")
        start = time.perf_counter()
        scores: dict[str, list] = {}
        diffs = []
        with torch.no_grad():
            for _, idx, batch in self.batches():
                occ = batch["occupancy"]
                z = vae.encode(occ)
                diffs.append((z - batch["ss_latent"]).abs().max().item())
                seen = self.occupancy_seen(idx, occ)
                for key, values in self.occupancy_scores(vae.decoder(z), occ, 0.0, seen).items():
                    scores.setdefault(key, []).extend(values)
                self.occupancy_resolution = occ.shape[-1]
                self.save_occupancy("truth", idx, occ > 0.5)
                self.save_occupancy("seen", idx, seen.bool())
                for j, i in enumerate(idx):
                    self.keep("occ_gt", i, occ[j, 0].bool().cpu().numpy())
        self.latent_check["ss"] = round(max(diffs), 6)
        self.record("ss_vae_roundtrip", {"checkpoint": a.ss_vae, "load_seconds": round(vae_s, 2)},
                    scores, time.perf_counter() - start)
        for name, path, ablation in (("ss_flow", a.ss_flow, False),
                                     ("ss_flow_ablation", a.ss_flow_ablation, True)):
            if not path:
                continue
            stage, load_s = self.load(path, "ss_flow")
            meta = self.flow_meta(name, stage, path, load_s, ablation)
            threshold = float(getattr(stage, "occ_threshold", 0.0))
            meta["occ_threshold"] = threshold
            meta["infer_occ_threshold"] = a.infer_occ_threshold
            for entry, settings in self.sampler_variants(name, stage, occupancy=True):
                start, sample_s, scores = time.perf_counter(), 0.0, {}
                with torch.no_grad():
                    for k, idx, batch in self.batches():
                        logits, s = self.sample(stage, batch, k, vae.decoder, settings.get("draw_mean", "latent"))
                        sample_s += s
                        seen = self.occupancy_seen(idx, batch["occupancy"])
                        for key, values in self.occupancy_scores(logits, batch["occupancy"], threshold,
                                                                 seen).items():
                            scores.setdefault(key, []).extend(values)
                        if self.occupancy_arrays is not None:  # no grid-sized sigmoid unless it is kept
                            self.save_occupancy(f"{entry}.pred", idx, logits > threshold)
                            self.save_occupancy(f"{entry}.prob", idx, torch.sigmoid(logits))
                        if entry == name:
                            for j, i in enumerate(idx):
                                self.keep(name, i, ((logits[j, 0] > threshold).cpu().numpy(), scores["iou"][i]))
                self.record(entry, dict(meta, **settings), scores, time.perf_counter() - start, sample_s)
            del stage
            self.free()
        del vae
        self.free()

    # ------------------------------------------------------------------ shape (issue 6)
    def shape_scores(self, recon: SparseTensor, idx: list[int], column: str,
                     per_chunk: dict[str, list]) -> None:
        meshes = decode_to_mesh(recon, self.chunks[idx[0]].resolution)
        empty = ContouredMesh(np.zeros((0, 3)), np.zeros((0, 3), np.int64), np.zeros(0, np.int64))
        meshes += [empty] * (len(idx) - len(meshes))  # trailing samples without any voxel
        for j, i in enumerate(idx):
            scores = surface_scores(meshes[j], self.chunks[i], self.device)
            for m, v in scores.items():
                per_chunk.setdefault(m, []).append(v)
            self.keep(column, i, (meshes[j], scores))

    def run_shape(self) -> None:
        a = self.args
        vae, vae_s = self.load(a.shape_vae, "shape_vae")
        res = int(vae.decoder.resolution)
        if res != self.chunks[0].resolution:
            self.warnings.append(f"shape VAE decodes to {res}^3, the O-Voxels are "
                                 f"{self.chunks[0].resolution}^3")
        start, per_chunk, diffs = time.perf_counter(), {}, []
        with torch.no_grad():
            for _, idx, batch in self.batches():
                truth = SparseTensor(batch["ovoxel_coords"], batch["ovoxel_shape"])
                post = vae.encoder(truth, sample_posterior=False)
                stored = SparseTensor(batch["shape_coords"], batch["shape_feats"], batch_size=len(idx))
                diffs.append((feats_at(post.mean, stored) - stored.feats).abs().max().item())
                recon, _ = vae.decode(post.mean)
                self.shape_scores(recon, idx, "shape_vae_roundtrip", per_chunk)
                for i in idx:
                    self.keep("mesh_gt", i, self.chunks[i].mesh())
        self.latent_check["shape"] = round(max(diffs), 6)
        self.record("shape_vae_roundtrip", {"checkpoint": a.shape_vae, "load_seconds": round(vae_s, 2)},
                    per_chunk, time.perf_counter() - start, extra={"empty": per_chunk["faces"].count(0)})
        for name, path, ablation in (("shape_flow", a.shape_flow, False),
                                     ("shape_flow_ablation", a.shape_flow_ablation, True)):
            if not path:
                continue
            stage, load_s = self.load(path, "shape_flow")
            meta = self.flow_meta(name, stage, path, load_s, ablation)
            start, sample_s, per_chunk = time.perf_counter(), 0.0, {}
            with torch.no_grad():
                for k, idx, batch in self.batches():
                    x, s = self.sample(stage, batch, k)
                    sample_s += s
                    latent = SparseTensor(batch["shape_coords"], stage.denormalise(x, 1), batch_size=len(idx))
                    recon, _ = vae.decode(latent)
                    self.shape_scores(recon, idx, name, per_chunk)
            self.record(name, meta, per_chunk, time.perf_counter() - start, sample_s,
                        extra={"empty": per_chunk["faces"].count(0)})
            del stage
            self.free()
        del vae
        self.free()

    # ------------------------------------------------------------------ texture (issue 6)
    def seen(self, i: int) -> np.ndarray:
        """Which probe points of chunk ``i`` its evaluation views see (built once per chunk)."""
        if i not in self._seen:
            self._seen[i] = probe_visibility(self.chunks[i], self.items[i], self.device)
        return self._seen[i]

    def tex_scores(self, out: SparseTensor, batch: dict[str, Any], idx: list[int], column: str,
                   scores: dict[str, list]) -> None:
        """``out``: decoded PBR in [0, 1] on the true voxels (texture VAE ``decode``). Appends each chunk's PSNR,
        its PSNR over the probe points its views see and over those they do not, and the seen share."""
        aligned = feats_at(out, SparseTensor(batch["ovoxel_coords"], batch["ovoxel_coords"][:, :1]))
        for j, i in enumerate(idx):
            sel = out.coords[:, 0] == j
            coords, rgb = out.coords[sel, 1:].cpu().numpy(), out.feats[sel, :3].float().cpu().numpy()
            seen = self.seen(i)
            for key, value in colour_psnr_split(coords, rgb, self.chunks[i], seen).items():
                scores.setdefault(key, []).append(value)
            scores.setdefault("seen_share", []).append(float(seen.mean()))
            if i in self.figure_chunks:
                rgb = aligned[batch["ovoxel_coords"][:, 0] == j, :3].float().cpu().numpy()
                self.keep(column, i, (rgb, scores["psnr_db"][-1]))

    def run_tex(self) -> None:
        a = self.args
        vae, vae_s = self.load(a.tex_vae, "tex_vae")
        start, scores, diffs, guides = time.perf_counter(), {}, [], {}
        with torch.no_grad():
            for k, idx, batch in self.batches():
                post = vae.encoder(TextureVAEStage._input(batch), sample_posterior=False)
                guides[k] = [g.to("cpu") for g in post.subs]
                if "tex_feats" in batch:
                    stored = SparseTensor(batch["shape_coords"], batch["tex_feats"], batch_size=len(idx))
                    diffs.append((feats_at(post.mean, stored) - stored.feats).abs().max().item())
                self.tex_scores(vae.decode(post.mean, post.subs), batch, idx, "tex_vae_roundtrip", scores)
        if diffs:
            self.latent_check["tex"] = round(max(diffs), 6)
        self.record("tex_vae_roundtrip", {"checkpoint": a.tex_vae, "load_seconds": round(vae_s, 2)},
                    scores, time.perf_counter() - start)
        if a.tex_flow:
            stage, load_s = self.load(a.tex_flow, "tex_flow")
            meta = self.flow_meta("tex_flow", stage, a.tex_flow, load_s, False)
            meta["guide"] = "texture-encoder child masks of the ground-truth O-Voxel (the true voxels)"
            for entry, settings in self.sampler_variants("tex_flow", stage):
                start = time.perf_counter()
                scores, sample_s = self.score_tex_latents(
                    vae, guides, lambda batch, k: self.sample(stage, batch, k), stage,
                    "tex_flow" if entry == "tex_flow" else "_sweep")
                self.record(entry, dict(meta, **settings), scores, time.perf_counter() - start, sample_s)
            if stage.latent_head is not None:
                # The latent head's linear read-out of the fused views, decoded like a sample: what the flow adds
                # to its own conditioning (entry name@head).
                start = time.perf_counter()

                def readout(batch: dict[str, Any], k: int) -> tuple[torch.Tensor, float]:
                    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.bf16):
                        return stage.latent_head_readout(batch).float(), 0.0

                scores, _ = self.score_tex_latents(vae, guides, readout, stage, "_sweep")
                self.record("tex_flow@head", dict(meta, readout="latent head on the fused view features, no flow"),
                            scores, time.perf_counter() - start)
            self.figure.pop("_sweep", None)
            del stage
        del vae
        self.free()

    def score_tex_latents(self, vae, guides: dict[int, list], produce, stage, column: str) -> tuple[dict, float]:
        """Decode and score the texture latents ``produce(batch, k) -> (normalised latent [K, C], seconds)`` of
        every batch on its true voxels; returns the scores and the seconds ``produce`` reported."""
        scores: dict[str, list] = {}
        seconds = 0.0
        with torch.no_grad():
            for k, idx, batch in self.batches():
                x, s = produce(batch, k)
                seconds += s
                latent = SparseTensor(batch["shape_coords"], stage.denormalise(x, 1), batch_size=len(idx))
                guide = [g.to(self.device) for g in guides[k]]
                self.tex_scores(vae.decode(latent, guide), batch, idx, column, scores)
        return scores, seconds

    def sampler_variants(self, name: str, stage, occupancy: bool = False) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield (entry, sampler settings): the stage's own sampler as ``name``, then each ``--cfg-sweep`` value
        as ``name@cfg<g>``, with ``--x0-estimate`` one Euler step from the noise as ``name@x0``, for each
        ``--x0-average`` K the mean of K such steps as ``name@x0avg<K>`` and for each ``--sample-average`` K the
        mean of K samples of the stage's own sampler as ``name@avg<K>``, with the stage's sampler set to them
        while the caller samples. With ``occupancy`` (the SS flow) each averaged entry has a twin that averages
        the draws' decoded occupancy probabilities (``name@x0pavg<K>``, ``name@pavg<K>``; settings key
        ``draw_mean``). With ``--uncond`` the same without the views
        (``name@uncond``, ``name@x0_uncond``): the unconditional pass of the guidance, at every step.

        One step gives the model's estimate of E[x0 | views] rather than a sample: per-voxel errors (PSNR, IoU)
        reward the posterior mean, a sample pays its spread on top (about twice the posterior variance). The gap
        between a variant and its ``_uncond`` twin is what the views add."""
        sampler = stage.sampler
        own = {"guidance_strength": float(sampler.guidance_strength), "steps": int(sampler.steps),
               "guidance_interval": tuple(sampler.guidance_interval), "draws": int(getattr(sampler, "draws", 1))}
        variants = [(name, own)] + [(f"{name}@cfg{g:g}", dict(own, guidance_strength=g))
                                    for g in self.args.cfg_sweep if g != own["guidance_strength"]]
        if self.args.x0_estimate:
            variants.append((f"{name}@x0", dict(own, steps=1)))
        # The mean of K one-step estimates from K noises (the sampler's draws; the first is @x0's noise).
        averages = [("x0", dict(own, steps=1), k) for k in self.args.x0_average if k > 1]
        averages += [("", dict(own), k) for k in self.args.sample_average if k > 1]
        for prefix, settings, k in averages:
            variants.append((f"{name}@{prefix}avg{k}", dict(settings, draws=k)))
            if occupancy:
                variants.append((f"{name}@{prefix}pavg{k}", dict(settings, draws=k, draw_mean="occupancy")))
        if self.args.uncond:
            # Strength 0 over the whole interval: the sampler's negative (zero-condition) pass only.
            blind = dict(guidance_strength=0.0, guidance_interval=(0.0, 1.0))
            variants.append((f"{name}@uncond", dict(own, **blind)))
            if self.args.x0_estimate:
                variants.append((f"{name}@x0_uncond", dict(own, steps=1, **blind)))
        for entry, settings in variants:
            # draw_mean is the caller's, not the sampler's
            with overridden(sampler, **{key: settings[key] for key in own}):
                yield entry, settings

    def free(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ main
    def run(self) -> dict[str, Any]:
        a = self.args
        t0 = time.perf_counter()
        do_ss = bool(a.ss_vae)
        do_shape = bool(a.shape_vae)
        do_tex = bool(a.tex_vae)
        for flow, vae, what in ((a.ss_flow or a.ss_flow_ablation, a.ss_vae, "--ss-vae"),
                                (a.shape_flow or a.shape_flow_ablation, a.shape_vae, "--shape-vae"),
                                (a.tex_flow, a.tex_vae, "--tex-vae")):
            if flow and not vae:
                self.warnings.append(f"a flow checkpoint needs {what} to be decoded: skipped")
        fields = ["views"]
        if do_ss:
            fields += ["occupancy", "ss_latent"]
        if do_shape or do_tex:
            fields += ["ovoxel", "shape_latent"]
        if do_tex and a.tex_flow:
            fields += ["tex_latent"]
        with Timer(self.device) as t:
            self.chunks, self.items = load_chunks(Path(a.latents), fields, a.max_chunks, a.views, a.seed,
                                                  a.samples, a.split)
        load_data_s = t.seconds
        if do_ss:
            self.run_ss()
        if do_shape:
            self.run_shape()
        if do_tex:
            self.run_tex()
        for latent, diff in self.latent_check.items():
            if diff > LATENT_TOLERANCE:
                self.warnings.append(f"{latent} latents re-encoded by the given VAE differ from the stored "
                                     f"ones by {diff:.3g}: not the VAE that wrote {a.latents}?")
        if self.occupancy_arrays:
            self.write_occupancy(occupancy_arrays_path(a.out))
        figure_s = None
        if a.figure:
            with Timer(self.device) as t:
                write_figure(self, Path(a.figure))
            figure_s = round(t.seconds, 2)
        return {
            "device": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu",
            "autocast": "bf16 (flow sampling only)" if self.bf16 else "none (fp32)",
            "torch": torch.__version__,
            "latents": str(a.latents),
            "split": a.split,
            "seed": a.seed,
            "views_requested": a.views,
            "samples": a.samples,
            "fscore_threshold_vox": FSCORE_VOXELS,
            "chunks": [c.key for c in self.chunks],
            "views_per_chunk": [c.n_views for c in self.chunks],
            "headline": headline(self.results),
            "results": self.results,
            "latent_check": self.latent_check,
            "stats_check": self.stats_check,
            "warnings": self.warnings,
            "figure": a.figure,
            "occupancy_arrays": str(occupancy_arrays_path(a.out)) if self.occupancy_arrays else None,
            "timings": {"load_data_s": round(load_data_s, 2), "figure_s": figure_s,
                        "total_s": round(time.perf_counter() - t0, 2)},
            "command": a.command,
        }


def occupancy_arrays_path(out: str) -> Path:
    """Where ``--save-occupancy`` writes, beside the JSON: ``flow_quality_x.json`` -> ``flow_quality_x_occupancy.npz``.

    The file holds ``chunks`` (keys, the JSON's order), ``resolution`` R, ``truth`` and ``seen`` (the true voxels
    and those an evaluation view sees), and per SS entry ``<entry>.pred`` (the scored voxels at the stage's
    threshold) and ``<entry>.prob`` (occupancy probability × 255, uint8): bool grids as ``np.packbits`` of the
    C-order ``[R, R, R]`` grid, ``[n, R³/8]``; probabilities ``[n, R, R, R]``. For analyses of where samples put
    their voxels (offsets, thickness, thresholds) without sampling again.
    """
    p = Path(out)
    return p.with_name(p.stem + "_occupancy.npz")


def headline(results: dict[str, Any]) -> dict[str, float | None]:
    keys = {"ss": ["iou", "fscore_1vox"], "shape": ["chamfer_vox", "fscore", "normal_consistency"],
            "tex": ["psnr_db", "psnr_seen_db", "psnr_hidden_db"]}
    out = {}
    for name, entry in results.items():
        # the SS IoUs on the shape latent grid and at the inference threshold
        pooled = [m for m in entry["metrics"] if m.startswith("iou_")]
        for m in keys[name.split("_")[0]] + pooled:
            out[f"{name}/{m}_mean"] = entry["metrics"][m]["mean"]
    return out


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# ============================================================================ figure
def _look_at(eye: np.ndarray, fov_deg: float = 50.0) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV ``w2c`` looking from ``eye`` at the chunk centre (z up) and normalised intrinsics."""
    fwd = -eye / np.linalg.norm(eye)
    right = np.cross(fwd, np.array([0.0, 0.0, 1.0]))
    right /= np.linalg.norm(right)
    w2c = np.eye(4)
    w2c[:3, :3] = np.stack([right, np.cross(fwd, right), fwd])
    w2c[:3, 3] = -w2c[:3, :3] @ eye
    f = 0.5 / math.tan(math.radians(fov_deg / 2))
    return w2c, np.array([[f, 0.0, 0.5], [0.0, f, 0.5], [0.0, 0.0, 1.0]])


CUT_Z = 0.3  # chunk frame: ~80 % of the chunk height above its bottom (~2.3 m for a 2.85 m chunk)


def _oblique(item: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """From above (~50 degrees down), on the side of the first input camera: the walls it saw face this camera
    too, so they do not hide the chunk's inside."""
    side = np.array([0.6, -0.8])
    if len(item.get("w2c", [])):
        w2c = item["w2c"][0].astype(np.float64)
        centre = -w2c[:3, :3].T @ w2c[:3, 3]
        if np.linalg.norm(centre[:2]) > 1e-6:
            side = centre[:2] / np.linalg.norm(centre[:2])
    return _look_at(np.array([1.25 * side[0], 1.25 * side[1], 1.45]))


def write_figure(bench: Benchmark, path: Path) -> None:
    """Two rows per chunk, rendered on the CPU (Embree) with the sample callback's functions: from the chunk's
    first input view, and from above on the side of that view with everything above ``CUT_Z`` removed.
    Columns: input view | occupancy truth, SS flow (, ablation) | mesh truth, shape VAE round trip, shape
    flow (, ablation) | true mesh coloured by the true O-Voxel, by the texture VAE round trip, by the texture
    flow."""
    from PIL import Image, ImageDraw

    from callbacks.flow_samples import occupancy_mesh, render
    from genrecon.geometry.mesh import PBRMaterial, PBRMesh

    size = bench.args.figure_size
    fig = bench.figure
    order = ("occ_gt", "ss_flow", "ss_flow_ablation", "mesh_gt", "shape_vae_roundtrip", "shape_flow",
             "shape_flow_ablation", "colour_gt", "tex_vae_roundtrip", "tex_flow")
    columns = [c for c in order if c in fig or (c == "colour_gt" and "tex_vae_roundtrip" in fig)]
    titles = {"occ_gt": "occupancy GT", "ss_flow": "SS flow", "ss_flow_ablation": "SS no-proj",
              "mesh_gt": "mesh GT", "shape_vae_roundtrip": "shape VAE", "shape_flow": "shape flow",
              "shape_flow_ablation": "shape no-proj", "colour_gt": "colour GT",
              "tex_vae_roundtrip": "tex VAE", "tex_flow": "texture flow"}

    def plain(v, f, colours=None) -> PBRMesh:
        return PBRMesh(v, f, np.zeros(len(f), np.int32),
                       [PBRMaterial("m", (0.8, 0.8, 0.8) if colours is None else (1.0, 1.0, 1.0))],
                       vertex_color=colours)

    def cutaway(mesh: PBRMesh) -> PBRMesh:
        """Faces below the cut only (the ceiling, if the chunk has one, would hide everything from above)."""
        if mesh.num_faces == 0:
            return mesh
        keep = mesh.vertices[mesh.faces][:, :, 2].mean(1) < CUT_Z
        return PBRMesh(mesh.vertices, mesh.faces[keep], mesh.face_material[keep], mesh.materials,
                       vertex_color=mesh.vertex_color)

    def strip(tiles: list[np.ndarray], captions: list[str]) -> np.ndarray:
        canvas = Image.new("RGB", (size * len(tiles), size + 14), (255, 255, 255))
        canvas.paste(Image.fromarray(np.concatenate(tiles, axis=1)), (0, 14))
        draw = ImageDraw.Draw(canvas)
        for t, text in enumerate(captions):
            draw.text((t * size + 3, 1), text[: size // 6], fill=(0, 0, 0))
        return np.asarray(canvas)

    rows = []
    for i in sorted(bench.figure_chunks):
        if i >= len(bench.chunks):
            break
        chunk, item = bench.chunks[i], bench.items[i]
        gt_mesh = chunk.mesh()
        meshes, captions = [], []
        for c in columns:
            payload = fig.get(c, {}).get(i) if c != "colour_gt" else True
            caption = titles[c]
            if payload is None:
                mesh = plain(np.zeros((0, 3)), np.zeros((0, 3), np.int64))
            elif c == "occ_gt":
                mesh = occupancy_mesh(payload)
            elif c.startswith("ss_flow"):
                mesh = occupancy_mesh(payload[0])
                caption += f" IoU {payload[1]:.2f}"
            elif c == "mesh_gt":
                mesh = plain(payload.vertices, payload.faces)
            elif c.startswith("shape_"):
                m, scores = payload
                mesh = plain(m.vertices, m.faces)
                cd = scores["chamfer_vox"]
                caption += f" CD {cd:.2f} F {scores['fscore']:.2f}" if cd is not None else " (empty)"
            elif c == "colour_gt":
                mesh = plain(gt_mesh.vertices, gt_mesh.faces, chunk.vox.attributes[gt_mesh.voxel_index, :3])
            else:  # tex_flow, tex_vae_roundtrip: the true mesh coloured by the decoded base colour
                rgb, psnr = payload
                mesh = plain(gt_mesh.vertices, gt_mesh.faces, rgb[gt_mesh.voxel_index].clip(0, 1))
                caption += f" {psnr:.1f} dB"
            meshes.append(mesh)
            captions.append(caption)
        if len(item.get("views", [])):
            view = np.asarray(Image.fromarray(item["views"][0][..., :3]).resize((size, size), Image.BILINEAR))
            cameras = [(view, f"{chunk.key} view 0/{chunk.n_views}",
                        item["w2c"][0].astype(np.float64), item["intrinsics"][0].astype(np.float64))]
        else:
            cameras = []
        blank = np.full((size, size, 3), 255, np.uint8)
        cameras.append((blank, f"{chunk.key} above, cut", *_oblique(item)))
        for r, (first, label, w2c, K) in enumerate(cameras):
            above = r == len(cameras) - 1
            tiles = [first] + [render(cutaway(m) if above else m, w2c, K, size) for m in meshes]
            rows.append(strip(tiles, [label] + captions))
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)


# ============================================================================ CLI
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latents", required=True,
                   help="latent shards folder of the encode step (val-*.tar, stats.json)")
    for name in ("ss-vae", "shape-vae", "tex-vae", "ss-flow", "shape-flow", "tex-flow", "ss-flow-ablation",
                 "shape-flow-ablation"):
        p.add_argument(f"--{name}", help=f"{name.replace('-ablation', '')} checkpoint"
                       + (" trained with projection conditioning off" if "ablation" in name else ""))
    p.add_argument("--max-chunks", type=int, default=24)
    p.add_argument("--split", choices=("val", "train"), default="val",
                   help="score the first chunks of this split: val (held out) or train (how far the flows fit)")
    p.add_argument("--views", type=int, default=8, help="views per chunk (the datamodule's eval_views)")
    p.add_argument("--batch-size", type=int, default=4,
                   help="chunks per sampling batch (the noise depends on it)")
    p.add_argument("--samples", type=int, default=100_000, help="surface samples per mesh / texture probe")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--infer-occ-threshold", type=float, default=-1.0,
                   help="also score the SS IoUs at this logit threshold (iou_t<T>): infer.py's occ_threshold, the "
                        "published reconstruct_scene.py default; the main IoU keeps the stage's own (0)")
    p.add_argument("--occ-threshold-sweep", type=float, nargs="+", default=[], metavar="T",
                   help="also score the SS IoUs at each of these logit thresholds (iou_t<T>, iou_<R>_t<T>); for "
                        "the name@pavg entries, logit T is the mean occupancy probability sigmoid(T)")
    p.add_argument("--occ-fraction-sweep", type=float, nargs="+", default=[], metavar="F",
                   help="also score the SS IoUs with each chunk's largest share F of occupancy logits occupied "
                        "(iou_f<F>, iou_<R>_f<F>): a calibration probe")
    p.add_argument("--occ-fraction-oracle", action="store_true",
                   help="also score the SS IoUs with each chunk's own true occupied share of its largest logits "
                        "occupied (iou_ftruth, iou_<R>_ftruth): an upper bound for calibrating the amount")
    p.add_argument("--structure-resolution", type=int, default=None,
                   help="the shape latent grid the SS occupancy is OR-pooled onto for iou_<R> (default: the "
                        "latents' manifest, config.preset.shape_latent_resolution; preset small: 32)")
    p.add_argument("--steps", type=int, default=None,
                   help="sampler steps (default: each stage's own sampler)")
    p.add_argument("--point-keep", type=float, default=None, metavar="SHARE",
                   help="an ss_flow trained with point_depth: score with this share of the seen surface voxels as "
                        "its points (default: the checkpoint's eval_keep)")
    p.add_argument("--point-depth", action="append", default=[], metavar="FIELD=VALUE",
                   help="an ss_flow trained with point_depth: score with this field of its SimulatedPoints changed "
                        "(repeatable), e.g. source=stereo stereo_consistent=1 stereo_refine=true: the stereo points "
                        "of the evaluation views in place of the simulated ones; source=none: no points, the "
                        f"views alone; preset=NAME: the fields of one of {sorted(POINT_PRESETS)}")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16", help="sampling autocast on CUDA")
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--save-occupancy", action="store_true",
                   help="also write the SS grids (truth, seen, each entry's voxels and probabilities) beside --out "
                        "as <out stem>_occupancy.npz, for offline analyses (nothing without --ss-vae)")
    p.add_argument("--figure", help="PNG: truth vs samples for the first --figure-chunks chunks")
    p.add_argument("--figure-chunks", type=int, default=4)
    p.add_argument("--figure-size", type=int, default=192)
    p.add_argument("--cfg-sweep", type=float, nargs="*", default=[],
                   help="also score the SS and texture flows at these guidance strengths (entries name@cfg<g>)")
    p.add_argument("--x0-estimate", action="store_true",
                   help="also score the SS and texture flows sampled in one Euler step, the model's posterior-mean "
                        "estimate (entries name@x0)")
    p.add_argument("--x0-average", type=int, nargs="+", default=[], metavar="K",
                   help="also score the mean of K one-step estimates from K noises, for each K (entries "
                        "name@x0avg<K>, the sampler's draws): a closer estimate of E[x0 | views] than one draw")
    p.add_argument("--sample-average", type=int, nargs="+", default=[], metavar="K",
                   help="also score the mean of K samples of each flow's own sampler, for each K (entries "
                        "name@avg<K>; for the SS flow also name@pavg<K>, the mean of the decoded occupancy "
                        "probabilities, as with --x0-average's name@x0pavg<K>)")
    p.add_argument("--uncond", action="store_true",
                   help="also score the SS and texture flows without the views (zero conditions, as the training's "
                        "guidance dropout; entries name@uncond and, with --x0-estimate, name@x0_uncond)")
    args = p.parse_args(argv)
    args.command = " ".join(["benchmarks/flow_quality.py", *(sys.argv[1:] if argv is None else argv)])
    if args.max_chunks < 1 or args.batch_size < 1 or args.views < 1 or args.samples < 1:
        p.error("--max-chunks, --batch-size, --views and --samples must be positive")
    if any(not 0.0 <= f <= 1.0 for f in args.occ_fraction_sweep):
        p.error("--occ-fraction-sweep takes shares in [0, 1]")
    if args.save_occupancy and not args.out:
        p.error("--save-occupancy writes beside --out: give --out")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    result = Benchmark(args).run()
    emit_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
