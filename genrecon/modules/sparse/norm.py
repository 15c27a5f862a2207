"""Per-voxel normalisation of sparse features. Pointwise layers (Linear, SiLU) act on ``x.feats`` directly."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from genrecon.modules.sparse.tensor import SparseTensor


class SparseLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of each voxel, ``[K, C]`` → ``[K, C]``, computed in fp32 (fp16/bf16
    activations lose too much precision in the variance) and cast back. Parameter names match
    ``nn.LayerNorm`` (``weight``, ``bias``)."""

    def __init__(self, channels: int, elementwise_affine: bool = True, eps: float = 1e-6) -> None:
        super().__init__(channels, eps=eps, elementwise_affine=elementwise_affine)

    def forward(self, x: SparseTensor) -> SparseTensor:  # type: ignore[override]
        h = x.feats.float()
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return x.replace(F.layer_norm(h, self.normalized_shape, w, b, self.eps).to(x.feats.dtype))
