"""Image encoders for projection conditioning, plus view batching and an on-disk feature cache.

Every encoder maps images ``[M, 3, H, W]`` (RGB in [0, 1], premultiplied by alpha) to tokens
``[M, T, C]`` with ``T = G + P²``: G global tokens first, then the P×P patch grid row-major in (v, u).
Preprocessing (ImageNet mean/std) happens inside, and the output is a LayerNorm *without* affine
parameters over every token, as GenRecon/TRELLIS.2 apply to DINOv3 (the backbone's own final norm
is not used).

Implementations:

- ``SmallViT``: a DINOv3-style ViT (RoPE, registers) with tiny defaults, trained from scratch.
- ``SmallCNN``: a strided conv net; one global token from average pooling.
- ``DinoV2Encoder``: the facebookresearch/dinov2 hub architecture; its state dicts load strictly.
- ``DinoV3Encoder``: the Hugging Face ``DINOv3ViTModel`` architecture (``model.safetensors`` +
  ``config.json``); original facebookresearch/dinov3 ``.pth`` checkpoints are converted on load
  the way transformers' ``convert_dinov3_vit_to_hf.py`` does.

The two from-scratch encoders optionally take ``geometry_channels=2`` more input channels after the colour: the
floor-ray maps of each view's camera (``genrecon.geometry.floor_rays``, a deviation, off by default); callers
append them with ``append_floor_rays`` when ``encoder.geometry_channels`` asks for them.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from genrecon.geometry.floor_rays import FLOOR_RAY_CHANNELS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class CheckpointMismatchError(ValueError):
    """A checkpoint's keys or shapes do not match the architecture it is loaded into."""


# ----------------------------------------------------------------------------------------------
# Common interface
# ----------------------------------------------------------------------------------------------


class ImageEncoder(nn.Module):
    """Base class: preprocessing, the non-affine output LayerNorm and freezing.

    Subclasses implement ``_encode`` (normalised images → pre-norm tokens) and the three
    properties ``out_channels``, ``num_global_tokens`` and ``patch_size``, and call
    ``set_frozen`` at the end of their constructor.
    """

    def __init__(self) -> None:
        super().__init__()
        self._frozen = False
        # Non-persistent: the encoder's state dict holds only network weights.
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def out_channels(self) -> int:
        raise NotImplementedError

    @property
    def num_global_tokens(self) -> int:
        raise NotImplementedError

    @property
    def patch_size(self) -> int:
        raise NotImplementedError

    @property
    def frozen(self) -> bool:
        return self._frozen

    def patch_grid(self, image_size: int) -> int:
        """Patches per side P for a square image of ``image_size`` pixels."""
        return image_size // self.patch_size

    def num_tokens(self, image_size: int) -> int:
        """T = G + P² for a square image of ``image_size`` pixels."""
        return self.num_global_tokens + self.patch_grid(image_size) ** 2

    def set_frozen(self, frozen: bool) -> ImageEncoder:
        """Frozen: eval mode (kept through ``train()``), no gradients, ``requires_grad`` False.

        Unfreezing restores ``requires_grad``; the mode follows the next ``train()`` call.
        """
        self._frozen = frozen
        for p in self.parameters():
            p.requires_grad_(not frozen)
        for p in self._parameters_off_output_path():
            p.requires_grad_(False)
        if frozen:
            self.eval()
        return self

    def train(self, mode: bool = True) -> ImageEncoder:
        # Lightning calls train() on the whole model every epoch; a frozen encoder stays in eval.
        return super().train(mode and not self._frozen)

    @property
    def geometry_channels(self) -> int:
        """Input channels after the colour (``genrecon.geometry.floor_rays``); 0: colour only, as published."""
        return 0

    def forward(self, images: Tensor) -> Tensor:
        """images ``[M, 3 + geometry_channels, S, S]`` (colour in [0, 1], then any geometry maps) → tokens
        ``[M, G + P², C]``.

        A side that is not a multiple of the patch size is resized (bilinear, antialiased) to
        ``P·patch_size`` so the patch grid still tiles the whole image: normalised (u, v) keep
        mapping onto the right patch. Only the colour is normalised.
        """
        channels = 3 + self.geometry_channels
        if images.ndim != 4 or images.shape[1] != channels:
            raise ValueError(f"expected images [M, {channels}, H, W] (colour + {self.geometry_channels} geometry "
                             f"channels), got {tuple(images.shape)}")
        height, width = images.shape[-2:]
        if height != width:
            raise ValueError(f"expected square images, got {height}x{width}")
        side = self.patch_grid(height) * self.patch_size
        if side == 0:
            raise ValueError(f"image side {height} is smaller than the patch size {self.patch_size}")
        grad = torch.no_grad() if self._frozen else contextlib.nullcontext()
        with grad:
            if side != height:
                images = F.interpolate(images, size=(side, side), mode="bilinear", antialias=True)
            x = (images[:, :3] - self.pixel_mean) / self.pixel_std
            if channels > 3:
                x = torch.cat([x, images[:, 3:]], dim=1)
            tokens = self._encode(x)
            return F.layer_norm(tokens, tokens.shape[-1:])

    def _encode(self, x: Tensor) -> Tensor:
        """Normalised images ``[M, 3 + geometry_channels, P·p, P·p]`` → pre-norm tokens ``[M, G + P², C]``."""
        raise NotImplementedError

    def _parameters_off_output_path(self) -> list[nn.Parameter]:
        """Parameters that never reach the output; kept frozen so DDP sees no unused parameter."""
        return []


