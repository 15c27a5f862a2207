"""Shading of rasterised views, shared by every backend, and image I/O for renders.

Everything after visibility is computed here, in float64 from ``(face_id, bary)`` and the cameras alone, so
two backends that agree on visibility give the same pixels (up to rounding where one shades on the GPU).

Lighting model (deterministic, no shadows, no inter-reflection), per pixel with base colour ``a``, metallic
``m``, roughness ``r`` (from :meth:`PBRMesh.sample_attributes`), the flat face normal ``n`` turned towards the
camera and ``v`` the direction from the surface to the camera:

    diffuse colour  c_d = a · (1 - m)
    specular colour F0  = 0.04 · (1 - m) + a · m
    rgb = c_d · (A + Σ_k I_k · max(n·l_k, 0))
        + a · m · A                                       (uniform environment reflection, keeps metals lit)
        + S · (1 - r)² · F0 · Σ_k I_k · max(n·h_k, 0)^p · max(n·l_k, 0)

with A = ``Lighting.ambient``, S = ``Lighting.specular``, Blinn-Phong exponent p = 2 / max(r, 0.05)² and half
vectors h_k = (l_k + v) / |l_k + v|, summed over the lights ``k`` of intensity ``I_k``: two fixed world-frame
directional lights (a key light from above and a weaker fill light) and a headlight ``l = v``. ``rgb`` is
clipped to [0, 1] and rounded to uint8. An ambient-only :class:`Lighting` (``ambient=1``, no lights, no
headlight) shows the base colour itself. Material alpha is not blended: every hit pixel is opaque (alpha 255),
background pixels are (0, 0, 0, 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from genrecon.data.shards import encode_png
from genrecon.geometry.cameras import pixel_rays
from genrecon.geometry.mesh import PBRMesh
from genrecon.render.base import Rasterizer, as_numpy


@dataclass(frozen=True)
class Lighting:
    """Constants of the lighting model in the module docstring (directions point towards the lights)."""

    ambient: float = 0.25
    lights: tuple[tuple[tuple[float, float, float], float], ...] = field(
        default=(((0.3, 0.2, 1.0), 0.45), ((-0.6, -0.8, 0.35), 0.2))
    )
    headlight: float = 0.3
    specular: float = 0.5


@dataclass
class RenderedViews:
    """Shaded renders of ``N`` views: ``rgba [N, H, W, 4]`` uint8 (alpha 255 on surfaces), ``depth [N, H, W]``
    float32 camera z (0 = background), ``normal [N, H, W, 3]`` float32 world-frame unit normals facing the
    camera (0 = background), ``face_id [N, H, W]`` int64 (-1 = background), ``base_colour [N, H, W, 3]`` uint8
    unshaded base colour (0 = background; the target of the view-encoder pretraining)."""

    rgba: np.ndarray
    depth: np.ndarray
    normal: np.ndarray
    face_id: np.ndarray
    base_colour: np.ndarray


def shade(
    attributes: torch.Tensor, normals: torch.Tensor, to_camera: torch.Tensor, lighting: Lighting = Lighting()
) -> torch.Tensor:
    """Colours ``[M, 3]`` in [0, 1] of surface points (torch, in the inputs' dtype and device).

    Args:
        attributes: ``[M, 6]`` PBR attributes (base colour, metallic, roughness, alpha).
        normals: ``[M, 3]`` unit normals facing the camera.
        to_camera: ``[M, 3]`` unit directions from the points to the camera.
    """
    albedo, metallic, roughness = attributes[:, :3], attributes[:, 3:4], attributes[:, 4:5]
    c_diff = albedo * (1.0 - metallic)
    f0 = 0.04 * (1.0 - metallic) + albedo * metallic
    exponent = 2.0 / roughness.clamp(min=0.05) ** 2
    spec_weight = lighting.specular * (1.0 - roughness) ** 2

    lights = [
        (torch.as_tensor(d, dtype=normals.dtype, device=normals.device) / float(np.linalg.norm(d)), i)
        for d, i in lighting.lights
    ]
    lights.append((to_camera, lighting.headlight))
    irradiance = torch.full_like(metallic, lighting.ambient)
    highlight = torch.zeros_like(metallic)
    for direction, intensity in lights:
        n_dot_l = (normals * direction).sum(-1, keepdim=True).clamp(min=0.0)
        half = direction + to_camera
        half = half / half.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        n_dot_h = (normals * half).sum(-1, keepdim=True).clamp(min=0.0)
        irradiance = irradiance + intensity * n_dot_l
        highlight = highlight + intensity * n_dot_h**exponent * n_dot_l
    rgb = c_diff * irradiance + albedo * metallic * lighting.ambient + spec_weight * f0 * highlight
    return rgb.clamp(0.0, 1.0)


def render_views(
    mesh: PBRMesh,
    rasterizer: Rasterizer,
    w2c: np.ndarray | torch.Tensor,
    K: np.ndarray | torch.Tensor,
    width: int,
    height: int,
    lighting: Lighting = Lighting(),
) -> RenderedViews:
    """Render ``mesh`` from ``w2c [N, 4, 4]``, ``K [N, 3, 3]`` at ``height × width`` with ``rasterizer``.

    Shading runs in float64 on the device of the rasteriser's buffers; base colours come from
    :meth:`PBRMesh.sample_attributes` on the CPU.
    """
    buffers = rasterizer.rasterize(mesh.vertices, mesh.faces, w2c, K, width, height)
    device = buffers.face_id.device
    w2c = torch.as_tensor(as_numpy(w2c, np.float64), device=device)
    K = torch.as_tensor(as_numpy(K, np.float64), device=device)
    hit = buffers.face_id >= 0
    faces = buffers.face_id[hit]
    _, dirs = pixel_rays(w2c, K, width, height)  # from the cameras, so identical for every backend
    ray_dirs = dirs[hit]
    normals = torch.as_tensor(mesh.face_normals(), device=device)[faces]
    normals = torch.where((normals * ray_dirs).sum(-1, keepdim=True) > 0.0, -normals, normals)
    bary = buffers.bary[hit].double().cpu().numpy()
    attrs = torch.as_tensor(mesh.sample_attributes(faces.cpu().numpy(), bary), device=device).double()
    rgb = shade(attrs, normals, -ray_dirs, lighting)

    rgba = torch.zeros(hit.shape + (4,), dtype=torch.uint8, device=device)
    rgba[hit] = torch.cat([torch.round(rgb * 255.0), torch.full_like(rgb[:, :1], 255.0)], -1).to(torch.uint8)
    normal_img = torch.zeros(hit.shape + (3,), dtype=torch.float32, device=device)
    normal_img[hit] = normals.float()
    base = torch.zeros(hit.shape + (3,), dtype=torch.uint8, device=device)
    base[hit] = torch.round(attrs[:, :3].clamp(0.0, 1.0) * 255.0).to(torch.uint8)
    return RenderedViews(
        rgba=rgba.cpu().numpy(),
        depth=buffers.depth.float().cpu().numpy(),
        normal=normal_img.cpu().numpy(),
        face_id=buffers.face_id.cpu().numpy(),
        base_colour=base.cpu().numpy(),
    )


def render_agreement(
    a: RenderedViews, b: RenderedViews, depth_tol: float = 1e-3, colour_tol: int = 2
) -> dict[str, float]:
    """How closely two renders of the same views agree (for comparing backends).

    Returns fractions: ``coverage`` (pixels where both or neither hit, over all pixels) and, over the pixels
    both hit, ``face_id``, ``depth`` (``|Δdepth| < depth_tol``) and ``colour`` (max channel difference
    ``<= colour_tol`` of 255); and mean ``|Δdepth|`` over the pixels both hit (``depth_mean_abs``, dominated
    by the few pixels on silhouettes that the backends give to different surfaces) and over those that see
    the same face (``depth_mean_abs_same_face``, the interpolation error).
    """
    hit_a, hit_b = a.face_id >= 0, b.face_id >= 0
    both = hit_a & hit_b
    same = both & (a.face_id == b.face_id)
    depth_diff = np.abs(a.depth.astype(np.float64) - b.depth)
    colour_diff = np.abs(a.rgba[..., :3].astype(np.int16) - b.rgba[..., :3]).max(-1)

    def mean(x: np.ndarray) -> float:
        return float(x.mean()) if x.size else 0.0

    return {
        "coverage": float((hit_a == hit_b).mean()),
        "face_id": mean(same[both]),
        "depth": mean(depth_diff[both] < depth_tol),
        "depth_mean_abs": mean(depth_diff[both]),
        "depth_mean_abs_same_face": mean(depth_diff[same]),
        "colour": mean(colour_diff[both] <= colour_tol),
    }


# ----------------------------------------------------------------------------------------------- image I/O
def save_png(path: str | Path, image: np.ndarray) -> None:
    """Write an ``[H, W]`` or ``[H, W, C]`` uint8/uint16 array as a PNG (:func:`genrecon.data.shards.encode_png`)."""
    Path(path).write_bytes(encode_png(np.ascontiguousarray(image)))


def save_rgba_png(path: str | Path, rgba: np.ndarray) -> None:
    """Write ``[H, W, 4]`` uint8 RGBA."""
    save_png(path, np.asarray(rgba, dtype=np.uint8))


def encode_depth_mm(depth: np.ndarray) -> np.ndarray:
    """``[H, W]`` metres -> uint16 millimetres (rounded, saturating at 65.535 m; 0 stays background)."""
    return np.clip(np.round(np.asarray(depth, dtype=np.float64) * 1000.0), 0, 65535).astype(np.uint16)


def save_depth_png(path: str | Path, depth: np.ndarray) -> None:
    """Write depth ``[H, W]`` in metres as a 16-bit PNG in millimetres."""
    save_png(path, encode_depth_mm(depth))


def load_depth_png(path: str | Path) -> np.ndarray:
    """Read a depth PNG written by :func:`save_depth_png` -> ``[H, W]`` float32 metres."""
    return np.asarray(Image.open(path), dtype=np.float32) / 1000.0


def encode_normals(normal: np.ndarray) -> np.ndarray:
    """``[H, W, 3]`` unit normals -> uint8 ``round((n + 1)/2 · 255)``; zero (background) normals -> 0, which
    no unit normal encodes to."""
    normal = np.asarray(normal, dtype=np.float64)
    encoded = np.round((np.clip(normal, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
    encoded[~np.any(normal != 0.0, axis=-1)] = 0
    return encoded


def decode_normals(encoded: np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode_normals` -> ``[H, W, 3]`` float32 unit normals (0 on background)."""
    encoded = np.asarray(encoded)
    normal = encoded.astype(np.float32) / 127.5 - 1.0
    normal /= np.maximum(np.linalg.norm(normal, axis=-1, keepdims=True), 1e-12)
    normal[~np.any(encoded != 0, axis=-1)] = 0.0
    return normal


def save_normal_png(path: str | Path, normal: np.ndarray) -> None:
    """Write world-frame normals ``[H, W, 3]`` as an 8-bit RGB PNG (see :func:`encode_normals`)."""
    save_png(path, encode_normals(normal))


def load_normal_png(path: str | Path) -> np.ndarray:
    """Read a normal PNG written by :func:`save_normal_png` -> ``[H, W, 3]`` float32."""
    return decode_normals(np.asarray(Image.open(path).convert("RGB")))
