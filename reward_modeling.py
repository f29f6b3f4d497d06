"""Stage 2 — reward modeling: learn a scalar score that ranks ``chosen`` above ``rejected``.

    python reward_modeling.py --model_name_or_path out/sft --dataset_name data/orca_sample/train.jsonl \
        --output_dir out/rm
    torchrun --nnodes 1 --nproc_per_node 8 reward_modeling.py --model_name_or_path M --output_dir O \
        --log_level info --num_train_epochs 1 --per_device_train_batch_size 1 --hf_access_token T
    python3 reward_modeling.py ... --use_habana --use_lazy_mode
    python3 gaudi_spawn.py --world_size 8 --use_mpi reward_modeling.py ... --use_habana --use_lazy_mode \
        --ddp_find_unused_parameters True

TRL's RewardTrainer on an ``AutoModelForSequenceClassification(num_labels=1)`` with LoRA (r 8, alpha 32,
dropout 0.1, as the reference) and the score head trained in full. The text is the prompt format of the input model
(``prompt_format.json`` of an SFT folder), so PPO scores exactly what this model was trained on. After training,
the held-out pairs (first ``--validation_split_percentage`` % of the rows) give strict accuracy (ties count as
wrong), tie rate and margin; the mean/std of rewards there is saved as ``reward_stats.json`` for PPO to normalise.
The output folder loads with ``AutoModelForSequenceClassification``.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import torch
from transformers import HfArgumentParser, set_seed

from rlhf.cli import cpu_only, drop_debug_switch, parse_dataclasses, setup_logging
from rlhf.data.encoding import encode_split, reward_features
from rlhf.data.pairs import DataArguments, load_pairs
from rlhf.data.prompt_format import resolve_prompt_format
from rlhf.errors import EXIT_PREEMPTED, UsageError, run_main
from rlhf.evaluation import preference_metrics
from rlhf.models.arguments import LoraArguments
from rlhf.models.loading import load_reward_model, load_tokenizer, resolve_dtype
from rlhf.models.reward import STATS_FILE, reward_stats, score_sequences
from rlhf.outputs.folders import start_output
from rlhf.outputs.trainer_checkpoints import resolve_resume
from rlhf.runtime.backend import BackendArguments, adopt_mpi_environment, select_backend
from rlhf.runtime.distributed import check_quantized_launch
from rlhf.runtime.precision import default_bf16
from rlhf.runtime.stack import build_reward_trainer, trainer_config_base
from rlhf.secrets import HubArguments, protect_secrets
from rlhf.stages.flags import StageArguments, accept_legacy_training_flags, check_training_flags
from rlhf.stages.guard import TrainingGuard
from rlhf.stages.saving import save_stage_output

logger = logging.getLogger("reward_modeling")


@dataclass
class ScriptArguments:
    model_name_or_path: str = field(metadata={"help": "Model to turn into a reward model (base or SFT folder)."})
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer, if not the model's own."})
    torch_dtype: str | None = field(
        default=None,
        metadata={
            "help": "Weights dtype when loading: bfloat16, float16, float32, auto. Default: bfloat16 like the "
            "reference when training in bf16 mixed precision (the frozen base is computed in bf16 anyway), "
            "float32 otherwise. Trainable parameters (LoRA, score head) are kept in float32."
        },
    )
    load_in_4bit: bool = field(default=False, metadata={"help": "QLoRA: load the base in 4 bit (CUDA + bitsandbytes)."})
    load_in_8bit: bool = field(default=False, metadata={"help": "Load the base in 8 bit (CUDA + bitsandbytes)."})
    peft: str = field(default="lora", metadata={"help": "lora (default) or none for a full fine-tune."})
    eval_batch_size: int = field(default=16, metadata={"help": "Batch size when scoring held-out pairs at the end."})


@dataclass
class RewardArguments(trainer_config_base("reward")):
    """TRL's RewardConfig (its flags on the Gaudi stack: rlhf.runtime.gaudi) with this project's (and the reference's)
    defaults."""

    output_dir: str = field(default="out/rm", metadata={"help": "Where the model and checkpoints go."})
    use_cpu: bool = field(default=cpu_only(), metadata={"help": "Train on the CPU (default: when no GPU)."})
    bf16: bool | None = field(
        default=None,
        metadata={
            "help": "bf16 mixed precision (autocast). Default: on where bf16 is native (recent GPUs, Gaudi, CPUs "
            "with AVX512-BF16/AMX) and measured faster for this stage, off where it would be emulated (README, "
            "Precision; RLHF_NATIVE_BF16=0|1 overrides the detection)."
        },
    )
    max_length: int | None = field(
        default=512, metadata={"help": "Longest prompt + answer in tokens; longer pairs are dropped and counted."}
    )
    logging_steps: float = field(default=10, metadata={"help": "Log every N optimizer steps."})
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Recompute activations in backward to save memory (slower)."}
    )

    def __post_init__(self) -> None:
        if self.bf16 is None:  # decided when the flags are parsed (not at import), so the environment counts
            self.bf16 = default_bf16("rm") and not self.fp16
        super().__post_init__()


@dataclass
class RewardLoraArguments(LoraArguments):
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank r (reference: 8)."})
    lora_alpha: float = field(default=32, metadata={"help": "LoRA alpha (reference: 32)."})
    lora_dropout: float = field(default=0.1, metadata={"help": "LoRA dropout (reference: 0.1)."})


def main(argv: list[str] | None = None) -> int:
    # ------------------------------------------------------------------ arguments
    adopt_mpi_environment()
    # TRL's own default (gradient_checkpointing=True) trips transformers 5's rename warning on every run.
    warnings.filterwarnings("ignore", message="`gradient_checkpointing` is deprecated", category=FutureWarning)
    argv = drop_debug_switch(argv)  # --debug: full tracebacks (run_main); not the Trainer's --debug <features>
    parser = HfArgumentParser(
        (
            ScriptArguments,
            StageArguments,
            DataArguments,
            RewardLoraArguments,
            HubArguments,
            BackendArguments,
            RewardArguments,
        )
    )
    script, stage_args, data_args, lora_args, hub, backend_args, train_args = parse_dataclasses(parser, argv)
    setup_logging(train_args.log_level)
    protect_secrets(hub, train_args)
    backend = select_backend(backend_args)
    accept_legacy_training_flags(train_args, stage_args.evaluation_strategy, hub)
    if script.peft not in ("lora", "none"):
        raise UsageError(f"--peft: expected lora or none, got {script.peft!r}")
    quantization = backend.quantization_config(script.load_in_4bit, script.load_in_8bit)
    check_quantized_launch(quantization)  # no QLoRA with FSDP/ZeRO-3
    peft_config = lora_args.peft_config("SEQ_CLS", modules_to_save=["score"]) if script.peft == "lora" else None
    check_training_flags(train_args, eval_batch_size=script.eval_batch_size)
    guard = TrainingGuard(stage_args.nonfinite_loss)  # SIGTERM, NaN/inf and failed saves: see rlhf.stages.guard
    resume = resolve_resume(train_args.resume_from_checkpoint, train_args.output_dir)
    dtype = resolve_dtype(script.torch_dtype or ("bfloat16" if train_args.bf16 else "float32"))

    # ------------------------------------------------------------------ data
    split = load_pairs(data_args, hub.token)
    tokenizer, _ = load_tokenizer(
        script.tokenizer_name or script.model_name_or_path,
        token=hub.token,
        trust_remote_code=train_args.trust_remote_code,
    )
    fmt = resolve_prompt_format(data_args.prompt_template, tokenizer, script.model_name_or_path)
    train_enc, eval_enc = encode_split(split, tokenizer, fmt, train_args.max_length)
    from datasets import Dataset

    train_ds = Dataset.from_list(reward_features(train_enc))
    eval_ds = Dataset.from_list(reward_features(eval_enc)) if eval_enc else None
    if eval_ds is None and train_args.eval_strategy != "no":
        raise UsageError("--eval_strategy needs eval rows: raise --validation_split_percentage")
    output_dir = start_output(train_args.output_dir, stage_args.overwrite_output_dir, resume is not None)

    # ------------------------------------------------------------------ model
    set_seed(train_args.seed)  # the new score head and LoRA weights are drawn here: same --seed, same model
    model = load_reward_model(
        script.model_name_or_path, tokenizer, dtype, hub.token, train_args.trust_remote_code, peft_config, quantization
    )

    # ------------------------------------------------------------------ train (a SIGTERM from here on: checkpoint)
    with guard:
        trainer = build_reward_trainer(  # TRL's RewardTrainer; GaudiRewardTrainer on the Gaudi stack
            backend,
            backend_args,
            model=model,
            args=train_args,
            train_dataset=train_ds,
            eval_dataset=eval_ds,
            processing_class=tokenizer,
            callbacks=[guard],
        )
        result = guard.train(trainer, resume)
        if guard.preempted:
            return EXIT_PREEMPTED  # a checkpoint was written; the log says how to resume

        # -------------------------------------------------------------- held-out metrics and save
        scored = eval_enc or train_enc[:256]  # without held-out rows, stats come from (at most 256) training pairs
        features = reward_features(scored)
        chosen = score_sequences(
            trainer.model, [f["chosen_ids"] for f in features], tokenizer.pad_token_id, script.eval_batch_size
        )
        rejected = score_sequences(
            trainer.model, [f["rejected_ids"] for f in features], tokenizer.pad_token_id, script.eval_batch_size
        )
        heldout = preference_metrics(chosen, rejected)
        heldout["split"] = "eval" if eval_enc else "train_subset"
        stats = {**reward_stats(torch.cat([chosen, rejected])), "split": heldout["split"]}
        logger.info(
            "reward model on %d %s pairs: accuracy %.3f (ties count as wrong), tie rate %.3f, mean margin %.3f",
            heldout["pairs"],
            heldout["split"],
            heldout["accuracy"],
            heldout["tie_rate"],
            heldout["margin_mean"],
        )
        metrics = {"train": result.metrics, "heldout": heldout, "nonfinite_steps_skipped": guard.nonfinite_steps}
        save_stage_output(
            trainer,
            output_dir,
            tokenizer,
            fmt,
            metrics,
            stage="reward_model",
            data_report=split.report,
            files={STATS_FILE: stats},
        )
    return 0


if __name__ == "__main__":
    run_main(main)
