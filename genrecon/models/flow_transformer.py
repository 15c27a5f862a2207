"""Dense and sparse flow transformers (TRELLIS.2 design) with GenRecon's projection conditioning.

Both models predict the rectified-flow velocity. They share: a time embedding of 1000·t, one adaLN modulation
for all blocks (plus a per-block bias), 3-D RoPE from integer voxel coordinates, cross-attention to one view's
image tokens ``cond_2d`` [B, T, C_cond], and, when built with a projection and an aggregator, the projection
pathway: ``h = h + proj_linears[i](cond_3d)`` before block i, every ``proj_linears[i]`` zero-initialised so an
untrained pathway leaves the base model's output unchanged.

Module names follow the published checkpoints (``t_embedder``, ``adaLN_modulation``, ``input_layer``,
``blocks``, ``out_layer``, ``rope_phases``, ``aggregator``, ``proj_linears``), so weights load as they are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.profiler import record_function

from genrecon.models.aggregator import project_and_aggregate
from genrecon.models.cell_cue import CellCue
from genrecon.models.depth_cue import DepthCue, cell_zbuffer, histogram_logits, merge_logits, zbuffer_histograms
from genrecon.models.photo_consistency import PhotoConsistency
from genrecon.models.point_grid import PointGridCue
from genrecon.models.projection import coords_to_points, voxel_centers
from genrecon.models.visibility import StructureVisibility
from genrecon.modules.attention import PackedLayout
from genrecon.modules.rope import grid_coords, rope_phases
from genrecon.modules.timestep import TimestepEmbedder
from genrecon.modules.transformer import ModulatedTransformerCrossBlock, SparseModulatedTransformerCrossBlock

# The published weights were trained on the sinusoidal embedding of 1000·t.
TIME_SCALE = 1000.0


class SparseLike(Protocol):
    """Anything carrying packed sparse tokens: coords [K, 4] int (batch, x, y, z), feats [K, C]."""

    coords: Tensor
    feats: Tensor


class _FlowTransformer(nn.Module):
    """Shared parts of the dense and sparse models; subclasses say how tokens are laid out."""

    block_cls: type[ModulatedTransformerCrossBlock] = ModulatedTransformerCrossBlock

    def __init__(
        self,
        *,
        resolution: int,
        in_channels: int,
        out_channels: int,
        model_channels: int,
        cond_channels: int,
        num_blocks: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qk_rms_norm: bool = True,
        qk_rms_norm_cross: bool = True,
        rope_theta: float = 1e4,
        use_checkpoint: bool = False,
        proj_checkpoint: bool = True,
        attn_backend: str = "auto",
        attn_device: torch.device | str | None = None,
        projection: nn.Module | None = None,
        aggregator: nn.Module | None = None,
        photo_cue: dict[str, Any] | None = None,
        depth_cue: dict[str, Any] | None = None,
        cell_cue: dict[str, Any] | None = None,
    ) -> None:
        """projection / aggregator: GenRecon's conditioning pathway, given together or not at all.
        proj_checkpoint: while the aggregator trains, recompute each streamed batch of its per-view features in
        backward (memory bounded by ``batch_voxels``); False keeps them (more memory, no recomputation).
        attn_backend: see genrecon.modules.attention; "auto" is resolved for attn_device
        (None = CUDA if available, else CPU).
        photo_cue: keyword arguments of :class:`genrecon.models.photo_consistency.PhotoConsistency` (e.g.
        ``{subdivisions: 4, hidden: 256}``) to add the views' colour statistics to the fused 3-D condition;
        None (the published design) leaves it out. Needs the projection pathway.
        depth_cue: keyword arguments of :class:`genrecon.models.depth_cue.DepthCue` (e.g. ``{bins: 64,
        max_depth: 4.0}``; with ``sweep: {channels: 16}`` also matched across the views) to add each view's
        predicted depth evidence at the voxel to its per-view feature; None (published) leaves it out. Needs the
        projection pathway.
        cell_cue: keyword arguments of :class:`genrecon.models.cell_cue.CellCue` (e.g. ``{subdivisions: 4}``) to
        add the view's sub-patch cell under the voxel to its per-view feature; None (published) leaves it out.
        Needs the projection pathway with nearest token sampling."""
        super().__init__()
        self.proj_checkpoint = proj_checkpoint
        if (projection is None) != (aggregator is None):
            raise ValueError(
                "projection and aggregator enable the 3-D conditioning together: pass both or neither"
            )
        self.arch: dict[str, Any] = {
            "resolution": resolution,
            "in_channels": in_channels,
            "out_channels": out_channels,
            "model_channels": model_channels,
            "cond_channels": cond_channels,
            "num_blocks": num_blocks,
            "num_heads": num_heads,
            "mlp_ratio": mlp_ratio,
            "qk_rms_norm": qk_rms_norm,
            "qk_rms_norm_cross": qk_rms_norm_cross,
            "rope_theta": rope_theta,
        }
        self.resolution = resolution
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.model_channels = model_channels
        self.cond_channels = cond_channels
        self.head_dim = model_channels // num_heads
        self.rope_theta = rope_theta

        self.t_embedder = TimestepEmbedder(model_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(model_channels, 6 * model_channels))
        self.input_layer = nn.Linear(in_channels, model_channels)
        # What every block of this model shares, whatever its width (the patched model's cell blocks too).
        self._block_kwargs = {"qk_rms_norm": qk_rms_norm, "qk_rms_norm_cross": qk_rms_norm_cross,
                              "attn_backend": attn_backend, "attn_device": attn_device, "use_checkpoint": use_checkpoint}
        self.blocks = nn.ModuleList(self._new_block(model_channels, num_heads) for _ in range(num_blocks))
        self.out_layer = nn.Linear(model_channels, out_channels)
        self._init_scaled()

        # Added after the base init so it does not touch the injected aggregator's own initialisation.
        self.projection = projection
        self.aggregator = aggregator
        if aggregator is not None:
            self.proj_linears = nn.ModuleList(
                nn.Linear(cond_channels, model_channels) for _ in range(num_blocks)
            )
            for linear in self.proj_linears:
                nn.init.zeros_(linear.weight)
                nn.init.zeros_(linear.bias)
        else:
            self.proj_linears = None
        if photo_cue is not None and aggregator is None:
            raise ValueError("photo_cue is part of the projection pathway: it needs projection and aggregator")
        self.photo_cue = (
            PhotoConsistency(resolution, cond_channels, **photo_cue) if photo_cue is not None else None
        )
        if depth_cue is not None and aggregator is None:
            raise ValueError("depth_cue is part of the projection pathway: it needs projection and aggregator")
        self.depth_cue = DepthCue(cond_channels, **depth_cue) if depth_cue is not None else None
        if cell_cue is not None and (aggregator is None or getattr(projection, "sampling", None) != "nearest"):
            raise ValueError("cell_cue is part of the projection pathway: it needs projection (nearest sampling) "
                             "and aggregator")
        self.cell_cue = CellCue(cond_channels, **cell_cue) if cell_cue is not None else None
        # Only the sparse models know a structure to z-buffer (SparseFlowTransformer sets it).
        self.visibility: StructureVisibility | None = None

    @property
    def has_cond_3d(self) -> bool:
        return self.proj_linears is not None

    def _new_block(self, width: int, num_heads: int) -> nn.Module:
        """A transformer block of this model's kind at ``width`` attending to the view tokens."""
        return self.block_cls(width, self.cond_channels, num_heads, self.arch["mlp_ratio"], **self._block_kwargs)

    def _init_scaled(self) -> None:
        """TRELLIS.2 "scaled" init: residual outputs shrink with depth; adaLN and output start at zero."""
        width, depth = self.model_channels, len(self.blocks)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=math.sqrt(2.0 / (5.0 * width)))
                nn.init.zeros_(module.bias)
        for block in self.blocks:
            for linear in (block.self_attn.to_out, block.cross_attn.to_out, block.mlp.mlp[2]):
                nn.init.normal_(linear.weight, std=1.0 / math.sqrt(5.0 * depth * width))
        # Unit-variance tokens after the input layer.
        nn.init.normal_(self.input_layer.weight, std=1.0 / math.sqrt(self.in_channels))
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        # Zero modulation = identity adaLN with closed gates; zero output = zero velocity at step 0.
        for linear in (self.adaLN_modulation[1], self.out_layer):
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

    # --------------------------------------------------------------------------------------------------------
    # Projection conditioning
    # --------------------------------------------------------------------------------------------------------

    def compute_cond_3d(
        self,
        points: Tensor,
        batch_idx: Tensor,
        tokens: Tensor,
        w2c: Tensor,
        K: Tensor,
        view_mask: Tensor,
        batch_voxels: int = 8192,
        images: Tensor | None = None,
        zbuffer: Tensor | None = None,
        depth_logits: Tensor | None = None,
    ) -> Tensor:
        """Project points into all views and fuse the per-view tokens, ``batch_voxels`` points at a time.

        points [P, 3] chunk frame, batch_idx [P] long, tokens [B, N, T, C_cond], w2c [B, N, 4, 4],
        K [B, N, 3, 3] normalised intrinsics, view_mask [B, N] bool -> [P, C_cond].
        The per-view gather [batch_voxels, N, C_cond] is the peak; when the aggregator trains, each batch is
        checkpointed so only its output stays alive for backward.
        images [B, N, 3, H, W] in [0, 1]: the views themselves, needed (only) by a model with a photo cue.
        zbuffer [B, N, G, G]: with structure visibility, the z-buffer of the whole structure
        (:meth:`structure_zbuffer`); None builds it from ``points``, which must then be all the active cells.
        depth_logits [B, N, P², D]: the depth cue's per-patch logits to use instead of its head's (a diagnostic:
        :func:`genrecon.models.depth_cue.histogram_logits`).
        """
        if not self.has_cond_3d:
            raise RuntimeError("this model was built without projection/aggregator")
        if batch_voxels < 1:
            raise ValueError(f"batch_voxels must be positive, got {batch_voxels}")
        if self.photo_cue is not None and images is None:
            raise ValueError("this model adds the photo-consistency cue: pass the views as images=[B, N, 3, H, W]")
        recompute = self.proj_checkpoint and any(p.requires_grad for p in self.aggregator.parameters())
        if depth_logits is not None and self.depth_cue is None:
            raise ValueError("depth_logits replace the depth cue's: this model has no depth_cue")
        if self.depth_cue is not None:
            tokens = self.depth_cue.extend_tokens(tokens, depth_logits, self.projection.num_global_tokens,
                                                  geometry=(w2c, K, view_mask))  # [B, N, T, C + D]
        if self.cell_cue is not None:
            tokens = self.cell_cue.extend_tokens(tokens)  # [B, N, T, C (+ D) + sub²·Cc]
        visible = None
        if self.visibility is not None:
            # Once for all points [P, N]: the aggregator's streamed batches and the photo cue share it.
            with record_function("cond.visibility"):
                if zbuffer is None:  # the points are all the cells: one projection serves both passes
                    visible = self.visibility(points, batch_idx, w2c, K, view_mask, 1.0 / self.resolution)
                else:
                    visible = self.visibility.visible(zbuffer, points, batch_idx, w2c, K, view_mask,
                                                      1.0 / self.resolution)
        with record_function("cond.project_aggregate"):
            cond = project_and_aggregate(
                self.projection,
                self.aggregator,
                points,
                batch_idx,
                tokens,
                w2c,
                K,
                view_mask,
                batch_voxels=batch_voxels,
                checkpoint=recompute,
                depth_cue=self.depth_cue,
                visible=visible,
                cell_cue=self.cell_cue,
            )
        if self.photo_cue is not None:
            cond = cond + self.photo_cue(images, points, batch_idx, w2c, K, view_mask, visible).to(cond.dtype)
        return cond

    def structure_zbuffer(
        self, points: Tensor, batch_idx: Tensor, w2c: Tensor, K: Tensor, view_mask: Tensor
    ) -> Tensor | None:
        """Per-view z-buffer ``[B, N, G, G]`` of the active cells ``points [P, 3]`` (all of them: they are the
        occluders), for callers that condition them in pieces; None for a model without structure visibility."""
        if self.visibility is None:
            return None
        return self.visibility.zbuffer(points, batch_idx, w2c, K, view_mask, 1.0 / self.resolution)

    def point_depth_logits(
        self,
        tokens: Tensor,
        points: Tensor,
        batch_idx: Tensor,
        w2c: Tensor,
        K: Tensor,
        view_mask: Tensor,
        subcells: int = 2,
        batch_points: int | None = None,
    ) -> Tensor:
        """The depth cue's per-patch logits ``[B, N, P², D]`` (for ``depth_logits``) with depths from points: where
        points ``[M, 3]`` (chunk frame; sample ``batch_idx [M]``) land in a patch, the histogram of its
        ``subcells²`` cells' nearest point depths (:mod:`genrecon.models.point_depth`); elsewhere the head's
        estimate from tokens ``[B, N, T, C_cond]``. Points are projected ``batch_points`` at a time (default:
        about 4 M (point, view) pairs, as a scene's hundreds of views would otherwise hold GBs of cameras)."""
        if self.depth_cue is None:
            raise ValueError("point depths feed the depth cue: this model has no depth_cue")
        cue, projection = self.depth_cue, self.projection
        b, n, cells = tokens.shape[0], tokens.shape[1], projection.patch_grid * subcells
        zbuf = torch.full((b, n, cells, cells), float("inf"), device=tokens.device)
        batch_points = batch_points or max(1024, (1 << 22) // n)
        with torch.no_grad(), torch.autocast(tokens.device.type, enabled=False), record_function("cond.point_depth"):
            for start in range(0, len(points), batch_points):
                p, bidx = points[start : start + batch_points], batch_idx[start : start + batch_points]
                u, v, valid, depth = projection.project(p, bidx, w2c, K, view_mask)
                zbuf = cell_zbuffer(u, v, depth, valid, bidx, b, cells, zbuf)
            target, has = zbuffer_histograms(zbuf, projection.patch_grid, subcells, cue.bins, cue.max_depth)
            given = histogram_logits(target, has)
        head = cue.patch_logits(tokens, projection.num_global_tokens, geometry=(w2c, K, view_mask))
        return merge_logits(head, given, has)

    # --------------------------------------------------------------------------------------------------------
    # Shared forward pieces
    # --------------------------------------------------------------------------------------------------------

    def _modulation(self, t: Tensor) -> Tensor:
        """t [B] in [0, 1] -> shared adaLN modulation [B, 6C]."""
        return self.adaLN_modulation(self.t_embedder(t * TIME_SCALE))

    def _run_blocks(
        self,
        h: Tensor,
        mod: Tensor,
        cond_2d: Tensor,
        cond_3d: Tensor | None,
        phases: Tensor,
        layout: PackedLayout | None,
    ) -> Tensor:
        if cond_3d is not None and self.proj_linears is None:
            raise ValueError("cond_3d given, but this model was built without projection conditioning")
        for i, block in enumerate(self.blocks):
            if self.proj_linears is not None:
                # cond_3d None = the unconditional branch, identical to zeros: only the bias remains.
                linear = self.proj_linears[i]
                h = h + (linear(cond_3d) if cond_3d is not None else linear.bias.to(h.dtype))
            h = block(h, mod, cond_2d, phases, layout)
        return h

    def _output(self, h: Tensor) -> Tensor:
        return self.out_layer(F.layer_norm(h, h.shape[-1:]))


class DenseFlowTransformer(_FlowTransformer):
    """Flow over a dense latent grid (sparse-structure stage): x [B, C_in, R, R, R] -> [B, C_out, R, R, R].

    Tokens are the R³ voxels flattened x·R² + y·R + z (meshgrid "ij"), which is also the order of cond_3d.
    """

    block_cls = ModulatedTransformerCrossBlock

    def __init__(self, *, point_grid: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """point_grid: keyword arguments of :class:`genrecon.models.point_grid.PointGridCue` (e.g.
        ``{subdivisions: 4}``) to add input points, counted per occupancy voxel of each cell, to the 3-D condition
        (a deviation, off by default; the SS stage's ``point_depth`` gives the points)."""
        super().__init__(**kwargs)
        if point_grid is not None and not self.has_cond_3d:
            raise ValueError("point_grid adds to the 3-D condition: it needs projection and aggregator")
        self.point_grid = PointGridCue(self.cond_channels, **point_grid) if point_grid is not None else None
        phases = rope_phases(grid_coords(self.resolution), self.head_dim, self.rope_theta)
        self.register_buffer("rope_phases", phases)  # [R³, D/2] complex64, persistent as in TRELLIS.2

    def _apply(self, fn, recurse: bool = True):
        # Module.to(bfloat16) would cast the complex RoPE table to a real dtype and drop its imaginary part:
        # the table follows the model's device only.
        phases = self._buffers.pop("rope_phases")
        try:
            super()._apply(fn, recurse)
        finally:
            target = fn(torch.empty(0, device=phases.device)).device
            if phases.is_meta and target.type != "meta":
                # to_empty() after building on the meta device: the table has no data to move, recompute it.
                phases = rope_phases(
                    grid_coords(self.resolution, device=target), self.head_dim, self.rope_theta
                )
            self._buffers["rope_phases"] = phases.to(target)
        return self

    def cond_3d_from_views(
        self,
        tokens: Tensor,
        w2c: Tensor,
        K: Tensor,
        view_mask: Tensor,
        batch_voxels: int = 8192,
        images: Tensor | None = None,
        depth_logits: Tensor | None = None,
    ) -> Tensor:
        """3-D conditioning of every voxel centre: tokens [B, N, T, C_cond] ... -> [B, R³, C_cond]
        (``depth_logits``: see :meth:`compute_cond_3d`)."""
        batch, voxels = tokens.shape[0], self.resolution**3
        points = voxel_centers(self.resolution).to(tokens.device).repeat(batch, 1)
        batch_idx = torch.arange(batch, device=tokens.device).repeat_interleave(voxels)
        cond = self.compute_cond_3d(points, batch_idx, tokens, w2c, K, view_mask, batch_voxels, images,
                                    depth_logits=depth_logits)
        return cond.view(batch, voxels, self.cond_channels)

    def forward(self, x: Tensor, t: Tensor, cond_2d: Tensor, cond_3d: Tensor | None = None) -> Tensor:
        """x [B, C_in, R, R, R], t [B] in [0, 1], cond_2d [B, T, C_cond], cond_3d [B, R³, C_cond] or None
        (None = zeros, the unconditional branch) -> velocity [B, C_out, R, R, R]."""
        batch, _, *spatial = x.shape
        if spatial != [self.resolution] * 3:
            raise ValueError(f"expected a {self.resolution}³ grid, got spatial shape {tuple(spatial)}")
        h = self.input_layer(x.flatten(2).transpose(1, 2))  # [B, R³, C]
        h = self._run_blocks(h, self._modulation(t), cond_2d, cond_3d, self.rope_phases, None)
        return self._output(h).transpose(1, 2).reshape(batch, self.out_channels, *spatial)


def _feats(x: Tensor | SparseLike) -> Tensor:
    return x if isinstance(x, Tensor) else x.feats


class SparseFlowTransformer(_FlowTransformer):
    """Flow over sparse voxel tokens (shape / texture stages): packed feats [K, C_in] at coords [K, 4]
    (batch, x, y, z) -> velocity [K, C_out] in the input's token order. Attention never crosses samples."""

    block_cls = SparseModulatedTransformerCrossBlock

    def __init__(self, *, visibility: dict[str, Any] | None = None, patch_size: int = 1, patch_cell_blocks: int = 1,
                 **kwargs: Any) -> None:
        """visibility: keyword arguments of :class:`genrecon.models.visibility.StructureVisibility` (e.g.
        ``{grid: 64, subdivisions: 2, tolerance: 1.5}``) to fuse each active cell's views only where a z-buffer of
        the active cells says the view sees it (a deviation; no parameters); None (published) fuses every view the
        cell projects into. Needs the projection pathway.
        patch_size: 1 (published) runs the blocks on the active cells themselves. ``p`` > 1 (a deviation, DiT's
        patchify carried to sparse voxels) runs them on the occupied ``p³`` blocks of cells: a block's token is
        a Linear of its children's inputs and presence mask, its fused view feature a Linear of the children's
        (started as their mean); a Linear un-patchifies each block token into its children's features, and a
        per-cell head (with the cell's own input, its own fused view feature and the time) turns those into
        velocities, after ``patch_cell_blocks`` transformer blocks over the cells at half the width (attention
        at full resolution, about 1/24 of the blocks' attention work per block at the small preset).
        Surfaces fill about ``p²`` of a block's ``p³`` cells, so at ``p`` = 2 there are about 4 times fewer
        tokens and 16 times less attention work. The other arguments are the shared ones above."""
        super().__init__(**kwargs)
        if visibility is not None:
            if self.aggregator is None:
                raise ValueError("visibility is part of the projection pathway: it needs projection and aggregator")
            self.visibility = StructureVisibility(**visibility)
        if patch_size < 1:
            raise ValueError(f"patch_size must be ≥ 1, got {patch_size}")
        self.patch_size = patch_size
        self.arch["patch_size"] = patch_size
        if patch_size > 1:
            children, width, fine = patch_size**3, self.model_channels, self.model_channels // 2
            self.input_layer = nn.Linear(children * (self.in_channels + 1), width)
            nn.init.normal_(self.input_layer.weight, std=1.0 / math.sqrt(children * (self.in_channels + 1)))
            nn.init.zeros_(self.input_layer.bias)
            # A block token is too narrow to carry its children's noise through to their velocities (8 × 64
            # input values at width 512), so the velocity is made per cell: the block token un-patchified into
            # each child's feature, plus the cell's own input, time-modulated, then a zero-initialised output.
            self.out_layer = nn.Linear(width, children * fine)
            nn.init.normal_(self.out_layer.weight, std=1.0 / math.sqrt(width))
            nn.init.zeros_(self.out_layer.bias)
            self.fine_input = nn.Linear(self.in_channels, fine)
            nn.init.normal_(self.fine_input.weight, std=1.0 / math.sqrt(self.in_channels))
            nn.init.zeros_(self.fine_input.bias)
            # Blocks over the cells themselves: their own time modulation (zero = identity with closed gates),
            # RoPE at cell coordinates, the head width of the main blocks.
            cell_heads = max(1, fine // self.head_dim)
            self.cell_head_dim = fine // cell_heads
            self.cell_blocks = nn.ModuleList(self._new_block(fine, cell_heads) for _ in range(patch_cell_blocks))
            for block in self.cell_blocks:
                for module in block.modules():
                    if isinstance(module, nn.Linear):
                        nn.init.normal_(module.weight, std=math.sqrt(2.0 / (5.0 * fine)))
                        if module.bias is not None:
                            nn.init.zeros_(module.bias)
            self.cell_modulation = nn.Linear(width, 6 * fine)
            nn.init.zeros_(self.cell_modulation.weight)
            nn.init.zeros_(self.cell_modulation.bias)
            self.fine_modulation = nn.Linear(width, 2 * fine)
            self.fine_out = nn.Linear(fine, self.out_channels)
            for linear in (self.fine_modulation, self.fine_out):
                nn.init.zeros_(linear.weight)
                nn.init.zeros_(linear.bias)
            if self.has_cond_3d:
                # The cell's own fused view feature enters its head too (zero-initialised, so an untrained pathway
                # is inert): a block token mixes 8 cells' views, while a seen cell's colour is in its own.
                self.fine_cond = nn.Linear(self.cond_channels, fine)
                nn.init.zeros_(self.fine_cond.weight)
                nn.init.zeros_(self.fine_cond.bias)
                self.cond_patch = nn.Linear(children * self.cond_channels, self.cond_channels)
                with torch.no_grad():  # the mean of the children's features (absent children count as zeros)
                    self.cond_patch.weight.copy_(torch.eye(self.cond_channels).repeat(1, children) / children)
                    self.cond_patch.bias.zero_()

    def cond_3d_from_views(
        self,
        coords: Tensor,
        tokens: Tensor,
        w2c: Tensor,
        K: Tensor,
        view_mask: Tensor,
        batch_voxels: int = 8192,
        images: Tensor | None = None,
    ) -> Tensor:
        """3-D conditioning at the active voxels: coords [K, 4] int (batch, x, y, z) -> [K, C_cond]. With structure
        visibility the coords are also the occluders: pass all the active cells of the samples."""
        points = coords_to_points(coords[:, 1:], self.resolution)
        return self.compute_cond_3d(points, coords[:, 0].long(), tokens, w2c, K, view_mask, batch_voxels, images)

    def forward(
        self,
        x: Tensor | SparseLike,
        t: Tensor,
        cond_2d: Tensor,
        cond_3d: Tensor | SparseLike | None = None,
        *,
        coords: Tensor | None = None,
        concat_cond: Tensor | SparseLike | None = None,
        offsets: Sequence[int] | None = None,
    ) -> Tensor:
        """x: feats [K, C_in] with ``coords`` [K, 4], or an object with .feats/.coords; t [B] in [0, 1];
        cond_2d [B, T, C_cond]; cond_3d [K, C_cond] on the same tokens, or None (= zeros, unconditional);
        concat_cond [K, C'] appended to the input channels (texture flow: noise ‖ shape latent).
        offsets: optional per-sample token offsets on the host (B+1 ints, 0 ... K) of tokens already grouped
        by sample: sample b is rows offsets[b]:offsets[b+1] (the collate's ``shape_token_offsets``). They are
        trusted, not checked against coords[:, 0]; with them the forward issues no device sync. Without them
        the layout is read from coords[:, 0] (device syncs) and ungrouped tokens are sorted.
        Returns the velocity feats [K, C_out], aligned with the input tokens."""
        if isinstance(x, Tensor):
            if coords is None:
                raise ValueError("raw feature tensors need coords [K, 4]")
            feats = x
        else:
            if coords is not None:
                raise ValueError("coords are given by x; do not pass them again")
            feats, coords = x.feats, x.coords
        if concat_cond is not None:
            feats = torch.cat([feats, _feats(concat_cond)], dim=-1)
        cond_3d = _feats(cond_3d) if cond_3d is not None else None

        order = None
        if offsets is not None:
            layout = PackedLayout.from_offsets(offsets, feats.device)
            if layout.batch_size != cond_2d.shape[0] or layout.total != feats.shape[0]:
                raise ValueError(
                    f"offsets describe {layout.batch_size} samples / {layout.total} tokens, the inputs have "
                    f"{cond_2d.shape[0]} / {feats.shape[0]}"
                )
        else:
            batch_idx = coords[:, 0].long()
            if batch_idx.numel() and bool((batch_idx[1:] < batch_idx[:-1]).any()):
                # Packed attention needs each sample's tokens contiguous; sort stably and undo at the end.
                order = torch.argsort(batch_idx, stable=True)
                feats, coords, batch_idx = feats[order], coords[order], batch_idx[order]
                cond_3d = cond_3d[order] if cond_3d is not None else None
            # Grouped now: the layout need not check it again (one device sync fewer).
            layout = PackedLayout.from_batch_idx(batch_idx, cond_2d.shape[0], check_sorted=False)
        with record_function("model.sparse_forward"):
            if self.patch_size > 1:
                out = self._forward_patched(feats, coords, t, cond_2d, cond_3d, layout)
            else:
                phases = rope_phases(coords[:, 1:], self.head_dim, self.rope_theta)
                h = self.input_layer(feats)
                h = self._run_blocks(h, self._modulation(t), cond_2d, cond_3d, phases, layout)
                out = self._output(h)
        if order is not None:
            out = torch.empty_like(out).index_copy_(0, order, out)
        return out

    def _forward_patched(
        self, feats: Tensor, coords: Tensor, t: Tensor, cond_2d: Tensor, cond_3d: Tensor | None,
        cell_layout: PackedLayout,
    ) -> Tensor:
        """The blocks over occupied ``p³`` blocks of cells (``patch_size`` p > 1).

        feats [K, C_in], coords [K, 4] (unique cells grouped by sample, as ``cell_layout`` says), cond_3d
        [K, C_cond] or None -> [K, C_out] in the cells' order. Block tokens come out of ``torch.unique`` sorted by
        (batch, x, y, z): grouped by sample.
        """
        p, children = self.patch_size, self.patch_size**3
        r = -(-self.resolution // p)  # blocks per axis
        batch_idx, xyz = coords[:, 0].long(), coords[:, 1:].long()
        block_xyz, sub = xyz.div(p, rounding_mode="floor"), xyz.remainder(p)
        child = (sub[:, 0] * p + sub[:, 1]) * p + sub[:, 2]  # [K] in [0, p³)
        key = ((batch_idx * r + block_xyz[:, 0]) * r + block_xyz[:, 1]) * r + block_xyz[:, 2]
        blocks, parent = torch.unique(key, return_inverse=True)  # [Kb] sorted, [K]
        n = blocks.numel()
        packed = feats.new_zeros(n, children, feats.shape[1] + 1)
        packed[parent, child] = torch.cat([feats, feats.new_ones(feats.shape[0], 1)], dim=1)
        block_coords = torch.stack(
            [blocks // r**3, (blocks // r**2) % r, (blocks // r) % r, blocks % r], dim=1
        )
        cond_blocks = None
        if cond_3d is not None:
            gathered = cond_3d.new_zeros(n, children, cond_3d.shape[1])
            gathered[parent, child] = cond_3d
            cond_blocks = self.cond_patch(gathered.flatten(1))
        layout = PackedLayout.from_batch_idx(block_coords[:, 0], cond_2d.shape[0], check_sorted=False)
        phases = rope_phases(block_coords[:, 1:], self.head_dim, self.rope_theta)
        t_emb = self.t_embedder(t * TIME_SCALE)  # [B, C]
        h = self.input_layer(packed.flatten(1))
        h = self._run_blocks(h, self.adaLN_modulation(t_emb), cond_2d, cond_blocks, phases, layout)
        fine = self._output(h).view(n, children, -1)[parent, child] + self.fine_input(feats)  # [K, C/2]
        if self.has_cond_3d:  # cond_3d None = the unconditional branch, as zeros: only the bias remains
            fine = fine + (self.fine_cond(cond_3d) if cond_3d is not None else self.fine_cond.bias.to(fine.dtype))
        if len(self.cell_blocks):
            cell_phases = rope_phases(xyz, self.cell_head_dim, self.rope_theta)
            cell_mod = self.cell_modulation(F.silu(t_emb))
            for block in self.cell_blocks:
                fine = block(fine, cell_mod, cond_2d, cell_phases, cell_layout)
        shift, scale = self.fine_modulation(F.silu(t_emb)).chunk(2, dim=-1)
        fine = F.layer_norm(fine, fine.shape[-1:]) * (1 + scale[batch_idx]) + shift[batch_idx]
        return self.fine_out(F.silu(fine))
