"""How long the view pretraining takes to decode the room renders into memory (``datamodules.views.SceneViews``),
against the way it did before session 11 (decode in threads, then stack and rotate every view on one thread),
measured in the same run, alternating, on the same files. Prints JSON.

    python benchmarks/view_decode.py --scenes <root>/synthetic_small/scenes [--threads N] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from datamodules.views import SceneViews, _read_view  # noqa: E402
from genrecon.utils.workers import available_cpus  # noqa: E402


def stack_afterwards(views: SceneViews, scenes: Path, split: str, size: int, threads: int) -> dict[str, np.ndarray]:
    """The baseline: the same files decoded in ``threads`` threads, then stacked and rotated on one thread."""
    jobs = []
    for room in views.rooms:
        w2c = np.asarray(json.loads((scenes / room / "scene.json").read_text())["w2c"], dtype=np.float32)
        jobs += [(scenes / room, i, w2c[i, :3, :3]) for i in range(len(w2c))]
    with ThreadPoolExecutor(threads) as pool:
        arrays = list(pool.map(lambda j: _read_view(j[0] / "views", j[1], size), jobs))
    rotations = np.stack([j[2] for j in jobs])
    return {"rgb": np.stack([a[0] for a in arrays]), "depth": np.stack([a[1] for a in arrays]),
            "normal": np.einsum("mij,mhwj->mhwi", rotations, np.stack([a[2] for a in arrays])).astype(np.float16),
            "base_colour": np.stack([a[3] for a in arrays])}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenes", required=True, help="<root>/scenes of prepare.py")
    p.add_argument("--split", default="train")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=None, help="default: SceneViews' own (cores, at most 32)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", help="also write the JSON here")
    a = p.parse_args(argv)
    threads = a.threads or min(32, available_cpus())
    scenes = Path(a.scenes)
    seconds: dict[str, list[float]] = {"in_threads": [], "stack_afterwards": []}
    for _ in range(a.repeats):
        start = time.perf_counter()
        views = SceneViews(scenes, a.split, a.image_size, threads=threads)
        seconds["in_threads"].append(time.perf_counter() - start)
        start = time.perf_counter()
        base = stack_afterwards(views, scenes, a.split, a.image_size, threads)
        seconds["stack_afterwards"].append(time.perf_counter() - start)
    mine = {"rgb": views.rgb, "depth": views.depth, "normal": views.normal, "base_colour": views.base_colour}
    identical = all(np.array_equal(mine[k], base[k]) for k in base)
    best = {k: min(v) for k, v in seconds.items()}
    out = {"views": len(views), "rooms": len(views.rooms), "threads": threads, "cores": available_cpus(),
           "seconds": {k: [round(x, 3) for x in v] for k, v in seconds.items()},
           "ms_per_view_best": {k: round(1e3 * v / len(views), 3) for k, v in best.items()},
           "speedup_best": round(best["stack_afterwards"] / best["in_threads"], 3), "identical": identical}
    text = json.dumps(out, indent=1)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")
    return out


if __name__ == "__main__":
    main()
