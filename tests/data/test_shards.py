"""Shard payloads round-trip exactly, and no half-written shard is ever visible."""

import hashlib

import numpy as np
import pytest
import webdataset as wds

from genrecon.data.shards import (
    AtomicShardWriter,
    decode_chunk_sample,
    encode_chunk_sample,
    pack_occupancy,
    shard_urls,
    unpack_occupancy,
)


def make_sample(key: str, rng: np.random.Generator, n_views: int = 3, res: int = 16) -> dict:
    views = rng.integers(0, 256, size=(n_views, 8, 8, 4), dtype=np.uint8)
    return encode_chunk_sample(
        key=key,
        meta={"scene_id": key.rsplit("_", 1)[0], "chunk_index": 0, "ovoxel_resolution": 32},
        views=views,
        w2c=np.tile(np.eye(4), (n_views, 1, 1)),
        intrinsics=np.tile(np.eye(3), (n_views, 1, 1)),
        coverage=np.linspace(0.3, 0.9, n_views),
        chunk_from_world=np.eye(4),
        occupancy=rng.random((res, res, res)) > 0.7,
        ovoxel_packed={"coords": rng.integers(0, 32, (10, 3)).astype(np.uint16)},
    )


def test_occupancy_packing_round_trip():
    occ = np.random.default_rng(0).random((16, 16, 16)) > 0.5
    assert np.array_equal(unpack_occupancy(pack_occupancy(occ), 16), occ)


def test_samples_round_trip_through_a_shard(tmp_path):
    rng = np.random.default_rng(0)
    samples = [make_sample(f"room_{i:05d}_000", rng) for i in range(5)]
    with AtomicShardWriter(tmp_path, "train", samples_per_shard=2) as writer:
        for s in samples:
            writer.write(s)
    urls = shard_urls(tmp_path, "train")
    assert [u.rsplit("/", 1)[1] for u in urls] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    read = [decode_chunk_sample(s) for s in wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples())]
    assert [r.key for r in read] == [s["__key__"] for s in samples]
    original = decode_chunk_sample(samples[3])
    assert np.array_equal(read[3].views, original.views)
    assert np.array_equal(read[3].occupancy, original.occupancy)
    assert read[3].meta["num_views"] == 3 and read[3].meta["schema_version"] == 1


def test_crash_leaves_no_finished_shard(tmp_path):
    rng = np.random.default_rng(0)
    with pytest.raises(RuntimeError):
        with AtomicShardWriter(tmp_path, "train", samples_per_shard=2) as writer:
            for i in range(3):
                writer.write(make_sample(f"room_{i:05d}_000", rng))
            raise RuntimeError("simulated crash while shard 2 is open")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["train-000000.tar"]  # the complete shard; the open one was removed, never renamed


def test_same_samples_give_byte_identical_shards(tmp_path):
    digests = []
    for run in range(2):
        rng = np.random.default_rng(0)
        out = tmp_path / str(run)
        with AtomicShardWriter(out, "train", samples_per_shard=4) as writer:
            for i in range(3):
                writer.write(make_sample(f"room_{i:05d}_000", rng))
        digests.append(hashlib.sha256((out / "train-000000.tar").read_bytes()).hexdigest())
    assert digests[0] == digests[1]


def test_keys_with_dots_are_rejected():
    with pytest.raises(ValueError, match="must not contain"):
        make_sample("room.1_000", np.random.default_rng(0))


def test_missing_payload_names_shard_and_field():
    sample = make_sample("room_00000_000", np.random.default_rng(0))
    del sample["occupancy.npy"]
    sample["__url__"] = "shards/train-000000.tar"
    with pytest.raises(KeyError, match="train-000000.tar.*occupancy.npy"):
        decode_chunk_sample(sample)


def test_lazy_views_decode_only_what_is_indexed_and_match_eager_decoding():
    from genrecon.data.shards import LazyViews

    rng = np.random.default_rng(3)
    raw = make_sample("lazyroom_00000_000", rng, n_views=5)
    eager = decode_chunk_sample(raw, views=True)
    lazy = decode_chunk_sample(raw, views="lazy")
    assert isinstance(lazy.views, LazyViews) and len(lazy.views) == 5 and lazy.views.shape == eager.views.shape
    idx = np.array([0, 3, 4])
    np.testing.assert_array_equal(lazy.views[idx], eager.views[idx])
    np.testing.assert_array_equal(lazy.views[2], eager.views[2])
    np.testing.assert_array_equal(np.asarray(lazy.views), eager.views)
    assert lazy.views[np.array([], dtype=np.int64)].shape == (0, 1, 1, 4)
    # only the indexed PNGs are decoded
    calls = []
    import genrecon.data.shards as shards

    original = shards.decode_png
    shards.decode_png = lambda data: calls.append(1) or original(data)
    try:
        lazy.views[np.array([1, 2])]
    finally:
        shards.decode_png = original
    assert len(calls) == 2
