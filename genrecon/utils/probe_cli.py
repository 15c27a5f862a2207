"""Command line shared by the CPU probes of the flows' view pathway (``benchmarks/view_*_probe.py``)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

import torch


def probe_arguments(doc: str | None, defaults: dict[str, Any], steps: int, argv: list[str] | None = None,
                    extra: Callable[[argparse.ArgumentParser], None] | None = None
                    ) -> tuple[argparse.Namespace, dict[str, Any]]:
    """Parse a probe's arguments; returns them and its config (``defaults`` updated by ``--config`` JSON), with
    torch's thread count and seed set from them. ``extra`` adds a probe's own arguments to the shared ones."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", required=True)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--config", default="{}", help=f"JSON overriding {defaults}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="also write the JSON lines to this file")
    parser.add_argument("--encoder-ckpt", default=None,
                        help="start the image encoder from a stage=view_pretrain checkpoint (its own architecture; "
                             "the config's encoder sizes are then ignored), frozen unless --train-encoder")
    parser.add_argument("--train-encoder", action="store_true", help="with --encoder-ckpt: fine-tune it too")
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    try:
        overrides = json.loads(args.config)
    except json.JSONDecodeError as err:
        parser.error(f"--config is not JSON: {err}")
    unknown = set(overrides) - set(defaults)
    if unknown:
        parser.error(f"--config: unknown keys {sorted(unknown)}; known: {sorted(defaults)}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    return args, {**defaults, **overrides}


def load_probe_chunks(shards: str, split: str, views: int, fields: list[str]) -> list[dict]:
    """Every chunk of a split with ``fields`` selected and exactly ``views`` views (the evaluation setting)."""
    import numpy as np
    import webdataset as wds

    from genrecon.data.batching import ViewSampling, select_fields
    from genrecon.data.shards import decode_chunk_sample, shard_urls

    sampling, rng, items = ViewSampling(max_views=views, fixed_count=views), np.random.default_rng(0), []
    for raw in wds.DataPipeline(wds.SimpleShardList(shard_urls(shards, split)), wds.tarfile_to_samples()):
        items.append(select_fields(decode_chunk_sample(raw), fields, sampling, rng))
    if not items:
        raise FileNotFoundError(f"no '{split}' chunks in {shards}")
    return items
