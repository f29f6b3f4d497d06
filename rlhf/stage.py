"""What the two Trainer-based stages (SFT, reward modeling) share: secrets, legacy flags, loading, saving."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import transformers

from rlhf.checkpoint import mark_complete
from rlhf.cli import HubArguments, hide_token_from_environment, scrub_argv
from rlhf.data import DropReport
from rlhf.models import check_causal_lm_folder, fit_embeddings, upcast_trainable
from rlhf.prompt_format import PromptFormat

logger = logging.getLogger("rlhf.stage")

TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])
BOOL_WORDS = {"true", "false", "1", "0", "yes", "no"}


def dtype_kwarg(dtype: Any) -> dict[str, Any]:
    """transformers 5 calls it ``dtype``; 4.x (the Gaudi stack) ``torch_dtype``."""
    if dtype is None:
        return {}
    return {"dtype": dtype} if TRANSFORMERS_MAJOR >= 5 else {"torch_dtype": dtype}


def protect_secrets(hub: HubArguments, train_args: Any | None = None) -> None:
    """Keep the hub token out of everything that gets written: saved args, trackers' copies of argv, model cards.

    ``--use_auth_token`` is a no-op switch in the reference command line; if someone passes a token there, it is
    treated as the token.
    """
    if hub.use_auth_token and hub.use_auth_token.lower() in BOOL_WORDS:
        logger.warning(
            "--use_auth_token %s has no effect here: --hf_access_token or the hub login is used", hub.use_auth_token
        )
    if hub.use_auth_token and hub.use_auth_token.lower() not in BOOL_WORDS and not hub.hf_access_token:
        hub.hf_access_token = hub.use_auth_token
    secrets = [hub.hf_access_token]
    if hub.use_auth_token and hub.use_auth_token.lower() not in BOOL_WORDS:
        secrets.append(hub.use_auth_token)
    hide_token_from_environment(hub.hf_access_token)
    if train_args is not None and getattr(train_args, "hub_token", None):
        secrets.append(train_args.hub_token)
        hide_token_from_environment(train_args.hub_token)
        train_args.hub_token = None
    scrub_argv(secrets)
    hub.use_auth_token = None


def accept_legacy_training_flags(train_args: Any, evaluation_strategy: str | None, hub: HubArguments) -> None:
    """Map flags the reference command line uses and newer transformers renamed."""
    if evaluation_strategy is not None:
        from transformers.trainer_utils import IntervalStrategy

        logger.warning("--evaluation_strategy is the old name of --eval_strategy; using it")
        train_args.eval_strategy = IntervalStrategy(evaluation_strategy)
        train_args.do_eval = train_args.eval_strategy != IntervalStrategy.NO


def load_causal_lm(name: str, tokenizer: Any, dtype: Any, token: str | None, trust_remote_code: bool) -> Any:
    """A causal LM ready for training with ``tokenizer`` (embeddings grown if a pad token was added)."""
    from transformers import AutoModelForCausalLM

    check_causal_lm_folder(name, "model_name_or_path")
    model = AutoModelForCausalLM.from_pretrained(
        name, token=token, trust_remote_code=trust_remote_code, **dtype_kwarg(dtype)
    )
    fit_embeddings(model, tokenizer)
    return model


def load_reward_model(
    name: str,
    tokenizer: Any,
    dtype: Any,
    token: str | None,
    trust_remote_code: bool,
    peft_config: Any | None,
    quantization: Any | None = None,
) -> Any:
    """A one-logit sequence classifier on top of ``name`` (a causal LM or an earlier reward model), LoRA-wrapped.

    Trainable parameters are kept in float32 even when the base is loaded in bf16: Adam updates of a bf16 score
    head are mostly rounded away.
    """
    from transformers import AutoModelForSequenceClassification

    kwargs = {"quantization_config": quantization} if quantization is not None else {}
    model = AutoModelForSequenceClassification.from_pretrained(
        name, num_labels=1, token=token, trust_remote_code=trust_remote_code, **dtype_kwarg(dtype), **kwargs
    )
    fit_embeddings(model, tokenizer)
    if quantization is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model)
    if peft_config is not None:
        from peft import get_peft_model

        model = get_peft_model(model, peft_config)
    upcast_trainable(model)
    return model


def save_stage_output(
    trainer: Any,
    output_dir: Path,
    tokenizer: Any,
    fmt: PromptFormat,
    metrics: dict[str, Any],
    stage: str,
    data_report: DropReport,
    files: dict[str, Any] | None = None,
) -> None:
    """Write the adapter, the merged model, tokenizer, prompt format and metrics; then mark the folder complete.

    ``files`` maps extra JSON file names to their content. Every rank calls this (saving may gather sharded
    weights); only the main process writes files.
    """
    from peft import PeftModel

    model = trainer.accelerator.unwrap_model(trainer.model)
    is_peft = isinstance(model, PeftModel)
    if is_peft:
        trainer.save_model(str(output_dir / "adapter"))
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        merged = model.merge_and_unload() if is_peft else model
        merged.save_pretrained(str(output_dir), safe_serialization=True)
        tokenizer.save_pretrained(str(output_dir))
        fmt.save(output_dir)
        payload = {"stage": stage, "data": data_report.summary(), **metrics}
        for name, content in {"metrics.json": payload, **(files or {})}.items():
            (output_dir / name).write_text(json.dumps(content, indent=2, default=str) + "\n", encoding="utf-8")
        with (output_dir / "log_history.jsonl").open("w") as handle:
            for row in trainer.state.log_history:
                handle.write(json.dumps(row) + "\n")
        mark_complete(output_dir, {"stage": stage, "adapter": is_peft})
        logger.info("%s: model saved to %s", stage, output_dir)
    trainer.accelerator.wait_for_everyone()
