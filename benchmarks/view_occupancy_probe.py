"""How much occupancy can the projection pathway read from the views? A probe of the SS flow's conditioning.

    python benchmarks/view_occupancy_probe.py --shards <root>/synthetic_small/shards --steps 1000 \
        [--config '{"width": 128, "depth": 4, "lr": 1e-3, "depth_cue": {"bins": 64, "max_depth": 4.0}}'] \
        [--encoder-ckpt <view_pretrain checkpoint> [--train-encoder]]

Trains only the SS flow's view pathway (image encoder → projection → view aggregator) with the auxiliary
occupancy head of ``SparseStructureFlowStage`` (``occupancy_aux_weight``: BCE + soft Dice on each latent voxel's
occupancy block), in plain PyTorch on the CPU, on 8 views per chunk (the evaluation setting). Every
``--every`` steps it scores the head's occupancy on the held-out chunks at the occupancy resolution. The first
line is the baseline measured on the same chunks: the position prior (each voxel's occupancy frequency over the
training chunks, thresholded where the training IoU is best). A head far above it reads real occupancy from
the views; one near it has learnt only where rooms usually have floors and walls. ``depth_cue`` in the config
adds the ray-depth evidence of ``genrecon/models/depth_cue.py`` (a deviation) to the pathway; ``position`` adds a
learnt per-voxel embedding to the head's input, so the head can learn the prior too and the question becomes
whether the views add to it. ``--encoder-ckpt`` starts the encoder from a ``stage=view_pretrain`` checkpoint, and
the depth cue's head from its depth head (frozen encoder unless ``--train-encoder``). Prints JSON lines.
"""

from __future__ import annotations

import time
from functools import partial

import numpy as np
import torch

from genrecon.data.batching import collate
from genrecon.models.flow_transformer import DenseFlowTransformer
from genrecon.models.image_encoder import SmallViT
from genrecon.objectives.rectified_flow import RectifiedFlow
from genrecon.pipelines.sampler import EulerSampler
from genrecon.stages.flow import SparseStructureFlowStage
from genrecon.stages.view_pretrain import load_pretrained_view_encoder
from genrecon.utils.jsonl import JsonLinesLog
from genrecon.utils.probe_cli import load_probe_chunks, probe_arguments

DEFAULTS = {"width": 128, "depth": 4, "num_heads": 4, "patch_size": 16, "lr": 1e-3, "latent_resolution": 16,
            "depth_cue": None, "position": False}


def load(shards: str, split: str, views: int) -> list[dict]:
    return load_probe_chunks(shards, split, views, ["views", "occupancy"])


def iou(pred: np.ndarray | torch.Tensor, true: np.ndarray | torch.Tensor) -> float:
    pred, true = np.asarray(pred, bool), np.asarray(true, bool)
    return float((pred & true).sum() / max(1, (pred | true).sum()))


def position_prior(train: list[dict], val: list[dict]) -> dict:
    """Held-out IoU of the training chunks' per-voxel occupancy frequency, at the best training threshold."""
    freq = np.mean([np.asarray(t["occupancy"], np.float32) for t in train], axis=0)
    train_occ = np.stack([np.asarray(t["occupancy"]) > 0.5 for t in train])
    best = max(np.linspace(0.05, 0.95, 19), key=lambda th: iou(np.broadcast_to(freq > th, train_occ.shape), train_occ))
    val_occ = np.stack([np.asarray(v["occupancy"]) > 0.5 for v in val])
    return {"threshold": round(float(best), 2), "val_iou": round(iou(np.broadcast_to(freq > best, val_occ.shape),
                                                                       val_occ), 4)}


