"""What the two Trainer-based stages (SFT, reward modeling) share: secrets, legacy flags, loading, saving."""

from __future__ import annotations

import json
import logging
import math
import re
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import TrainerCallback

from rlhf.checkpoint import STAGING, discard_staging, latest_trainer_checkpoint, prepare_staging, publish_staged
from rlhf.cli import HubArguments, RunError, UsageError, hide_token_from_environment, scrub_argv
from rlhf.data import DropReport
from rlhf.distributed import (
    broadcast_from_main,
    full_state_dict,
    nonfinite_tensors,
    rebuild_from_state_dict,
    shards_parameters,
)
from rlhf.models import check_causal_lm_folder, fit_embeddings, upcast_trainable
from rlhf.prompt_format import PromptFormat

logger = logging.getLogger("rlhf.stage")

TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])
BOOL_WORDS = {"true", "false", "1", "0", "yes", "no"}


@dataclass
class StageArguments:
    """Flags both Trainer-based stages add to TRL's config."""

    evaluation_strategy: str | None = field(
        default=None, metadata={"help": "Old name of --eval_strategy, accepted for the reference command line."}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace a finished run in --output_dir (otherwise it is refused)."}
    )
    nonfinite_loss: str = field(
        default="stop",
        metadata={
            "help": "A step whose loss or gradients are NaN/inf: stop (default: end training with an error; "
            "nothing from that step is saved) or skip (discard that step's update, log it, go on). The "
            "weights never take a non-finite update and are never saved holding NaN/inf."
        },
    )


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


