"""The one place that knows about devices: CPU, CUDA (through accelerate/Trainer) or Intel Gaudi.

Scripts call ``select_backend(args)`` and ask the result; they never branch on the device themselves.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from rlhf.errors import UsageError

logger = logging.getLogger("rlhf.runtime.backend")


GAUDI_INSTALL_HINT = (
    "install Habana's SynapseAI software with its PyTorch bridge (habana_frameworks, see Habana's installation "
    "guide) and then `pip install -r requirements-gaudi.txt -c constraints-gaudi.txt`"
)


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

    def supports_bf16(self) -> bool:
        if self.name == "cuda":
            return torch.cuda.is_bf16_supported()
        return True  # CPUs run bf16 (natively with AMX/AVX512-BF16, emulated otherwise); HPUs natively

    def quantization_config(self, load_in_4bit: bool, load_in_8bit: bool, compute_dtype: Any = None) -> Any:
        """A bitsandbytes config for QLoRA, or None. Quantized loading exists only on CUDA."""
        if not (load_in_4bit or load_in_8bit):
            return None
        flag = "--load_in_4bit" if load_in_4bit else "--load_in_8bit"
        if load_in_4bit and load_in_8bit:
            raise UsageError("--load_in_4bit and --load_in_8bit are exclusive: pick one")
        if self.name != "cuda":
            raise UsageError(
                f"{flag}: quantized loading needs a CUDA GPU with bitsandbytes; this run is on {self.name}"
            )
        if not _find_spec_safe("bitsandbytes"):
            raise UsageError(f"{flag}: bitsandbytes is not installed (pip install bitsandbytes)")
        from transformers import BitsAndBytesConfig

        if load_in_8bit:
            return BitsAndBytesConfig(load_in_8bit=True)
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype or torch.bfloat16,
        )


def habana_available() -> bool:
    """True when both the Habana PyTorch bridge and optimum-habana are importable."""
    return all(importlib.util.find_spec(m) is not None for m in ("habana_frameworks", "optimum.habana"))


def select_backend(args: BackendArguments) -> Backend:
    """Pick the backend from the flags and the machine. ``--use_habana`` without Habana software stops at once."""
    use_habana = args.use_habana or (args.device or "").lower() == "hpu"
    if use_habana:
        if not _find_spec_safe("habana_frameworks"):
            raise UsageError(f"--use_habana: the Habana software is not installed; {GAUDI_INSTALL_HINT}")
        if not _find_spec_safe("optimum.habana"):
            raise UsageError(f"--use_habana: optimum-habana is not installed; {GAUDI_INSTALL_HINT}")
        from rlhf.runtime.gaudi import prepare_hpu
        from rlhf.runtime.stack import on_gaudi_stack

        if not on_gaudi_stack():
            raise UsageError(
                f"--use_habana: optimum-habana needs trl 0.9.6 (this environment has TRL 1.x); {GAUDI_INSTALL_HINT}"
            )
        prepare_hpu(args.use_lazy_mode)
        return Backend("hpu", lazy_mode=args.use_lazy_mode)
    if args.use_lazy_mode:
        logger.warning("--use_lazy_mode has no effect without --use_habana")
    from rlhf.runtime.gaudi import import_optimum_habana
    from rlhf.runtime.stack import on_gaudi_stack

    if on_gaudi_stack():  # its trainers do the work: without the Habana software, stop now, not after loading
        import_optimum_habana()
    if (args.device or "").lower() == "cpu" or not torch.cuda.is_available():
        return Backend("cpu")
    return Backend("cuda")


def _find_spec_safe(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


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
