"""Results that are complete or absent, for every stage: SFT and reward-model folders, PPO checkpoints and
``final/``, evaluations.

A result is written into ``<folder>/.tmp-result`` and then swapped into ``<folder>`` with ``COMPLETE.json``
written last (``published``; ``prepare_staging`` / ``publish_staged`` when several processes write). A folder
without ``COMPLETE.json`` is never taken for a result, whatever else it holds; a crash or a full disk while
writing leaves the previous result whole and marked complete, or nothing marked at all. Anything else in the folder
(the Trainer's checkpoints, tracker logs) is left alone.
"""

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
STAGING = ".tmp-result"  # the same name on every process: all of them may take part in writing (sharded saves)


@contextmanager
def published(folder: str | Path, info: dict[str, Any] | None = None) -> Iterator[Path]:
    """Yield an empty staging folder; when the block ends without an error, publish what it holds in ``folder``
    (marked complete, ``info`` in the marker); on an error discard it and leave ``folder`` as it was."""
    staging = prepare_staging(folder)
    try:
        yield staging
        publish_staged(folder, info or {})
    except BaseException:
        discard_staging(folder)
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
    """Remove leftovers of interrupted writes in ``parent`` and in the result folders directly inside it."""
    parent = Path(parent)
    if parent.is_dir():
        for path in [*parent.glob(".tmp-*"), *parent.glob(f"*/{STAGING}")]:
            shutil.rmtree(path, ignore_errors=True)


def start_output(output_dir: str | Path, overwrite: bool, resuming: bool) -> Path:
    """Prepare the output folder: refuse to clobber a finished run unless asked.

    A finished result already there (``--overwrite_output_dir``, or resuming a run that had finished) stays whole
    and marked complete until the new one replaces it (``publish_staged``): a run that dies on the way leaves the
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
    """Remove a result that will not be published; a folder left empty by that (a first checkpoint) goes too."""
    out = Path(output_dir)
    shutil.rmtree(out / STAGING, ignore_errors=True)
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()


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


def write_whole(path: Path, text: str) -> None:
    """A small file (a record, a data file) written under a temporary name and renamed: whole or absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
