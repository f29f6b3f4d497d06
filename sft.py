"""Stage 1 — supervised fine-tuning: teach a base model to answer ``system + question`` with the ``chosen`` answer.

    python sft.py --model_name_or_path M --dataset_name data/orca_sample/train.jsonl --output_dir out/sft
    torchrun --nnodes 1 --nproc_per_node 8 sft.py --model_name_or_path M --bf16 True \
        --dataset_name Intel/orca_dpo_pairs --dataset_concatenation --per_device_train_batch_size 2 \
        --gradient_accumulation_steps 4 --learning_rate 1e-4 --num_train_epochs 3 --output_dir out/sft --peft lora
    accelerate launch --num_processes 8 sft.py ...        (same flags)
    python3 gaudi_spawn.py --world_size 8 --use_mpi sft.py <same flags> --device hpu --use_habana --use_lazy_mode

Loss is on the answer tokens only. LoRA by default (``--peft none`` for a full fine-tune). The output folder holds
a merged model that loads with ``AutoModelForCausalLM``, the adapter in ``adapter/``, the tokenizer (pad distinct
from EOS), ``prompt_format.json`` (reused by the reward-model and PPO stages), ``metrics.json`` and, written
last, ``COMPLETE.json``. Every flag is documented by ``python sft.py --help``.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

from transformers import HfArgumentParser, set_seed

from rlhf.cli import cpu_only, drop_debug_switch, parse_bool, parse_dataclasses, setup_logging
from rlhf.data.encoding import encode_split, sft_features
from rlhf.data.pairs import DataArguments, load_pairs
from rlhf.data.prompt_format import resolve_prompt_format
from rlhf.errors import EXIT_PREEMPTED, UsageError, run_main
from rlhf.models.arguments import LoraArguments
from rlhf.models.loading import (
    check_causal_lm_folder,
    check_lora_targets,
    load_causal_lm,
    load_tokenizer,
    resolve_dtype,
)
from rlhf.outputs.folders import start_output
from rlhf.outputs.trainer_checkpoints import resolve_resume
from rlhf.runtime.backend import BackendArguments, adopt_mpi_environment, select_backend
from rlhf.runtime.distributed import check_quantized_launch
from rlhf.runtime.precision import default_bf16
from rlhf.runtime.stack import build_sft_trainer, trainer_config_base
from rlhf.secrets import HubArguments, protect_secrets
from rlhf.stages.flags import StageArguments, accept_legacy_training_flags, check_training_flags
from rlhf.stages.guard import TrainingGuard
from rlhf.stages.saving import save_stage_output

logger = logging.getLogger("sft")


@dataclass
class ScriptArguments:
    model_name_or_path: str = field(metadata={"help": "Base model: hub name or local folder."})
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer, if not the model's own."})
    use_fast_tokenizer: str = field(default="true", metadata={"help": "Use the fast (Rust) tokenizer: true/false."})
    torch_dtype: str | None = field(
        default=None, metadata={"help": "Weights dtype when loading: auto, bfloat16, float16, float32."}
    )
    peft: str = field(default="lora", metadata={"help": "lora (default) or none for a full fine-tune."})
    load_in_4bit: bool = field(default=False, metadata={"help": "QLoRA: load the base in 4 bit (CUDA + bitsandbytes)."})
    load_in_8bit: bool = field(default=False, metadata={"help": "Load the base in 8 bit (CUDA + bitsandbytes)."})
    dataset_concatenation: bool = field(
        default=False,
        metadata={
            "help": "Pack several examples into each sequence of --max_length tokens (TRL packing; the "
            "answer-only loss is kept)."
        },
    )


@dataclass
class SFTArguments(trainer_config_base("sft")):
    """TRL's SFTConfig (its flags on the Gaudi stack: rlhf.runtime.gaudi) with this project's defaults."""

    output_dir: str = field(default="out/sft", metadata={"help": "Where the model and checkpoints go."})
    use_cpu: bool = field(default=cpu_only(), metadata={"help": "Train on the CPU (default: when no GPU)."})
    bf16: bool | None = field(
        default=None,
        metadata={
            "help": "bf16 mixed precision (autocast; weights and optimizer state stay float32). Default: on where "
            "bf16 is native (recent GPUs, Gaudi, CPUs with AVX512-BF16/AMX) and measured faster for this stage, "
            "off where it would be emulated (README, Precision; RLHF_NATIVE_BF16=0|1 overrides the detection)."
        },
    )
    logging_steps: float = field(default=10, metadata={"help": "Log every N optimizer steps."})
    max_length: int | None = field(
        default=1024, metadata={"help": "Longest prompt + answer in tokens; longer pairs are dropped and counted."}
    )

    def __post_init__(self) -> None:
        if self.bf16 is None:  # decided when the flags are parsed (not at import), so the environment counts
            self.bf16 = default_bf16("sft") and not self.fp16
        super().__post_init__()


def main(argv: list[str] | None = None) -> int:
    # ------------------------------------------------------------------ arguments
    adopt_mpi_environment()
    # TRL's own default (gradient_checkpointing=True) trips transformers 5's rename warning on every run.
    warnings.filterwarnings("ignore", message="`gradient_checkpointing` is deprecated", category=FutureWarning)
    argv = drop_debug_switch(argv)  # --debug: full tracebacks (run_main); not the Trainer's --debug <features>
    parser = HfArgumentParser(
        (ScriptArguments, StageArguments, DataArguments, LoraArguments, HubArguments, BackendArguments, SFTArguments)
    )
    script, stage_args, data_args, lora_args, hub, backend_args, train_args = parse_dataclasses(parser, argv)
    setup_logging(train_args.log_level)
    protect_secrets(hub, train_args)
    backend = select_backend(backend_args)
    accept_legacy_training_flags(train_args, stage_args.evaluation_strategy, hub)
    if script.peft not in ("lora", "none"):
        raise UsageError(f"--peft: expected lora or none, got {script.peft!r}")
    peft_config = lora_args.peft_config("CAUSAL_LM") if script.peft == "lora" else None
    quantization = backend.quantization_config(script.load_in_4bit, script.load_in_8bit)
    check_quantized_launch(quantization)  # no QLoRA with FSDP/ZeRO-3
    if quantization is not None and peft_config is None:
        raise UsageError("--load_in_4bit/--load_in_8bit: quantized weights cannot be fully fine-tuned; use --peft lora")
    check_training_flags(train_args)
    check_causal_lm_folder(script.model_name_or_path, "model_name_or_path")  # not a reward model folder
    guard = TrainingGuard(stage_args.nonfinite_loss)  # SIGTERM, NaN/inf and failed saves: see rlhf.stages.guard
    resume = resolve_resume(train_args.resume_from_checkpoint, train_args.output_dir)
    train_args.packing = script.dataset_concatenation or train_args.packing
    if train_args.completion_only_loss is None:
        train_args.completion_only_loss = True
    dtype = resolve_dtype(script.torch_dtype)

    # ------------------------------------------------------------------ data
    split = load_pairs(data_args, hub.token)
    tokenizer, _ = load_tokenizer(
        script.tokenizer_name or script.model_name_or_path,
        token=hub.token,
        use_fast=parse_bool(script.use_fast_tokenizer, "use_fast_tokenizer"),
        trust_remote_code=train_args.trust_remote_code,
    )
    fmt = resolve_prompt_format(data_args.prompt_template, tokenizer, script.model_name_or_path)
    train_enc, eval_enc = encode_split(split, tokenizer, fmt, train_args.max_length)
    from datasets import Dataset

    train_ds = Dataset.from_list(sft_features(train_enc))
    eval_ds = Dataset.from_list(sft_features(eval_enc)) if eval_enc else None
    if eval_ds is None and train_args.eval_strategy != "no":
        raise UsageError("--eval_strategy needs eval rows: raise --validation_split_percentage")
    output_dir = start_output(train_args.output_dir, stage_args.overwrite_output_dir, resume is not None)

    # ------------------------------------------------------------------ model
    set_seed(train_args.seed)  # new weights (embeddings for an added pad token, LoRA) are drawn: same --seed, same run
    model = load_causal_lm(
        script.model_name_or_path, tokenizer, dtype, hub.token, train_args.trust_remote_code, quantization
    )
    if peft_config is not None:
        check_lora_targets(model, peft_config)

    # ------------------------------------------------------------------ train (a SIGTERM from here on: checkpoint)
    with guard:
        trainer = build_sft_trainer(  # TRL's SFTTrainer; GaudiSFTTrainer on the Gaudi stack
            backend,
            backend_args,
            model=model,
            args=train_args,
            train_dataset=train_ds,
            eval_dataset=eval_ds,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=[guard],
        )
        result = guard.train(trainer, resume)
        if guard.preempted:
            return EXIT_PREEMPTED  # a checkpoint was written; the log says how to resume
        metrics = {"train": result.metrics, "nonfinite_steps_skipped": guard.nonfinite_steps}
        if eval_ds is not None:
            metrics["eval"] = trainer.evaluate()

        # -------------------------------------------------------------- save
        save_stage_output(trainer, output_dir, tokenizer, fmt, metrics, stage="sft", data_report=split.report)
    return 0


if __name__ == "__main__":
    run_main(main)
