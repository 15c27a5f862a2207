"""How much do the views' colour statistics say about a chunk's occupancy? A learned per-voxel probe.

Question behind it (issue 5): the sparse-structure flow must place thin surfaces to one 64³ voxel from 8 posed
views. Is that information in simple multi-view cues at all, or only in learned image features? For every
voxel of every chunk this computes the photo-consistency statistics of ``genrecon.models.photo_consistency``
(mean colour, colour spread and coverage over the views that see the voxel centre) of the voxel and its six
face neighbours, then trains one small MLP on the training chunks and scores occupancy IoU on the held-out
ones. The baseline, measured in the same run, is the same MLP on the voxel's position only (the prior: floor,
ceiling, walls).

    python benchmarks/occupancy_cue_probe.py --shards data/synthetic_small/shards [--views 8] [--out probe.json]

Prints one JSON object: per feature set the train IoU (at the threshold that maximises it), the held-out IoU
per chunk and its mean.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import webdataset as wds

from genrecon.data.batching import ViewSampling, collate, select_fields
from genrecon.data.shards import decode_chunk_sample, shard_urls
from genrecon.models.photo_consistency import STATS_PER_POINT, PhotoConsistency
from genrecon.models.projection import voxel_centers
from genrecon.utils.jsonl import emit_json

Chunk = tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]  # key, stats [V, 35], position [V, 3], occupancy [V]


def chunk_features(shards: str, split: str, views: int, rng: np.random.Generator,
                   max_chunks: int | None = None) -> Iterator[Chunk]:
    """Per-voxel statistics of the voxel and its 6 face neighbours ``[R³, 35]``, position and occupancy."""
    stream = wds.DataPipeline(wds.SimpleShardList(shard_urls(shards, split)), wds.tarfile_to_samples())
    for k, raw in enumerate(stream):
        if max_chunks is not None and k >= max_chunks:
            return
        sample = decode_chunk_sample(raw)
        batch = collate([select_fields(sample, ["occupancy", "views"],
                                       ViewSampling(max_views=views, fixed_count=views), rng)])
        occ = batch["occupancy"][0, 0].float()
        r = occ.shape[0]
        points = voxel_centers(r)
        cue = PhotoConsistency(resolution=r, cond_channels=1, subdivisions=1)
        stats = cue.statistics(batch["views"], points, torch.zeros(len(points), dtype=torch.long), batch["w2c"],
                               batch["intrinsics"], batch["view_mask"])
        grid = stats.view(r, r, r, STATS_PER_POINT).permute(3, 0, 1, 2)  # [5, R, R, R]
        shifted = [grid] + [torch.roll(grid, d, axis) for axis in (1, 2, 3) for d in (-1, 1)]
        feats = torch.cat(shifted).reshape(7 * STATS_PER_POINT, -1).T
        yield sample.key, feats, points + 0.5, occ.flatten()


def fit_and_score(train: list[Chunk], val: list[Chunk], make_x: Callable[[Chunk], torch.Tensor],
                  steps: int, seed: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    x = torch.cat([make_x(c) for c in train])
    y = torch.cat([c[3] for c in train])
    mu, sd = x.mean(0), x.std(0).clamp(min=1e-6)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 128), torch.nn.ReLU(), torch.nn.Linear(128, 128),
                              torch.nn.ReLU(), torch.nn.Linear(128, 1))
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    pos_weight = ((1 - y.mean()) / y.mean().clamp(min=1e-6)).sqrt()  # occupancy is ~7 %: lift recall
    for _ in range(steps):
        idx = torch.randint(0, len(x), (65536,))
        loss = F.binary_cross_entropy_with_logits(net((x[idx] - mu) / sd)[:, 0], y[idx], pos_weight=pos_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()

    @torch.no_grad()
    def ious(chunks: list[Chunk], threshold: float) -> list[float]:
        out = []
        for c in chunks:
            pred = torch.sigmoid(net((make_x(c) - mu) / sd)[:, 0]) > threshold
            truth = c[3].bool()
            out.append(float((pred & truth).sum() / (pred | truth).sum().clamp(min=1)))
        return out

    train_iou, threshold = max((float(np.mean(ious(train, t))), t) for t in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9))
    held = ious(val, threshold)
    return {"train_iou": round(train_iou, 4), "threshold": threshold, "heldout_iou_mean": round(float(np.mean(held)), 4),
            "heldout_iou": [round(v, 4) for v in held]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", required=True, help="chunk shards with occupancy and views (prepare.py build)")
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--steps", type=int, default=300, help="probe training steps (65k voxels each)")
    p.add_argument("--max-chunks", type=int, default=None, help="per split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out")
    args = p.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    train = list(chunk_features(args.shards, "train", args.views, rng, args.max_chunks))
    val = list(chunk_features(args.shards, "val", args.views, rng, args.max_chunks))
    if not train or not val:
        raise SystemExit(f"{args.shards}: need train and val chunks, found {len(train)} and {len(val)}")
    result = {
        "shards": args.shards, "views": args.views, "chunks": {"train": len(train), "val": [c[0] for c in val]},
        "occupied_fraction_val": [round(float(c[3].mean()), 4) for c in val],
        "position_only": fit_and_score(train, val, lambda c: c[2], args.steps, args.seed),
        "photo_stats_and_position": fit_and_score(train, val, lambda c: torch.cat([c[1], c[2]], 1), args.steps,
                                                  args.seed),
    }
    emit_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
