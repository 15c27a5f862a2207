"""Per-phase wall time and peak memory, for summaries such as infer.py's ``summary.json``."""

from __future__ import annotations

import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from genrecon.utils.logging import RankedLogger

log = RankedLogger(__name__)


class PhaseTimer:
    """``with timer.phase("name"):`` records seconds, the process's peak RSS and, on CUDA, the peak allocated
    GPU memory within the phase."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.phases: dict[str, dict[str, Any]] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        log.info(f"phase {name} ...")
        start = time.perf_counter()
        yield
        if cuda:
            torch.cuda.synchronize(self.device)
        entry = {
            "seconds": round(time.perf_counter() - start, 3),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
        if cuda:
            entry["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
        self.phases[name] = entry
        log.info(f"phase {name}: {entry}")

    def summary(self) -> dict[str, Any]:
        total = sum(p["seconds"] for p in self.phases.values())
        return {"phases": self.phases, "total_seconds": round(total, 3)}
