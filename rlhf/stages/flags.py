"""Flags the Trainer-based stages (SFT, reward model) add to TRL's config, and their early checks."""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any

from rlhf.cli import check_seed
from rlhf.errors import UsageError

logger = logging.getLogger("rlhf.stages.flags")


@dataclass
class StageArguments:
    """Flags both Trainer-based stages add to TRL's config."""

    evaluation_strategy: str | None = field(
        default=None, metadata={"help": "Old name of --eval_strategy, accepted for the reference command line."}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace a finished run in --output_dir (otherwise it is refused)."}
    )
    keep_checkpoints: bool = field(
        default=False,
        metadata={
            "help": "Keep the Trainer's checkpoints (--output_dir/checkpoints/) after the model is published; by "
            "default they are removed then, so the folder holds the model only."
        },
    )
    nonfinite_loss: str = field(
        default="stop",
        metadata={
            "help": "A step whose loss or gradients are NaN/inf: stop (default: end training with an error; "
            "nothing from that step is saved) or skip (discard that step's update, log it, go on). The "
            "weights never take a non-finite update and are never saved holding NaN/inf.",
            "choices": ["stop", "skip"],
        },
    )


# Flags of TRL's configs that --help shows but this project's stages cannot honour: they act on steps that happen
# here, not in the trainer (tokenizer set-up, encoding, model loading), or would undo a guarantee (pad != EOS, one
# prompt format from SFT to PPO). Given a value other than their default, they stop the run with what to use
# instead. tests/test_flag_inventory.py keeps every other flag of each stage on a list of honoured ones.
UNSUPPORTED_TRAINER_FLAGS = {
    "pad_token": "the pad token is set when the tokenizer is loaded, always distinct from EOS; to choose it, give a "
    "tokenizer whose pad token it is (--tokenizer_name)",
    "eos_token": "the data is encoded and the prompt format saved with the tokenizer's own EOS before the trainer "
    "starts; give a tokenizer with the EOS you want (--tokenizer_name)",
    "chat_template_path": "the prompt format is fixed before the data is encoded and saved for the later stages; "
    "give a tokenizer with that chat template (--tokenizer_name) or choose --prompt_template",
    "dataset_text_field": "the text is built from the Orca columns; remap them with --system_column, "
    "--prompt_column, --chosen_column, --rejected_column",
    "dataset_kwargs": "the data is loaded and tokenized by this project before the trainer sees it; see --help for "
    "the data flags",
    "dataset_num_proc": "the pairs are tokenized by this project, in one process, before the trainer sees them",
    "model_init_kwargs": "the model is loaded by this project; use --torch_dtype, --trust_remote_code, "
    "--load_in_4bit or --load_in_8bit",
    "assistant_only_loss": "the loss is already on the answer tokens only (--completion_only_loss, on by default)",
    "truncation_mode": "pairs longer than --max_length are dropped and counted, never truncated",
    "do_predict": "the stage has no prediction step; evaluate.py compares the trained policies",
    "hub_strategy": "--push_to_hub uploads the published folder once, when it is complete; checkpoints are never "
    "pushed",
    "hub_always_push": "--push_to_hub uploads the published folder once, when it is complete, in one commit",
    "hub_revision": "--push_to_hub uploads to the repository's main branch",
}


def refuse_unsupported_flags(train_args: Any) -> None:
    """A flag of ``UNSUPPORTED_TRAINER_FLAGS`` given a value (other than its default) stops here, naming it."""
    defaults = {
        f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        for f in dataclasses.fields(train_args)
    }
    for flag, instead in UNSUPPORTED_TRAINER_FLAGS.items():
        if flag in defaults and getattr(train_args, flag) != defaults[flag]:
            raise UsageError(f"--{flag} is not supported by this stage: {instead}")


def check_device_flag(device: str | None, train_args: Any) -> None:
    """``--device cpu`` where the Trainer would use a GPU: the Trainer follows --use_cpu, so say so."""
    if device == "cpu" and not train_args.use_cpu:
        raise UsageError("--device cpu: the trainer runs where --use_cpu says; pass --use_cpu True to train on the CPU")


