"""Held-out depth error of pretrained view encoders, split by what the pixels show: floor-like, vertical, other.

The SS flow needs walls placed (vertical surfaces are two thirds of the occupied voxels and the views place them
no better than hidden ones, session 34), so a view encoder's depth gain that stays on the floor does not help it.
For each ``stage=view_pretrain`` checkpoint this runs the held-out rooms' views (``datamodules.views.SceneViews``,
split ``val``, no augmentation) through the encoder and the dense head and scores every 4×4-pixel cell with a
valid pixel: absolute relative error of the predicted depth (as the stage's ``val/depth_abs_rel``), split by the
cell's true normal against world up (``|n·up| > 0.9`` with the normal up: floor-like; ``< 0.3``: vertical; the
rest: other). Checkpoints are scored on the same views, so their rows compare directly.

    python benchmarks/view_depth_by_surface.py --scenes <root>/synthetic_tiny/scenes --image-size 64 CKPT [CKPT ...]
        [--names plain floor] [--batch-size 32] [--out depth.json]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from datamodules.views import SceneViews, expand_views  # noqa: E402
from genrecon.geometry.floor_rays import append_floor_rays  # noqa: E402
from genrecon.models.view_heads import pool_cells  # noqa: E402
from genrecon.utils.jsonl import emit_json  # noqa: E402

CLASSES = ("floor", "vertical", "other")


def cell_classes(normal: torch.Tensor, w2c: torch.Tensor) -> torch.Tensor:
    """Pooled camera-frame normals ``[B, 3, Q, Q]`` and ``w2c [B, 4, 4]`` → class index ``[B, Q, Q]`` (see
    ``CLASSES``): world up in the camera frame is ``w2c[:3, 2]``."""
    up = (torch.nn.functional.normalize(normal, dim=1) * w2c[:, :3, 2, None, None]).sum(1)  # [B, Q, Q]
    classes = torch.full_like(up, 2, dtype=torch.long)
    classes[up.abs() < 0.3] = 1
    classes[up > 0.9] = 0
    return classes


@torch.no_grad()
def score(stage: Any, views: SceneViews, batch_size: int) -> dict[str, Any]:
    """Mean absolute relative depth error per class over every valid cell of ``views``."""
    sums, counts = torch.zeros(len(CLASSES)), torch.zeros(len(CLASSES))
    encoder, head = stage.image_encoder.eval(), stage.head.eval()
    for start in range(0, len(views), batch_size):
        items = [expand_views(views[i]) for i in range(start, min(start + batch_size, len(views)))]
        batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
        images = batch["image"]
        if encoder.geometry_channels:
            images = append_floor_rays(images, batch["w2c"], batch["intrinsics"], 0.0, stage.depth_unit_m)
        pred, _ = head(encoder(images), encoder.num_global_tokens)
        cells = pred["log_depth"].shape[-1]
        log_depth = torch.log(batch["depth"].clamp(min=1e-3))[:, None]
        pooled, has = pool_cells(torch.cat([batch["normal"], log_depth], dim=1), batch["valid"], cells)
        error = ((pred["log_depth"][:, 0] - pooled[:, 3]).exp() - 1.0).abs()  # [B, Q, Q]
        classes = cell_classes(pooled[:, :3], batch["w2c"])
        for c in range(len(CLASSES)):
            chosen = has & (classes == c)
            sums[c] += error[chosen].sum()
            counts[c] += chosen.sum()
    out = {name: {"abs_rel": float(sums[c] / counts[c].clamp(min=1)), "cells": int(counts[c])}
           for c, name in enumerate(CLASSES)}
    out["all"] = {"abs_rel": float(sums.sum() / counts.sum().clamp(min=1)), "cells": int(counts.sum())}
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoints", nargs="+", help="stage=view_pretrain checkpoints")
    p.add_argument("--scenes", required=True, help="<root>/<dataset>/scenes")
    p.add_argument("--names", nargs="+", default=None, help="one name per checkpoint (default: their paths)")
    p.add_argument("--image-size", type=int, required=True, help="the views' side (the pretraining's preset)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    from genrecon.stages.loading import load_stage

    names = a.names or a.checkpoints
    if len(names) != len(a.checkpoints):
        raise SystemExit(f"view_depth_by_surface.py: {len(names)} --names for {len(a.checkpoints)} checkpoints")
    stages = [load_stage(c, expected_stage="view_pretrain") for c in a.checkpoints]
    views = SceneViews(a.scenes, "val", image_size=a.image_size)
    result = {"scenes": a.scenes, "views": len(views), "image_size": a.image_size,
              "results": {n: {"checkpoint": c, **score(s, views, a.batch_size)}
                          for n, c, s in zip(names, a.checkpoints, stages)}}
    emit_json(result, a.out)
    return result


if __name__ == "__main__":
    main()