# ----------------------------------------------------------------------------------------------
# Shared ViT pieces
# ----------------------------------------------------------------------------------------------


def _activation(name: str) -> nn.Module:
    # "gelu" in both transformers' ACT2FN and torch's nn.GELU is the exact (erf) GELU.
    if name == "gelu":
        return nn.GELU()
    if name in ("silu", "swish"):
        return nn.SiLU()
    raise ValueError(f"unsupported activation {name!r}")


def _attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """q, k, v ``[M, heads, T, d]`` → ``[M, T, heads·d]``."""
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).flatten(2)


def _init_vit_weights(module: nn.Module, tokens: list[nn.Parameter], std: float = 0.02) -> None:
    """From-scratch init: truncated-normal weights and learned tokens, zero biases, unit LayerNorms.

    Layer scales keep their constructor value.
    """
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for token in tokens:
        nn.init.trunc_normal_(token, std=std)


# ----------------------------------------------------------------------------------------------
# DINOv3 (Hugging Face DINOv3ViTModel layout)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DinoV3Config:
    """DINOv3 ViT hyperparameters, named as in transformers' ``DINOv3ViTConfig`` / ``config.json``.

    The defaults are ViT-L/16 (``facebook/dinov3-vitl16-pretrain-lvd1689m``), the encoder GenRecon uses.
    ``pos_embed_*`` are RoPE coordinate augmentations applied only in training mode.
    """

    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    patch_size: int = 16
    num_register_tokens: int = 4
    num_channels: int = 3
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    layerscale_value: float = 1.0
    rope_theta: float = 100.0
    query_bias: bool = True
    key_bias: bool = False
    value_bias: bool = True
    proj_bias: bool = True
    mlp_bias: bool = True
    use_gated_mlp: bool = False
    pos_embed_shift: float | None = None
    pos_embed_jitter: float | None = None
    pos_embed_rescale: float | None = 2.0

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be divisible by num_attention_heads")
        if (self.hidden_size // self.num_attention_heads) % 4:
            raise ValueError("the head dimension must be divisible by 4 for 2-D RoPE")

    @classmethod
    def from_hf_dict(cls, config: Mapping[str, Any]) -> DinoV3Config:
        """Read a transformers ``config.json`` dict; bookkeeping fields (architectures, dtype…) are ignored."""
        model_type = config.get("model_type", "dinov3_vit")
        if model_type != "dinov3_vit":
            raise ValueError(f"config.json has model_type {model_type!r}, expected 'dinov3_vit'")
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in config.items() if k in names})

    @classmethod
    def infer(cls, state_dict: Mapping[str, Tensor]) -> DinoV3Config:
        """Architecture from HF-layout key names and shapes, for checkpoints without config.json.

        The head count is not stored in any shape; every published DINOv3 ViT uses 64-d heads.
        """
        hidden = state_dict["embeddings.cls_token"].shape[-1]
        layers = {int(m.group(1)) for k in state_dict if (m := re.match(r"layer\.(\d+)\.", k))}
        gated = "layer.0.mlp.gate_proj.weight" in state_dict
        return cls(
            hidden_size=hidden,
            intermediate_size=state_dict["layer.0.mlp.up_proj.weight"].shape[0],
            num_hidden_layers=len(layers),
            num_attention_heads=hidden // 64,
            patch_size=state_dict["embeddings.patch_embeddings.weight"].shape[-1],
            num_register_tokens=state_dict["embeddings.register_tokens"].shape[1],
            num_channels=state_dict["embeddings.patch_embeddings.weight"].shape[1],
            hidden_act="silu" if gated else "gelu",
            query_bias="layer.0.attention.q_proj.bias" in state_dict,
            key_bias="layer.0.attention.k_proj.bias" in state_dict,
            value_bias="layer.0.attention.v_proj.bias" in state_dict,
            proj_bias="layer.0.attention.o_proj.bias" in state_dict,
            mlp_bias="layer.0.mlp.up_proj.bias" in state_dict,
            use_gated_mlp=gated,
        )


