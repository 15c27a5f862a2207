"""Load the published TRELLIS (sparse-structure) and TRELLIS.2 (shape / texture SC-VAE) VAE checkpoints.

A checkpoint is a local pair ``<stem>.json`` (``{"name": <class name>, "args": {...}}``) and
``<stem>.safetensors``. The JSON is validated field by field (unknown or unsupported fields are errors that
name the file and the field), the matching GenRecon module is built, and the state dict is loaded strictly:
every tensor in the file must be used and every parameter must be present, with equal shapes. The module
names of :mod:`genrecon.models.ss_vae` and :mod:`genrecon.models.sc_vae` equal the published key names, so no
key is renamed. Tensors are cast to the requested dtype (file dtypes follow the ``_fp16`` suffix and are not
relied on).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from genrecon.models.sc_vae import (
    PBR_CHANNELS,
    SHAPE_CHANNELS,
    ShapeVAEDecoder,
    ShapeVAEEncoder,
    TextureVAEDecoder,
    TextureVAEEncoder,
)
from genrecon.models.ss_vae import SparseStructureDecoder, SparseStructureEncoder

_CONVNEXT, _S2C, _C2S = "SparseConvNeXtBlock3d", "SparseResBlockS2C3d", "SparseResBlockC2S3d"
_SC_ENC = {"model_channels": [64, 128, 256, 512, 1024], "latent_channels": 32, "num_blocks": [0, 4, 8, 16, 4]}
_SC_DEC = {"model_channels": [1024, 512, 256, 128, 64], "latent_channels": 32, "num_blocks": [4, 16, 8, 4, 0]}

# Published stems → (class name, architecture fields). Only fields that change the weights are listed; the
# shape decoder's ``resolution`` (256 or 512, set per call at inference) and ``use_fp16`` are not.
PUBLISHED_PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "ss_enc_conv3d_16l8_fp16": (
        "SparseStructureEncoder",
        {
            "in_channels": 1,
            "latent_channels": 8,
            "num_res_blocks": 2,
            "num_res_blocks_middle": 2,
            "channels": [32, 128, 512],
        },
    ),
    "ss_dec_conv3d_16l8_fp16": (
        "SparseStructureDecoder",
        {
            "out_channels": 1,
            "latent_channels": 8,
            "num_res_blocks": 2,
            "num_res_blocks_middle": 2,
            "channels": [512, 128, 32],
        },
    ),
    "shape_enc_next_dc_f16c32_fp16": ("FlexiDualGridVaeEncoder", dict(_SC_ENC)),
    "shape_dec_next_dc_f16c32_fp16": ("FlexiDualGridVaeDecoder", dict(_SC_DEC)),
    "tex_enc_next_dc_f16c32_fp16": ("SparseUnetVaeEncoder", {"in_channels": PBR_CHANNELS, **_SC_ENC}),
    "tex_dec_next_dc_f16c32_fp16": (
        "SparseUnetVaeDecoder",
        {"out_channels": PBR_CHANNELS, "pred_subdiv": False, **_SC_DEC},
    ),
}

# Fields that do not change the architecture: accepted and ignored (precision and memory are the caller's).
_IGNORED = {"use_fp16", "dtype", "use_checkpoint"}


class CheckpointError(ValueError):
    """A checkpoint file does not fit the requested model; the message names the file and the field/key."""


class _Args:
    """Consumes JSON args field by field so that leftovers (unknown fields) can be reported."""

    def __init__(self, path: Path, args: Mapping[str, Any]) -> None:
        self.path, self.rest = path, {k: v for k, v in args.items() if k not in _IGNORED}

    def take(self, field: str, default: Any = ...) -> Any:
        if field in self.rest:
            return self.rest.pop(field)
        if default is ...:
            raise CheckpointError(f"{self.path}: required field args.{field} is missing")
        return default

    def require(self, field: str, allowed: Callable[[Any], bool], what: str, default: Any = ...) -> Any:
        value = self.take(field, default)
        if not allowed(value):
            raise CheckpointError(f"{self.path}: args.{field} = {value!r} is not supported (expected {what})")
        return value

    def block_types(self, field: str, expected: str, count: int) -> None:
        value = self.take(field, expected)
        values = [value] * count if isinstance(value, str) else list(value)
        if len(values) != count or any(v != expected for v in values):
            raise CheckpointError(
                f"{self.path}: args.{field} = {value!r}; only {count}× {expected!r} is supported"
            )

    def done(self) -> None:
        if self.rest:
            raise CheckpointError(f"{self.path}: unsupported field(s) {sorted(self.rest)} in args")


def _sc_common(a: _Args, resample_field: str, resample_type: str) -> dict[str, Any]:
    """Constructor kwargs shared by the SC-VAE encoders and decoders."""
    model_channels = list(a.take("model_channels"))
    num_blocks = list(a.take("num_blocks"))
    a.block_types("block_type", _CONVNEXT, len(model_channels))
    a.block_types(resample_field, resample_type, len(model_channels) - 1)
    a.require("mlp_ratio", lambda v: v == 4, "4", 4)
    return {
        "model_channels": model_channels,
        "latent_channels": a.take("latent_channels"),
        "num_blocks": num_blocks,
    }


_NAMES = {
    "SparseStructureEncoder",
    "SparseStructureDecoder",
    "FlexiDualGridVaeEncoder",
    "FlexiDualGridVaeDecoder",
    "SparseUnetVaeEncoder",
    "SparseUnetVaeDecoder",
}


def _build(path: Path, name: str, args: Mapping[str, Any], backend: str, use_checkpoint: bool) -> nn.Module:
    """Construct the GenRecon module for a published class name and its JSON args."""
    a = _Args(path, args)
    common = {"use_checkpoint": use_checkpoint}
    module: nn.Module
    if name in ("SparseStructureEncoder", "SparseStructureDecoder"):
        a.require("norm_type", lambda v: v == "layer", "'layer'", "layer")
        kw = {
            "latent_channels": a.take("latent_channels"),
            "num_res_blocks": a.take("num_res_blocks"),
            "channels": list(a.take("channels")),
            "num_res_blocks_middle": a.take("num_res_blocks_middle", 2),
            **common,
        }
        if name == "SparseStructureEncoder":
            module = SparseStructureEncoder(in_channels=a.take("in_channels"), **kw)
        else:
            module = SparseStructureDecoder(out_channels=a.take("out_channels"), **kw)
    elif name == "FlexiDualGridVaeEncoder":
        a.require("in_channels", lambda v: v == SHAPE_CHANNELS, str(SHAPE_CHANNELS), SHAPE_CHANNELS)
        module = ShapeVAEEncoder(**_sc_common(a, "down_block_type", _S2C), backend=backend, **common)
    elif name == "FlexiDualGridVaeDecoder":
        a.require("pred_subdiv", lambda v: v is True, "true", True)
        a.require("out_channels", lambda v: v == 7, "7", 7)
        module = ShapeVAEDecoder(
            **_sc_common(a, "up_block_type", _C2S),
            resolution=a.take("resolution", 256),
            voxel_margin=a.take("voxel_margin", 0.5),
            backend=backend,
            **common,
        )
    elif name == "SparseUnetVaeEncoder":
        module = TextureVAEEncoder(
            in_channels=a.take("in_channels"),
            **_sc_common(a, "down_block_type", _S2C),
            backend=backend,
            **common,
        )
    elif name == "SparseUnetVaeDecoder":
        a.require("pred_subdiv", lambda v: v is False, "false (texture decoders follow guide_subs)")
        module = TextureVAEDecoder(
            out_channels=a.take("out_channels"),
            **_sc_common(a, "up_block_type", _C2S),
            backend=backend,
            **common,
        )
    else:
        raise CheckpointError(f"{path}: name {name!r} is not a supported VAE class ({sorted(_NAMES)})")
    a.done()
    return module


def _head(keys: list[str], n: int = 8) -> str:
    return f"{keys[:n]}{' ...' if len(keys) > n else ''}"


def read_config(stem: str | Path) -> tuple[str, dict[str, Any]]:
    """``(name, args)`` of ``<stem>.json``."""
    path = Path(f"{stem}.json")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint config {path} does not exist")
    config = json.loads(path.read_text())
    if not isinstance(config, dict) or "name" not in config or not isinstance(config.get("args", {}), dict):
        raise CheckpointError(f"{path}: expected an object with 'name' and 'args'")
    return config["name"], dict(config.get("args", {}))


def check_preset(stem: str | Path, preset: str) -> None:
    """Raise :class:`CheckpointError` naming the file and field if ``<stem>.json`` differs from the published
    preset ``preset`` (a key of :data:`PUBLISHED_PRESETS`) in its class name or any architecture field."""
    if preset not in PUBLISHED_PRESETS:
        raise KeyError(f"unknown preset {preset!r}; known: {sorted(PUBLISHED_PRESETS)}")
    path = Path(f"{stem}.json")
    name, args = read_config(stem)
    want_name, want_args = PUBLISHED_PRESETS[preset]
    if name != want_name:
        raise CheckpointError(f"{path}: name is {name!r} but preset {preset!r} is {want_name!r}")
    for field, want in want_args.items():
        if field not in args:
            raise CheckpointError(f"{path}: args.{field} is missing (preset {preset!r} has {want!r})")
        have = list(args[field]) if isinstance(args[field], (list, tuple)) else args[field]
        if have != want:
            raise CheckpointError(
                f"{path}: args.{field} = {args[field]!r} but preset {preset!r} has {want!r}"
            )


def build_trellis_vae(
    name: str, args: Mapping[str, Any], backend: str = "torch", use_checkpoint: bool = False
) -> nn.Module:
    """The (randomly initialised) GenRecon module for a published class ``name`` and its JSON ``args``."""
    return _build(Path("<args>"), name, args, backend, use_checkpoint)


def load_trellis_vae(
    stem: str | Path,
    preset: str | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    backend: str = "torch",
    use_checkpoint: bool = False,
) -> nn.Module:
    """Build and load the VAE stored as ``<stem>.json`` + ``<stem>.safetensors``.

    Args:
        stem: path without extension, e.g. ``ckpts/shape_dec_next_dc_f16c32_fp16``.
        preset: if given, the published preset the JSON must match (see :func:`check_preset`).
        dtype: dtype of the loaded parameters.
        device: where the parameters are loaded.
        backend, use_checkpoint: passed to the sparse models (ignored by the dense SS-VAE except checkpoint).

    Returns the module (``SparseStructureEncoder/Decoder``, ``ShapeVAEEncoder/Decoder`` or
    ``TextureVAEEncoder/Decoder``) in eval mode. Raises :class:`CheckpointError` on any mismatch.
    """
    from safetensors.torch import load_file

    if preset is not None:
        check_preset(stem, preset)
    name, args = read_config(stem)
    json_path, weights_path = Path(f"{stem}.json"), Path(f"{stem}.safetensors")
    if not weights_path.is_file():
        raise FileNotFoundError(f"checkpoint weights {weights_path} do not exist")
    # Build on the meta device and load with assign=True: no second full-size copy of the weights.
    with torch.device("meta"):
        module = _build(json_path, name, args, backend, use_checkpoint)
    expected = module.state_dict()
    state = load_file(str(weights_path), device=str(device))
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{weights_path}: keys do not match {name}: missing {_head(missing)} ({len(missing)}), "
            f"unexpected {_head(unexpected)} ({len(unexpected)})"
        )
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            want = tuple(expected[key].shape)
            raise CheckpointError(
                f"{weights_path}: {key} has shape {tuple(tensor.shape)}, {name} expects {want}"
            )
    module.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    return module.eval()
