"""Run the stages as separate processes, each feeding the next: SFT -> reward model(s) -> PPO -> evaluation -> report.

    python -m rlhf.pipeline --config configs/demo.json [--force] [--from_stage rm] [--output out/demo]

Each stage's exact command line is printed before it runs, so any stage can be rerun by hand. After a stage exits 0
the pipeline writes its completion record, ``<output>/pipeline/<stage>.json``: that command line (tokens redacted),
the data files it read (sha256) and the records of the stages before it. A stage is skipped only when its output is
complete and its record matches what it would run now; otherwise it reruns, saying why, and so does every stage
after it (their records name the one that changed). An incomplete stage holding a complete checkpoint made by the
same command is resumed from it (``--resume_from_checkpoint latest``); otherwise it starts afresh. ``--force``
reruns everything, ``--from_stage S`` reruns S and the stages after it. The stage scripts are the source of truth:
this runner owns no training logic.

The config is JSON: ``model`` (base model: hub name or folder), ``dataset``, ``output`` (folder), ``heldout``
(evaluation data, default ``dataset``) and per stage a list of extra flags (``sft``, ``rm``, ``rm2``, ``ppo``,
``eval``). ``rm2`` (optional) trains a second reward model that PPO never sees, used by the evaluation as an
independent judge; the pipeline gives it rows disjoint from ``rm``'s and its own seed (README, Whole pipeline).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhf.errors import EXIT_PREEMPTED, UsageError
from rlhf.outputs.folders import COMPLETE_MARKER, is_complete
from rlhf.outputs.trainer_checkpoints import latest_trainer_checkpoint

ROOT = Path(__file__).resolve().parents[2]  # the repository: the stage scripts live there


STAGES = ("sft", "rm", "rm2", "ppo", "eval", "report")

# ---------------------------------------------------------------------------------------------------- the config

FLAG_KEYS = ("sft", "rm", "rm2", "ppo", "eval")  # each: a list of extra flags for that stage's script
PATH_KEYS = ("model", "dataset", "heldout", "output")
REQUIRED_KEYS = ("model", "dataset", "output")
CONFIG_KEYS = (*PATH_KEYS, *FLAG_KEYS)
RM_SEED = 42  # what the pipeline passes to rm when the config names no seed and rm2 needs a different one


class ConfigError(Exception):
    """A config problem: reported as ``error: --config FILE: <message>`` (exit 2) before any stage runs."""


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):  # before int: bool is an int in Python, not in JSON
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "list", dict: "object"}.get(type(value), type(value).__name__)


def load_config(path: str, overrides: dict[str, str | None]) -> dict[str, Any]:
    """Read and check the config; ``overrides`` (``--model`` ...) replace the file's values before the checks."""
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # ValueError: bad JSON or bad UTF-8
        raise ConfigError(str(err)) from None
    if not isinstance(config, dict):
        raise ConfigError(f"expected a JSON object, got a {_json_type(config)}")
    config.update({key: value for key, value in overrides.items() if value is not None})
    unknown = [key for key in config if key not in CONFIG_KEYS]
    if unknown:
        raise ConfigError(f"unknown key {', '.join(map(repr, unknown))} (known keys: {', '.join(CONFIG_KEYS)})")
    for key in REQUIRED_KEYS:
        if key not in config:
            raise ConfigError(f"missing key '{key}'")
    for key in PATH_KEYS:
        value = config.get(key, "")
        if key in config and not (isinstance(value, str) and value.strip()):
            raise ConfigError(f"'{key}' must be a non-empty string, got {_json_type(value)} {json.dumps(value)}")
    for key in FLAG_KEYS:
        if key in config:
            _check_flag_list(key, config[key])
    return config


def _check_flag_list(key: str, flags: Any) -> None:
    """A stage's flags are a list of strings, one per command-line token, exactly as a shell would pass them."""
    if isinstance(flags, str):  # iterating it would pass one flag per character
        raise ConfigError(f"'{key}' must be a list of strings, one item per flag or value, got the string {flags!r}")
    if not isinstance(flags, list):
        raise ConfigError(f"'{key}' must be a list of strings, got {_json_type(flags)} {json.dumps(flags)}")
    for index, item in enumerate(flags):
        if not isinstance(item, str):
            kind, text = _json_type(item), json.dumps(item)
            # Refused, not converted: str() of a JSON number or boolean is not always what the script expects.
            hint = f' (write it as the string "{text}")' if kind in ("number", "boolean") else ""
            raise ConfigError(f"'{key}'[{index}] must be a string, got {kind} {text}{hint}")
        if item.startswith("--") and re.search(r"\s", item.split("=", 1)[0]):
            raise ConfigError(f"'{key}'[{index}] {item!r}: a flag and its value are two items of the list")


