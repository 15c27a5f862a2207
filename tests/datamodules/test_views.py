"""The view datamodule of the encoder pretraining: the rooms of one split, camera-frame normals, exact augmentation,
and errors that name the file and field of rooms prepared without what it needs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from datamodules.views import SceneViewDataModule, SceneViews, expand_views, random_zoom
from genrecon.data.errors import DataFormatError


def _rooms(root):
    return {p.parent.name: json.loads(p.read_text()) for p in (root / "scenes").glob("*/scene.json")}


def test_views_of_one_split_with_camera_frame_normals(tiny_dataset):
    rooms = _rooms(tiny_dataset)
    train = SceneViews(tiny_dataset / "scenes", "train", image_size=32)
    val = SceneViews(tiny_dataset / "scenes", "val", image_size=32)
    assert train.rooms == sorted(r for r, m in rooms.items() if m["split"] == "train")
    assert val.rooms == sorted(r for r, m in rooms.items() if m["split"] == "val") and not set(train.rooms) & set(val.rooms)
    assert len(train) == sum(len(m["w2c"]) for m in rooms.values() if m["split"] == "train")
    item = expand_views(train[0])
    assert item["image"].shape == item["base_colour"].shape == item["normal"].shape == (3, 32, 32)
    assert item["valid"].any() and torch.equal(item["valid"], item["depth"] > 0)
    # Surfaces face their camera: in the camera frame (z forward) a visible normal points back, n_z < 0.
    for i in range(0, len(train), 7):
        item = expand_views(train[i])
        assert (item["normal"][2][item["valid"]] < 0.05).float().mean() > 0.95


def test_augmentation_keeps_the_targets_exact(tiny_dataset):
    plain = SceneViews(tiny_dataset / "scenes", "train", image_size=32, max_scenes=1)
    aug = SceneViews(tiny_dataset / "scenes", "train", image_size=32, max_scenes=1, augment=True)
    torch.manual_seed(0)
    seen_flip = seen_perm = False
    for _ in range(20):
        a, p = expand_views(aug[0]), expand_views(plain[0])
        flipped = not torch.equal(a["depth"], p["depth"])
        q = {k: v.flip(-1) for k, v in p.items()} if flipped else p
        if flipped:
            q["normal"] = q["normal"] * torch.tensor([-1.0, 1.0, 1.0]).view(3, 1, 1)
        assert torch.equal(a["depth"], q["depth"]) and torch.allclose(a["normal"], q["normal"])
        # One channel permutation for image and base colour alike.
        perms = [c for c in ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))
                 if torch.equal(a["image"], q["image"][list(c)]) and torch.equal(a["base_colour"], q["base_colour"][list(c)])]
        assert perms
        seen_flip |= flipped
        seen_perm |= (0, 1, 2) not in perms
    assert seen_flip and seen_perm


def test_random_zoom_is_a_longer_lens_at_the_same_pose():
    """A crop resized back keeps every depth and normal value exact (nearest neighbour), and the crop's content: the
    zoomed map is the crop of the original, upsampled."""
    torch.manual_seed(3)
    size = 16
    depth = torch.arange(size * size, dtype=torch.float32).view(size, size) + 1.0  # every pixel distinct
    normal = torch.stack([depth, -depth, depth * 0.5]) / depth.max()
    image, base = torch.rand(3, size, size), torch.rand(3, size, size)
    for _ in range(10):
        z_image, z_base, z_normal, z_depth, _ = random_zoom(image, base, normal, depth, 0.5, torch.eye(3))
        assert z_depth.shape == (size, size) and z_normal.shape == (3, size, size) and z_image.shape == (3, size, size)
        values = set(z_depth.flatten().tolist())
        assert values <= set(depth.flatten().tolist())  # no interpolated depths
        # The kept depths form a square block of the original: a crop, not a warp.
        rows, cols = np.unravel_index(np.array(sorted(int(v) - 1 for v in values)), (size, size))
        assert len(values) == (np.ptp(rows) + 1) * (np.ptp(cols) + 1) and np.ptp(rows) == np.ptp(cols)
        assert 0.5 * size - 1 <= np.ptp(rows) + 1 <= size
        # Normals travel with their pixels.
        torch.testing.assert_close(z_normal, torch.stack([z_depth, -z_depth, z_depth * 0.5]) / depth.max())
    unzoomed = random_zoom(image, base, normal, depth, 1.0, torch.eye(3))
    assert all(torch.equal(a, b) for a, b in zip(unzoomed, (image, base, normal, depth, torch.eye(3))))


def test_datamodule_batches(tiny_dataset):
    dm = SceneViewDataModule(str(tiny_dataset / "scenes"), image_size=32, batch_size=4, batches_per_epoch=3,
                             crop_scale_min=0.7)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 3 and batches[0]["image"].shape == (4, 3, 32, 32)
    assert sum(b["image"].shape[0] for b in dm.val_dataloader()) == len(dm.val_set)


def test_train_scenes_limits_the_training_rooms_only(tiny_dataset, tmp_path):
    scenes = tmp_path / "scenes"
    shutil.copytree(tiny_dataset / "scenes", scenes)
    # A second held-out room (a copy of a training room), so that a limit wrongly applied to both splits shows.
    train_rooms = sorted(name for name, m in _rooms(tmp_path).items() if m["split"] == "train")
    assert len(train_rooms) > 1, "the fixture needs two training rooms for this test"
    shutil.copytree(scenes / train_rooms[0], scenes / "zz_held_out_copy")
    meta = json.loads((scenes / "zz_held_out_copy" / "scene.json").read_text())
    (scenes / "zz_held_out_copy" / "scene.json").write_text(json.dumps({**meta, "split": "val"}))
    full = SceneViewDataModule(str(scenes), image_size=32)
    full.setup("fit")
    assert len(full.val_set.rooms) == 2
    dm = SceneViewDataModule(str(scenes), image_size=32, train_scenes=1)
    dm.setup("fit")
    assert dm.train_set.rooms == train_rooms[:1]
    assert dm.val_set.rooms == full.val_set.rooms and len(dm.val_set) == len(full.val_set)
    with pytest.raises(ValueError, match="train_scenes"):
        SceneViewDataModule(str(scenes), image_size=32, train_scenes=0)


def test_compact_items_widen_to_the_float_maps_of_the_stored_views(tiny_dataset):
    """Views cross the loader as uint8 colour and float16 normals; the datamodule's transfer hook gives the
    stage float32 maps with the values of the arrays in memory, the colour in [0, 1]."""
    dm = SceneViewDataModule(str(tiny_dataset / "scenes"), image_size=32, batch_size=4)
    dm.setup("fit")
    raw = next(iter(dm.val_dataloader()))
    assert raw["image"].dtype == raw["base_colour"].dtype == torch.uint8 and raw["normal"].dtype == torch.float16
    batch = dm.on_after_batch_transfer(raw, 0)
    views = dm.val_set
    expect_image = torch.from_numpy(views.rgb[:4]).permute(0, 3, 1, 2).float() / 255.0
    assert batch["image"].dtype == batch["normal"].dtype == torch.float32
    torch.testing.assert_close(batch["image"], expect_image, rtol=0, atol=0)
    torch.testing.assert_close(batch["base_colour"],
                               torch.from_numpy(views.base_colour[:4]).permute(0, 3, 1, 2).float() / 255.0, rtol=0, atol=0)
    torch.testing.assert_close(batch["normal"], torch.from_numpy(views.normal[:4].astype(np.float32)).permute(0, 3, 1, 2),
                               rtol=0, atol=0)
    assert torch.equal(batch["valid"], batch["depth"] > 0)
    # Zoom crops resample colour off the uint8 grid: those items carry float colour, widened as they are.
    zoomed = SceneViews(tiny_dataset / "scenes", "train", image_size=32, augment=True, crop_scale_min=0.5, max_scenes=1)
    item = zoomed[0]
    assert item["image"].dtype == torch.float32 and expand_views(item)["image"] is item["image"]


def test_rooms_without_split_or_base_colour_are_named(tiny_dataset, tmp_path):
    room = sorted((tiny_dataset / "scenes").iterdir())[0]
    copy = tmp_path / "scenes" / room.name
    shutil.copytree(room, copy)
    (copy / "views" / "basecolor_001.png").unlink()
    with pytest.raises(DataFormatError, match=r"scene.json: field 'w2c\[1\]'.*basecolor_001.png.*rerun prepare"):
        SceneViews(tmp_path / "scenes", json.loads((copy / "scene.json").read_text())["split"], image_size=32)
    meta = json.loads((copy / "scene.json").read_text())
    del meta["split"]
    (copy / "scene.json").write_text(json.dumps(meta))
    with pytest.raises(DataFormatError, match="field 'split'"):
        SceneViews(tmp_path / "scenes", "train", image_size=32)
    with pytest.raises(FileNotFoundError, match="run prepare.py"):
        SceneViews(tmp_path / "nowhere", "train", image_size=32)



def test_random_zoom_intrinsics_follow_the_crop():
    """A ramp image whose colour is each pixel's own normalised (u, v): after the zoom, the returned intrinsics send
    every output pixel's ray through the original pixel whose colour it now holds."""
    torch.manual_seed(4)
    size = 32
    centres = (torch.arange(size) + 0.5) / size
    image = torch.stack([centres.expand(size, size), centres[:, None].expand(size, size), torch.zeros(size, size)])
    K = torch.tensor([[0.9, 0.0, 0.47], [0.0, 0.9, 0.52], [0.0, 0.0, 1.0]])
    zoomed_any = False
    for _ in range(8):
        z_image, *_, z_K = random_zoom(image, image, image, image[0], 0.5, K)
        if torch.equal(z_K, K):
            continue
        zoomed_any = True
        # the same ray: (u' - cx') / fx' = (u - cx) / fx
        u = K[0, 2] + K[0, 0] * (centres - z_K[0, 2]) / z_K[0, 0]
        v = K[1, 2] + K[1, 1] * (centres - z_K[1, 2]) / z_K[1, 1]
        inner = slice(1, size - 1)  # bilinear reads clamp at the crop's border
        torch.testing.assert_close(z_image[0][inner, inner], u[None, inner].expand(size - 2, -1), atol=1e-5, rtol=0)
        torch.testing.assert_close(z_image[1][inner, inner], v[inner, None].expand(-1, size - 2), atol=1e-5, rtol=0)
    assert zoomed_any


