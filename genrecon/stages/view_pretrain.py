"""``stage=view_pretrain``: the flows' view encoder pretrained on the rendered rooms (a deviation from GenRecon).

GenRecon's flows read DINOv3 features; no weights can be downloaded here, and the small ViT that replaces it
learns little about geometry or materials from the flow loss alone. This stage trains that encoder (the preset's
``image_encoder``, the same class and size the flows build) to read each view's depth, normals and unshaded base
colour (:mod:`genrecon.models.view_heads`), from the renders ``prepare.py`` already writes. The flows load it
with ``stage.module.image_encoder_ckpt`` (:func:`load_pretrained_view_encoder`), and the depth head into their
depth cue when ``preset.flow.depth_cue`` has the same bins. An encoder with ``geometry_channels`` gets each view's
floor-ray maps (:mod:`genrecon.geometry.floor_rays`; the rooms' floor is z = 0, depths in ``depth_unit_m``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from torch import Tensor, nn

from genrecon.data.errors import DataFormatError
from genrecon.geometry.floor_rays import append_floor_rays
from genrecon.models.cell_cue import CellCue
from genrecon.models.depth_cue import DepthCue
from genrecon.models.image_encoder import CheckpointMismatchError, ImageEncoder, load_strict
from genrecon.models.view_heads import DENSE_CHANNELS, ViewPropertyHead, view_property_losses
from genrecon.stages.base import Stage

STAGE_NAME = "view_pretrain"


class ViewPretrainStage(Stage):
    """Image encoder + :class:`ViewPropertyHead`, trained on single views.

    Args:
        image_encoder: the encoder to pretrain (the preset's ``image_encoder``).
        subdivisions: dense cells per patch edge.
        depth_bins / max_depth: the depth head's bins in chunk units (match ``preset.flow.depth_cue``).
        depth_unit_m: metres per chunk unit for those bins (the mean training chunk edge, 2.85 m).
        loss_weights: per term: ``base_colour``, ``normal``, ``log_depth``, ``depth_bins``.
        Other args: :class:`Stage`.
    """

    def __init__(
        self,
        image_encoder: ImageEncoder,
        subdivisions: int = 4,
        depth_bins: int = 64,
        max_depth: float = 4.0,
        depth_unit_m: float = 2.85,
        loss_weights: dict[str, float] | None = None,
        **stage_kwargs: Any,
    ) -> None:
        super().__init__(**stage_kwargs)
        self.save_hyperparameters(ignore=["image_encoder"])
        self.image_encoder = image_encoder
        self.head = ViewPropertyHead(image_encoder.out_channels, subdivisions, depth_bins, max_depth)
        self.depth_unit_m = float(depth_unit_m)
        self.loss_weights = dict(loss_weights or {})

    def _losses(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        images = batch["image"]
        if self.image_encoder.geometry_channels:
            images = append_floor_rays(images, batch["w2c"], batch["intrinsics"], 0.0, self.depth_unit_m)
        tokens = self.image_encoder(images)
        return view_property_losses(self.head, tokens, self.image_encoder.num_global_tokens, batch,
                                    self.image_encoder.patch_size, self.depth_unit_m, self.loss_weights)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss, metrics = self._losses(batch)
        self.log_dict({f"train/{k}": v for k, v in metrics.items()})
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        loss, metrics = self._losses(batch)
        self.log_dict({"val/loss": loss, **{f"val/{k}": v for k, v in metrics.items()}}, prog_bar=False,
                      sync_dist=True)


def load_pretrained_view_encoder(path: str | Path, encoder: ImageEncoder | None = None,
                                 depth_cue: DepthCue | None = None, cell_cue: CellCue | None = None) -> ImageEncoder:
    """The image encoder of a ``view_pretrain`` checkpoint (its EMA weights when EMA was on).

    ``encoder``: load into this module (its architecture must match, checked strictly); None builds the
    checkpoint's own ``image_encoder`` config. ``depth_cue``: also load the depth head into ``depth_cue.head``
    (its bins and range must equal the pretraining's). ``cell_cue``: also load the dense cell head into
    ``cell_cue.head`` (its subdivisions and cell channels must equal the pretraining's).
    """
    meta, state = _read_pretraining(path)
    if encoder is None:
        encoder = hydra.utils.instantiate(meta["module"]["image_encoder"])
    _load_prefixed(encoder, state, "image_encoder.", path)
    if depth_cue is not None:
        module = meta["module"]
        bins, max_depth = int(module.get("depth_bins", 64)), float(module.get("max_depth", 4.0))
        if (bins, max_depth) != (depth_cue.bins, depth_cue.max_depth):
            raise DataFormatError(path, "genrecon.module.depth_bins",
                                  f"depth head has {bins} bins over [0, {max_depth}), the depth cue "
                                  f"{depth_cue.bins} over [0, {depth_cue.max_depth})")
        _load_prefixed(depth_cue.head, state, "head.depth_bins.", path)
    if cell_cue is not None:
        sub = int(meta["module"].get("subdivisions", 4))
        if (sub, DENSE_CHANNELS) != (cell_cue.subdivisions, cell_cue.cell_channels):
            raise DataFormatError(path, "genrecon.module.subdivisions",
                                  f"cell head has {sub}² cells of {DENSE_CHANNELS} values, the cell cue "
                                  f"{cell_cue.subdivisions}² of {cell_cue.cell_channels}")
        _load_prefixed(cell_cue.head, state, "head.dense.", path)
    return encoder


def load_pretrained_view_head(path: str | Path) -> ViewPropertyHead:
    """The read-out head of a ``view_pretrain`` checkpoint (dense cells and depth bins), built from its config."""
    meta, state = _read_pretraining(path)
    module = meta["module"]
    weight = state.get("head.dense.weight")
    if weight is None:
        raise DataFormatError(path, "state_dict.head.dense.weight", "missing")
    head = ViewPropertyHead(weight.shape[1], int(module.get("subdivisions", 4)), int(module.get("depth_bins", 64)),
                            float(module.get("max_depth", 4.0)))
    _load_prefixed(head, state, "head.", path)
    return head


def _read_pretraining(path: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(genrecon metadata, state dict) of a checkpoint, which must be a ``view_pretrain`` one."""
    from genrecon.stages.loading import read_stage_checkpoint

    ckpt = read_stage_checkpoint(path)
    meta = ckpt["genrecon"]
    if meta.get("stage") != STAGE_NAME:
        raise DataFormatError(path, "genrecon.stage", f"is a {meta.get('stage')!r} checkpoint, expected {STAGE_NAME!r}")
    return meta, ckpt["state_dict"]


def _load_prefixed(module: nn.Module, state: dict[str, Tensor], prefix: str, path: str | Path) -> None:
    """:func:`genrecon.models.image_encoder.load_strict` of the ``prefix`` entries, failing as a data error that
    names the checkpoint and the prefix."""
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    try:
        load_strict(module, sub, Path(path))
    except CheckpointMismatchError as err:
        raise DataFormatError(path, f"state_dict.{prefix}*", f"does not match the module: {err}") from None
