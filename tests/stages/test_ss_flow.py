"""The sparse-structure flow stage: encode step -> latent shards -> train.py stage=ss_flow; the loss falls."""

import json

import numpy as np
import pytest
import torch

from genrecon.data.shards import decode_chunk_sample, shard_urls
from tests.conftest import TINY_MODEL_OVERRIDES
from tests.stages.helpers import head_tail_ratio, run_train


def test_encode_step_writes_latents_and_statistics(tiny_ss_latents):
    import webdataset as wds

    latents = tiny_ss_latents / "latents"
    stats = json.loads((latents / "stats.json").read_text())
    assert len(stats["ss"]["mean"]) == 8 and all(s > 0 for s in stats["ss"]["std"])
    raw = next(iter(wds.DataPipeline(wds.SimpleShardList(shard_urls(latents, "train")), wds.tarfile_to_samples())))
    sample = decode_chunk_sample(raw)
    assert sample.latents["ss_latent"].shape == (8, 8, 8, 8)
    assert sample.views.shape[0] == sample.meta["num_views"]  # the chunk's other members are kept


def test_ss_flow_loss_falls(tiny_ss_latents, tmp_path):
    torch.manual_seed(0)
    metrics, series = run_train(TINY_MODEL_OVERRIDES + [
        "stage=ss_flow", "stage.max_steps=120", "stage.val_every_n_steps=120", "stage.val_batches=1",
        "stage.datamodule.batch_size=4", "stage.module.warmup_steps=10", "stage.module.lr=1e-3",
        "stage.module.lr_new=1e-3", "stage.module.ema_decay=null", "stage.module.sample_batches=0", "seed=0",
    ], tiny_ss_latents, tmp_path)
    loss = series["train/loss"]
    assert len(loss) == 120
    assert head_tail_ratio(loss, k=20) < 0.7, (np.mean(loss[:20]), np.mean(loss[-20:]))
    assert np.isfinite(metrics["val/loss"])
