"""The SFT and reward stages' flag classes on the Gaudi stack: TRL 1.x's flag names on top of transformers 4.55's
``TrainingArguments`` (trl 0.9.6's SFTConfig/RewardConfig name them differently; rlhf.runtime.gaudi).

A module of its own because importing ``TrainingArguments`` imports transformers' trainer utilities and, through
them, peft: the PPO script, which never builds a ``TrainingArguments``, no longer imports peft for a full fine-tune
(~16 MB less resident memory at start; the Llama module itself still brings in torch._dynamo and sympy).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments


@dataclass
class _LegacyTrainingArguments(TrainingArguments):
    """transformers 4.55's TrainingArguments less what the scripts define themselves (rlhf.stages.flags)."""

    overwrite_output_dir: bool = field(default=False, init=False)  # --overwrite_output_dir: StageArguments'


@dataclass
class LegacySFTConfig(_LegacyTrainingArguments):
    """The SFTConfig flags the scripts use, for the Gaudi stack (trl 0.9.6 names them differently)."""

    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model repos to run their own code."})
    max_length: int | None = field(default=1024, metadata={"help": "Longest prompt + answer in tokens."})
    packing: bool = field(default=False, metadata={"help": "Pack several examples into each --max_length row."})
    completion_only_loss: bool | None = field(
        default=None, metadata={"help": "Loss on the answer tokens only (default: yes)."}
    )


@dataclass
class LegacyRewardConfig(_LegacyTrainingArguments):
    """The RewardConfig flags the scripts use, for the Gaudi stack (trl 0.9.6's RewardConfig differs)."""

    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model repos to run their own code."})
    max_length: int | None = field(default=1024, metadata={"help": "Longest prompt + answer in tokens."})
