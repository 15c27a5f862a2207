"""Low-rank adapters on existing ``nn.Linear`` layers (GenRecon fine-tuning of TRELLIS.2).

``apply_lora`` swaps each targeted Linear for a ``LoRALinear`` that shares the original weight and bias and
adds ``lora_A`` [r, in] and ``lora_B`` [out, r] directly on the same module, so checkpoint keys read
``<linear>.weight``, ``<linear>.bias``, ``<linear>.lora_A``, ``<linear>.lora_B`` (the GenRecon layout).
Forward: ``y = x Wᵀ + b + (x Aᵀ) Bᵀ · alpha/r``. B starts at zero, so a freshly adapted model is unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Every block's attention projections, as in GenRecon (self qkv/out, cross q/kv/out).
DEFAULT_LORA_TARGETS = (
    "self_attn.to_qkv",
    "self_attn.to_out",
    "cross_attn.to_q",
    "cross_attn.to_kv",
    "cross_attn.to_out",
)


class LoRALinear(nn.Linear):
    """nn.Linear plus a low-rank update. x [..., in] -> [..., out]."""

    def __init__(
        self, in_features: int, out_features: int, r: int, alpha: float, bias: bool = True, **factory
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, **factory)
        self._add_adapter(r, alpha)

    def _add_adapter(self, r: int, alpha: float) -> None:
        if r < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {r}")
        self.r = r
        self.alpha = alpha
        self.scaling = alpha / r
        factory = {"device": self.weight.device, "dtype": self.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, **factory))
        # Same init as nn.Linear's weight: a random down-projection, so B gets a gradient from step one.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    @classmethod
    def from_linear(cls, linear: nn.Linear, r: int, alpha: float) -> LoRALinear:
        """Wrap ``linear``: the new module shares its weight/bias Parameters (no copy)."""
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module.in_features, module.out_features = linear.in_features, linear.out_features
        module.register_parameter("weight", linear.weight)
        module.register_parameter("bias", linear.bias)
        module.train(linear.training)
        module._add_adapter(r, alpha)
        return module

    def forward(self, x: Tensor) -> Tensor:
        base = F.linear(x, self.weight, self.bias)
        return base + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling

    def merged_linear(self) -> nn.Linear:
        """A plain nn.Linear with W + (alpha/r)·B·A folded in (computed in float32)."""
        linear = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.bias is not None,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )
        delta = (self.lora_B.float() @ self.lora_A.float()) * self.scaling
        with torch.no_grad():
            linear.weight.copy_((self.weight.float() + delta).to(self.weight.dtype))
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        linear.weight.requires_grad_(self.weight.requires_grad)
        if self.bias is not None:
            linear.bias.requires_grad_(self.bias.requires_grad)
        linear.train(self.training)
        return linear

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r={self.r}, alpha={self.alpha}"


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def apply_lora(
    model: nn.Module, targets: Sequence[str] = DEFAULT_LORA_TARGETS, r: int = 8, alpha: float = 16.0
) -> list[str]:
    """Wrap every nn.Linear whose qualified name is or ends with ``.<target>``; returns the wrapped names.

    Raises if a target matches nothing (a misspelt target would otherwise silently train nothing) or a
    matched module is not an nn.Linear / is already adapted.
    """
    wrapped = []
    for target in targets:
        names = [n for n, m in model.named_modules() if n and _matches(n, target)]
        if not names:
            raise ValueError(f"LoRA target {target!r} matches no module")
        for name in names:
            module = model.get_submodule(name)
            if isinstance(module, LoRALinear) or not isinstance(module, nn.Linear):
                raise TypeError(f"LoRA target {name} is {type(module).__name__}, expected a plain nn.Linear")
            _set_submodule(model, name, LoRALinear.from_linear(module, r, alpha))
            wrapped.append(name)
    return wrapped


def lora_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """The adapter tensors (lora_A, lora_B) of every LoRALinear in ``model``."""
    for module in model.modules():
        if isinstance(module, LoRALinear):
            yield module.lora_A
            yield module.lora_B


def freeze_base(model: nn.Module, trainable_prefixes: Sequence[str] = ()) -> None:
    """Freeze every parameter except the LoRA adapters and those whose name starts with a given prefix
    (e.g. ``("aggregator.", "proj_linears.")`` for GenRecon's new conditioning modules)."""
    adapters = {id(p) for p in lora_parameters(model)}
    for name, param in model.named_parameters():
        param.requires_grad_(id(param) in adapters or name.startswith(tuple(trainable_prefixes)))


def merge_lora(model: nn.Module) -> list[str]:
    """Replace every LoRALinear by a plain nn.Linear with the update folded in; returns the merged names.

    The merged model has the base key set again (no lora_A/lora_B) and runs without the extra matmuls.
    """
    names = [n for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    for name in names:
        _set_submodule(model, name, model.get_submodule(name).merged_linear())
    return names
