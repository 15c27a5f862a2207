"""LightningDataModule over the chunk shards written by ``prepare.py`` (raw chunks or latent chunks).

Training reads a WebDataset stream: shards are split by rank and by worker, resampled with replacement, and
each epoch has a fixed number of batches per rank, so uneven shard counts can never leave one rank waiting in
a collective (the classic WebDataset DDP hang). Every random choice (shard order, shuffle buffer, views per
sample) is seeded from ``(seed, epoch, rank, worker role)``: a run is reproducible, and a resumed run skips
exactly the batches it had already consumed (the loader is stateful, see :class:`EpochLoader`).

Validation cycles through the validation samples in order, split by sample index across ranks and workers,
for a fixed number of batches per rank: identical every time, and never uneven across ranks.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from genrecon.data.batching import ViewSampling, collate, sample_parts, select_fields
from genrecon.data.shards import decode_chunk_sample, shard_urls


def _dist_info() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _iter_tar_samples(url: str) -> Iterator[dict[str, Any]]:
    """Raw samples (``__key__``, ``__url__`` and bytes payloads) of one shard, in file order."""
    import webdataset as wds

    for sample in wds.tarfile_to_samples()([{"url": url}]):
        yield sample


@dataclass
class StreamPosition:
    """Where one rank's stream starts: the epoch and how many of its batches were already consumed."""

    epoch: int = 0
    skip_batches: int = 0


class ChunkStream(IterableDataset):
    """Batches of chunk samples for one rank; see the module docstring for the sampling rules."""

    def __init__(
        self,
        urls: Sequence[str],
        fields: Sequence[str],
        batch_size: int,
        batches_per_epoch: int,
        seed: int,
        views: ViewSampling,
        train: bool,
        shuffle_buffer: int = 64,
    ) -> None:
        super().__init__()
        self.urls = list(urls)
        self.fields = list(fields)
        self.batch_size = batch_size
        self.batches_per_epoch = batches_per_epoch
        self.seed = seed
        self.views = views
        self.train = train
        self.shuffle_buffer = shuffle_buffer
        self.position = StreamPosition()

    # ------------------------------------------------------------------ slots
    def _slot(self) -> tuple[int, int, int, int]:
        """``(rank, world, role, workers)``. Worker ``w`` plays role ``(w + skip) % W`` so that after skipping
        ``skip`` batches the DataLoader's round-robin over workers still yields batches in stream order."""
        rank, world = _dist_info()
        info = get_worker_info()
        w, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        role = (w + self.position.skip_batches) % n_workers
        return rank, world, role, n_workers

    def _role_batches(self, role: int, n_workers: int) -> list[int]:
        """Indices (within the epoch) of the batches this role produces, after the skip."""
        return [b for b in range(role, self.batches_per_epoch, n_workers) if b >= self.position.skip_batches]

    # ------------------------------------------------------------------ sample streams
    def _train_samples(self, rng: np.random.Generator, rank: int, world: int, role: int, n_workers: int):
        slots = world * n_workers
        slot = rank * n_workers + role
        own = slot_shards(self.urls, slot, slots)
        buffer: list[dict[str, Any]] = []
        while True:  # resampled shards: an infinite stream, cut into epochs by the batch count
            for sample in _iter_tar_samples(own[int(rng.integers(len(own)))]):
                if len(buffer) < self.shuffle_buffer:
                    buffer.append(sample)
                    continue
                j = int(rng.integers(len(buffer)))
                buffer[j], sample = sample, buffer[j]
                yield sample

    def _val_samples(self, rank: int, world: int, role: int, n_workers: int):
        """Cycle through all validation samples; this slot takes every ``slots``-th one of the cycle."""
        slots = world * n_workers
        slot = rank * n_workers + role
        counter = 0
        while True:
            seen = 0
            for url in self.urls:
                for sample in _iter_tar_samples(url):
                    if counter % slots == slot:
                        yield sample
                    counter += 1
                    seen += 1
            if seen == 0:
                raise RuntimeError(f"validation shards {self.urls} hold no samples")

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank, world, role, n_workers = self._slot()
        epoch = self.position.epoch if self.train else 0
        wanted = self._role_batches(role, n_workers)
        rng = np.random.default_rng([self.seed, epoch, rank, role, 0 if self.train else 1])
        stream = (
            self._train_samples(rng, rank, world, role, n_workers)
            if self.train
            else self._val_samples(rank, world, role, n_workers)
        )
        # Skipped batches are read but not decoded: the view choice of every sample has its own seed below.
        n_role_batches = len(range(role, self.batches_per_epoch, n_workers))
        skipped = n_role_batches - len(wanted)
        for _ in range(skipped * self.batch_size):
            next(stream)
        views = "lazy" if "views" in self.fields else False
        parts = sample_parts(self.fields, self.views)  # decode only what is read (e.g. no O-Voxel for flows)
        for local in range(skipped, n_role_batches):
            items = []
            for i in range(self.batch_size):
                raw = next(stream)
                sample_rng = np.random.default_rng([self.seed, epoch, rank, role, local, i])
                sample = decode_chunk_sample(raw, views=views, parts=parts)
                items.append(select_fields(sample, self.fields, self.views, sample_rng))
            yield collate(items)