def last_value(flags: list[str], name: str) -> str | None:
    """The value the script will see for ``name`` (``--name V`` or ``--name=V``; the last one wins, as in argparse)."""
    value = None
    for index, token in enumerate(flags):
        if token == name and index + 1 < len(flags):
            value = flags[index + 1]
        elif token.startswith(name + "="):
            value = token.split("=", 1)[1]
    return value


def _seed(key: str, flags: list[str]) -> int | None:
    value = last_value(flags, "--seed")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"'{key}': --seed expects an integer, got {value!r}") from None


# ---------------------------------------------------------------------------------------------------- the stages


@dataclass
class Stage:
    name: str
    argv: list[str]  # interpreter, script, the pipeline's own flags, then the config's
    extra: list[str]  # the config's part of argv
    output: Path | None  # the folder whose marker says the stage is done; None: never skipped (the report)
    clean: Path  # what a fresh run removes first; for trainer and PPO stages, where their checkpoints live
    checkpoints: str | None = None  # "trainer" (checkpoint-N) or "ppo" (step_N), or None: nothing to resume
    reads: list[str] = field(default_factory=list)  # data the result depends on (fingerprinted when local)

    @property
    def own_flags(self) -> list[str]:
        """Flags the pipeline sets itself: a config that sets them too would break the chaining."""
        own = [token for token in self.argv[: len(self.argv) - len(self.extra)] if token.startswith("--")]
        return own + (["--resume_from_checkpoint"] if self.checkpoints else [])


def judge_files(output: str | Path) -> dict[str, Path]:
    """Where the pipeline writes the rows each reward model reads when there are two (``split_for_judges``)."""
    return {name: Path(output) / "data" / f"{name}.jsonl" for name in ("rm", "rm2")}


def judge_seeds(config: dict) -> dict[str, list[str]]:
    """The ``--seed`` flags the pipeline adds so that rm2's seed differs from rm's (none without ``rm2``)."""
    if "rm2" not in config:
        return {"rm": [], "rm2": []}
    rm_seed, rm2_seed = _seed("rm", config.get("rm", [])), _seed("rm2", config["rm2"])
    seeds: dict[str, list[str]] = {"rm": [], "rm2": []}
    if rm_seed is None:
        rm_seed = RM_SEED
        seeds["rm"] = ["--seed", str(rm_seed)]  # explicit, so rm2's can differ without knowing the scripts' default
    if rm2_seed is None:
        seeds["rm2"] = ["--seed", str(rm_seed + 1)]
    elif rm2_seed == rm_seed:
        raise ConfigError(f"'rm2': --seed {rm2_seed} is rm's seed too; rm2 needs its own (or leave it out)")
    return seeds


