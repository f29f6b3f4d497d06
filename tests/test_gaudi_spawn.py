"""Tests for gaudi_spawn.py: command shapes, verbatim arguments, exit codes, signals, errors.

The expected command lines are written out from optimum-habana's
``optimum/habana/distributed/distributed_runner.py`` (``DistributedRunner``) as
driven by its ``examples/gaudi_spawn.py``; optimum-habana is not imported.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import gaudi_spawn  # noqa: E402
from gaudi_spawn import HostEntry, SpawnError, build_command, parse_args  # noqa: E402

SPAWN = str(ROOT / "gaudi_spawn.py")
PY = "/opt/venv/bin/python3"  # stands in for sys.executable in the pure tests
HAS_MPIRUN = shutil.which("mpirun") is not None
needs_mpirun = pytest.mark.skipif(not HAS_MPIRUN, reason="mpirun not on PATH (apt-get install openmpi-bin)")

# A typical training invocation, hostile bits included: build_command must
# copy these element for element, whatever they look like.
SCRIPT = ["reward_modeling.py", "--model_name_or_path", "M", "--use_habana"]
SCRIPT += ["--use_lazy_mode", "--world_size", "9", "a b", "$(id)", "--"]


def cmd(launcher_args: list[str], topology=(2, 40), hosts=None, environ=None):
    args = parse_args([*launcher_args, *SCRIPT])
    return build_command(args, environ or {"PATH": "/usr/bin"}, topology, python=PY, hosts=hosts)


# --- command shapes, as optimum-habana's DistributedRunner builds them -------


@pytest.mark.parametrize(
    ("launcher_args", "topology", "expected"),
    [
        pytest.param(
            ["--world_size", "8", "--use_mpi"],
            (2, 40),  # PE = 2 sockets * 40 cores // 8 ranks
            ["mpirun", "-n", "8", "--bind-to", "core", "--map-by", "socket:PE=10"]
            + ["--rank-by", "slot", "--report-bindings", "--allow-run-as-root", PY],
            id="mpi",
        ),
        pytest.param(
            ["--world_size", "8", "--use_mpi", "--master_port", "4242"],
            (2, 28),  # 56 // 8
            ["mpirun", "-n", "8", "--bind-to", "core", "--map-by", "socket:PE=7"]
            + ["--rank-by", "slot", "--report-bindings", "--allow-run-as-root", PY],
            id="mpi-port-goes-to-env-only",
        ),
        pytest.param(
            ["--world_size", "4", "--use_mpi"],
            (16, 1),  # one core per socket: a VM, optimum maps by slot
            ["mpirun", "-n", "4", "--bind-to", "core", "--map-by", "slot:PE=4"]
            + ["--rank-by", "slot", "--report-bindings", "--allow-run-as-root", PY],
            id="mpi-vm",
        ),
        pytest.param(
            ["--world_size", "8", "--use_deepspeed"],
            (2, 40),
            ["deepspeed", "--num_nodes", "1", "--num_gpus", "8", "--no_local_rank"] + ["--master_port", "29500"],
            id="deepspeed",
        ),
        pytest.param(
            ["--world_size", "2", "--use_deepspeed", "--master_port", "1234"],
            (2, 40),
            ["deepspeed", "--num_nodes", "1", "--num_gpus", "2", "--no_local_rank"] + ["--master_port", "1234"],
            id="deepspeed-port",
        ),
        pytest.param(
            ["--world_size", "8"],
            (2, 40),
            [PY, "-um", "torch.distributed.run", "--nproc_per_node=8"],
            id="torchrun",
        ),
        pytest.param([], (2, 40), [PY], id="single-card"),
        pytest.param(["--use_mpi", "--world_size", "1"], (2, 40), [PY], id="single-card-mpi"),
        pytest.param(
            ["--use_deepspeed"],
            (2, 40),
            ["deepspeed", "--num_gpus", "1", "--master_port", "29500"],
            id="single-card-deepspeed",
        ),
    ],
)
def test_argv_matches_optimum_habana(launcher_args, topology, expected):
    argv, _ = cmd(launcher_args, topology)
    assert argv == expected + SCRIPT


def test_deepspeed_hostfile_matches_optimum_habana(tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# nodes\n\n10.0.0.1 slots=8\n10.0.0.2 slots=8\n")
    # world_size is ignored with a hostfile, as in optimum-habana.
    argv, env = cmd(["--hostfile", str(hostfile), "--use_deepspeed", "--world_size", "3"])
    assert argv == [
        "deepspeed",
        "--hostfile",
        str(hostfile),
        "--master_addr",
        "10.0.0.1",
        "--no_local_rank",
        "--master_port",
        "29500",
        *SCRIPT,
    ]
    assert "MASTER_ADDR" not in env


def test_mpi_env_sets_master_addr_and_port():
    _, env = cmd(
        ["--world_size", "8", "--use_mpi", "--master_port", "4242"],
        environ={"PATH": "/usr/bin", "MASTER_ADDR": "stale"},
    )
    assert env == {"PATH": "/usr/bin", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "4242"}
    _, env = cmd(["--world_size", "2", "--use_mpi", "--master_addr", "10.1.1.1"])
    assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("10.1.1.1", "29500")
    # Other launchers do their own rendezvous: environment left alone.
    for other in (["--world_size", "2"], ["--world_size", "2", "--use_deepspeed"]):
        assert cmd(other)[1] == {"PATH": "/usr/bin"}


# --- our extensions beyond optimum-habana ------------------------------------


def test_mpi_multi_node_hostfile_exports_rendezvous():
    hosts = [HostEntry("node1", 8), HostEntry("node2", 8)]
    argv, env = cmd(["--hostfile", "hf", "--use_mpi"], (2, 40), hosts=hosts)
    assert argv == [
        "mpirun", "-n", "16", "--hostfile", "hf",
        "--bind-to", "core", "--map-by", "socket:PE=10", "--rank-by", "slot",
        "--report-bindings", "--allow-run-as-root",
        "-x", "MASTER_ADDR", "-x", "MASTER_PORT", PY, *SCRIPT,
    ]  # fmt: skip
    assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("node1", "29500")
    argv, _ = cmd(["--hostfile", "hf", "--use_mpi", "--world_size", "4"], (2, 40), hosts=hosts)
    assert argv[:3] == ["mpirun", "-n", "4"] and "socket:PE=40" in argv
    with pytest.raises(SpawnError, match="exceeds the 16 slots"):
        cmd(["--hostfile", "hf", "--use_mpi", "--world_size", "17"], hosts=hosts)


def test_more_ranks_than_cores_runs_unbound_instead_of_pe_zero():
    argv, _ = cmd(["--world_size", "4", "--use_mpi"], (1, 2))
    assert argv[:10] == [
        "mpirun", "-n", "4", "--bind-to", "none", "--map-by", "slot",
        "--oversubscribe", "--rank-by", "slot",
    ]  # fmt: skip


def test_torchrun_gets_explicit_rendezvous_only_when_asked():
    argv, _ = cmd(["--world_size", "2", "--master_addr", "h", "--master_port", "7"])
    assert argv[:6] == [PY, "-um", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=h", "--master_port=7"]


@pytest.mark.parametrize(
    ("argv", "script_args"),
    [
        (["s.py", "--world_size", "9", "--use_mpi"], ["--world_size", "9", "--use_mpi"]),
        (["--world_size", "2", "s.py", "-h", "--", "x"], ["-h", "--", "x"]),
        (["s.py", "--", "--dry_run"], ["--", "--dry_run"]),
        (["--", "s.py", "--"], ["--"]),
        (["--hostfile=-odd-name", "s.py", ""], [""]),
    ],
)
def test_everything_after_the_script_is_the_scripts(argv, script_args):
    args = parse_args(argv)
    assert args.training_script == "s.py"
    assert args.training_script_args == script_args


def test_dry_run_prints_the_command_as_one_shell_line(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("")
    hostile = ["a b", "x'y", "$(id)"]
    proc = run_spawn("--dry_run", "--world_size", "8", "--use_mpi", str(script), *hostile)
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip()
    assert "\n" not in line
    argv = shlex.split(line)
    assert argv[:3] == ["mpirun", "-n", "8"] and argv[-4:] == [str(script), *hostile]
    assert "MASTER_ADDR=127.0.0.1" in proc.stderr


# --- real runs ---------------------------------------------------------------

DUMP = """\
import json, os, sys
rank = os.environ.get("OMPI_COMM_WORLD_RANK") or os.environ.get("RANK") or "0"
keys = ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "RANK", "WORLD_SIZE",
        "MASTER_ADDR", "MASTER_PORT")
