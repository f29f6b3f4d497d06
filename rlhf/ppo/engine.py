"""The PPO step for language models on accelerate, in two phases that orchestrate the pure functions of
``rlhf.ppo.math`` and own no math themselves:

    rollout   sample a response per prompt (rlhf.ppo.sampling), then with no gradients: policy log-probs and
              values, reference log-probs, reward-model scores; rewards = score at the last response token minus
              kl_coef * per-token KL; GAE advantages (whitened) and returns
    update    ppo_epochs passes over shuffled minibatches: clipped policy and value losses, gradients accumulated
              over --gradient_accumulation_steps minibatches, clipped, one optimizer step; then the KL controller
              and the learning-rate schedule move, and the step's statistics are averaged over all processes

Every forward of a step runs in the accelerator's one precision context (fp32, or bf16/fp16 autocast), so before
the first update the probability ratio is exactly 1 and the KL to the reference exactly 0.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rlhf.models.reward import RewardScorer
from rlhf.models.shared_layers import frozen_prefix_depth, frozen_prefix_hidden, prefix_replayed
from rlhf.ppo.config import MIN_RESPONSE_LENGTH, PPOConfig
from rlhf.ppo.math import (
    AdaptiveKLController,
    FixedKLController,
    clipped_policy_loss,
    clipped_value_loss,
    gae_advantages,
    kl_penalized_rewards,
    leave_one_out_baseline,
    masked_mean,
    masked_whiten,
    missing_eos_penalty,
    normalize_scores,
    sample_response_length,
)
from rlhf.ppo.models import (
    PolicyWithValue,
    adapter_disabled,
    adapter_folded,
    causal_lm_logprobs,
    foldable_lora_layers,
    response_logprobs,
)
from rlhf.ppo.sampling import Samples, sample
from rlhf.runtime.device import DeviceRuntime
from rlhf.runtime.distributed import (
    Collectives,
    all_finite,
    full_parameters,
    generation_kwargs,
    shards_parameters,
)

logger = logging.getLogger("rlhf.ppo.engine")


@dataclass
class Rollout:
    """One PPO batch: the samples, and what the no-grad forwards and the reward math made of them. Tensors are
    ``(B, T)`` over response tokens unless noted."""

    samples: Samples
    logprobs: Tensor
    ref_logprobs: Tensor
    values: Tensor
    entropy: Tensor
    scores: Tensor  # (B,) after baseline/normalisation/penalty
    raw_scores: Tensor  # (B,) as the reward model gave them
    rewards: Tensor
    kl: Tensor
    advantages: Tensor  # whitened
    returns: Tensor
    prefix: Tensor | None = None  # (B, L, H): the frozen bottom layers' output (--share_frozen_layers), or None

    # The samples' fields, read often enough to be spelled directly.
    input_ids = property(lambda self: self.samples.input_ids)
    attention_mask = property(lambda self: self.samples.attention_mask)
    position_ids = property(lambda self: self.samples.position_ids)
    prompt_width = property(lambda self: self.samples.prompt_width)
    response_mask = property(lambda self: self.samples.response_mask)
    has_eos = property(lambda self: self.samples.has_eos)
    responses = property(lambda self: self.samples.texts)


class PPOEngine:
    """Runs PPO steps for a ``PolicyWithValue`` prepared by an accelerate ``Accelerator``."""

    def __init__(
        self,
        config: PPOConfig,
        accelerator: Any,
        policy: PolicyWithValue,
        optimizer: torch.optim.Optimizer,
        tokenizer: Any,
        scorer: RewardScorer,
        ref_model: torch.nn.Module | None,
        reward_stats: dict[str, float] | None,
        seed: int,
        runtime: DeviceRuntime | None = None,
    ) -> None:
        self.config, self.accelerator, self.policy, self.optimizer = config, accelerator, policy, optimizer
        self.runtime = runtime or DeviceRuntime()  # Gaudi: lazy-mode mark_step, HPU graphs (rlhf.runtime.gaudi)
        self.tokenizer, self.scorer, self.ref_model = tokenizer, scorer, ref_model
        self.reward_stats = reward_stats
        if accelerator.gradient_accumulation_steps != config.gradient_accumulation_steps:
            # accelerate divides each loss by its own count: another count would scale every update wrongly.
            raise ValueError(
                f"the accelerator accumulates {accelerator.gradient_accumulation_steps} minibatches per optimizer step "
                f"and --gradient_accumulation_steps is {config.gradient_accumulation_steps}"
            )
        self.collectives = Collectives(accelerator.device)
        self.lr_scheduler = config.lr_scheduler(optimizer, accelerator.num_processes)
        if config.adap_kl_ctrl:
            self.kl_ctl: Any = AdaptiveKLController(config.init_kl_coef, config.kl_target, config.kl_horizon)
        else:
            self.kl_ctl = FixedKLController(config.init_kl_coef)
        # Same seed on every rank: all ranks draw the same response length, so shapes agree across processes.
        self.length_generator = torch.Generator().manual_seed(seed)
        self.shuffle_generator = torch.Generator().manual_seed(seed + 1)
        self.timers: dict[str, float] = defaultdict(float)
        self.forward_calls: dict[str, int] = defaultdict(int)
        self.first_minibatch_max_abs_logratio: float | None = None
        self.nonfinite_updates_skipped = 0
        self.episodes = 0  # prompts trained on, all processes together
        self.prefix_depth = self._shareable_prefix_depth()  # frozen bottom layers computed once per rollout
        self._prefix_checked, self._prefix_tuples = False, False

    @property
    def unwrapped(self) -> PolicyWithValue:
        return self.accelerator.unwrap_model(self.policy)

    def step(self, batch: list[dict[str, Any]]) -> tuple[dict[str, float], Rollout]:
        """One PPO step: ``rollout`` then ``update``. Returns the step's statistics (averaged over processes)."""
        rollout = self.rollout(batch)
        return self.update(rollout), rollout

    # ------------------------------------------------------------------ rollout

    @torch.no_grad()
    def rollout(self, batch: list[dict[str, Any]]) -> Rollout:
        cfg = self.config
        self.timers.clear()
        self._step_start = time.perf_counter()
        self.policy.eval()  # dropout off for rollout and update alike: log-probs must not depend on a mask
        with self._timed("generate"):
            samples = self._generate([b["prompt_ids"] for b in batch])
        with self._timed("policy_forward"):
            prefix = self._frozen_prefix(samples)
            logprobs, values, entropy = self._policy_forward(samples, prefix)
        with self._timed("reference"):
            ref_logprobs = self._reference_forward(samples, prefix)
        with self._timed("score"):
            raw_scores = self._score(batch, samples).to(logprobs.device)
        # A non-finite score means a broken reward model, not a bad minibatch: stop before any update, on every rank.
        if self.collectives.any(not bool(torch.isfinite(raw_scores).all())):
            raise FloatingPointError("the reward model returned a non-finite score")

        mean = std = None
        if cfg.normalize_rewards and self.reward_stats:
            mean, std = self.reward_stats["mean"], self.reward_stats["std"]
        scores = normalize_scores(raw_scores, mean, std, cfg.reward_clip, cfg.reward_baseline)
        scores = missing_eos_penalty(scores, samples.has_eos.to(scores.device), cfg.missing_eos_penalty)
        # --samples_per_prompt > 1: the batch holds each prompt's responses next to each other (PPORun.next_batch).
        scores = leave_one_out_baseline(scores, cfg.samples_per_prompt)
        mask = samples.response_mask
        rewards, kl = kl_penalized_rewards(scores, logprobs, ref_logprobs, mask, self.kl_ctl.value, cfg.kl_estimator)
        if cfg.whiten_rewards:
            # TRL's whiten_rewards: scale only (shift_mean=False), so the sign of what the batch earned survives.
            rewards = masked_whiten(rewards, mask, shift_mean=False)
        advantages, returns = gae_advantages(values, rewards, mask, cfg.gamma, cfg.lam)
        return Rollout(
            samples=samples,
            logprobs=logprobs,
            ref_logprobs=ref_logprobs,
            values=values,
            entropy=entropy,
            scores=scores,
            raw_scores=raw_scores,
            rewards=rewards,
            kl=kl,
            advantages=masked_whiten(advantages, mask),
            returns=returns,
            prefix=prefix,
        )

    def response_length(self) -> int:
        """This step's number of new tokens: --response_length, or drawn from [32, --output_max_length) like the
        reference (the same draw on every process: one seed)."""
        if self.config.response_length is not None:
            return self.config.response_length
        return sample_response_length(self.length_generator, MIN_RESPONSE_LENGTH, self.config.output_max_length)

    def _generate(self, prompts: list[list[int]]) -> Samples:
        cfg = self.config
        max_new_tokens = self.response_length()
        static = cfg.static_shapes  # every step the same shapes: the longest possible response, whatever was drawn
        lm = self.unwrapped.lm
        folded = self._foldable_lora(lm)
        samples = sample(
            lm,
            self.tokenizer,
            prompts,
            max_new_tokens,
            cfg.temperature,
            ignore_eos=cfg.ignore_eos,
            prompt_width=cfg.max_prompt_length if static else None,
            response_width=(cfg.response_length or cfg.output_max_length) if static else None,
            device=self.accelerator.device,
            # Sharded policy (FSDP/ZeRO-3): the root unit gathered for generate; one precision context for all.
            context=_entered(
                full_parameters(self.accelerator, self.policy),
                self.accelerator.autocast(),
                adapter_folded(lm, folded) if folded else nullcontext(),
            ),
            **generation_kwargs(self.accelerator),
            **self.runtime.generate_kwargs,  # Gaudi lazy mode: optimum-habana's generation with HPU graphs
        )
        self.runtime.mark_step()
        return samples

    def _foldable_lora(self, lm: torch.nn.Module) -> list[torch.nn.Module] | None:
        """The LoRA layers to fold for sampling (``adapter_folded``), or None: only in fp32 (under bf16 autocast the
        folded weight would be rounded to bf16, losing a small update), with whole parameters on this process (not
        FSDP/ZeRO-3) on a CPU or GPU, and not with --fold_lora_for_sampling False."""
        acc = self.accelerator
        if not self.config.fold_lora_for_sampling or acc.mixed_precision != "no" or self.runtime.generate_kwargs:
            return None
        if acc.device.type not in ("cpu", "cuda") or shards_parameters(acc):
            return None
        return foldable_lora_layers(lm)

    def _chunks(self, n: int) -> list[slice]:
        size = self.config.forward_batch_size or n
        return [slice(i, min(i + size, n)) for i in range(0, n, size)]

    def _shareable_prefix_depth(self) -> int:
        """How many bottom decoder layers the rollout computes once for all of a step's forwards
        (--share_frozen_layers): those below the first adapted layer of a LoRA policy, on a CPU or GPU with whole
        parameters on this process (not FSDP/ZeRO-3, nor Gaudi graphs, which capture the layers as they are); 0
        for none."""
        acc = self.accelerator
        if not self.config.share_frozen_layers or acc.device.type not in ("cpu", "cuda") or shards_parameters(acc):
            return 0
        return frozen_prefix_depth(self.unwrapped.lm)

    def _frozen_prefix(self, s: Samples) -> Tensor | None:
        """The output of the frozen bottom layers for the whole rollout, ``(B, L, H)``, or None when not sharing.
        At the first step, a full policy forward of the first chunk checks that starting from it gives the same
        logits and values (a model whose forward the replay does not fit falls back to full forwards)."""
        if not self.prefix_depth:
            return None
        lm, parts = self.unwrapped.lm, []
        for part in self._chunks(s.input_ids.shape[0]):
            with self.accelerator.autocast():
                hidden, self._prefix_tuples = frozen_prefix_hidden(
                    lm, self.prefix_depth, s.input_ids[part], s.attention_mask[part], s.position_ids[part]
                )
            parts.append(hidden)
        prefix = torch.cat(parts)
        if not self._prefix_checked:
            self._prefix_checked = True
            gap = self._replay_gap(s, prefix)
            # Every process decides alike (DDP): one whose check fails turns sharing off for all.
            if self.collectives.any(gap is not None):
                logger.warning(
                    "--share_frozen_layers: starting from the frozen layers' output moved the logits %s on this "
                    "model: computing every forward in full instead",
                    "on another process" if gap is None else f"by {gap:.3g}",
                )
                self.prefix_depth = 0
                return None
            logger.info(
                "--share_frozen_layers: decoder layers 0-%d are computed once per rollout for the policy, the "
                "reference and the update",
                self.prefix_depth - 1,
            )
        return prefix

    def _replay_gap(self, s: Samples, prefix: Tensor) -> float | None:
        """The largest difference between a full policy forward of the first chunk and one that starts from
        ``prefix``, where it is beyond rounding (relative to the largest logit; looser under autocast); None when
        they agree."""
        part = self._chunks(s.input_ids.shape[0])[0]
        args = (
            s.input_ids[part],
            s.attention_mask[part],
            s.position_ids[part],
            s.input_ids.shape[1] - s.prompt_width + 1,
        )
        with self.accelerator.autocast():
            full = self.policy(*args)
            with self._replayed(prefix, part):
                replayed = self.policy(*args)
        tol = 1e-4 if self.accelerator.mixed_precision == "no" else 2e-2
        gap = max(float((a.float() - b.float()).abs().max()) for a, b in zip(full, replayed, strict=True))
        return gap if gap > tol * max(1.0, float(full[0].abs().max())) else None

    def _replayed(self, prefix: Tensor | None, rows: Any, columns: slice = slice(None)) -> Any:
        """Context in which the policy's forward starts from ``prefix[rows, columns]`` (nothing when None)."""
        if prefix is None:
            return nullcontext()
        return prefix_replayed(self.unwrapped.lm, self.prefix_depth, prefix[rows, columns], self._prefix_tuples)

    def _policy_forward(self, s: Samples, prefix: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Old log-probs, values and entropy of the response tokens: one policy forward per chunk (from the frozen
        layers' output ``prefix`` when given)."""
        logprobs, values, entropy = [], [], []
        keep = s.input_ids.shape[1] - s.prompt_width + 1  # the LM head on response positions only
        for part in self._chunks(s.input_ids.shape[0]):
            self.forward_calls["policy"] += 1
            with self.runtime.graphs(self.unwrapped), self.accelerator.autocast(), self._replayed(prefix, part):
                logits, vals = self.policy(s.input_ids[part], s.attention_mask[part], s.position_ids[part], keep)
            lp, ent = response_logprobs(logits.float(), s.input_ids[part], s.prompt_width, self.config.temperature)
            logprobs.append(lp)
            values.append(vals[:, s.prompt_width - 1 : -1])
            entropy.append(ent)
        return torch.cat(logprobs), torch.cat(values), torch.cat(entropy)

    def _reference_forward(self, s: Samples, prefix: Tensor | None = None) -> Tensor:
        """Log-probs of the response under the reference: the adapter switched off (from the frozen layers' output
        ``prefix`` when given: no adapter below it), or the frozen copy."""
        out = []
        for part in self._chunks(s.input_ids.shape[0]):
            self.forward_calls["reference"] += 1
            if self.ref_model is None:
                lm = self.unwrapped.lm
                context = _entered(
                    full_parameters(self.accelerator, self.policy), adapter_disabled(lm), self._replayed(prefix, part)
                )
            else:  # a frozen copy may run as a graph; not the adapter-off path: a graph ignores that switch
                lm, context = self.ref_model, self.runtime.graphs(self.ref_model)
            with context, self.accelerator.autocast():
                out.append(
                    causal_lm_logprobs(
                        lm,
                        s.input_ids[part],
                        s.attention_mask[part],
                        s.position_ids[part],
                        s.prompt_width,
                        self.config.temperature,
                    )
                )
        return torch.cat(out)

    def _score(self, batch: list[dict[str, Any]], s: Samples) -> Tensor:
        """The reward model's score of each (prompt, response), in the reward model's own prompt format. A reward
        model with the policy's tokenizer and format scores the sampled ids themselves: decoding and re-encoding
        can merge or split tokens and move the score."""
        systems, questions = [b["system"] for b in batch], [b["question"] for b in batch]
        own_ids = s.token_ids() if getattr(self.scorer, "reads_policy_ids", False) else None
        scores = []
        for part in self._chunks(len(batch)):  # the reward model is a no-grad rollout forward too
            self.forward_calls["reward"] += 1
            with self.runtime.graphs(getattr(self.scorer, "model", None)), self.accelerator.autocast():
                if own_ids is not None:
                    scores.append(self.scorer.score_ids(own_ids[part]))
                else:
                    scores.append(self.scorer(systems[part], questions[part], s.texts[part]))
        return torch.cat(scores)

    # ------------------------------------------------------------------ update

    def update(self, ro: Rollout) -> dict[str, float]:
        """``ppo_epochs`` passes of clipped PPO over shuffled minibatches, then the KL controller and the learning
        rate move. Returns the step's statistics (rollout and update), averaged over all processes."""
        cfg = self.config
        kl_coef, lr = self.kl_ctl.value, self.optimizer.param_groups[0]["lr"]
        stats = StepStats()
        self.first_minibatch_max_abs_logratio = None
        self.policy.eval()
        with self._timed("update"):
            spans = self._row_spans(ro)
            for group in self._optimizer_steps(ro.input_ids.shape[0]):
                for rows in group:
                    columns = self._minibatch_columns(ro, spans, rows)
                    idx = rows.to(self.accelerator.device)
                    with self.accelerator.accumulate(self.policy):  # gradients all-reduced on the last one only
                        self._train_minibatch(ro, idx, stats, columns)
                self._clip_and_step()
                if cfg.early_stopping and self._kl_beyond_target(stats.recent("policy/approxkl_avg", len(group))):
                    stats.early_stopped = True
                    break
        local = {**rollout_stats(ro, kl_coef), **stats.summary()}
        first = self.first_minibatch_max_abs_logratio  # a tensor until the step is over: no sync in the loop
        local["policy/first_minibatch_max_abs_logratio"] = 0.0 if first is None else float(first)
        local["ppo/nonfinite_updates_skipped"] = float(self.nonfinite_updates_skipped)
        local.update({f"time/ppo/{k}": v for k, v in self.timers.items()})
        local["time/ppo/total"] = time.perf_counter() - self._step_start
        out = self.collectives.mean(local)
        # Every rank feeds the same all-reduced KL, so the coefficient stays identical across processes.
        self.kl_ctl.update(out["objective/kl"], cfg.batch_size * self.accelerator.num_processes)
        self.lr_scheduler.step()
        self.episodes += cfg.batch_size * self.accelerator.num_processes
        out.update({"objective/kl_coef": kl_coef, "lr": lr, "episode": float(self.episodes)})
        out["eps"] = cfg.batch_size * self.accelerator.num_processes / out["time/ppo/total"]
        return out

    def _optimizer_steps(self, n: int) -> Iterator[list[Tensor]]:
        """Minibatch row indices (on the host), grouped by optimizer step, for every epoch: a fresh shuffle per
        epoch."""
        cfg = self.config
        per_step = cfg.mini_batch_size * cfg.gradient_accumulation_steps
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(n, generator=self.shuffle_generator)
            for start in range(0, n, per_step):
                ids = order[start : start + per_step]
                yield [ids[i : i + cfg.mini_batch_size] for i in range(0, per_step, cfg.mini_batch_size)]

    def _row_spans(self, ro: Rollout) -> Tensor | None:
        """Each row's left padding and response length, on the host (one transfer per update), or None where every
        minibatch keeps the rollout's full width: under --static_shapes, and on a device that compiles per shape."""
        if self.config.static_shapes or not self.runtime.trims_padding:
            return None
        left = (ro.attention_mask.cumsum(1) == 0).sum(1)
        return torch.stack([left, ro.response_mask.sum(1)], 1).cpu()

    def _minibatch_columns(self, ro: Rollout, spans: Tensor | None, rows: Tensor) -> tuple[int, int]:
        """The columns ``[start, stop)`` of the rollout a minibatch needs: not the left padding all its rows share,
        nor the response positions after all its rows ended. Padding is masked out of attention and of every loss,
        so dropping it changes no result, only the work."""
        width = ro.input_ids.shape[1]
        if spans is None:
            return 0, width
        left, lengths = spans[rows].unbind(1)
        start = min(int(left.min()), ro.prompt_width - 1)  # the last prompt position predicts the first token
        return start, ro.prompt_width + max(int(lengths.max()), 1)

    def _train_minibatch(self, ro: Rollout, idx: Tensor, stats: StepStats, columns: tuple[int, int]) -> None:
        """Forward, clipped losses and backward for one minibatch (rows ``idx`` of the rollout, the sequence columns
        ``columns`` of ``_minibatch_columns``)."""
        cfg = self.config
        start, stop = columns
        prompt_width, steps = ro.prompt_width - start, stop - ro.prompt_width  # in the minibatch's columns
        input_ids = ro.input_ids[idx, start:stop]
        mask = ro.response_mask[idx, :steps]
        old_logprobs, old_values = ro.logprobs[idx, :steps], ro.values[idx, :steps]
        advantages, returns = ro.advantages[idx, :steps], ro.returns[idx, :steps]
        # The rollout's precision context (prepare() adds it too); the frozen layers' output of the rollout.
        with self.accelerator.autocast(), self._replayed(ro.prefix, idx, slice(start, stop)):
            logits, values = self.policy(
                input_ids, ro.attention_mask[idx, start:stop], ro.position_ids[idx, start:stop], steps + 1
            )  # the LM head on response positions only
        logprobs, entropy = response_logprobs(logits.float(), input_ids, prompt_width, cfg.temperature)
        values = values[:, prompt_width - 1 : -1]
        if self.first_minibatch_max_abs_logratio is None:  # ratio 1 here (the test of one precision context)
            gap = (logprobs - old_logprobs).detach().abs()
            self.first_minibatch_max_abs_logratio = torch.where(mask, gap, 0.0).max()
        pg_loss, pg = clipped_policy_loss(logprobs, old_logprobs, advantages, mask, cfg.cliprange)
        vf_loss, vf = clipped_value_loss(values, old_values, returns, mask, cfg.cliprange_value)
        loss = pg_loss + cfg.vf_coef * vf_loss
        finite = torch.isfinite(loss)
        if cfg.stop_on_nonfinite and not bool(finite):  # the only host sync here, and only when asked to stop
            raise FloatingPointError("non-finite PPO loss (--stop_on_nonfinite)")
        spike = pg["ratio_mean"] > cfg.ratio_threshold  # a loss spike: this minibatch is not learned from
        # Both checks stay on the device (no host sync per minibatch): the loss becomes 0 where either fires, and
        # every rank runs the same backward (DDP). A spike's graph is finite, so its gradients are exactly 0; a
        # non-finite loss can still send NaN back through its graph, and then the clipping norm of the optimizer
        # step is non-finite and _clip_and_step skips that step.
        loss = torch.where(finite & ~spike, loss, torch.zeros_like(loss))
        stats.skipped_nonfinite = stats.skipped_nonfinite + (~finite).float()
        stats.skipped_ratio = stats.skipped_ratio + (spike & finite).float()
        self.accelerator.backward(loss)  # divided by --gradient_accumulation_steps by accelerate
        self.runtime.mark_step()
        stats.add(
            {
                "loss/policy_avg": pg_loss,
                "loss/value_avg": vf_loss,
                "loss/total": loss,
                "policy/approxkl_avg": pg["approxkl"],
                "policy/clipfrac_avg": pg["clipfrac"],
                "policy/entropy_avg": masked_mean(entropy, mask),
                "val/ratio": pg["ratio_mean"],
                "val/ratio_var": pg["ratio_var"],
                "val/ratio_max": pg["ratio_max"],
                "val/clipfrac_avg": vf["vf_clipfrac"],
                "val/vpred": masked_mean(values.detach(), mask),
                "val/error": masked_mean((values.detach() - returns) ** 2, mask),
            }
        )

    def _kl_beyond_target(self, approxkl: float) -> bool:
        """--early_stopping: the approximate KL of the last optimizer step, averaged over processes (so all stop
        together), beyond 1.5 x --target_kl."""
        return self.collectives.mean({"kl": approxkl})["kl"] > 1.5 * self.config.target_kl

    def _clip_and_step(self) -> None:
        norm = None
        if self.config.max_grad_norm > 0:
            norm = self.accelerator.clip_grad_norm_(self.policy.parameters(), self.config.max_grad_norm)
        if getattr(self.accelerator, "scaler", None) is not None:
            # fp16: the loss scaler skips a step with inf/NaN gradients itself and lowers its scale; skipping the
            # step here instead would keep the scale from ever adapting.
            self.optimizer.step()
            self.nonfinite_updates_skipped += int(bool(getattr(self.optimizer, "step_was_skipped", False)))
        else:
            # Last line of defence: weights never take a non-finite update (gradients are already all-reduced, so
            # every rank decides the same).
            if type(norm) is torch.Tensor:
                # The global norm clipping just took (of the all-reduced gradients: the same on every rank) is
                # NaN/inf exactly when a gradient is: no second pass over every gradient (a few % of a minibatch
                # on a CPU). A sharded DTensor norm, or none (DeepSpeed, clipping off), leaves it to all_finite.
                finite = bool(torch.isfinite(norm))
            else:
                grads = [p.grad for p in self.policy.parameters() if p.grad is not None]
                finite = all_finite(self.accelerator, grads)  # sharded gradients: each rank its shard, all agree
            if finite:
                self.optimizer.step()
            else:
                self.nonfinite_updates_skipped += 1
        self.optimizer.zero_grad(set_to_none=True)
        self.runtime.mark_step()

    # ------------------------------------------------------------------ helpers, state for exact resume

    def _timed(self, name: str) -> Any:
        return _Timer(self.timers, name)

    def state_dict(self) -> dict[str, Any]:
        return {
            "kl_ctl": self.kl_ctl.state_dict(),
            "length_generator": self.length_generator.get_state(),
            "shuffle_generator": self.shuffle_generator.get_state(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "episodes": self.episodes,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.kl_ctl.load_state_dict(state["kl_ctl"])
        self.length_generator.set_state(state["length_generator"])
        self.shuffle_generator.set_state(state["shuffle_generator"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.episodes = int(state.get("episodes", 0))


class StepStats:
    """The update's per-minibatch statistics, kept as tensors and averaged once at the end of the step: no host
    synchronisation per minibatch."""

    def __init__(self) -> None:
        self.values: dict[str, list[Tensor]] = defaultdict(list)
        self.early_stopped = False
        self.skipped_ratio: Tensor | float = 0.0  # tensors once a minibatch has added to them
        self.skipped_nonfinite: Tensor | float = 0.0

    def add(self, row: dict[str, Tensor]) -> None:
        for key, value in row.items():
            self.values[key].append(value.detach().float().reshape(()))

    def recent(self, key: str, n: int) -> float:
        """Mean of the last ``n`` values of ``key`` (e.g. the minibatches of one optimizer step)."""
        return torch.stack(self.values[key][-n:]).mean().item()

    def summary(self) -> dict[str, float]:
        keys = sorted(self.values)
        means = torch.stack([torch.stack(self.values[k]).mean() for k in keys]).tolist() if keys else []
        out = dict(zip(keys, means, strict=True))
        out["ppo/early_stopped"] = float(self.early_stopped)
        out["ppo/skipped_minibatches_ratio"] = float(self.skipped_ratio)
        out["ppo/skipped_minibatches_nonfinite"] = float(self.skipped_nonfinite)
        return out


def rollout_stats(ro: Rollout, kl_coef: float) -> dict[str, float]:
    """Per-batch rollout statistics named like TRL's PPO metrics."""
    mask = ro.response_mask
    kl_sum = (ro.kl * mask).sum(1)
    values = {
        "objective/kl": kl_sum.mean(),
        "objective/entropy": (-(ro.logprobs * mask)).sum(1).mean(),
        "objective/token_entropy": masked_mean(ro.entropy, mask),
        "objective/scores": ro.raw_scores.mean(),
        "objective/non_score_reward": (-kl_coef * kl_sum).mean(),
        "objective/rlhf_reward": (ro.scores - kl_coef * kl_sum).mean(),
        "env/reward_mean": ro.scores.mean(),
        "env/reward_std": ro.scores.std(unbiased=False),
        "returns/mean": masked_mean(ro.returns, mask),
        "val/num_eos_tokens": ro.has_eos.float().sum(),
        "val/eos_rate": ro.has_eos.float().mean(),
        "tokens/responses_len_mean": mask.sum(1).float().mean(),
    }
    keys = list(values)
    return dict(zip(keys, torch.stack([values[k].float().cpu() for k in keys]).tolist(), strict=True))


class _Timer:
    """Adds the seconds a block took to ``timers[name]`` (a dict of per-phase totals)."""

    def __init__(self, timers: dict[str, float], name: str) -> None:
        self.timers, self.name = timers, name

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        self.timers[self.name] += time.perf_counter() - self.start


@contextmanager
def _entered(*managers: Any) -> Iterator[None]:
    """Several context managers entered as one, the first outermost."""
    with ExitStack() as stack:
        for manager in managers:
            stack.enter_context(manager)
        yield
