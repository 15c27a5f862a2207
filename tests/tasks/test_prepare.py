"""prepare.py end to end on test-size synthetic rooms: shards with every schema key, determinism, manifest."""

import hashlib
import json

import numpy as np
import pytest
import webdataset as wds

from genrecon.data.chunk_builder import crop_view, square_alpha_box
from genrecon.data.scenes import generate_room
from genrecon.data.shards import REQUIRED_KEYS, decode_chunk_sample, shard_urls
from genrecon.geometry.chunks import crop_to_chunk, sample_training_chunk
from genrecon.geometry.mesh import sample_surface
from genrecon.geometry.ovoxel import mesh_to_ovoxel, ovoxel_to_mesh
from genrecon.tasks.prepare import prepare
from tests.conftest import TINY_DATA_OVERRIDES, compose_config


def _shard_digests(root):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((root / "shards").glob("*.tar"))}


def test_shards_hold_every_schema_key(tiny_dataset):
    manifest = json.loads((tiny_dataset / "manifest.json").read_text())
    assert manifest["samples"]["train"] > 0 and manifest["samples"]["val"] > 0
    assert (tiny_dataset / "contact_sheet.png").stat().st_size > 0
    samples = list(wds.DataPipeline(wds.SimpleShardList(shard_urls(tiny_dataset / "shards", "train")),
                                    wds.tarfile_to_samples()))
    assert len(samples) == manifest["samples"]["train"]
    for raw in samples:
        assert set(REQUIRED_KEYS) <= set(raw)
        s = decode_chunk_sample(raw)
        n = s.meta["num_views"]
        assert s.views.shape == (n, 32, 32, 4) and s.w2c.shape == (n, 4, 4) and s.intrinsics.shape == (n, 3, 3)
        assert s.occupancy.shape == (32, 32, 32) and s.occupancy.any()
        assert s.ovoxel["coords"].shape[1] == 3 and s.ovoxel["attributes"].shape[1] == 6
        # chunk-frame extrinsics are rigid
        r = s.w2c[:, :3, :3].astype(np.float64)
        assert np.allclose(r @ r.transpose(0, 2, 1), np.eye(3), atol=1e-5)
        # the stored views all see the chunk by the 40 % rule
        assert np.all(s.coverage >= 0.4 - 1e-6)


def test_same_seed_gives_byte_identical_shards(tiny_dataset, tmp_path):
    cfg = compose_config("prepare", TINY_DATA_OVERRIDES + [f"paths.data_dir={tmp_path}", f"paths.log_dir={tmp_path}/logs"])
    prepare(cfg)
    assert _shard_digests(tmp_path / tiny_dataset.name) == _shard_digests(tiny_dataset)


def test_bad_dataset_folder_names_the_field(tmp_path):
    cfg = compose_config("prepare", ["dataset=sage", f"dataset.scenes_dir={tmp_path}/missing",
                                     f"paths.data_dir={tmp_path}"])
    with pytest.raises(Exception, match="dataset.scenes_dir"):
        prepare(cfg)


def test_square_alpha_crop_and_intrinsics():
    rgba = np.zeros((40, 60, 4), np.uint8)
    rgba[10:20, 30:50] = 255  # a 20 x 10 blob
    assert square_alpha_box(rgba[..., 3] > 0) == (30, 5, 50, 25)
    K = np.array([[0.5, 0, 0.5], [0, 0.75, 0.5], [0, 0, 1]])
    view, K2 = crop_view(rgba, K, 16)
    assert view.shape == (16, 16, 4)
    # the principal point (pixel 30, 20) lands at crop pixel (0, 15) -> normalised (0, 0.75)
    assert K2[0, 2] == pytest.approx(0.0) and K2[1, 2] == pytest.approx(0.75)


@pytest.mark.parametrize("seed", [0, 1])
def test_ovoxel_round_trip_on_synthetic_chunks_at_128(seed):
    from scipy.spatial import cKDTree

    scene = generate_room(seed, 0)
    rng = np.random.default_rng(seed)
    bounds = scene.floor_bounds
    chunk = sample_training_chunk(rng, bounds[0], bounds[1])
    local = crop_to_chunk(scene.mesh, chunk)
    vox = mesh_to_ovoxel(local, 128, attributes=False)
    verts, faces, _ = ovoxel_to_mesh(vox)
    a, fa, _ = sample_surface(local.vertices, local.faces, 50_000, rng)
    b, fb, _ = sample_surface(verts, faces, 50_000, rng)
    na = local.face_normals()[fa]
    tri = verts[faces]
    nb = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    nb = nb / np.linalg.norm(nb, axis=1, keepdims=True).clip(1e-12)
    nb = nb[fb]
    da, ia = cKDTree(b).query(a)
    db, ib = cKDTree(a).query(b)
    chamfer = 0.5 * (da.mean() + db.mean())
    nc = 0.5 * (np.abs((na * nb[ia]).sum(1)).mean() + np.abs((nb * na[ib]).sum(1)).mean())
    assert chamfer < 1 / 128, chamfer
    assert nc > 0.9, nc


