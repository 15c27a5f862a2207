"""Held-out quality of the three VAEs on the validation chunks of a prepared dataset; prints JSON.

    python benchmarks/vae_quality.py --shards data/synthetic_small/shards \
        --ss-vae ss.ckpt --shape-vae shape.ckpt --tex-vae tex.ckpt [--max-chunks 24]

* SS-VAE: IoU of the decoded posterior mean (logit > 0) against the occupancy grid.
* Shape VAE: the free-running decode (predicted subdivisions) is meshed by dual contouring and compared with
  the ground-truth O-Voxel mesh: Chamfer (mean of both directional mean distances) and normal consistency
  (mean |n·n'| both ways) on 100k area-uniform samples each; distances in voxel edges.
* Texture VAE: decoded with the encoder's subdivisions so both live on the true voxels; base colour is
  looked up (sparse trilinear) at 100k samples of the ground-truth surface in both volumes: PSNR in dB. Beside it,
  ``tex_block_mean_psnr_db``: the same measure for the trivial code, each voxel given the mean base colour of its
  latent cell (what the ``mean_shortcut`` decoder starts from), so a reader sees whether the VAE beats it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from scipy.spatial import cKDTree

from genrecon.data.batching import ViewSampling, collate, select_fields
from genrecon.data.shards import decode_chunk_sample, shard_urls
from genrecon.geometry.mesh import sample_surface
from genrecon.geometry.ovoxel import OVoxel, ovoxel_to_mesh
from genrecon.metrics.image import array_psnr
from genrecon.modules.sparse.tensor import SparseTensor
from genrecon.pipelines.glb import sample_voxel_attributes
from genrecon.stages.loading import load_stage
from genrecon.stages.sc_vae import TextureVAEStage
from genrecon.metrics.occupancy import occupancy_iou


def _normals(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    return n / np.linalg.norm(n, axis=1, keepdims=True).clip(1e-12)


def surface_agreement(a_v, a_f, b_v, b_f, n: int, rng: np.random.Generator) -> tuple[float, float]:
    """(Chamfer, normal consistency) of two meshes on ``n`` samples each."""
    pa, fa, _ = sample_surface(a_v, a_f, n, rng)
    pb, fb, _ = sample_surface(b_v, b_f, n, rng)
    na, nb = _normals(a_v, a_f)[fa], _normals(b_v, b_f)[fb]
    da, ia = cKDTree(pb).query(pa)
    db, ib = cKDTree(pa).query(pb)
    chamfer = 0.5 * (da.mean() + db.mean())
    nc = 0.5 * (np.abs((na * nb[ia]).sum(1)).mean() + np.abs((nb * na[ib]).sum(1)).mean())
    return float(chamfer), float(nc)


def latent_cell_mean(coords: np.ndarray, values: np.ndarray, factor: int) -> np.ndarray:
    """``values [N, C]`` of voxels ``coords [N, 3]`` replaced by their mean over each ``factor``³ latent cell."""
    _, cell, count = np.unique(np.asarray(coords) // factor, axis=0, return_inverse=True, return_counts=True)
    cell = cell.reshape(-1)
    values = np.asarray(values, dtype=np.float64)
    total = np.zeros((len(count), values.shape[1]))
    np.add.at(total, cell, values)
    return (total / count[:, None])[cell].astype(np.float32)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", required=True)
    parser.add_argument("--ss-vae")
    parser.add_argument("--shape-vae")
    parser.add_argument("--tex-vae")
    parser.add_argument("--max-chunks", type=int, default=64)
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--out", help="also write the JSON to this file")
    args = parser.parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    load = lambda name, p: load_stage(p, expected_stage=name, device=device) if p else None  # noqa: E731
    ss, shape, tex = load("ss_vae", args.ss_vae), load("shape_vae", args.shape_vae), load("tex_vae", args.tex_vae)
    rng = np.random.default_rng(0)
    res: dict[str, list[float]] = {"ss_iou": [], "shape_chamfer_vox": [], "shape_nc": [], "tex_psnr_db": [],
                                   "tex_block_mean_psnr_db": []}
    start = time.perf_counter()
    samples = wds.DataPipeline(wds.SimpleShardList(shard_urls(args.shards, "val")), wds.tarfile_to_samples())
    for k, raw in enumerate(samples):
        if k >= args.max_chunks:
            break
        sample = decode_chunk_sample(raw, views=False)
        batch = collate([select_fields(sample, ["occupancy", "ovoxel"], ViewSampling(), rng)])
        vox: OVoxel = OVoxel.unpack(sample.ovoxel, int(sample.meta["ovoxel_resolution"]))
        R = vox.resolution
        with torch.no_grad():
            if ss is not None:
                occ = batch["occupancy"].to(device)
                logits = ss.decoder(ss.encode(occ))
                res["ss_iou"].append(float(occupancy_iou(logits, occ).mean()))
            gt_v, gt_f, _ = ovoxel_to_mesh(vox)
            if shape is not None:
                coords, feats = shape.encode(batch, device)
                latent = SparseTensor(torch.as_tensor(coords, device=device), torch.as_tensor(feats, device=device))
                recon, _ = shape.decode(latent)
                c, f = recon.coords[:, 1:].cpu().numpy(), recon.feats.float().cpu().numpy()
                pv, pf, _ = ovoxel_to_mesh(coords=c, vertex_offset=f[:, :3], intersected=f[:, 3:6] > 0,
                                           resolution=R, split_weight=f[:, 6])
                if len(pf):
                    cd, nc = surface_agreement(pv, pf, gt_v, gt_f, args.samples, rng)
                    res["shape_chamfer_vox"].append(cd * R)
                    res["shape_nc"].append(nc)
            if tex is not None and vox.attributes is not None:
                x = TextureVAEStage._input(batch, device)
                post = tex.encoder(x, sample_posterior=False)
                out = tex.decoder(post.mean, guide_subs=post.subs)
                pred = (out.feats.float() * 0.5 + 0.5).clamp(0, 1).cpu().numpy()
                pts, _, _ = sample_surface(gt_v, gt_f, args.samples, rng)
                origin, vs = np.full(3, -0.5), 1.0 / R
                a = sample_voxel_attributes(pts, out.coords[:, 1:].cpu().numpy(), pred[:, :3], origin, vs)
                b = sample_voxel_attributes(pts, vox.coords, vox.attributes[:, :3], origin, vs)
                res["tex_psnr_db"].append(array_psnr(a, b))
                cell_colour = latent_cell_mean(vox.coords, vox.attributes[:, :3], tex.encoder.factor)
                res["tex_block_mean_psnr_db"].append(
                    array_psnr(sample_voxel_attributes(pts, vox.coords, cell_colour, origin, vs), b))
    summary = {k: {"mean": float(np.mean(v)), "min": float(np.min(v)), "n": len(v)} for k, v in res.items() if v}
    summary["seconds"] = round(time.perf_counter() - start, 1)
    summary["device"] = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(json.dumps(summary, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")
    return summary


if __name__ == "__main__":
    main()
