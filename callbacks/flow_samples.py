"""Sample pictures for the flow stages: generations of a few validation chunks rendered next to the truth.

At the end of a validation run (rank zero only) the stage samples the first validation batch with its own
sampler (the inference code), the result is decoded with the given VAE checkpoints and rendered with the CPU
rasteriser from each sample's first input view, next to the same render of the ground truth:

* ``ss_flow``: occupancy (voxel boxes) decoded by the SS-VAE from the sampled vs the true latent;
* ``shape_flow``: dual-contoured mesh decoded by the shape VAE from the sampled vs the true latent;
* ``tex_flow``: the true shape, coloured by the texture VAE from the sampled vs the true texture latent.

Rows: input view | generated | ground truth. The PNG goes to ``<run dir>/samples/`` and to every logger that
takes images (wandb, TensorBoard).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only
from PIL import Image

from genrecon.geometry.mesh import PBRMaterial, PBRMesh
from genrecon.geometry.primitives import grid_cell_surface
from genrecon.modules.sparse.tensor import SparseTensor, feats_at
from genrecon.render.embree import EmbreeRasterizer
from genrecon.render.shading import render_views

REQUIRED_VAES = {"ss": ("ss_vae",), "shape": ("shape_vae",), "tex": ("shape_vae", "tex_vae")}


def occupancy_mesh(occ: np.ndarray) -> PBRMesh:
    """Boxes of the occupied cells of ``occ [R, R, R]`` in the chunk frame."""
    r = occ.shape[0]
    breaks = tuple(np.linspace(-0.5, 0.5, r + 1) for _ in range(3))
    mesh, _ = grid_cell_surface(breaks, occ.astype(np.int64), [PBRMaterial("occupied", (0.75, 0.72, 0.68))])
    return mesh


def sparse_mesh(recon: SparseTensor, resolution: int, colours: np.ndarray | None = None) -> PBRMesh:
    """Dual-contoured mesh of a shape-decoder output ``[M, 7]`` (one sample), optionally vertex-coloured."""
    from genrecon.geometry.ovoxel import ovoxel_to_mesh

    f = recon.feats.float().cpu().numpy()
    out = ovoxel_to_mesh(coords=recon.coords[:, 1:].cpu().numpy(), vertex_offset=f[:, :3],
                         intersected=f[:, 3:6] > 0, resolution=resolution, split_weight=f[:, 6])
    vc = colours[out.voxel_index] if colours is not None and len(out.faces) else None
    return PBRMesh(out.vertices, out.faces, np.zeros(len(out.faces), np.int32),
                   [PBRMaterial("shape", (0.8, 0.8, 0.8) if vc is None else (1.0, 1.0, 1.0))], vertex_color=vc)


def render(mesh: PBRMesh, w2c: np.ndarray, K: np.ndarray, size: int) -> np.ndarray:
    if mesh.num_faces == 0:
        return np.zeros((size, size, 3), np.uint8)
    return render_views(mesh, EmbreeRasterizer(), w2c[None], K[None], size, size).rgba[0, ..., :3]


class FlowSampleImages(L.Callback):
    """See the module docstring. ``*_vae_ckpt``: decoders for the pictures (SS-VAE for ``ss_flow``, shape VAE
    for ``shape_flow``, shape + texture VAEs for ``tex_flow``); without them no picture is made."""

    def __init__(self, max_samples: int = 4, image_size: int = 192, every_n_validations: int = 1,
                 ss_vae_ckpt: str | None = None, shape_vae_ckpt: str | None = None,
                 tex_vae_ckpt: str | None = None) -> None:
        self.max_samples = max_samples
        self.image_size = image_size
        self.every = max(1, every_n_validations)
        self.ckpts = {"ss_vae": ss_vae_ckpt, "shape_vae": shape_vae_ckpt, "tex_vae": tex_vae_ckpt}
        self._vaes: dict[str, Any] = {}
        self._batch: dict[str, Any] | None = None
        self._count = 0

    def _vae(self, name: str, device: torch.device):
        if name not in self._vaes and self.ckpts[name]:
            from genrecon.stages.loading import load_stage

            self._vaes[name] = load_stage(self.ckpts[name], expected_stage=name, device=device)
        return self._vaes.get(name)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == 0 and trainer.is_global_zero:
            self._batch = batch

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._count += 1
        if self._batch is None or (self._count - 1) % self.every or trainer.sanity_checking:
            return
        if not all(self.ckpts[name] for name in REQUIRED_VAES[pl_module.latent]):
            return
        rows = self.picture_rows(pl_module, self._batch)
        if not rows:
            return
        sheet = np.concatenate([np.concatenate(r, axis=0) for r in rows], axis=1)
        folder = Path(trainer.default_root_dir) / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{pl_module.latent}_step{trainer.global_step:07d}.png"
        Image.fromarray(sheet).save(folder / name)
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(key=f"samples/{pl_module.latent}", images=[sheet], step=trainer.global_step)
            elif hasattr(getattr(logger, "experiment", None), "add_image"):
                logger.experiment.add_image(f"samples/{pl_module.latent}", sheet, trainer.global_step,
                                            dataformats="HWC")

    @torch.no_grad()
    def picture_rows(self, stage: Any, batch: dict[str, Any]) -> list[list[np.ndarray]]:
        """Per sample: [input view, generated, ground truth] images ``[S, S, 3]`` uint8."""
        device, s = stage.device, self.image_size
        n = min(self.max_samples, len(batch["keys"]))
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        sampled = stage.sample(batch, seed=0)
        w2c, K = batch["w2c"][:, 0].double().cpu().numpy(), batch["intrinsics"][:, 0].double().cpu().numpy()
        view = (torch.nn.functional.interpolate(batch["views"][:, 0], size=(s, s), mode="bilinear")
                .permute(0, 2, 3, 1).cpu().numpy() * 255).astype(np.uint8)
        meshes = self._meshes(stage, batch, sampled, n)
        if meshes is None:
            return []
        return [[view[i], render(gen, w2c[i], K[i], s), render(gt, w2c[i], K[i], s)]
                for i, (gen, gt) in enumerate(meshes)]

    def _meshes(self, stage, batch, sampled, n) -> list[tuple[PBRMesh, PBRMesh]] | None:
        if stage.latent == "ss":
            vae = self._vae("ss_vae", stage.device)
            if vae is None:
                return None
            gen = vae.decoder(stage.denormalise(sampled, 1)) > 0
            gt = vae.decoder(batch["ss_latent"]) > 0
            return [(occupancy_mesh(gen[i, 0].cpu().numpy()), occupancy_mesh(gt[i, 0].cpu().numpy())) for i in range(n)]
        shape_vae = self._vae("shape_vae", stage.device)
        if shape_vae is None:
            return None
        coords = batch["shape_coords"]
        res = int(stage.model.resolution) * 2 ** shape_vae.decoder.num_upsamples
        true_shape = SparseTensor(coords, batch["shape_feats"])
        recon_true, subs = shape_vae.decode(true_shape)
        if stage.latent == "shape":
            recon_gen, _ = shape_vae.decode(SparseTensor(coords, stage.denormalise(sampled, 1)))
            return [(sparse_mesh(_sample(recon_gen, i), res), sparse_mesh(_sample(recon_true, i), res)) for i in range(n)]
        tex_vae = self._vae("tex_vae", stage.device)
        if tex_vae is None:
            return None
        pairs = []
        for tex in (stage.denormalise(sampled, 1), batch["tex_feats"]):
            pbr = feats_at(tex_vae.decode(SparseTensor(coords, tex), subs), recon_true)
            pairs.append(pbr[:, :3])
        out = []
        for i in range(n):
            sel = recon_true.coords[:, 0] == i
            out.append(tuple(sparse_mesh(_sample(recon_true, i), res, colours=p[sel].cpu().numpy()) for p in pairs))
        return out


def _sample(x: SparseTensor, i: int) -> SparseTensor:
    sel = x.coords[:, 0] == i
    return SparseTensor(x.coords[sel], x.feats[sel])
