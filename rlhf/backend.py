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

from rlhf.cli import UsageError

logger = logging.getLogger("rlhf.backend")

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
        from rlhf.gaudi import on_gaudi_stack, prepare_hpu

        if not on_gaudi_stack():
            raise UsageError(
                f"--use_habana: optimum-habana needs trl 0.9.6 (this environment has TRL 1.x); {GAUDI_INSTALL_HINT}"
            )
        prepare_hpu(args.use_lazy_mode)
        return Backend("hpu", lazy_mode=args.use_lazy_mode)
    if args.use_lazy_mode:
        logger.warning("--use_lazy_mode has no effect without --use_habana")
    from rlhf.gaudi import import_optimum_habana, on_gaudi_stack

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


NATIVE_BF16_ENV = "RLHF_NATIVE_BF16"
STAGES = ("sft", "rm", "ppo", "evaluate")

# Whether a stage trains (or, for evaluate, samples) faster in bf16 autocast than in fp32, per kind of host that runs
# bf16 natively. Decided from `make bench` on such hosts (BENCHMARKS.md, "Precision"), not assumed: a stage defaults to
# bf16 only where its bf16 run was measured faster. Hosts that would emulate bf16 default to fp32 everywhere.
BF16_FASTER = {
    "hpu": {"sft": True, "rm": True, "ppo": True, "evaluate": True},
    "cuda": {"sft": True, "rm": True, "ppo": True, "evaluate": True},
    "cpu": {"sft": True, "rm": True, "ppo": True, "evaluate": True},
}


def native_bf16(environ: dict[str, str] | None = None) -> bool:
    """Whether this host computes bf16 natively: Gaudi, CUDA with bf16 support, or a CPU with AVX512-BF16/AMX.

    On CPUs without them bf16 matmuls are emulated and several times slower than fp32. ``RLHF_NATIVE_BF16=0|1``
    overrides the detection everywhere a default depends on it, so a test suite can run as if on the other kind of
    host.
    """
    env = os.environ if environ is None else environ
    forced = env.get(NATIVE_BF16_ENV, "").strip().lower()
    if forced:
        if forced in ("1", "true", "yes"):
            return True
        if forced in ("0", "false", "no"):
            return False
        raise UsageError(f"{NATIVE_BF16_ENV}={env[NATIVE_BF16_ENV]!r}: expected 0 or 1")
    if _host_kind() == "hpu":
        return True
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, name, lambda: False)() for name in checks)


def default_bf16(stage: str, environ: dict[str, str] | None = None) -> bool:
    """The default precision of ``stage`` (sft, rm, ppo, evaluate) on this host: bf16 autocast where bf16 is native
    and the stage was measured faster in it (``BF16_FASTER``), fp32 elsewhere."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}")
    if not native_bf16(environ):
        return False
    return BF16_FASTER[_host_kind()][stage]


def _host_kind() -> str:
    if _find_spec_safe("habana_frameworks"):
        return "hpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class PrecisionArguments:
    """Mixed precision for the stages that run on accelerate directly (PPO, evaluation); the Trainer-based stages
    take the same two flags from TrainingArguments."""

    bf16: bool | None = field(
        default=None,
        metadata={
            "help": "bf16 mixed precision: every forward (sampling, log-probs, values, reference, reward model) runs "
            "under bf16 autocast; weights and optimizer state stay in --torch_dtype (float32). Default: accelerate's "
            "config or ACCELERATE_MIXED_PRECISION when set, else on where bf16 is native and measured faster for "
            "this stage (README, Precision). --torch_dtype bfloat16 instead stores the weights themselves in bf16."
        },
    )
    fp16: bool | None = field(
        default=None, metadata={"help": "fp16 mixed precision with loss scaling (CUDA GPUs only)."}
    )

    def mixed_precision(self, stage: str, backend: Backend, environ: dict[str, str] | None = None) -> str:
        """``no``, ``bf16`` or ``fp16``: the flags if given, else accelerate's setting, else the stage's default."""
        env = os.environ if environ is None else environ
        if self.bf16 and self.fp16:
            raise UsageError("--bf16 and --fp16 are exclusive: pick one")
        if self.bf16 is not None or self.fp16 is not None:
            choice = "bf16" if self.bf16 else "fp16" if self.fp16 else "no"
        elif env.get("ACCELERATE_MIXED_PRECISION"):
            choice = env["ACCELERATE_MIXED_PRECISION"].strip().lower()
            if choice not in ("no", "bf16", "fp16"):
                raise UsageError(f"ACCELERATE_MIXED_PRECISION={choice}: expected no, bf16 or fp16")
        else:
            choice = "bf16" if default_bf16(stage, env) else "no"
        if choice == "fp16" and backend.name != "cuda":
            raise UsageError(f"--fp16: fp16 mixed precision needs a CUDA GPU (this run is on {backend.name}); use bf16")
        return choice


def autocast(mixed_precision: str, device_type: str) -> Any:
    """The autocast context of ``mixed_precision`` (no, bf16, fp16) on ``device_type``, for code that runs models
    without an accelerate ``Accelerator`` (evaluation)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)
    return torch.autocast(device_type=device_type, dtype=dtype, enabled=dtype is not None)


# ----------------------------------------------------------------------------------------------------------------
# Trainers and accelerator for this backend: TRL's and accelerate's, or optimum-habana's where that stack is installed


def build_sft_trainer(backend: Backend, backend_args: BackendArguments, **kwargs: Any) -> Any:
    """TRL's SFTTrainer, or GaudiSFTTrainer on the Gaudi stack (rlhf.gaudi). ``kwargs``: SFTTrainer's names."""
    from rlhf.gaudi import gaudi_sft_trainer, on_gaudi_stack

    if on_gaudi_stack():
        return gaudi_sft_trainer(backend, backend_args, **kwargs)
    import trl

    return trl.SFTTrainer(**kwargs)


def build_reward_trainer(backend: Backend, backend_args: BackendArguments, **kwargs: Any) -> Any:
    """TRL's RewardTrainer, or GaudiRewardTrainer on the Gaudi stack (rlhf.gaudi). ``kwargs``: RewardTrainer's."""
    from rlhf.gaudi import gaudi_reward_trainer, on_gaudi_stack

    if on_gaudi_stack():
        return gaudi_reward_trainer(backend, backend_args, **kwargs)
    import trl

    return trl.RewardTrainer(**kwargs)


def build_accelerator(backend: Backend, **kwargs: Any) -> Any:
    """accelerate's Accelerator, or GaudiAccelerator on the Gaudi stack."""
    from rlhf.gaudi import gaudi_accelerator, on_gaudi_stack

    if on_gaudi_stack():
        return gaudi_accelerator(backend, **kwargs)
    from accelerate import Accelerator

    return Accelerator(cpu=backend.name == "cpu", **kwargs)


def device_runtime(backend: Backend) -> Any:
    """The PPO engine's device hooks: lazy-mode mark_step and HPU graphs on Gaudi, nothing elsewhere."""
    from rlhf.gaudi import GaudiRuntime

    return GaudiRuntime.for_backend(backend)
