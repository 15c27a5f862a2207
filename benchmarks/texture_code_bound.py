"""How much base-colour detail can a C-channel code per latent cell keep? A ceiling for the texture VAE; prints JSON.

    python benchmarks/texture_code_bound.py --shards data/synthetic_small/shards [--factor 4] [--max-chunks 64]

The texture VAE stores ``C`` (32) numbers per latent cell, i.e. per ``f³`` block of O-Voxel cells (f = the
shape latent factor, 4 in the small preset). This measures, on held-out chunks and per occupied O-Voxel cell:

* ``block_mean``: every cell gets its f³ block's mean colour (3 numbers per block);
* ``sub_mean``: every cell gets its (f/2)³ sub-block's mean (24 numbers per block at f = 4);
* ``pca_K``: the best *linear* code of K numbers per block, fitted on the training chunks. A block is its
  ``f³ × 3`` colours with empty cells filled by the block mean (so they carry no signal), minus the mean.

Base colour is in [0, 1]. Two PSNRs: over all occupied cells of the held-out chunks, and the texture VAE's own
held-out metric (``benchmarks/vae_quality.py``: trilinear lookups at surface samples, mean over chunks). The texture VAE is non-linear, but on
textures whose fine detail is close to noise a linear code is close to the best a code of that size can do,
so ``pca_32`` is a realistic ceiling for a 32-channel latent at this factor.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import webdataset as wds

from genrecon.data.shards import decode_chunk_sample, shard_urls
from genrecon.geometry.mesh import sample_surface
from genrecon.geometry.ovoxel import OVoxel, ovoxel_to_mesh
from genrecon.pipelines.glb import sample_voxel_attributes


def load_chunks(shards: str, split: str, max_chunks: int) -> list[OVoxel]:
    """Up to ``max_chunks`` O-Voxels of a split (with their PBR attributes)."""
    out = []
    pipe = wds.DataPipeline(wds.SimpleShardList(shard_urls(shards, split)), wds.tarfile_to_samples())
    for raw in pipe:
        if len(out) >= max_chunks:
            break
        sample = decode_chunk_sample(raw, views=False)
        vox = OVoxel.unpack(sample.ovoxel, int(sample.meta["ovoxel_resolution"]))
        if vox.attributes is None:
            raise ValueError(f"chunk {sample.key} in {shards} has no PBR attributes (field 'ovoxel')")
        out.append(vox)
    if not out:
        raise FileNotFoundError(f"no '{split}' chunks in {shards}")
    return out


def _colour(vox: OVoxel) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(vox.coords, dtype=np.int64), np.asarray(vox.attributes[:, :3], dtype=np.float64)


def blocks(coords: np.ndarray, colour: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per f³ block: colours ``[B, f³, 3]`` (empty cells = block mean), occupancy ``[B, f³]`` and each cell's
    (block, slot) index ``[K, 2]``."""
    block_key = coords // factor
    slot = ((coords % factor) * np.array([factor * factor, factor, 1])).sum(1)
    _, block = np.unique(block_key, axis=0, return_inverse=True)
    block = block.reshape(-1)
    n = int(block.max()) + 1
    occupied = np.zeros((n, factor**3), dtype=bool)
    occupied[block, slot] = True
    sums = np.zeros((n, 3))
    np.add.at(sums, block, colour)
    mean = sums / occupied.sum(1, keepdims=True)
    grid = np.repeat(mean[:, None, :], factor**3, axis=1)
    grid[block, slot] = colour
    return grid, occupied, np.stack([block, slot], axis=1)


