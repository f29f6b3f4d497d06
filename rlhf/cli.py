"""Command-line plumbing shared by the stage scripts: one-line errors, legacy flags, keeping secrets out of files."""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("rlhf")

# Exit code for bad input or bad flags, like argparse's own usage errors.
EXIT_USAGE = 2
# Exit code for a failure during the run (disk full while saving, non-finite loss): one line, like usage errors.
EXIT_FAILURE = 1
# Exit code after SIGTERM: a checkpoint was written and the run can be resumed (128 + SIGTERM, as a shell reports).
EXIT_PREEMPTED = 143
# OSError numbers that mean "the disk cannot take this write", whoever was writing.
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


class UsageError(Exception):
    """A problem with the user's input (flag, file, row, column) that training cannot proceed with.

    The message is printed as one line, without a traceback, and the process exits with code 2.
    """


class RunError(Exception):
    """A run that cannot go on for a reason outside the user's input (a save that failed, a non-finite loss).

    Printed as one line, without a traceback (``--debug`` shows it), exit code 1. The message says what is left
    on disk and how to go on.
    """


def wants_traceback(argv: list[str]) -> bool:
    """True when the user asked for full tracebacks (``--debug`` or ``--log_level debug``)."""
    for i, arg in enumerate(argv):
        if arg in ("--debug", "--debug=True", "--debug=true"):
            return True
        if arg == "--log_level" and i + 1 < len(argv) and argv[i + 1] == "debug":
            return True
        if arg == "--log_level=debug":
            return True
    return False


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


def run_main(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run a script's ``main`` and turn user errors into one line on stderr and exit code 2."""
    args = sys.argv[1:] if argv is None else argv
    try:
        code = main(args)
    except UsageError as err:
        _print_error(str(err), args)
        sys.exit(EXIT_USAGE)
    except RunError as err:
        _print_error(str(err), args)
        sys.exit(EXIT_FAILURE)
    except OSError as err:
        if err.errno not in DISK_ERRNOS:
            raise
        _print_error(
            f"disk write failed ({err}); complete checkpoints and finished outputs are left as they were: free "
            "space, then rerun with --resume_from_checkpoint latest",
            args,
        )
        sys.exit(EXIT_FAILURE)
    sys.exit(code or 0)


def _print_error(message: str, args: list[str]) -> None:
    _close_progress_bars()
    if wants_traceback(args):
        traceback.print_exc()
    message = " ".join(message.split("\n"))
    print(f"error: {message}", file=sys.stderr, flush=True)


def _close_progress_bars() -> None:
    """End the line of a progress bar that an error interrupted, so that the error starts a line of its own."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", None) or []):
        try:
            bar.close()
        except Exception:  # cosmetic only: never hide the error being reported
            pass


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


@dataclass
class HubArguments:
    """How to reach the Hugging Face hub. The token is used for hub calls only and is never written anywhere."""

    hf_access_token: str | None = field(
        default=None,
        metadata={
            "help": "Hugging Face token for gated/private models and datasets. Used for hub calls only; never "
            "saved in output folders, logs or trackers. Defaults to the HF_TOKEN environment/login."
        },
    )
    use_auth_token: str | None = field(
        default=None,
        metadata={
            "help": "Accepted for compatibility with the reference command line; no effect (the hub login or "
            "--hf_access_token is used)."
        },
    )

    @property
    def token(self) -> str | None:
        return self.hf_access_token or None


SECRET_FIELDS = ("hf_access_token", "hub_token", "use_auth_token", "push_to_hub_token", "token")


def redact(value: Any, secrets: list[str]) -> Any:
    """Return ``value`` with every occurrence of a secret string replaced, recursing into containers."""
    if isinstance(value, str):
        for secret in secrets:
            if secret:
                value = value.replace(secret, "<redacted>")
        return value
    if isinstance(value, dict):
        return {k: ("<redacted>" if k in SECRET_FIELDS and v else redact(v, secrets)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v, secrets) for v in value)
    return value


def public_dict(obj: Any, secrets: list[str]) -> dict[str, Any]:
    """A dataclass (or args object) as a dict safe to save: secret fields blanked, secret strings redacted."""
    data = dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else dict(vars(obj))
    return redact(data, secrets)


def hide_token_from_environment(token: str | None) -> None:
    """Make huggingface_hub use ``token`` without it living in an object that gets saved.

    Trainer and TRL save their arguments (``training_args.bin``, model cards); keeping the token out of those
    objects and in the process environment instead is what keeps it off disk. Child processes inherit it, which is
    what the user asked for by passing it.
    """
    if token:
        os.environ["HF_TOKEN"] = token


def scrub_argv(secrets: list[str | None]) -> None:
    """Replace secret values in ``sys.argv``: trackers (wandb) record the command line in their run metadata."""
    live = [s for s in secrets if s]
    sys.argv[:] = [redact(arg, live) for arg in sys.argv]


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
