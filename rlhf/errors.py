"""How a run fails: usage errors (exit 2), run errors (exit 1), preemption (143), each as one line."""

from __future__ import annotations

import errno
import sys
import traceback
from collections.abc import Callable

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


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type when it has none): what a one-line error quotes."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
