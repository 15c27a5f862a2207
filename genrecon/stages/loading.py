"""Rebuild a trained stage from its checkpoint alone (for inference, evaluation and the encode step).

Every checkpoint written by ``train.py`` carries ``checkpoint["genrecon"]``: the stage name, the resolved
Hydra config of the module and the preset. The module is re-instantiated from it and the weights (the EMA
weights when EMA was on) are loaded strictly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import torch

from genrecon.data.errors import DataFormatError

# Constructor arguments that point at training-time files; their contents are in the state dict already.
_TRAINING_ONLY_ARGS = ("latent_stats", "ss_vae_ckpt", "image_encoder_ckpt")


def read_stage_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    # mmap: a training checkpoint also holds the optimiser's moments and the pre-EMA weights (~3x the model);
    # mapped, only the tensors used are read (infer spent 17 s loading six checkpoints on an H100 host).
    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if "genrecon" not in ckpt or "state_dict" not in ckpt:
        raise DataFormatError(path, "genrecon", "not a GenRecon stage checkpoint (written by train.py)")
    return ckpt


def load_stage(path: str | Path, expected_stage: str | None = None, device: str | torch.device = "cpu"):
    """The stage module of ``path`` in eval mode; ``expected_stage`` (e.g. ``"ss_flow"``) is checked. The module's
    ``checkpoint_step`` is the training step it was saved at (None for a checkpoint without one)."""
    ckpt = read_stage_checkpoint(path)
    meta = ckpt["genrecon"]
    if expected_stage is not None and meta.get("stage") != expected_stage:
        raise DataFormatError(path, "genrecon.stage", f"is a {meta.get('stage')!r} checkpoint, expected {expected_stage!r}")
    module_cfg = dict(meta["module"])
    for key in _TRAINING_ONLY_ARGS:
        if key in module_cfg:
            module_cfg[key] = None
    module = hydra.utils.instantiate(module_cfg)
    result = module.load_state_dict(ckpt["state_dict"], strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise DataFormatError(
            path, "state_dict",
            f"does not match the {meta.get('stage')} module: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}",
        )
    module.build_config = meta
    # Optimiser steps behind these weights (Lightning's own field), so scores can be placed on a learning curve.
    module.checkpoint_step = int(ckpt["global_step"]) if "global_step" in ckpt else None
    return module.to(device).eval()
