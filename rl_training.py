"""Stage 3 — PPO: improve the SFT policy against the reward model, KL-anchored to the SFT model.

    python rl_training.py --model_name out/sft --reward_model_name out/rm --dataset_name data/orca_sample/train.jsonl \
        --batch_size 8 --mini_batch_size 2 --gradient_accumulation_steps 2 --steps 800 --output_dir out/ppo
    accelerate launch --multi_gpu --num_machines 1 --num_processes 8 rl_training.py --log_with=wandb \
        --model_name=M --reward_model_name=R --adafactor=False --tokenizer_name=M --save_freq=100 \
        --output_max_length=128 --batch_size=8 --gradient_accumulation_steps=8 --batched_gen=True --ppo_epochs=4 \
        --seed=0 --learning_rate=1.4e-5 --early_stopping=True --output_dir=O
    python3 rl_training.py ... --mini_batch_size=1 --use_habana
    python3 gaudi_spawn.py --world_size 8 --use_mpi rl_training.py ... --use_habana

The PPO engine is this project's own (``rlhf/ppo_engine.py``; TRL no longer ships one). The policy is the SFT model
with a LoRA adapter (``--peft none`` for a full fine-tune) and a value head; the reference is the same network with
the adapter switched off (or a frozen copy). Prompts and the reward model's input use the prompt format saved by the
earlier stages. Output: ``step_N/`` every ``--save_freq`` steps and ``final/`` (merged policy loadable with
``AutoModelForCausalLM``), ``metrics.jsonl`` (one line per step), ``samples.jsonl``. Resume with
``--resume_from_checkpoint latest``.
"""

from __future__ import annotations

import copy
import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import HfArgumentParser

from rlhf.cli import parse_bool, parse_dataclasses, setup_logging
from rlhf.data.encoding import encode_text
from rlhf.data.pairs import DataArguments, load_pairs
from rlhf.data.prompt_format import PromptFormat, resolve_prompt_format
from rlhf.errors import RunError, UsageError, run_main
from rlhf.models.arguments import LoraArguments
from rlhf.models.loading import (
    check_causal_lm_folder,
    check_lora_targets,
    check_reward_folder,
    dtype_kwarg,
    fit_embeddings,
    load_tokenizer,
    resolve_dtype,
)
from rlhf.models.reward import RewardScorer, load_reward_stats
from rlhf.outputs.folders import clean_stale_temporaries
from rlhf.outputs.jsonl import truncate_jsonl, write_jsonl
from rlhf.ppo.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint
from rlhf.ppo.config import PPOConfig
from rlhf.ppo.engine import PPOEngine, PromptSampler
from rlhf.ppo.models import PolicyWithValue
from rlhf.runtime.backend import BackendArguments, adopt_mpi_environment, select_backend
from rlhf.runtime.distributed import (
    check_quantized_launch,
    configure_deepspeed_for_ppo,
    deepspeed_stage,
    frozen_model_loading,
    frozen_weights_dtype,
    ppo_optimizer,
)
from rlhf.runtime.precision import PrecisionArguments
from rlhf.runtime.stack import build_accelerator, device_runtime
from rlhf.secrets import HubArguments, protect_secrets, public_dict

logger = logging.getLogger("rl_training")
TRACKERS = ("wandb", "tensorboard", "none")


