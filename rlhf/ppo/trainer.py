"""The phases rl_training.py's ``main`` calls, in the order it calls them (torchtune's recipe shape):

setup     backend, precision, accelerator; prompts in the policy's format; policy (+ LoRA) and value head,
          reference, reward model; optimizer; engine; resume; trackers
rollout   PPOEngine.rollout: sample, score, advantages          (rlhf.ppo.engine)
update    PPOEngine.update: PPO epochs, KL control, LR schedule  (rlhf.ppo.engine)
log       metrics.jsonl, samples.jsonl, trackers, progress bar
save      step_N/ checkpoints and final/ (rlhf.ppo.checkpoint)
"""

from __future__ import annotations

import copy
import json
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlhf.data.pairs import load_pairs
from rlhf.data.prompt_format import PromptFormat, resolve_prompt_format
from rlhf.data.prompts import PromptSampler, answer_length_quantile, build_prompts
from rlhf.errors import UsageError
from rlhf.models.loading import (
    check_causal_lm_folder,
    check_reward_folder,
    frozen,
    load_causal_lm,
    load_tokenizer,
    with_lora,
)
from rlhf.models.reward import load_reward_stats, load_scorer
from rlhf.outputs.folders import clean_stale_temporaries
from rlhf.outputs.hub import hub_repo_id
from rlhf.outputs.jsonl import truncate_jsonl, write_jsonl
from rlhf.outputs.model_card import changed_flags
from rlhf.ppo.checkpoint import (
    check_same_run,
    discard_previous_run,
    load_checkpoint,
    resolve_checkpoint,
    rotate_checkpoints,
    run_identity,
    save_checkpoint,
    start_output,
)
from rlhf.ppo.engine import PPOEngine, Rollout
from rlhf.ppo.models import PolicyWithValue
from rlhf.runtime.backend import select_backend
from rlhf.runtime.distributed import (
    Collectives,
    check_quantized_launch,
    configure_deepspeed_for_ppo,
    deepspeed_stage,
    frozen_model_loading,
    frozen_weights_dtype,
    ppo_optimizer,
    shards_optimizer,
)
from rlhf.runtime.stack import build_accelerator, device_runtime
from rlhf.secrets import public_dict

logger = logging.getLogger("rlhf.ppo.trainer")

TRACKERS = ("wandb", "tensorboard", "none")


@dataclass
class PPORun:
    """One PPO run: what setup built, and where the loop is."""

    script: Any  # rl_training.ScriptArguments
    accelerator: Any
    engine: PPOEngine
    sampler: PromptSampler
    prompts: list[dict[str, Any]]
    tokenizer: Any
    fmt: PromptFormat
    output_dir: Path
    total_steps: int
    identity: dict[str, Any]  # run.json: what a resume must match (rlhf.ppo.checkpoint.run_identity)
    card: dict[str, Any]  # final/README.md: the model card's inputs, metrics added at the end
    step: int = 0
    resumed_from: Path | None = None  # never rotated away
    push_to: str | None = None  # --push_to_hub: the hub repository final/ goes to

    @property
    def collectives(self) -> Collectives:
        return self.engine.collectives

    def next_batch(self) -> list[dict[str, Any]]:
        """This process's prompts for the step, each repeated --samples_per_prompt times in a row (one group)."""
        k = self.engine.config.samples_per_prompt
        return [self.prompts[i] for i in self.sampler.next_batch() for _ in range(k)]

    def checkpoint_due(self) -> bool:
        freq = self.script.save_freq
        return bool(freq) and self.step % freq == 0 and self.step < self.total_steps


# ----------------------------------------------------------------------------------------------------------------
# setup