def build_stages(config: dict, python: str = sys.executable) -> list[Stage]:
    """The command line of every stage, from a checked config; ``rm2`` runs only when the config has an ``rm2`` entry.

    With ``rm2``, the two reward models read disjoint parts of the dataset (``split_for_judges``) with different
    seeds: the judge's independence is made here, whatever the config's flags. Raises ConfigError for config flags
    that would override what the pipeline sets.
    """
    out = Path(config["output"])
    model, data = config["model"], config["dataset"]
    heldout = config.get("heldout", data)
    sft, rm, rm2, ppo, ev = out / "sft", out / "rm", out / "rm2", out / "ppo", out / "eval"
    judges = "rm2" in config
    rm_data = {name: str(path) for name, path in judge_files(out).items()} if judges else {"rm": data}
    seeds = judge_seeds(config)

    def stage(name: str, script: list[str], own: list[str], **kwargs: Any) -> Stage:
        extra = list(config.get(name, []))
        return Stage(name, [python, *script, *own, *extra], extra, **kwargs)

    def trainer_stage(name: str, script: str, base: str, dataset: str, own: Sequence[str] = ()) -> Stage:
        """SFT and reward-model stages share one command shape; a finished folder is replaced on a rerun."""
        folder = out / name
        flags = ["--model_name_or_path", base, "--dataset_name", dataset, "--output_dir", str(folder)]
        return stage(
            name,
            [str(ROOT / script)],
            [*flags, "--overwrite_output_dir", *own],
            output=folder,
            clean=folder,
            checkpoints="trainer",
            reads=[dataset],
        )

    stages = [
        trainer_stage("sft", "sft.py", model, data),
        trainer_stage("rm", "reward_modeling.py", str(sft), rm_data["rm"], seeds["rm"]),
    ]
    judge = []
    if judges:
        stages.append(trainer_stage("rm2", "reward_modeling.py", str(sft), rm_data["rm2"], seeds["rm2"]))
        judge = ["--second_reward_model", str(rm2)]
    ppo_flags = ["--model_name", str(sft), "--reward_model_name", str(rm), "--dataset_name", data]
    eval_flags = ["--sft_model", str(sft), "--ppo_model", str(ppo / "final"), "--reward_model", str(rm), *judge]
    stages += [
        stage(
            "ppo",
            [str(ROOT / "rl_training.py")],
            [*ppo_flags, "--output_dir", str(ppo)],
            output=ppo / "final",
            clean=ppo,
            checkpoints="ppo",
            reads=[data],
        ),
        stage(
            "eval",
            [str(ROOT / "evaluate.py")],
            [*eval_flags, "--dataset_name", heldout, "--output_dir", str(ev)],
            output=ev,
            clean=ev,
            reads=[heldout],
        ),
        # The report is redrawn every time (no output to call complete); it takes no flags from the config.
        Stage("report", [python, "-m", "rlhf.pipeline.report", "--run", str(out)], [], None, out / "report.md"),
    ]
    for each in stages:
        _check_own_flags(each, judges)
    return stages


def _check_own_flags(stage: Stage, judges: bool) -> None:
    own = stage.own_flags
    for token in stage.extra:
        name = token.split("=", 1)[0]
        # A prefix counts: the scripts' argparse takes an unambiguous abbreviation (--dataset_n) for the full name.
        hit = next((flag for flag in own if token.startswith("--") and len(name) > 3 and flag.startswith(name)), None)
        if hit is None:
            continue
        if hit == "--dataset_name" and judges and stage.name in ("rm", "rm2"):
            why = "each reward model reads its own part of 'dataset', disjoint from the other's"
        elif hit == "--dataset_name":
            why = "use the top-level 'dataset' (or 'heldout' for eval)"
        elif hit == "--output_dir":
            why = "use the top-level 'output'"
        elif hit == "--resume_from_checkpoint":
            why = "the pipeline resumes an interrupted stage by itself"
        else:
            why = "the pipeline chains each stage to the outputs before it"
        shown = name if name == hit else f"{name} ({hit})"
        raise ConfigError(f"'{stage.name}': {shown} is set by the pipeline: {why}")


# ---------------------------------------------------------------------------------------------------- rm2's rows


def split_for_judges(dataset: str, files: dict[str, Path], rm_flags: list[str]) -> None:
    """Write the rows ``rm`` and ``rm2`` read: each row of the dataset goes to one of them, never to both.

    A row's side is decided by its content alone (a bit of its sha256), not by its position: identical rows land on
    the same side, and a row stays on its side when the dataset is edited, so a model rerun on the new files never
    meets a row the other one trained on. Both files keep the dataset's order and every column (the column flags of
    the reward-model stages still apply); each model holds out the first ``--validation_split_percentage`` % of
    its own file, rows the other model never sees either. A file is rewritten only when its content changes.
    """
    from rlhf.data.pairs import load_hub, load_local, looks_local

    name = str(Path(dataset).expanduser()) if dataset.startswith("~") else dataset
    if looks_local(name):
        source = load_local(Path(name))
    else:  # a hub dataset: the split and token rm would use
        split, token = last_value(rm_flags, "--dataset_split") or "train", last_value(rm_flags, "--hf_access_token")
        source = load_hub(name, split, token)
    sides: dict[str, list[str]] = {"rm": [], "rm2": []}
    for row in source.rows:
        key = json.dumps(row, sort_keys=True, default=str)
        side = "rm" if hashlib.sha256(key.encode()).digest()[0] % 2 == 0 else "rm2"
        # ASCII escapes: a lone surrogate in the data stays valid JSON, for the stage to count and drop.
        sides[side].append(json.dumps(row, default=str) + "\n")
    for side, lines in sides.items():
        path, text = files[side], "".join(lines)
        if not (path.is_file() and path.read_text(encoding="utf-8") == text):
            write_whole(path, text)


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


