"""Output folders that are either complete or absent: written under a temporary name, renamed when done."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

COMPLETE_MARKER = "COMPLETE.json"


@contextmanager
def atomic_folder(final: str | Path, info: dict[str, Any] | None = None) -> Iterator[Path]:
    """Yield a temporary folder; on success mark it complete and rename it to ``final`` (replacing an old one).

    A crash or a full disk while writing leaves only a ``.tmp-*`` folder, which is never taken for a result, and
    the previous ``final`` stays intact until the rename.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        marker = {"finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **(info or {})}
        (tmp / COMPLETE_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        _fsync_tree(tmp)
        if final.exists():
            old = final.parent / f".old-{final.name}-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync_tree(folder: Path) -> None:
    """Flush file contents to disk before the rename publishes them."""
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())


def is_complete(folder: str | Path) -> bool:
    return (Path(folder) / COMPLETE_MARKER).is_file()


def clean_stale_temporaries(parent: str | Path) -> None:
    """Remove leftovers of interrupted writes."""
    parent = Path(parent)
    if parent.is_dir():
        for path in parent.glob(".tmp-*"):
            shutil.rmtree(path, ignore_errors=True)


def resolve_resume(value: str | None, output_dir: str | Path) -> str | None:
    """``--resume_from_checkpoint latest`` -> the newest complete Trainer checkpoint in ``output_dir`` (or None)."""
    if value is None or value == "":
        return None
    if value != "latest":
        if not Path(value).is_dir():
            from rlhf.cli import UsageError

            raise UsageError(f"--resume_from_checkpoint {value}: no such checkpoint folder")
        return value
    candidates = []
    for path in Path(output_dir).glob("checkpoint-*"):
        step = path.name.split("-", 1)[1]
        # Trainer writes trainer_state.json last; a folder without it was interrupted mid-save.
        if step.isdigit() and (path / "trainer_state.json").is_file():
            candidates.append((int(step), path))
    return str(max(candidates)[1]) if candidates else None


def start_output(output_dir: str | Path, overwrite: bool, resuming: bool) -> Path:
    """Prepare the output folder: refuse to clobber a finished run unless asked, and un-mark it while we work."""
    from rlhf.cli import UsageError

    out = Path(output_dir)
    if is_complete(out) and not (overwrite or resuming):
        raise UsageError(
            f"--output_dir {out}: holds a finished run; pass --overwrite_output_dir to replace it or choose "
            "another folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / COMPLETE_MARKER).unlink(missing_ok=True)
    clean_stale_temporaries(out)
    return out


def mark_complete(output_dir: str | Path, info: dict[str, Any]) -> None:
    """Written last: a folder with this file holds a finished, loadable result."""
    out = Path(output_dir)
    marker = {"finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **info}
    tmp = out / f".{COMPLETE_MARKER}.tmp"
    tmp.write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out / COMPLETE_MARKER)
