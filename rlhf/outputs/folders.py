"""Output folders that are either complete or absent: written under a temporary name, renamed when done."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rlhf.outputs.trainer_checkpoints import drop_incomplete_checkpoints

logger = logging.getLogger("rlhf.outputs.folders")


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


def start_output(output_dir: str | Path, overwrite: bool, resuming: bool) -> Path:
    """Prepare the output folder: refuse to clobber a finished run unless asked.

    A finished result already there (``--overwrite_output_dir``, or resuming a run that had finished) stays whole
    and marked complete until the new one replaces it (``staged_output``): a run that dies on the way leaves the
    previous result usable.
    """
    from rlhf.errors import UsageError

    out = Path(output_dir)
    if is_complete(out) and not (overwrite or resuming):
        raise UsageError(
            f"--output_dir {out}: holds a finished run; pass --overwrite_output_dir to replace it or choose "
            "another folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(out)
    if resuming:
        drop_incomplete_checkpoints(out)
    return out


STAGING = ".tmp-result"  # the same name on every process: all of them may take part in writing (sharded saves)


def prepare_staging(output_dir: str | Path) -> Path:
    """An empty folder inside ``output_dir`` for a result being written (main process only)."""
    staging = Path(output_dir) / STAGING
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def publish_staged(output_dir: str | Path, info: dict[str, Any]) -> None:
    """Swap a fully written result from the staging folder into ``output_dir``; ``COMPLETE.json`` comes last.

    The folder is un-marked first, so from here until the marker is written it does not claim to be complete.
    Files of a previous result that the new one lacks (listed in the old marker) are removed; checkpoints and
    tracker folders, which no marker lists, are left alone.
    """
    out = Path(output_dir)
    staging = out / STAGING
    _fsync_tree(staging)
    names = sorted(p.name for p in staging.iterdir())
    previous = _marked_files(out)
    (out / COMPLETE_MARKER).unlink(missing_ok=True)
    for name in sorted(set(previous) - set(names)):
        _remove(out / name)
    for name in names:
        target = out / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(staging / name, target)
    staging.rmdir()
    mark_complete(out, {**info, "files": names})


def discard_staging(output_dir: str | Path) -> None:
    shutil.rmtree(Path(output_dir) / STAGING, ignore_errors=True)


def _marked_files(folder: Path) -> list[str]:
    try:
        files = json.loads((folder / COMPLETE_MARKER).read_text(encoding="utf-8")).get("files", [])
    except (OSError, ValueError, AttributeError):
        return []
    # Names only, never a path: a damaged marker must not make us delete anything outside the folder.
    return [f for f in files if isinstance(f, str) and f and "/" not in f and "\\" not in f and f not in (".", "..")]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def mark_complete(output_dir: str | Path, info: dict[str, Any]) -> None:
    """Written last: a folder with this file holds a finished, loadable result."""
    out = Path(output_dir)
    marker = {"finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **info}
    tmp = out / f".{COMPLETE_MARKER}.tmp"
    tmp.write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out / COMPLETE_MARKER)
