r"""
python3 gaudi_spawn.py --world_size 8 --use_mpi reward_modeling.py \
    --model_name_or_path M ... --use_habana --use_lazy_mode
python3 gaudi_spawn.py --world_size 8 --use_deepspeed reward_modeling.py --model_name_or_path M ... --use_habana
python3 gaudi_spawn.py --hostfile hostfile --use_deepspeed reward_modeling.py --model_name_or_path M ...
python3 gaudi_spawn.py --hostfile hostfile --use_mpi reward_modeling.py --model_name_or_path M ...
python3 gaudi_spawn.py --world_size 8 reward_modeling.py --model_name_or_path M ...
python3 gaudi_spawn.py --dry_run --world_size 8 --use_mpi reward_modeling.py ...

Multi-card launcher for the training scripts on Intel Gaudi; it does not need
optimum-habana installed. Everything after the training script path is handed
to the script unchanged, including arguments that look like our own flags
(``--world_size`` after the script name belongs to the script).

The command lines follow optimum-habana's ``DistributedRunner``
(``optimum/habana/distributed/distributed_runner.py``) so that recipes written
for ``examples/gaudi_spawn.py`` behave the same here:

* ``--use_mpi`` and world_size N > 1::

      mpirun -n N --bind-to core --map-by socket:PE=P --rank-by slot
             --report-bindings --allow-run-as-root PYTHON SCRIPT ARGS...

  with P = (sockets * cores per socket) // N as ``lscpu`` reports them, and
  ``slot`` instead of ``socket`` when a socket has one core (a VM).
  MASTER_ADDR / MASTER_PORT are put in the environment mpirun inherits.
* ``--use_deepspeed`` and N > 1::

      deepspeed --num_nodes 1 --num_gpus N --no_local_rank --master_port PORT SCRIPT ARGS...

* ``--use_deepspeed --hostfile H``::

      deepspeed --hostfile H --master_addr FIRST_HOST --no_local_rank --master_port PORT SCRIPT ARGS...

* neither, N > 1::

      PYTHON -um torch.distributed.run --nproc_per_node=N SCRIPT ARGS...

* N == 1: ``PYTHON SCRIPT ARGS...`` (``deepspeed --num_gpus 1 --master_port PORT SCRIPT ARGS...``
  with ``--use_deepspeed``).

Deliberate differences from optimum-habana, each for a stated reason:

* the command is an argv list run without a shell, so an argument with spaces,
  quotes, ``;`` or ``$(...)`` reaches the script byte for byte (optimum-habana
  joins a string and runs it through bash);
* ``--use_mpi --hostfile H`` is supported (optimum-habana refuses a hostfile
  without DeepSpeed): ``mpirun -n N --hostfile H ... -x MASTER_ADDR -x MASTER_PORT``
  because mpirun forwards only the variables named with ``-x`` to remote nodes
  (every node needs this repo and Python at the same paths, as with DeepSpeed);
* the default MASTER_ADDR for single-node MPI is ``127.0.0.1`` rather than
  ``localhost``, which may resolve to ``::1`` where the rendezvous listens on IPv4;
* when N exceeds the cores we may use, optimum-habana would ask for ``PE=0``
  and mpirun aborts; we drop core binding instead (``--bind-to none
  --map-by slot --oversubscribe``) so the job still runs;
* the core count is capped by this process's CPU affinity, because in a
  container ``lscpu`` reports the host's cores and mpirun (hwloc) only sees the
  allowed ones, so ``PE`` would be too large to place;
* ``--master_addr`` is ours, and an explicit ``--master_addr`` /
  ``--master_port`` is also passed to ``torch.distributed.run`` (optimum-habana
  silently drops ``--master_port`` there).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import NoReturn

PROG = "gaudi_spawn.py"
DEFAULT_MASTER_ADDR = "127.0.0.1"
DEFAULT_MASTER_PORT = 29500

# Signals a user (Ctrl-C), a scheduler (TERM) or a closing terminal (HUP)
# sends to the launcher; the job runs in its own process group, so it only
# sees them if we pass them on.
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

INSTALL_HINTS = {
    "mpirun": "apt-get install openmpi-bin",
    "deepspeed": "pip install deepspeed",
}


class SpawnError(Exception):
    """A user error reported as one line on stderr with exit code 2."""


@dataclass(frozen=True)
class HostEntry:
    host: str
    slots: int


class _OneLineParser(argparse.ArgumentParser):
    """argparse prints the usage block before errors; we want one clear line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def make_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog=PROG,
        description="Launch a training script on several Gaudi cards (mpirun, DeepSpeed or torch.distributed).",
        # Abbreviations would let a typo in *our* options silently match another one.
        allow_abbrev=False,
        # The script's own arguments are split off before argparse sees them
        # (parse_args), so they only appear here, in the usage line.
        usage="%(prog)s [options] training_script [script arguments ...]",
        epilog="Every argument after training_script is passed to it verbatim.",
    )
    parser.add_argument(
        "--world_size",
        type=int,
        default=None,
        help="number of processes/cards (default 1; with --use_mpi --hostfile: the hostfile's total slots)",
    )
    parser.add_argument(
        "--hostfile",
        default=None,
        help="multi-node hostfile, one 'HOST slots=N' per line",
    )
    launcher = parser.add_mutually_exclusive_group()
    launcher.add_argument("--use_mpi", action="store_true", help="launch with mpirun (OpenMPI)")
    launcher.add_argument(
        "--use_deepspeed",
        action="store_true",
        help="launch with the deepspeed launcher",
    )
    parser.add_argument(
        "--master_addr",
        default=None,
        help=f"rendezvous address (default {DEFAULT_MASTER_ADDR}, or the first host of --hostfile)",
    )
    parser.add_argument(
        "--master_port",
        type=int,
        default=None,
        help=f"rendezvous port (default {DEFAULT_MASTER_PORT})",
    )
    parser.add_argument("--dry_run", action="store_true", help="print the command and exit")
    parser.add_argument("training_script", help="the training script to run on every card")
    return parser


