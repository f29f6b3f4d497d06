"""Which precision a stage runs in: native-bf16 detection, per-stage defaults, the precision flags."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from rlhf.errors import UsageError
from rlhf.runtime.device import module_available

if TYPE_CHECKING:  # annotations only
    from rlhf.runtime.backend import Backend

NATIVE_BF16_ENV = "RLHF_NATIVE_BF16"


STAGES = ("sft", "rm", "ppo", "evaluate")


# Whether a stage trains (or, for evaluate, samples) faster in bf16 autocast than in fp32, per kind of host that runs
# bf16 natively. Decided from `make bench` on such hosts (BENCHMARKS.md, "Precision"), not assumed: a stage defaults to
# bf16 only where its bf16 run was measured faster. Hosts that would emulate bf16 default to fp32 everywhere.
# cpu (a 2-core Xeon with AVX512-BF16/AMX, one thread per process; bf16 over fp32 speed, interleaved estimates): SFT
# 1.31x (LoRA 1.06x), reward model 1.30x (LoRA 1.28x), sampling + scoring 1.53x; the PPO update 0.82x and 1.13x in two
# rounds (minibatches of 2 rollouts: a faster forward, a slower backward), not reliably faster, so PPO stays fp32.
BF16_FASTER = {
    "hpu": {"sft": True, "rm": True, "ppo": True, "evaluate": True},
    "cuda": {"sft": True, "rm": True, "ppo": True, "evaluate": True},
    "cpu": {"sft": True, "rm": True, "ppo": False, "evaluate": True},
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
    if module_available("habana_frameworks"):
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
