"""One bf16 forward + backward of the sparse flow transformer on a single packed sample (issue 6's memory check).

    python benchmarks/trellis2_step.py --device cuda --tokens 8192 --out trellis2_step.json       # H100 / H200
    python benchmarks/trellis2_step.py --device cpu --preset tiny --baseline-preset tiny --tokens 64   # CPU check

The model is the texture flow's ``SparseFlowTransformer`` at the named preset (``trellis2``: width 1536, 30 blocks,
about 1.3 B parameters) with GenRecon's projection pathway (the fine-tune layout: injection layers into every
block), at the 32³ latent grid, input 64 channels (noise ‖ shape latent), output 32. One sample of ``--tokens``
distinct active cells, cross-attention to ``--cond-tokens`` image tokens (1,374 = DINOv2 at 518 px: 5 global
tokens and a 37 × 37 patch grid), the 3-D condition given directly as a random ``[K, C_cond]`` feature (the image
encoder and the view fusion are not part of this step, so the aggregator's weights get no gradient). Weights stay
float32 as in training, the step runs under bf16 autocast (CUDA), and the gradients of every other weight are kept,
as an optimiser step needs them; the optimiser's own state is not allocated (AdamW adds 8 bytes per trainable
weight on top).

Printed JSON (also written to ``--out``): per preset the parameter count, ``median_s`` over ``--steps`` timed
steps after ``--warmup``, ``peak_mem_gb`` (``torch.cuda.max_memory_allocated``, reset before the preset is built;
None on the CPU) and ``weights_and_grads_gb``; ``ratio`` compares the preset with the baseline preset measured in
the same run (default ``small``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from genrecon.models.aggregator import ViewAggregator  # noqa: E402
from genrecon.models.flow_transformer import SparseFlowTransformer  # noqa: E402
from genrecon.models.presets import flow_preset  # noqa: E402
from genrecon.models.projection import Projection  # noqa: E402

RESOLUTION = 32


def random_coords(tokens: int, resolution: int, generator: torch.Generator) -> torch.Tensor:
    """[K, 4] int32 distinct cells (batch 0, x, y, z) of a ``resolution``³ grid, in raster order."""
    if tokens > resolution**3:
        raise ValueError(f"--tokens {tokens} exceeds the {resolution}³ grid's {resolution ** 3} cells")
    flat = torch.randperm(resolution**3, generator=generator)[:tokens].sort().values
    xyz = torch.stack([flat // resolution**2, (flat // resolution) % resolution, flat % resolution], dim=1)
    return torch.cat([torch.zeros(tokens, 1, dtype=torch.long), xyz], dim=1).int()


def build(preset: str, in_channels: int, out_channels: int, device: torch.device,
          use_checkpoint: bool, attn_backend: str) -> SparseFlowTransformer:
    """The texture flow's transformer at ``preset`` with the projection pathway, float32 on ``device``."""
    arch = flow_preset(preset)
    with torch.device(device):
        model = SparseFlowTransformer(
            **arch, resolution=RESOLUTION, in_channels=in_channels, out_channels=out_channels,
            use_checkpoint=use_checkpoint, attn_backend=attn_backend, attn_device=device,
            projection=Projection(5, 37), aggregator=ViewAggregator(arch["cond_channels"]))
    return model.train()


def measure(preset: str, args: argparse.Namespace, device: torch.device) -> dict:
    """Median time and peak memory of one forward + backward at ``preset``."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(args.seed)
    model = build(preset, args.in_channels, args.out_channels, device, args.checkpoint, args.attn_backend)
    params = sum(p.numel() for p in model.parameters())
    gen = torch.Generator().manual_seed(args.seed)
    coords = random_coords(args.tokens, RESOLUTION, gen).to(device)
    cond_channels = model.cond_channels
    x = torch.randn(args.tokens, args.in_channels - args.out_channels, generator=gen).to(device)
    concat = torch.randn(args.tokens, args.out_channels, generator=gen).to(device)
    cond_2d = torch.randn(1, args.cond_tokens, cond_channels, generator=gen).to(device)
    cond_3d = torch.randn(args.tokens, cond_channels, generator=gen).to(device)
    target = torch.randn(args.tokens, args.out_channels, generator=gen).to(device)
    t = torch.full((1,), 0.5, device=device)
    offsets = [0, args.tokens]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda or args.cpu_bf16)
    times = []
    for step in range(args.warmup + args.steps):
        model.zero_grad(set_to_none=False)
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with autocast:
            out = model(x, t, cond_2d, cond_3d, coords=coords, concat_cond=concat, offsets=offsets)
            loss = torch.nn.functional.mse_loss(out.float(), target)
        loss.backward()
        if cuda:
            torch.cuda.synchronize(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    result = {
        "preset": preset,
        "params": params,
        "tokens": args.tokens,
        "loss": float(loss.detach()),
        "loss_finite": bool(torch.isfinite(loss)),
        "params_with_grad": len(grads),
        "median_s": statistics.median(times),
        "min_s": min(times),
        "weights_and_grads_gb": round(8 * params / 1e9, 3),
        "peak_mem_gb": round(torch.cuda.max_memory_allocated(device) / 1e9, 3) if cuda else None,
    }
    del model, grads, out, loss
    return result


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="trellis2")
    p.add_argument("--baseline-preset", default="small", help="measured in the same run, first")
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--cond-tokens", type=int, default=1374)
    p.add_argument("--in-channels", type=int, default=64)
    p.add_argument("--out-channels", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--checkpoint", action="store_true", help="activation checkpointing of the blocks")
    p.add_argument("--attn-backend", default="auto")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--cpu-bf16", action="store_true", help="bf16 autocast on the CPU too")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.in_channels <= args.out_channels:
        p.error("--in-channels is noise plus the concatenated condition: it must exceed --out-channels")
    device = torch.device(args.device)
    baseline = measure(args.baseline_preset, args, device)
    main_result = measure(args.preset, args, device)
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "autocast": "bf16" if device.type == "cuda" or args.cpu_bf16 else "off (float32)",
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "baseline": baseline,
        "result": main_result,
        "ratio": {"median_s": main_result["median_s"] / baseline["median_s"],
                  "params": main_result["params"] / baseline["params"]},
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return report


if __name__ == "__main__":
    main()
