"""Scene reconstruction: posed views + chunk tiling + six trained stages -> mesh with PBR voxel attributes.

Frames: everything runs in the *grid frame*, the chunk frame of a virtual chunk whose cube is the tiling's grid
cell at offset 0 (``[-0.5, 0.5]^3``, unit = chunk edge). A global voxel ``g`` at per-chunk resolution R has
its centre at ``(g + 0.5) / R - 0.5``; chunk i sees it at local coordinate ``g - offset_i``. Cameras are
expressed in the grid frame once, so one projection serves every chunk.

Phases (timed by the caller): image features -> SS joint sampling -> SS decode -> shape joint sampling ->
texture joint sampling -> decode (in spatial blocks) -> mesh.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from genrecon.geometry.cameras import box_corners_and_centre, projected_box_coverage, w2c_in_chunk_frame
from genrecon.geometry.chunks import Chunk
from genrecon.geometry.floor_rays import CHUNK_FLOOR_Z, append_floor_rays
from genrecon.geometry.ovoxel import ovoxel_to_mesh
from genrecon.geometry.tiling import ATOMIC_DIVISIONS, SceneTiling
from genrecon.models.image_encoder import encode_views
from genrecon.modules.sparse.tensor import SparseTensor, feats_at
from genrecon.pipelines.multi_chunk import (
    DenseLayout,
    SparseLayout,
    merge_sparse,
    sample_dense_joint,
    sample_sparse_joint,
)
from genrecon.pipelines.sampler import DRAW_MEANS, EulerSampler, mean_of_draws, occupancy_logit


@dataclass
class ReconstructionSettings:
    """Sampler settings per stage and the memory knobs (``conf/infer.yaml``)."""

    samplers: dict[str, dict[str, Any]] = field(default_factory=dict)
    occ_threshold: float = -1.0
    ss_draw_mean: str = "latent"  # with samplers.ss.draws > 1: "latent" or "occupancy" (see sample_occupancy)
    boundary_width: int = 1
    proj_batch_voxels: int = 8192
    chunks_per_group: int = 4
    decode_block: int = 32  # latent voxels per axis of one decode block
    decode_halo: int = 4  # latent voxels of context around a decode block
    cond_view_min_coverage: float = 0.4
    seed: int = 0
    point_depth_max_points: int = 1 << 19  # input points an ss_flow with point_depth projects (a random subset)

    def __post_init__(self) -> None:
        if self.ss_draw_mean not in DRAW_MEANS:
            raise ValueError(f"ss_draw_mean {self.ss_draw_mean!r}: expected one of {DRAW_MEANS}")


@dataclass
class Reconstruction:
    """The result in the world frame: mesh ``vertices [V, 3]``, ``faces [F, 3]``; PBR attributes ``attrs
    [M, 6]`` on fine voxels ``fine_coords [M, 3]`` of a grid with ``fine_origin`` (world position of voxel
    corner 0) and ``fine_voxel_m``; ``vertex_attrs [V, 6]``."""

    vertices: np.ndarray
    faces: np.ndarray
    vertex_attrs: np.ndarray
    fine_coords: np.ndarray
    attrs: np.ndarray
    fine_origin: np.ndarray
    fine_voxel_m: float
    stats: dict[str, Any]


def grid_chunk(tiling: SceneTiling) -> Chunk:
    """The virtual chunk at grid offset 0 that defines the grid frame."""
    return Chunk(center=tuple(tiling.grid_origin + 0.5 * tiling.edge_m), edge_m=tiling.edge_m, yaw=0.0)


def points_in_frame(points: np.ndarray, frame: Chunk) -> Tensor:
    """World points ``[M, 3]`` → float32 ``[M, 3]`` in ``frame``'s chunk frame (that of the grid, the cameras'
    :func:`w2c_in_chunk_frame`)."""
    hom = np.concatenate([np.asarray(points, np.float64).reshape(-1, 3), np.ones((len(points), 1))], axis=1)
    return torch.from_numpy((hom @ frame.chunk_from_world.T)[:, :3]).float()


def cond_views_per_chunk(w2c: np.ndarray, K: np.ndarray, offsets16: np.ndarray, min_coverage: float,
                         rng: np.random.Generator) -> np.ndarray:
    """One view per chunk for the cross-attention: a random view that sees it (projected-box coverage ≥
    ``min_coverage``), else the best-covering one. ``w2c`` in the grid frame."""
    chosen = []
    for off in offsets16:
        lo = off / ATOMIC_DIVISIONS - 0.5
        cov = projected_box_coverage(w2c, K, box_corners_and_centre(lo, lo + 1.0))
        eligible = np.nonzero(cov >= min_coverage)[0]
        chosen.append(int(rng.choice(eligible)) if len(eligible) else int(np.argmax(cov)))
    return np.asarray(chosen)


class SceneReconstructor:
    """Runs the six stages jointly over a tiling (see the module docstring).

    ``stages``: ``ss_vae``, ``shape_vae``, ``tex_vae``, ``ss_flow``, ``shape_flow``, ``tex_flow`` modules (eval).
    """

    def __init__(self, stages: dict[str, Any], settings: ReconstructionSettings, device: torch.device) -> None:
        missing = {"ss_vae", "shape_vae", "tex_vae", "ss_flow", "shape_flow", "tex_flow"} - set(stages)
        if missing:
            raise ValueError(f"missing stage checkpoints: {sorted(missing)}")
        self.stages = stages
        self.settings = settings
        self.device = device
        self.timer: Any = None
        # The last run's per-chunk sparse latents (normalised) and their layout, for inspection and tests.
        self.last_chunks: dict[str, Any] = {}

    def _phase(self, name: str):
        from contextlib import nullcontext

        return self.timer.phase(name) if self.timer is not None else nullcontext()

    def _sampler(self, name: str) -> EulerSampler:
        return EulerSampler(**self.settings.samplers.get(name, {}))

    # ------------------------------------------------------------------ conditioning
    def _tokens(self, stage: Any, images: Tensor, w2c: Tensor, K: Tensor) -> Tensor:
        """``[1, N, T, C]`` tokens of all views for one flow stage's encoder (host memory); ``w2c [N, 4, 4]`` in
        the grid frame (the floor at z = -0.5, as the chunks rest on it) for an encoder with floor-ray maps."""
        size = stage.hparams["image_size"]
        imgs = images if images.shape[-1] == size else F.interpolate(images, size=(size, size), mode="bilinear",
                                                                      antialias=True, align_corners=False)
        if stage.image_encoder.geometry_channels:
            imgs = append_floor_rays(imgs.to(self.device), w2c, K, CHUNK_FLOOR_Z)
        mask = torch.ones(1, len(imgs), dtype=torch.bool, device=self.device)
        with torch.no_grad():
            return encode_views(stage.image_encoder, imgs[None].to(self.device), mask)

    def _input_points(self, stage: Any, scene_points: Tensor | None, gen: torch.Generator) -> Tensor | None:
        """The scene's points ``[M, 3]`` (chunk-0 frame) on the device, at most ``point_depth_max_points`` of them,
        for an ss_flow trained with ``point_depth``; None for one without."""
        if getattr(stage, "point_depth", None) is None:
            return None
        if scene_points is None or len(scene_points) == 0:
            raise ValueError("this ss_flow checkpoint reads the input points (point_depth): pass the scene's cleaned "
                             "points")
        cap = self.settings.point_depth_max_points
        if len(scene_points) > cap:
            scene_points = scene_points[torch.randperm(len(scene_points), generator=gen)[:cap]]
        return scene_points.to(self.device, torch.float32)

    def _point_depth_logits(self, stage: Any, tokens: Tensor, points: Tensor | None, w2c: Tensor,
                            K: Tensor) -> Tensor | None:
        """The depth cue's per-patch logits ``[1, N, P², D]`` from the input points ``[M, 3]``
        (:meth:`_input_points`) where the ss_flow's ``point_depth`` feeds its depth cue; None otherwise."""
        if points is None or not stage.point_depth.depth_cue:
            return None
        one_sample = torch.zeros(len(points), dtype=torch.long, device=self.device)
        mask = torch.ones(1, tokens.shape[1], dtype=torch.bool, device=self.device)
        with torch.no_grad():
            return stage.model.point_depth_logits(tokens, points, one_sample, w2c[None], K[None], mask,
                                                  stage.depth_supervision_subcells)

    def _point_grid(self, stage: Any, points: Tensor | None, layout: DenseLayout) -> Tensor | None:
        """The point-grid cue's addition ``[X·Y·Z, C]`` (host memory) to the canvas' 3-D condition, from the input
        points ``[M, 3]`` (:meth:`_input_points`), for an ss_flow with ``preset.flow.point_grid``; None otherwise."""
        cue = getattr(stage.model, "point_grid", None)
        if cue is None:
            return None
        one_sample = torch.zeros(len(points), dtype=torch.long, device=self.device)
        with torch.no_grad():
            counts = cue.counts(points, one_sample, 1, layout.canvas_shape, resolution=layout.resolution)
            return cue(counts)[0].float().cpu()

    def _cond_3d(self, stage: Any, points: Tensor, tokens: Tensor, w2c: Tensor, K: Tensor,
                 images: Tensor, depth_logits: Tensor | None = None) -> Tensor | None:
        """Fused 3-D condition at ``points`` [P, 3] (host memory); ``images`` [N, 3, H, W] feed the photo cue,
        ``depth_logits`` [1, N, P², D] replace the depth cue's (:meth:`_point_depth_logits`)."""
        model = stage.model
        if not model.has_cond_3d:
            return None
        views = images[None].to(self.device) if getattr(model, "photo_cue", None) is not None else None
        n = tokens.shape[1]
        mask = torch.ones(1, n, dtype=torch.bool, device=self.device)
        out = []
        step = self.settings.proj_batch_voxels * 8
        with torch.no_grad():
            zbuffer = None
            if getattr(model, "visibility", None) is not None:
                # Structure visibility: every cell can hide every other, so one z-buffer of them all, not per piece.
                one_sample = torch.zeros(len(points), dtype=torch.long, device=self.device)
                zbuffer = model.structure_zbuffer(points.to(self.device), one_sample, w2c[None], K[None], mask)
            for start in range(0, len(points), step):
                p = points[start : start + step].to(self.device)
                bidx = torch.zeros(len(p), dtype=torch.long, device=self.device)
                out.append(model.compute_cond_3d(p, bidx, tokens, w2c[None], K[None], mask,
                                                 self.settings.proj_batch_voxels, images=views, zbuffer=zbuffer,
                                                 depth_logits=depth_logits).cpu())
        return torch.cat(out)

    # ------------------------------------------------------------------ stages
    def _sample_structure(self, tiling, images, w2c, K, views, gen, scene_points: Tensor | None = None) -> np.ndarray:
        stage, vae = self.stages["ss_flow"], self.stages["ss_vae"]
        r = int(stage.model.resolution)
        layout = DenseLayout(tiling.grid_offsets * r // ATOMIC_DIVISIONS, r)
        with self._phase("ss_conditioning"):
            tokens = self._tokens(stage, images, w2c, K)
            cond_2d = tokens[0, views].cpu()
            points = self._input_points(stage, scene_points, gen)
            depth_logits = self._point_depth_logits(stage, tokens, points, w2c, K)
            c3 = self._cond_3d(stage, layout.canvas_points(), tokens, w2c, K, images, depth_logits)
            grid = self._point_grid(stage, points, layout)
            if grid is not None:
                c3 = c3 + grid.to(c3.dtype)
            cond_3d = None
            if c3 is not None:
                canvas = c3.view(*layout.canvas_shape, -1).permute(3, 0, 1, 2)
                cond_3d = layout.split(canvas).flatten(2).transpose(1, 2).contiguous()  # [n, R³, C]
        with self._phase("ss_sampling"), torch.no_grad():
            sampler = self._sampler("ss")

            def draw(_: int) -> Tensor:
                noise = torch.randn((stage.model.in_channels, *layout.canvas_shape), generator=gen)
                return sample_dense_joint(sampler, stage.model, layout, noise, cond_2d, cond_3d,
                                          self.settings.chunks_per_group, self.device)

            def decode(z: Tensor) -> Tensor:
                canvas = layout.average(stage.denormalise(z, 1))[None]  # [1, 8, X, Y, Z]
                return vae.decoder(canvas)  # conv net: translation-equivariant, one pass over the merged canvas

            logits = z = None
            if self.settings.ss_draw_mean == "occupancy" and sampler.draws > 1:
                # the mean of the draws' decoded occupancy probabilities (SparseStructureFlowStage.sample_occupancy)
                logits = occupancy_logit(mean_of_draws(lambda j: torch.sigmoid(decode(draw(j))), sampler.draws))
            else:
                z = mean_of_draws(draw, sampler.draws)
        with self._phase("ss_decode"), torch.no_grad():
            if logits is None:
                logits = decode(z)
            # occupancy per chunk = r · upsampling; max-pool it down to the shape latent grid (thresholding a
            # max-pooled logit equals OR-ing the thresholded children)
            occ_per_chunk = r * logits.shape[2] // layout.canvas_shape[0]
            ratio = occ_per_chunk // int(self.stages["shape_flow"].model.resolution)
            pooled = F.max_pool3d(logits, ratio) if ratio > 1 else logits
            occ = (pooled[0, 0] > self.settings.occ_threshold).cpu().numpy()
        return np.argwhere(occ).astype(np.int64)

    def _sample_sparse(self, name: str, layout: SparseLayout, tokens: Tensor, views: np.ndarray, w2c, K,
                       gen, images: Tensor, extra: list[Tensor] | None = None) -> list[Tensor]:
        stage = self.stages[name]
        r = layout.resolution
        points = (torch.from_numpy(layout.global_coords).float() + 0.5) / r - 0.5
        cond_3d = self._cond_3d(stage, points, tokens, w2c, K, images)
        sampler = self._sampler(name.split("_")[0])

        def model_fn(x, t, c2, c3, coords, ex):
            return stage.model(x, t, c2, c3, coords=coords, concat_cond=ex)

        def draw(_: int) -> list[Tensor]:
            noise = torch.randn((len(layout.global_coords), stage.model.out_channels), generator=gen)
            return sample_sparse_joint(sampler, model_fn, layout, noise, tokens[0, views].cpu(), cond_3d,
                                       self.settings.chunks_per_group, self.device, self.settings.boundary_width,
                                       extra)

        with torch.no_grad():
            # per-chunk latents [n_i, C] (float32), each averaged over the draws; one draw held at a time
            return mean_of_draws(draw, sampler.draws)

    # ------------------------------------------------------------------ decode
    def _decode_blocks(self, shape_latent: SparseTensor, tex_latent: SparseTensor) -> tuple[Tensor, Tensor, Tensor]:
        """Decode shape and texture in spatial blocks with a halo; keep the fine voxels whose latent parent
        lies in the block. Returns fine ``coords [M, 3]``, shape output ``[M, 7]`` and PBR ``[M, 6]``."""
        shape_vae, tex_vae = self.stages["shape_vae"], self.stages["tex_vae"]
        factor = 2 ** shape_vae.decoder.num_upsamples
        coords = shape_latent.coords[:, 1:]
        block, halo = self.settings.decode_block, self.settings.decode_halo
        keys = torch.div(coords, block, rounding_mode="floor")
        out_c, out_s, out_t = [], [], []
        for key in torch.unique(keys, dim=0):
            lo, hi = key * block, (key + 1) * block
            sel = torch.all((coords >= lo - halo) & (coords < hi + halo), dim=1)
            sub = SparseTensor(shape_latent.coords[sel], shape_latent.feats[sel])
            tsub = SparseTensor(tex_latent.coords[sel], tex_latent.feats[sel])
            recon, subs = shape_vae.decode(sub)
            pbr = tex_vae.decode(tsub, subs)
            pbr_feats = feats_at(pbr, recon)
            fine = recon.coords[:, 1:]
            own = torch.all((torch.div(fine, factor, rounding_mode="floor") >= lo)
                            & (torch.div(fine, factor, rounding_mode="floor") < hi), dim=1)
            out_c.append(fine[own].cpu())
            out_s.append(recon.feats[own].float().cpu())
            out_t.append(pbr_feats[own].float().cpu())
        return torch.cat(out_c), torch.cat(out_s), torch.cat(out_t)

    # ------------------------------------------------------------------ entry
    def __call__(self, images: Tensor, w2c_world: np.ndarray, K: np.ndarray, tiling: SceneTiling,
                 points: np.ndarray | None = None) -> Reconstruction:
        """``images [N, 3, S, S]`` in [0, 1] (premultiplied), ``w2c_world [N, 4, 4]``, ``K [N, 3, 3]``; ``points
        [M, 3]`` (world, cleaned) are read only by an ss_flow trained with ``point_depth``."""
        s = self.settings
        gen = torch.Generator().manual_seed(s.seed)
        rng = np.random.default_rng(s.seed)
        frame = grid_chunk(tiling)
        w2c_np = w2c_in_chunk_frame(np.asarray(w2c_world, np.float64), frame.chunk_from_world)
        views = cond_views_per_chunk(w2c_np, np.asarray(K), tiling.grid_offsets, s.cond_view_min_coverage, rng)
        w2c = torch.as_tensor(w2c_np, dtype=torch.float32, device=self.device)
        Kt = torch.as_tensor(np.asarray(K), dtype=torch.float32, device=self.device)

        scene_points = None if points is None else points_in_frame(points, frame)
        coarse = self._sample_structure(tiling, images, w2c, Kt, views, gen, scene_points)
        if len(coarse) == 0:
            raise RuntimeError("the sparse-structure stage produced no occupied voxel: nothing to reconstruct")
        shape_stage, tex_stage = self.stages["shape_flow"], self.stages["tex_flow"]
        r = int(shape_stage.model.resolution)
        layout = SparseLayout.from_global(coarse, tiling.grid_offsets * r // ATOMIC_DIVISIONS, r)
        with self._phase("shape_sampling"):
            tokens = self._tokens(shape_stage, images, w2c, Kt)
            shape_chunks = self._sample_sparse("shape_flow", layout, tokens, views, w2c, Kt, gen, images)
            shape_norm = merge_sparse(layout, shape_chunks)
            shape_latent = shape_stage.denormalise(shape_norm, 1)
        with self._phase("tex_sampling"):
            tokens = self._tokens(tex_stage, images, w2c, Kt)
            concat = (shape_latent - tex_stage.shape_mean) / tex_stage.shape_std
            extra = [concat[torch.as_tensor(m, device=concat.device)] for m in layout.members]
            tex_chunks = self._sample_sparse("tex_flow", layout, tokens, views, w2c, Kt, gen, images, extra)
            tex_latent = tex_stage.denormalise(merge_sparse(layout, tex_chunks), 1)
        self.last_chunks = {"layout": layout, "shape": shape_chunks, "tex": tex_chunks, "frame": frame}
        with self._phase("decode"), torch.no_grad():
            gcoords = torch.cat([torch.zeros(len(coarse), 1, dtype=torch.int32),
                                 torch.as_tensor(coarse, dtype=torch.int32)], 1).to(self.device)
            fine, shape_out, pbr = self._decode_blocks(SparseTensor(gcoords, shape_latent.to(self.device)),
                                                       SparseTensor(gcoords, tex_latent.to(self.device)))
        with self._phase("mesh"):
            factor = 2 ** self.stages["shape_vae"].decoder.num_upsamples
            r_fine = r * factor
            big = int(fine.max()) + 2
            mesh = ovoxel_to_mesh(coords=fine.numpy(), vertex_offset=shape_out[:, :3].numpy(),
                                  intersected=(shape_out[:, 3:6] > 0).numpy(), resolution=big,
                                  split_weight=shape_out[:, 6].numpy())
            # (v + 0.5)·big = fine-voxel units; one chunk edge is r_fine of them.
            grid_pts = (mesh.vertices + 0.5) * big / r_fine - 0.5
            world_from_grid = frame.world_from_chunk
            vertices = grid_pts @ world_from_grid[:3, :3].T + world_from_grid[:3, 3]
            vertex_attrs = pbr.numpy()[mesh.voxel_index].clip(0, 1)
        fine_voxel = tiling.edge_m / r_fine
        return Reconstruction(
            vertices=vertices, faces=mesh.faces, vertex_attrs=vertex_attrs, fine_coords=fine.numpy(),
            attrs=pbr.numpy().clip(0, 1), fine_origin=np.asarray(tiling.grid_origin, np.float64),
            fine_voxel_m=fine_voxel,
            stats={"chunks": len(tiling.chunks), "coarse_voxels": int(len(coarse)), "fine_voxels": int(len(fine)),
                   "faces": int(len(mesh.faces)), "cond_views": views.tolist()},
        )
