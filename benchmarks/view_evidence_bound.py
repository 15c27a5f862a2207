"""How much of a chunk can its views show at all? Upper bounds from exact depth (issues 5 and 6).

The flows must produce a chunk's 64³ occupancy (issue 5, target IoU 0.7) and its base colour (issue 6, target
22 dB) from a few posed views. Whatever no view sees has to come from the learnt prior. This measures, with the
renderer's exact depth maps, what the views show:

- **occupancy**: every depth pixel of the chosen views is lifted to 3-D and voxelised into the chunk's 64³ grid.
  The IoU of that against the true occupancy bounds what the views alone can say, even with perfect depth.
  Noisy depth (relative noise ``--depth-noise``) shows how fast it falls with depth error;
  ``occ_recall_within{d}`` is the share of true voxels within d voxels of a seen one: what a prior that
  completes locally (the backs of walls and slabs, 0.1 m behind their seen faces) could recover at most;
- **texture**: an O-Voxel is visible in a view when its centre lies within 1.5 voxel edges of the depth under it.
  The script gives the visible share of the O-Voxels and the PSNR of the visible voxels' mean rendered colour
  against their base colour, raw and after one least-squares gain per chunk (shading scales the colour).
  The baseline is one constant colour per chunk, its mean base colour. ``tex_albedo_*`` replaces the render
  by the unshaded base-colour render (a perfect de-shader) and fills the voxels no view sees with the mean
  seen colour or the nearest seen voxel's colour (a prior that copies along surfaces);
  ``tex_albedo_fill_nearest_probe_psnr`` scores that fill as flow_quality.py scores the texture flow. With
  ``--encoder-ckpt`` a pretrained view encoder's predicted base colour replaces the renders (a learnt de-shader).

Each bound is given for ``--views`` views per chunk, drawn like the flows' evaluation, and for every stored
view. It needs the room folders of ``prepare.py`` (full renders with depth, ``scene.json``) beside the shards.

    python benchmarks/view_evidence_bound.py --data data/synthetic_small [--views 8] [--out bound.json]

Prints one JSON object. The texture PSNRs are per O-Voxel except ``*_probe_psnr`` (flow_quality.py's measure).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from PIL import Image
from scipy import ndimage

from genrecon.data.shards import decode_chunk_sample, shard_urls
from genrecon.geometry.cameras import MIN_DEPTH, project_points, unproject_points, w2c_in_chunk_frame
from genrecon.geometry.mesh import sample_surface
from genrecon.geometry.ovoxel import OVoxel, ovoxel_to_mesh
from genrecon.metrics.image import array_psnr
from genrecon.pipelines.glb import sample_voxel_attributes
from genrecon.render.shading import load_depth_png


def _or_pool(occ: np.ndarray, factor: int) -> np.ndarray:
    """``[R, R, R]`` bool OR-pooled by ``factor`` (kernel = stride): the grid the shape flow receives."""
    r = occ.shape[0] // factor
    return occ.reshape(r, factor, r, factor, r, factor).any(axis=(1, 3, 5))


def _iou(pred: np.ndarray, true: np.ndarray) -> tuple[float, float, float]:
    inter = float((pred & true).sum())
    return inter / max(float((pred | true).sum()), 1), inter / max(float(true.sum()), 1), inter / max(float(pred.sum()), 1)


class RoomViews:
    """The full renders and world cameras of one room folder (cached per room)."""

    def __init__(self, folder: Path, predictor: Any = None) -> None:
        """predictor: a :class:`PredictedBaseColour`; :meth:`base_colour` then returns its prediction."""
        meta = json.loads((folder / "scene.json").read_text())
        self.folder, self.predictor = folder, predictor
        self.w2c = np.asarray(meta["w2c"], np.float64)
        self.K = np.asarray(meta["intrinsics"], np.float64)  # normalised

    def depth(self, i: int) -> np.ndarray:
        return load_depth_png(self.folder / "views" / f"depth_{i:03d}.png")

    def rgb(self, i: int) -> np.ndarray:
        return np.asarray(Image.open(self.folder / "views" / f"rgba_{i:03d}.png"))[..., :3].astype(np.float32) / 255

    def base_colour(self, i: int) -> np.ndarray:
        """The unshaded base-colour render of view ``i`` ``[H, W, 3]`` (what a perfect de-shader would give)."""
        if self.predictor is not None:
            return self.predictor(self.rgb(i), self.w2c[i], self.K[i])
        path = self.folder / "views" / f"basecolor_{i:03d}.png"
        if not path.is_file():
            raise SystemExit(f"{path}: missing (prepared before base-colour renders existed; run prepare.py again)")
        return np.asarray(Image.open(path))[..., :3].astype(np.float32) / 255


class PredictedBaseColour:
    """The base colour a ``stage=view_pretrain`` checkpoint reads off a render: its dense head's cells, each
    repeated over its pixels (the learnt de-shader the flows' frozen encoder carries)."""

    def __init__(self, ckpt: str) -> None:
        import torch

        from genrecon.stages.view_pretrain import load_pretrained_view_encoder, load_pretrained_view_head

        self.torch = torch
        self.encoder = load_pretrained_view_encoder(ckpt).eval()
        self.head = load_pretrained_view_head(ckpt).eval()
        meta = torch.load(ckpt, map_location="cpu", weights_only=True)["genrecon"]["module"]
        self.depth_unit_m = float(meta.get("depth_unit_m", 2.85))  # the floor-ray maps' unit

    def __call__(self, rgb: np.ndarray, w2c: np.ndarray, K: np.ndarray) -> np.ndarray:
        """rgb ``[H, W, 3]`` in [0, 1] with its world camera (``w2c [4, 4]`` metres, normalised ``K [3, 3]``)."""
        from genrecon.geometry.floor_rays import append_floor_rays

        torch = self.torch
        h, w = rgb.shape[:2]
        with torch.no_grad():
            images = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
            if self.encoder.geometry_channels:  # the rooms' floor is z = 0, as in the pretraining
                cameras = [torch.as_tensor(a, dtype=torch.float32)[None] for a in (w2c, K)]
                images = append_floor_rays(images, *cameras, 0.0, self.depth_unit_m)
            tokens = self.encoder(images)
            cells = self.head(tokens, self.encoder.num_global_tokens)[0]["base_colour"]  # [1, 3, Q, Q]
            full = torch.nn.functional.interpolate(cells, size=(h, w), mode="nearest")
        return full[0].permute(1, 2, 0).numpy()


def occupancy_from_depth(room: RoomViews, views: list[int], chunk_from_world: np.ndarray, resolution: int,
                         noise: float, rng: np.random.Generator) -> np.ndarray:
    """``[R, R, R]`` bool: the voxels hit by the lifted depth pixels of ``views``."""
    occ = np.zeros((resolution,) * 3, bool)
    for i in views:
        depth = room.depth(i)
        h, w = depth.shape
        rows, cols = np.nonzero(depth > 0)
        z = depth[rows, cols].astype(np.float64)
        if noise:
            z = z * (1.0 + noise * rng.standard_normal(len(z)))
        uv = np.stack([(cols + 0.5) / w, (rows + 0.5) / h], 1)
        # Depth is in metres; the chunk-frame camera measures chunk units, so lift in the world frame.
        world = unproject_points(uv, z, room.w2c[i], room.K[i])
        local = world @ chunk_from_world[:3, :3].T + chunk_from_world[:3, 3]
        ijk = np.floor((local + 0.5) * resolution).astype(np.int64)
        inside = ((ijk >= 0) & (ijk < resolution)).all(1)
        occ[tuple(ijk[inside].T)] = True
    return occ


def visible_colours(room: RoomViews, views: list[int], vox: OVoxel, chunk_from_world: np.ndarray,
                    edge_m: float, image: str = "rgb") -> tuple[np.ndarray, np.ndarray]:
    """Mean colour ``[K, 3]`` of each O-Voxel over the views that see it, and the seen mask ``[K]``.

    ``image``: ``"rgb"`` (the shaded render) or ``"base_colour"`` (the unshaded base-colour render).
    """
    centres = (vox.coords + 0.5) / vox.resolution - 0.5
    tolerance = 1.5 / vox.resolution  # chunk units, like the chunk-frame camera's depth
    total, count = np.zeros((len(centres), 3)), np.zeros(len(centres))
    for i in views:
        depth, rgb = room.depth(i) / edge_m, getattr(room, image)(i)
        h, w = depth.shape
        uv, z = project_points(centres, w2c_in_chunk_frame(room.w2c[i], chunk_from_world), room.K[i])
        u, v = uv[:, 0], uv[:, 1]
        ok = (z > MIN_DEPTH) & (u >= 0) & (u < 1) & (v >= 0) & (v < 1)
        col, row = np.clip((u * w).astype(np.int64), 0, w - 1), np.clip((v * h).astype(np.int64), 0, h - 1)
        seen = ok & (depth[row, col] > 0) & (np.abs(depth[row, col] - z) < tolerance)
        total[seen] += rgb[row[seen], col[seen]]
        count[seen] += 1
    return total / np.maximum(count, 1)[:, None], count > 0


def chunk_bounds(sample: Any, room: RoomViews, views: int, noise: list[float], rng: np.random.Generator,
                 probe_samples: int = 20000, pool: int = 2) -> dict:
    meta = sample.meta
    all_views = [int(i) for i in meta["room_view_index"]]
    chosen = sorted(rng.choice(all_views, size=views, replace=False).tolist()) if len(all_views) > views else all_views
    out: dict[str, Any] = {"key": sample.key, "views_stored": len(all_views)}
    truth = sample.occupancy
    for name, vs in (("n", chosen), ("all", all_views)):
        for sigma in [0.0, *noise] if name == "n" else [0.0]:
            occ = occupancy_from_depth(room, vs, sample.chunk_from_world, truth.shape[0], sigma, rng)
            iou, recall, precision = _iou(occ, truth)
            tag = f"{name}_noise{sigma:g}" if sigma else name
            out[f"occ_iou_{tag}"], out[f"occ_recall_{tag}"], out[f"occ_precision_{tag}"] = iou, recall, precision
            if pool > 1:  # the same on the shape latent grid (flow_quality.py's iou_<R>)
                r = truth.shape[0] // pool
                coarse, coarse_truth = _or_pool(occ, pool), _or_pool(truth, pool)
                out[f"occ_iou{r}_{tag}"], out[f"occ_recall{r}_{tag}"], _ = _iou(coarse, coarse_truth)
                if not sigma:
                    near = ndimage.binary_dilation(coarse, iterations=1)
                    out[f"occ_recall{r}_within1_{name}"] = float((near & coarse_truth).sum()
                                                                 / max(float(coarse_truth.sum()), 1))
            if not sigma:
                # How much a prior could add by completing locally (wall and slab backs lie 0.1 m = ~2 voxels
                # behind the seen faces): the true voxels within d voxels (Chebyshev) of a seen voxel.
                for d in (1, 2, 3):
                    near = ndimage.binary_dilation(occ, iterations=d)
                    out[f"occ_recall_within{d}_{name}"] = float((near & truth).sum() / max(float(truth.sum()), 1))
    vox = OVoxel.unpack(sample.ovoxel, int(meta["ovoxel_resolution"]))
    base = vox.attributes[:, :3]
    out["tex_constant_psnr"] = array_psnr(base.mean(0, keepdims=True), base)
    surface = None  # the texture probe, built once per chunk when needed
    for name, vs in (("n", chosen), ("all", all_views)):
        mean, seen = visible_colours(room, vs, vox, sample.chunk_from_world, float(meta["edge_m"]))
        out[f"tex_visible_share_{name}"] = float(seen.mean())
        if seen.any():
            gain = float((mean[seen] * base[seen]).sum() / max((mean[seen] ** 2).sum(), 1e-12))
            out[f"tex_visible_psnr_{name}"] = array_psnr(mean[seen], base[seen])
            out[f"tex_visible_gain_psnr_{name}"] = array_psnr(np.clip(gain * mean[seen], 0, 1), base[seen])
        # A perfect de-shader: the base-colour renders at the visible voxels; hidden voxels filled two ways.
        albedo, seen = visible_colours(room, vs, vox, sample.chunk_from_world, float(meta["edge_m"]), "base_colour")
        if seen.any():
            nearest = fill_nearest(albedo, seen, vox.coords)
            out[f"tex_albedo_visible_psnr_{name}"] = array_psnr(albedo[seen], base[seen])
            out[f"tex_albedo_fill_mean_psnr_{name}"] = array_psnr(fill_mean(albedo, seen), base)
            out[f"tex_albedo_fill_nearest_psnr_{name}"] = array_psnr(nearest, base)
            out[f"tex_albedo_hidden_nearest_psnr_{name}"] = (
                array_psnr(nearest[~seen], base[~seen]) if (~seen).any() else float("nan"))
            # The same fill scored as flow_quality.py scores the texture flow: base colour looked up at samples
            # of the true surface in the filled and the true volume.
            if surface is None:
                surface = probe(vox, probe_samples, np.random.default_rng(0))  # own rng: keeps the view draws
            pred = sample_voxel_attributes(surface[0], vox.coords, nearest, np.full(3, -0.5), 1.0 / vox.resolution)
            out[f"tex_albedo_fill_nearest_probe_psnr_{name}"] = array_psnr(pred, surface[1])
    return out


def probe(vox: OVoxel, samples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """flow_quality.py's texture probe: points on the true surface and the true base colour there."""
    mesh = ovoxel_to_mesh(vox)
    pts, _, _ = sample_surface(mesh.vertices, mesh.faces, samples, rng)
    truth = sample_voxel_attributes(pts, vox.coords, vox.attributes[:, :3], np.full(3, -0.5), 1.0 / vox.resolution)
    return pts, truth


def fill_mean(colour: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Hidden voxels take the mean colour of the seen ones."""
    out = colour.copy()
    out[~seen] = colour[seen].mean(0)
    return out


def fill_nearest(colour: np.ndarray, seen: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Hidden voxels take the colour of the nearest seen voxel (a prior that copies along surfaces)."""
    from scipy.spatial import cKDTree

    out = colour.copy()
    if (~seen).any():
        _, idx = cKDTree(coords[seen]).query(coords[~seen])
        out[~seen] = colour[seen][idx]
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a prepared dataset folder (shards/ and scenes/)")
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--depth-noise", type=float, nargs="*", default=[0.01, 0.03])
    p.add_argument("--split", default="all", choices=("train", "val", "all"))
    p.add_argument("--max-chunks", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--probe-samples", type=int, default=20000, help="surface samples of the flow_quality-style probe")
    p.add_argument("--encoder-ckpt", default=None,
                   help="a stage=view_pretrain checkpoint: its predicted base colour replaces the base-colour renders "
                        "(tex_albedo_*: a learnt de-shader instead of a perfect one)")
    p.add_argument("--pool", type=int, default=2,
                   help="also score occupancy OR-pooled by this factor (64³ -> the 32³ shape latent grid); 1: off")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    data = Path(args.data)
    splits = ("train", "val") if args.split == "all" else (args.split,)
    urls = [u for s in splits for u in shard_urls(data / "shards", s)]
    if not urls:
        raise SystemExit(f"{data / 'shards'}: no shards of split {args.split}")
    rng = np.random.default_rng(args.seed)
    rooms: dict[str, RoomViews] = {}
    predictor = PredictedBaseColour(args.encoder_ckpt) if args.encoder_ckpt else None
    chunks = []
    for raw in wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples()):
        sample = decode_chunk_sample(raw, views=False)
        scene = sample.meta["scene_id"]
        folder = data / "scenes" / scene
        if not (folder / "scene.json").is_file():
            raise SystemExit(f"{folder}: no scene.json (the bound needs prepare.py's room folders)")
        room = rooms.setdefault(scene, RoomViews(folder, predictor))
        chunks.append(chunk_bounds(sample, room, args.views, args.depth_noise, rng, args.probe_samples,
                                   args.pool))
        if args.max_chunks and len(chunks) >= args.max_chunks:
            break
    keys = [k for k in chunks[0] if k not in ("key",)]
    summary = {k: round(float(np.mean([c[k] for c in chunks if k in c])), 4) for k in keys}
    result = {"data": str(data), "views": args.views, "encoder_ckpt": args.encoder_ckpt, "split": args.split, "chunks": len(chunks), "rooms": len(rooms),
              "mean": summary, "per_chunk": chunks}
    print(json.dumps({k: v for k, v in result.items() if k != "per_chunk"}, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
