"""The one place that knows about devices: CPU, CUDA (through accelerate/Trainer) or Intel Gaudi.

Scripts call ``select_backend(args)`` and ask the result; they never branch on the device themselves.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch

logger = logging.getLogger("rlhf.runtime.backend")


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
            "help": "Accepted for compatibility with the reference command line: 'hpu' is the same as "
            "--use_habana, 'cpu' forces the CPU; otherwise the device is chosen automatically."
        },
    )


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
    use_habana = args.use_habana or (args.device or "").lower() == "hpu"
    if args.use_lazy_mode and not use_habana:
        logger.warning("--use_lazy_mode has no effect without --use_habana")
    from rlhf.runtime.stack import prepare_stack

    prepare_stack(use_habana, args.use_lazy_mode)  # the libraries fit the run; the HPU set up before any model
    if use_habana:
        return Backend("hpu", lazy_mode=args.use_lazy_mode)
    if (args.device or "").lower() == "cpu" or not torch.cuda.is_available():
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