def build(cfg: dict, image_size: int, occupancy_resolution: int, encoder_ckpt: str | None = None,
          train_encoder: bool = False) -> SparseStructureFlowStage:
    if encoder_ckpt:
        encoder = load_pretrained_view_encoder(encoder_ckpt).set_frozen(not train_encoder)
    else:
        encoder = SmallViT(width=cfg["width"], depth=cfg["depth"], num_heads=cfg["num_heads"],
                           patch_size=cfg["patch_size"], num_registers=4)
    # The flow transformer is not trained here; a one-block stand-in carries the projection and aggregator.
    model = partial(DenseFlowTransformer, resolution=cfg["latent_resolution"], in_channels=8, out_channels=8,
                    model_channels=32, cond_channels=encoder.out_channels, num_blocks=1, num_heads=2,
                    attn_device="cpu", depth_cue=cfg["depth_cue"])
    # With a checkpoint the stage also loads its depth head into the depth cue (as the *_pre flows do).
    return SparseStructureFlowStage(
        model=model, image_encoder=encoder, objective=RectifiedFlow(), sampler=EulerSampler(steps=2),
        image_size=image_size, latent_channels=8, occupancy_aux_weight=1.0,
        occupancy_resolution=occupancy_resolution, sample_batches=0, image_encoder_ckpt=encoder_ckpt)


def head_logits(stage: SparseStructureFlowStage, batch: dict, position: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, dict]:
    """Occupancy-head logits ``[B, r³, f³]`` of a batch and the ``prepared`` pair the stage's terms take.
    ``position`` ``[r³, C]``: a learnt per-voxel embedding added to the fused feature (the flow transformer
    knows each token's position; the bare head does not)."""
    tokens = stage.view_tokens(batch)
    cond = stage.model.cond_3d_from_views(tokens, batch["w2c"], batch["intrinsics"], batch["view_mask"], 4096)
    if position is not None:
        cond = cond + position
    prepared = (tokens, {"cond_3d": cond})
    return stage.occupancy_head(cond).float(), prepared


def main(argv: list[str] | None = None) -> list[dict]:
    args, cfg = probe_arguments(__doc__, DEFAULTS, steps=1000, argv=argv)

    train, val = load(args.shards, "train", args.views), load(args.shards, "val", args.views)
    image_size, occ_res = int(train[0]["views"].shape[1]), int(np.asarray(train[0]["occupancy"]).shape[-1])
    stage = build(cfg, image_size, occ_res, args.encoder_ckpt, args.train_encoder)
    log = JsonLinesLog(args.out)
    log.add({"baseline": "position_prior", **position_prior(train, val), "train_chunks": len(train),
             "val_chunks": len(val), "config": cfg, "encoder_ckpt": args.encoder_ckpt,
             "train_encoder": bool(args.encoder_ckpt) and args.train_encoder})

    cue = [] if stage.model.depth_cue is None else list(stage.model.depth_cue.parameters())
    position = (torch.nn.Parameter(torch.zeros(cfg["latent_resolution"] ** 3, stage.image_encoder.out_channels))
                if cfg["position"] else None)
    params = [p for p in (*stage.image_encoder.parameters(), *stage.model.aggregator.parameters(),
                          *stage.occupancy_head.parameters(), *cue, *([position] if position is not None else []))
              if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=float(cfg["lr"]), weight_decay=0.0)
    val_batches = [collate(val[i : i + args.batch]) for i in range(0, len(val), args.batch)]
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    for step in range(args.steps + 1):
        batch = collate([train[i] for i in rng.choice(len(train), min(args.batch, len(train)), replace=False)])
        loss = stage.auxiliary_losses(batch, head_logits(stage, batch, position)[1])["occ_aux"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % args.every == 0:
            with torch.no_grad():
                inter = union = 0
                for vb in val_batches:
                    pred = head_logits(stage, vb, position)[0] > 0
                    true = stage.occupancy_blocks(vb["occupancy"]) > 0.5
                    inter += int((pred & true).sum())
                    union += int((pred | true).sum())
            log.add({"step": step, "loss": round(float(loss.detach()), 4), "val_iou": round(inter / max(1, union), 4),
                     "seconds": round(time.perf_counter() - t0, 1)})
    return log.close()


if __name__ == "__main__":
    main()
