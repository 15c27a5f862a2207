"""Body of ``train.py``: build everything from the config with Hydra, fit, optionally test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from callbacks.rng_state import RNGStateCheckpoint
from genrecon.utils.config import instantiate_group, print_config_tree, require_complete
from genrecon.utils.logging import RankedLogger
from genrecon.utils.run_dir import pinned_wandb_id, resolve_ckpt_path
from genrecon.utils.task import TaskContext, task_wrapper

log = RankedLogger(__name__)


@task_wrapper
def train(cfg: DictConfig, ctx: TaskContext) -> dict[str, float]:
    """Train the stage ``cfg.stage`` and return the logged metrics (floats) for sweepers."""
    require_complete(cfg)
    ctx.output_dir = cfg.paths.output_dir
    print_config_tree(cfg, save_to=Path(cfg.paths.output_dir) / "config_tree.log")
    L.seed_everything(cfg.seed, workers=True)

    log.info(f"Instantiating datamodule <{cfg.stage.datamodule._target_}>")
    datamodule: L.LightningDataModule = hydra.utils.instantiate(cfg.stage.datamodule)
    log.info(f"Instantiating stage <{cfg.stage.module._target_}>")
    module: L.LightningModule = hydra.utils.instantiate(cfg.stage.module)
    module.build_config = {
        "stage": cfg.stage.name,
        "module": OmegaConf.to_container(cfg.stage.module, resolve=True),
        "preset": OmegaConf.to_container(cfg.preset, resolve=True),
    }

    callbacks = instantiate_group(cfg.get("callbacks"))
    # Part of the resume contract, not a choice: every rank's RNG states go into each checkpoint.
    callbacks.append(RNGStateCheckpoint())
    if cfg.get("logger") and "wandb" in cfg.logger:
        cfg.logger.wandb.id = pinned_wandb_id(cfg.paths.output_dir)
    ctx.loggers = instantiate_group(cfg.get("logger"))
    log.info(f"Instantiating trainer <{cfg.trainer._target_}>")
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=ctx.loggers or False, _convert_="partial"
    )
    _log_hyperparameters(cfg, module, trainer)

    if cfg.get("train", True):
        ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), cfg.paths.output_dir)
        trainer.fit(model=module, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics = _as_floats(trainer.callback_metrics)
    if cfg.get("test", False):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        trainer.test(model=module, datamodule=datamodule, ckpt_path=best or None)
        metrics.update(_as_floats(trainer.callback_metrics))
    return metrics


def _as_floats(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


@rank_zero_only
def _log_hyperparameters(cfg: DictConfig, module: L.LightningModule, trainer: L.Trainer) -> None:
    if not trainer.loggers:
        return
    params = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    hparams = {
        "stage": OmegaConf.to_container(cfg.stage, resolve=True),
        "dataset": OmegaConf.to_container(cfg.dataset, resolve=True),
        "preset": OmegaConf.to_container(cfg.preset, resolve=True),
        "trainer": OmegaConf.to_container(cfg.trainer, resolve=True),
        "seed": cfg.seed,
        "ckpt_path": cfg.get("ckpt_path"),
        "run_name": cfg.run_name,
        "model/params/total": params,
        "model/params/trainable": trainable,
        "model/params/frozen": params - trainable,
    }
    for logger in trainer.loggers:
        logger.log_hyperparams(hparams)
