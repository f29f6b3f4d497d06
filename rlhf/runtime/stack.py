"""The one seam between the two library stacks: TRL 1.x + accelerate, or optimum-habana (Gaudi).

Scripts and the PPO engine ask here for trainers, the accelerator and device hooks; only this module reaches
``rlhf.runtime.gaudi``."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rlhf.cli import cpu_only
from rlhf.errors import UsageError
from rlhf.runtime.device import module_available
from rlhf.runtime.distributed import world_size
from rlhf.runtime.gaudi import (
    GAUDI_INSTALL_HINT,
    GaudiRuntime,
    gaudi_accelerator,
    gaudi_reward_trainer,
    gaudi_sft_trainer,
    import_optimum_habana,
    prepare_hpu,
)
from rlhf.runtime.precision import default_bf16

if TYPE_CHECKING:  # annotations only: the backend module imports this one
    from rlhf.runtime.backend import Backend, BackendArguments


def build_sft_trainer(backend: Backend, backend_args: BackendArguments, **kwargs: Any) -> Any:
    """TRL's SFTTrainer, or GaudiSFTTrainer on the Gaudi stack (rlhf.runtime.gaudi). ``kwargs``: SFTTrainer's names."""
    if on_gaudi_stack():
        return gaudi_sft_trainer(backend, backend_args, **kwargs)
    import trl

    return trl.SFTTrainer(**kwargs)


def build_reward_trainer(
    backend: Backend,
    backend_args: BackendArguments,
    length_groups: int = 1,
    share_prompts: bool = False,
    **kwargs: Any,
) -> Any:
    """TRL's RewardTrainer, or GaudiRewardTrainer on the Gaudi stack (rlhf.runtime.gaudi); ``kwargs``: its names.
    How a training batch is computed (``RewardBatchArguments``, checked there): ``length_groups`` above 1, in that
    many forwards of rows of similar length (rlhf.models.reward.LengthGroupedCall); ``share_prompts``, each pair's
    prompt once (rlhf.models.reward.SharedPromptCall)."""
    if on_gaudi_stack():
        return gaudi_reward_trainer(backend, backend_args, **kwargs)
    if share_prompts:
        from rlhf.models.reward import shared_prompt_reward_trainer

        return shared_prompt_reward_trainer(length_groups, **kwargs)
    if length_groups > 1:
        from rlhf.models.reward import length_grouped_reward_trainer

        return length_grouped_reward_trainer(length_groups, **kwargs)
    import trl

    return trl.RewardTrainer(**kwargs)


@dataclass
class RewardBatchArguments:
    """How reward_modeling computes a training batch, instead of TRL's one padded forward (both: the same loss up to
    rounding, for less work; one process, no FSDP/DeepSpeed/Gaudi)."""

    length_groups: int = field(
        default=1,
        metadata={
            "help": "Forwards per training batch, each of sequences of similar length cut after its longest: less "
            "padding computed, the same loss. 1: TRL's one padded forward. With --share_prompts: groups of pairs of "
            "similar prompt length, each in its own prompt and answer forwards. One process, no FSDP/DeepSpeed/Gaudi."
        },
    )
    share_prompts: bool = field(
        default=False,
        metadata={
            "help": "Compute each pair's prompt (the tokens its two answers start with) once for both, and the "
            "answers from its key-value cache: the same loss up to rounding, for less work where prompts are long "
            "(with dropout on, --disable_dropout False, one mask per prompt). One process, no FSDP/DeepSpeed/Gaudi, "
            "no --gradient_checkpointing."
        },
    )

    def __post_init__(self) -> None:
        check_reward_batching(self)


def check_reward_batching(batch: RewardBatchArguments, train_args: Any = None, backend: Backend | None = None) -> None:
    """``RewardBatchArguments`` that can work: a positive --length_groups; above 1, or --share_prompts, only where a
    batch may be computed in several forwards of other shapes: one process (checked before the Trainer's flags set
    up distribution), no FSDP or DeepSpeed (checked with ``train_args``), no Gaudi (lazy mode compiles one graph per
    shape)."""
    groups = batch.length_groups
    if groups < 1:
        raise UsageError(f"--length_groups: expected a positive integer, got {groups}")
    if groups == 1 and not batch.share_prompts:
        return
    flag = "--share_prompts" if batch.share_prompts else f"--length_groups {groups}"
    use = "leave --share_prompts off" if batch.share_prompts else "use 1"
    needs = (
        (world_size() > 1, "one process (WORLD_SIZE > 1 here)"),
        (train_args is not None and bool(train_args.fsdp or train_args.deepspeed), "no FSDP or DeepSpeed"),
        (on_gaudi_stack() or (backend is not None and backend.is_gaudi), "no Gaudi (lazy mode wants one shape)"),
        (
            batch.share_prompts and train_args is not None and bool(train_args.gradient_checkpointing),
            "the key-value cache, which --gradient_checkpointing turns off",
        ),
    )
    for refused, need in needs:
        if refused:
            raise UsageError(f"{flag}: needs {need}; {use}")


def build_accelerator(backend: Backend, **kwargs: Any) -> Any:
    """accelerate's Accelerator, or GaudiAccelerator on the Gaudi stack."""
    if on_gaudi_stack():
        return gaudi_accelerator(backend, **kwargs)
    from accelerate import Accelerator

    return Accelerator(cpu=backend.name == "cpu", **kwargs)


