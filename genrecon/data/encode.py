"""The encode step: chunk shards + trained VAEs -> latent shards and per-channel latent statistics.

Every chunk sample is copied unchanged into ``<root>/latents/`` (``encode.out_dir``) with one more member,
``latents.safetensors``: ``ss_latent [8, r, r, r]`` (SS-VAE posterior mean), ``shape_coords [L, 3]`` and
``shape_feats [L, 32]`` (shape VAE), ``tex_feats [L, 32]`` on the same coordinates (texture VAE), for the VAEs
that were given. ``stats.json`` next to the shards holds each latent's per-channel mean and std over the
training split, which the flow stages use to normalise.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from genrecon.data.batching import ViewSampling, collate, select_fields
from genrecon.data.shards import AtomicShardWriter, decode_chunk_sample, encode_safetensors, shard_urls


class ChannelStats:
    """Running per-channel mean and std (float64 sums) of ``[M, C]`` rows."""

    def __init__(self) -> None:
        self.n = 0
        self.sum: np.ndarray | None = None
        self.sq: np.ndarray | None = None

    def update(self, rows: np.ndarray) -> None:
        rows = rows.astype(np.float64)
        if self.sum is None:
            self.sum, self.sq = np.zeros(rows.shape[1]), np.zeros(rows.shape[1])
        self.n += len(rows)
        self.sum += rows.sum(0)
        self.sq += (rows**2).sum(0)

    def result(self) -> dict[str, list[float]]:
        mean = self.sum / max(self.n, 1)
        std = np.sqrt(np.maximum(self.sq / max(self.n, 1) - mean**2, 0.0))
        return {"mean": mean.tolist(), "std": std.tolist(), "count": self.n}


def _raw_samples(urls: list[str]) -> Iterator[dict[str, Any]]:
    import webdataset as wds

    yield from wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples())


def _batches(urls: list[str], batch_size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for raw in _raw_samples(urls):
        batch.append(raw)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _load_stage(stage: str, ckpt: str | None, device: torch.device):
    from genrecon.stages.loading import load_stage

    return load_stage(ckpt, expected_stage=stage, device=device) if ckpt else None


@torch.no_grad()
def encode_batch(raws: list[dict[str, Any]], ss_vae, shape_vae, tex_vae, device: torch.device) -> list[dict]:
    """Latent arrays of each raw sample (see the module docstring for the keys)."""
    fields = (["occupancy"] if ss_vae is not None else []) + (["ovoxel"] if shape_vae is not None else [])
    rng = np.random.default_rng(0)
    items = [select_fields(decode_chunk_sample(r, views=False), fields, ViewSampling(), rng) for r in raws]
    batch = collate(items)
    out: list[dict[str, np.ndarray]] = [{} for _ in raws]
    if ss_vae is not None:
        z = ss_vae.encode(batch["occupancy"].to(device)).float().cpu().numpy()
        for i in range(len(raws)):
            out[i]["ss_latent"] = z[i]
    if shape_vae is not None:
        coords, feats = shape_vae.encode(batch, device)
        tex = tex_vae.encode(batch, device, coords) if tex_vae is not None else None
        bidx = coords[:, 0]
        for i in range(len(raws)):
            sel = bidx == i
            out[i]["shape_coords"] = coords[sel, 1:].astype(np.uint16)
            out[i]["shape_feats"] = feats[sel].astype(np.float32)
            if tex is not None:
                out[i]["tex_feats"] = tex[sel].astype(np.float32)
    return out


def encode_dataset(
    root: str | Path,
    ss_vae_ckpt: str | None = None,
    shape_vae_ckpt: str | None = None,
    tex_vae_ckpt: str | None = None,
    device: str = "auto",
    batch_size: int = 8,
    samples_per_shard: int = 32,
    out_dir: str = "latents",
) -> dict[str, Any]:
    """Write ``<root>/<out_dir>/{train,val}-*.tar`` and ``stats.json`` from ``<root>/shards``.

    ``out_dir`` (a folder name inside ``root``): latents of another VAE beside the default ``latents``, so two
    VAEs' flows can be compared on the same chunks.
    """
    if Path(out_dir).name != out_dir or out_dir in ("", ".", "..", "shards", "scenes"):
        raise ValueError(f"encode.out_dir: {out_dir!r} is not a folder name inside the dataset root other than "
                         "shards and scenes")
    if not any((ss_vae_ckpt, shape_vae_ckpt)):
        raise ValueError("encode: give at least encode.ss_vae_ckpt or encode.shape_vae_ckpt")
    if tex_vae_ckpt and not shape_vae_ckpt:
        raise ValueError("encode.tex_vae_ckpt needs encode.shape_vae_ckpt: texture latents live on its coordinates")
    root = Path(root)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else "cpu" if device == "auto" else device)
    ss_vae = _load_stage("ss_vae", ss_vae_ckpt, dev)
    shape_vae = _load_stage("shape_vae", shape_vae_ckpt, dev)
    tex_vae = _load_stage("tex_vae", tex_vae_ckpt, dev)
    out = root / out_dir
    shutil.rmtree(out, ignore_errors=True)
    stats = {name: ChannelStats() for name in ("ss", "shape", "tex")}
    counts = {}
    for split in ("train", "val"):
        urls = shard_urls(root / "shards", split)
        with AtomicShardWriter(out, split, samples_per_shard) as writer:
            for raws in tqdm(_batches(urls, batch_size), desc=f"encode {split}", unit="batch"):
                for raw, latents in zip(raws, encode_batch(raws, ss_vae, shape_vae, tex_vae, dev)):
                    if split == "train":
                        if "ss_latent" in latents:
                            z = latents["ss_latent"]
                            stats["ss"].update(z.reshape(z.shape[0], -1).T)
                        if "shape_feats" in latents:
                            stats["shape"].update(latents["shape_feats"])
                        if "tex_feats" in latents:
                            stats["tex"].update(latents["tex_feats"])
                    sample = {k: v for k, v in raw.items() if not k.startswith("__")}
                    sample["__key__"] = raw["__key__"]
                    sample["latents.safetensors"] = encode_safetensors(latents)
                    writer.write(sample)
            counts[split] = writer.count
    result = {name: s.result() for name, s in stats.items() if s.n}
    (out / "stats.json").write_text(json.dumps(result, indent=1))
    manifest_path = root / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    manifest["latents"] = {"samples": counts, "vaes": {"ss": ss_vae_ckpt, "shape": shape_vae_ckpt, "tex": tex_vae_ckpt}}
    (out / "manifest.json").write_text(json.dumps({**manifest, "samples": counts}, indent=1))
    return {"samples": counts, "stats": result}
