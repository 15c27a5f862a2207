"""Per-sample transforms and collation from decoded chunk samples to the batches the stages consume.

Batch keys (tensors unless noted; B = batch, N = views, S = view size, R = occupancy resolution, K = voxels in
batch):

| key | shape | from field |
|---|---|---|
| ``occupancy`` | ``[B, 1, R, R, R]`` float | ``occupancy`` |
| ``ovoxel_coords`` | ``[K, 4]`` int32 (batch, x, y, z) | ``ovoxel`` |
| ``ovoxel_token_offsets`` | tuple of B+1 ints: sample b = rows ``o[b]:o[b+1]`` of ``ovoxel_*`` | ``ovoxel`` |
| ``ovoxel_shape`` | ``[K, 6]`` float (offset − 0.5, flags − 0.5) | ``ovoxel`` |
| ``ovoxel_flags`` | ``[K, 3]`` float in {0, 1} | ``ovoxel`` |
| ``ovoxel_offset`` | ``[K, 3]`` float in [0, 1] | ``ovoxel`` |
| ``ovoxel_pbr`` | ``[K, 6]`` float in [0, 1] | ``ovoxel`` |
| ``views`` | ``[B, N, 3, S, S]`` float in [0, 1], premultiplied | ``views`` |
| ``w2c`` / ``intrinsics`` | ``[B, N, 4, 4]`` / ``[B, N, 3, 3]``; padded views are all zeros | ``views`` |
| ``view_mask`` | ``[B, N]`` bool | ``views`` |
| ``view_counts`` | tuple of B ints: sample b's real views are ``views[b, :view_counts[b]]`` | ``views`` |
| ``ss_latent`` | ``[B, 8, r, r, r]`` float | ``ss_latent`` |
| ``shape_coords`` / ``shape_feats`` | ``[K, 4]`` int32 / ``[K, C]`` float | ``shape_latent`` |
| ``shape_token_offsets`` | tuple of B+1 ints: sample b = rows ``o[b]:o[b+1]`` of ``shape_*``, ``tex_feats`` | ``shape_latent`` |
| ``tex_feats`` | ``[K, C]`` float on ``shape_coords`` | ``tex_latent`` |

Plus ``keys`` (list of sample keys) and ``ovoxel_resolution`` (int) where present. ``view_counts`` and the
``*_token_offsets`` are host-side copies of ``view_mask`` (real views first) and of the packing (``coords[:, 0]``
counted per sample): with them the flow stages gather views and build the packed layout without reading
anything back from the device. Lightning moves tensors only and leaves these tuples as they are (DataLoader
pinning would turn them into lists).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info

from genrecon.data.shards import ChunkSample

FIELDS = ("occupancy", "ovoxel", "views", "ss_latent", "shape_latent", "tex_latent")


@dataclass
class ViewSampling:
    """Per-sample view sampling as published: n ~ U{1..max_views}, without replacement, among the views whose
    projected chunk box covers at least ``min_coverage`` of the image.

    ``min_voxel_share > 0`` (a deviation, off by default) also requires that the chunk's occupied voxels
    project onto at least that share of the view's pixels (:func:`genrecon.geometry.cameras.voxel_view_share`):
    on synthetic rooms 13 % of the views that pass the box rule show the chunk on under 5 % of their pixels.
    """

    max_views: int = 16
    min_coverage: float = 0.4
    fixed_count: int | None = None  # evaluation: always this many views (fewer if not available)
    min_voxel_share: float = 0.0

    def choose(
        self, coverage: np.ndarray, rng: np.random.Generator, voxel_share: np.ndarray | None = None
    ) -> np.ndarray:
        ok = coverage >= self.min_coverage
        if self.min_voxel_share > 0:
            if voxel_share is None:
                raise ValueError("min_voxel_share > 0 needs each view's voxel share (voxel_view_share)")
            ok &= voxel_share >= self.min_voxel_share
        eligible = np.nonzero(ok)[0]
        if eligible.size == 0:
            return eligible
        if self.fixed_count is not None:
            n = min(self.fixed_count, eligible.size)
        else:
            n = int(rng.integers(1, min(self.max_views, eligible.size) + 1))
        return np.sort(rng.choice(eligible, size=n, replace=False))


def select_fields(sample: ChunkSample, fields: Sequence[str], views: ViewSampling, rng: np.random.Generator) -> dict:
    """One sample's arrays for the requested ``fields`` (numpy, unbatched)."""
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown batch fields {sorted(unknown)}; known: {FIELDS}")
    out: dict[str, Any] = {"key": sample.key}
    if "occupancy" in fields:
        out["occupancy"] = sample.occupancy
    if "ovoxel" in fields:
        from genrecon.geometry.ovoxel import OVoxel

        vox = OVoxel.unpack(sample.ovoxel, int(sample.meta["ovoxel_resolution"]))
        out["ovoxel"] = vox
    if "views" in fields:
        share = None
        if views.min_voxel_share > 0:
            from genrecon.geometry.cameras import voxel_view_share

            share = voxel_view_share(sample.occupancy, sample.w2c, sample.intrinsics)
        idx = views.choose(sample.coverage, rng, share)
        out["views"] = sample.views[idx]
        out["w2c"] = sample.w2c[idx]
        out["intrinsics"] = sample.intrinsics[idx]
    for name in ("ss_latent", "shape_latent", "tex_latent"):
        if name in fields:
            if not sample.latents:
                raise KeyError(f"sample {sample.key} has no latents: run the encode step of prepare.py first")
            out[name] = sample.latents
    return out


