"""LightningDataModule over the full-room renders of ``prepare.py`` (``<root>/scenes/*/views``), for the
view-encoder pretraining stage (``stage=view_pretrain``).

Each room folder holds its renders (RGBA), depth, world-frame normals and unshaded base colour, and its
``scene.json`` names the cameras and the room's split. The views of one split are decoded once into memory
(about 0.9 MB per 256² view), so an epoch costs no PNG decoding; loader workers share the arrays.

Training augmentations keep every target exact: a horizontal flip (the camera-frame normal's x changes sign)
and a random permutation of the colour channels, applied to the image and the base colour alike (the renders'
lights are white, so a permuted scene renders as the permuted image). Optionally a random square crop resized
back to the view size (``crop_scale_min`` < 1): that is the view of a camera with a longer focal length at the
same pose, so depth and camera-frame normals stay exact; it widens the range of fields of view the encoder sees.
Each item carries its camera as the augmented image was taken (``w2c`` world frame in metres, floor at z = 0,
and normalised ``intrinsics``): a flip mirrors the intrinsics (``fx → -fx``, ``cx → 1 - cx``), a zoom crops
them, so an encoder's floor-ray maps (``genrecon.geometry.floor_rays``) match the pixels it sees.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, RandomSampler

from genrecon.data.errors import DataFormatError
from genrecon.render.shading import load_depth_png, load_normal_png
from genrecon.utils.workers import available_cpus

_FILES = ("rgba", "depth", "normal", "basecolor")


def _read_view(views: Path, i: int, size: int) -> tuple[np.ndarray, ...]:
    """One view's arrays at ``size``: premultiplied RGB uint8, depth float32 (m), world normal float32, base
    colour uint8. Colour is resized with Lanczos, the geometric maps by nearest neighbour (no mixed surfaces)."""
    paths = {k: views / f"{k}_{i:03d}.png" for k in _FILES}
    for kind, path in paths.items():
        if not path.is_file():
            hint = " (rooms prepared before base colours were saved: rerun prepare.py)" if kind == "basecolor" else ""
            raise DataFormatError(path.parent.parent / "scene.json", f"w2c[{i}]", f"view file {path.name} is missing{hint}")
    rgba = Image.open(paths["rgba"]).convert("RGBA")
    base = Image.open(paths["basecolor"]).convert("RGB")
    depth = load_depth_png(paths["depth"])
    normal = load_normal_png(paths["normal"])
    if rgba.size != (size, size):
        rgba = rgba.resize((size, size), Image.Resampling.LANCZOS)
        base = base.resize((size, size), Image.Resampling.LANCZOS)
        pick = (np.arange(size) * depth.shape[0] // size)
        depth, normal = depth[pick][:, pick], normal[pick][:, pick]
    rgba = np.asarray(rgba).astype(np.float32)
    rgb = np.clip(np.round(rgba[..., :3] * rgba[..., 3:4] / 255.0), 0, 255).astype(np.uint8)
    return rgb, depth, normal, np.asarray(base)


class SceneViews(Dataset):
    """Every view of the rooms of one split, in memory.

    Items: ``image [3, S, S]`` premultiplied, as the flows see views, ``base_colour [3, S, S]``, both uint8 (float
    in [0, 1] after zoom crops), ``normal [3, S, S]`` float16, camera frame (OpenCV: x right, y down, z forward),
    ``depth [S, S]`` float32 metres, ``valid [S, S]`` bool (a surface was hit), ``w2c [4, 4]`` and normalised
    ``intrinsics [3, 3]`` of the (augmented) view, float32. :func:`expand_views` (the
    datamodule's ``on_after_batch_transfer``) turns them into float32 maps with colour in [0, 1].

    Args:
        scenes: ``<root>/scenes``, one folder per room.
        split: ``train`` or ``val`` (``scene.json``'s ``split`` field).
        image_size: side ``S`` of the views (the preset's image size).
        augment: random flip and colour-channel permutation (training).
        crop_scale_min: with ``augment``, crop a random square of side ``U(crop_scale_min, 1) · S`` and resize it
            to ``S`` (colour bilinear, geometry nearest); 1 = no crops.
        max_scenes: the first rooms only (quick runs).
        threads: decoding threads at construction; default one per core, at most 32 (PIL decodes outside the
            GIL). Each thread also places and rotates its own view: done afterwards on one thread, that took
            about 2 minutes over the 11k renders of 384 rooms on the 64-core H100 machine (sessions 10 and 11).
    """

    def __init__(self, scenes: str | Path, split: str, image_size: int, augment: bool = False,
                 crop_scale_min: float = 1.0, max_scenes: int | None = None, threads: int | None = None) -> None:
        if not 0 < crop_scale_min <= 1:
            raise ValueError(f"crop_scale_min must lie in (0, 1], got {crop_scale_min}")
        self.augment, self.crop_scale_min = augment, crop_scale_min
        folders = sorted(p.parent for p in Path(scenes).glob("*/scene.json"))
        if not folders:
            raise FileNotFoundError(f"no room folders (*/scene.json) under {scenes}: run prepare.py first")
        jobs, rooms, cameras = [], [], []
        for folder in folders:
            meta_path = folder / "scene.json"
            meta = json.loads(meta_path.read_text())
            if "split" not in meta:
                raise DataFormatError(meta_path, "split", "missing (rooms prepared before splits were recorded: "
                                      "rerun prepare.py)")
            if meta["split"] != split:
                continue
            if max_scenes is not None and len(rooms) >= max_scenes:
                break
            rooms.append(folder.name)
            w2c = np.asarray(meta["w2c"], dtype=np.float32)
            if w2c.ndim != 3 or w2c.shape[1:] != (4, 4):
                raise DataFormatError(meta_path, "w2c", f"expected [N, 4, 4], got shape {w2c.shape}")
            K = np.asarray(meta.get("intrinsics", []), dtype=np.float32)
            if K.shape != (len(w2c), 3, 3):
                raise DataFormatError(meta_path, "intrinsics", f"expected [{len(w2c)}, 3, 3] (one per w2c), got "
                                      f"shape {K.shape}")
            cameras += [(w2c, K)]
            jobs += [(folder, i, w2c[i, :3, :3]) for i in range(len(w2c))]
        if not jobs:
            raise DataFormatError(Path(scenes), "split", f"no room of split {split!r}")
        self.rooms = rooms
        self.w2c = np.concatenate([w for w, _ in cameras])  # [M, 4, 4] world, metres
        self.intrinsics = np.concatenate([k for _, k in cameras])  # [M, 3, 3] normalised
        size, count = image_size, len(jobs)
        self.rgb = np.empty((count, size, size, 3), np.uint8)  # [M, S, S, 3]
        self.depth = np.empty((count, size, size), np.float32)  # [M, S, S] metres
        self.normal = np.empty((count, size, size, 3), np.float16)  # [M, S, S, 3] camera frame
        self.base_colour = np.empty((count, size, size, 3), np.uint8)  # [M, S, S, 3]

        def load(k: int) -> None:
            # Each thread writes its view into the preallocated arrays and rotates its own normals: a stack and a
            # rotation of all views afterwards ran on one thread and took most of the decoding time (about 8 ms
            # of 23 ms per view on the 2-core CPU).
            folder, i, world_to_camera = jobs[k]
            rgb, depth, normal, base = _read_view(folder / "views", i, size)
            self.rgb[k], self.depth[k], self.base_colour[k] = rgb, depth, base
            # R · n per pixel as three column products (element-wise ufuncs run outside the GIL; a BLAS matmul
            # with an inner size of 3 is 7 times slower here).
            r = world_to_camera
            self.normal[k] = normal[..., 0:1] * r[:, 0] + normal[..., 1:2] * r[:, 1] + normal[..., 2:3] * r[:, 2]

        with ThreadPoolExecutor(max(1, threads or min(32, available_cpus()))) as pool:
            list(pool.map(load, range(count)))

    def __len__(self) -> int:
        return len(self.rgb)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        # Compact dtypes (uint8 colour, float16 normals as stored) cross the loader's shared memory and the
        # host-to-device copy: 2.6 times fewer bytes than float32 maps; :func:`expand_views` widens them on the
        # device, to the same values.
        image = torch.from_numpy(self.rgb[index]).permute(2, 0, 1)
        base = torch.from_numpy(self.base_colour[index]).permute(2, 0, 1)
        normal = torch.from_numpy(self.normal[index]).permute(2, 0, 1)
        depth = torch.from_numpy(self.depth[index])
        w2c, K = torch.from_numpy(self.w2c[index]), torch.from_numpy(self.intrinsics[index]).clone()
        if self.augment:
            # torch's global generator: seeded per worker by Lightning's seed_everything(workers=True).
            if torch.rand(()) < 0.5:
                image, base, normal, depth = image.flip(-1), base.flip(-1), normal.flip(-1), depth.flip(-1)
                normal = normal * torch.tensor([-1.0, 1.0, 1.0], dtype=normal.dtype).view(3, 1, 1)
                K[0, 0], K[0, 2] = -K[0, 0], 1.0 - K[0, 2]  # u' = 1 - u: the same rays, mirrored columns
            perm = torch.randperm(3)
            image, base = image[perm], base[perm]
            if self.crop_scale_min < 1:
                # Resampled colour is no longer on the uint8 grid: zoomed items carry float colour.
                image, base, normal, depth, K = random_zoom(image.float() / 255.0, base.float() / 255.0,
                                                            normal.float(), depth, self.crop_scale_min, K)
        return {"image": image.contiguous(), "base_colour": base.contiguous(), "normal": normal.contiguous(),
                "depth": depth.contiguous(), "valid": depth > 0, "w2c": w2c, "intrinsics": K}


def expand_views(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """:class:`SceneViews` items or batches with float32 maps: colour in [0, 1] (uint8 / 255), normals widened."""
    out = dict(batch)
    for key in ("image", "base_colour"):
        if out[key].dtype == torch.uint8:
            out[key] = out[key].float() / 255.0
    out["normal"] = out["normal"].float()
    return out


def random_zoom(image: torch.Tensor, base: torch.Tensor, normal: torch.Tensor, depth: torch.Tensor,
                scale_min: float, K: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """A random square crop of side ``U(scale_min, 1) · S`` resized back to ``S``: the view of a longer lens at the
    same pose, so depth and camera-frame normals are unchanged. Colour maps ``[3, S, S]`` are resampled bilinearly,
    normals ``[3, S, S]`` and depth ``[S, S]`` by nearest neighbour (no mixed surfaces). Returns the maps and the
    normalised intrinsics ``K [3, 3]`` of that longer lens."""
    size = image.shape[-1]
    side = int(round(size * (scale_min + (1.0 - scale_min) * float(torch.rand(())))))
    if side >= size:
        return image, base, normal, depth, K
    y0, x0 = (int(torch.randint(0, size - side + 1, ())) for _ in range(2))
    crop = lambda x: x[..., y0 : y0 + side, x0 : x0 + side]  # noqa: E731
    colour = F.interpolate(torch.stack([crop(image), crop(base)]), size=(size, size), mode="bilinear",
                           align_corners=False, antialias=False)
    geometry = F.interpolate(torch.cat([crop(normal), crop(depth)[None]])[None], size=(size, size), mode="nearest")[0]
    zoomed = K.clone()  # u' = (u·S - x0) / side
    zoomed[0, 0], zoomed[0, 2] = K[0, 0] * size / side, (K[0, 2] * size - x0) / side
    zoomed[1, 1], zoomed[1, 2] = K[1, 1] * size / side, (K[1, 2] * size - y0) / side
    return colour[0], colour[1], geometry[:3], geometry[3], zoomed


class SceneViewDataModule(L.LightningDataModule):
    """Training and validation views of the prepared rooms (see :class:`SceneViews`).

    Args:
        scenes: ``<root>/scenes``.
        image_size: the preset's view size.
        batch_size: views per batch.
        batches_per_epoch: training batches per epoch (drawn with replacement when more than one pass); default
            one pass. Validation runs through the held-out views in order (the trainer's ``limit_val_batches``).
        max_scenes: the first rooms of each split only (quick runs).
        train_scenes: the first training rooms (in folder-name order) only, every held-out room kept (a
            data-scaling ablation: session 37 measured the pretraining's held-out depth against the training rooms).
        crop_scale_min: random zoom of the training views (see :class:`SceneViews`); 1 = off.
    """

    def __init__(self, scenes: str, image_size: int, batch_size: int = 32, num_workers: int = 0, seed: int = 0,
                 batches_per_epoch: int | None = None, max_scenes: int | None = None,
                 crop_scale_min: float = 1.0, train_scenes: int | None = None) -> None:
        super().__init__()
        self.scenes, self.image_size, self.crop_scale_min = scenes, image_size, crop_scale_min
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        if train_scenes is not None and train_scenes < 1:
            raise ValueError(f"train_scenes must be at least 1 (or null: all), got {train_scenes}")
        self.batches_per_epoch, self.max_scenes = batches_per_epoch, max_scenes
        limits = [n for n in (max_scenes, train_scenes) if n is not None]
        self.train_limit = min(limits) if limits else None  # rooms of the training split
        self.train_set: SceneViews | None = None
        self.val_set: SceneViews | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = SceneViews(self.scenes, "train", self.image_size, augment=True,
                                        crop_scale_min=self.crop_scale_min, max_scenes=self.train_limit)
            self.val_set = SceneViews(self.scenes, "val", self.image_size, max_scenes=self.max_scenes)

    def _loader(self, dataset: Dataset, sampler: Any = None, **kwargs: Any) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available(), **kwargs)

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        count = (self.batches_per_epoch or max(1, len(self.train_set) // self.batch_size)) * self.batch_size
        sampler = RandomSampler(self.train_set, replacement=count > len(self.train_set), num_samples=count,
                                generator=generator)
        return self._loader(self.train_set, sampler, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set)

    def on_after_batch_transfer(self, batch: dict[str, torch.Tensor], dataloader_idx: int) -> dict[str, torch.Tensor]:
        return expand_views(batch)
