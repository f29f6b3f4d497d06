"""The one place that knows about devices: CPU, CUDA (through accelerate/Trainer) or Intel Gaudi.

Scripts call ``select_backend(args)`` and ask the result; they never branch on the device themselves.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field

import torch

from rlhf.errors import UsageError

logger = logging.getLogger("rlhf.runtime.backend")

DEVICES = ("cpu", "cuda", "hpu")  # --device values: where a run goes, never which card (CUDA_VISIBLE_DEVICES)


@dataclass
class BackendArguments:
    """Device flags. Gaudi flags are accepted everywhere; they act only with --use_habana."""

    use_habana: bool = field(default=False, metadata={"help": "Run on Intel Gaudi (HPU) through optimum-habana."})
    use_lazy_mode: bool = field(
        default=False, metadata={"help": "Gaudi lazy mode (graph accumulation with mark_step). Only with --use_habana."}
    )
    gaudi_config_name: str | None = field(
        default=None,
        metadata={"help": "Gaudi config (hub name or local path) for fused ops and autocast. Only with --use_habana."},
    )
    device: str | None = field(
        default=None,
        metadata={
            "help": "cpu, cuda or hpu (the reference command line's --device hpu is the same as --use_habana). "
            "Default: chosen automatically (CUDA when there is a GPU). A GPU index (cuda:1) is refused: pick GPUs "
            "with CUDA_VISIBLE_DEVICES, or one per process with torchrun / accelerate launch."
        },
    )

    def __post_init__(self) -> None:
        # Checked while parsing: a value that was ignored before (cuda:1, gpu) must not quietly run elsewhere.
        if self.device is None:
            return
        name = self.device.strip().lower()
        if re.fullmatch(r"cuda:\d+", name):
            raise UsageError(
                f"--device {self.device}: choosing a GPU by index is not supported; use CUDA_VISIBLE_DEVICES="
                f"{name.split(':')[1]} (one process) or torchrun / accelerate launch (one GPU per process)"
            )
        if name not in DEVICES:
            raise UsageError(f"--device {self.device}: expected one of {', '.join(DEVICES)}")
        self.device = name


@dataclass(frozen=True)
class Backend:
    """What the scripts need to know about where they run."""

    name: str  # "cpu", "cuda" or "hpu"
    lazy_mode: bool = False

    @property
    def is_gaudi(self) -> bool:
        return self.name == "hpu"


def select_backend(args: BackendArguments) -> Backend:
    """Pick the backend from the flags and the machine. ``--use_habana`` without Habana software stops at once."""
    use_habana = args.use_habana or args.device == "hpu"
    if args.use_habana and args.device in ("cpu", "cuda"):
        raise UsageError(f"--use_habana and --device {args.device} contradict each other: give one")
    if args.use_lazy_mode and not use_habana:
        logger.warning("--use_lazy_mode has no effect without --use_habana")
    from rlhf.runtime.stack import prepare_stack

    prepare_stack(use_habana, args.use_lazy_mode)  # the libraries fit the run; the HPU set up before any model
    if use_habana:
        return Backend("hpu", lazy_mode=args.use_lazy_mode)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is visible here (leave --device out to run on the CPU)")
    if args.device == "cpu" or not torch.cuda.is_available():
        return Backend("cpu")
    return Backend("cuda")


def adopt_mpi_environment(environ: dict[str, str] | None = None) -> None:
    """Fill RANK/WORLD_SIZE/LOCAL_RANK from MPI's variables when a script was started by ``mpirun``.

    torch.distributed reads the torchrun variables; Open MPI and MPICH/Intel MPI set their own. Values already set
    (torchrun, accelerate) win. MASTER_ADDR/MASTER_PORT come from the launcher (gaudi_spawn.py sets them).
    """
    env = os.environ if environ is None else environ
    if "RANK" in env:
        return
    pairs = (
        ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"),
        ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"),
    )
    for rank, size, local_rank, local_size in pairs:
        if rank in env and size in env:
            env["RANK"] = env[rank]
            env["WORLD_SIZE"] = env[size]
            env["LOCAL_RANK"] = env.get(local_rank, env[rank])
            env["LOCAL_WORLD_SIZE"] = env.get(local_size, env[size])
            env.setdefault("MASTER_ADDR", "127.0.0.1")
            env.setdefault("MASTER_PORT", "29500")
            return
