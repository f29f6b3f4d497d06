"""Runs a command and writes its memory peaks (KiB) to a file: ``python -S bench/launcher.py OUT CMD...``.

Why a process in between: a child's ``ru_maxrss`` starts from the high-water mark of the process that spawned it
(Linux carries the spawning address space's peak into the child at exec, with vfork as with fork). A benchmark
parent that built a 135M model before spawning would lend its own ~0.9 GB to every child it measures. This launcher
is started with no imports beyond ``os``/``sys``/``time`` (~10 MB), so the command it spawns is measured from that
floor.

OUT gets one line: ``ru_maxrss anon file``. ``ru_maxrss`` is the kernel's peak resident set, which also counts the
pages of shared libraries mapped from the page cache: how many of those are resident depends on the page cache's
history (a freshly installed venv maps more than one installed hours earlier), not on the program. ``anon`` is the
highest ``RssAnon`` (heap, tensors, stacks) read from ``/proc/PID/status`` every ``INTERVAL_S`` while the command
runs, ``file`` the highest ``RssFile``: sampled, so a peak shorter than the interval can be missed (0 where /proc has
no such fields). Exit status: the command's (128 + N when a signal N ended it, as a shell reports it).
"""

import os
import sys
import time

INTERVAL_S = 0.01


def rss_kib(pid: int) -> tuple[int, int]:
    """(RssAnon, RssFile) of a running process in KiB; (0, 0) once it has exited or where /proc lacks them."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            fields = dict(line.split(":", 1) for line in f if line.startswith(("RssAnon:", "RssFile:")))
    except OSError:
        return 0, 0
    return tuple(int(fields.get(k, "0 kB").split()[0]) for k in ("RssAnon", "RssFile"))


def main() -> int:
    out, argv = sys.argv[1], sys.argv[2:]
    pid = os.posix_spawnp(argv[0], argv, os.environ)
    anon = file = 0
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            break
        a, f = rss_kib(pid)
        anon, file = max(anon, a), max(file, f)
        time.sleep(INTERVAL_S)
    with open(out, "w", encoding="utf-8") as f:
        f.write(f"{usage.ru_maxrss} {anon} {file}\n")
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main())
