"""Write an sbatch script for N nodes x G GPUs:  python scripts/slurm/render_sbatch.py --nodes 2 --gpus 8"""

import argparse
from pathlib import Path

from genrecon.utils.slurm import render_sbatch

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus", type=int, default=8, help="GPUs (= tasks) per node")
    parser.add_argument("--time", default="48:00:00")
    parser.add_argument("--partition", default=None)
    parser.add_argument("--job-name", default="genrecon")
    parser.add_argument("--out", default="scripts/slurm/train.sbatch")
    args = parser.parse_args()
    text = render_sbatch(args.nodes, args.gpus, args.job_name, args.time, partition=args.partition)
    Path(args.out).write_text(text)
    print(f"wrote {args.out} ({args.nodes} x {args.gpus})")
