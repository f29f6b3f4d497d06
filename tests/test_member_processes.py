"""--member_processes: the members of --average_seeds trained side by side, each in a process of its own.

How the processes are run (their threads, a SIGTERM passed on, a failing member stopping the others) is tested with
tests/member_stub.py standing in for a member; test_weight_average.py trains real members this way and checks the
average against the one of members trained one after another.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rlhf.errors import EXIT_PREEMPTED, RunError
from rlhf.secrets import drop_secret_flags
from rlhf.stages import member_processes
from rlhf.stages.member_processes import train_side_by_side

MODULE = "member_stub"


@pytest.fixture
def stub_path(monkeypatch):
    """The children find member_stub.py (tests/) through PYTHONPATH; two threads to share between them."""
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def members(tmp_path: Path, *modes: str) -> list[tuple[int, Path, list[str]]]:
    return [
        (seed, tmp_path / f"seed_{seed}", [mode, str(tmp_path / f"seed_{seed}")]) for seed, mode in enumerate(modes)
    ]


def wait_for(path: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_members_share_the_threads_and_all_finish(tmp_path, stub_path):
    runs = members(tmp_path, "done", "done", "done")
    assert train_side_by_side(MODULE, runs, 2, tmp_path) == 0
    for _, folder, _ in runs:  # two processes at a time: one thread each
        assert (folder / "started").read_text(encoding="utf-8") == "1"
    assert sorted(p.name for p in tmp_path.glob("seed_*.log")) == ["seed_0.log", "seed_1.log", "seed_2.log"]


def test_a_failing_member_stops_the_others_and_is_named_in_one_line(tmp_path, stub_path):
    runs = members(tmp_path, "wait", "fail")
    started = time.monotonic()
    with pytest.raises(RunError) as caught:
        train_side_by_side(MODULE, runs, 2, tmp_path)
    message = str(caught.value)
    assert message.startswith("member seed 1 failed (exit 1): error: --dataset_name pairs.jsonl: no usable rows")
    assert "\n" not in message and "--resume_from_checkpoint latest" in message
    assert (tmp_path / "seed_0" / "stopped").is_file()  # the waiting member was sent SIGTERM, not left to run
    assert time.monotonic() - started < 60
    with pytest.raises(RunError):  # run again, as a resumed run does: the member's log keeps the first attempt
        train_side_by_side(MODULE, runs[1:], 2, tmp_path)
    assert (tmp_path / "seed_1.log").read_text(encoding="utf-8").count("no usable rows") == 2


def test_a_sigterm_is_passed_on_and_no_further_member_starts(tmp_path, stub_path):
    runs = members(tmp_path, "wait", "wait", "done")
    previous = signal.getsignal(signal.SIGTERM)

    def preempt() -> None:
        wait_for(tmp_path / "seed_0" / "started")
        wait_for(tmp_path / "seed_1" / "started")
        os.kill(os.getpid(), signal.SIGTERM)

    sender = threading.Thread(target=preempt)
    sender.start()
    try:
        assert train_side_by_side(MODULE, runs, 2, tmp_path) == EXIT_PREEMPTED
    finally:
        sender.join()
    assert (tmp_path / "seed_0" / "stopped").is_file() and (tmp_path / "seed_1" / "stopped").is_file()
    assert not (tmp_path / "seed_2").exists()  # the third was still waiting: never started
    assert signal.getsignal(signal.SIGTERM) is previous  # this process's own handler is back


def test_no_member_is_left_running_when_this_process_fails(tmp_path, stub_path, monkeypatch):
    """A Ctrl-C or a bug in this process while a member trains: the member is stopped too, not orphaned."""
    runs = members(tmp_path, "wait")

    def interrupted(seconds: float) -> None:
        wait_for(tmp_path / "seed_0" / "started")
        raise KeyboardInterrupt

    monkeypatch.setattr(member_processes, "time", SimpleNamespace(sleep=interrupted))
    with pytest.raises(KeyboardInterrupt):
        train_side_by_side(MODULE, runs, 2, tmp_path)
    assert (tmp_path / "seed_0" / "stopped").is_file()


def test_a_token_never_reaches_a_members_command_line():
    args = ["--seed", "7", "--hf_access_token", "hf_abc", "--hub_token=hf_def", "--use_auth_token", "hf_ghi", "--x"]
    assert drop_secret_flags(args) == ["--seed", "7", "--x"]
