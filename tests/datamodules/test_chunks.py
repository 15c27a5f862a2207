"""The chunk datamodule gives fixed-length, seeded epochs and view sampling by the published rules."""

import json

import numpy as np
import pytest
import torch

from datamodules.chunks import ChunkDataModule, ChunkStream
from genrecon.data.batching import ViewSampling
from genrecon.data.shards import AtomicShardWriter
from tests.data.test_shards import make_sample


def write_shards(root, n_train=10, n_val=3, per_shard=3):
    rng = np.random.default_rng(1)
    for split, n in (("train", n_train), ("val", n_val)):
        with AtomicShardWriter(root, split, per_shard) as w:
            for i in range(n):
                w.write(make_sample(f"{split}room_{i:05d}_000", rng, n_views=4))
    (root / "manifest.json").write_text(json.dumps({"samples": {"train": n_train, "val": n_val}}))


def test_view_sampling_respects_coverage_and_count():
    cov = np.array([0.1, 0.5, 0.45, 0.9, 0.2])
    rng = np.random.default_rng(0)
    counts = set()
    for _ in range(200):
        idx = ViewSampling(max_views=16, min_coverage=0.4).choose(cov, rng)
        assert set(idx) <= {1, 2, 3} and len(set(idx)) == len(idx)
        counts.add(len(idx))
    assert counts == {1, 2, 3}
    assert len(ViewSampling(fixed_count=2).choose(cov, rng)) == 2


def test_epochs_have_fixed_length_and_batches_are_padded(tmp_path):
    write_shards(tmp_path)
    dm = ChunkDataModule(str(tmp_path), fields=["occupancy", "views"], batch_size=2, min_view_coverage=0.0)
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader) == 5  # 10 training samples / batch 2
    b = batches[0]
    assert b["occupancy"].shape == (2, 1, 16, 16, 16)
    n = b["views"].shape[1]
    assert b["views"].shape == (2, n, 3, 8, 8) and b["view_mask"].shape == (2, n)
    padded = ~b["view_mask"]
    assert torch.all(b["w2c"][padded] == 0)  # padded views have zero extrinsics: invalid in projection
    val = list(dm.val_dataloader())
    assert len(val) == dm.val_batches


def test_same_seed_same_stream_and_resume_skips_consumed_batches(tmp_path):
    write_shards(tmp_path)

    def keys(skip=0, seed=0, workers=0):
        stream = ChunkStream(
            [str(p) for p in sorted(tmp_path.glob("train-*.tar"))], ["occupancy"], 2, 5, seed,
            ViewSampling(), train=True, shuffle_buffer=4,
        )
        stream.position.skip_batches = skip
        loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers)
        return [tuple(b["keys"]) for b in loader]

    full = keys()
    assert full == keys()
    assert full != keys(seed=1)
    assert keys(skip=2) == full[2:]
    with_workers = keys(workers=2)
    assert keys(skip=3, workers=2) == with_workers[3:]


def test_voxel_share_rule_keeps_only_views_that_show_the_chunk(tiny_dataset):
    """With the rule on, every chosen view shows the chunk's voxels on at least that share of its pixels."""
    from genrecon.geometry.cameras import voxel_view_share

    shards = str(tiny_dataset / "shards")
    plain = ChunkDataModule(shards, fields=["occupancy", "views"], batch_size=3, eval_views=8)
    strict = ChunkDataModule(shards, fields=["views"], batch_size=3, eval_views=8, min_voxel_share=0.3)
    for dm in (plain, strict):
        dm.setup("fit")
    full = next(iter(plain.val_dataloader()))
    kept = next(iter(strict.val_dataloader()))
    assert kept["keys"] == full["keys"] and "occupancy" not in kept
    assert kept["view_mask"].sum() < full["view_mask"].sum()
    for i in range(len(kept["keys"])):
        n = int(kept["view_mask"][i].sum())
        share = voxel_view_share(full["occupancy"][i, 0].numpy() > 0, kept["w2c"][i, :n].double().numpy(),
                                 kept["intrinsics"][i, :n].double().numpy())
        assert np.all(share >= 0.3)


def test_loaders_pin_batches_exactly_when_a_gpu_will_take_them(tmp_path, monkeypatch):
    import datamodules.chunks as chunks

    write_shards(tmp_path)
    requested = []

    def spy(*args, pin_memory=False, **kwargs):
        requested.append(pin_memory)
        return torch.utils.data.DataLoader(*args, **kwargs)  # this machine may have nothing to pin for

    monkeypatch.setattr(chunks, "DataLoader", spy)
    for cuda in (True, False):
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        dm = ChunkDataModule(str(tmp_path), fields=["occupancy"], batch_size=2, min_view_coverage=0.0)
        next(iter(dm.train_dataloader()))
        next(iter(dm.val_dataloader()))
        assert requested == [cuda, cuda]
        requested.clear()


def test_train_shards_keep_the_first_shards_and_size_the_epoch(tmp_path):
    write_shards(tmp_path)  # 10 training samples in shards of 3, 3, 3, 1
    dm = ChunkDataModule(str(tmp_path), fields=["occupancy"], batch_size=1, min_view_coverage=0.0, train_shards=2)
    assert dm.train_urls() == sorted(str(p) for p in tmp_path.glob("train-*.tar"))[:2]
    loader = dm.train_dataloader()
    assert len(loader) == 6  # the 6 samples of the first two shards, one a batch
    keys = {k for _ in range(3) for b in loader for k in b["keys"]}  # resampled: some may repeat
    assert keys <= {f"trainroom_{i:05d}_000" for i in range(6)} and len(keys) >= 4
    assert len(ChunkDataModule(str(tmp_path), fields=["occupancy"], batch_size=1).train_dataloader()) == 10
    with pytest.raises(ValueError, match="train_shards=5.*4 training shards"):
        ChunkDataModule(str(tmp_path), fields=["occupancy"], train_shards=5).train_dataloader()
