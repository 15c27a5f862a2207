"""Texture-VAE learning curve against the block-mean baseline of the same chunks, on the CPU; prints JSON lines.

    python benchmarks/tex_vae_curve.py --shards <root>/synthetic_tiny/shards --steps 600 \
        [--config '{"sample_posterior": false, "lr": 3e-3, "augment": true, "model": {...}}']

Trains a ``TextureVAEStage`` (tiny-preset widths unless ``config.model`` overrides them) with AdamW on random
pairs of training chunks, in plain PyTorch (one thread, no Lightning), and every ``--every`` steps scores the
posterior mean's base colour per occupied cell on the held-out chunks and on the first three training chunks.
The first line gives the baseline measured on the same chunks: one mean colour per latent cell (f³ block), a
code the VAE's 32 channels hold many times over (see ``texture_code_bound.py``). A VAE below that line on
held-out chunks has not yet learnt to pass colour through; above it on training chunks only, it memorises.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import webdataset as wds

from genrecon.data.augment import VoxelAugmentation, augment_voxels
from genrecon.data.batching import ViewSampling, collate, select_fields
from genrecon.data.shards import decode_chunk_sample, shard_urls
from genrecon.stages.sc_vae import TextureVAEStage, feats_at
from genrecon.utils.jsonl import JsonLinesLog

sys.path.insert(0, str(Path(__file__).resolve().parent))
from texture_code_bound import blocks  # a sibling script, importable once its folder is on sys.path

TINY = {"channels": [16, 32, 64], "encoder_blocks": [0, 1, 1], "decoder_blocks": [1, 1, 0]}


def load(shards: str, split: str, limit: int | None = None) -> list[dict]:
    items = []
    for raw in wds.DataPipeline(wds.SimpleShardList(shard_urls(shards, split)), wds.tarfile_to_samples()):
        items.append(select_fields(decode_chunk_sample(raw, views=False), ["ovoxel"], ViewSampling(max_views=1),
                                   np.random.default_rng(0)))
        if limit is not None and len(items) >= limit:
            break
    if not items:
        raise FileNotFoundError(f"no '{split}' chunks in {shards}")
    return items


def block_mean_psnr(items: list[dict], factor: int) -> float:
    """Per-cell base-colour PSNR of one mean colour per ``factor``³ block."""
    err = count = 0.0
    for item in items:
        vox = item["ovoxel"]
        colour = np.asarray(vox.attributes[:, :3], dtype=np.float64)
        grid, _, cell = blocks(np.asarray(vox.coords, dtype=np.int64), colour, factor)
        err += float(((grid.mean(1)[cell[:, 0]] - colour) ** 2).sum())
        count += colour.size
    return float(-10.0 * np.log10(err / count))


@torch.no_grad()
def vae_psnr(model: TextureVAEStage, batch: dict) -> float:
    _, recon = model._step(batch, sample_posterior=False)
    target = feats_at(model._input(batch), recon)
    mse = torch.mean(((recon.feats[:, :3] * 0.5 + 0.5).clamp(0, 1) - (target[:, :3] * 0.5 + 0.5)) ** 2)
    return float(-10.0 * torch.log10(mse))


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", required=True)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--batch", type=int, default=2, help="training chunks per step")
    parser.add_argument("--config", default="{}", help="JSON: lr, sample_posterior, augment, model (kwargs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="also write the JSON lines to this file")
    args = parser.parse_args(argv)
    cfg = json.loads(args.config)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)

    train, val = load(args.shards, "train"), load(args.shards, "val")
    resolution = int(train[0]["ovoxel"].resolution)
    model = TextureVAEStage(resolution=resolution, **{**TINY, **cfg.get("model", {})})
    factor = 2 ** (len(model.decoder.blocks) - 1)
    val_batch, train_batch = collate(val), collate(train[:3])
    log = JsonLinesLog(args.out)
    log.add({"baseline": "block_mean", "factor": factor, "val_psnr": round(block_mean_psnr(val, factor), 2),
             "train_psnr": round(block_mean_psnr(train[:3], factor), 2), "train_chunks": len(train),
             "val_chunks": len(val), "config": cfg})

    opt = torch.optim.AdamW(model.parameters(), lr=float(cfg.get("lr", 1e-3)), weight_decay=0.0)
    augment = VoxelAugmentation() if cfg.get("augment") else None
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    for step in range(args.steps + 1):
        batch = collate([train[i] for i in rng.choice(len(train), min(args.batch, len(train)), replace=False)])
        if augment is not None:
            coords, pbr = augment_voxels(batch["ovoxel_coords"], batch["ovoxel_pbr"], resolution,
                                         torch.Generator().manual_seed(args.seed * 100_003 + step), augment)
            batch = {**batch, "ovoxel_coords": coords, "ovoxel_pbr": pbr}
        losses, _ = model._step(batch, sample_posterior=bool(cfg.get("sample_posterior", True)))
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        opt.step()
        if step % args.every == 0:
            log.add({"step": step, "train_l1": round(float(losses["l1"].detach()), 4),
                     "val_psnr": round(vae_psnr(model, val_batch), 2),
                     "train_psnr": round(vae_psnr(model, train_batch), 2),
                     "seconds": round(time.perf_counter() - t0, 1)})
    return log.close()


if __name__ == "__main__":
    main()