def _dinov3_rope(
    config: DinoV3Config, grid: int, training: bool, device: torch.device
) -> tuple[Tensor, Tensor]:
    """RoPE (cos, sin) ``[P², head_dim]`` in float32 for a P×P patch grid.

    Patch centres are normalised to [-1, 1] per axis; angles = 2π·coord·θ^(-4i/head_dim) for the
    y then x coordinate, the pair tiled twice across the head dimension (rotate-half convention).
    """
    head_dim = config.hidden_size // config.num_attention_heads
    inv_freq = 1.0 / config.rope_theta ** torch.arange(0, 1, 4 / head_dim, dtype=torch.float32, device=device)
    centres = (torch.arange(grid, dtype=torch.float32, device=device) + 0.5) / grid * 2.0 - 1.0
    coords = torch.stack(torch.meshgrid(centres, centres, indexing="ij"), dim=-1).flatten(0, 1)  # [P², 2]
    if training:
        coords = _augment_rope_coords(coords, config)
    angles = (2 * math.pi * coords[:, :, None] * inv_freq).flatten(1).tile(2)  # [P², head_dim]
    return angles.cos(), angles.sin()


def _augment_rope_coords(coords: Tensor, config: DinoV3Config) -> Tensor:
    """DINOv3's training-time shift / jitter (per axis) and rescale (shared) of RoPE coordinates."""
    if config.pos_embed_shift is not None:
        coords = coords + torch.empty(1, 2, device=coords.device).uniform_(
            -config.pos_embed_shift, config.pos_embed_shift
        )
    if config.pos_embed_jitter is not None:
        log_jitter = math.log(config.pos_embed_jitter)
        coords = coords * torch.empty(1, 2, device=coords.device).uniform_(-log_jitter, log_jitter).exp()
    if config.pos_embed_rescale is not None:
        log_rescale = math.log(config.pos_embed_rescale)
        coords = coords * torch.empty(1, device=coords.device).uniform_(-log_rescale, log_rescale).exp()
    return coords


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the last P² tokens of ``x`` ``[M, heads, T, d]``; global (CLS, register) tokens are skipped."""
    num_prefix = x.shape[-2] - cos.shape[0]
    prefix, patches = x.split((num_prefix, cos.shape[0]), dim=-2)
    rotated = patches.float() * cos + _rotate_half(patches.float()) * sin
    return torch.cat((prefix, rotated.to(x.dtype)), dim=-2)


class _DinoV3Embeddings(nn.Module):
    def __init__(self, config: DinoV3Config, with_mask_token: bool) -> None:
        super().__init__()
        c = config.hidden_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c))
        # Only used for masked-image pretraining; present for checkpoint compatibility.
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c)) if with_mask_token else None
        self.register_tokens = nn.Parameter(torch.zeros(1, config.num_register_tokens, c))
        self.patch_embeddings = nn.Conv2d(config.num_channels, c, config.patch_size, stride=config.patch_size)

    def forward(self, x: Tensor) -> Tensor:
        """x ``[M, 3, H, W]`` → ``[M, 1 + R + P², C]``."""
        patches = self.patch_embeddings(x.to(self.patch_embeddings.weight.dtype)).flatten(2).transpose(1, 2)
        m = x.shape[0]
        return torch.cat(
            (self.cls_token.expand(m, -1, -1), self.register_tokens.expand(m, -1, -1), patches), 1
        )


class _DinoV3Attention(nn.Module):
    def __init__(self, config: DinoV3Config) -> None:
        super().__init__()
        c = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.q_proj = nn.Linear(c, c, bias=config.query_bias)
        self.k_proj = nn.Linear(c, c, bias=config.key_bias)
        self.v_proj = nn.Linear(c, c, bias=config.value_bias)
        self.o_proj = nn.Linear(c, c, bias=config.proj_bias)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
        m, t, _ = x.shape
        q, k, v = (
            proj(x).view(m, t, self.num_heads, -1).transpose(1, 2)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        q, k = _apply_rope(q, *rope), _apply_rope(k, *rope)
        return self.o_proj(_attend(q, k, v))


class _DinoV3Mlp(nn.Module):
    def __init__(self, config: DinoV3Config) -> None:
        super().__init__()
        c, h, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = nn.Linear(c, h, bias=bias) if config.use_gated_mlp else None
        self.up_proj = nn.Linear(c, h, bias=bias)
        self.down_proj = nn.Linear(h, c, bias=bias)
        self.act = _activation(config.hidden_act)

    def forward(self, x: Tensor) -> Tensor:
        if self.gate_proj is None:
            return self.down_proj(self.act(self.up_proj(x)))
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class _DinoV3LayerScale(nn.Module):
    def __init__(self, dim: int, value: float) -> None:
        super().__init__()
        self.lambda1 = nn.Parameter(torch.full((dim,), value))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.lambda1


class _DinoV3Layer(nn.Module):
    def __init__(self, config: DinoV3Config) -> None:
        super().__init__()
        c, eps = config.hidden_size, config.layer_norm_eps
        self.norm1 = nn.LayerNorm(c, eps=eps)
        self.attention = _DinoV3Attention(config)
        self.layer_scale1 = _DinoV3LayerScale(c, config.layerscale_value)
        self.norm2 = nn.LayerNorm(c, eps=eps)
        self.mlp = _DinoV3Mlp(config)
        self.layer_scale2 = _DinoV3LayerScale(c, config.layerscale_value)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
        x = x + self.layer_scale1(self.attention(self.norm1(x), rope))
        return x + self.layer_scale2(self.mlp(self.norm2(x)))


class DinoV3ViT(nn.Module):
    """DINOv3 ViT with transformers' ``DINOv3ViTModel`` module and state-dict names.

    ``checkpoint_compatible`` adds ``embeddings.mask_token`` and the final ``norm``, which never
    affect the features but are part of published checkpoints.
    """

    def __init__(self, config: DinoV3Config, checkpoint_compatible: bool = True) -> None:
        super().__init__()
        self.config = config
        self.embeddings = _DinoV3Embeddings(config, with_mask_token=checkpoint_compatible)
        self.layer = nn.ModuleList(_DinoV3Layer(config) for _ in range(config.num_hidden_layers))
        self.norm = (
            nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if checkpoint_compatible else None
        )

    def forward(self, x: Tensor) -> Tensor:
        """Normalised images ``[M, 3, P·p, P·p]`` → last-layer tokens before any norm ``[M, 1 + R + P², C]``."""
        grid = x.shape[-1] // self.config.patch_size
        rope = _dinov3_rope(self.config, grid, self.training, x.device)
        h = self.embeddings(x)
        for layer in self.layer:
            h = layer(h, rope)
        return h


def _dinov3_from_meta_layout(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """facebookresearch/dinov3 keys → transformers keys (as transformers' conversion script does).

    The fused ``qkv`` is split; the key bias is dropped because ``bias_mask`` zeroes it in the
    original model; the RoPE ``periods`` buffer is recomputed from ``rope_theta``;
    ``local_cls_norm`` is used only in training and dropped.
    """
    rules = (
        (r"^cls_token$", "embeddings.cls_token"),
        (r"^mask_token$", "embeddings.mask_token"),
        (r"^storage_tokens$", "embeddings.register_tokens"),
        (r"^patch_embed\.proj\.", "embeddings.patch_embeddings."),
        (r"^blocks\.(\d+)\.attn\.proj\.", r"layer.\1.attention.o_proj."),
        (r"^blocks\.(\d+)\.ls(\d)\.gamma$", r"layer.\1.layer_scale\2.lambda1"),
        (r"^blocks\.(\d+)\.mlp\.fc1\.", r"layer.\1.mlp.up_proj."),
        (r"^blocks\.(\d+)\.mlp\.fc2\.", r"layer.\1.mlp.down_proj."),
        (r"^blocks\.(\d+)\.mlp\.w1\.", r"layer.\1.mlp.gate_proj."),
        (r"^blocks\.(\d+)\.mlp\.w2\.", r"layer.\1.mlp.up_proj."),
        (r"^blocks\.(\d+)\.mlp\.w3\.", r"layer.\1.mlp.down_proj."),
        (r"^blocks\.(\d+)\.norm(\d)\.", r"layer.\1.norm\2."),
    )
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith("qkv.bias_mask") or key.startswith(("rope_embed.", "local_cls_norm.")):
            continue
        qkv = re.match(r"^blocks\.(\d+)\.attn\.qkv\.(weight|bias)$", key)
        if qkv:
            prefix, kind = f"layer.{qkv.group(1)}.attention", qkv.group(2)
            q, k, v = value.chunk(3, dim=0)
            out[f"{prefix}.q_proj.{kind}"] = q
            if kind == "weight":
                out[f"{prefix}.k_proj.{kind}"] = k
            out[f"{prefix}.v_proj.{kind}"] = v
            continue
        new_key = key
        for pattern, replacement in rules:
            new_key = re.sub(pattern, replacement, new_key)
        out[new_key] = value.reshape(1, 1, -1) if new_key == "embeddings.mask_token" else value
    return out


def _is_dinov3_meta_layout(state_dict: Mapping[str, Tensor]) -> bool:
    return "storage_tokens" in state_dict or any(k.startswith("blocks.") for k in state_dict)


# ----------------------------------------------------------------------------------------------
# DINOv2 (facebookresearch/dinov2 hub layout)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DinoV2Config:
    """DINOv2 ViT hyperparameters, named after the hub's ``DinoVisionTransformer`` arguments.

    Defaults are ViT-L/14 (``dinov2_vitl14``). ``img_size`` fixes the stored ``pos_embed`` grid
    (518 px → 37×37 patches); other sizes interpolate it bicubically as the hub code does.
    """

    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    patch_size: int = 14
    img_size: int = 518
    mlp_ratio: float = 4.0
    ffn_layer: str = "mlp"
    num_register_tokens: int = 0
    interpolate_antialias: bool = False
    interpolate_offset: float = 0.1
    layer_norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.ffn_layer not in ("mlp", "swiglu"):
            raise ValueError(f"ffn_layer must be 'mlp' or 'swiglu', got {self.ffn_layer!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError("embed_dim must be divisible by num_heads")

    @classmethod
    def from_variant(cls, variant: str) -> DinoV2Config:
        """``vits14 | vitb14 | vitl14 | vitg14``, optionally ``dinov2_``-prefixed and ``_reg``-suffixed."""
        name = variant.removeprefix("dinov2_")
        registers = name.endswith("_reg")
        sizes = {
            "vits14": {"embed_dim": 384, "depth": 12, "num_heads": 6},
            "vitb14": {"embed_dim": 768, "depth": 12, "num_heads": 12},
            "vitl14": {"embed_dim": 1024, "depth": 24, "num_heads": 16},
            "vitg14": {"embed_dim": 1536, "depth": 40, "num_heads": 24, "ffn_layer": "swiglu"},
        }
        base = name.removesuffix("_reg")
        if base not in sizes:
            raise ValueError(
                f"unknown DINOv2 variant {variant!r}; expected one of {sorted(sizes)} (+ '_reg')"
            )
        # The register models were trained with antialiased, offset-free pos_embed interpolation.
        extra = {"num_register_tokens": 4, "interpolate_antialias": True, "interpolate_offset": 0.0}
        return cls(**sizes[base], **(extra if registers else {}))


class _DinoV2PatchEmbed(nn.Module):
    def __init__(self, config: DinoV2Config) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, config.embed_dim, config.patch_size, stride=config.patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class _DinoV2Attention(nn.Module):
    def __init__(self, config: DinoV2Config) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.qkv = nn.Linear(config.embed_dim, 3 * config.embed_dim)
        self.proj = nn.Linear(config.embed_dim, config.embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        m, t, _ = x.shape
        q, k, v = self.qkv(x).view(m, t, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        return self.proj(_attend(q, k, v))


class _DinoV2Mlp(nn.Module):
    def __init__(self, config: DinoV2Config) -> None:
        super().__init__()
        hidden = int(config.embed_dim * config.mlp_ratio)
        self.fc1 = nn.Linear(config.embed_dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, config.embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _DinoV2SwiGLU(nn.Module):
    def __init__(self, config: DinoV2Config) -> None:
        super().__init__()
        # The hub's SwiGLUFFNFused: 2/3 of the MLP width, rounded up to a multiple of 8.
        hidden = (int(config.embed_dim * config.mlp_ratio * 2 / 3) + 7) // 8 * 8
        self.w12 = nn.Linear(config.embed_dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, config.embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


class _DinoV2LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class _DinoV2Block(nn.Module):
    def __init__(self, config: DinoV2Config) -> None:
        super().__init__()
        c, eps = config.embed_dim, config.layer_norm_eps
        self.norm1 = nn.LayerNorm(c, eps=eps)
        self.attn = _DinoV2Attention(config)
        self.ls1 = _DinoV2LayerScale(c)
        self.norm2 = nn.LayerNorm(c, eps=eps)
        self.mlp = _DinoV2SwiGLU(config) if config.ffn_layer == "swiglu" else _DinoV2Mlp(config)
        self.ls2 = _DinoV2LayerScale(c)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DinoV2ViT(nn.Module):
    """DINOv2 ViT with the facebookresearch/dinov2 hub module and state-dict names.

    ``checkpoint_compatible`` adds ``mask_token`` and the final ``norm`` (never on the feature path).
    """

    def __init__(self, config: DinoV2Config, checkpoint_compatible: bool = True) -> None:
        super().__init__()
        self.config = config
        c = config.embed_dim
        grid = config.img_size // config.patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, c))
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, config.num_register_tokens, c))
            if config.num_register_tokens
            else None
        )
        self.patch_embed = _DinoV2PatchEmbed(config)
        self.blocks = nn.ModuleList(_DinoV2Block(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(c, eps=config.layer_norm_eps) if checkpoint_compatible else None
        self.mask_token = nn.Parameter(torch.zeros(1, c)) if checkpoint_compatible else None

    def _pos_embed(self, grid: int) -> Tensor:
        """``[1, 1 + grid², C]``: the stored table, bicubically resampled when the grid differs."""
        stored = self.config.img_size // self.config.patch_size
        if grid == stored:
            return self.pos_embed
        cls_pos, patch_pos = self.pos_embed.float().split((1, stored * stored), dim=1)
        patch_pos = patch_pos.reshape(1, stored, stored, -1).permute(0, 3, 1, 2)
        offset = self.config.interpolate_offset
        # The hub passes a scale factor with a small offset (a historical float workaround) unless the
        # offset is 0; both give a grid×grid output but slightly different sampling positions.
        size_or_scale = (
            {"scale_factor": ((grid + offset) / stored,) * 2} if offset else {"size": (grid, grid)}
        )
        patch_pos = F.interpolate(
            patch_pos, mode="bicubic", antialias=self.config.interpolate_antialias, **size_or_scale
        )
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)
        return torch.cat((cls_pos, patch_pos), dim=1).to(self.pos_embed.dtype)

    def forward(self, x: Tensor) -> Tensor:
        """Normalised images ``[M, 3, P·p, P·p]`` → last-block tokens before any norm ``[M, 1 + R + P², C]``."""
        m = x.shape[0]
        grid = x.shape[-1] // self.config.patch_size
        h = self.patch_embed(x.to(self.cls_token.dtype))
        h = torch.cat((self.cls_token.expand(m, -1, -1), h), dim=1) + self._pos_embed(grid)
        if self.register_tokens is not None:
            # Registers go after the CLS token and carry no position embedding.
            h = torch.cat((h[:, :1], self.register_tokens.expand(m, -1, -1), h[:, 1:]), dim=1)
        for block in self.blocks:
            h = block(h)
        return h


# ----------------------------------------------------------------------------------------------
# Checkpoint reading and strict loading
# ----------------------------------------------------------------------------------------------

_WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def _resolve_weights_file(path: Path) -> Path:
    """A weights file, or the one weights file in a directory (``model.safetensors`` preferred)."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if (path / "model.safetensors").is_file():
        return path / "model.safetensors"
    candidates = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES))
    if len(candidates) != 1:
        names = [p.name for p in candidates]
        raise FileNotFoundError(
            f"expected exactly one weights file ({'/'.join(_WEIGHT_SUFFIXES)}) in {path}, found {names}"
        )
    return candidates[0]


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        return load_file(str(path))
    if path.suffix in (".pth", ".pt", ".bin"):
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
            raise CheckpointMismatchError(f"{path}: expected a flat state dict of tensors")
        return dict(state)
    raise ValueError(f"{path}: unsupported checkpoint format (expected one of {_WEIGHT_SUFFIXES})")


