"""Completion records (``<output>/pipeline/<stage>.json``) and what they decide: skip, rerun (saying why), resume
from a checkpoint, or start afresh."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

from rlhf.data.pairs import data_fingerprint as fingerprint
from rlhf.outputs.folders import COMPLETE_MARKER, is_complete, write_whole
from rlhf.outputs.trainer_checkpoints import latest_trainer_checkpoint
from rlhf.pipeline.stages import Stage
from rlhf.stages.weight_average import has_members, members_dir

# ---------------------------------------------------------------------------------------------------- records

REDACTED = "<redacted>"
RESUME = ["--resume_from_checkpoint", "latest"]


def _is_secret(flag: str) -> bool:
    """``--hf_access_token``, ``--hub_token``, ``--use_auth_token``...: a name part ``token`` (not ``tokenizer``)."""
    return "token" in re.split(r"[-_]", flag.lstrip("-").lower())


def redact_argv(argv: list[str]) -> list[str]:
    """The command line with the value of every token flag replaced: what is printed and recorded."""
    shown = []
    hide = False
    for index, token in enumerate(argv):
        if hide:
            shown.append(REDACTED)
            hide = False
            continue
        name, eq, _ = token.partition("=")
        if token.startswith("--") and _is_secret(name):
            if eq:
                token = f"{name}={REDACTED}"
            else:  # the next item is its value, unless the flag is used as a switch
                hide = index + 1 < len(argv) and not argv[index + 1].startswith("--")
        shown.append(token)
    return shown


def record_path(output: str | Path, name: str) -> Path:
    return Path(output) / "pipeline" / f"{name}.json"


def read_json_object(path: Path) -> dict[str, Any] | None:
    """A record or a COMPLETE.json marker; None when absent or unreadable (then it counts for nothing)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write_record(path: Path, record: dict[str, Any]) -> None:
    write_whole(path, json.dumps(record, indent=2) + "\n")


def current_inputs(stage: Stage, stages: list[Stage], output: str | Path) -> dict[str, Any]:
    """What the stage's result depends on besides its command: its local data and every earlier stage's run."""
    earlier = stages[: [s.name for s in stages].index(stage.name)]
    files = {path: fingerprint(path) for path in stage.reads}
    runs = {}
    for other in earlier:
        record = read_json_object(record_path(output, other.name))
        runs[other.name] = record.get("id") if record and record.get("status") == "complete" else None
    return {"files": {k: v for k, v in files.items() if v is not None}, "stages": runs}


def _command(record: dict[str, Any]) -> list[str]:
    """The recorded command without the interpreter and without the resume flags a resumed run added."""
    argv = list(record.get("argv") or [])
    if record.get("resumed_from") and argv[-2:] == RESUME:
        argv = argv[:-2]
    return argv[1:]  # the interpreter is not compared: moving a virtualenv does not change what a stage does


