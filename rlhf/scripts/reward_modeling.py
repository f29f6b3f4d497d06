"""Stage 2 — reward modeling: learn a scalar score that ranks ``chosen`` above ``rejected``.

    python reward_modeling.py --model_name_or_path out/sft --dataset_name data/orca_sample/train.jsonl \\
        --output_dir out/rm
    python reward_modeling.py --config rm.yaml            (flags in a YAML file; command-line flags override it)
    torchrun --nnodes 1 --nproc_per_node 8 reward_modeling.py --model_name_or_path M --output_dir O \\
        --log_level info --num_train_epochs 1 --per_device_train_batch_size 1 --hf_access_token T
    python3 reward_modeling.py ... --use_habana --use_lazy_mode
    python3 gaudi_spawn.py --world_size 8 --use_mpi reward_modeling.py ... --use_habana --use_lazy_mode \\
        --ddp_find_unused_parameters True

TRL's RewardTrainer on an ``AutoModelForSequenceClassification(num_labels=1)`` with LoRA (r 8, alpha 32,
dropout 0.1, as the reference) and the score head trained in full. The text is the prompt format of the input model
(``prompt_format.json`` of an SFT folder), so PPO scores exactly what this model was trained on. After training,
the held-out pairs (first ``--validation_split_percentage`` % of the rows) give strict accuracy (ties count as
wrong), tie rate and margin, over all pairs and apart for content pairs (answers a word or two apart) and form
pairs (metrics.json ``heldout.content`` / ``.form``); the mean/std of rewards there is saved as
``reward_stats.json`` for PPO to normalise. ``--average_seeds N``: the weight average of N seeds' runs
(rlhf.stages.weight_average), measured and saved the same way.
The output folder loads with ``AutoModelForSequenceClassification``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from rlhf.data.encoding import reward_features
from rlhf.errors import UsageError, run_main
from rlhf.evaluation import describe_split_metrics, minimal_pair, split_preference_metrics
from rlhf.models.arguments import DTYPES, ModelArguments
from rlhf.models.loading import check_model_folder, load_reward_model, upcast_trainable, with_lora
from rlhf.models.reward import STATS_FILE, reward_stats, score_sequences
from rlhf.runtime.stack import RewardBatchArguments, build_reward_trainer, check_reward_batching, trainer_config_base
from rlhf.stages.trainer_stage import Run, TrainerStage
from rlhf.stages.weight_average import AverageArguments, train_averaged

logger = logging.getLogger("reward_modeling")


@dataclass
class ScriptArguments(AverageArguments, RewardBatchArguments):
    eval_batch_size: int = field(default=16, metadata={"help": "Batch size when scoring held-out pairs at the end."})

    def __post_init__(self) -> None:
        if self.eval_batch_size < 1:
            raise UsageError(f"--eval_batch_size: expected a positive integer, got {self.eval_batch_size}")
        super().__post_init__()


@dataclass
class RewardModelArguments(ModelArguments):
    """The model to turn into a reward model (base or SFT folder), with the reference's LoRA shape."""

    torch_dtype: str | None = field(
        default=None,
        metadata={
            "help": "Weights dtype when loading. Default: bfloat16 like the reference when training in bf16 mixed "
            "precision (the frozen base is computed in bf16 anyway), float32 otherwise. Trainable parameters (LoRA, "
            "score head) are kept in float32.",
            "choices": list(DTYPES),
        },
    )
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank r (reference: 8)."})
    lora_alpha: float = field(default=32, metadata={"help": "LoRA alpha (reference: 32)."})
    lora_dropout: float = field(default=0.1, metadata={"help": "LoRA dropout (reference: 0.1)."})


@dataclass
class RewardArguments(trainer_config_base("reward")):
    """TRL's RewardConfig (its flags on the Gaudi stack: rlhf.runtime.gaudi) with this project's (and the
    reference's) defaults."""

    output_dir: str = field(default="out/rm", metadata={"help": "Where the model and checkpoints go."})
    max_length: int | None = field(
        default=512, metadata={"help": "Longest prompt + answer in tokens; longer pairs are dropped and counted."}
    )
    logging_steps: float = field(default=10, metadata={"help": "Log every N optimizer steps."})
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Recompute activations in backward to save memory (slower)."}
    )


def configure(run: Run) -> None:
    check_model_folder(run.model_args.model_name_or_path, "model_name_or_path")  # a typo stops before the data
    check_reward_batching(run.script, run.train_args, run.backend)


def load_model(run: Run) -> tuple[Any, dict[str, Any]]:
    """A one-logit classifier on the input model, with LoRA and the new score head trained (float32)."""
    args = run.model_args
    model = load_reward_model(
        args.model_name_or_path,
        run.tokenizer,
        token=run.hub.token,
        dtype=args.dtype or (torch.bfloat16 if run.train_args.bf16 else torch.float32),
        trust_remote_code=args.trust_remote_code,
        quantization=run.quantization,
        flag="model_name_or_path",
        trained=False,
    )
    model = with_lora(model, args.peft_config("SEQ_CLS", modules_to_save=["score"]))
    upcast_trainable(model)
    return model, {"length_groups": run.script.length_groups, "share_prompts": run.script.share_prompts}


def after_training(run: Run, trainer: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Strict accuracy, tie rate and margin on the held-out pairs, and the reward statistics PPO normalises with."""
    # Without held-out rows, the statistics come from (at most 256) training pairs.
    rows = run.eval_rows or run.train_rows[:256]
    scored = reward_features(rows)
    pad, batch = run.tokenizer.pad_token_id, run.script.eval_batch_size
    chosen = score_sequences(trainer.model, [f["chosen_ids"] for f in scored], pad, batch)
    rejected = score_sequences(trainer.model, [f["rejected_ids"] for f in scored], pad, batch)
    # content: the two answers differ in a word or two ("28" / "31"); form: the others (evasive, rude, cut off)
    content = [minimal_pair(r["chosen"], r["rejected"]) for r in rows]
    split = "eval" if run.eval_rows else "train_subset"
    heldout = {**split_preference_metrics(chosen, rejected, content), "split": split}
    logger.info("reward model on %d %s pairs: %s", heldout["pairs"], split, describe_split_metrics(heldout))
    stats = {**reward_stats(torch.cat([chosen, rejected])), "split": heldout["split"]}
    return {"heldout": heldout}, {STATS_FILE: stats}


REWARD_MODEL = TrainerStage(
    name="reward_model",
    usage=__doc__,
    arguments=(ScriptArguments, RewardModelArguments, RewardArguments),
    features=reward_features,
    load_model=load_model,
    build_trainer=build_reward_trainer,  # TRL's RewardTrainer; GaudiRewardTrainer on the Gaudi stack
    configure=configure,
    after_training=after_training,
    module="rlhf.scripts.reward_modeling",
)


def main(argv: list[str] | None = None) -> int:
    """What the top-level script and the console command run: one run, or the average of --average_seeds runs."""
    return train_averaged(REWARD_MODEL, argv, after_training)


def cli() -> None:
    run_main(main)  # one-line errors and exit codes


if __name__ == "__main__":  # python -m rlhf.scripts.reward_modeling
    cli()
