"""Stage 1 — supervised fine-tuning: teach a base model to answer ``system + question`` with the ``chosen`` answer.

    python sft.py --model_name_or_path M --dataset_name data/orca_sample/train.jsonl --output_dir out/sft
    python sft.py --config sft.yaml                      (flags in a YAML file; command-line flags override it)
    torchrun --nnodes 1 --nproc_per_node 8 sft.py --model_name_or_path M --bf16 True \\
        --dataset_name Intel/orca_dpo_pairs --dataset_concatenation --per_device_train_batch_size 2 \\
        --gradient_accumulation_steps 4 --learning_rate 1e-4 --num_train_epochs 3 --output_dir out/sft --peft lora
    accelerate launch --num_processes 8 sft.py ...        (same flags)
    python3 gaudi_spawn.py --world_size 8 --use_mpi sft.py <same flags> --device hpu --use_habana --use_lazy_mode

Loss is on the answer tokens only. LoRA by default (``--peft none`` for a full fine-tune). The output folder holds
a merged model that loads with ``AutoModelForCausalLM``, the adapter in ``adapter/``, the tokenizer (pad distinct
from EOS), ``prompt_format.json`` (reused by the reward-model and PPO stages), ``metrics.json`` and, written
last, ``COMPLETE.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rlhf.data.encoding import sft_features
from rlhf.models.arguments import ModelArguments
from rlhf.models.loading import check_causal_lm_folder, check_lora_targets, load_causal_lm
from rlhf.runtime.stack import build_sft_trainer, trainer_config_base
from rlhf.stages.trainer_stage import Run, TrainerStage


@dataclass
class ScriptArguments:
    dataset_concatenation: bool = field(
        default=False,
        metadata={
            "help": "Pack several examples into each sequence of --max_length tokens (TRL packing; the "
            "answer-only loss is kept)."
        },
    )


@dataclass
class SFTModelArguments(ModelArguments):
    """The base model; LoRA r 8 / alpha 16 / dropout 0.05 unless given."""


@dataclass
class SFTArguments(trainer_config_base("sft")):
    """TRL's SFTConfig (its flags on the Gaudi stack: rlhf.runtime.gaudi) with this project's defaults."""

    output_dir: str = field(default="out/sft", metadata={"help": "Where the model and checkpoints go."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N optimizer steps."})
    max_length: int | None = field(
        default=1024, metadata={"help": "Longest prompt + answer in tokens; longer pairs are dropped and counted."}
    )


def configure(run: Run) -> None:
    check_causal_lm_folder(run.model_args.model_name_or_path, "model_name_or_path")  # not a reward model folder
    run.train_args.packing = run.script.dataset_concatenation or run.train_args.packing
    if run.train_args.completion_only_loss is None:
        run.train_args.completion_only_loss = True


def load_model(run: Run) -> tuple[Any, dict[str, Any]]:
    """The base model; the trainer wraps it in the LoRA adapter itself."""
    args = run.model_args
    model = load_causal_lm(
        args.model_name_or_path,
        run.tokenizer,
        token=run.hub.token,
        dtype=args.dtype,
        trust_remote_code=args.trust_remote_code,
        quantization=run.quantization,
    )
    peft_config = args.peft_config("CAUSAL_LM")
    if peft_config is not None:
        check_lora_targets(model, peft_config)
    return model, {"peft_config": peft_config}


def after_training(run: Run, trainer: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Loss on the held-out pairs, when there are any."""
    return ({"eval": trainer.evaluate()} if run.eval_rows else {}), {}


SFT = TrainerStage(
    name="sft",
    usage=__doc__,
    arguments=(ScriptArguments, SFTModelArguments, SFTArguments),
    features=sft_features,
    load_model=load_model,
    build_trainer=build_sft_trainer,  # TRL's SFTTrainer; GaudiSFTTrainer on the Gaudi stack
    configure=configure,
    after_training=after_training,
)


main, cli = SFT.main, SFT.cli  # what the top-level script and the console command run

if __name__ == "__main__":  # python -m rlhf.scripts.sft
    cli()
