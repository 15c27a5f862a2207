"""WebDataset shards of training chunks: the schema, encoding, decoding and an atomic shard writer.

One sample per chunk, keyed ``<scene_id>_<chunk:03d>``. Every payload is bytes written by this module (PNG,
npy, safetensors, JSON) and read back by :func:`decode_chunk_sample`; nothing is pickled. The schema is
documented in ``docs/data_format.md`` and versioned by ``SCHEMA_VERSION``.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

SCHEMA_VERSION = 1
VIEW_KEY = "view_{:02d}.png"
REQUIRED_KEYS = ("meta.json", "cameras.safetensors", "occupancy.npy", "ovoxel.safetensors")


# zlib level 1 instead of PIL's 6: on the room renders 3.3 times faster to write (2.3 against 7.8 ms a 256² view on
# the 2-core CPU), 20 % larger, read as fast. Writing PNGs was a sixth of prepare.py's time per room.
PNG_COMPRESS_LEVEL = 1


def encode_png(image: np.ndarray) -> bytes:
    """``[H, W]`` or ``[H, W, C]`` uint8/uint16 -> PNG bytes (deterministic: no timestamps or text chunks). Every
    PNG the data toolkit writes (shard views, room renders) goes through here."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=False, compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im).copy()


def _decode_pngs(pngs: list[bytes]) -> np.ndarray:
    """Stack of decoded PNGs, written into one preallocated array (no list + ``np.stack``). Falls back to
    ``np.stack`` (and its error) if the images differ in shape."""
    out: np.ndarray | None = None
    for j, data in enumerate(pngs):
        arr = decode_png(data)
        if out is None:
            out = np.empty((len(pngs), *arr.shape), arr.dtype)
        elif arr.shape != out.shape[1:] or arr.dtype != out.dtype:
            return np.stack([decode_png(d) for d in pngs])
        out[j] = arr
    return out


def encode_npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def decode_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def encode_safetensors(arrays: dict[str, np.ndarray]) -> bytes:
    from safetensors.numpy import save

    return save({k: np.ascontiguousarray(v) for k, v in sorted(arrays.items())})


def decode_safetensors(data: bytes) -> dict[str, np.ndarray]:
    from safetensors.numpy import load

    return load(data)


def encode_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def pack_occupancy(occ: np.ndarray) -> np.ndarray:
    """``[R, R, R]`` bool -> packed uint8 ``[R³/8]`` (C order, ij indexing)."""
    return np.packbits(occ.astype(bool).reshape(-1))


def unpack_occupancy(packed: np.ndarray, resolution: int) -> np.ndarray:
    return np.unpackbits(packed, count=resolution**3).astype(bool).reshape((resolution,) * 3)


class LazyViews:
    """The PNG views of one sample, decoded only when indexed: a sample stores up to ``max_views`` (48) views
    and training uses 1-16, so decoding all of them cost the loader workers 3-6x the needed CPU (profiled).
    ``views[idx]`` (int, slice or index array) returns ``uint8`` RGBA arrays like the eager ndarray."""

    def __init__(self, pngs: list[bytes]) -> None:
        self._pngs = pngs

    def __len__(self) -> int:
        return len(self._pngs)

    def __getitem__(self, idx: Any) -> np.ndarray:
        if isinstance(idx, (int, np.integer)):
            return decode_png(self._pngs[int(idx)])
        picked = np.arange(len(self._pngs))[idx]
        if len(picked) == 0:
            return np.zeros((0, 1, 1, 4), np.uint8)
        return _decode_pngs([self._pngs[int(i)] for i in picked])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        full = self[:]
        return full if dtype is None else full.astype(dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self[0].shape[:3]) if len(self) else (0, 1, 1, 4)


@dataclass
class ChunkSample:
    """A decoded training chunk. Camera arrays are in the chunk frame (see docs/architecture.md)."""

    key: str
    meta: dict
    views: np.ndarray | LazyViews  # [N, S, S, 4] uint8 RGBA
    w2c: np.ndarray  # [N, 4, 4] float32, OpenCV world(chunk)->camera
    intrinsics: np.ndarray  # [N, 3, 3] float32, normalised
    coverage: np.ndarray  # [N] float32, projected-box coverage of the chunk in each view
    chunk_from_world: np.ndarray  # [4, 4] float64
    occupancy: np.ndarray  # [R, R, R] bool
    ovoxel: dict[str, np.ndarray]  # packed O-Voxel arrays (genrecon.geometry.ovoxel.OVoxel.unpack)
    latents: dict[str, np.ndarray] = field(default_factory=dict)


def encode_chunk_sample(
    key: str,
    meta: dict,
    views: np.ndarray,
    w2c: np.ndarray,
    intrinsics: np.ndarray,
    coverage: np.ndarray,
    chunk_from_world: np.ndarray,
    occupancy: np.ndarray,
    ovoxel_packed: dict[str, np.ndarray],
) -> dict[str, Any]:
    """Build the WebDataset sample dict (``__key__`` plus one bytes payload per schema entry)."""
    if "." in key:
        raise ValueError(f"sample key {key!r} must not contain '.' (WebDataset splits keys at dots)")
    n = len(views)
    if not (len(w2c) == len(intrinsics) == len(coverage) == n):
        raise ValueError(f"{key}: {n} views but {len(w2c)} extrinsics, {len(intrinsics)} intrinsics")
    meta = dict(meta, schema_version=SCHEMA_VERSION, num_views=n, occupancy_resolution=int(occupancy.shape[0]))
    sample: dict[str, Any] = {
        "__key__": key,
        "meta.json": encode_json(meta),
        "cameras.safetensors": encode_safetensors(
            {
                "w2c": w2c.astype(np.float32),
                "intrinsics": intrinsics.astype(np.float32),
                "coverage": coverage.astype(np.float32),
                "chunk_from_world": chunk_from_world.astype(np.float64),
            }
        ),
        "occupancy.npy": encode_npy(pack_occupancy(occupancy)),
        "ovoxel.safetensors": encode_safetensors(ovoxel_packed),
    }
    for i, view in enumerate(views):
        sample[VIEW_KEY.format(i)] = encode_png(view)
    return sample


