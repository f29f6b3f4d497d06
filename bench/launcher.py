"""Runs a command and writes its peak resident memory (KiB) to a file: ``python -S bench/launcher.py OUT CMD...``.

Why a process in between: a child's ``ru_maxrss`` starts from the high-water mark of the process that spawned it
(Linux carries the spawning address space's peak into the child at exec, with vfork as with fork). A benchmark
parent that built a 135M model before spawning would lend its own ~0.9 GB to every child it measures. This launcher
is started with no imports beyond ``os``/``sys`` (~10 MB), so the command it spawns is measured from that floor.
Exit status: the command's (128 + N when a signal N ended it, as a shell reports it).
"""

import os
import sys


def main() -> int:
    out, argv = sys.argv[1], sys.argv[2:]
    pid = os.posix_spawnp(argv[0], argv, os.environ)
    _, status, usage = os.wait4(pid, 0)
    with open(out, "w", encoding="utf-8") as f:
        f.write(f"{usage.ru_maxrss}\n")
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main())
