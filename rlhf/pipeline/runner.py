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
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any

from rlhf.cli import child_environment
from rlhf.errors import EXIT_PREEMPTED, UsageError
from rlhf.pipeline.config import STAGES, ConfigError, load_config
from rlhf.pipeline.records import (
    FRESH,
    RESUME,
    RESUME_RUN,
    SKIP,
    current_inputs,
    latest_checkpoint,
    plan,
    read_json_object,
    record_path,
    redact_argv,
    write_record,
)
from rlhf.pipeline.stages import Stage, build_stages, judge_files, split_for_judges

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
        # The stages run where the pipeline was started (relative paths in the config mean what they say), with this
        # copy of rlhf importable whether it is a checkout or an installed package.
        env = child_environment()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
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
