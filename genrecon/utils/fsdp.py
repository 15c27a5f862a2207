"""Small builders for ``conf/hardware/fsdp.yaml``: YAML cannot name classes or dtypes, these turn strings into
the objects Lightning's ``FSDPStrategy`` takes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from hydra.utils import get_class
from torch import nn


def module_classes(paths: Sequence[str]) -> set[type[nn.Module]]:
    """``{class}`` for dotted class paths; ``FSDPStrategy`` turns a set of classes into a ``ModuleWrapPolicy``
    for ``auto_wrap_policy`` and ``activation_checkpointing_policy`` alike."""
    classes = set()
    for path in paths:
        cls = get_class(path)
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise TypeError(f"{path} is not an nn.Module class")
        classes.add(cls)
    return classes


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown torch dtype {name!r}")
    return dtype


def mixed_precision(
    param_dtype: str = "bfloat16", reduce_dtype: str = "float32", buffer_dtype: str = "float32"
):
    """FSDP ``MixedPrecision``: parameters gathered and computed in ``param_dtype``, gradients reduced in
    ``reduce_dtype`` (float32 keeps the reduction over many ranks exact enough), buffers (RoPE tables, norms'
    statistics) kept in ``buffer_dtype``. Lightning's own ``bf16-mixed`` FSDP setting reduces in bf16."""
    from torch.distributed.fsdp import MixedPrecision

    return MixedPrecision(param_dtype=_dtype(param_dtype), reduce_dtype=_dtype(reduce_dtype),
                          buffer_dtype=_dtype(buffer_dtype))
