"""A benchmark script's JSON output: its result printed and saved, or JSON-lines progress printed as it goes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class JsonLinesLog:
    """Lines (dicts) printed as JSON the moment they are added, so a long run shows its curve as it goes;
    :meth:`close` writes them all to ``path`` (if given) and returns them."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else None
        self.lines: list[dict[str, Any]] = []

    def add(self, line: dict[str, Any]) -> None:
        self.lines.append(line)
        print(json.dumps(line), flush=True)

    def close(self) -> list[dict[str, Any]]:
        if self.path is not None:
            self.path.write_text("".join(json.dumps(x) + "\n" for x in self.lines))
        return self.lines


def emit_json(result: dict[str, Any], out: str | Path | None = None) -> None:
    """Print a script's ``result`` as indented JSON and, with ``out``, write the same text there."""
    text = json.dumps(result, indent=1)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
