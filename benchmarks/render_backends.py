"""Compare the CPU (Embree) and GPU (nvdiffrast) rasteriser backends on a furnished box room.

Renders the same placed cameras with both backends through the shared shading and prints one JSON object:
per-pixel agreement (coverage, face id, depth within 1 mm, colour within 2/255, mean |Δdepth|) and the
timings of each backend (rasterisation alone and the full render with shading, which runs where the
buffers are: CPU for Embree, GPU for nvdiffrast). Without CUDA or nvdiffrast it reports the CPU backend
alone.

    python benchmarks/render_backends.py --resolution 256 --views 16
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import trimesh

from genrecon.data.camera_placement import CameraPlacementConfig, place_cameras
from genrecon.data.scenes.scene import Scene
from genrecon.geometry.mesh import PBRMaterial, PBRMesh
from genrecon.render.base import Rasterizer
from genrecon.render.embree import EmbreeRasterizer
from genrecon.render.shading import RenderedViews, render_agreement, render_views

ROOM = (5.0, 4.0, 2.7)
FURNITURE = [  # (min corner, max corner, material)
    ((1.0, 1.0, 0.0), (2.2, 1.8, 0.75), PBRMaterial("table", (0.6, 0.4, 0.2), 0.0, 0.5)),
    ((3.0, 2.5, 0.0), (4.8, 3.9, 0.5), PBRMaterial("bed", (0.2, 0.3, 0.7), 0.0, 0.8)),
    ((0.1, 3.0, 0.0), (0.5, 3.9, 1.9), PBRMaterial("shelf", (0.3, 0.6, 0.3), 0.0, 0.6)),
    ((4.3, 0.2, 0.0), (4.8, 0.8, 1.2), PBRMaterial("lamp", (0.9, 0.9, 0.9), 1.0, 0.2)),
    ((1.3, 2.2, 0.0), (1.8, 2.7, 0.45), PBRMaterial("stool", (0.8, 0.2, 0.2), 0.0, 0.9)),
]


def box(lo, hi, material: PBRMaterial, subdivisions: int, inward: bool = False) -> PBRMesh:
    """A subdivided box with a vertex-colour gradient (so colours depend on the barycentrics)."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    m = trimesh.creation.box(extents=hi - lo)
    vertices, faces = m.vertices + (lo + hi) / 2, m.faces
    for _ in range(subdivisions):
        vertices, faces = trimesh.remesh.subdivide(vertices, faces)
    if inward:
        faces = faces[:, ::-1]
    gradient = 0.75 + 0.25 * (vertices - lo) / np.maximum(hi - lo, 1e-9)
    return PBRMesh(vertices, faces, np.zeros(len(faces)), [material], vertex_color=gradient)


def build_scene(subdivisions: int) -> Scene:
    """A furnished box room: 12·4^s room triangles plus 5 pieces of 12·4^(s-1); s = 4 gives 6912."""
    room = box((0, 0, 0), ROOM, PBRMaterial("room", (0.85, 0.82, 0.75), 0.0, 0.9), subdivisions, inward=True)
    parts = [room] + [box(lo, hi, mat, max(subdivisions - 1, 0)) for lo, hi, mat in FURNITURE]
    polygon = np.array([[0, 0], [ROOM[0], 0], [ROOM[0], ROOM[1]], [0, ROOM[1]]])
    return Scene("benchmark_room", PBRMesh.concatenate(parts), polygon, height=ROOM[2])


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def best_time(fn, repeats: int) -> float:
    """Fastest of ``repeats`` timed calls after one warm-up call (seconds)."""
    fn()
    times = []
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def time_backend(
    rasterizer: Rasterizer, scene: Scene, w2c: np.ndarray, K: np.ndarray, res: int, repeats: int
) -> tuple[RenderedViews, dict[str, float]]:
    mesh = scene.mesh
    raster_s = best_time(lambda: rasterizer.rasterize(mesh.vertices, mesh.faces, w2c, K, res, res), repeats)
    render_s = best_time(lambda: render_views(mesh, rasterizer, w2c, K, res, res), repeats)
    pixels = len(w2c) * res * res
    stats = {"raster_seconds": raster_s, "render_seconds": render_s, "raster_pixels_per_s": pixels / raster_s}
    return render_views(mesh, rasterizer, w2c, K, res, res), stats


def gpu_rasterizer() -> tuple[Rasterizer | None, str]:
    """The nvdiffrast backend (buffers and shading stay on the GPU), or None and why not."""
    if not torch.cuda.is_available():
        return None, "no CUDA device"
    try:
        from genrecon.render.nvdiffrast import NvdiffrastRasterizer

        return NvdiffrastRasterizer(keep_on_device=True), ""
    except ImportError as error:
        return None, f"nvdiffrast unavailable: {error}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--views", type=int, default=16)
    parser.add_argument("--subdivisions", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    scene = build_scene(args.subdivisions)
    config = CameraPlacementConfig(min_views=args.views, max_views=args.views)
    rig = place_cameras(scene, np.random.default_rng(args.seed), config)
    report: dict = {
        "scene": {"faces": scene.mesh.num_faces, "views": len(rig), "resolution": args.resolution},
    }

    cpu = EmbreeRasterizer()
    cpu_views, report[cpu.name] = time_backend(cpu, scene, rig.w2c, rig.K, args.resolution, args.repeats)
    report[cpu.name]["rays_per_s"] = cpu.last_stats["rays_per_s"]
    report[cpu.name]["bvh_build_seconds"] = cpu.last_stats["build_seconds"]

    gpu, why_not = gpu_rasterizer()
    if gpu is None:
        report["nvdiffrast"] = why_not
    else:
        gpu_views, report[gpu.name] = time_backend(gpu, scene, rig.w2c, rig.K, args.resolution, args.repeats)
        report[gpu.name]["device"] = torch.cuda.get_device_name()
        report["agreement"] = render_agreement(cpu_views, gpu_views)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