@dataclass
class ScriptArguments:
    model_name: str = field(default="", metadata={"help": "The SFT policy: hub name or folder (sft.py output)."})
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer, if not the model's own."})
    reward_model_name: str = field(
        default="", metadata={"help": "The reward model folder (reward_modeling.py output)."}
    )
    output_dir: str = field(default="out/ppo", metadata={"help": "Where checkpoints, metrics and the final policy go."})
    log_with: str | None = field(
        default=None,
        metadata={"help": "Tracker: wandb, tensorboard or none. A JSONL log (metrics.jsonl) is always written."},
    )
    project_name: str = field(default="rlhf-ppo", metadata={"help": "Tracker project/run group name."})
    save_freq: int | None = field(default=None, metadata={"help": "Save output_dir/step_N every N PPO steps."})
    save_merged: bool = field(
        default=False, metadata={"help": "Also write the merged policy into step_N folders (final/ always has it)."}
    )
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "A step_N folder, or 'latest' for the newest complete one in output_dir."}
    )
    seed: int = field(default=0, metadata={"help": "Seed for sampling, shuffling and initialisation."})
    peft: str = field(default="lora", metadata={"help": "lora (default) or none for a full fine-tune."})
    torch_dtype: str = field(
        default="float32",
        metadata={
            "help": "Dtype the policy, reference and reward weights are stored in. float32 (default) keeps master "
            "weights and optimizer state in fp32 under --bf16 mixed precision; bfloat16 stores the weights "
            "themselves in bf16 (half the memory, updates rounded to bf16)."
        },
    )
    batched_gen: bool = field(
        default=True, metadata={"help": "Accepted for the reference command line: generation is always batched."}
    )
    log_samples_every: int = field(default=10, metadata={"help": "Log a few (prompt, response, score) every N steps."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model repos to run their own code."})
    load_in_4bit: bool = field(
        default=False,
        metadata={"help": "QLoRA: load the policy and reward model in 4 bit (NF4; CUDA + bitsandbytes, --peft lora)."},
    )
    load_in_8bit: bool = field(
        default=False,
        metadata={"help": "Load the policy and reward model in 8 bit (CUDA + bitsandbytes, --peft lora)."},
    )
    debug: bool = field(default=False, metadata={"help": "Full tracebacks for input errors."})


@dataclass
class PPOLoraArguments(LoraArguments):
    lora_rank: int = field(default=16, metadata={"help": "LoRA rank r (reference: 16)."})
    lora_alpha: float = field(default=32, metadata={"help": "LoRA alpha (reference: 32)."})
    lora_dropout: float = field(
        default=0.05,
        metadata={"help": "LoRA dropout (reference: 0.05; off during PPO forwards, which run in eval mode)."},
    )


class StopRequested:
    """SIGTERM (what schedulers send before preemption): finish the step, checkpoint, exit."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True


def main(argv: list[str] | None = None) -> int:
    # ------------------------------------------------------------------ arguments
    adopt_mpi_environment()
    parser = HfArgumentParser(
        (
            ScriptArguments,
            PPOConfig,
            PPOLoraArguments,
            DataArguments,
            HubArguments,
            BackendArguments,
            PrecisionArguments,
        )
    )
    script, cfg, lora_args, data_args, hub, backend_args, precision = parse_dataclasses(parser, argv)
    setup_logging("debug" if script.debug else "info")
    protect_secrets(hub)
    if not script.model_name or not script.reward_model_name:
        raise UsageError("--model_name and --reward_model_name are required")
    if script.log_with not in (None, *TRACKERS):
        raise UsageError(f"--log_with: expected one of {', '.join(TRACKERS)}, got {script.log_with!r}")
    if script.peft not in ("lora", "none"):
        raise UsageError(f"--peft: expected lora or none, got {script.peft!r}")
    if script.save_freq is not None and script.save_freq < 1:
        raise UsageError(f"--save_freq: expected a positive integer, got {script.save_freq}")
    parse_bool(script.batched_gen, "batched_gen")
    backend = select_backend(backend_args)
    mixed_precision = precision.mixed_precision("ppo", backend)  # flags, else accelerate's config, else the default
    dtype = resolve_dtype(script.torch_dtype)
    compute_dtype = dtype if isinstance(dtype, torch.dtype) else None
    quantization = backend.quantization_config(script.load_in_4bit, script.load_in_8bit, compute_dtype)
    check_quantized_launch(quantization)  # no QLoRA with FSDP/ZeRO-3
    if quantization is not None and script.peft != "lora":
        raise UsageError("--load_in_4bit/--load_in_8bit: quantized weights cannot be fully fine-tuned; use --peft lora")
    if backend.is_gaudi and not cfg.static_shapes:
        logger.info("Gaudi: static shapes on (prompts padded to --max_prompt_length, responses to their maximum)")
        cfg.static_shapes = True
    accelerator = build_accelerator(  # accelerate's Accelerator; GaudiAccelerator on the Gaudi stack
        backend,
        mixed_precision=mixed_precision,
        log_with=None if script.log_with in (None, "none") else script.log_with,
        project_dir=script.output_dir,
    )
    try:
        cfg.validate(accelerator.num_processes)
    except ValueError as err:
        raise UsageError(str(err)) from None
    logger.info("precision: %s mixed precision, weights in %s", accelerator.mixed_precision, script.torch_dtype)
    frozen_dtype = frozen_weights_dtype(accelerator, dtype)  # DeepSpeed/FSDP compute in low-precision weights
    check_causal_lm_folder(script.model_name, "model_name")
    check_reward_folder(script.reward_model_name, "reward_model_name")
    output_dir = Path(script.output_dir)
    resume = resolve_checkpoint(script.resume_from_checkpoint, output_dir)

    # ------------------------------------------------------------------ data: prompts in the policy's format
    split = load_pairs(data_args, hub.token)
    tokenizer, _ = load_tokenizer(
        script.tokenizer_name or script.model_name, hub.token, trust_remote_code=script.trust_remote_code
    )
    fmt = resolve_prompt_format(data_args.prompt_template, tokenizer, script.model_name)
    prompts, seen = [], set()
    for pair in split.train:
        if (pair.system, pair.question) in seen:
            continue
        seen.add((pair.system, pair.question))
        ids = encode_text(tokenizer, fmt.render_prompt(pair.system, pair.question, tokenizer), fmt)
        if len(ids) > cfg.max_prompt_length:
            split.report.drop("prompt_over_max_prompt_length")
            continue
        prompts.append({"system": pair.system, "question": pair.question, "prompt_ids": ids})
    split.report.log()
    if not prompts:
        raise UsageError(f"no prompt fits in --max_prompt_length {cfg.max_prompt_length}")

    # ------------------------------------------------------------------ models
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    torch.manual_seed(script.seed)  # identical initialisation (LoRA, value head) on every process
    quantized = {"quantization_config": quantization} if quantization is not None else {}
    lm = AutoModelForCausalLM.from_pretrained(
        script.model_name,
        token=hub.token,
        trust_remote_code=script.trust_remote_code,
        **dtype_kwarg(dtype),
        **quantized,
    )
    fit_embeddings(lm, tokenizer)
    ref_model = None
    if script.peft == "lora":
        from peft import get_peft_model

        if quantization is not None:
            from peft import prepare_model_for_kbit_training

            lm = prepare_model_for_kbit_training(lm, use_gradient_checkpointing=False)
        peft_config = lora_args.peft_config("CAUSAL_LM")
        check_lora_targets(lm, peft_config)
        lm = get_peft_model(lm, peft_config)
    elif deepspeed_stage(accelerator) == 3:  # the policy was partitioned while loading: load the reference whole
        with frozen_model_loading(accelerator):
            ref_model = AutoModelForCausalLM.from_pretrained(
                script.model_name,
                token=hub.token,
                trust_remote_code=script.trust_remote_code,
                **dtype_kwarg(frozen_dtype),
            )
        fit_embeddings(ref_model, tokenizer)
        ref_model = ref_model.eval().requires_grad_(False).to(accelerator.device)
    else:
        ref_model = copy.deepcopy(lm).eval().requires_grad_(False).to(accelerator.device)
        if isinstance(frozen_dtype, torch.dtype):
            ref_model = ref_model.to(frozen_dtype)
    policy = PolicyWithValue(lm)

    rm_tokenizer, _ = load_tokenizer(script.reward_model_name, hub.token, trust_remote_code=script.trust_remote_code)
    rm_fmt = PromptFormat.load(script.reward_model_name) or fmt
    if rm_fmt != fmt:
        logger.warning(
            "the reward model was trained with a different prompt format (%s) than the policy (%s); "
            "it will score in its own format",
            rm_fmt.kind,
            fmt.kind,
        )
    with frozen_model_loading(accelerator):  # inference only: a whole replica on every process, never sharded
        reward_model = AutoModelForSequenceClassification.from_pretrained(
            script.reward_model_name,
            num_labels=1,
            token=hub.token,
            trust_remote_code=script.trust_remote_code,
            **dtype_kwarg(frozen_dtype if quantization is None else dtype),
            **quantized,
        )
    reward_model.config.pad_token_id = rm_tokenizer.pad_token_id
    reward_model = reward_model.eval().requires_grad_(False)
    if quantization is None:  # bitsandbytes places quantized weights on the GPU itself and refuses .to()
        reward_model = reward_model.to(accelerator.device)
    reward_stats = load_reward_stats(script.reward_model_name)
    if cfg.normalize_rewards and not reward_stats:
        raise UsageError(f"--normalize_rewards: {script.reward_model_name} has no reward_stats.json")

    trainable = [p for p in policy.parameters() if p.requires_grad]
    configure_deepspeed_for_ppo(accelerator, cfg.mini_batch_size, cfg.max_grad_norm)
    optimizer = ppo_optimizer(accelerator, trainable, cfg.learning_rate, cfg.adafactor)
    policy, optimizer = accelerator.prepare(policy, optimizer)

    # ------------------------------------------------------------------ engine, resume, trackers
    # The policy's tokenizer and format: when the reward model shares both, it scores the sampled ids directly.
    scorer = RewardScorer(reward_model, rm_tokenizer, rm_fmt, policy_tokenizer=tokenizer, policy_fmt=fmt)
    logger.info(
        "the reward model scores %s",
        "the policy's own token ids (same tokenizer and prompt format)"
        if scorer.reads_policy_ids
        else "the decoded responses, re-encoded in its own tokenizer and format",
    )
    engine = PPOEngine(
        cfg,
        accelerator,
        policy,
        optimizer,
        tokenizer,
        scorer,
        ref_model,
        reward_stats,
        script.seed,
        runtime=device_runtime(backend),  # Gaudi: mark_step in lazy mode, HPU graphs for no-grad forwards
    )
    sampler = PromptSampler(
        len(prompts), cfg.batch_size, accelerator.num_processes, accelerator.process_index, script.seed
    )
    torch.manual_seed(script.seed + accelerator.process_index)  # each process samples different responses
    step = 0
    if resume is not None:
        step = load_checkpoint(resume, accelerator, engine, sampler)
        logger.info("resumed from %s at step %d", resume, step)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        clean_stale_temporaries(output_dir)
        truncate_jsonl(output_dir / "metrics.jsonl", step)
        truncate_jsonl(output_dir / "samples.jsonl", step)
    if script.log_with not in (None, "none"):
        secrets = [hub.hf_access_token]
        config = {**public_dict(script, secrets), **public_dict(cfg, secrets)}
        accelerator.init_trackers(script.project_name, config=config)

    # ------------------------------------------------------------------ train
    from tqdm.auto import tqdm

    total = cfg.num_steps(accelerator.num_processes)
    stop = StopRequested()
    bar = tqdm(total=total, initial=step, desc="ppo", disable=not accelerator.is_main_process)
    while step < total:
        batch = [prompts[i] for i in sampler.next_batch()]
        try:
            stats, rollout = engine.step(batch)
        except FloatingPointError as err:
            raise RunError(
                f"step {step + 1}: {err}; nothing of this step was applied or saved (the last checkpoint is intact)"
            ) from None
        step += 1
        # Every rank logs its own coefficient (--debug): the KL control must decide identically on all of them.
        logger.debug("rank %d step %d: kl_coef %r", accelerator.process_index, step, engine.kl_ctl.value)
        if accelerator.is_main_process:
            write_jsonl(output_dir / "metrics.jsonl", {"step": step, **stats})
            if script.log_samples_every and step % script.log_samples_every == 0:
                for b, text, score in list(zip(batch, rollout.responses, rollout.raw_scores.tolist(), strict=True))[:3]:
                    write_jsonl(
                        output_dir / "samples.jsonl",
                        {"step": step, "question": b["question"], "response": text, "score": score},
                    )
        accelerator.log(stats, step=step)
        bar.update(1)
        bar.set_postfix(reward=f"{stats['objective/scores']:.3f}", kl=f"{stats['objective/kl']:.2f}")
        stopping = _any_rank(accelerator, stop.requested)
        if stopping or (script.save_freq and step % script.save_freq == 0 and step < total):
            save_checkpoint(
                output_dir / f"step_{step}",
                accelerator,
                engine,
                sampler,
                tokenizer,
                fmt,
                step,
                merged=script.save_merged,
            )
        if stopping:
            logger.warning(
                "SIGTERM: saved %s; continue with the same command plus --resume_from_checkpoint latest",
                output_dir / f"step_{step}",
            )
            return _finish(accelerator, 143)
    bar.close()

    # ------------------------------------------------------------------ save
    save_checkpoint(output_dir / "final", accelerator, engine, sampler, tokenizer, fmt, step, merged=True, final=True)
    logger.info("PPO done: %d steps; policy in %s", step, output_dir / "final")
    return _finish(accelerator, 0)


def _finish(accelerator: Any, code: int) -> int:
    """Close the trackers and the process group; with several processes, leave right away.

    Freeing the DDP model after the process group is gone joins gloo's worker threads while holding the GIL, and a
    worker that still has to free the last collective's tensors waits for that GIL: a deadlock at exit (about one
    2-process CPU run in ten on a loaded machine). Everything is written and closed by now, so skip the teardown.
    """
    accelerator.end_training()
    if accelerator.num_processes > 1:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _any_rank(accelerator: Any, flag: bool) -> bool:
    """A stop request on any process stops all of them at the same step."""
    tensor = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return accelerator.reduce(tensor, reduction="sum").item() > 0


if __name__ == "__main__":
    run_main(main)
