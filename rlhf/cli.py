"""Command-line plumbing of the scripts: dataclass flags (``HfArgumentParser``) with ``--config file.yaml``,
one-line errors for bad values, the traceback switch, logging."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from rlhf.errors import UsageError


def parse_arguments(dataclass_types: tuple[type, ...], argv: list[str] | None, usage: str | None = None) -> tuple:
    """Parse ``argv`` into one instance of each dataclass, like TRL's scripts.

    ``--config FILE`` (YAML or JSON: flag names without dashes as keys) gives values that the command line then
    overrides. ``usage`` (the script's docstring) opens ``--help``. Any problem, from a mistyped flag to an
    impossible value, is a one-line usage error naming it.
    """
    from transformers import HfArgumentParser

    parser = HfArgumentParser(dataclass_types, description=usage, formatter_class=_HelpFormatter)
    parser.add_argument("--config", default=None, help="YAML or JSON file of flag values; command-line flags win.")
    args = sys.argv[1:] if argv is None else list(argv)
    config = _config_path(args)
    if config is not None:
        _apply_config(parser, config)
    return parse_dataclasses(parser, args)


def _config_path(args: list[str]) -> str | None:
    for i, arg in enumerate(args):
        if arg == "--config":
            if i + 1 >= len(args):
                raise UsageError("--config: expected a file name")
            return args[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def _apply_config(parser: argparse.ArgumentParser, path: str) -> None:
    """The file's values become the parser's defaults, so a flag on the command line still wins; string values are
    converted by argparse exactly as if typed on the command line."""
    import yaml

    try:
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise UsageError(f"--config {path}: cannot read ({err.strerror or err})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise UsageError(f"--config {path}: {where}not valid YAML ({getattr(err, 'problem', None) or err})") from None
    if values is None:
        return
    if not isinstance(values, dict):
        raise UsageError(f"--config {path}: expected a mapping of flag names to values")
    actions = {action.dest: action for action in parser._actions}
    for key, value in values.items():
        action = actions.get(str(key))
        if action is None or key in ("config", "help"):
            raise UsageError(f"--config {path}: unknown flag {key!r}")
        if value is None:
            continue
        if isinstance(value, (list, tuple)) and action.nargs not in ("+", "*"):
            raise UsageError(f"--config {path}: {key}: expected one value, got a list")
        action.required = False  # given by the file
        # YAML reads 1e-4 as a string: argparse converts a string default with the flag's type, as if typed.
        parser.set_defaults(**{action.dest: value})


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after each flag's help, and the script's usage lines (its docstring) kept as written."""


def parse_dataclasses(parser: Any, argv: list[str] | None) -> tuple[Any, ...]:
    """HfArgumentParser parsing where a rejected combination of values is a usage error, not a traceback.

    argparse's own errors (unknown choice, value of the wrong type) become one line too, instead of the usage text.
    """

    def one_line(message: str) -> None:
        raise UsageError(message)

    parser.error = one_line
    try:
        parsed = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=False)
    except ValueError as err:
        message = " ".join(str(err).split())
        raise UsageError(f"invalid arguments: {message}") from None
    return tuple(p for p in parsed if not isinstance(p, argparse.Namespace))


def drop_debug_switch(argv: list[str] | None) -> list[str]:
    """``argv`` without a bare ``--debug`` (this project's traceback switch, read by ``run_main``).

    The Trainer's own ``--debug <features>`` takes values and is left alone; without this, a bare ``--debug`` on a
    Trainer-based script is an argparse error.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    out = []
    for i, arg in enumerate(args):
        following = args[i + 1] if i + 1 < len(args) else None
        if arg in ("--debug=True", "--debug=true") or (
            arg == "--debug" and (following is None or following.startswith("-"))
        ):
            continue
        out.append(arg)
    return out


def setup_logging(level: str = "info") -> None:
    """Log to stderr with one format for every stage; ``passive`` means info, like the Trainer's default."""
    level = "info" if level in ("passive", "", None) else level
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        level=getattr(logging, level.upper(), logging.INFO),
        force=True,
    )


def parse_bool(value: Any, flag: str) -> bool:
    """Parse the loose booleans the reference command lines use (``--batched_gen True``)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "y", "on"):
        return True
    if text in ("0", "false", "no", "n", "off"):
        return False
    raise UsageError(f"--{flag}: expected true or false, got {value!r}")


def check_output_dir(path: str, flag: str = "output_dir") -> None:
    """An output folder that cannot be created (it, or a folder above it, is a file) stops before any work."""
    folder = Path(path)
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            if not candidate.is_dir():
                what = "is a file" if candidate == folder else f"cannot be created: {candidate} is a file"
                raise UsageError(f"--{flag} {path}: {what}; give a folder")
            return


def check_seed(seed: int, flag: str = "seed") -> None:
    """Seeds as torch and numpy take them."""
    if not 0 <= seed < 2**32:
        raise UsageError(f"--{flag}: expected a value in [0, 2**32), got {seed}")


def cpu_only() -> bool:
    """Default for ``use_cpu``: on a machine without CUDA the Trainer must be told, or bf16 is refused."""
    import torch

    return not torch.cuda.is_available()


PACKAGE_PARENT = Path(__file__).resolve().parents[1]  # the folder holding rlhf/: a checkout, or site-packages


def child_environment(**extra: str) -> dict[str, str]:
    """The environment of a child ``python -m rlhf...``: this one, with this copy of rlhf importable wherever the
    command was started from (a checkout or an installed package), and ``extra`` variables set."""
    path = os.pathsep.join(p for p in (str(PACKAGE_PARENT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}
