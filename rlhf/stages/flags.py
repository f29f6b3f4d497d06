"""Flags the Trainer-based stages (SFT, reward model) add to TRL's config, and their early checks."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

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
        value = getattr(train_args, flag, None)
        if value is not None and not 0 <= value < 2**32:
            raise UsageError(f"--{flag}: expected a value in [0, 2**32), got {value}")
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
