"""The quick-start job on the built-in synthetic rooms, tiny sizes, CPU (about 10 minutes on 2 cores).

prepare data -> train the three VAEs -> encode latents -> train the three flows -> reconstruct a held-out room
-> ``scene.glb`` -> evaluate it. Every step is the real entry point run as a subprocess with a fixed run name,
so all outputs land under ``--out``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VAES = ("ss_vae", "shape_vae", "tex_vae")
FLOWS = ("ss_flow", "shape_flow", "tex_flow")


def run(step: str, args: list[str], env: dict[str, str], run_name: str) -> None:
    print(f"\n=== {step}: python {' '.join(args)}", flush=True)
    start = time.time()
    subprocess.run([sys.executable, *args], cwd=ROOT, env=dict(env, GENRECON_RUN_NAME=run_name), check=True)
    print(f"=== {step} done in {time.time() - start:.1f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="logs/demo", help="folder for data, runs and the reconstruction")
    parser.add_argument("--scenes", type=int, default=6, help="synthetic rooms to generate")
    parser.add_argument("--vae-steps", type=int, default=80)
    parser.add_argument("--flow-steps", type=int, default=120)
    args = parser.parse_args()
    out = (ROOT / args.out).resolve()
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true")
    data = out / "data"
    common = [f"paths.data_dir={data}", f"paths.log_dir={out}"]
    quiet = ["logger=csv", "callbacks.progress_bar=null", "+trainer.enable_progress_bar=false",
             "stage.datamodule.batch_size=4"]
    root = data / "synthetic_tiny"

    run("prepare", ["prepare.py", f"dataset.num_scenes={args.scenes}", "dataset.val_fraction=0.2",
                    "render.max_cameras=32", *common], env, "prepare")
    ckpt = {}
    for stage, steps in [(s, args.vae_steps) for s in VAES]:
        run(f"train {stage}", ["train.py", f"stage={stage}", *common, *quiet, f"stage.max_steps={steps}",
                               f"stage.val_every_n_steps={steps}", f"stage.checkpoint_every_n_steps={steps}"],
            env, stage)
        ckpt[stage] = out / "train" / "runs" / stage / "checkpoints" / "last.ckpt"
    run("encode latents", ["prepare.py", "steps=[encode]", *common,
                           *(f"encode.{s}_ckpt={ckpt[s]}" for s in VAES)], env, "encode")
    for stage in FLOWS:
        run(f"train {stage}", ["train.py", f"stage={stage}", *common, *quiet, f"stage.max_steps={args.flow_steps}",
                               f"stage.val_every_n_steps={args.flow_steps}",
                               f"stage.checkpoint_every_n_steps={args.flow_steps}", "stage.module.warmup_steps=20"],
            env, stage)
        ckpt[stage] = out / "train" / "runs" / stage / "checkpoints" / "last.ckpt"
    ckpt_dir = out / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    for stage, path in ckpt.items():
        target = ckpt_dir / f"{stage}.ckpt"
        target.unlink(missing_ok=True)
        target.symlink_to(path)
    scene = sorted((root / "scenes").iterdir())[-1]  # the last room is in the validation split
    run("reconstruct", ["infer.py", "input=prepared", f"input.scene_dir={scene}", f"ckpt_dir={ckpt_dir}",
                        "num_imgs_per_scene=8", "points.radius_m=0.3", "min_points_per_chunk=100",
                        "glb.texture_size=512", *common], env, scene.name)
    # eval.py reads <pred_dir>/<scene_id>/: the reconstruction's run is named after its scene
    result = out / "infer" / "runs" / scene.name
    run("evaluate", ["eval.py", f"pred_dir={result.parent}", f"gt_dir={root / 'scenes'}", *common], env, "evaluate")
    print(f"\nDone. scene.glb, mesh.ply, preview.png and summary.json: {result}\nEvaluation: {out / 'eval'}")


if __name__ == "__main__":
    main()