def check_lora_targets(model: Any, peft_config: Any) -> None:
    """``--lora_target_modules`` that name no module of the model, or ``--lora_layers`` it does not have, stop with
    what would work. With ``--lora_layers`` and all-linear, all-linear becomes the names of the linear modules inside
    the numbered decoder blocks (PEFT itself refuses a layer list next to the string all-linear)."""
    layers = peft_config.layers_to_transform
    if layers:
        count = getattr(model.config, "num_hidden_layers", None)
        if count is not None and max(layers) >= count:
            raise UsageError(f"--lora_layers: the model has {count} layers (0-{count - 1}), got layer {max(layers)}")
    targets = peft_config.target_modules
    if isinstance(targets, str):
        targets = targets.split(",")
    targets = sorted(t.strip() for t in targets if t.strip())
    if targets == ["all-linear"]:
        if layers:
            peft_config.target_modules = {
                name.rsplit(".", 1)[-1]
                for name, module in model.named_modules()
                if isinstance(module, torch.nn.Linear) and re.search(r"\.\d+\.", name)
            }
        return
    names = [name for name, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise UsageError(
            f"--lora_target_modules: {', '.join(missing)} not found in the model; its linear layers are "
            f"{', '.join(linear)} (or use all-linear)"
        )


def load_causal_lm(
    name: str, tokenizer: Any, dtype: Any, token: str | None, trust_remote_code: bool, quantization: Any | None = None
) -> Any:
    """A causal LM ready for training with ``tokenizer`` (embeddings grown if a pad token was added).

    ``quantization``: a bitsandbytes config (``Backend.quantization_config``) for QLoRA; the quantized model is
    prepared for adapter training (norms in float32, input gradients on)."""
    from transformers import AutoModelForCausalLM

    check_causal_lm_folder(name, "model_name_or_path")
    kwargs = {"quantization_config": quantization} if quantization is not None else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            name, token=token, trust_remote_code=trust_remote_code, **dtype_kwarg(dtype), **kwargs
        )
    except (OSError, ValueError) as err:  # no weights or config in the folder, not on the hub, no network
        raise UsageError(f"--model_name_or_path {name}: cannot load the model ({_first_line(err)})") from None
    fit_embeddings(model, tokenizer)
    if quantization is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
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
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            name, num_labels=1, token=token, trust_remote_code=trust_remote_code, **dtype_kwarg(dtype), **kwargs
        )
    except (OSError, ValueError) as err:  # no weights or config in the folder, not on the hub, no network
        raise UsageError(f"--model_name_or_path {name}: cannot load the model ({_first_line(err)})") from None
    fit_embeddings(model, tokenizer)
    if quantization is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model)
    if peft_config is not None:
        from peft import get_peft_model

        check_lora_targets(model, peft_config)
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

    Everything is written into a staging folder first and swapped in at the end, ``COMPLETE.json`` last
    (``rlhf.checkpoint.publish_staged``): a save that fails (disk full) leaves the checkpoints and any previous
    complete result as they were, and nothing marked complete. Weights holding NaN/inf are never saved.

    ``files`` maps extra JSON file names to their content. Every rank calls this (saving may gather sharded
    weights); only the main process writes files.
    """
    from peft import PeftModel

    accelerator = trainer.accelerator
    model = accelerator.unwrap_model(trainer.model)
    is_peft = isinstance(model, PeftModel)
    sharded = shards_parameters(accelerator)
    main_process = trainer.is_world_process_zero()
    # ZeRO-3/FSDP: no process holds the whole model; gather it once (every process takes part), write on rank 0.
    state = full_state_dict(accelerator, trainer.model_wrapped) if sharded else None
    if sharded:
        bad = broadcast_from_main(accelerator, nonfinite_tensors(state) if main_process else None)
    else:
        bad = nonfinite_parameters(model)
    if bad:
        raise RunError(
            f"{stage}: the trained weights hold NaN/inf values ({len(bad)} tensors, e.g. {bad[0]}); nothing was "
            f"saved in {output_dir}. Lower --learning_rate or check the input model and data"
        )
    try:
        staging = prepare_staging(output_dir) if main_process else output_dir / STAGING
        accelerator.wait_for_everyone()
        if is_peft and not sharded:
            trainer.save_model(str(staging / "adapter"))
        accelerator.wait_for_everyone()
        if main_process:
            plain = rebuild_from_state_dict(model, state) if sharded else model
            if is_peft and sharded:
                plain.save_pretrained(str(staging / "adapter"))
            merged = plain.merge_and_unload() if is_peft else plain
            merged.save_pretrained(str(staging), safe_serialization=True)
            del state, plain, merged
            tokenizer.save_pretrained(str(staging))
            fmt.save(staging)
            payload = {"stage": stage, "data": data_report.summary(), **metrics}
            for name, content in {"metrics.json": payload, **(files or {})}.items():
                (staging / name).write_text(json.dumps(content, indent=2, default=str) + "\n", encoding="utf-8")
            with (staging / "log_history.jsonl").open("w") as handle:
                for row in trainer.state.log_history:
                    handle.write(json.dumps(row) + "\n")
            publish_staged(output_dir, {"stage": stage, "adapter": is_peft})
            logger.info("%s: model saved to %s", stage, output_dir)
    except Exception as err:
        if main_process:
            discard_staging(output_dir)
        raise RunError(
            f"{stage}: saving the result in {output_dir} failed ({_first_line(err)}); nothing was marked complete "
            "and the checkpoints there are intact: free space, then rerun with --resume_from_checkpoint latest"
        ) from err
    trainer.accelerator.wait_for_everyone()


def nonfinite_parameters(model: Any) -> list[str]:
    """Names of parameters holding NaN or inf (empty shards of sharded models are skipped)."""
    with torch.no_grad():
        return [n for n, p in model.named_parameters() if p.numel() and not bool(torch.isfinite(p).all())]


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# ----------------------------------------------------------------------------------------------------------------
# Faults during training: SIGTERM, NaN/inf, a checkpoint save that fails

NONFINITE_CHOICES = ("stop", "skip")


class TrainingGuard(TrainerCallback):
    """Keeps a Trainer run recoverable. Use as ``with TrainingGuard(...) as guard:`` around training and saving.

    * SIGTERM (what schedulers send before preemption): the current optimizer step finishes, a checkpoint is
      written (whatever ``--save_strategy`` says), training stops and ``train`` reports how to resume; the script
      then exits with code 143. A SIGTERM during the final save waits for the save to finish.
    * A non-finite loss (NaN/inf gradients): the update of that step is discarded before the optimizer sees it, so
      the weights stay finite. ``stop`` (default) ends training with an error and saves nothing from that step;
      ``skip`` logs the step, counts it and goes on. A checkpoint is never written from weights holding NaN/inf.
      With ``--fp16`` the gradient scaler already skips overflowing steps; with DeepSpeed gradients are not
      visible here and this check does nothing.
    * A checkpoint save that raises (disk full): one line naming the checkpoint, instead of a traceback.

    Every process takes part in the same decisions (one small all-reduce per optimizer step), so ranks never
    disagree about stopping.
    """

    def __init__(self, nonfinite: str = "stop"):
        if nonfinite not in NONFINITE_CHOICES:
            raise UsageError(f"--nonfinite_loss: expected one of {', '.join(NONFINITE_CHOICES)}, got {nonfinite!r}")
        self.nonfinite = nonfinite
        self.preempted = False  # stopped by SIGTERM after writing a checkpoint
        self.nonfinite_steps: list[int] = []  # optimizer steps whose update was discarded
        self.stopped_at: int | None = None  # step at which a non-finite loss stopped training
        self._signal = False
        self._agreed_signal = False
        self._bad_step = False
        self._saving: int | None = None  # a checkpoint save is due or under way for this step
        self._evaluating = False
        self._previous_handler: Any = None
        self._step_norm: Any = None  # the gradient norm the Trainer took this step (see train)

    # -------------------------------------------------------------- signal handling
    def __enter__(self) -> TrainingGuard:
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self._signal = True  # acted on at the end of the current optimizer step (no logging in a handler)

    # -------------------------------------------------------------- Trainer events
    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        bad = False
        norm, self._step_norm = self._step_norm, None
        if model is not None and not args.fp16:
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            if grads and norm is None:  # the Trainer took no norm we can read (e.g. a sharded one): take ours
                norm = _total_norm(grads)
            bad = bool(grads) and not bool(torch.isfinite(norm))
        bad, self._agreed_signal = _agree(args, bad, self._signal)
        if bad:
            for param in model.parameters():
                param.grad = None  # the optimizer skips parameters without gradients: no update this step
            self._bad_step = True

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if self._bad_step:
            self._bad_step = False
            self.nonfinite_steps.append(state.global_step)
            if self.nonfinite == "stop":
                logger.error("step %d: non-finite loss or gradients (NaN/inf); stopping", state.global_step)
                self.stopped_at = state.global_step
                control.should_training_stop = True
                control.should_save = False
                control.should_evaluate = False
                return
            logger.warning(
                "step %d: non-finite loss or gradients (NaN/inf); update skipped (%d skipped so far)",
                state.global_step,
                len(self.nonfinite_steps),
            )
        if self._agreed_signal:
            logger.warning("SIGTERM: step %d finished; writing a checkpoint, then stopping", state.global_step)
            self.preempted = True
            control.should_save = True
            control.should_training_stop = True
        self._track_save(state, control, model)

    def on_epoch_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if self.stopped_at is not None or self.preempted:
            control.should_save = False  # nothing more after a stop (the SIGTERM checkpoint is already written)
        self._track_save(state, control, model)

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._evaluating = False

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._saving = None

    def _track_save(self, state: Any, control: Any, model: Any) -> None:
        if control.should_save and model is not None:
            bad = nonfinite_parameters(model)
            if bad:
                logger.error("step %d: weights hold NaN/inf (e.g. %s); no checkpoint", state.global_step, bad[0])
                self.stopped_at = state.global_step
                control.should_save = False
                control.should_training_stop = True
        self._saving = state.global_step if control.should_save else None
        self._evaluating = bool(control.should_evaluate)

    # -------------------------------------------------------------- the run
    def train(self, trainer: Any, resume_from_checkpoint: str | None) -> Any:
        """``trainer.train`` with the faults above turned into one-line errors or a resumable stop."""
        output_dir = trainer.args.output_dir
        if resume_from_checkpoint:
            logger.info("resuming from %s", resume_from_checkpoint)
        self._reuse_step_norm(trainer.accelerator)
        try:
            result = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
        except Exception as err:
            if self._saving is None or self._evaluating:
                raise
            raise RunError(
                f"saving {output_dir}/checkpoint-{self._saving} failed ({_first_line(err)}); it is incomplete and "
                f"will not be resumed from. {self._resume_hint(output_dir)}; free space first"
            ) from err
        finally:
            vars(trainer.accelerator).pop("clip_grad_norm_", None)  # the accelerator's own method again
        if self.stopped_at is not None:
            raise RunError(
                f"training stopped at step {self.stopped_at}: non-finite loss, gradients or weights (NaN/inf); "
                f"nothing was saved from that step. {self._resume_hint(output_dir)} after lowering --learning_rate "
                "or checking the data and model, or pass --nonfinite_loss skip to discard such steps"
            )
        if self.preempted:
            logger.warning(
                "stopped by SIGTERM at step %d; checkpoint: %s. To go on, rerun the same command with "
                "--resume_from_checkpoint latest",
                trainer.state.global_step,
                latest_trainer_checkpoint(output_dir),
            )
        if self.nonfinite_steps:
            logger.warning(
                "%d steps with a non-finite loss were skipped: %s", len(self.nonfinite_steps), self.nonfinite_steps
            )
        return result

    def _reuse_step_norm(self, accelerator: Any) -> None:
        """Keep the global gradient norm the Trainer takes before every optimizer step (to clip, or with clipping
        off to log it; both through ``accelerator.clip_grad_norm_``), so that the non-finite check does not read
        every gradient a second time: that pass was 3-4% of a bf16 step of a 135M model on one CPU thread. A NaN/inf
        gradient makes that norm NaN/inf exactly as it makes our own. Only a plain tensor is kept (a sharded
        DTensor norm, or none at all, means the check takes its own). Undone when ``train`` returns."""
        clip = accelerator.clip_grad_norm_

        def clip_grad_norm_(*args: Any, **kwargs: Any) -> Any:
            norm = clip(*args, **kwargs)
            self._step_norm = norm if type(norm) is torch.Tensor else None
            return norm

        accelerator.clip_grad_norm_ = clip_grad_norm_

    @staticmethod
    def _resume_hint(output_dir: str) -> str:
        latest = latest_trainer_checkpoint(output_dir)
        if latest is None:
            return "There is no complete checkpoint to resume from; rerun"
        return f"Last complete checkpoint: {latest}; rerun with --resume_from_checkpoint latest"


def _total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The gradients' global 2-norm: NaN/inf exactly when some gradient holds NaN/inf (or overflows)."""
    norms = torch.stack([torch.linalg.vector_norm(g.detach(), dtype=torch.float32) for g in grads])
    return torch.linalg.vector_norm(norms)


def _agree(args: Any, bad: bool, signalled: bool) -> tuple[bool, bool]:
    """The same two decisions on every process: any rank's NaN or SIGTERM counts for all."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return bad, signalled
    flags = torch.tensor([float(bad), float(signalled)], device=args.device)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return bool(flags[0].item()), bool(flags[1].item())