DECODABLE_PARTS = ("occupancy", "ovoxel", "latents")


def decode_chunk_sample(
    sample: dict[str, Any], views: bool | str = True, parts: Collection[str] | None = None
) -> ChunkSample:
    """Inverse of :func:`encode_chunk_sample` for a raw WebDataset sample (bytes values).

    ``views=False`` skips decoding the PNG views (the VAE stages never look at them); ``views`` is then
    ``[0, 1, 1, 4]`` while the cameras are still decoded. ``views="lazy"`` gives a :class:`LazyViews` that
    decodes only the views a batch selects. ``parts`` (a subset of ``DECODABLE_PARTS``; default all) names
    the other payloads to decode: a part left out is not decoded and comes back empty (occupancy
    ``[0, 0, 0]``, ``ovoxel``/``latents`` ``{}``); meta and cameras are always decoded, and the required
    members are always checked."""
    key = sample.get("__key__", "<unknown>")
    url = sample.get("__url__", "<unknown shard>")
    for name in REQUIRED_KEYS:
        if name not in sample:
            raise KeyError(f"{url}: sample {key} has no '{name}' (schema v{SCHEMA_VERSION})")
    meta = json.loads(sample["meta.json"])
    cams = decode_safetensors(sample["cameras.safetensors"])
    n = int(meta["num_views"])
    if views == "lazy":
        views = LazyViews([sample[VIEW_KEY.format(i)] for i in range(n)])
    elif n and views:
        views = _decode_pngs([sample[VIEW_KEY.format(i)] for i in range(n)])
    else:
        views = np.zeros((0, 1, 1, 4), np.uint8)
    parts = DECODABLE_PARTS if parts is None else tuple(parts)
    unknown = set(parts) - set(DECODABLE_PARTS)
    if unknown:
        raise ValueError(f"unknown sample parts {sorted(unknown)}; known: {DECODABLE_PARTS}")
    latents = (
        decode_safetensors(sample["latents.safetensors"])
        if "latents" in parts and "latents.safetensors" in sample
        else {}
    )
    occupancy = (
        unpack_occupancy(decode_npy(sample["occupancy.npy"]), int(meta["occupancy_resolution"]))
        if "occupancy" in parts
        else np.zeros((0, 0, 0), bool)
    )
    ovoxel = decode_safetensors(sample["ovoxel.safetensors"]) if "ovoxel" in parts else {}
    return ChunkSample(
        key=key,
        meta=meta,
        views=views,
        w2c=cams["w2c"],
        intrinsics=cams["intrinsics"],
        coverage=cams["coverage"],
        chunk_from_world=cams["chunk_from_world"],
        occupancy=occupancy,
        ovoxel=ovoxel,
        latents=latents,
    )


class AtomicShardWriter:
    """``webdataset.ShardWriter`` that writes each shard as ``<name>.partial`` and renames it when complete.

    A crash leaves at most ``*.partial`` files, which no reader's shard pattern matches, so no half-written
    shard ever looks finished. Tar metadata is fixed (mtime 0) so the same samples give byte-identical shards.
    """

    def __init__(self, directory: str | Path, prefix: str, samples_per_shard: int) -> None:
        import webdataset as wds

        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.finished: list[Path] = []
        self._count = 0
        self._writer = wds.ShardWriter(
            str(self.directory / f"{prefix}-%06d.tar.partial"),
            maxcount=samples_per_shard,
            post=self._publish,
            verbose=0,
            mtime=0.0,
        )

    def _publish(self, partial: str) -> None:
        final = Path(partial[: -len(".partial")])
        os.replace(partial, final)
        self.finished.append(final)

    def write(self, sample: dict[str, Any]) -> None:
        self._writer.write(sample)
        self._count += 1

    @property
    def count(self) -> int:
        return self._count

    def close(self) -> list[Path]:
        """Finish the last shard; an empty writer leaves no shard behind."""
        if self._count == 0:
            self._abort()
            return []
        self._writer.close()
        return self.finished

    def _abort(self) -> None:
        self._writer.post = None
        self._writer.close()
        for partial in self.directory.glob(f"{self.prefix}-*.tar.partial"):
            partial.unlink()

    def __enter__(self) -> AtomicShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._abort()


def shard_urls(directory: str | Path, split: str) -> list[str]:
    """Finished shards of one split, sorted (``*.partial`` files never match)."""
    urls = sorted(str(p) for p in Path(directory).glob(f"{split}-*.tar"))
    if not urls:
        raise FileNotFoundError(f"no '{split}-*.tar' shards in {directory} (run prepare.py first)")
    return urls
