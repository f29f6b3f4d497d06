"""Append-only JSONL logs (metrics, samples) that a resumed run continues as one clean history."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_jsonl(path: Path, row: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")


def truncate_jsonl(path: Path, last_step: int) -> None:
    """Drop rows logged after ``last_step`` (a resumed run re-logs them), keeping the file one clean history."""
    if not path.is_file():
        return
    kept = [
        line
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and json.loads(line).get("step", 0) <= last_step
    ]
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
