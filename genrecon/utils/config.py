"""Config helpers shared by the entry points: validation, the printed tree, instantiation of named groups."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, ListConfig, OmegaConf

from genrecon.utils.logging import RankedLogger

log = RankedLogger(__name__)

TREE_ORDER = ("stage", "dataset", "preset", "trainer", "callbacks", "logger", "paths")


def resolved(cfg: DictConfig) -> dict[str, Any]:
    """The job config as plain, resolved containers (without the ``hydra`` node that tests compose in)."""
    return {str(k): OmegaConf.to_container(v, resolve=True) if isinstance(v, DictConfig | ListConfig) else v
            for k, v in cfg.items() if k != "hydra"}


def require_complete(cfg: DictConfig) -> None:
    """Resolve everything once so a missing ``???`` value or a broken interpolation fails up front, with
    OmegaConf's message naming the key, instead of deep inside training."""
    for key in cfg:
        if key != "hydra":  # present only when composed with return_hydra_config (tests)
            node = cfg[key]
            if isinstance(node, DictConfig | ListConfig):
                OmegaConf.to_container(node, resolve=True, throw_on_missing=True)


@rank_zero_only
def print_config_tree(cfg: DictConfig, save_to: str | Path | None = None, order: Sequence[str] = TREE_ORDER) -> None:
    """Print the composed config as a rich tree (rank zero) and save it as ``config_tree.log``."""
    import rich
    import rich.syntax
    import rich.tree

    tree = rich.tree.Tree("CONFIG", style="dim", guide_style="dim")
    keys = [k for k in order if k in cfg] + [k for k in cfg if k not in order and k != "hydra"]
    for key in keys:
        branch = tree.add(str(key), style="bold")
        node = cfg[key]
        text = OmegaConf.to_yaml(node, resolve=True) if isinstance(node, DictConfig) else str(node)
        branch.add(rich.syntax.Syntax(text, "yaml"))
    rich.print(tree)
    if save_to is not None:
        path = Path(save_to)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as f:
            rich.print(tree, file=f)


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a mapping of configs that has a ``_target_`` (callbacks, loggers)."""
    objects: list[Any] = []
    if not group:
        return objects
    if not isinstance(group, DictConfig):
        raise TypeError(f"expected a mapping of configs, got {type(group).__name__}")
    for name, conf in group.items():
        if isinstance(conf, DictConfig) and "_target_" in conf:
            log.info(f"Instantiating {name} <{conf._target_}>")
            objects.append(hydra.utils.instantiate(conf))
    return objects


def metric_value(metrics: dict[str, Any], name: str | None) -> float | None:
    """The value a sweeper optimises, or None (with a warning) when the run never logged it."""
    if not name:
        return None
    if name not in metrics:
        # A run without validation is legitimate; a sweep lists it as "no_metric" (genrecon/utils/sweep.py).
        log.warning(f"optimized_metric '{name}' was not logged (logged: {sorted(metrics)}); returning None")
        return None
    return float(metrics[name])


def compose_entry_config(overrides: Sequence[str], config_name: str = "train") -> DictConfig:
    """``conf/<config_name>.yaml`` composed with ``overrides``: what ``@hydra.main`` hands the entry point, for
    scripts that build stages in-process (benchmarks). No Hydra job runs, so ``${hydra:...}`` stays unresolved."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from genrecon.utils.run_dir import register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[2] / "conf"), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))