def test_items_carry_their_camera_mirrored_with_a_flip(tiny_dataset):
    from genrecon.geometry.floor_rays import floor_ray_maps

    plain = SceneViews(tiny_dataset / "scenes", "train", image_size=32, max_scenes=1)
    aug = SceneViews(tiny_dataset / "scenes", "train", image_size=32, max_scenes=1, augment=True)
    meta = json.loads((tiny_dataset / "scenes" / plain.rooms[0] / "scene.json").read_text())
    torch.manual_seed(2)
    flips, floor_shares = 0, []
    for i in range(len(plain)):
        p, a = plain[i], aug[i]
        # the rooms' floor (z = 0) lies where the camera puts it: most up-facing pixels are floor, at its depth
        item = expand_views(p)
        up = (item["normal"] * item["w2c"][:3, 2].view(3, 1, 1)).sum(0) > 0.99  # world +z in the camera frame
        surface = item["valid"] & up
        if surface.sum() >= 40:
            ratio = item["depth"] * floor_ray_maps(item["w2c"], item["intrinsics"], 32, floor_z=0.0)[0]
            floor_shares.append(float(((ratio - 1).abs() < 0.05)[surface].float().mean()))
        torch.testing.assert_close(p["w2c"], torch.tensor(meta["w2c"][i], dtype=torch.float32))
        torch.testing.assert_close(p["intrinsics"], torch.tensor(meta["intrinsics"][i], dtype=torch.float32))
        assert torch.equal(a["w2c"], p["w2c"])
        if torch.equal(a["depth"], p["depth"]):
            assert torch.equal(a["intrinsics"], p["intrinsics"])
            continue
        flips += 1
        mirrored = p["intrinsics"].clone()
        mirrored[0, 0], mirrored[0, 2] = -mirrored[0, 0], 1.0 - mirrored[0, 2]
        assert torch.equal(a["intrinsics"], mirrored)
        torch.testing.assert_close(floor_ray_maps(a["w2c"], a["intrinsics"], 32, 0.0),
                                   floor_ray_maps(p["w2c"], p["intrinsics"], 32, 0.0).flip(-1), atol=1e-5, rtol=0)
    assert flips > 0
    assert len(floor_shares) > 4 and np.mean(floor_shares) > 0.5, floor_shares
