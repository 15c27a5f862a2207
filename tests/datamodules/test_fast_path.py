"""The loader's fast path (per-part decoding, lazy views, shared-memory collate) gives bitwise the batches of
the plain path: every payload decoded eagerly and collated with ``torch.from_numpy(np.stack/concatenate)``."""

import numpy as np
import pytest
import torch

from datamodules import chunks
from datamodules.chunks import ChunkStream
from genrecon.data.batching import ViewSampling, sample_parts
from genrecon.data.shards import (
    AtomicShardWriter,
    decode_chunk_sample,
    encode_chunk_sample,
    encode_safetensors,
)

FIELD_SETS = [
    ["ss_latent", "views", "occupancy"],
    ["shape_latent", "views"],
    ["shape_latent", "tex_latent", "views", "ovoxel"],
    ["occupancy", "ovoxel"],
    ["views"],
]


def _sample(key: str, rng: np.random.Generator) -> dict:
    n_views, size, k, lat = int(rng.integers(3, 9)), 16, int(rng.integers(20, 60)), int(rng.integers(5, 30))
    alpha = rng.integers(0, 256, (n_views, size, size, 1), dtype=np.uint8)
    rgb = (rng.integers(0, 256, (n_views, size, size, 3)) * alpha // 255).astype(np.uint8)
    sample = encode_chunk_sample(
        key=key,
        meta={"scene_id": key.rsplit("_", 1)[0], "chunk_index": 0, "ovoxel_resolution": 32},
        views=np.concatenate([rgb, alpha], -1),
        w2c=rng.standard_normal((n_views, 4, 4)),
        intrinsics=rng.standard_normal((n_views, 3, 3)),
        coverage=rng.uniform(0.2, 1.0, n_views),
        chunk_from_world=np.eye(4),
        occupancy=rng.random((8, 8, 8)) > 0.6,
        ovoxel_packed={
            "coords": rng.integers(0, 32, (k, 3)).astype(np.uint16),
            "vertex_offset": rng.integers(0, 256, (k, 3), dtype=np.uint8),
            "intersected": rng.integers(0, 8, k, dtype=np.uint8),
            "attributes": rng.integers(0, 256, (k, 6), dtype=np.uint8),
        },
    )
    sample["latents.safetensors"] = encode_safetensors(
        {
            "ss_latent": rng.standard_normal((8, 4, 4, 4)).astype(np.float32),
            "shape_coords": rng.integers(0, 16, (lat, 3)).astype(np.uint16),
            "shape_feats": rng.standard_normal((lat, 32)).astype(np.float32),
            "tex_feats": rng.standard_normal((lat, 32)).astype(np.float32),
        }
    )
    return sample


# ---------------------------------------------------------------- the plain path (the loader before the fast path)
def _plain_sparse(coords_list, feats_list):
    coords = [
        np.concatenate([np.full((len(c), 1), i, np.int32), c.astype(np.int32)], axis=1)
        for i, c in enumerate(coords_list)
    ]
    return torch.from_numpy(np.concatenate(coords)), torch.from_numpy(np.concatenate(feats_list)).float()


def _plain_collate(items: list[dict]) -> dict:
    from genrecon.data.batching import token_offsets

    batch = {"keys": [it["key"] for it in items]}
    first = items[0]
    if "occupancy" in first:
        batch["occupancy"] = torch.from_numpy(np.stack([it["occupancy"] for it in items])).float().unsqueeze(1)
    if "ovoxel" in first:
        voxels = [it["ovoxel"] for it in items]
        coords, shape = _plain_sparse([v.coords for v in voxels], [v.shape_features() for v in voxels])
        batch["ovoxel_coords"] = coords
        batch["ovoxel_token_offsets"] = token_offsets([len(v.coords) for v in voxels])
        batch["ovoxel_shape"] = shape
        batch["ovoxel_flags"] = torch.from_numpy(np.concatenate([v.intersected for v in voxels])).float()
        batch["ovoxel_offset"] = torch.from_numpy(np.concatenate([v.vertex_offset for v in voxels])).float()
        batch["ovoxel_pbr"] = torch.from_numpy(np.concatenate([v.attributes for v in voxels])).float()
        batch["ovoxel_resolution"] = int(voxels[0].resolution)
    if "views" in first:
        n_max = max(1, max(len(it["views"]) for it in items))
        b, size = len(items), items[0]["views"].shape[1] if len(items[0]["views"]) else 1
        views, w2c = torch.zeros(b, n_max, 3, size, size), torch.zeros(b, n_max, 4, 4)
        intr, mask = torch.zeros(b, n_max, 3, 3), torch.zeros(b, n_max, dtype=torch.bool)
        for i, it in enumerate(items):
            n = len(it["views"])
            if n:
                rgba = torch.from_numpy(it["views"]).float() / 255.0
                views[i, :n] = rgba[..., :3].permute(0, 3, 1, 2)
                w2c[i, :n] = torch.from_numpy(it["w2c"])
                intr[i, :n] = torch.from_numpy(it["intrinsics"])
                mask[i, :n] = True
        counts = tuple(len(it["views"]) for it in items)
        batch.update(views=views, w2c=w2c, intrinsics=intr, view_mask=mask, view_counts=counts)
    if "ss_latent" in first:
        batch["ss_latent"] = torch.from_numpy(np.stack([it["ss_latent"]["ss_latent"] for it in items])).float()
    if "shape_latent" in first:
        coords, feats = _plain_sparse(
            [it["shape_latent"]["shape_coords"] for it in items], [it["shape_latent"]["shape_feats"] for it in items]
        )
        batch["shape_coords"], batch["shape_feats"] = coords, feats
        batch["shape_token_offsets"] = token_offsets([len(it["shape_latent"]["shape_coords"]) for it in items])
    if "tex_latent" in first:
        batch["tex_feats"] = torch.from_numpy(np.concatenate([it["tex_latent"]["tex_feats"] for it in items])).float()
    return batch


def _batches(urls, fields, workers: int) -> list[dict]:
    stream = ChunkStream(urls, fields, 3, 4, 7, ViewSampling(max_views=6, min_coverage=0.4), train=True, shuffle_buffer=4)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers)
    return list(loader)