def _flags(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """Leading tokens (the script) and, per flag, the value it ends up with (the last one, as argparse does)."""
    head: list[str] = []
    flags: dict[str, list[str]] = {}
    current: list[str] | None = None
    for token in argv:
        if token.startswith("--"):
            name, eq, value = token.partition("=")
            current = flags[name] = [value] if eq else []
        elif current is None:
            head.append(token)
        else:
            current.append(token)
    return head, {name: shlex.join(values) for name, values in flags.items()}


def describe_changes(old: list[str], new: list[str]) -> str:
    """``--max_steps 2 -> 3, --save_freq 2 (added), --bf16 (removed)``: how two command lines differ."""
    (old_head, old_flags), (new_head, new_flags) = _flags(old), _flags(new)
    parts = []
    if old_head != new_head:
        parts.append(f"{shlex.join(old_head)} -> {shlex.join(new_head)}")
    for name in dict.fromkeys([*old_flags, *new_flags]):
        if name not in new_flags:
            parts.append(f"{name} {old_flags[name]} (removed)".replace("  ", " "))
        elif name not in old_flags:
            parts.append(f"{name} {new_flags[name]} (added)".replace("  ", " "))
        elif old_flags[name] != new_flags[name]:
            parts.append(f"{name} {old_flags[name] or '(switch)'} -> {new_flags[name] or '(switch)'}")
    return ", ".join(parts) or "the same flags in another order"


def differences(record: dict[str, Any] | None, argv: list[str], inputs: dict[str, Any]) -> list[str]:
    """Why the recorded run does not stand for the run the stage would do now (empty: it does)."""
    if record is None:
        return ["no record of the run that made its output"]
    changes = []
    old_argv = _command(record)
    if old_argv != argv[1:]:
        changes.append("its command changed: " + describe_changes(old_argv, argv[1:]))
    old_inputs = record.get("inputs") or {}
    old_files, new_files = old_inputs.get("files") or {}, inputs["files"]
    changes += [f"{path} changed" for path in new_files if path in old_files and old_files[path] != new_files[path]]
    old_runs, new_runs = old_inputs.get("stages") or {}, inputs["stages"]
    for name in dict.fromkeys([*old_runs, *new_runs]):
        if name not in old_runs:
            changes.append(f"{name} is new")
        elif name not in new_runs:
            changes.append(f"{name} was dropped")
        elif new_runs[name] is None:
            changes.append(f"{name} has no completion record")
        elif old_runs[name] != new_runs[name]:
            changes.append(f"{name} was rerun")
    return changes


# ---------------------------------------------------------------------------------------------------- decisions


def is_done(stage: Stage) -> bool:
    """Every stage marks a finished output with COMPLETE.json (rlhf.outputs.folders)."""
    return stage.output is not None and is_complete(stage.output)


def latest_checkpoint(stage: Stage) -> Path | None:
    """The newest complete checkpoint in the stage's folder: what ``--resume_from_checkpoint latest`` would take."""
    if stage.checkpoints == "trainer":  # an averaged reward model (--average_seeds) resumes from its members
        found = latest_trainer_checkpoint(stage.clean)
        return found or (members_dir(stage.clean) if has_members(stage.clean) else None)
    if stage.checkpoints == "ppo" and stage.clean.is_dir():
        found = []
        for path in stage.clean.iterdir():
            # final/ holds the model only; an older final/ with resume state (state.json) still counts
            resumable = path.name.startswith("step_") or (path.name == "final" and (path / "state.json").is_file())
            if resumable and is_complete(path):
                marker = read_json_object(path / COMPLETE_MARKER) or {}
                found.append((marker.get("step", -1), path.name))
        return stage.clean / max(found)[1] if found else None
    return None


SKIP, FRESH, RESUME_RUN = "skip", "fresh", "resume"


def plan(stage: Stage, record: dict[str, Any] | None, inputs: dict[str, Any], forced: str | None) -> tuple[str, str]:
    """(skip | fresh | resume, the line saying why). A checkpoint is resumed only by the command that made it."""
    if stage.output is None:
        return FRESH, ""  # the report is redrawn every time
    if forced:
        return FRESH, f"rerun: {forced}"
    changes = differences(record, redact_argv(stage.argv), inputs)
    done = is_done(stage)
    if not changes and record.get("status") == "complete" and done:
        return SKIP, f"skipped: {stage.output} is complete (--force or --from_stage {stage.name} to redo)"
    checkpoint = latest_checkpoint(stage)
    if checkpoint is not None and not changes:
        return RESUME_RUN, f"resuming from {checkpoint}: the last run of this command did not complete"
    if record is None and not stage.clean.exists():
        return FRESH, ""  # a first run: nothing to explain
    incomplete = f"{stage.output} is incomplete" + (" and holds no complete checkpoint" if stage.checkpoints else "")
    why = "; ".join(changes) or incomplete
    if checkpoint is not None and not done:
        why += f"; not resuming from {checkpoint}: it predates that change"
    return FRESH, f"rerun: {why}"
