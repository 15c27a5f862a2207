"""Scene sources as lists of jobs: what ``prepare.py`` iterates over, one job per room or per house file.

Jobs are picklable (module-level functions bound with ``functools.partial``) so they can run in worker
processes; each returns the scenes of its item and the counts of what its importer skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from genrecon.data.errors import DataFormatError, SkipLog
from genrecon.data.scenes import Scene, SyntheticRoomConfig, generate_room, load_front3d_house, load_sage_scene


@dataclass
class SceneJob:
    """One item of a source: ``load()`` returns ``(scenes, skipped_counts)``."""

    name: str
    load: Callable[[], tuple[list[Scene], dict[str, int]]]


def _synthetic(seed: int, index: int, config: dict[str, Any]) -> tuple[list[Scene], dict[str, int]]:
    return [generate_room(seed, index, SyntheticRoomConfig(**config))], {}


def _front3d(house: str, future_dir: str, texture_dir: str | None, on_error: str):
    log = SkipLog(on_error)
    scenes = load_front3d_house(house, future_dir, texture_root=texture_dir, on_error=on_error, log=log)
    return scenes, dict(log.counts)


def _sage(folder: str, on_error: str):
    log = SkipLog(on_error)
    return [load_sage_scene(folder, on_error=on_error, log=log)], dict(log.counts)


def _existing_dir(cfg: Mapping[str, Any], key: str) -> Path:
    path = Path(str(cfg[key]))
    if not path.is_dir():
        raise DataFormatError(path, f"dataset.{key}", "folder does not exist")
    return path


def scene_jobs(cfg: Mapping[str, Any], on_error: str = "raise") -> list[SceneJob]:
    """The jobs of the source ``cfg.name`` (a ``conf/dataset/*.yaml`` node)."""
    name = cfg["name"]
    if name == "synthetic":
        room_cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(cfg.get("room", {}) or {}).items()}
        SyntheticRoomConfig(**room_cfg)  # validate in the parent, before any worker starts
        return [
            SceneJob(f"synthetic_{cfg['seed']}_{i}", partial(_synthetic, int(cfg["seed"]), i, room_cfg))
            for i in range(int(cfg["num_scenes"]))
        ]
    if name == "front3d":
        front, future = _existing_dir(cfg, "front_dir"), _existing_dir(cfg, "future_dir")
        texture = str(cfg["texture_dir"]) if cfg.get("texture_dir") else None
        houses = sorted(front.glob("*.json"))[: cfg.get("max_items") or None]
        return [SceneJob(h.stem, partial(_front3d, str(h), str(future), texture, on_error)) for h in houses]
    if name == "sage":
        root = _existing_dir(cfg, "scenes_dir")
        folders = sorted(p for p in root.iterdir() if p.is_dir() and any(p.glob("layout_*.json")))
        folders = folders[: cfg.get("max_items") or None]
        return [SceneJob(f.name, partial(_sage, str(f), on_error)) for f in folders]
    raise ValueError(f"dataset.name: unknown scene source {name!r} (synthetic, front3d, sage)")
