"""How much base colour can the projection pathway read from the views? A probe of the texture flow's conditioning.

    python benchmarks/view_colour_probe.py --shards <root>/synthetic_small/shards --steps 600 \
        [--config '{"width": 128, "depth": 4, "lr": 1e-3, "cells": 32, "sampling": "bilinear"}'] \
        [--visibility [--no-fallback]] \
        [--encoder-ckpt <view_pretrain checkpoint> [--train-encoder]]

Question behind it (issue 6): the texture flow samples plausible colours, but on held-out chunks it paints a
floor brown that its views show blue. Is the colour not in the view pathway, or does the flow not use it?
This trains only the pathway the flows share (small ViT → projection → view aggregator) with a linear head that
predicts each active cell's mean base colour (the cell grid of the texture latent, ``cells``³; the mean over
the cell's O-Voxels), in plain PyTorch on the CPU, on 8 views per chunk. Every ``--every`` steps it scores the
PSNR of the cell colours of the held-out chunks. Two baselines are measured on the same cells first:

- ``constant``: the training cells' mean colour everywhere;
- ``readout``: learning-free: each cell centre's pixel colour averaged over the views it projects into
  (no visibility test), mapped by a per-channel linear fit on the training cells;
- with ``--visibility``, ``readout_visible``: the same over only the views that see the cell by a z-buffer of the
  chunk's active cells (:class:`genrecon.models.visibility.StructureVisibility`, strict: no fallback), fitted on the
  training cells some view sees; a cell no view sees gets the training mean. It also reports the share of the
  (cell, view) projections the test keeps and the share of held-out cells some view sees.

A head far above ``readout`` has learnt more than copying the pixel under the cell (visibility, de-shading); one
near ``constant`` reads nothing. ``--visibility`` also gives the pathway that test (the sparse flows'
``preset.flow.visibility``): the aggregator fuses only the views that see each cell, and a cell no view sees
every view it projects into (``--no-fallback``: none). With or without it, the
read-out and every curve point also report ``val_psnr_seen``, the PSNR over the held-out cells some view sees by
that test, so runs with and without it compare on the same cells. ``--encoder-ckpt`` starts the encoder from a
``stage=view_pretrain`` checkpoint (its own architecture; ``width``/``depth``/``num_heads``/``patch_size`` of the
config are then ignored), frozen as the ``*_pre`` flows keep it unless ``--train-encoder``. Prints JSON lines.
"""

from __future__ import annotations

import math
import time
from typing import NamedTuple

import numpy as np
import torch

from genrecon.data.batching import collate
from genrecon.geometry.floor_rays import append_chunk_floor_rays
from genrecon.models.aggregator import ViewAggregator, project_and_aggregate
from genrecon.models.image_encoder import SmallViT, encode_views
from genrecon.models.photo_consistency import sample_bilinear
from genrecon.models.projection import Projection, coords_to_points
from genrecon.models.visibility import StructureVisibility
from genrecon.stages.view_pretrain import load_pretrained_view_encoder
from genrecon.utils.jsonl import JsonLinesLog
from genrecon.utils.probe_cli import load_probe_chunks, probe_arguments

DEFAULTS = {"width": 128, "depth": 4, "num_heads": 4, "patch_size": 16, "lr": 1e-3, "cells": 32,
            "sampling": "nearest"}


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


def pixel_readout(batch: dict, active: torch.Tensor, cells: int, visible: torch.Tensor | None = None) -> torch.Tensor:
    """Mean pixel colour ``[L, 3]`` under each cell centre over the views it projects into (0 if none); with
    ``visible [L, N]`` only over the views that see it."""
    points, b = coords_to_points(active[:, 1:], cells), active[:, 0]
    u, v, valid, _ = Projection.project(points, b, batch["w2c"], batch["intrinsics"], batch["view_mask"])
    if visible is not None:
        valid = valid & visible
    views = batch["views"]
    n, h, w = views.shape[1], views.shape[-2], views.shape[-1]
    image = (b[:, None] * n + torch.arange(n)).flatten()
    rgb = sample_bilinear(views.flatten(0, 1), image, u.flatten() * w - 0.5, v.flatten() * h - 0.5).view(*u.shape, 3)
    weight = valid.float()[..., None]
    return (rgb * weight).sum(1) / weight.sum(1).clamp(min=1)