def accept_legacy_training_flags(train_args: Any, evaluation_strategy: str | None) -> None:
    """Map flags the reference command line uses and newer transformers renamed."""
    if evaluation_strategy is not None:
        from transformers.trainer_utils import IntervalStrategy

        logger.warning("--evaluation_strategy is the old name of --eval_strategy; using it")
        train_args.eval_strategy = IntervalStrategy(evaluation_strategy)
        train_args.do_eval = train_args.eval_strategy != IntervalStrategy.NO


def check_training_flags(train_args: Any, **positive: int) -> None:
    """Out-of-range Trainer flags stop here, before data or models are loaded (not deep inside the Trainer).

    ``positive`` names further script flags that must be >= 1 (e.g. ``eval_batch_size=16``).
    """
    refuse_unsupported_flags(train_args)
    if not train_args.do_train:
        raise UsageError("--do_train false: this stage always trains (leave the flag out, or pass --do_train)")
    if train_args.do_eval and str(getattr(train_args.eval_strategy, "value", train_args.eval_strategy)) == "no":
        raise UsageError(
            "--do_eval without --eval_strategy: held-out metrics are computed after training whenever there are eval "
            "rows (--validation_split_percentage); for evaluation during training give --eval_strategy steps or epoch"
        )
    ints = {
        "per_device_train_batch_size": train_args.per_device_train_batch_size,
        "per_device_eval_batch_size": train_args.per_device_eval_batch_size,
        "gradient_accumulation_steps": train_args.gradient_accumulation_steps,
        **positive,
    }
    for flag, value in ints.items():
        if value is None or value < 1:
            raise UsageError(f"--{flag}: expected a positive integer, got {value}")
    for flag in ("learning_rate", "weight_decay"):
        value = getattr(train_args, flag)
        if not (math.isfinite(value) and value >= 0):
            raise UsageError(f"--{flag}: expected a finite value >= 0, got {value}")
    max_length = getattr(train_args, "max_length", None)
    if max_length is not None and max_length < 1:
        raise UsageError(f"--max_length: expected a positive number of tokens, got {max_length}")
    if train_args.max_steps <= 0 and not train_args.num_train_epochs > 0:
        raise UsageError(
            f"--num_train_epochs {train_args.num_train_epochs}: nothing to train; give a positive --num_train_epochs "
            "or --max_steps"
        )
    for flag in ("seed", "data_seed"):
        if getattr(train_args, flag, None) is not None:
            check_seed(getattr(train_args, flag), flag)
    check_report_to(train_args)
    save_strategy = str(getattr(train_args.save_strategy, "value", train_args.save_strategy))
    if save_strategy == "steps" and train_args.save_steps <= 0:
        raise UsageError(f"--save_steps: expected a positive number, got {train_args.save_steps}")


def check_report_to(train_args: Any) -> None:
    """``--report_to``: known trackers that are installed; ``a,b`` is accepted for ``a b``. Checked here, not when
    the Trainer is built after the model is loaded."""
    from transformers.integrations.integration_utils import (
        INTEGRATION_TO_CALLBACK,
        get_available_reporting_integrations,
    )

    report_to = train_args.report_to
    items = [report_to] if isinstance(report_to, str) else list(report_to or [])
    names = [name.strip() for item in items for name in str(item).split(",") if name.strip()]
    if names in ([], ["none"], ["all"]):
        return
    unknown = [n for n in names if n not in INTEGRATION_TO_CALLBACK]
    if unknown:
        raise UsageError(
            f"--report_to: unknown tracker {', '.join(unknown)} (choose from {', '.join(INTEGRATION_TO_CALLBACK)}, "
            "all or none)"
        )
    missing = [n for n in names if n not in get_available_reporting_integrations()]
    if missing:
        raise UsageError(f"--report_to {', '.join(missing)}: not installed here (pip install {' '.join(missing)})")
    train_args.report_to = names