def sub_block_mean(grid: np.ndarray, occupied: np.ndarray, factor: int) -> np.ndarray:
    """Each cell replaced by the mean of the occupied cells of its (f/2)³ sub-block: ``[B, f³, 3]``."""
    h = factor // 2
    idx = np.stack(np.meshgrid(*[np.arange(factor)] * 3, indexing="ij"), -1).reshape(-1, 3)
    sub = ((idx // h) * np.array([4, 2, 1])).sum(1)  # which of the 8 sub-blocks
    out = np.empty_like(grid)
    for s in range(8):
        cells = sub == s
        w = occupied[:, cells][..., None]
        m = (grid[:, cells] * w).sum(1) / np.maximum(w.sum(1), 1)
        out[:, cells] = m[:, None, :]
    return out


def psnr(mse: float) -> float:
    return float(-10.0 * np.log10(max(mse, 1e-12)))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", required=True)
    parser.add_argument("--factor", type=int, default=4, help="O-Voxel cells per latent cell along an axis")
    parser.add_argument("--max-chunks", type=int, default=64, help="per split")
    parser.add_argument("--codes", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--samples", type=int, default=100_000, help="surface samples per chunk")
    parser.add_argument("--fit-blocks", type=int, default=200_000, help="training blocks for the PCA (sampled)")
    parser.add_argument("--out", help="also write the JSON to this file")
    args = parser.parse_args(argv)
    t0 = time.time()
    f = args.factor

    train = [blocks(*_colour(v), f) for v in load_chunks(args.shards, "train", args.max_chunks)]
    grid = np.concatenate([g for g, _, _ in train]).reshape(-1, f**3 * 3)
    centred = grid - np.tile(grid.reshape(len(grid), f**3, 3).mean(1), f**3)  # block mean removed
    rng = np.random.default_rng(0)
    fit = centred[rng.choice(len(centred), min(len(centred), args.fit_blocks), replace=False)]
    # Principal directions of the mean-free block colours (torch: one LAPACK call, as fast as numpy here).
    _, _, vt = torch.linalg.svd(torch.from_numpy(fit), full_matrices=False)
    basis = vt.numpy()

    names = ["block_mean", "sub_mean", *(f"pca_{k}" for k in args.codes)]
    err = dict.fromkeys(names, 0.0)
    surface: dict[str, list[float]] = {n: [] for n in names}
    cells = 0
    rng = np.random.default_rng(0)
    for vox in load_chunks(args.shards, "val", args.max_chunks):
        coords, colour = _colour(vox)
        g, occ, cell = blocks(coords, colour, f)
        block, slot = cell.T
        mean = g.mean(1, keepdims=True)
        x = (g - mean).reshape(len(g), -1)
        preds = {"block_mean": np.broadcast_to(mean, g.shape), "sub_mean": sub_block_mean(g, occ, f)}
        for k in args.codes:
            b = basis[:k]
            # The block mean is 3 more numbers; the K-number code carries the rest.
            preds[f"pca_{k}"] = ((x @ b.T) @ b).reshape(g.shape) + mean
        # The texture VAE's held-out metric (benchmarks/vae_quality.py): trilinear lookups at surface samples.
        gt_v, gt_f, _ = ovoxel_to_mesh(vox)
        pts, _, _ = sample_surface(gt_v, gt_f, args.samples, rng)
        origin, vs = np.full(3, -0.5), 1.0 / vox.resolution
        truth = sample_voxel_attributes(pts, coords, colour, origin, vs)
        for name, p in preds.items():
            per_cell = np.clip(p[block, slot], 0, 1)
            err[name] += float(((per_cell - colour) ** 2).sum())
            guess = sample_voxel_attributes(pts, coords, per_cell, origin, vs)
            surface[name].append(psnr(float(np.mean((guess - truth) ** 2))))
        cells += len(colour) * 3
    out = {"per_cell_psnr_db": {n: round(psnr(e / cells), 2) for n, e in err.items()},
           "surface_psnr_db_mean_over_chunks": {n: round(float(np.mean(v)), 2) for n, v in surface.items()},
           "factor": f, "train_blocks": len(grid), "val_chunks": len(surface["block_mean"]), "val_cells": cells // 3,
           "seconds": round(time.time() - t0, 1)}
    print(json.dumps(out, indent=1))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(out, fh, indent=1)
    return out


if __name__ == "__main__":
    main()