class CellViews(NamedTuple):
    """A batch's active cells ``[L, 4]`` against its views: the cells' z-buffer ``[B, N, G, G]`` (all of them
    occlude), which views see each cell ``visible [L, N]``, which views the published pathway fuses ``valid [L, N]``
    (the cell centre projects into the image) and which it fuses with the visibility test ``fused [L, N]``."""

    zbuffer: torch.Tensor
    visible: torch.Tensor
    valid: torch.Tensor
    fused: torch.Tensor


def cell_views(batch: dict, active: torch.Tensor, cells: int, module: StructureVisibility) -> CellViews:
    points, b = coords_to_points(active[:, 1:], cells), active[:, 0]
    cameras = (batch["w2c"], batch["intrinsics"], batch["view_mask"])
    zbuf = module.zbuffer(points, b, *cameras, 1.0 / cells)
    visible = module.visible(zbuf, points, b, *cameras, 1.0 / cells)
    valid = Projection.project(points, b, *cameras)[2]
    return CellViews(zbuf, visible, valid, valid & visible)


def fit_readout(read: torch.Tensor, true: torch.Tensor) -> list[np.ndarray]:
    """Per-channel linear fit (gain, bias) of true ``[L, 3]`` on read ``[L, 3]``."""
    return [np.polyfit(read[:, c].numpy(), true[:, c].numpy(), 1) for c in range(3)]


def apply_readout(fit: list[np.ndarray], read: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.polyval(fit[c], read[:, c].numpy())).float() for c in range(3)], 1)


def psnr(mse: float) -> float:
    return -10.0 * math.log10(max(mse, 1e-10))