def test_val_items_pick_the_held_out_items_by_index():
    from genrecon.tasks.prepare import _val_indices

    assert _val_indices(10, 0.2) == {8, 9}
    assert _val_indices(10, 0.2, "3:5") == {3, 4}
    assert _val_indices(10, 0.2, [0, 7]) == {0, 7}
    for bad in ("5:12", [10], "3:3", "0:10", "a:b"):
        with pytest.raises(ValueError, match="dataset.val_items"):
            _val_indices(10, 0.2, bad)


def test_val_items_hold_one_set_out_as_the_dataset_grows(tiny_dataset, tmp_path):
    # The tiny dataset holds out its last item (3 of 4); five rooms with val_items 3:4 hold out the same room,
    # byte for byte, and train on one more.
    cfg = compose_config("prepare", TINY_DATA_OVERRIDES + [
        "dataset.num_scenes=5", "dataset.val_items='3:4'", f"paths.data_dir={tmp_path}",
        f"paths.log_dir={tmp_path}/logs"])
    prepare(cfg)
    grown = tmp_path / tiny_dataset.name
    val = {k: v for k, v in _shard_digests(grown).items() if k.startswith("val")}
    assert val and val == {k: v for k, v in _shard_digests(tiny_dataset).items() if k.startswith("val")}
    counts = [json.loads((d / "manifest.json").read_text())["samples"] for d in (tiny_dataset, grown)]
    assert counts[1]["val"] == counts[0]["val"] and counts[1]["train"] > counts[0]["train"]


def test_encode_out_dir_keeps_a_second_set_of_latents_beside_the_first(tiny_latents, tmp_path):
    """``encode.out_dir``: another VAE's latents in a folder of their own (an SS-VAE A/B on the same chunks); the
    VAE that wrote ``latents/`` writes the same latents and statistics there."""
    import shutil

    from safetensors.numpy import load as load_safetensors

    root = tmp_path / "data"
    shutil.copytree(tiny_latents / "shards", root / "shards")
    shutil.copy(tiny_latents / "manifest.json", root / "manifest.json")
    vaes = json.loads((tiny_latents / "latents" / "manifest.json").read_text())["latents"]["vaes"]
    prepare(compose_config("prepare", TINY_DATA_OVERRIDES + [
        "steps=[encode]", f"dataset.root={root}", f"encode.ss_vae_ckpt={vaes['ss']}", "encode.out_dir=latents_b",
        "encode.device=cpu"]))
    assert not (root / "latents").exists()
    names = lambda folder: sorted(p.name for p in folder.glob("*.tar"))  # noqa: E731
    assert names(root / "latents_b") == names(tiny_latents / "latents")
    stats = json.loads((root / "latents_b" / "stats.json").read_text())
    ref = json.loads((tiny_latents / "latents" / "stats.json").read_text())
    assert set(stats) == {"ss"}
    np.testing.assert_allclose(stats["ss"]["mean"], ref["ss"]["mean"], atol=1e-5)
    np.testing.assert_allclose(stats["ss"]["std"], ref["ss"]["std"], atol=1e-5)

    def first_latent(folder):
        sample = next(iter(wds.WebDataset(shard_urls(folder, "val"), shardshuffle=False)))
        return sample["__key__"], load_safetensors(sample["latents.safetensors"])["ss_latent"]

    key, z = first_latent(root / "latents_b")
    ref_key, ref_z = first_latent(tiny_latents / "latents")
    assert key == ref_key and z.shape == ref_z.shape
    np.testing.assert_allclose(z, ref_z, atol=1e-5)


@pytest.mark.parametrize("out_dir", ["../latents", "a/b", "shards", ""])
def test_encode_out_dir_must_be_a_new_folder_inside_the_root(tmp_path, out_dir):
    from genrecon.data.encode import encode_dataset

    with pytest.raises(ValueError, match="encode.out_dir"):
        encode_dataset(tmp_path, ss_vae_ckpt="unused.ckpt", out_dir=out_dir)
