"""PPO's hyper-parameters (the reference example's names and defaults where it had them), validated."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

MIN_RESPONSE_LENGTH = 32  # lower bound of the reference's LengthSampler(32, output_max_length)


@dataclass
class PPOConfig:
    """PPO hyper-parameters. Names and defaults follow the reference example where it had them."""

    learning_rate: float = field(default=1.41e-5, metadata={"help": "Adam learning rate."})
    batch_size: int = field(
        default=32,
        metadata={"help": "Responses per PPO step on each process (rollout size): prompts x --samples_per_prompt."},
    )
    mini_batch_size: int = field(default=1, metadata={"help": "Sequences per forward/backward in the update."})
    gradient_accumulation_steps: int = field(
        default=4, metadata={"help": "Minibatches whose gradients are summed before one optimizer step."}
    )
    ppo_epochs: int = field(default=4, metadata={"help": "Passes over each rollout batch."})
    lr_scheduler_type: str = field(
        default="linear",
        metadata={
            "help": "Learning-rate schedule over the run's PPO steps: linear (default, as TRL's PPO: decays to 0 at "
            "the last step), cosine (to 0) or constant; after the warmup. Saved in checkpoints and restored on resume.",
            "choices": ["linear", "cosine", "constant"],
        },
    )
    warmup_steps: int = field(default=0, metadata={"help": "PPO steps of linear warmup from 0 (wins over the ratio)."})
    warmup_ratio: float = field(default=0.0, metadata={"help": "Warmup as a fraction of the run's PPO steps."})
    steps: int = field(
        default=20000,
        metadata={
            "help": "Total episodes (sampled responses) to train on across all processes; PPO steps = "
            "ceil(steps / (batch_size * processes)), as in the reference."
        },
    )
    init_kl_coef: float = field(default=0.2, metadata={"help": "Initial KL penalty coefficient."})
    adap_kl_ctrl: bool = field(default=True, metadata={"help": "Adapt the KL coefficient toward --kl_target."})
    kl_target: float = field(default=6.0, metadata={"help": "Target KL (nats per sequence) of the adaptive control."})
    kl_horizon: int = field(default=10000, metadata={"help": "Horizon of the adaptive KL control."})
    kl_estimator: str = field(
        default="k1", metadata={"help": "Per-token KL estimator: k1 (log ratio) or k3.", "choices": ["k1", "k3"]}
    )
    gamma: float = field(default=1.0, metadata={"help": "Discount."})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda."})
    cliprange: float = field(default=0.2, metadata={"help": "PPO ratio clip range."})
    cliprange_value: float = field(default=0.2, metadata={"help": "Value clip range."})
    vf_coef: float = field(default=0.1, metadata={"help": "Weight of the value loss."})
    max_grad_norm: float = field(
        default=1.0,
        metadata={
            "help": "Clip the global gradient norm to this before every optimizer step (1.0, as TRL's trainers); 0 "
            "turns clipping off. Without it one large step can end a run (ratio blow-up, policy collapse)."
        },
    )
    ratio_threshold: float = field(
        default=10.0, metadata={"help": "Skip a minibatch whose mean probability ratio exceeds this (loss spikes)."}
    )
    early_stopping: bool = field(
        default=False, metadata={"help": "Stop the PPO epochs of a step once approx KL > 1.5 * --target_kl."}
    )
    target_kl: float = field(default=0.1, metadata={"help": "KL threshold of --early_stopping."})
    adafactor: bool = field(default=False, metadata={"help": "Use Adafactor instead of Adam."})
    reward_baseline: float = field(default=0.0, metadata={"help": "Subtracted from every reward-model score."})
    samples_per_prompt: int = field(
        default=1,
        metadata={
            "help": "Responses sampled per prompt in a step (--batch_size counts responses, so a step has "
            "batch_size / samples_per_prompt prompts). Above 1, each response's score has the mean score of the "
            "other responses to its prompt subtracted (a leave-one-out baseline, as RLOO): how good a response is "
            "for its prompt, not how easy the prompt is. 1 (default): plain PPO."
        },
    )
    normalize_rewards: bool = field(
        default=False,
        metadata={"help": "Normalise scores with the mean/std the reward-model stage saved (reward_stats.json)."},
    )
    reward_clip: float | None = field(default=None, metadata={"help": "Clip (normalised) scores to [-c, c]."})
    missing_eos_penalty: float | None = field(
        default=None,
        metadata={
            "help": "A positive number subtracted from the score of a response that did not end with EOS (e.g. "
            "1.0; TRL's convention). A negative value is refused."
        },
    )
    whiten_rewards: bool = field(
        default=False,
        metadata={
            "help": "Whiten the per-token rewards (score + KL penalty) of each batch before GAE: scaled to unit "
            "variance, mean kept (off by default, like TRL)."
        },
    )
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (log-probs use the same)."})
    output_max_length: int = field(
        default=128,
        metadata={
            "help": "Response length is drawn uniformly from [32, output_max_length) per generation batch, "
            "like the reference; see --response_length."
        },
    )
    response_length: int | None = field(
        default=None, metadata={"help": "Fixed response length (max new tokens) instead of the sampled one."}
    )
    response_length_quantile: float | None = field(
        default=None,
        metadata={
            "help": "Fix the response length from the data instead: this quantile of the chosen answers' lengths "
            "in tokens (EOS included), rounded up to a multiple of 8, at most --output_max_length. E.g. 0.99: room "
            "for all but the longest one in a hundred of the answers the data prefers, and no time spent sampling "
            "far past them (a response cut there gets --missing_eos_penalty). Exclusive with --response_length."
        },
    )
    ignore_eos: bool = field(
        default=False,
        metadata={
            "help": "Sample EOS like any other token and keep every response at the full response length "
            "(nothing cut after EOS): fixed-length rollouts for benchmarks and shape-stable runs."
        },
    )
    max_prompt_length: int = field(default=512, metadata={"help": "Longer prompts are dropped and counted."})
    forward_batch_size: int | None = field(
        default=None, metadata={"help": "Sequences per no-grad forward in the rollout (default: the whole batch)."}
    )
    fold_lora_for_sampling: bool = field(
        default=True,
        metadata={
            "help": "Generate with each LoRA adapter folded into its float32 base weight (W + s*B@A; same "
            "distribution to float32 rounding, the bare model's speed), restored untouched afterwards. Applies to "
            "fp32 single-device or DDP runs on CPU/CUDA; costs one extra copy of the adapted weights while sampling."
        },
    )
    share_frozen_layers: bool = field(
        default=True,
        metadata={
            "help": "Compute the decoder layers below the first adapted one (layers 0-17 with --lora_layers 18-29) "
            "once per rollout and start the policy, reference and every update forward from their output: they are "
            "frozen and adapter-free, so the results are the same (checked against a full forward at the first "
            "step) with less compute. Applies to LoRA policies on CPU/CUDA, single-device or DDP; keeps one "
            "(batch, length, hidden) tensor per step."
        },
    )
    static_shapes: bool = field(
        default=False,
        metadata={
            "help": "Pad prompts to --max_prompt_length and responses to --response_length (else "
            "--output_max_length), and keep every PPO minibatch that wide, so every step has the same tensor "
            "shapes (on by itself with --use_habana, for Gaudi graphs; works everywhere, with the same results up "
            "to float rounding)."
        },
    )
    stop_on_nonfinite: bool = field(
        default=False,
        metadata={
            "help": "Stop on a NaN/inf PPO loss instead of skipping that minibatch (default: skip it and count it "
            "in ppo/skipped_minibatches_nonfinite; if NaN still reaches the gradients, the optimizer step it "
            "belongs to is skipped too, counted in ppo/nonfinite_updates_skipped). A non-finite reward-model score "
            "always stops the run before any update; an optimizer step with non-finite gradients is never applied."
        },
    )

    def validate(self, world_size: int = 1) -> None:
        """Raise ValueError naming the flag for contradictory or out-of-range values."""
        positive = (
            "batch_size",
            "mini_batch_size",
            "gradient_accumulation_steps",
            "ppo_epochs",
            "steps",
            "max_prompt_length",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name}: expected a positive integer, got {getattr(self, name)}")
        backward = self.mini_batch_size * self.gradient_accumulation_steps
        if self.batch_size % backward:
            raise ValueError(
                f"--batch_size {self.batch_size} must be a multiple of --mini_batch_size x "
                f"--gradient_accumulation_steps = {self.mini_batch_size} x {self.gradient_accumulation_steps}"
            )
        if self.samples_per_prompt < 1 or self.batch_size % self.samples_per_prompt:
            raise ValueError(
                f"--samples_per_prompt {self.samples_per_prompt}: expected a positive divisor of --batch_size "
                f"{self.batch_size} (the responses of a step)"
            )
        if self.response_length_quantile is not None:
            if self.response_length is not None:
                raise ValueError(
                    "--response_length and --response_length_quantile both set the response length: give one"
                )
            if not 0 < self.response_length_quantile <= 1:  # NaN fails too
                raise ValueError(
                    f"--response_length_quantile: expected a value in (0, 1], got {self.response_length_quantile}"
                )
        elif self.response_length is not None:
            if self.response_length < 1:
                raise ValueError(f"--response_length: expected a positive integer, got {self.response_length}")
        elif self.output_max_length <= MIN_RESPONSE_LENGTH:
            raise ValueError(
                f"--output_max_length {self.output_max_length}: the sampled response length is drawn from "
                f"[{MIN_RESPONSE_LENGTH}, output_max_length), so it must be > {MIN_RESPONSE_LENGTH} (or set "
                "--response_length)"
            )
        if self.lr_scheduler_type not in ("linear", "cosine", "constant"):
            raise ValueError(
                f"--lr_scheduler_type: expected linear, cosine or constant, got {self.lr_scheduler_type!r}"
            )
        if self.warmup_steps < 0:
            raise ValueError(f"--warmup_steps: expected 0 or more, got {self.warmup_steps}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"--warmup_ratio: expected a value in [0, 1), got {self.warmup_ratio}")
        if self.kl_estimator not in ("k1", "k3"):
            raise ValueError(f"--kl_estimator: expected k1 or k3, got {self.kl_estimator!r}")
        if not self.temperature > 0:  # NaN fails too
            raise ValueError(f"--temperature: expected > 0, got {self.temperature}")
        # TRL's convention (a positive number is subtracted). The opposite sign, accepted here before, turned a TRL
        # user's 1.0 into a bonus for responses that never end: refuse it rather than guess.
        if self.missing_eos_penalty is not None and not self.missing_eos_penalty >= 0:
            raise ValueError(
                f"--missing_eos_penalty {self.missing_eos_penalty}: expected a positive number, which is subtracted "
                f"from the score of a response without EOS (TRL's convention), e.g. {abs(self.missing_eos_penalty)}"
            )
        if not self.max_grad_norm >= 0:  # NaN fails too
            raise ValueError(f"--max_grad_norm: expected >= 0 (0 turns clipping off), got {self.max_grad_norm}")
        for name in ("learning_rate", "cliprange", "cliprange_value", "target_kl", "kl_target", "kl_horizon"):
            if not 0 < getattr(self, name) < math.inf:  # NaN fails too
                raise ValueError(f"--{name}: expected a finite value > 0, got {getattr(self, name)}")
        for name in ("init_kl_coef", "vf_coef"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ValueError(f"--{name}: expected a finite value >= 0, got {getattr(self, name)}")
        # Unset means off/default; a set value must be usable (these used to fail mid-run with a traceback).
        for name in ("forward_batch_size", "reward_clip"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"--{name}: expected > 0, got {getattr(self, name)}")
        if not math.isfinite(self.reward_baseline):
            raise ValueError(f"--reward_baseline: expected a finite number, got {self.reward_baseline}")
        for name in ("gamma", "lam"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"--{name}: expected a value in [0, 1], got {getattr(self, name)}")

    def num_steps(self, world_size: int) -> int:
        return math.ceil(self.steps / (self.batch_size * world_size))

    def lr_scheduler(self, optimizer: torch.optim.Optimizer, world_size: int) -> Any:
        """The schedule of ``--lr_scheduler_type`` over this run, stepped once per PPO step."""
        from transformers import get_scheduler

        total = self.num_steps(world_size)
        warmup = self.warmup_steps or math.ceil(self.warmup_ratio * total)
        name = "constant_with_warmup" if self.lr_scheduler_type == "constant" else self.lr_scheduler_type
        return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total)
