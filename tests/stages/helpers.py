"""Helpers for stage tests: run the real train task on test-size data and read back the logged losses."""

from __future__ import annotations

import csv
from pathlib import Path

from genrecon.tasks.train import train
from tests.conftest import compose_config

FAST_TRAINER = [
    "hardware=cpu", "logger=csv", "callbacks=none", "trainer.enable_model_summary=false",
    "+trainer.enable_progress_bar=false", "+trainer.enable_checkpointing=false", "trainer.log_every_n_steps=1",
]


def run_train(overrides: list[str], dataset_root: Path, out: Path) -> tuple[dict[str, float], dict[str, list[float]]]:
    """``train(cfg)`` with the overrides; returns its metrics and every logged series from metrics.csv."""
    cfg = compose_config("train", FAST_TRAINER + [f"dataset.root={dataset_root}", f"paths.output_dir={out}"] + overrides)
    metrics = train(cfg)
    series: dict[str, list[float]] = {}
    latest = max((out / "csv").glob("version_*/metrics.csv"), key=lambda p: p.stat().st_mtime)
    with open(latest) as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if value not in ("", None):
                    series.setdefault(key, []).append(float(value))
    return metrics, series


def head_tail_ratio(values: list[float], k: int = 5) -> float:
    """Mean of the last ``k`` values over the mean of the first ``k``."""
    return (sum(values[-k:]) / k) / (sum(values[:k]) / k)


def fit_auxiliary_term(stage, batch: dict, name: str, steps: int = 30, lr: float = 3e-3) -> list[float]:
    """Adam steps on one batch minimising the stage's auxiliary term ``name``; returns the term per step."""
    import torch

    opt = torch.optim.Adam(stage.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = stage.auxiliary_losses(batch, stage._prepare(batch))[name]
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses
