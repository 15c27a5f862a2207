"""Test-size configuration and logged-series reading, shared by the test suite and the CPU proxies.

Every dimension is shrunk so that a whole prepare + train cycle takes seconds on 2 CPU cores; the tests'
fixtures (``tests/conftest.py``) and ``benchmarks/flow_tiny_curves.py`` build their data with these overrides.
"""

from __future__ import annotations

import csv
from pathlib import Path

# prepare.py: 4 rooms, 32³ O-Voxels, 32-pixel views.
TINY_DATA_OVERRIDES = [
    "dataset=synthetic",
    "dataset.num_scenes=4",
    "dataset.val_fraction=0.25",
    "preset.ovoxel_resolution=32",
    "preset.occupancy_resolution=32",
    "preset.image_size=32",
    "render.max_cameras=16",
    "chunks.per_scene=3",
    "chunks.min_voxels=16",
    "contact_sheet.rooms=2",
]

# train.py on that data (32³ occupancy -> 8³ SS latent, 32 px views).
TINY_MODEL_OVERRIDES = [
    "preset.ovoxel_resolution=32", "preset.occupancy_resolution=32", "preset.image_size=32",
    "preset.ss_latent_resolution=8", "preset.ss_vae.channels=[8,16,16]", "preset.shape_latent_resolution=8",
]

# train.py without checkpoints, pictures or progress bars, logging every step to CSV.
FAST_TRAINER_OVERRIDES = [
    "hardware=cpu", "logger=csv", "callbacks=none", "trainer.enable_model_summary=false",
    "+trainer.enable_progress_bar=false", "+trainer.enable_checkpointing=false", "trainer.log_every_n_steps=1",
]

# A flow stage at test size, less its step counts: batch 4, up to 4 views, a fast constant rate, no EMA.
TINY_FLOW_OVERRIDES = [
    "stage.val_batches=1", "stage.datamodule.batch_size=4", "stage.datamodule.max_views=4",
    "stage.module.warmup_steps=10", "stage.module.lr=1e-3", "stage.module.lr_new=1e-3", "stage.module.ema_decay=null",
    "stage.module.sample_batches=0", "seed=0",
]


def tiny_vae_overrides(stage: str, dataset_root: str | Path, output_dir: str | Path) -> list[str]:
    """train.py overrides of a 10-step VAE (``stage``) on tiny data, checkpointing at its last step: enough to
    encode latents that the flows can train on."""
    return TINY_MODEL_OVERRIDES + [
        f"stage={stage}", "hardware=cpu", "logger=none", "callbacks=default", "stage.max_steps=10",
        "stage.val_every_n_steps=10", "stage.val_batches=1", "stage.datamodule.batch_size=2",
        "stage.checkpoint_every_n_steps=10", "callbacks.model_summary=null", "callbacks.lr_monitor=null",
        "callbacks.progress_bar=null", f"dataset.root={dataset_root}", f"paths.output_dir={output_dir}",
    ]


def logged_series(run_dir: str | Path) -> dict[str, list[float]]:
    """Every series the CSV logger wrote under ``run_dir`` (its newest ``csv/version_*/metrics.csv``)."""
    latest = max((Path(run_dir) / "csv").glob("version_*/metrics.csv"), key=lambda p: p.stat().st_mtime)
    series: dict[str, list[float]] = {}
    with open(latest) as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if value not in ("", None):
                    series.setdefault(key, []).append(float(value))
    return series