def count_shard_samples(urls: Sequence[str]) -> int:
    """Samples in ``urls``: their distinct keys (a member's name up to its first dot, as WebDataset groups
    them), read from the tar headers alone."""
    keys = set()
    for url in urls:
        with tarfile.open(url) as tar:
            keys.update((url, Path(name).name.split(".", 1)[0]) for name in tar.getnames())
    return len(keys)


def slot_shards(urls: Sequence[Any], slot: int, slots: int) -> list[Any]:
    """The training shards that slot ``slot`` of ``slots`` (rank × loader worker) resamples from: every
    ``slots``-th one, or all of them when there are fewer shards than slots (each slot's generator still
    draws its own order)."""
    return list(urls[slot::slots]) if len(urls) >= slots else list(urls)


def private_generator(seed: int, epoch: int = 0) -> torch.Generator:
    """The generator a DataLoader draws its base seed from when an iterator is created. Without one it draws
    from the global torch RNG, once per epoch and per validation run, so where a run was resumed would shift
    every later random draw of the model (posterior samples, flow noise) and break exact resumption. The
    streams seed themselves from ``(seed, epoch, rank, role)``; the base seed only reaches the workers."""
    generator = torch.Generator()
    generator.manual_seed(int(np.random.SeedSequence([seed, epoch, 1]).generate_state(1)[0]))
    return generator