def sample_parts(fields: Sequence[str], views: ViewSampling | None = None) -> tuple[str, ...]:
    """The payloads (:data:`genrecon.data.shards.DECODABLE_PARTS`) that :func:`select_fields` reads for
    ``fields`` with view sampling ``views``: the loader decodes only these (views are decoded lazily, the
    selected ones only)."""
    parts = []
    voxel_rule = "views" in fields and views is not None and views.min_voxel_share > 0
    if "occupancy" in fields or voxel_rule:
        parts.append("occupancy")
    if "ovoxel" in fields:
        parts.append("ovoxel")
    if any(name in fields for name in ("ss_latent", "shape_latent", "tex_latent")):
        parts.append("latents")
    return tuple(parts)


def _empty(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised batch tensor. In a DataLoader worker it is allocated in shared memory, as
    ``default_collate`` does: otherwise the worker copies every tensor of the batch into shared memory again
    when it sends the batch (about 0.1 s per ``[8, 16, 3, 256, 256]`` views tensor)."""
    shape = tuple(int(x) for x in shape)
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    numel = int(np.prod(shape, dtype=np.int64))
    try:  # private API (default_collate uses its typed twin); fall back to a public path if it ever changes
        storage = torch.UntypedStorage._new_shared(numel * torch.empty((), dtype=dtype).element_size())
    except (AttributeError, TypeError, RuntimeError):
        return torch.empty(shape, dtype=dtype).share_memory_()
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape)


def _zeros(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    out = _empty(shape, dtype)
    out.zero_()
    return out


def _cat_rows(parts: list[np.ndarray], dtype: torch.dtype) -> torch.Tensor:
    """``torch.from_numpy(np.concatenate(parts)).to(dtype)`` without the intermediate arrays (same values:
    numpy's cast on assignment rounds like ``Tensor.to``)."""
    rows = sum(len(p) for p in parts)
    out = _empty((rows, *parts[0].shape[1:]), dtype)
    arr = out.numpy()
    o = 0
    for p in parts:
        arr[o : o + len(p)] = p
        o += len(p)
    return out


def _pad_views(items: list[dict]) -> dict[str, Any]:
    n_max = max(1, max(len(it["views"]) for it in items))
    b = len(items)
    size = items[0]["views"].shape[1] if len(items[0]["views"]) else 1
    views = _empty((b, n_max, 3, size, size), torch.float32)
    w2c = _zeros((b, n_max, 4, 4), torch.float32)
    intr = _zeros((b, n_max, 3, 3), torch.float32)
    mask = _zeros((b, n_max), torch.bool)
    va, wa, ia = views.numpy(), w2c.numpy(), intr.numpy()
    for i, it in enumerate(items):
        n = len(it["views"])
        va[i, n:] = 0
        if n == 0:
            continue
        # [n, S, S, 4] uint8, already premultiplied -> [n, 3, S, S] float32 / 255, written in place (the
        # float32 division by 255 is correctly rounded, so this equals ``tensor.float() / 255.0``)
        rgb = np.moveaxis(np.asarray(it["views"])[..., :3], -1, 1)
        np.divide(rgb, np.float32(255.0), out=va[i, :n], dtype=np.float32)
        wa[i, :n] = it["w2c"]
        ia[i, :n] = it["intrinsics"]
        mask[i, :n] = True
    counts = tuple(len(it["views"]) for it in items)
    return {"views": views, "w2c": w2c, "intrinsics": intr, "view_mask": mask, "view_counts": counts}


def token_offsets(lengths: Sequence[int]) -> tuple[int, ...]:
    """Per-sample token counts -> offsets (0, n0, n0 + n1, ..., K) of the packed rows."""
    offsets = [0]
    for n in lengths:
        offsets.append(offsets[-1] + int(n))
    return tuple(offsets)


def _sparse_batch(coords_list: list[np.ndarray], feats_list: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed ``[K, 4]`` int32 (batch, x, y, z) coordinates and ``[K, C]`` float32 features."""
    rows = sum(len(c) for c in coords_list)
    coords = _empty((rows, 4), torch.int32)
    arr = coords.numpy()
    o = 0
    for i, c in enumerate(coords_list):
        arr[o : o + len(c), 0] = i
        arr[o : o + len(c), 1:] = c.astype(np.int32, copy=False)
        o += len(c)
    return coords, _cat_rows(feats_list, torch.float32)


def collate(items: list[dict]) -> dict[str, Any]:
    """Stack a list of :func:`select_fields` outputs into one batch (see the module docstring for keys)."""
    batch: dict[str, Any] = {"keys": [it["key"] for it in items]}
    first = items[0]
    if "occupancy" in first:
        batch["occupancy"] = _cat_rows([it["occupancy"][None] for it in items], torch.float32).unsqueeze(1)
    if "ovoxel" in first:
        voxels = [it["ovoxel"] for it in items]
        coords, shape = _sparse_batch([v.coords for v in voxels], [v.shape_features() for v in voxels])
        batch["ovoxel_coords"] = coords
        batch["ovoxel_token_offsets"] = token_offsets([len(v.coords) for v in voxels])
        batch["ovoxel_shape"] = shape
        batch["ovoxel_flags"] = _cat_rows([v.intersected for v in voxels], torch.float32)
        batch["ovoxel_offset"] = _cat_rows([v.vertex_offset for v in voxels], torch.float32)
        if all(v.attributes is not None for v in voxels):
            batch["ovoxel_pbr"] = _cat_rows([v.attributes for v in voxels], torch.float32)
        batch["ovoxel_resolution"] = int(voxels[0].resolution)
    if "views" in first:
        batch.update(_pad_views(items))
    if "ss_latent" in first:
        batch["ss_latent"] = _cat_rows([it["ss_latent"]["ss_latent"][None] for it in items], torch.float32)
    if "shape_latent" in first:
        coords, feats = _sparse_batch(
            [it["shape_latent"]["shape_coords"] for it in items], [it["shape_latent"]["shape_feats"] for it in items]
        )
        batch["shape_coords"], batch["shape_feats"] = coords, feats
        lengths = [len(it["shape_latent"]["shape_coords"]) for it in items]
        batch["shape_token_offsets"] = token_offsets(lengths)
    if "tex_latent" in first:
        batch["tex_feats"] = _cat_rows([it["tex_latent"]["tex_feats"] for it in items], torch.float32)
    return batch