def device_runtime(backend: Backend) -> Any:
    """The PPO engine's device hooks: lazy-mode mark_step and HPU graphs on Gaudi, nothing elsewhere."""
    return GaudiRuntime.for_backend(backend)


# TRL releases that optimum-habana's trl integration builds on (it pins 0.9.6; TRL 1.x removed that API).
LEGACY_TRL_MAJOR = 0


def on_gaudi_stack() -> bool:
    """True when the installed libraries are the optimum-habana stack (optimum-habana with TRL 0.x)."""
    try:
        trl_major = int(importlib.metadata.version("trl").split(".")[0])
    except importlib.metadata.PackageNotFoundError:
        return False
    if trl_major > LEGACY_TRL_MAJOR:
        return False
    try:
        return importlib.util.find_spec("optimum.habana") is not None
    except (ImportError, ValueError):
        return False


def trainer_config_base(kind: str) -> type:
    """The dataclass a Trainer stage's flags extend (``kind``: sft or reward): TRL's SFTConfig/RewardConfig (the
    Gaudi stack's stand-ins for them there), with what every Trainer stage here shares: bf16 by default only where
    it is native and measured faster (decided when the flags are parsed, so RLHF_NATIVE_BF16 counts), the CPU when
    there is no GPU, and --trust_remote_code taken from the model flags (rlhf.models.arguments)."""
    if on_gaudi_stack():
        from rlhf.runtime.gaudi_configs import LegacyRewardConfig, LegacySFTConfig

        base = {"sft": LegacySFTConfig, "reward": LegacyRewardConfig}[kind]
    else:
        import trl

        base = {"sft": trl.SFTConfig, "reward": trl.RewardConfig}[kind]
    stage = {"sft": "sft", "reward": "rm"}[kind]

    @dataclass
    class TrainerConfig(base):
        use_cpu: bool = field(default=cpu_only(), metadata={"help": "Train on the CPU (default: when no GPU)."})
        bf16: bool | None = field(
            default=None,
            metadata={
                "help": "bf16 mixed precision (autocast; weights and optimizer state stay float32). Default: on where "
                "bf16 is native (recent GPUs, Gaudi, CPUs with AVX512-BF16/AMX) and measured faster for this stage, "
                "off where it would be emulated (README, Precision; RLHF_NATIVE_BF16=0|1 overrides the detection)."
            },
        )
        trust_remote_code: bool = field(default=False, init=False)  # --trust_remote_code: the model flags'
        do_train: bool = field(
            default=True,
            metadata={
                "help": "Always true: the stage trains (accepted for the reference command line; false is refused)."
            },
        )

        def __post_init__(self) -> None:
            if self.bf16 is None:
                self.bf16 = default_bf16(stage) and not self.fp16
            super().__post_init__()

    TrainerConfig.__name__ = TrainerConfig.__qualname__ = base.__name__
    return TrainerConfig


def prepare_stack(use_habana: bool, lazy_mode: bool) -> None:
    """Check that the installed libraries fit the run, before anything is loaded. ``--use_habana`` needs the Habana
    software and the optimum-habana stack, and sets the HPU up (before any model exists); on the optimum-habana
    stack without it, optimum-habana must still import, since its trainers do the work."""
    if use_habana:
        if not module_available("habana_frameworks"):
            raise UsageError(f"--use_habana: the Habana software is not installed; {GAUDI_INSTALL_HINT}")
        if not module_available("optimum.habana"):
            raise UsageError(f"--use_habana: optimum-habana is not installed; {GAUDI_INSTALL_HINT}")
        if not on_gaudi_stack():
            raise UsageError(
                f"--use_habana: optimum-habana needs trl 0.9.6 (this environment has TRL 1.x); {GAUDI_INSTALL_HINT}"
            )
        prepare_hpu(lazy_mode)
    elif on_gaudi_stack():
        import_optimum_habana()