def fingerprint(path: str) -> str | None:
    """sha256 of a local data file, or of the data files in a folder; ``missing``; None for a hub dataset name."""
    from rlhf.data.pairs import SUPPORTED_SUFFIXES, looks_local

    if not looks_local(path):
        return None
    target = Path(path).expanduser()
    if target.is_dir():
        files = sorted(p for p in target.iterdir() if p.suffix.lower() in SUPPORTED_SUFFIXES and p.is_file())
    elif target.is_file():
        files = [target]
    else:
        return "missing"
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode() + b"\0")
        with file.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def record_path(output: str | Path, name: str) -> Path:
    return Path(output) / "pipeline" / f"{name}.json"


def read_json_object(path: Path) -> dict[str, Any] | None:
    """A record or a COMPLETE.json marker; None when absent or unreadable (then it counts for nothing)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write_whole(path: Path, text: str) -> None:
    """Written under a temporary name and renamed: a record or a data file is whole or absent, never cut short."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


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
    """Trainer stages mark their folder with COMPLETE.json; evaluation writes evaluation.json last."""
    if stage.output is None:
        return False
    return (stage.output / COMPLETE_MARKER).is_file() or (stage.output / "evaluation.json").is_file()


def latest_checkpoint(stage: Stage) -> Path | None:
    """The newest complete checkpoint in the stage's folder: what ``--resume_from_checkpoint latest`` would take."""
    if stage.checkpoints == "trainer":
        return latest_trainer_checkpoint(stage.clean)
    if stage.checkpoints == "ppo" and stage.clean.is_dir():
        found = []
        for path in stage.clean.iterdir():
            if (path.name.startswith("step_") or path.name == "final") and is_complete(path):
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


# ---------------------------------------------------------------------------------------------------- running


class SigtermRelay:
    """A SIGTERM to the pipeline goes on to the running stage, which checkpoints and exits 143 by itself; the
    pipeline then stops, and the next run resumes that stage. Without it the stage would run on, orphaned."""

    def __init__(self) -> None:
        self.received = False
        self.child: subprocess.Popen | None = None
        self._previous: Any = None

    def __enter__(self) -> SigtermRelay:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self.received = True
        if self.child is not None:
            self.child.send_signal(signal.SIGTERM)  # does nothing once the child has exited