class EpochLoader:
    """A DataLoader over a :class:`ChunkStream` that knows its epoch and is stateful for Lightning.

    Lightning saves ``state_dict()`` in the checkpoint and calls ``load_state_dict`` before resuming; the
    batches already consumed in the interrupted epoch come from the trainer's own progress counter, which
    (unlike a count of batches handed out) does not include the batch prefetched by Lightning.
    """

    def __init__(self, stream: ChunkStream, num_workers: int, progress: Callable[[], tuple[int, int]]) -> None:
        self.stream = stream
        self.num_workers = num_workers
        self.progress = progress
        self._resume: StreamPosition | None = None

    def __len__(self) -> int:
        return self.stream.batches_per_epoch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch, _ = self.progress()
        self.stream.position = self._resume or StreamPosition(epoch=epoch)
        self._resume = None
        loader = DataLoader(
            self.stream,
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=False,
            generator=private_generator(self.stream.seed, self.stream.position.epoch),
            # Pinned batches copy to the GPU asynchronously; from pageable memory each copy blocks the host
            # (session 14's H100 profile: 13-26 ms a step, in a step paced by the host).
            pin_memory=torch.cuda.is_available(),
        )
        return iter(loader)

    def state_dict(self) -> dict[str, int]:
        epoch, done = self.progress()
        return {"epoch": epoch, "batches_done": done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        # A checkpoint written after the last batch of epoch e (done == len) resumes with epoch e + 1 from its
        # start: that is what the trainer runs next, and what an uninterrupted run would have read.
        done, n = int(state["batches_done"]), max(1, len(self))
        self._resume = StreamPosition(epoch=int(state["epoch"]) + done // n, skip_batches=done % n)


class ChunkDataModule(L.LightningDataModule):
    """Chunk shards -> batches for one stage (see ``genrecon/data/batching.py`` for the batch keys).

    Args:
        shards: folder with ``train-*.tar``, ``val-*.tar`` and ``manifest.json`` next to it or inside it.
        fields: what each batch carries: any of occupancy, ovoxel, views, ss_latent, shape_latent, tex_latent.
        batch_size: samples per batch on each rank.
        batches_per_epoch: training batches per rank and epoch; default = one pass over the training samples.
        val_batches: validation batches per rank (fixed, so ranks never wait on each other).
        max_views, min_view_coverage: per-sample view sampling (published: 1-16 views, 40 % coverage).
        eval_views: if set, validation uses exactly this many views per sample (e.g. 8).
        min_voxel_share: also require the chunk's voxels on this share of a view's pixels (a deviation; 0 =
            published; see :class:`genrecon.data.batching.ViewSampling`). Training and validation alike.
        train_shards: train on the first this many training shards only (a data-scaling ablation: shards hold
            the chunks in item order, so the first shards are the first rooms); ``None`` = all.
    """

    def __init__(
        self,
        shards: str,
        fields: Sequence[str],
        batch_size: int = 8,
        num_workers: int = 0,
        seed: int = 0,
        batches_per_epoch: int | None = None,
        val_batches: int = 4,
        max_views: int = 16,
        min_view_coverage: float = 0.4,
        eval_views: int | None = None,
        shuffle_buffer: int = 64,
        min_voxel_share: float = 0.0,
        train_shards: int | None = None,
    ) -> None:
        super().__init__()
        self.shards = Path(shards)
        self.fields = list(fields)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.batches_per_epoch = batches_per_epoch
        self.val_batches = val_batches
        self.train_views = ViewSampling(max_views=max_views, min_coverage=min_view_coverage,
                                        min_voxel_share=min_voxel_share)
        self.val_views = ViewSampling(max_views=max_views, min_coverage=min_view_coverage, fixed_count=eval_views,
                                      min_voxel_share=min_voxel_share)
        self.shuffle_buffer = shuffle_buffer
        self.train_shards = train_shards

    def manifest(self) -> dict[str, Any]:
        for path in (self.shards / "manifest.json", self.shards.parent / "manifest.json"):
            if path.is_file():
                return json.loads(path.read_text())
        return {}

    def _progress(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 0
        return trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def _epoch_batches(self) -> int:
        if self.batches_per_epoch:
            return int(self.batches_per_epoch)
        _, world = _dist_info()
        if self.train_shards is None:
            n_train = int(self.manifest().get("samples", {}).get("train", 0))
        else:  # the manifest counts every shard; only the kept ones are read
            n_train = count_shard_samples(self.train_urls())
        return max(1, n_train // (self.batch_size * world))

    def train_urls(self) -> list[str]:
        """The training shards read: all, or the first ``train_shards``."""
        urls = shard_urls(self.shards, "train")
        if self.train_shards is None:
            return urls
        if not 1 <= int(self.train_shards) <= len(urls):
            raise ValueError(f"stage.datamodule.train_shards={self.train_shards}: {self.shards} holds "
                             f"{len(urls)} training shards")
        return urls[: int(self.train_shards)]

    def train_dataloader(self) -> EpochLoader:
        stream = ChunkStream(
            self.train_urls(), self.fields, self.batch_size, self._epoch_batches(),
            self.seed, self.train_views, train=True, shuffle_buffer=self.shuffle_buffer,
        )
        return EpochLoader(stream, self.num_workers, self._progress)

    def val_dataloader(self) -> DataLoader:
        stream = ChunkStream(
            shard_urls(self.shards, "val"), self.fields, self.batch_size, self.val_batches,
            self.seed, self.val_views, train=False,
        )
        # A worker per validation batch at most: the others would start (and read the shards' index) for nothing.
        return DataLoader(stream, batch_size=None, num_workers=min(self.num_workers, self.val_batches),
                          generator=private_generator(self.seed), pin_memory=torch.cuda.is_available())