# Our options that consume the next token as their value.
VALUE_OPTIONS = frozenset({"--world_size", "--hostfile", "--master_addr", "--master_port"})


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split into (our options + script path, the script's arguments).

    argparse.REMAINDER alone is not verbatim: it drops a ``--`` the script was
    meant to get. So we find the script path ourselves: the first token that is
    neither one of our options nor an option's value (or the token after ``--``).
    """
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            return list(argv[: i + 2]), list(argv[i + 2 :])
        if not token.startswith("-") or token == "-":
            return list(argv[: i + 1]), list(argv[i + 1 :])
        if token in VALUE_OPTIONS:
            i += 1  # skip its value, whatever it looks like
        i += 1
    return list(argv), []  # no script: argparse reports it


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ours, script_args = split_argv(sys.argv[1:] if argv is None else argv)
    args = make_parser().parse_args(ours)
    args.training_script_args = script_args
    return args


def read_hostfile(path: str) -> list[HostEntry]:
    """Parse a DeepSpeed/OpenMPI style hostfile (``HOST slots=N`` per line)."""
    if not os.path.exists(path):
        raise SpawnError(f"hostfile not found: {path}")
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SpawnError(f"cannot read hostfile {path}: {reason}") from None
    hosts: list[HostEntry] = []
    seen: set[str] = set()
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        host, *options = line.split()
        slots: int | None = None
        for option in options:
            key, sep, value = option.partition("=")
            if not sep:
                raise SpawnError(f"hostfile {path} line {lineno}: expected 'HOST slots=N', got {raw.strip()!r}")
            if key == "slots":
                try:
                    slots = int(value)
                except ValueError:
                    slots = 0
                if slots < 1:
                    raise SpawnError(f"hostfile {path} line {lineno}: slots must be a positive integer")
            # Other OpenMPI keys (max_slots=...) are mpirun's business.
        if slots is None:
            raise SpawnError(f"hostfile {path} line {lineno}: expected 'HOST slots=N', got {raw.strip()!r}")
        if host in seen:
            # Same rule as DeepSpeed/optimum-habana: a duplicate is a mistake.
            raise SpawnError(f"hostfile {path} line {lineno}: host {host} is listed twice")
        seen.add(host)
        hosts.append(HostEntry(host, slots))
    if not hosts:
        raise SpawnError(f"hostfile {path} lists no hosts")
    return hosts


def detect_cpu_topology() -> tuple[int, int]:
    """Return (sockets, cores per socket) the way optimum-habana reads them: from lscpu.

    The total is capped by our CPU affinity (see the module docstring).
    """
    sockets = cores_per_socket = 0
    try:
        out = subprocess.run(
            ["lscpu"],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "LC_ALL": "C"},
        ).stdout
    except OSError:
        out = ""
    for line in out.splitlines():
        key, _, value = line.partition(":")
        try:
            if key.strip() == "Socket(s)":
                sockets = int(value)
            elif key.strip() == "Core(s) per socket":
                cores_per_socket = int(value)
        except ValueError:
            pass
    allowed = _allowed_cores()
    if sockets < 1 or cores_per_socket < 1:
        # No lscpu (minimal image): treat what we may use as one socket.
        return 1, allowed
    if sockets * cores_per_socket > allowed:
        # Container/cpuset: mpirun (hwloc) can only bind to the allowed cores.
        return 1, allowed
    return sockets, cores_per_socket


def _allowed_cores() -> int:
    """Physical cores this process may run on (hyperthread siblings count once)."""
    try:
        cpus = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        topo = f"/sys/devices/system/cpu/cpu{cpu}/topology"
        try:
            with (
                open(f"{topo}/physical_package_id") as pkg,
                open(f"{topo}/core_id") as core,
            ):
                cores.add((pkg.read().strip(), core.read().strip()))
        except OSError:
            cores.add(("cpu", str(cpu)))  # no sysfs topology: count the CPU itself
    return max(1, len(cores))


def _mpi_mapping(ranks_per_node: int, cpu_topology: tuple[int, int]) -> list[str]:
    sockets, cores_per_socket = cpu_topology
    # optimum-habana: a "socket" of one core means a VM, where socket mapping is meaningless.
    map_by = "slot" if cores_per_socket == 1 else "socket"
    pe = (sockets * cores_per_socket) // ranks_per_node
    if pe < 1:
        # More ranks than cores: PE=0 makes mpirun abort, so run unbound.
        return [
            "--bind-to",
            "none",
            "--map-by",
            "slot",
            "--oversubscribe",
            "--rank-by",
            "slot",
        ]
    return ["--bind-to", "core", "--map-by", f"{map_by}:PE={pe}", "--rank-by", "slot"]


def build_command(
    args: argparse.Namespace,
    environ: Mapping[str, str],
    cpu_topology: tuple[int, int] | None = None,
    *,
    python: str = sys.executable,
    hosts: Sequence[HostEntry] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """Return (argv, env) for the job described by ``args``.

    No process is started. ``cpu_topology`` is (sockets, cores per socket) and
    is detected only when MPI needs it and none is given; ``hosts`` is the
    parsed hostfile and is read from ``args.hostfile`` when not given.
    """
    world_size: int | None = args.world_size
    if world_size is not None and world_size < 1:
        raise SpawnError(f"--world_size must be at least 1, got {world_size}")
    if args.use_mpi and args.use_deepspeed:
        raise SpawnError("--use_mpi and --use_deepspeed cannot be used together")
    port = DEFAULT_MASTER_PORT if args.master_port is None else args.master_port
    if not 1 <= port <= 65535:
        raise SpawnError(f"--master_port must be in 1..65535, got {port}")
    if args.hostfile is not None and hosts is None:
        hosts = read_hostfile(args.hostfile)

    script = [args.training_script, *args.training_script_args]
    env = dict(environ)

    if args.hostfile is not None:
        assert hosts is not None
        first_host = hosts[0].host
        if args.use_deepspeed:
            # DeepSpeed reads the node list and slots itself; world_size is not used.
            argv = [
                "deepspeed",
                "--hostfile",
                args.hostfile,
                "--master_addr",
                args.master_addr or first_host,
            ]
            argv += ["--no_local_rank", "--master_port", str(port)]
            return argv + script, env
        if args.use_mpi:
            total_slots = sum(h.slots for h in hosts)
            n = total_slots if world_size is None else world_size
            if n > total_slots:
                raise SpawnError(f"--world_size {n} exceeds the {total_slots} slots in hostfile {args.hostfile}")
            if cpu_topology is None:
                cpu_topology = detect_cpu_topology()
            env["MASTER_ADDR"] = args.master_addr or first_host
            env["MASTER_PORT"] = str(port)
            argv = ["mpirun", "-n", str(n), "--hostfile", args.hostfile]
            argv += _mpi_mapping(math.ceil(n / len(hosts)), cpu_topology)
            argv += ["--report-bindings", "--allow-run-as-root"]
            # Local ranks inherit mpirun's environment; remote ones only get -x names.
            argv += ["-x", "MASTER_ADDR", "-x", "MASTER_PORT", python]
            return argv + script, env
        # torch.distributed.run would need its own launch on every node.
        raise SpawnError("--hostfile needs --use_deepspeed or --use_mpi (torch.distributed.run is single-node here)")

    n = 1 if world_size is None else world_size
    if n == 1:
        if args.use_deepspeed:
            argv = ["deepspeed", "--num_gpus", "1", "--master_port", str(port)]
            if args.master_addr:
                argv += ["--master_addr", args.master_addr]
            return argv + script, env
        # One card needs no launcher at all (same as optimum-habana, even with --use_mpi).
        return [python, *script], env
    if args.use_deepspeed:
        argv = [
            "deepspeed",
            "--num_nodes",
            "1",
            "--num_gpus",
            str(n),
            "--no_local_rank",
            "--master_port",
            str(port),
        ]
        if args.master_addr:
            argv += ["--master_addr", args.master_addr]
        return argv + script, env
    if args.use_mpi:
        if cpu_topology is None:
            cpu_topology = detect_cpu_topology()
        env["MASTER_ADDR"] = args.master_addr or DEFAULT_MASTER_ADDR
        env["MASTER_PORT"] = str(port)
        argv = ["mpirun", "-n", str(n), *_mpi_mapping(n, cpu_topology)]
        argv += ["--report-bindings", "--allow-run-as-root", python]
        return argv + script, env
    argv = [python, "-um", "torch.distributed.run", f"--nproc_per_node={n}"]
    if args.master_addr:
        argv.append(f"--master_addr={args.master_addr}")
    if args.master_port is not None:
        argv.append(f"--master_port={port}")
    return argv + script, env


def check_launcher(argv: Sequence[str], env: Mapping[str, str]) -> None:
    """Fail early, with the install command, when the launcher is missing."""
    launcher = argv[0]
    if launcher in INSTALL_HINTS:
        # Popen searches the child env's PATH, so check that same PATH.
        if shutil.which(launcher, path=env.get("PATH", os.defpath)) is None:
            raise SpawnError(f"{launcher} not found on PATH; install it with: {INSTALL_HINTS[launcher]}")
    elif "torch.distributed.run" in argv[:4] and importlib.util.find_spec("torch") is None:
        raise SpawnError(f"torch is not installed for {launcher}; install it with: pip install torch")


def run(argv: Sequence[str], env: Mapping[str, str]) -> int:
    """Run the job, forward termination signals to it, return its exit code."""
    child: subprocess.Popen[bytes] | None = None
    pending: list[int] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        if child is None:
            pending.append(signum)  # arrived before the child existed
            return
        try:
            # The whole group: launchers (mpirun, torchrun) and their ranks.
            os.killpg(child.pid, signum)
        except ProcessLookupError:
            pass  # already gone; wait() will collect it

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS}
    try:
        # Own session/process group so one killpg reaches every rank, and so a
        # terminal Ctrl-C is not delivered twice (to us and to the job).
        child = subprocess.Popen(list(argv), env=dict(env), start_new_session=True)
        for signum in pending:
            forward(signum, None)
        returncode = child.wait()
    finally:
        for sig, handler in previous.items():
            # None means a handler set outside Python, which cannot be put back.
            if handler is not None:
                signal.signal(sig, handler)
    # Shell convention for "killed by signal N".
    return 128 - returncode if returncode < 0 else returncode


def _error(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if not os.path.isfile(args.training_script):
            raise SpawnError(f"training script not found: {args.training_script}")
        command, env = build_command(args, os.environ)
        # Show what we set besides the command (MASTER_ADDR/PORT), on stderr so
        # stdout stays the job's (or, with --dry_run, exactly the command line).
        extra = {k: v for k, v in env.items() if os.environ.get(k) != v}
        shown = "".join(f"{k}={shlex.quote(v)} " for k, v in sorted(extra.items()))
        if args.dry_run:
            if shown:
                print(f"[{PROG}] environment: {shown.strip()}", file=sys.stderr)
            print(shlex.join(command))
            return 0
        check_launcher(command, env)
    except SpawnError as exc:
        return _error(str(exc))
    print(f"[{PROG}] {shown}{shlex.join(command)}", file=sys.stderr, flush=True)
    try:
        return run(command, env)
    except OSError as exc:
        return _error(f"cannot start {command[0]}: {exc.strerror or exc}")


if __name__ == "__main__":
    sys.exit(main())
