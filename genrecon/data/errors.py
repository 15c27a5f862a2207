"""Errors for bad input data, and the raise-or-skip policy the dataset importers share."""

from __future__ import annotations

from collections import Counter
from os import PathLike
from typing import Literal

OnError = Literal["raise", "skip"]


class DataFormatError(ValueError):
    """Input that does not match its format. ``path`` is the offending file, ``field`` the key path inside it
    (e.g. ``"scene.room[2].children[5].rot"``) or a file name inside a folder."""

    def __init__(self, path: str | PathLike, field: str, message: str) -> None:
        self.path = str(path)
        self.field = field
        self.reason = message
        super().__init__(f"{self.path}: field {field!r}: {message}")


class SkipLog:
    """Applies an ``on_error`` policy: ``"raise"`` re-raises every :class:`DataFormatError`; ``"skip"``
    counts it under a kind (e.g. ``"missing_model"``) and keeps its message, so a caller can report what was
    dropped."""

    def __init__(self, on_error: OnError = "raise") -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.on_error = on_error
        self.counts: Counter[str] = Counter()
        self.messages: list[str] = []

    def handle(self, error: DataFormatError, kind: str) -> None:
        """Raise ``error`` or record it as one skipped item of ``kind``."""
        if self.on_error == "raise":
            raise error
        self.counts[kind] += 1
        self.messages.append(str(error))

    def note(self, kind: str, message: str) -> None:
        """Count an item the format allows to be dropped (e.g. furniture flagged invalid), in either mode."""
        self.counts[kind] += 1
        self.messages.append(message)

    @property
    def total(self) -> int:
        return sum(self.counts.values())