def load_strict(module: nn.Module, state_dict: Mapping[str, Tensor], source: Path) -> None:
    """Load every tensor, fail naming the file and the offending keys; floats are cast to float32.

    ``module`` may live on the meta device: tensors are assigned, not copied.
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state_dict.items()
        if k in expected and v.shape != expected[k].shape
    ]
    problems = [
        f"{label} {items[:5]}{' …' if len(items) > 5 else ''}"
        for label, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatch", mismatched),
        )
        if items
    ]
    if problems:
        raise CheckpointMismatchError(f"{type(module).__name__} checkpoint {source}: " + "; ".join(problems))
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}
    module.load_state_dict(tensors, strict=True, assign=True)


# ----------------------------------------------------------------------------------------------
# Encoders
# ----------------------------------------------------------------------------------------------


def _unused_checkpoint_params(
    mask_token: nn.Parameter | None, norm: nn.LayerNorm | None
) -> list[nn.Parameter]:
    """The mask token and final norm of a checkpoint-compatible backbone (absent otherwise)."""
    params = [mask_token] if mask_token is not None else []
    return params + (list(norm.parameters()) if norm is not None else [])


class DinoV3Encoder(ImageEncoder):
    """DINOv3 ViT (frozen by default); G = 1 + registers (5 for the published models)."""

    def __init__(self, backbone: DinoV3ViT, frozen: bool = True) -> None:
        super().__init__()
        self.backbone = backbone
        self.set_frozen(frozen)

    @classmethod
    def from_config(cls, config: DinoV3Config = DinoV3Config(), frozen: bool = True) -> DinoV3Encoder:
        """Randomly initialised, for tests and from-scratch runs."""
        backbone = DinoV3ViT(config)
        _init_vit_weights(backbone, [backbone.embeddings.cls_token, backbone.embeddings.register_tokens])
        return cls(backbone, frozen)

    @classmethod
    def from_local(
        cls, path: str | os.PathLike, frozen: bool = True, config: DinoV3Config | None = None
    ) -> DinoV3Encoder:
        """Load a local checkpoint strictly.

        ``path``: a weights file (``.safetensors`` / ``.pth`` / ``.bin``) or a folder holding one
        (a Hugging Face snapshot: ``model.safetensors`` + ``config.json``). The architecture comes
        from ``config`` if given, else ``config.json`` beside the weights, else the key shapes.
        Original facebookresearch/dinov3 key names are converted first.
        """
        weights = _resolve_weights_file(Path(path))
        state = _read_state_dict(weights)
        if _is_dinov3_meta_layout(state):
            state = _dinov3_from_meta_layout(state)
        # transformers >= 5 nests the layers as `model.layer.N`; published files use `layer.N`.
        state = {re.sub(r"^model\.layer\.", "layer.", k): v for k, v in state.items()}
        if config is None:
            config_file = weights.parent / "config.json"
            if config_file.is_file():
                config = DinoV3Config.from_hf_dict(json.loads(config_file.read_text()))
            else:
                try:
                    config = DinoV3Config.infer(state)
                except KeyError as err:
                    raise CheckpointMismatchError(f"DINOv3 checkpoint {weights}: missing key {err}") from None
        with torch.device("meta"):
            backbone = DinoV3ViT(config)
        load_strict(backbone, state, weights)
        return cls(backbone, frozen)

    @property
    def out_channels(self) -> int:
        return self.backbone.config.hidden_size

    @property
    def num_global_tokens(self) -> int:
        return 1 + self.backbone.config.num_register_tokens

    @property
    def patch_size(self) -> int:
        return self.backbone.config.patch_size

    def _encode(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    def _parameters_off_output_path(self) -> list[nn.Parameter]:
        return _unused_checkpoint_params(self.backbone.embeddings.mask_token, self.backbone.norm)


class DinoV2Encoder(ImageEncoder):
    """DINOv2 ViT (frozen by default); G = 1 + registers."""

    def __init__(self, backbone: DinoV2ViT, frozen: bool = True) -> None:
        super().__init__()
        self.backbone = backbone
        self.set_frozen(frozen)

    @classmethod
    def from_config(cls, config: DinoV2Config = DinoV2Config(), frozen: bool = True) -> DinoV2Encoder:
        """Randomly initialised, for tests and from-scratch runs."""
        backbone = DinoV2ViT(config)
        tokens = [backbone.cls_token, backbone.pos_embed, backbone.register_tokens]
        _init_vit_weights(backbone, [t for t in tokens if t is not None])
        return cls(backbone, frozen)

    @classmethod
    def from_local(
        cls, path: str | os.PathLike, variant: str | DinoV2Config = "vitl14", frozen: bool = True
    ) -> DinoV2Encoder:
        """Load a hub checkpoint (e.g. ``dinov2_vitl14_pretrain.pth``) strictly.

        ``variant``: a hub model name (``vitl14``, ``dinov2_vitb14_reg``…) or an explicit config.
        """
        config = variant if isinstance(variant, DinoV2Config) else DinoV2Config.from_variant(variant)
        weights = _resolve_weights_file(Path(path))
        with torch.device("meta"):
            backbone = DinoV2ViT(config)
        load_strict(backbone, _read_state_dict(weights), weights)
        return cls(backbone, frozen)

    @property
    def out_channels(self) -> int:
        return self.backbone.config.embed_dim

    @property
    def num_global_tokens(self) -> int:
        return 1 + self.backbone.config.num_register_tokens

    @property
    def patch_size(self) -> int:
        return self.backbone.config.patch_size

    def _encode(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    def _parameters_off_output_path(self) -> list[nn.Parameter]:
        return _unused_checkpoint_params(self.backbone.mask_token, self.backbone.norm)


def _check_geometry_channels(count: int) -> int:
    if count not in (0, FLOOR_RAY_CHANNELS):
        raise ValueError(f"geometry_channels: 0 (colour only) or {FLOOR_RAY_CHANNELS} (the floor-ray maps of "
                         f"genrecon.geometry.floor_rays), got {count}")
    return count


class SmallViT(ImageEncoder):
    """A DINOv3-style ViT (2-D RoPE, register tokens, layer scale) trained from scratch.

    Defaults are tiny for CPU tests. G = 1 + ``num_registers``.
    """

    def __init__(
        self,
        width: int = 64,
        depth: int = 2,
        num_heads: int = 4,
        patch_size: int = 16,
        num_registers: int = 4,
        mlp_ratio: float = 4.0,
        frozen: bool = False,
        geometry_channels: int = 0,
    ) -> None:
        super().__init__()
        self._geometry_channels = _check_geometry_channels(geometry_channels)
        config = DinoV3Config(
            hidden_size=width,
            intermediate_size=int(width * mlp_ratio),
            num_hidden_layers=depth,
            num_attention_heads=num_heads,
            patch_size=patch_size,
            num_register_tokens=num_registers,
            num_channels=3 + geometry_channels,
            pos_embed_rescale=None,  # deterministic positions: the tokens are projected spatially
        )
        self.backbone = DinoV3ViT(config, checkpoint_compatible=False)
        embeddings = self.backbone.embeddings
        _init_vit_weights(self.backbone, [embeddings.cls_token, embeddings.register_tokens])
        self.set_frozen(frozen)

    @property
    def out_channels(self) -> int:
        return self.backbone.config.hidden_size

    @property
    def num_global_tokens(self) -> int:
        return 1 + self.backbone.config.num_register_tokens

    @property
    def patch_size(self) -> int:
        return self.backbone.config.patch_size

    @property
    def geometry_channels(self) -> int:
        return self._geometry_channels

    def _encode(self, x: Tensor) -> Tensor:
        return self.backbone(x)


class SmallCNN(ImageEncoder):
    """Stride-2 conv stages (patch size 2^stages), a 1×1 head, and one average-pooled global token."""

    def __init__(
        self, channels: tuple[int, ...] = (16, 32, 64, 64), out_channels: int = 64, frozen: bool = False,
        geometry_channels: int = 0,
    ) -> None:
        super().__init__()
        self._geometry_channels = _check_geometry_channels(geometry_channels)
        stages: list[nn.Module] = []
        c_in = 3 + geometry_channels
        for c in channels:
            stages += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.GroupNorm(math.gcd(8, c), c), nn.GELU()]
            c_in = c
        self.stages = nn.Sequential(*stages)
        self.head = nn.Conv2d(c_in, out_channels, 1)
        self._patch_size = 2 ** len(channels)
        self._out_channels = out_channels
        self.set_frozen(frozen)

    @property
    def out_channels(self) -> int:
        return self._out_channels

    @property
    def geometry_channels(self) -> int:
        return self._geometry_channels

    @property
    def num_global_tokens(self) -> int:
        return 1

    @property
    def patch_size(self) -> int:
        return self._patch_size

    def _encode(self, x: Tensor) -> Tensor:
        patches = self.head(self.stages(x)).flatten(2).transpose(1, 2)  # [M, P², C], row-major (v, u)
        return torch.cat((patches.mean(dim=1, keepdim=True), patches), dim=1)


# ----------------------------------------------------------------------------------------------
# Batched views and the feature cache
# ----------------------------------------------------------------------------------------------


def encode_views(encoder: ImageEncoder, images: Tensor, view_mask: Tensor, chunk_size: int = 64) -> Tensor:
    """images ``[B, N, 3, S, S]``, view_mask ``[B, N]`` bool → tokens ``[B, N, T, C]``.

    Only real views are encoded, ``chunk_size`` images at a time; padded views get zero tokens. Large chunks:
    a training batch holds ~70 real views, and encoding them 8 at a time made the small ViT launch-bound
    (about 10k extra host-side ops per step, profiled); 64 small-preset images hold ~2 GB of activations.
    """
    b, n = view_mask.shape
    real = images[view_mask]  # [M, 3, S, S]
    t, c = encoder.num_tokens(images.shape[-1]), encoder.out_channels
    chunks = [encoder(real[i : i + chunk_size]) for i in range(0, real.shape[0], chunk_size)]
    dtype = chunks[0].dtype if chunks else images.dtype
    tokens = images.new_zeros(b, n, t, c, dtype=dtype)
    if chunks:
        tokens[view_mask] = torch.cat(chunks)
    return tokens


class FeatureCache:
    """Precomputed tokens on disk: ``<root>/<key>.safetensors`` holding one fp16 ``[T, C]`` tensor.

    Keys are ``/``-separated, e.g. ``"<sample_key>/<view_idx>/<encoder_id>"``. Writes are atomic
    (temporary file + rename), so concurrent workers never read a partial file.
    """

    _TENSOR = "tokens"

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") or "\\" in p or "\0" in p for p in parts):
            raise ValueError(f"invalid feature-cache key {key!r}")
        return self.root.joinpath(*parts[:-1], parts[-1] + ".safetensors")

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file()

    def get(self, key: str) -> Tensor | None:
        """Stored tokens ``[T, C]`` float16 on CPU, or None when absent."""
        path = self.path(key)
        if not path.is_file():
            return None
        return load_file(str(path))[self._TENSOR]

    def put(self, key: str, tokens: Tensor) -> None:
        """Store tokens ``[T, C]`` as float16."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {self._TENSOR: tokens.detach().to("cpu", torch.float16).contiguous()}
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        try:
            save_file(data, tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
