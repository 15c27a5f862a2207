"""What a weight EMA costs or gives in a short, time-budgeted run, at test size on the CPU; prints JSON.

The GPU pipeline pretrains the view encoder for about 2,765 steps with ``ema_decay: 0.999`` and a cosine decay of
the learning rate to a tenth, and the flows load the average; the texture flows train about 2,300 steps at 0.995.
A plain EMA still holds decay^steps of the initial weights (6 % for the pretraining) and lags about
1 / (1 - decay) steps behind a curve that is still climbing. This script trains ``--stage`` once, with the stage's
own EMA off and the same share of warm-up and cosine decay as the GPU runs, and keeps three weight sets of the
same run: the raw weights, a plain EMA and a warmed-up EMA (:func:`genrecon.stages.base.ema_decay_at`). Each is
validated on the whole held-out split at ``--evals`` evenly spaced steps. Scale ``--decay`` to the shorter run:
1 - (1 - d_gpu) · steps_gpu / steps keeps the GPU run's ratio of averaging span to run length.

    python benchmarks/ema_lag.py --root /tmp/ema_lag --stage view_pretrain --steps 400 --decay 0.993
    python benchmarks/ema_lag.py --root /tmp/ema_lag --stage tex_flow --steps 400 --decay 0.971

``view_pretrain`` trains on 12 tiny rooms' renders (``--scenes``); the flows on ``flow_tiny_curves.py``'s tiny
latents (4 rooms). Prints, per weight set, the validation metrics at each evaluation.
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from genrecon.stages.base import ema_multi_avg_fn  # noqa: E402
from genrecon.utils.jsonl import emit_json  # noqa: E402

METRICS = {"view_pretrain": ("val/base_colour_psnr", "val/normal_deg", "val/loss"), "flow": ("val/loss",)}


class Averages(L.Callback):
    """Weight averages of the trained module next to its raw weights, updated after every optimiser step."""

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.models: dict[str, AveragedModel] = {}

    def on_fit_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        for name, warmup in (("ema", False), ("ema_warmup", True)):
            self.models[name] = AveragedModel(module, multi_avg_fn=ema_multi_avg_fn(self.decay, warmup),
                                              use_buffers=True)

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        for averaged in self.models.values():
            averaged.update_parameters(module)


class Evaluate(L.Callback):
    """At the chosen steps, validates the raw weights and each average on the whole held-out split."""

    def __init__(self, averages: Averages, at: list[int], datamodule: L.LightningDataModule,
                 metrics: tuple[str, ...]) -> None:
        self.averages, self.at, self.datamodule, self.metrics = averages, set(at), datamodule, metrics
        self.curves: dict[str, list[dict[str, float]]] = {"raw": [], "ema": [], "ema_warmup": []}

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if step not in self.at:
            return
        weights = {"raw": module, **{k: m.module for k, m in self.averages.models.items()}}
        # Validation draws views and noise from the global generators: restored afterwards, so the training run
        # is the same however often it is evaluated.
        states = random.getstate(), np.random.get_state(), torch.get_rng_state()
        for name, source in weights.items():
            probe = copy.deepcopy(source).eval()
            result = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                               enable_model_summary=False, enable_checkpointing=False).validate(
                probe, datamodule=self.datamodule, verbose=False)[0]
            self.curves[name].append({"step": step, **{k: round(float(result[k]), 4) for k in self.metrics}})
        self.datamodule.trainer = trainer  # validate() attached the datamodule to its own trainer
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        head = self.metrics[0]
        print(f"[ema_lag] step {step}, {head}: " + ", ".join(
            f"{k} {v[-1][head]:.4f}" for k, v in self.curves.items()), file=sys.stderr, flush=True)


def rooms(root: Path, scenes: int) -> Path:
    """A tiny dataset of ``scenes`` rooms (renders only are used) under ``root``, built once; its root."""
    from genrecon.utils.test_size import TINY_DATA_OVERRIDES

    data = [o for o in TINY_DATA_OVERRIDES if not o.startswith(("dataset.num_scenes", "preset.image_size"))]
    data += [f"dataset.num_scenes={scenes}", f"paths.data_dir={root / 'rooms'}", f"paths.log_dir={root / 'logs'}"]
    found = list((root / "rooms").glob("*/scenes/*/scene.json"))
    if not found:
        import subprocess

        root.mkdir(parents=True, exist_ok=True)
        with open(root / "prepare.log", "w") as log:
            code = subprocess.call([sys.executable, str(ROOT / "prepare.py"), *data], cwd=ROOT, stdout=log,
                                   stderr=subprocess.STDOUT, env=dict(os.environ, WANDB_MODE="offline"))
        if code:
            raise SystemExit(f"prepare.py failed ({code}); see {root / 'prepare.log'}")
        found = list((root / "rooms").glob("*/scenes/*/scene.json"))
    return found[0].parents[2]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, required=True, help="work folder (the rooms are built once and reused)")
    p.add_argument("--stage", default="view_pretrain", choices=["view_pretrain", "ss_flow", "shape_flow", "tex_flow"])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--decay", type=float, default=0.993)
    p.add_argument("--scenes", type=int, default=12)
    p.add_argument("--batch", type=int, default=16, help="view_pretrain's batch (the flows keep the tests' 4)")
    p.add_argument("--evals", type=int, default=4, help="evaluations, evenly spaced, the last at --steps")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--data", type=Path, help="an existing tiny dataset root (with latent shards for the flows)")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    from hydra.utils import instantiate

    from genrecon.utils.config import compose_entry_config

    t0 = time.perf_counter()
    warmup = max(1, round(args.steps * 200 / 2765))  # the GPU runs' share of warm-up steps
    schedule = [f"stage.module.lr={args.lr}", f"stage.module.warmup_steps={warmup}",
                f"stage.module.decay_steps={args.steps}", "stage.module.ema_decay=null", "seed=0"]
    if args.stage == "view_pretrain":
        cfg = compose_entry_config(["stage=view_pretrain", f"dataset.root={args.data or rooms(args.root, args.scenes)}",
                                    f"stage.datamodule.batch_size={args.batch}", *schedule])
    else:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from flow_tiny_curves import build_data

        from genrecon.utils.test_size import TINY_FLOW_OVERRIDES, TINY_MODEL_OVERRIDES

        cfg = compose_entry_config([*TINY_MODEL_OVERRIDES, *TINY_FLOW_OVERRIDES, f"stage={args.stage}",
                                    f"dataset.root={args.data or build_data(args.root)}", "stage.module.lr_new=${stage.module.lr}",
                                    *schedule])
    torch.manual_seed(0)
    datamodule = instantiate(cfg.stage.datamodule)
    datamodule.setup("fit")
    module = instantiate(cfg.stage.module)
    averages = Averages(args.decay)
    at = sorted({round(args.steps * (i + 1) / args.evals) for i in range(args.evals)})
    evaluate = Evaluate(averages, at, datamodule, METRICS["view_pretrain" if args.stage == "view_pretrain" else "flow"])
    L.Trainer(accelerator="cpu", max_steps=args.steps, logger=False, enable_progress_bar=False,
              enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
              num_sanity_val_steps=0, callbacks=[averages, evaluate]).fit(module, datamodule=datamodule)
    result = {"stage": args.stage, "steps": args.steps, "decay": args.decay, "warmup_steps": warmup, "lr": args.lr,
              "seconds": round(time.perf_counter() - t0, 1), "curves": evaluate.curves}
    emit_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
