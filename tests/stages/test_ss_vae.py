"""The sparse-structure VAE stage trains through train.py's task on prepared shards and learns."""

import pytest
import torch

from genrecon.metrics.occupancy import occupancy_iou
from genrecon.stages.ss_vae import SparseStructureVAEStage
from tests.stages.helpers import head_tail_ratio, run_train


def test_iou_of_known_masks():
    target = torch.zeros(1, 1, 4, 4, 4)
    target[0, 0, :2] = 1
    logits = torch.full_like(target, -5.0)
    logits[0, 0, :1] = 5.0
    assert occupancy_iou(logits, target).item() == pytest.approx(0.5)


def test_encode_shape_matches_published_ratio():
    stage = SparseStructureVAEStage(channels=[4, 8, 8], num_res_blocks=1, num_res_blocks_middle=1)
    z = stage.encode(torch.zeros(2, 1, 32, 32, 32))
    assert z.shape == (2, 8, 8, 8, 8)


def test_ss_vae_reconstruction_loss_halves(tiny_dataset, tmp_path):
    metrics, series = run_train(
        ["stage=ss_vae", "preset.ss_vae.channels=[8,16,16]", "stage.max_steps=150", "stage.val_every_n_steps=150",
         "stage.val_batches=1", "stage.datamodule.batch_size=2", "stage.module.warmup_steps=10", "seed=0"],
        tiny_dataset, tmp_path,
    )
    recon = [b + d for b, d in zip(series["train/bce"], series["train/dice"])]
    assert head_tail_ratio(recon) < 0.5, recon
    assert metrics["val/iou"] > 0.2
