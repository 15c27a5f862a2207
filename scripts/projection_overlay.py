"""Check that a chunk's cameras and voxels agree: splat the occupied voxels into the stored views.

    python scripts/projection_overlay.py --shards <root>/synthetic_small/shards --chunks 3 --views 4 \
        --out overlay.png

One row per view: the stored image, the depth of the nearest occupied voxel under each pixel (brighter =
farther; black = no voxel), and the two blended. If the frames agree, the splats sit on the rendered
surfaces. Each voxel is splatted as 4³ points, so the depth image has no holes at the grid's resolution.

``--coverage`` instead prints JSON: over every stored view of the split's chunks, the share of a 32×32 pixel
grid onto which some occupied voxel centre of the chunk projects (``voxel_view_share``, the measure of the
datamodule's ``min_voxel_share`` rule; occlusion by geometry outside the chunk is not removed, so an upper
bound on what the view shows of the chunk).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from genrecon.data.batching import ViewSampling, collate, select_fields
from genrecon.data.shards import decode_chunk_sample, shard_urls
from genrecon.geometry.cameras import MIN_DEPTH, project_points, voxel_view_share
from genrecon.models.projection import voxel_centers


def voxel_depth(points: torch.Tensor, w2c: torch.Tensor, K: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Nearest camera depth ``[H, W]`` of ``points [P, 3]`` (chunk frame) seen from one OpenCV camera with
    normalised intrinsics; ``inf`` where no point lands."""
    uv, z = project_points(points, w2c, K)
    u, v = uv[:, 0] * width, uv[:, 1] * height
    inside = (z > MIN_DEPTH) & (u >= 0) & (u < width) & (v >= 0) & (v < height)
    depth = torch.full((height * width,), float("inf"))
    depth.scatter_reduce_(0, v[inside].long() * width + u[inside].long(), z[inside], "amin")
    return depth.view(height, width)


def overlay_rows(batch: dict, sub: int = 4) -> list[np.ndarray]:
    """``[H, 3W, 3]`` float images (view | voxel depth | blend) for every view of a one-chunk batch."""
    occ = batch["occupancy"][0, 0]
    r = occ.shape[0]
    centres = voxel_centers(r)[occ.flatten().bool()]
    axis = (torch.arange(sub, dtype=torch.float32) + 0.5) / sub - 0.5
    offsets = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3) / r
    points = (centres[:, None] + offsets[None]).reshape(-1, 3)
    rows = []
    views = batch["views"][0]
    for i in range(int(batch["view_mask"][0].sum())):
        _, h, w = views[i].shape
        depth = voxel_depth(points, batch["w2c"][0, i], batch["intrinsics"][0, i], h, w)
        seen = torch.isfinite(depth)
        shade = torch.zeros(h, w)
        if seen.any():
            d = depth[seen]
            shade[seen] = 0.25 + 0.75 * (d - d.min()) / (d.max() - d.min() + 1e-6)
        image = views[i].permute(1, 2, 0).clamp(0, 1)
        splat = shade[..., None].expand(h, w, 3)
        rows.append(torch.cat([image, splat, 0.5 * image + 0.5 * splat], dim=1).numpy())
    return rows


def _chunks(shards: str, split: str):
    yield from wds.DataPipeline(wds.SimpleShardList(shard_urls(shards, split)), wds.tarfile_to_samples())


def view_coverage(shards: str, split: str, max_chunks: int) -> dict:
    """Summary of :func:`genrecon.geometry.cameras.voxel_view_share` (the measure of the datamodule's
    ``min_voxel_share`` rule) over every stored view of up to ``max_chunks`` chunks."""
    shares = []
    chunks = 0
    for raw in _chunks(shards, split):
        if chunks >= max_chunks:
            break
        chunks += 1
        sample = decode_chunk_sample(raw, views=False)
        shares.extend(voxel_view_share(sample.occupancy, sample.w2c, sample.intrinsics).tolist())
    if not shares:
        raise FileNotFoundError(f"no '{split}' views in {shards}")
    a = np.asarray(shares)
    return {"chunks": chunks, "views": len(a), "median_share": round(float(np.median(a)), 3),
            "views_below_5pct": round(float((a < 0.05).mean()), 3),
            "views_below_20pct": round(float((a < 0.2).mean()), 3)}


def main(argv: list[str] | None = None) -> Path | dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--chunks", type=int, default=3)
    parser.add_argument("--views", type=int, default=4, help="views per chunk (the first ones with coverage)")
    parser.add_argument("--out", type=Path, default=Path("projection_overlay.png"))
    parser.add_argument("--coverage", action="store_true", help="print view coverage statistics (JSON) instead")
    parser.add_argument("--max-chunks", type=int, default=1000, help="with --coverage")
    args = parser.parse_args(argv)
    if args.coverage:
        stats = view_coverage(args.shards, args.split, args.max_chunks)
        print(json.dumps(stats))
        return stats
    rng = np.random.default_rng(0)
    columns = []
    for raw in _chunks(args.shards, args.split):
        if len(columns) >= args.chunks:
            break
        sample = decode_chunk_sample(raw)
        batch = collate([select_fields(sample, ["views", "occupancy"],
                                       ViewSampling(max_views=args.views, fixed_count=args.views), rng)])
        columns.append(np.concatenate(overlay_rows(batch), axis=0))
    if not columns:
        raise FileNotFoundError(f"no '{args.split}' chunks in {args.shards}")
    height = max(c.shape[0] for c in columns)
    columns = [np.pad(c, ((0, height - c.shape[0]), (0, 4), (0, 0)), constant_values=1.0) for c in columns]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.concatenate(columns, axis=1) * 255).astype(np.uint8)).save(args.out)
    print(args.out)
    return args.out


if __name__ == "__main__":
    main()
