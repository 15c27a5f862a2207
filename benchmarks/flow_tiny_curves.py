"""Per-step learning curves of flow variants at test size on the CPU; prints JSON.

A quick proxy before a GPU A/B: does a variant learn as much per step as the published design? (Whether it
wins at equal *time* needs the GPU: on the CPU at this size the step costs are not the GPU's.) It builds the
test suite's tiny data once under ``--root`` (4 synthetic rooms, 32³ O-Voxels, 8³ latents, VAEs trained 10
steps, as ``tests/conftest.py``'s ``tiny_latents``; sizes from ``genrecon.utils.test_size``), then trains
``--stage`` once per ``--variant`` from the same seed with the flow tests' settings (batch 4, up to 4 views,
lr 1e-3, no EMA) and reports the training loss averaged over windows of ``--window`` steps and the final
validation loss.

    python benchmarks/flow_tiny_curves.py --root /tmp/tiny_curves --steps 400 \\
        --variant cell=preset.flow.patch_size=1 --variant blocks=preset.flow.patch_size=2 \\
        [--common preset.flow.width=256 --common preset.flow.num_heads=4] [--out curves.json]

A variant is ``name=override[;override...]`` (Hydra overrides of ``train.py``); ``--common`` overrides apply
to every variant. Reruns reuse the data and VAEs under ``--root``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from genrecon.utils.jsonl import emit_json
from genrecon.utils.test_size import (
    FAST_TRAINER_OVERRIDES, TINY_DATA_OVERRIDES, TINY_FLOW_OVERRIDES, TINY_MODEL_OVERRIDES, logged_series,
    tiny_vae_overrides,
)

ROOT = Path(__file__).resolve().parents[1]
def run(script: str, overrides: list[str], log: Path) -> None:
    env = dict(os.environ, WANDB_MODE="offline")
    with open(log, "w") as f:
        code = subprocess.call([sys.executable, str(ROOT / script), *overrides], cwd=ROOT, stdout=f,
                               stderr=subprocess.STDOUT, env=env)
    if code:
        raise SystemExit(f"{script} failed with exit code {code}; see {log}")


def build_data(root: Path) -> Path:
    """The tiny dataset with its latent shards under ``root``; returns the dataset root."""
    dataset = root / "data" / "synthetic_tiny"
    if (dataset / "latents" / "stats.json").is_file():
        return dataset
    paths = [f"paths.data_dir={root / 'data'}", f"paths.log_dir={root / 'logs'}"]
    run("prepare.py", TINY_DATA_OVERRIDES + paths, root / "prepare.log")
    dataset = next(p.parent for p in (root / "data").glob("*/manifest.json"))
    ckpts = {}
    for stage in ("ss_vae", "shape_vae", "tex_vae"):
        out = root / "runs" / stage
        run("train.py", tiny_vae_overrides(stage, dataset, out), root / f"{stage}.log")
        ckpts[stage] = out / "checkpoints" / "last.ckpt"
    run("prepare.py", TINY_DATA_OVERRIDES + paths + ["steps=[encode]", f"dataset.root={dataset}",
                                      *(f"encode.{s}_ckpt={c}" for s, c in ckpts.items())], root / "encode.log")
    return dataset


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, required=True, help="work folder (data, VAEs and runs; reused)")
    p.add_argument("--stage", default="tex_flow", choices=["ss_flow", "shape_flow", "tex_flow"])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--window", type=int, default=50)
    p.add_argument("--variant", action="append", required=True, help="name=override[;override...]")
    p.add_argument("--common", action="append", default=[], help="an override for every variant")
    p.add_argument("--data", type=Path, help="a tiny dataset root that already has latent shards (skips building)")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    args.root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    dataset = args.data or build_data(args.root)
    result: dict[str, Any] = {"stage": args.stage, "steps": args.steps, "window": args.window,
                              "common": args.common, "data_s": round(time.perf_counter() - t0, 1), "variants": {}}
    for spec in args.variant:
        name, _, overrides = spec.partition("=")
        out = args.root / "runs" / f"{args.stage}_{name}"
        start = time.perf_counter()
        run("train.py", TINY_MODEL_OVERRIDES + FAST_TRAINER_OVERRIDES + TINY_FLOW_OVERRIDES + [
            f"stage={args.stage}", f"stage.max_steps={args.steps}", f"stage.val_every_n_steps={args.steps}",
            f"dataset.root={dataset}", f"paths.output_dir={out}", *args.common,
            *[o for o in overrides.split(";") if o]], args.root / f"{args.stage}_{name}.log")
        s = logged_series(out)
        loss = np.asarray(s["train/loss"])
        result["variants"][name] = {
            "overrides": overrides, "seconds": round(time.perf_counter() - start, 1),
            "train_loss_windows": [round(float(loss[i:i + args.window].mean()), 4)
                                   for i in range(0, len(loss), args.window)],
            "val_loss": s["val/loss"][-1] if s.get("val/loss") else None,
        }
        print(f"[flow_tiny_curves] {name}: {result['variants'][name]}", file=sys.stderr, flush=True)
    emit_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
