"""The one skeleton of the Trainer-based stages (SFT, reward model). Each script says only what makes it itself:
its flags, how its rows are built, how its model is loaded, which trainer trains it, and what it measures after
training (``TrainerStage``); ``run_trainer_stage`` does everything else, in this order:

    arguments   parse (flags, --config), logging, secrets, backend, early checks of every flag
    data        load, validate and split the pairs; tokenizer; prompt format; tokenize; datasets
    model       seeded load (LoRA/QLoRA per the model flags)
    train       the stack's trainer (TRL's, or optimum-habana's on Gaudi) under the TrainingGuard
    save        the stage's own metrics, then adapter + merged model + metadata, complete or absent
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhf.cli import drop_debug_switch, parse_arguments, setup_logging
from rlhf.data.encoding import encode_split
from rlhf.data.pairs import DataArguments, load_pairs
from rlhf.data.prompt_format import resolve_prompt_format
from rlhf.errors import EXIT_PREEMPTED, UsageError, run_main
from rlhf.models.arguments import ModelArguments
from rlhf.models.loading import load_tokenizer
from rlhf.outputs.folders import start_output
from rlhf.outputs.hub import hub_repo_id, push_folder
from rlhf.outputs.model_card import changed_flags
from rlhf.outputs.trainer_checkpoints import checkpoints_dir, remove_checkpoints, resolve_resume
from rlhf.runtime.backend import Backend, BackendArguments, adopt_mpi_environment, select_backend
from rlhf.runtime.distributed import check_quantized_launch
from rlhf.secrets import HubArguments, protect_secrets
from rlhf.stages.flags import (
    StageArguments,
    accept_legacy_training_flags,
    check_device_flag,
    check_training_flags,
)
from rlhf.stages.guard import TrainingGuard
from rlhf.stages.saving import save_stage_output


@dataclass(frozen=True)
class TrainerStage:
    """What differs between the Trainer-based stages.

    ``arguments``: the script's own dataclasses, in this order: script flags, model flags (a ``ModelArguments``),
    training flags (TRL's config for the stage). The hooks get a ``Run`` with everything parsed and loaded so far.
    """

    name: str  # written in metrics.json and COMPLETE.json: "sft", "reward_model"
    usage: str  # the script's docstring: the top of --help
    arguments: tuple[type, type, type]
    features: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]  # tokenized pairs -> the trainer's rows
    load_model: Callable[[Run], tuple[Any, dict[str, Any]]]  # -> (model, extra trainer keyword arguments)
    build_trainer: Callable[..., Any]  # rlhf.runtime.stack.build_sft_trainer / build_reward_trainer
    configure: Callable[[Run], None] = lambda run: None  # stage-specific flag handling, before any data is read
    after_training: Callable[[Run, Any], tuple[dict[str, Any], dict[str, Any]]] = lambda run, trainer: ({}, {})
    module: str = ""  # the script's module (python -m): how --member_processes runs a member in its own process

    def main(self, argv: list[str] | None = None) -> int:
        """Run the stage (what the top-level script calls; errors propagate)."""
        return run_trainer_stage(self, argv)

    def cli(self) -> None:
        """The console command: one-line errors and exit codes (rlhf.errors.run_main)."""
        run_main(self.main)


@dataclass
class Run:
    """One run of a stage: its parsed flags and what has been built for it."""

    script: Any
    model_args: ModelArguments
    stage_args: StageArguments
    data_args: DataArguments
    hub: HubArguments
    backend_args: BackendArguments
    train_args: Any
    backend: Backend
    quantization: Any = None
    tokenizer: Any = None
    train_rows: list[dict[str, Any]] | None = None  # tokenized pairs (rlhf.data.encoding.encode_pairs)
    eval_rows: list[dict[str, Any]] | None = None


def parse_stage_arguments(stage: TrainerStage, argv: list[str] | None) -> tuple:
    """The stage's flags, in this order: script, model, StageArguments, DataArguments, HubArguments,
    BackendArguments, training (TRL's config)."""
    adopt_mpi_environment()
    # TRL's own default (gradient_checkpointing=True) trips transformers 5's rename warning on every run.
    warnings.filterwarnings("ignore", message="`gradient_checkpointing` is deprecated", category=FutureWarning)
    argv = drop_debug_switch(argv)  # --debug: full tracebacks (run_main); not the Trainer's --debug <features>
    script_type, model_type, train_type = stage.arguments
    types = (script_type, model_type, StageArguments, DataArguments, HubArguments, BackendArguments, train_type)
    return parse_arguments(types, argv, stage.usage)


def card_inputs(stage: TrainerStage, run: Run) -> dict[str, Any]:
    """What the published folder's README.md says about the run (``rlhf.outputs.model_card.write_model_card``)."""
    return {
        "stage": stage.name,
        "base_model": run.model_args.model_name_or_path,
        "data": run.data_args.dataset_name,
        "flags": changed_flags(run.script, run.model_args, run.stage_args, run.data_args, run.train_args),
        "secrets": [run.hub.hf_access_token],
    }


def run_trainer_stage(stage: TrainerStage, argv: list[str] | None = None, parsed: tuple | None = None) -> int:
    """Run the stage from its command line ``argv``, or from flags ``parse_stage_arguments`` already parsed."""
    # ------------------------------------------------------------------ arguments
    parsed = parse_stage_arguments(stage, argv) if parsed is None else parsed
    script, model_args, stage_args, data_args, hub, backend_args, train_args = parsed
    setup_logging(train_args.log_level)
    protect_secrets(hub, train_args)
    backend = select_backend(backend_args)
    run = Run(script, model_args, stage_args, data_args, hub, backend_args, train_args, backend)
    accept_legacy_training_flags(train_args, stage_args.evaluation_strategy)
    train_args.trust_remote_code = model_args.trust_remote_code  # TRL's copy of the flag follows ours
    run.quantization = model_args.quantization_config(backend.name)
    check_quantized_launch(run.quantization)  # no QLoRA with FSDP/ZeRO-3
    check_training_flags(train_args)
    check_device_flag(backend_args.device, train_args)
    stage.configure(run)
    published = train_args.output_dir
    card = card_inputs(stage, run)  # flags as given, before the steps below adjust any
    # --push_to_hub: the published folder, once, at the end (the Trainer itself would push its checkpoints)
    push_to = hub_repo_id(train_args.hub_model_id, published) if train_args.push_to_hub else None
    train_args.push_to_hub = False
    guard = TrainingGuard(stage_args.nonfinite_loss, published)  # SIGTERM, NaN/inf, failed saves: rlhf.stages.guard
    resume = resolve_resume(train_args.resume_from_checkpoint, published)

    # ------------------------------------------------------------------ data
    split = load_pairs(data_args, hub.token)
    run.tokenizer = load_tokenizer(
        model_args.tokenizer_path,
        token=hub.token,
        use_fast=model_args.use_fast_tokenizer,
        trust_remote_code=model_args.trust_remote_code,
    )
    fmt = resolve_prompt_format(data_args.prompt_template, run.tokenizer, model_args.model_name_or_path)
    run.train_rows, run.eval_rows = encode_split(split, run.tokenizer, fmt, train_args.max_length)
    from datasets import Dataset

    train_ds = Dataset.from_list(stage.features(run.train_rows))
    eval_ds = Dataset.from_list(stage.features(run.eval_rows)) if run.eval_rows else None
    if eval_ds is None and train_args.eval_strategy != "no":
        raise UsageError("--eval_strategy needs eval rows: raise --validation_split_percentage")
    output_dir = start_output(published, stage_args.overwrite_output_dir, resume is not None)
    train_args.output_dir = str(checkpoints_dir(published))  # the Trainer's checkpoints (and TRL's card) go there

    # ------------------------------------------------------------------ model
    from transformers import set_seed

    set_seed(train_args.seed)  # new weights (a pad embedding, LoRA, a score head) are drawn: same --seed, same run
    model, trainer_kwargs = stage.load_model(run)

    # ------------------------------------------------------------------ train (a SIGTERM from here on: checkpoint)
    with guard:
        trainer = stage.build_trainer(
            backend,
            backend_args,
            model=model,
            args=train_args,
            train_dataset=train_ds,
            eval_dataset=eval_ds,
            processing_class=run.tokenizer,
            callbacks=[guard],
            **trainer_kwargs,
        )
        tracker_logs_beside_the_model(trainer, output_dir)
        result = guard.train(trainer, resume)
        if guard.preempted:
            return EXIT_PREEMPTED  # a checkpoint was written; the log says how to resume

        # -------------------------------------------------------------- the stage's own metrics, then save
        measured, files = stage.after_training(run, trainer)
        metrics = {"seed": train_args.seed, "train": result.metrics, **measured}
        metrics["nonfinite_steps_skipped"] = guard.nonfinite_steps
        save_stage_output(
            trainer,
            output_dir,
            run.tokenizer,
            fmt,
            metrics,
            stage=stage.name,
            data_report=split.report,
            files=files,
            card=card,
        )
    if trainer.is_world_process_zero():
        if not stage_args.keep_checkpoints:
            remove_checkpoints(output_dir)  # published: the folder holds the model only
        if push_to:
            push_folder(output_dir, push_to, private=train_args.hub_private_repo)
    return 0


def tracker_logs_beside_the_model(trainer: Any, output_dir: Path) -> None:
    """TensorBoard events in ``O/runs/<date>_<host>/``, as before checkpoints moved: transformers 5 would write them
    under the Trainer's own ``output_dir`` (``O/checkpoints/``), which is removed once the model is published. An
    explicit ``TENSORBOARD_LOGGING_DIR`` still wins. (transformers 4.x, the Gaudi stack, takes ``--logging_dir``,
    which it set under ``O`` when the flags were parsed.)"""
    import socket
    from datetime import datetime

    from transformers.integrations import TensorBoardCallback

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback) and getattr(callback, "logging_dir", "") is None:
            run = f"{datetime.now().strftime('%b%d_%H-%M-%S')}_{socket.gethostname()}"  # transformers' own naming
            callback.logging_dir = str(output_dir / "runs" / run)
