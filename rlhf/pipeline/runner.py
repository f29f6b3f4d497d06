"""Run the stages as separate processes, each feeding the next: SFT -> reward model(s) -> PPO -> evaluation -> report.

    python -m rlhf.pipeline --config configs/demo.json [--force] [--from_stage rm] [--output out/demo]

Each stage's exact command line is printed before it runs, so any stage can be rerun by hand. A stage whose
output is already complete (``COMPLETE.json``) is skipped; ``--force`` reruns everything, ``--from_stage S`` reruns
S and the stages after it. The stage scripts are the source of truth: this runner owns no training logic.

The config is JSON: ``model`` (base model: hub name or folder), ``dataset``, ``output`` (folder), ``heldout``
(evaluation data, default ``dataset``) and per stage a list of extra flags (``sft``, ``rm``, ``rm2``, ``ppo``,
``eval``), checked before any stage runs. ``rm2`` (optional) trains a second reward model that PPO never sees, used
by the evaluation as an independent judge.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]  # the repository: the stage scripts live there


STAGES = ("sft", "rm", "rm2", "ppo", "eval", "report")

# ---------------------------------------------------------------------------------------------------- the config

FLAG_KEYS = ("sft", "rm", "rm2", "ppo", "eval")  # each: a list of extra flags for that stage's script
PATH_KEYS = ("model", "dataset", "heldout", "output")
REQUIRED_KEYS = ("model", "dataset", "output")
CONFIG_KEYS = (*PATH_KEYS, *FLAG_KEYS)


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


# ---------------------------------------------------------------------------------------------------- the stages


@dataclass
class Stage:
    name: str
    argv: list[str]
    output: Path  # the folder whose COMPLETE.json says the stage is done
    clean: Path  # what to remove before a forced rerun


def build_stages(config: dict, python: str = sys.executable) -> list[Stage]:
    """The command line of every stage, from the config. ``rm2`` runs only when the config has an ``rm2`` entry."""
    out = Path(config["output"])
    model, data = config["model"], config["dataset"]
    heldout = config.get("heldout", data)
    sft, rm, rm2, ppo, ev = out / "sft", out / "rm", out / "rm2", out / "ppo", out / "eval"

    def trainer_stage(name: str, script: str, base: str, folder: Path) -> Stage:
        """SFT and reward-model stages share one command shape; a finished folder is replaced on a rerun."""
        argv = [
            python,
            str(ROOT / script),
            "--model_name_or_path",
            base,
            "--dataset_name",
            data,
            "--output_dir",
            str(folder),
            "--overwrite_output_dir",
            *config.get(name, []),
        ]
        return Stage(name, argv, folder, folder)

    stages = [
        trainer_stage("sft", "sft.py", model, sft),
        trainer_stage("rm", "reward_modeling.py", str(sft), rm),
    ]
    judge = []
    if "rm2" in config:
        stages.append(trainer_stage("rm2", "reward_modeling.py", str(sft), rm2))
        judge = ["--second_reward_model", str(rm2)]
    stages += [
        Stage(
            "ppo",
            [
                python,
                str(ROOT / "rl_training.py"),
                "--model_name",
                str(sft),
                "--reward_model_name",
                str(rm),
                "--dataset_name",
                data,
                "--output_dir",
                str(ppo),
                *config.get("ppo", []),
            ],
            ppo / "final",
            ppo,
        ),
        Stage(
            "eval",
            [
                python,
                str(ROOT / "evaluate.py"),
                "--sft_model",
                str(sft),
                "--ppo_model",
                str(ppo / "final"),
                "--reward_model",
                str(rm),
                *judge,
                "--dataset_name",
                heldout,
                "--output_dir",
                str(ev),
                *config.get("eval", []),
            ],
            ev,
            ev,
        ),
        Stage(
            "report",
            [python, "-m", "rlhf.pipeline.report", "--run", str(out)],
            out / "never-skipped",
            out / "report.md",
        ),
    ]
    return stages


def is_done(stage: Stage) -> bool:
    """Trainer stages mark their folder with COMPLETE.json; evaluation writes evaluation.json last."""
    return (stage.output / "COMPLETE.json").is_file() or (stage.output / "evaluation.json").is_file()


def run_stage(stage: Stage, log_dir: Path, tail_lines: int = 25) -> tuple[int, list[str]]:
    """Run one stage, streaming its output to the console and to ``log_dir/<stage>.log``.

    Returns the exit code and the last lines of the log (for the failure report).
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    tail: deque[str] = deque(maxlen=tail_lines)
    partial = ""
    with (log_dir / f"{stage.name}.log").open("wb") as log:
        proc = subprocess.Popen(stage.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT)
        assert proc.stdout is not None
        while chunk := os.read(proc.stdout.fileno(), 65536):
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
            log.write(chunk)
            text = partial + chunk.decode("utf-8", "replace").replace("\r", "\n")
            *lines, partial = text.split("\n")
            tail.extend(line for line in lines if line.strip())
        code = proc.wait()
    if partial.strip():
        tail.append(partial)
    return code, list(tail)


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

    log_dir = Path(config["output"]) / "logs"
    stages = [s for s in build_stages(config) if s.name in wanted]
    names = [s.name for s in stages]
    rerun_from = names.index(args.from_stage) if args.from_stage in names else len(stages)
    started = time.time()
    for index, stage in enumerate(stages):
        banner = f"== stage {index + 1}/{len(stages)}: {stage.name} "
        print("\n" + banner + "=" * max(0, 78 - len(banner)), flush=True)
        print("$ " + shlex.join(stage.argv), flush=True)
        if is_done(stage) and not args.force and index < rerun_from:
            print(f"   skipped: {stage.output} is complete (--force or --from_stage {stage.name} to redo)", flush=True)
            continue
        if stage.clean.is_dir():
            shutil.rmtree(stage.clean)
        t0 = time.time()
        code, tail = run_stage(stage, log_dir)
        if code != 0:
            print(f"\nPIPELINE FAILED at stage '{stage.name}' (exit code {code})", file=sys.stderr)
            print("command: " + shlex.join(stage.argv), file=sys.stderr)
            print(f"log: {log_dir / (stage.name + '.log')}; last lines:", file=sys.stderr)
            for line in tail:
                print("  | " + line, file=sys.stderr)
            return code if code > 0 else 1
        print(f"   {stage.name} done in {time.time() - t0:.0f} s", flush=True)
    print(f"\npipeline finished in {time.time() - started:.0f} s; outputs in {config['output']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
