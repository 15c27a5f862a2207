"""Loaders for flow-transformer weights: published TRELLIS.2 flows and GenRecon fine-tuned checkpoints.

TRELLIS.2: ``<stem>.json`` ({"name": class, "args": constructor kwargs}) + ``<stem>.safetensors`` (base
weights). GenRecon: ``sparse_structure.pt`` / ``shape_slat.pt`` / ``texture_slat.pt``, a flat dict of tensors
with the base weights, unmerged LoRA tensors, ``aggregator.*`` and ``proj_linears.*``, possibly wrapped and
prefixed.

Both loads are strict: every expected tensor present with the right shape and nothing unknown, except the
dense model's ``rope_phases`` table, which is always recomputed (files may omit it).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from genrecon.models.flow_transformer import DenseFlowTransformer, SparseFlowTransformer
from genrecon.models.presets import flow_preset

# Published class name -> our model.
TRELLIS_FLOW_CLASSES: dict[str, type[nn.Module]] = {
    "SparseStructureFlowModel": DenseFlowTransformer,
    "SLatFlowModel": SparseFlowTransformer,
    "ElasticSLatFlowModel": SparseFlowTransformer,
}
# Constructor arguments that do not change the weights (precision, checkpointing, init of fresh weights).
_IGNORED_ARGS = ("dtype", "use_fp16", "use_checkpoint", "initialization", "num_head_channels")
_STAGE_ARGS = ("resolution", "in_channels", "out_channels")
_ARCH_ARGS = ("model_channels", "cond_channels", "num_blocks", "num_heads", "mlp_ratio")
_SWITCH_ARGS = ("qk_rms_norm", "qk_rms_norm_cross")
# Values our implementation is fixed to.
_REQUIRED_ARGS: dict[str, Any] = {"pe_mode": "rope", "share_mod": True}

# Computed from the config, never read from a file.
RECOMPUTED_KEYS = ("rope_phases",)
# Modules GenRecon adds on top of TRELLIS.2 (absent from the published files).
NEW_MODULE_PREFIXES = ("aggregator.", "proj_linears.")
# Where training code may have put the state dict, in order of preference (EMA weights first).
_WRAPPER_KEYS = ("ema_state_dict", "state_dict", "model_state_dict", "model", "module", "denoiser", "weights")
_PREFIXES = ("", "module.", "model.", "denoiser.", "models.denoiser.", "backbone.", "net.")


class CheckpointError(ValueError):
    """A checkpoint does not match the model: names the file and what differs."""


@dataclass(frozen=True)
class LoadReport:
    """source: the file; container: where in it the tensors were found; prefix: the stripped key prefix;
    loaded: tensors loaded; ignored: keys outside the prefix (other modules of a training checkpoint)."""

    source: str
    container: str
    prefix: str
    loaded: int
    ignored: int


# ------------------------------------------------------------------------------------------------------------
# Strict state-dict comparison
# ------------------------------------------------------------------------------------------------------------


def expected_shapes(model: nn.Module, base_only: bool = False) -> dict[str, torch.Size]:
    """Shapes of the model's state dict; base_only drops LoRA tensors and GenRecon's new modules."""
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    if base_only:
        shapes = {
            k: s
            for k, s in shapes.items()
            if not k.startswith(NEW_MODULE_PREFIXES) and not k.endswith((".lora_A", ".lora_B"))
        }
    return shapes


def check_state_dict(
    state: Mapping[str, Tensor],
    expected: Mapping[str, torch.Size],
    source: str,
    optional: tuple[str, ...] = (),
) -> None:
    """Raise CheckpointError unless ``state`` has exactly the expected keys (``optional`` ones may be missing)
    with the expected shapes."""
    missing = sorted(k for k in expected if k not in state and k not in optional)
    unknown = sorted(k for k in state if k not in expected)
    wrong = sorted(
        f"{k}: file {tuple(state[k].shape)}, model {tuple(expected[k])}"
        for k in state
        if k in expected and tuple(state[k].shape) != tuple(expected[k])
    )
    if not (missing or unknown or wrong):
        return
    lines = [f"{source}: checkpoint does not match the model"]
    for title, items in (("wrong shape", wrong), ("missing", missing), ("unknown", unknown)):
        if items:
            shown = ", ".join(items[:8]) + (f", … ({len(items) - 8} more)" if len(items) > 8 else "")
            lines.append(f"  {len(items)} {title}: {shown}")
    raise CheckpointError("\n".join(lines))


def _load_checked(
    model: nn.Module, state: Mapping[str, Tensor], expected: Mapping[str, torch.Size], source: str
) -> int:
    check_state_dict(state, expected, source, optional=RECOMPUTED_KEYS)
    state = {k: v for k, v in state.items() if k not in RECOMPUTED_KEYS}
    result = model.load_state_dict(state, strict=False)
    leftover = [k for k in result.missing_keys if k in expected and k not in RECOMPUTED_KEYS]
    if leftover or result.unexpected_keys:
        raise CheckpointError(f"{source}: load left {leftover} unset and {result.unexpected_keys} unused")
    return len(state)


# ------------------------------------------------------------------------------------------------------------
# TRELLIS.2 release (<stem>.json + <stem>.safetensors)
# ------------------------------------------------------------------------------------------------------------


def trellis_model_kwargs(
    config: Mapping[str, Any], source: str, preset: str = "trellis2"
) -> tuple[type, dict]:
    """Map a published {"name", "args"} config onto (model class, constructor kwargs) of the given preset.

    Raises CheckpointError naming ``source`` and the field when the config is not that architecture.
    """
    name = config.get("name")
    if name not in TRELLIS_FLOW_CLASSES:
        raise CheckpointError(
            f"{source}: field 'name' is {name!r}, expected one of {sorted(TRELLIS_FLOW_CLASSES)}"
        )
    args = dict(config.get("args", {}))
    kwargs = flow_preset(preset)
    if "num_heads" not in args and "num_head_channels" in args and "model_channels" in args:
        args["num_heads"] = args["model_channels"] // args["num_head_channels"]

    def fail(field: str, value: Any, wanted: Any) -> CheckpointError:
        return CheckpointError(
            f"{source}: field 'args.{field}' is {value!r}, the {preset!r} preset needs {wanted!r}"
        )

    for field in _STAGE_ARGS:
        if field not in args:
            raise CheckpointError(f"{source}: field 'args.{field}' is missing")
        kwargs[field] = args.pop(field)
    for field in _ARCH_ARGS:
        value = args.pop(field, None)
        wanted = kwargs[field]
        if field == "mlp_ratio":
            # Compare the FFN width the ratio produces, not the float.
            same = value is not None and int(kwargs["model_channels"] * value) == int(
                kwargs["model_channels"] * wanted
            )
        else:
            same = value == wanted
        if not same:
            raise fail(field, value, wanted)
    for field in _SWITCH_ARGS:
        if field in args:
            kwargs[field] = bool(args.pop(field))
    for field, wanted in _REQUIRED_ARGS.items():
        value = args.pop(field, wanted)
        if value != wanted:
            raise fail(field, value, wanted)
    rope_freq = args.pop("rope_freq", (1.0, 1e4))
    if len(rope_freq) != 2 or float(rope_freq[0]) != 1.0:
        raise fail("rope_freq", rope_freq, [1.0, 10000.0])
    kwargs["rope_theta"] = float(rope_freq[1])
    for field in _IGNORED_ARGS:
        args.pop(field, None)
    if args:
        raise CheckpointError(f"{source}: unsupported field(s) {sorted(f'args.{k}' for k in args)}")
    return TRELLIS_FLOW_CLASSES[name], kwargs


def load_trellis_flow(
    stem: str | Path, model: nn.Module | None = None, *, preset: str = "trellis2", **model_kwargs: Any
) -> nn.Module:
    """Load a published TRELLIS.2 flow into ``model`` (or a model built from the JSON and ``preset``).

    stem: path without suffix; reads ``<stem>.json`` and ``<stem>.safetensors``. model_kwargs
    (attn_backend, projection, aggregator, ...) go to the constructor when the model is built here.
    GenRecon's new modules and any LoRA tensors keep their values; every base tensor must be in the file.
    """
    stem = Path(stem)
    json_path, weights_path = stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".safetensors")
    config = json.loads(json_path.read_text())
    cls, kwargs = trellis_model_kwargs(config, str(json_path), preset)
    if model is None:
        model = cls(**kwargs, **model_kwargs)
    else:
        if not isinstance(model, cls):
            raise CheckpointError(
                f"{json_path}: {config['name']} needs a {cls.__name__}, got {type(model).__name__}"
            )
        for field, value in kwargs.items():
            if model.arch.get(field) != value:
                raise CheckpointError(
                    f"{json_path}: field {field!r} is {value!r}, the model has {model.arch.get(field)!r}"
                )
    state = load_file(str(weights_path))
    _load_checked(model, state, expected_shapes(model, base_only=True), str(weights_path))
    return model


# ------------------------------------------------------------------------------------------------------------
# GenRecon checkpoints (.pt)
# ------------------------------------------------------------------------------------------------------------


def _tensor_dicts(
    obj: Any, where: str = "<top level>", depth: int = 0
) -> Iterator[tuple[str, dict[str, Tensor]]]:
    """Every dict of tensors inside a loaded checkpoint, preferred containers first."""
    if not isinstance(obj, Mapping) or depth > 3:
        return
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, Tensor)}
    if tensors:
        yield where, tensors
    nested = [k for k in _WRAPPER_KEYS if k in obj] + [k for k in obj if k not in _WRAPPER_KEYS]
    for key in nested:
        if isinstance(obj[key], Mapping):
            yield from _tensor_dicts(obj[key], key if depth == 0 else f"{where}.{key}", depth + 1)


def extract_state_dict(
    obj: Any, expected: Mapping[str, torch.Size]
) -> tuple[dict[str, Tensor], str, str, int]:
    """Find the model's tensors in a loaded checkpoint: (state, container, prefix, keys ignored).

    Each dict of tensors is tried with each known prefix stripped; the one with the most keys of the right
    name and shape wins (earlier containers win ties). With a prefix, keys without it are ignored.
    """
    best: tuple[int, dict[str, Tensor], str, str, int] | None = None
    for where, tensors in _tensor_dicts(obj):
        for prefix in _PREFIXES:
            state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            score = sum(1 for k, v in state.items() if k in expected and tuple(v.shape) == tuple(expected[k]))
            if best is None or score > best[0]:
                best = (score, state, where, prefix, len(tensors) - len(state))
    if best is None:
        raise CheckpointError("no tensors found in the checkpoint")
    return best[1], best[2], best[3], best[4]


def load_genrecon_flow(path: str | Path, model: nn.Module) -> LoadReport:
    """Load a GenRecon checkpoint into ``model``, which must already have LoRA applied (``apply_lora``) and
    the projection pathway (aggregator + proj_linears) so its key set matches the file."""
    path = Path(path)
    obj = torch.load(path, map_location="cpu", weights_only=True)
    expected = expected_shapes(model)
    state, where, prefix, ignored = extract_state_dict(obj, expected)
    loaded = _load_checked(
        model, state, expected, f"{path} [{where}{', prefix ' + repr(prefix) if prefix else ''}]"
    )
    return LoadReport(source=str(path), container=where, prefix=prefix, loaded=loaded, ignored=ignored)