with open(os.path.join(os.environ["DUMP_DIR"], f"rank{rank}.json"), "w") as f:
    json.dump({"argv": sys.argv[1:], "env": {k: os.environ.get(k) for k in keys}}, f)
sys.exit(int(os.environ.get("DUMP_EXIT", "0")))
"""

TRAP = """\
import os, signal, sys, time
rank = os.environ.get("OMPI_COMM_WORLD_RANK") or os.environ.get("RANK") or "0"
out = os.environ["DUMP_DIR"]
def on_signal(signum, frame):
    with open(os.path.join(out, f"signal{rank}"), "a") as f:
        f.write(f"{signum}\\n")
    sys.exit(7)
signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGINT, on_signal)
open(os.path.join(out, f"ready{rank}"), "w").close()
time.sleep(60)
"""


def run_spawn(*argv: str, env: dict[str, str] | None = None, timeout: float = 60):
    return subprocess.run(
        [sys.executable, SPAWN, *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


@pytest.fixture
def job(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for name, body in (("dump.py", DUMP), ("trap.py", TRAP)):
        (tmp_path / name).write_text(body)
    env = {**os.environ, "DUMP_DIR": str(out)}
    return tmp_path, out, env


def hostile_args(tmp_path: Path) -> list[str]:
    return [
        "a b",
        'x"y',
        "it's",
        f"; touch {tmp_path}/pwned1",
        f"$(touch {tmp_path}/pwned2)",
        f"`touch {tmp_path}/pwned3`",
        "--world_size",
        "9",
        "--",
        "--use_mpi",
        "",
        "line1\nline2",
    ]


def ranks(out: Path) -> dict[int, dict]:
    return {int(p.stem.removeprefix("rank")): json.loads(p.read_text()) for p in out.glob("rank*.json")}


def assert_no_side_effects(tmp_path: Path) -> None:
    assert not list(tmp_path.glob("pwned*")), "a shell ran part of an argument"


@pytest.mark.parametrize(
    ("launcher_args", "n"),
    [
        pytest.param(["--world_size", "1"], 1, id="single-card"),
        pytest.param(["--world_size", "2"], 2, id="torchrun"),
        pytest.param(["--world_size", "2", "--use_mpi", "--master_port", "29611"], 2, id="mpirun", marks=needs_mpirun),
    ],
)
def test_hostile_arguments_reach_every_rank_verbatim(job, launcher_args, n):
    tmp_path, out, env = job
    args = hostile_args(tmp_path)
    proc = run_spawn(*launcher_args, str(tmp_path / "dump.py"), *args, env=env)
    assert proc.returncode == 0, proc.stderr
    seen = ranks(out)
    assert sorted(seen) == list(range(n))
    for rank, record in seen.items():
        assert record["argv"] == args
        if "--use_mpi" in launcher_args:
            assert record["env"]["OMPI_COMM_WORLD_RANK"] == str(rank)
            assert record["env"]["OMPI_COMM_WORLD_SIZE"] == "2"
            assert record["env"]["MASTER_ADDR"] == "127.0.0.1"
            assert record["env"]["MASTER_PORT"] == "29611"
        elif n > 1:
            assert (record["env"]["RANK"], record["env"]["WORLD_SIZE"]) == (str(rank), "2")
    assert_no_side_effects(tmp_path)


@needs_mpirun
def test_mpirun_hostfile_path_runs_and_exports(job):
    tmp_path, out, env = job
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=2\n")
    args = hostile_args(tmp_path)
    proc = run_spawn("--use_mpi", "--hostfile", str(hostfile), str(tmp_path / "dump.py"), *args, env=env)
    assert proc.returncode == 0, proc.stderr
    seen = ranks(out)
    assert sorted(seen) == [0, 1]
    for record in seen.values():
        assert record["argv"] == args
        assert (record["env"]["MASTER_ADDR"], record["env"]["MASTER_PORT"]) == ("localhost", "29500")
    assert_no_side_effects(tmp_path)


@pytest.mark.parametrize(
    "launcher_args",
    [
        pytest.param([], id="single-card"),
        pytest.param(["--world_size", "2", "--use_mpi"], id="mpirun", marks=needs_mpirun),
    ],
)
def test_exit_code_propagates(job, launcher_args):
    tmp_path, _, env = job
    proc = run_spawn(*launcher_args, str(tmp_path / "dump.py"), env={**env, "DUMP_EXIT": "3"})
    assert proc.returncode == 3, proc.stderr


@pytest.mark.parametrize(
    ("launcher_args", "n", "signum"),
    [
        pytest.param([], 1, signal.SIGTERM, id="single-card-TERM"),
        pytest.param([], 1, signal.SIGINT, id="single-card-INT"),
        pytest.param(["--world_size", "2", "--use_mpi"], 2, signal.SIGTERM, id="mpirun-TERM", marks=needs_mpirun),
    ],
)
def test_signal_reaches_the_job(job, launcher_args, n, signum):
    tmp_path, out, env = job
    proc = subprocess.Popen(
        [sys.executable, SPAWN, *launcher_args, str(tmp_path / "trap.py")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while len(list(out.glob("ready*"))) < n:
            assert proc.poll() is None, "launcher exited early"
            assert time.monotonic() < deadline, "job never became ready"
            time.sleep(0.05)
        proc.send_signal(signum)
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    for rank in range(n):
        assert (out / f"signal{rank}").read_text().split() == [str(int(signum))]
    if n == 1:
        assert rc == 7  # the job's own exit code, passed through
    else:
        assert rc != 0


# --- errors: exit 2, one line, no traceback ----------------------------------


def error_cases(tmp_path: Path) -> dict[str, tuple[list[str], dict[str, str], str]]:
    script = tmp_path / "dump.py"
    empty = tmp_path / "empty_hostfile"
    empty.write_text("# no hosts yet\n\n")
    bad = tmp_path / "bad_hostfile"
    bad.write_text("node1 8\n")
    good = tmp_path / "good_hostfile"
    good.write_text("node1 slots=8\n")
    no_tools = tmp_path / "empty_bin"  # a PATH with neither mpirun nor deepspeed
    no_tools.mkdir()
    bare = {**os.environ, "PATH": str(no_tools)}
    s = str(script)
    return {
        "script": ([str(tmp_path / "missing.py")], {}, "training script not found"),
        "world_size": (["--world_size", "0", s], {}, "--world_size must be at least 1"),
        "both": (["--use_mpi", "--use_deepspeed", s], {}, "not allowed with argument --use_mpi"),
        "hostfile_missing": (["--use_deepspeed", "--hostfile", str(tmp_path / "nope"), s], {}, "hostfile not found"),
        "hostfile_unreadable": (["--use_deepspeed", "--hostfile", str(tmp_path), s], {}, "cannot read hostfile"),
        "hostfile_empty": (["--use_mpi", "--hostfile", str(empty), s], {}, "lists no hosts"),
        "hostfile_malformed": (["--use_deepspeed", "--hostfile", str(bad), s], {}, "expected 'HOST slots=N'"),
        "hostfile_without_launcher": (
            ["--hostfile", str(good), s],
            {},
            "--hostfile needs --use_deepspeed or --use_mpi",
        ),
        "no_mpirun": (
            ["--world_size", "2", "--use_mpi", s],
            bare,
            "mpirun not found on PATH; install it with: apt-get install openmpi-bin",
        ),
        "no_deepspeed": (
            ["--world_size", "2", "--use_deepspeed", s],
            bare,
            "deepspeed not found on PATH; install it with: pip install deepspeed",
        ),
        "bad_port": (["--master_port", "70000", s], {}, "--master_port must be in 1..65535"),
        "unknown_option": (["--wrold_size", "2", s], {}, "unrecognized arguments: --wrold_size"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "script",
        "world_size",
        "both",
        "hostfile_missing",
        "hostfile_unreadable",
        "hostfile_empty",
        "hostfile_malformed",
        "hostfile_without_launcher",
        "no_mpirun",
        "no_deepspeed",
        "bad_port",
        "unknown_option",
    ],
)
def test_errors_are_one_line_exit_2(job, case):
    tmp_path, _, env = job
    argv, extra_env, message = error_cases(tmp_path)[case]
    proc = run_spawn(*argv, env={**env, **extra_env})
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("gaudi_spawn.py: error: ")
    assert message in lines[0]
    assert "Traceback" not in proc.stderr


def test_duplicate_host_is_refused(tmp_path):
    dup = tmp_path / "hostfile"
    dup.write_text("node1 slots=8\nnode1 slots=8\n")
    with pytest.raises(SpawnError, match="node1 is listed twice"):
        gaudi_spawn.read_hostfile(str(dup))