def main(argv: list[str] | None = None) -> list[dict]:
    def visibility_flag(parser) -> None:
        parser.add_argument("--visibility", action="store_true",
                            help="the pathway fuses only the views that see each cell (structure z-buffer)")
        parser.add_argument("--no-fallback", action="store_true",
                            help="with --visibility: a cell no view sees gets no view (default: every view, as "
                                 "published)")

    args, cfg = probe_arguments(__doc__, DEFAULTS, steps=600, argv=argv, extra=visibility_flag)

    train, val = load(args.shards, "train", args.views), load(args.shards, "val", args.views)
    chunks = lambda items: [collate(items[i : i + args.batch]) for i in range(0, len(items), args.batch)]
    train_batches, val_batches = chunks(train), chunks(val)
    cells = int(cfg["cells"])
    targets = {id(b): cell_colours(b, cells) for b in train_batches + val_batches}
    # Learning-free and fixed per chunk: every batch's z-buffer and visibility, once.
    module = StructureVisibility(fallback=False)  # strict: which cells some view really sees (the *_seen scores)
    pathway = StructureVisibility(fallback=not args.no_fallback)  # the same z-buffer, the rule the pathway fuses by
    seen_by = {id(b): cell_views(b, targets[id(b)][0], cells, module) for b in train_batches + val_batches}
    fuse = {}  # the pathway's views per cell [L, N] (--visibility), from the same z-buffers, once
    if args.visibility:
        for b in train_batches + val_batches:
            active = targets[id(b)][0]
            fuse[id(b)] = pathway.visible(seen_by[id(b)].zbuffer, coords_to_points(active[:, 1:], cells), active[:, 0],
                                          b["w2c"], b["intrinsics"], b["view_mask"], 1.0 / cells)

    # Baselines on the same cells.
    train_true = torch.cat([targets[id(b)][1] for b in train_batches])
    val_true = torch.cat([targets[id(b)][1] for b in val_batches])
    mean = train_true.mean(0)
    read_train = torch.cat([pixel_readout(b, targets[id(b)][0], cells) for b in train_batches])
    read_val = torch.cat([pixel_readout(b, targets[id(b)][0], cells) for b in val_batches])
    fit = fit_readout(read_train, train_true)
    mapped = apply_readout(fit, read_val)
    valid_val = torch.cat([seen_by[id(b)].valid for b in val_batches])
    fused_val = torch.cat([seen_by[id(b)].fused for b in val_batches])
    seen_val = fused_val.any(1)  # [L_val]: some view both shows the cell's centre and sees the cell

    def val_mse(pred: torch.Tensor, keep: torch.Tensor | slice = slice(None)) -> float:
        return float((val_true[keep] - pred[keep].clamp(0, 1)).pow(2).mean())

    log = JsonLinesLog(args.out)
    log.add({"baseline": "constant", "val_psnr": round(psnr(float((val_true - mean).pow(2).mean())), 3),
             "train_chunks": len(train), "val_chunks": len(val), "val_cells": len(val_true), "config": cfg,
             "visibility": args.visibility, "fallback": args.visibility and not args.no_fallback,
             "encoder_ckpt": args.encoder_ckpt, "train_encoder": bool(args.encoder_ckpt) and args.train_encoder})
    log.add({"baseline": "readout", "val_psnr": round(psnr(val_mse(mapped)), 3),
             "val_psnr_seen": round(psnr(val_mse(mapped, seen_val)), 3),
             "gain_bias": [[round(float(x), 3) for x in f] for f in fit]})
    if args.visibility:
        # The same read-out over the views that see each cell; cells no view sees fall back to the training mean.
        read_train, read_val = (
            torch.cat([pixel_readout(b, targets[id(b)][0], cells, seen_by[id(b)].visible) for b in batches])
            for batches in (train_batches, val_batches)
        )
        seen_train = torch.cat([seen_by[id(b)].fused for b in train_batches]).any(1)
        fit_visible = fit_readout(read_train[seen_train], train_true[seen_train])
        mapped_visible = torch.where(seen_val[:, None], apply_readout(fit_visible, read_val), mean)
        log.add({"baseline": "readout_visible", "val_psnr": round(psnr(val_mse(mapped_visible)), 3),
                 "val_psnr_seen": round(psnr(val_mse(mapped_visible, seen_val)), 3),
                 "gain_bias": [[round(float(x), 3) for x in f] for f in fit_visible],
                 "kept_projections": round(int(fused_val.sum()) / max(1, int(valid_val.sum())), 4),
                 "val_cells_seen": round(float(seen_val.float().mean()), 4)})

    image_size = int(train[0]["views"].shape[1])
    if args.encoder_ckpt:
        encoder = load_pretrained_view_encoder(args.encoder_ckpt).set_frozen(not args.train_encoder)
    else:
        encoder = SmallViT(width=cfg["width"], depth=cfg["depth"], num_heads=cfg["num_heads"],
                           patch_size=cfg["patch_size"], num_registers=4)
    # "sampling": the patch token under each projection (published) or bilinear between the four nearest
    projection = Projection(encoder.num_global_tokens, encoder.patch_grid(image_size), cfg["sampling"])
    aggregator = ViewAggregator(encoder.out_channels)
    head = torch.nn.Linear(encoder.out_channels, 3)
    torch.nn.init.zeros_(head.weight)
    with torch.no_grad():
        head.bias.copy_(mean)  # starts at the constant baseline

    def predict(batch: dict) -> torch.Tensor:
        active = targets[id(batch)][0]
        views = batch["views"]
        if encoder.geometry_channels:  # a floor-ray encoder reads its maps too, as in the flows
            views = append_chunk_floor_rays(views, batch["w2c"], batch["intrinsics"], batch["view_mask"])
        tokens = encode_views(encoder, views, batch["view_mask"])
        cameras = (batch["w2c"], batch["intrinsics"], batch["view_mask"])
        cond = project_and_aggregate(projection, aggregator, coords_to_points(active[:, 1:], cells), active[:, 0],
                                     tokens, *cameras, visible=fuse.get(id(batch)))
        return head(cond)

    params = [p for m in (encoder, aggregator, head) for p in m.parameters() if p.requires_grad]
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
                pred = torch.cat([predict(b) for b in val_batches])
            log.add({"step": step, "loss": round(float(loss.detach()), 5),
                     "val_psnr": round(psnr(val_mse(pred)), 3),
                     "val_psnr_seen": round(psnr(val_mse(pred, seen_val)), 3),
                     "seconds": round(time.perf_counter() - t0, 1)})
    return log.close()


if __name__ == "__main__":
    main()
