"""How much base colour can the projection pathway read from the views? A probe of the texture flow's conditioning.

    python benchmarks/view_colour_probe.py --shards <root>/synthetic_small/shards --steps 600 \
        [--config '{"width": 128, "depth": 4, "lr": 1e-3, "cells": 32}']

Question behind it (issue 6): the texture flow samples plausible colours, but on held-out chunks it paints a
floor brown that its views show blue. Is the colour not in the view pathway, or does the flow not use it?
This trains only the pathway the flows share (small ViT → projection → view aggregator) with a linear head that
predicts each active cell's mean base colour (the cell grid of the texture latent, ``cells``³; the mean over
the cell's O-Voxels), in plain PyTorch on the CPU, on 8 views per chunk. Every ``--every`` steps it scores the
PSNR of the cell colours of the held-out chunks. Two baselines are measured on the same cells first:

- ``constant``: the training cells' mean colour everywhere;
- ``readout``: learning-free: each cell centre's pixel colour averaged over the views it projects into
  (no visibility test), mapped by a per-channel linear fit on the training cells.

A head far above ``readout`` has learnt more than copying the pixel under the cell (visibility, de-shading); one
near ``constant`` reads nothing. Prints JSON lines.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from genrecon.data.batching import collate
from genrecon.models.aggregator import ViewAggregator, project_and_aggregate
from genrecon.models.image_encoder import SmallViT, encode_views
from genrecon.models.photo_consistency import sample_bilinear
from genrecon.models.projection import Projection, coords_to_points
from genrecon.utils.jsonl import JsonLinesLog
from genrecon.utils.probe_cli import load_probe_chunks, probe_arguments

DEFAULTS = {"width": 128, "depth": 4, "num_heads": 4, "patch_size": 16, "lr": 1e-3, "cells": 32}


def load(shards: str, split: str, views: int) -> list[dict]:
    return load_probe_chunks(shards, split, views, ["views", "ovoxel"])


def cell_colours(batch: dict, cells: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Active cells ``[L, 4]`` (batch, x, y, z) of the batch's O-Voxels and their mean base colour ``[L, 3]``."""
    coords = batch["ovoxel_coords"].long()
    factor = int(batch["ovoxel_resolution"]) // cells
    key = torch.cat([coords[:, :1], coords[:, 1:] // factor], 1)
    active, inverse = torch.unique(key, dim=0, return_inverse=True)
    total = torch.zeros(len(active), 3).index_add_(0, inverse, batch["ovoxel_pbr"][:, :3].float())
    count = torch.zeros(len(active)).index_add_(0, inverse, torch.ones(len(inverse)))
    return active, total / count[:, None]


def pixel_readout(batch: dict, active: torch.Tensor, cells: int) -> torch.Tensor:
    """Mean pixel colour ``[L, 3]`` under each cell centre over the views it projects into (0 if none)."""
    points, b = coords_to_points(active[:, 1:], cells), active[:, 0]
    u, v, valid, _ = Projection.project(points, b, batch["w2c"], batch["intrinsics"], batch["view_mask"])
    views = batch["views"]
    n, h, w = views.shape[1], views.shape[-2], views.shape[-1]
    image = (b[:, None] * n + torch.arange(n)).flatten()
    rgb = sample_bilinear(views.flatten(0, 1), image, u.flatten() * w - 0.5, v.flatten() * h - 0.5).view(*u.shape, 3)
    weight = valid.float()[..., None]
    return (rgb * weight).sum(1) / weight.sum(1).clamp(min=1)


def psnr(mse: float) -> float:
    return -10.0 * math.log10(max(mse, 1e-10))


def main(argv: list[str] | None = None) -> list[dict]:
    args, cfg = probe_arguments(__doc__, DEFAULTS, steps=600, argv=argv)

    train, val = load(args.shards, "train", args.views), load(args.shards, "val", args.views)
    chunks = lambda items: [collate(items[i : i + args.batch]) for i in range(0, len(items), args.batch)]
    train_batches, val_batches = chunks(train), chunks(val)
    cells = int(cfg["cells"])
    targets = {id(b): cell_colours(b, cells) for b in train_batches + val_batches}

    # Baselines on the same cells.
    train_true = torch.cat([targets[id(b)][1] for b in train_batches])
    val_true = torch.cat([targets[id(b)][1] for b in val_batches])
    mean = train_true.mean(0)
    read_train = torch.cat([pixel_readout(b, targets[id(b)][0], cells) for b in train_batches])
    read_val = torch.cat([pixel_readout(b, targets[id(b)][0], cells) for b in val_batches])
    fit = [np.polyfit(read_train[:, c].numpy(), train_true[:, c].numpy(), 1) for c in range(3)]
    mapped = torch.stack([torch.from_numpy(np.polyval(fit[c], read_val[:, c].numpy())).float() for c in range(3)], 1)
    log = JsonLinesLog(args.out)
    log.add({"baseline": "constant", "val_psnr": round(psnr(float((val_true - mean).pow(2).mean())), 3),
             "train_chunks": len(train), "val_chunks": len(val), "val_cells": len(val_true), "config": cfg})
    log.add({"baseline": "readout", "val_psnr": round(psnr(float((val_true - mapped.clamp(0, 1)).pow(2).mean())), 3),
             "gain_bias": [[round(float(x), 3) for x in f] for f in fit]})

    image_size = int(train[0]["views"].shape[1])
    encoder = SmallViT(width=cfg["width"], depth=cfg["depth"], num_heads=cfg["num_heads"],
                       patch_size=cfg["patch_size"], num_registers=4)
    projection = Projection(encoder.num_global_tokens, encoder.patch_grid(image_size))
    aggregator = ViewAggregator(encoder.out_channels)
    head = torch.nn.Linear(encoder.out_channels, 3)
    torch.nn.init.zeros_(head.weight)
    with torch.no_grad():
        head.bias.copy_(mean)  # starts at the constant baseline

    def predict(batch: dict) -> torch.Tensor:
        active = targets[id(batch)][0]
        tokens = encode_views(encoder, batch["views"], batch["view_mask"])
        cond = project_and_aggregate(projection, aggregator, coords_to_points(active[:, 1:], cells), active[:, 0],
                                     tokens, batch["w2c"], batch["intrinsics"], batch["view_mask"])
        return head(cond)

    params = [*encoder.parameters(), *aggregator.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=float(cfg["lr"]), weight_decay=0.0)
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    for step in range(args.steps + 1):
        batch = train_batches[int(rng.integers(len(train_batches)))]
        loss = (predict(batch) - targets[id(batch)][1]).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % args.every == 0:
            with torch.no_grad():
                err = sum(float((predict(b).clamp(0, 1) - targets[id(b)][1]).pow(2).sum()) for b in val_batches)
            log.add({"step": step, "loss": round(float(loss.detach()), 5),
                     "val_psnr": round(psnr(err / (3 * len(val_true))), 3),
                     "seconds": round(time.perf_counter() - t0, 1)})
    return log.close()


if __name__ == "__main__":
    main()
