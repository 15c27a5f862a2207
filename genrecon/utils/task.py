"""The wrapper every task body runs in: failures are logged and re-raised, loggers always finalised."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from genrecon.utils.logging import RankedLogger

log = RankedLogger(__name__)
T = TypeVar("T")


class TaskContext:
    """What a task registers for clean-up: Lightning loggers are finalised with the run's outcome."""

    def __init__(self) -> None:
        self.loggers: list[Any] = []
        self.output_dir: str | None = None


def task_wrapper(fn: Callable[..., T]) -> Callable[..., T]:
    """Run ``fn(cfg, ctx)``; on exit finalise every registered logger ("success" or "failed") and close a
    wandb run that is still open, so a crashed job in a multirun cannot poison the next one."""

    @functools.wraps(fn)
    def wrapped(cfg: Any) -> T:
        ctx = TaskContext()
        status = "failed"
        try:
            result = fn(cfg, ctx)
            status = "success"
            return result
        except BaseException:
            log.exception("Task failed")
            raise
        finally:
            for logger in ctx.loggers:
                try:
                    logger.finalize(status)
                except Exception as exc:  # a broken logger must not hide the task's own error
                    log.warning(f"finalising {type(logger).__name__} failed: {exc}")
            _finish_wandb(status)
            if ctx.output_dir:
                log.info(f"Output dir: {ctx.output_dir}")

    return wrapped


def _finish_wandb(status: str) -> None:
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=0 if status == "success" else 1)
