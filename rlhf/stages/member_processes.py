"""``--average_seeds N --member_processes K``: up to K members trained at once, each in a process of its own.

A member is then the stage's own command line run as ``python -m <module> ... --seed S --output_dir
<members>/seed_S``, with an equal share of this process's threads (``OMP_NUM_THREADS``) and its output in
``<members>/seed_S.log``. On a CPU with few cores the small models of the demo use a second thread poorly (1.5x), so
two members with one thread each finish well before the same two one after another with two threads each; on a GPU
the processes share the card.

A SIGTERM is passed on to every member: each finishes its step, writes a checkpoint and exits 143, as one run does,
and so does this process. A member that fails stops the others the same way; the error is the last line of its log.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from rlhf.cli import child_environment
from rlhf.errors import EXIT_PREEMPTED, RunError

logger = logging.getLogger("rlhf.stages.member_processes")


def last_line(log: Path) -> str:
    lines = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(no output)"


def train_side_by_side(module: str, members: list[tuple[int, Path, list[str]]], processes: int, logs: Path) -> int:
    """Run ``python -m module ARGS`` for each ``(seed, folder, ARGS)``, at most ``processes`` at a time.

    Returns 0 when every member finished, 143 when a SIGTERM stopped them (each with a checkpoint); raises RunError
    naming the member and its error when one failed.
    """
    threads = max(1, torch.get_num_threads() // processes)
    env = child_environment(OMP_NUM_THREADS=str(threads))
    waiting, running, failed = list(members), {}, []
    stopping = False

    def stop_all(*_: object) -> None:
        nonlocal stopping
        stopping = True
        for proc in list(running):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, stop_all)
    try:
        while running or (waiting and not stopping):
            while waiting and not stopping and len(running) < processes:
                seed, folder, args = waiting.pop(0)
                log = logs / f"seed_{seed}.log"
                logger.info(
                    "member seed %d: trained into %s in a process of its own (%d thread(s), log %s)",
                    seed,
                    folder,
                    threads,
                    log,
                )
                with log.open("a", encoding="utf-8") as out:  # a resumed member adds to its log
                    proc = subprocess.Popen([sys.executable, "-m", module, *args], stdout=out, stderr=out, env=env)
                running[proc] = (seed, log)
                if stopping:  # the SIGTERM came while it was starting
                    proc.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            for proc in [p for p in running if p.poll() is not None]:
                seed, log = running.pop(proc)
                if proc.returncode == 0:
                    logger.info("member seed %d: finished", seed)
                elif stopping and proc.returncode in (EXIT_PREEMPTED, -signal.SIGTERM):
                    logger.info("member seed %d: stopped by SIGTERM (exit %d)", seed, proc.returncode)
                else:
                    failed.append((seed, proc.returncode, log))
                    stop_all()
    finally:
        signal.signal(signal.SIGTERM, previous)
        for proc in running:  # only when this process failed itself: no member is left running on its own
            proc.send_signal(signal.SIGTERM)
            proc.wait()
    if failed:
        seed, code, log = failed[0]
        raise RunError(
            f"member seed {seed} failed (exit {code}): {last_line(log)} (log {log}); the other members were stopped "
            "(SIGTERM: a checkpoint where one had started training): rerun with --resume_from_checkpoint latest"
        )
    return EXIT_PREEMPTED if stopping else 0
