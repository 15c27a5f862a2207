"""JSON-lines progress of a benchmark script: each line printed when it is added, all of them saved at the end."""

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