def _assert_same(fast: list[dict], plain: list[dict]) -> None:
    assert len(fast) == len(plain)
    for f, p in zip(fast, plain):
        assert f.keys() == p.keys()
        for name in p:
            if isinstance(p[name], torch.Tensor):
                assert f[name].dtype == p[name].dtype and f[name].shape == p[name].shape, name
                # bitwise: compare the raw bytes (NaN-safe, distinguishes -0.0)
                assert f[name].contiguous().view(torch.uint8).equal(p[name].contiguous().view(torch.uint8)), name
            else:
                assert f[name] == p[name], name


@pytest.fixture(scope="module")
def urls(tmp_path_factory):
    root = tmp_path_factory.mktemp("fastpath")
    rng = np.random.default_rng(5)
    with AtomicShardWriter(root, "train", 4) as w:
        for i in range(10):
            w.write(_sample(f"room_{i:05d}_000", rng))
    return [str(p) for p in sorted(root.glob("train-*.tar"))]


@pytest.mark.parametrize("fields", FIELD_SETS, ids=lambda f: "+".join(f))
def test_fast_path_batches_equal_eager_decoding_and_plain_collate(urls, fields, monkeypatch):
    fast = _batches(urls, fields, workers=0)
    fast_workers = _batches(urls, fields, workers=2)  # collate into shared memory in the workers
    with monkeypatch.context() as m:
        m.setattr(chunks, "decode_chunk_sample", lambda raw, views=True, parts=None: decode_chunk_sample(raw, views=True))
        m.setattr(chunks, "collate", _plain_collate)
        plain = _batches(urls, fields, workers=0)
        plain_workers = _batches(urls, fields, workers=2)  # forked workers inherit the patches
    assert fast[0]["keys"] and len(plain) == 4
    _assert_same(fast, plain)
    _assert_same(fast_workers, plain_workers)


def test_parts_decode_only_what_the_fields_need(urls):
    import webdataset as wds

    raw = next(iter(wds.DataPipeline(wds.SimpleShardList(urls[:1]), wds.tarfile_to_samples())))
    assert sample_parts(["shape_latent", "views"]) == ("latents",)
    assert sample_parts(["occupancy", "ovoxel", "views"]) == ("occupancy", "ovoxel")
    s = decode_chunk_sample(raw, views="lazy", parts=sample_parts(["shape_latent", "views"]))
    assert s.ovoxel == {} and s.occupancy.size == 0 and "shape_feats" in s.latents
    full = decode_chunk_sample(raw, views="lazy")
    assert full.occupancy.shape == (8, 8, 8) and "coords" in full.ovoxel
    with pytest.raises(ValueError, match="unknown sample parts"):
        decode_chunk_sample(raw, parts=["views"])