def run_stage(
    argv: list[str], log: Path, tail_lines: int = 25, append: bool = False, relay: SigtermRelay | None = None
) -> tuple[int, list[str]]:
    """Run one stage, streaming its output to the console and to ``log`` (appended to when resuming).

    Returns the exit code and the last lines of the log (for the failure report).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    tail: deque[str] = deque(maxlen=tail_lines)
    partial = ""
    with log.open("ab" if append else "wb") as handle:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT)
        if relay is not None:
            relay.child = proc
        assert proc.stdout is not None
        while chunk := os.read(proc.stdout.fileno(), 65536):
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
            handle.write(chunk)
            text = partial + chunk.decode("utf-8", "replace").replace("\r", "\n")
            *lines, partial = text.split("\n")
            tail.extend(line for line in lines if line.strip())
        code = proc.wait()
        if relay is not None:
            relay.child = None
    if partial.strip():
        tail.append(partial)
    return code, list(tail)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def execute(stage: Stage, configured: list[Stage], out: Path, forced: str | None, relay: SigtermRelay) -> int:
    """Skip, resume or (re)run one stage, saying which and why; its record before and after. Returns 0 to go on,
    else the pipeline's exit code."""
    record_file = record_path(out, stage.name)
    inputs = current_inputs(stage, configured, out)
    action, note = plan(stage, read_json_object(record_file), inputs, forced)
    argv = stage.argv + (RESUME if action == RESUME_RUN else [])
    shown = redact_argv(argv)
    print("$ " + shlex.join(shown), flush=True)
    if note:
        print("   " + note, flush=True)
    if action == SKIP:
        return 0
    if action == FRESH and stage.clean.is_dir():
        shutil.rmtree(stage.clean)
    checkpoint = latest_checkpoint(stage) if action == RESUME_RUN else None
    log = out / "logs" / f"{stage.name}.log"
    record = {
        "stage": stage.name,
        "status": "running",
        "argv": shown,
        "resumed_from": str(checkpoint) if checkpoint else None,
        "inputs": inputs,
        "log": str(log),
        "started_at": _now(),
    }
    write_record(record_file, record)  # names the command that makes any checkpoint from here on
    t0 = time.time()
    code, tail = run_stage(argv, log, append=action == RESUME_RUN, relay=relay)
    if code != 0 and (relay.received or code == EXIT_PREEMPTED):
        kept = latest_checkpoint(stage)
        then = f"{kept} is kept; rerun the same command to resume from it" if kept else "rerun to start it again"
        print(f"\nPIPELINE INTERRUPTED at stage '{stage.name}' (exit code {code}): {then}", file=sys.stderr)
        return EXIT_PREEMPTED
    if code != 0:
        print(f"\nPIPELINE FAILED at stage '{stage.name}' (exit code {code})", file=sys.stderr)
        print("command: " + shlex.join(shown), file=sys.stderr)
        print(f"log: {log}; last lines:", file=sys.stderr)
        for line in tail:
            print("  | " + line, file=sys.stderr)
        return code if code > 0 else 1
    seconds = time.time() - t0
    # Written only now, after exit 0: a stage with this record finished, with exactly this command.
    done = {**record, "status": "complete", "id": uuid.uuid4().hex, "finished_at": _now(), "seconds": seconds}
    write_record(record_file, done)
    print(f"   {stage.name} done in {seconds:.0f} s", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlhf.pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="JSON config (see configs/demo.json)")
    parser.add_argument("--model", help="override the config's base model")
    parser.add_argument("--dataset", help="override the config's dataset")
    parser.add_argument("--output", help="override the config's output folder")
    parser.add_argument("--force", action="store_true", help="rerun every stage even if its output is complete")
    parser.add_argument("--from_stage", choices=STAGES, help="rerun this stage and every stage after it")
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated stages to consider")
    args = parser.parse_args(argv)

    try:
        config = load_config(args.config, {key: getattr(args, key) for key in ("model", "dataset", "output")})
        configured = build_stages(config)
    except ConfigError as err:
        print(f"error: --config {args.config}: {err}", file=sys.stderr)
        return 2
    wanted = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in STAGES]
    if unknown:
        print(
            f"error: --stages: unknown stage(s) {', '.join(unknown)} (choose from {', '.join(STAGES)})", file=sys.stderr
        )
        return 2

    out = Path(config["output"])
    stages = [s for s in configured if s.name in wanted]
    names = [s.name for s in stages]
    rerun_from = names.index(args.from_stage) if args.from_stage in names else len(stages)
    split_done = "rm2" not in config  # with two reward models, their rows are written before the first of them
    started = time.time()
    with SigtermRelay() as relay:
        for index, stage in enumerate(stages):
            if relay.received:
                print(f"\nPIPELINE INTERRUPTED (SIGTERM) before stage '{stage.name}'", file=sys.stderr)
                return EXIT_PREEMPTED
            banner = f"== stage {index + 1}/{len(stages)}: {stage.name} "
            print("\n" + banner + "=" * max(0, 78 - len(banner)), flush=True)
            if stage.name in ("rm", "rm2") and not split_done:
                try:
                    split_for_judges(config["dataset"], judge_files(out), config.get("rm", []))
                except UsageError as err:
                    print(f"\nPIPELINE FAILED at stage '{stage.name}': splitting the dataset: {err}", file=sys.stderr)
                    return 2
                split_done = True
            forced = "--force" if args.force else (f"--from_stage {args.from_stage}" if index >= rerun_from else None)
            code = execute(stage, configured, out, forced, relay)
            if code != 0:
                return code
    print(f"\npipeline finished in {time.time() - started:.0f} s; outputs in {config['output']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
