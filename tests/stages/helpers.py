"""Helpers for stage tests: run the real train task on test-size data and read back the logged losses."""

from __future__ import annotations

from pathlib import Path

from genrecon.tasks.train import train
from genrecon.utils.test_size import FAST_TRAINER_OVERRIDES, logged_series
from tests.conftest import compose_config

FAST_TRAINER = FAST_TRAINER_OVERRIDES


def run_train(overrides: list[str], dataset_root: Path, out: Path) -> tuple[dict[str, float], dict[str, list[float]]]:
    """``train(cfg)`` with the overrides; returns its metrics and every logged series from metrics.csv."""
    cfg = compose_config("train", FAST_TRAINER + [f"dataset.root={dataset_root}", f"paths.output_dir={out}"] + overrides)
    metrics = train(cfg)
    return metrics, logged_series(out)


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
