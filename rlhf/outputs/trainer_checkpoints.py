"""The Trainer's own checkpoints (SFT, RM): where they live, which are complete, which one to resume from.

They are written in ``<output_dir>/checkpoints/checkpoint-N``, never next to the published model, and removed once
the result is published (unless ``--keep_checkpoints``). Every function here takes the stage's ``--output_dir``.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

logger = logging.getLogger("rlhf.outputs.trainer_checkpoints")

CHECKPOINTS = "checkpoints"


def checkpoints_dir(output_dir: str | Path) -> Path:
    """Where the Trainer writes its ``checkpoint-N`` folders for a stage publishing into ``output_dir``."""
    return Path(output_dir) / CHECKPOINTS


def resolve_resume(value: str | None, output_dir: str | Path) -> str | None:
    """``--resume_from_checkpoint latest`` -> the newest complete Trainer checkpoint of ``output_dir`` (or None)."""
    if value is None or value == "":
        return None
    if value != "latest":
        from rlhf.errors import UsageError

        if not Path(value).is_dir():
            raise UsageError(f"--resume_from_checkpoint {value}: no such checkpoint folder")
        if not trainer_checkpoint_is_complete(Path(value)):
            raise UsageError(f"--resume_from_checkpoint {value}: incomplete checkpoint (no valid trainer_state.json)")
        return value
    latest = latest_trainer_checkpoint(output_dir)
    if latest is None:
        where = checkpoints_dir(output_dir)
        logger.warning("--resume_from_checkpoint latest: no complete checkpoint in %s; starting afresh", where)
        return None
    return str(latest)


def latest_trainer_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete ``checkpoint-N`` with the highest N in ``output_dir/checkpoints``, or None."""
    complete = [(step, path) for step, path in trainer_checkpoints(output_dir) if trainer_checkpoint_is_complete(path)]
    return max(complete)[1] if complete else None


def trainer_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` of every ``checkpoint-N`` folder the Trainer made for ``output_dir``, finished or not."""
    found = []
    for path in checkpoints_dir(output_dir).glob("checkpoint-*"):
        step = path.name.split("-", 1)[1]
        if step.isdigit() and path.is_dir():
            found.append((int(step), path))
    return sorted(found)


def trainer_checkpoint_is_complete(folder: Path) -> bool:
    """The Trainer writes ``trainer_state.json`` last (after weights, optimizer, scheduler and random states).

    A folder without it, or with a truncated one, was interrupted mid-save (killed, disk full) and is never
    resumed from.
    """
    try:
        state = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and "global_step" in state


def remove_checkpoints(output_dir: str | Path) -> None:
    """After the result is published: the checkpoints (optimizer state and all) are no longer needed."""
    shutil.rmtree(checkpoints_dir(output_dir), ignore_errors=True)


def drop_incomplete_checkpoints(output_dir: str | Path) -> None:
    """Remove ``checkpoint-N`` folders that an interrupted save left half-written.

    Left in place, the Trainer's ``--save_total_limit`` rotation could count them and delete a good one.
    """
    for _, path in trainer_checkpoints(output_dir):
        if not trainer_checkpoint_is_complete(path):
            logger.warning("removing %s: its save was interrupted (no complete trainer_state.json)", path)
            shutil.rmtree(path, ignore_errors=True)