def setup(
    script: Any, model_args: Any, cfg: Any, data_args: Any, hub: Any, backend_args: Any, precision: Any
) -> PPORun:
    """Everything before the first step, each flag checked before anything heavy is loaded."""
    for flag in ("save_freq", "save_total_limit"):
        value = getattr(script, flag)
        if value is not None and value < 1:
            raise UsageError(f"--{flag}: expected a positive integer, got {value}")
    output_dir = Path(script.output_dir)
    start_output(output_dir, script.overwrite_output_dir, bool(script.resume_from_checkpoint))
    push_to = hub_repo_id(script.hub_model_id, output_dir) if script.push_to_hub else None
    backend = select_backend(backend_args)
    mixed_precision = precision.mixed_precision("ppo", backend)  # flags, else accelerate's config, else the default
    quantization = model_args.quantization_config(backend.name, model_args.dtype)
    check_quantized_launch(quantization)  # no QLoRA with FSDP/ZeRO-3
    if backend.is_gaudi and not cfg.static_shapes:
        logger.info("Gaudi: static shapes on (prompts padded to --max_prompt_length, responses to their maximum)")
        cfg.static_shapes = True
    accelerator = build_accelerator(  # accelerate's Accelerator; GaudiAccelerator on the Gaudi stack
        backend,
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        log_with=None if script.log_with in (None, "none") else script.log_with,
        project_dir=script.output_dir,
    )
    if accelerator.gradient_accumulation_steps != cfg.gradient_accumulation_steps:
        raise UsageError(
            f"--gradient_accumulation_steps {cfg.gradient_accumulation_steps}: the accelerate config says "
            f"{accelerator.gradient_accumulation_steps}; give one value (accumulation is PPO's own flag here)"
        )
    try:
        cfg.validate(accelerator.num_processes)
    except ValueError as err:
        raise UsageError(str(err)) from None
    logger.info("precision: %s mixed precision, weights in %s", accelerator.mixed_precision, model_args.torch_dtype)
    check_causal_lm_folder(model_args.model_name_or_path, "model_name")  # the wrong kind of folder stops here
    check_reward_folder(script.reward_model_name, "reward_model_name")
    resume = resolve_checkpoint(script.resume_from_checkpoint, output_dir)
    identity = run_identity(
        model_args,
        cfg,
        data_args,
        script.reward_model_name,
        script.seed,
        accelerator.num_processes,
        accelerator.mixed_precision,
    )
    if resume is not None:
        check_same_run(resume, identity, shards_optimizer(accelerator))  # before any model is loaded

    # ------------------------------------------------------------------ prompts in the policy's format
    split = load_pairs(data_args, hub.token)
    tokenizer = load_tokenizer(
        model_args.tokenizer_path, hub.token, model_args.use_fast_tokenizer, model_args.trust_remote_code
    )
    fmt = resolve_prompt_format(data_args.prompt_template, tokenizer, model_args.model_name_or_path)
    prompts = build_prompts(split.train, tokenizer, fmt, cfg.max_prompt_length, report=split.report)
    split.report.log()
    if not prompts:
        raise UsageError(f"no prompt fits in --max_prompt_length {cfg.max_prompt_length}")
    if cfg.response_length_quantile is not None:
        longest = answer_length_quantile(split.train, tokenizer, cfg.response_length_quantile)
        cfg.response_length = min(-(-longest // 8) * 8, cfg.output_max_length)
        logger.info(
            "response length %d: the %s quantile of the chosen answers is %d tokens, EOS included "
            "(--response_length_quantile)",
            cfg.response_length,
            cfg.response_length_quantile,
            longest,
        )

    # ------------------------------------------------------------------ models
    torch.manual_seed(script.seed)  # identical initialisation (LoRA, value head) on every process
    policy, ref_model = load_policy_and_reference(model_args, tokenizer, hub.token, quantization, accelerator)
    frozen_dtype = frozen_weights_dtype(accelerator, model_args.dtype)  # DeepSpeed/FSDP: low-precision weights
    with frozen_model_loading(accelerator):  # inference only: a whole replica on every process, never sharded
        scorer = load_scorer(
            script.reward_model_name,
            token=hub.token,
            dtype=frozen_dtype if quantization is None else model_args.dtype,
            trust_remote_code=model_args.trust_remote_code,
            quantization=quantization,
            device=accelerator.device,
            fallback_format=fmt,
        )
    if scorer.fmt != fmt:
        logger.warning(
            "the reward model was trained with a different prompt format (%s) than the policy (%s); "
            "it will score in its own format",
            scorer.fmt.kind,
            fmt.kind,
        )
    logger.info(
        "the reward model scores %s",
        "the policy's own token ids (same tokenizer and prompt format)"
        if scorer.accepts_ids_of(tokenizer, fmt)
        else "the decoded responses, re-encoded in its own tokenizer and format",
    )
    reward_stats = load_reward_stats(script.reward_model_name)
    if cfg.normalize_rewards and not reward_stats:
        raise UsageError(f"--normalize_rewards: {script.reward_model_name} has no reward_stats.json")
    configure_deepspeed_for_ppo(accelerator, cfg.mini_batch_size, cfg.gradient_accumulation_steps, cfg.max_grad_norm)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer = ppo_optimizer(accelerator, trainable, cfg.learning_rate, cfg.adafactor)
    policy, optimizer = accelerator.prepare(policy, optimizer)

    # ------------------------------------------------------------------ engine, resume, outputs, trackers
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
        len(prompts),
        cfg.batch_size // cfg.samples_per_prompt,
        accelerator.num_processes,
        accelerator.process_index,
        script.seed,
    )
    torch.manual_seed(script.seed + accelerator.process_index)  # each process samples different responses
    run = PPORun(
        script,
        accelerator,
        engine,
        sampler,
        prompts,
        tokenizer,
        fmt,
        output_dir,
        cfg.num_steps(accelerator.num_processes),
        identity,
        card={
            "stage": "ppo",
            "base_model": model_args.model_name_or_path,
            "data": data_args.dataset_name,
            "extra": {"reward model": script.reward_model_name},
            "flags": changed_flags(script, model_args, cfg, data_args),
            "fmt": fmt,
            "secrets": [hub.hf_access_token],
        },
        push_to=push_to,
    )
    if resume is not None:
        run.step = load_checkpoint(resume, accelerator, engine, sampler)
        run.resumed_from = resume
        logger.info("resumed from %s at step %d", resume, run.step)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        clean_stale_temporaries(output_dir)
        if resume is None and script.overwrite_output_dir:
            discard_previous_run(output_dir)
        truncate_jsonl(output_dir / "metrics.jsonl", run.step)
        truncate_jsonl(output_dir / "samples.jsonl", run.step)
    if script.log_with not in (None, "none"):
        secrets = [hub.hf_access_token]
        accelerator.init_trackers(
            script.project_name, config={**public_dict(script, secrets), **public_dict(cfg, secrets)}
        )
    return run


def load_policy_and_reference(
    model_args: Any, tokenizer: Any, token: str | None, quantization: Any, accelerator: Any
) -> tuple[PolicyWithValue, torch.nn.Module | None]:
    """The policy (the SFT model + LoRA, or the whole model with ``--peft none``) with its value head, and the
    reference: None with LoRA (the same network with the adapter off), else a frozen copy of the SFT model."""
    name = model_args.model_name_or_path
    load = dict(token=token, trust_remote_code=model_args.trust_remote_code, flag="model_name")
    lm = load_causal_lm(name, tokenizer, dtype=model_args.dtype, quantization=quantization, **load)
    ref_model = None
    peft_config = model_args.peft_config("CAUSAL_LM")
    if peft_config is not None:
        lm = with_lora(lm, peft_config)
    else:
        frozen_dtype = frozen_weights_dtype(accelerator, model_args.dtype)
        if deepspeed_stage(accelerator) == 3:  # the policy was partitioned while loading: load the reference whole
            with frozen_model_loading(accelerator):
                ref_model = load_causal_lm(name, tokenizer, dtype=frozen_dtype, **load)
        else:
            ref_model = copy.deepcopy(lm)
            if isinstance(frozen_dtype, torch.dtype):
                ref_model = ref_model.to(frozen_dtype)
        ref_model = frozen(ref_model, accelerator.device)
    return PolicyWithValue(lm), ref_model


# ----------------------------------------------------------------------------------------------------------------
# log, save, stop


def log_step(run: PPORun, stats: dict[str, float], rollout: Rollout, batch: list[dict[str, Any]], bar: Any) -> None:
    """One step's statistics to metrics.jsonl, the trackers and the progress bar; a few samples every
    --log_samples_every steps to samples.jsonl (main process only writes)."""
    # Every rank logs its own coefficient (--debug): the KL control must decide identically on all of them.
    logger.debug("rank %d step %d: kl_coef %r", run.accelerator.process_index, run.step, run.engine.kl_ctl.value)
    if run.accelerator.is_main_process:
        write_jsonl(run.output_dir / "metrics.jsonl", {"step": run.step, **stats})
        every = run.script.log_samples_every
        if every and run.step % every == 0:
            rows = zip(batch, rollout.responses, rollout.raw_scores.tolist(), strict=True)
            for prompt, text, score in list(rows)[:3]:
                row = {"step": run.step, "question": prompt["question"], "response": text, "score": score}
                write_jsonl(run.output_dir / "samples.jsonl", row)
    run.accelerator.log(stats, step=run.step)
    bar.update(1)
    bar.set_postfix(reward=f"{stats['objective/scores']:.3f}", kl=f"{stats['objective/kl']:.2f}")


def save(run: PPORun, name: str) -> Path:
    """``output_dir/step_N`` (resume state, the adapter; the merged policy with --save_merged), then the
    ``--save_total_limit`` rotation; or ``final`` (the model as users upload it, with its model card)."""
    final = name == "final"
    folder = run.output_dir / name
    save_checkpoint(
        folder,
        run.accelerator,
        run.engine,
        run.sampler,
        run.tokenizer,
        run.fmt,
        run.step,
        merged=final or run.script.save_merged,
        final=final,
        run_info=run.identity,
        card={**run.card, "metrics": last_metrics(run.output_dir)} if final else None,
    )
    if not final and run.accelerator.is_main_process:
        rotate_checkpoints(run.output_dir, run.script.save_total_limit, protected=run.resumed_from)
    return folder


def last_metrics(output_dir: Path) -> dict[str, Any]:
    """The last step's line of metrics.jsonl (what the model card reports), without the timings."""
    path = output_dir / "metrics.jsonl"
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] if path.is_file() else []
    if not lines:
        return {}
    return {k: v for k, v in json.loads(lines[-1]).items() if not k.startswith("time/")}


class StopRequested:
    """SIGTERM (what schedulers send before preemption): finish the step, checkpoint, exit."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True


def finish(run: PPORun, code: int) -> int:
    """Close the trackers and the process group; with several processes, leave right away.

    Freeing the DDP model after the process group is gone joins gloo's worker threads while holding the GIL, and a
    worker that still has to free the last collective's tensors waits for that GIL: a deadlock at exit (about one
    2-process CPU run in ten on a loaded machine). Everything is written and closed by now, so skip the teardown.
    """
    run.accelerator.end_training()
    if run.accelerator.num_processes > 1:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
