"""Command-line plumbing of the stage scripts: dataclass flags, loose booleans, logging."""

from __future__ import annotations

import logging
import sys
from typing import Any

from rlhf.errors import UsageError

logger = logging.getLogger("rlhf.cli")


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
    """Parse the loose booleans the reference command lines use (``--use_fast_tokenizer false``)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "y", "on"):
        return True
    if text in ("0", "false", "no", "n", "off"):
        return False
    raise UsageError(f"--{flag}: expected true or false, got {value!r}")


def parse_dataclasses(parser: Any, argv: list[str] | None) -> tuple[Any, ...]:
    """HfArgumentParser parsing where a rejected combination of values is a usage error, not a traceback.

    argparse's own errors (unknown choice, value of the wrong type) become one line too, instead of the usage text.
    """

    def one_line(message: str) -> None:
        raise UsageError(message)

    parser.error = one_line
    try:
        return parser.parse_args_into_dataclasses(args=argv)
    except ValueError as err:
        message = " ".join(str(err).split())
        raise UsageError(f"invalid arguments: {message}") from None


def cpu_only() -> bool:
    """Default for ``use_cpu``: on a machine without CUDA the Trainer must be told, or bf16 is refused."""
    import torch

    return not torch.cuda.is_available()
