"""Stage 3 — PPO: improve the SFT policy against the reward model, KL-anchored to the SFT model.

    python rl_training.py --model_name out/sft --reward_model_name out/rm --dataset_name data/orca_sample/train.jsonl \\
        --batch_size 8 --mini_batch_size 2 --gradient_accumulation_steps 2 --steps 800 --output_dir out/ppo
    python rl_training.py --config ppo.yaml              (flags in a YAML file; command-line flags override it)
    accelerate launch --multi_gpu --num_machines 1 --num_processes 8 rl_training.py --log_with=wandb \\
        --model_name=M --reward_model_name=R --adafactor=False --tokenizer_name=M --save_freq=100 \\
        --output_max_length=128 --batch_size=8 --gradient_accumulation_steps=8 --batched_gen=True --ppo_epochs=4 \\
        --seed=0 --learning_rate=1.4e-5 --early_stopping=True --output_dir=O
    python3 rl_training.py ... --mini_batch_size=1 --use_habana
    python3 gaudi_spawn.py --world_size 8 --use_mpi rl_training.py ... --use_habana

The PPO engine is this project's own (``rlhf/ppo/``; TRL no longer ships one). The policy is the SFT model with a
LoRA adapter (``--peft none`` for a full fine-tune) and a value head; the reference is the same network with the
adapter switched off (or a frozen copy). Prompts and the reward model's input use the prompt format saved by the
earlier stages. Output: ``step_N/`` every ``--save_freq`` steps and at the last step (resume state; the newest
``--save_total_limit`` kept), ``final/`` (the model as users upload it: merged policy loadable with
``AutoModelForCausalLM``, adapter, value head, tokenizer, prompt format, model card; no optimizer or RNG state),
``metrics.jsonl`` (one line per step, TRL's metric names), ``samples.jsonl``. Resume with
``--resume_from_checkpoint latest`` (a checkpoint of another run is refused). A folder holding a finished run is
refused unless ``--overwrite_output_dir``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from rlhf.cli import check_output_dir, check_seed, parse_arguments, parse_bool, setup_logging
from rlhf.data.pairs import DataArguments
from rlhf.errors import EXIT_PREEMPTED, RunError, UsageError, run_main
from rlhf.models.arguments import DTYPES, ModelArguments
from rlhf.outputs.hub import push_folder
from rlhf.ppo.config import PPOConfig
from rlhf.ppo.trainer import TRACKERS, StopRequested, finish, log_step, save, setup
from rlhf.runtime.backend import BackendArguments, adopt_mpi_environment
from rlhf.runtime.device import module_available
from rlhf.runtime.precision import PrecisionArguments
from rlhf.secrets import HubArguments, protect_secrets

logger = logging.getLogger("rl_training")


@dataclass
class ScriptArguments:
    reward_model_name: str = field(
        default=None, metadata={"help": "The reward model folder (reward_modeling.py output).", "required": True}
    )
    output_dir: str = field(default="out/ppo", metadata={"help": "Where checkpoints, metrics and the final policy go."})
    log_with: str | None = field(
        default=None,
        metadata={
            "help": "Tracker (alias --report_to). A JSONL log (metrics.jsonl) is always written.",
            "choices": list(TRACKERS),
            "aliases": ["--report_to"],
        },
    )
    project_name: str = field(default="rlhf-ppo", metadata={"help": "Tracker project/run group name."})
    save_freq: int | None = field(
        default=25,
        metadata={
            "help": "Save output_dir/step_N every N PPO steps (alias --save_steps), and always at the last step. "
            "25: a crash costs at most 25 steps (minutes to an hour on one GPU), while a LoRA checkpoint is small "
            "enough to write that often.",
            "aliases": ["--save_steps"],
        },
    )
    save_total_limit: int | None = field(
        default=2,
        metadata={
            "help": "Keep only the newest N complete step_N folders (2: the newest, and one more should it be "
            "damaged; a full fine-tune's checkpoints are large). The folder a run resumed from is never deleted."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Start afresh in an --output_dir that holds a finished run or another run's checkpoints (its "
            "step_N folders go; its final/ stays until the new one replaces it). Otherwise that is refused."
        },
    )
    save_merged: bool = field(
        default=False, metadata={"help": "Also write the merged policy into step_N folders (final/ always has it)."}
    )
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "A step_N folder, or 'latest' for the newest complete one in output_dir."}
    )
    seed: int = field(default=0, metadata={"help": "Seed for sampling, shuffling and initialisation."})
    push_to_hub: bool = field(
        default=False,
        metadata={"help": "Upload final/ (the model and its card, nothing else) to the hub at the end."},
    )
    hub_model_id: str | None = field(
        default=None, metadata={"help": "Hub repository for --push_to_hub (default: the --output_dir folder's name)."}
    )
    hub_private_repo: bool | None = field(
        default=None, metadata={"help": "Create the --push_to_hub repository as private."}
    )
    batched_gen: str = field(
        default="true", metadata={"help": "Accepted for the reference command line: generation is always batched."}
    )
    log_samples_every: int = field(
        default=10, metadata={"help": "Log a few (prompt, response, score) to samples.jsonl every N steps (0: never)."}
    )
    debug: bool = field(default=False, metadata={"help": "Full tracebacks for input errors."})

    def __post_init__(self) -> None:
        parse_bool(self.batched_gen, "batched_gen")  # the reference passes --batched_gen=True: a no-op, but checked
        check_output_dir(self.output_dir)
        check_seed(self.seed)
        if self.log_samples_every < 0:
            raise UsageError(f"--log_samples_every: expected 0 (never) or more, got {self.log_samples_every}")
        check_tracker(self.log_with)


def check_tracker(name: str | None) -> None:
    """``--log_with``: a tracker that is not installed stops here (accelerate would drop it with a warning)."""
    packages = {"wandb": ("wandb",), "tensorboard": ("tensorboard", "tensorboardX")}.get(name or "none", ())
    if packages and not any(module_available(package) for package in packages):
        raise UsageError(f"--log_with {name}: not installed here (pip install {packages[0]}), or --log_with none")


@dataclass
class PPOModelArguments(ModelArguments):
    """The SFT policy (the reference's --model_name) and its adapter, with the reference's LoRA shape."""

    model_name_or_path: str = field(
        default=None,
        metadata={
            "help": "The SFT policy: hub name or folder (sft.py output).",
            "aliases": ["--model_name"],
            "required": True,
        },
    )
    torch_dtype: str = field(
        default="float32",
        metadata={
            "help": "Dtype the policy, reference and reward weights are stored in. float32 (default) keeps master "
            "weights and optimizer state in fp32 under --bf16 mixed precision; bfloat16 stores the weights "
            "themselves in bf16 (half the memory, updates rounded to bf16).",
            "choices": list(DTYPES),
        },
    )
    lora_rank: int = field(default=16, metadata={"help": "LoRA rank r (reference: 16)."})
    lora_alpha: float = field(default=32, metadata={"help": "LoRA alpha (reference: 32)."})
    lora_dropout: float = field(
        default=0.05,
        metadata={"help": "LoRA dropout (reference: 0.05; off during PPO forwards, which run in eval mode)."},
    )


ARGUMENTS = (
    ScriptArguments,
    PPOModelArguments,
    PPOConfig,
    DataArguments,
    HubArguments,
    BackendArguments,
    PrecisionArguments,
)


def main(argv: list[str] | None = None) -> int:
    # ------------------------------------------------------------------ setup: flags, prompts, models, engine
    adopt_mpi_environment()
    script, model_args, cfg, data_args, hub, backend_args, precision = parse_arguments(ARGUMENTS, argv, __doc__)
    if data_args.max_eval_samples is not None:  # PPO reads only the training rows
        raise UsageError(
            "--max_eval_samples: PPO has no evaluation rows; --max_train_samples limits its prompts and "
            "--validation_split_percentage holds rows out of them"
        )
    setup_logging("debug" if script.debug else "info")
    protect_secrets(hub)
    run = setup(script, model_args, cfg, data_args, hub, backend_args, precision)
    from tqdm.auto import tqdm

    stop = StopRequested()
    bar = tqdm(total=run.total_steps, initial=run.step, desc="ppo", disable=not run.accelerator.is_main_process)

    # ------------------------------------------------------------------ train: rollout, update, log, save
    while run.step < run.total_steps:
        batch = run.next_batch()
        try:
            rollout = run.engine.rollout(batch)
            stats = run.engine.update(rollout)
        except FloatingPointError as err:
            raise RunError(
                f"step {run.step + 1}: {err}; nothing of this step was applied or saved (the last checkpoint is intact)"
            ) from None
        run.step += 1
        log_step(run, stats, rollout, batch, bar)
        stopping = run.collectives.any(stop.requested)  # a stop on any process stops all at the same step
        if stopping or run.checkpoint_due():
            folder = save(run, f"step_{run.step}")
        if stopping:
            logger.warning(
                "SIGTERM: saved %s; continue with the same command plus --resume_from_checkpoint latest", folder
            )
            return finish(run, EXIT_PREEMPTED)
    bar.close()

    # ------------------------------------------------------------------ save: resume state, then the published model
    save(run, f"step_{run.step}")
    folder = save(run, "final")
    logger.info("PPO done: %d steps; policy in %s", run.step, folder)
    if run.push_to and run.accelerator.is_main_process:
        push_folder(folder, run.push_to, private=script.hub_private_repo)
    return finish(run, 0)


def cli() -> None:
    """The console command (pip install .)."""
    run_main(main)


if __name__ == "__main__":  # python -m rlhf.scripts.rl_training
    cli()
