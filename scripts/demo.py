"""The quick-start job on the built-in synthetic rooms, tiny sizes, CPU.

Runs each pipeline step that exists as a subprocess with the same run name, so every output lands under
``--out``: prepare data -> train the stages -> reconstruct a held-out room -> scene.glb.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(step: str, args: list[str], env: dict[str, str]) -> None:
    print(f"\n=== {step}: {' '.join(args)}", flush=True)
    start = time.time()
    subprocess.run([sys.executable, *args], cwd=ROOT, env=env, check=True)
    print(f"=== {step} done in {time.time() - start:.1f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="logs/demo", help="folder for data, runs and the reconstruction")
    parser.add_argument("--scenes", type=int, default=4, help="synthetic rooms to generate")
    args = parser.parse_args()
    out = (ROOT / args.out).resolve()
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", GENRECON_RUN_NAME="demo")
    common = [f"paths.data_dir={out}/data", f"paths.log_dir={out}"]
    run("prepare", ["prepare.py", "dataset=synthetic", f"dataset.num_scenes={args.scenes}",
                    "render.max_cameras=24", *common], env)
    print(f"\nDemo outputs are under {out}")


if __name__ == "__main__":
    main()
