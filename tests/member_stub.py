"""A member process for tests/test_member_processes.py: what rlhf.stages.member_processes does with the processes it
starts (threads, SIGTERM, a failure) is tested with this stand-in, which starts in a fraction of a second where a real
training member takes many; the real members are trained in tests/test_weight_average.py.

    python -m member_stub MODE FOLDER    MODE: fail (exit 1 with an error line), wait (until SIGTERM, then exit 143),
                                         done (exit 0); FOLDER/started holds the OMP_NUM_THREADS it was given
"""

import os
import signal
import sys
import time
from pathlib import Path

mode, folder = sys.argv[1], Path(sys.argv[2])
folder.mkdir(parents=True, exist_ok=True)
if mode == "fail":
    print("error: --dataset_name pairs.jsonl: no usable rows", file=sys.stderr)
    sys.exit(1)


def stopped(*_: object) -> None:
    (folder / "stopped").touch()
    sys.exit(143)


signal.signal(signal.SIGTERM, stopped)
(folder / "started").write_text(os.environ.get("OMP_NUM_THREADS", ""), encoding="utf-8")
if mode == "wait":
    time.sleep(120)
