"""The PPO loop for language models on accelerate: rollout, score, KL-penalise, GAE, clipped updates, checkpoints.

The math lives in ``rlhf.ppo.math`` as pure functions; this module only orchestrates them. One step:

    1. rollout    generate a response for each prompt (left-padded prompts, temperature sampling, stop at EOS)
    2. forward    one no-grad policy forward -> old log-probs and values; one reference forward -> reference
                  log-probs; one reward-model forward -> scores
    3. rewards    score at the last response token minus kl_coef * per-token KL; GAE advantages and returns
    4. update     ppo_epochs passes over shuffled minibatches with clipped policy and value losses
    5. KL control adapt the KL coefficient to the measured KL (all ranks agree: stats are all-reduced)
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rlhf.models.reward import RewardScorer
from rlhf.ppo.config import MIN_RESPONSE_LENGTH, PPOConfig
from rlhf.ppo.math import (
    AdaptiveKLController,
    FixedKLController,
    clipped_policy_loss,
    clipped_value_loss,
    gae_advantages,
    kl_penalized_rewards,
    masked_mean,
    masked_whiten,
    missing_eos_penalty,
    normalize_scores,
    sample_response_length,
    truncate_after_eos,
)
from rlhf.ppo.models import PolicyWithValue, adapter_disabled, position_ids_from_mask, response_logprobs
from rlhf.runtime.device import DeviceRuntime
from rlhf.runtime.distributed import accumulation_boundary, all_finite, full_parameters, generation_kwargs

logger = logging.getLogger("rlhf.ppo.engine")


class PromptSampler:
    """Deterministic, resumable order over prompts: a fresh permutation per pass, each rank its own slice."""

    def __init__(self, n: int, per_rank: int, world_size: int, rank: int, seed: int) -> None:
        self.n, self.per_rank, self.world, self.rank, self.seed = n, per_rank, world_size, rank, seed
        self.epoch, self.offset = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def next_batch(self) -> list[int]:
        """Indices of this rank's prompts for the next step (the global batch wraps into the next pass)."""
        need = self.per_rank * self.world
        chosen: list[int] = []
        while len(chosen) < need:
            take = min(need - len(chosen), self.n - self.offset)
            chosen.extend(self._order[self.offset : self.offset + take])
            self.offset += take
            if self.offset == self.n:
                self.epoch, self.offset = self.epoch + 1, 0
                self._order = self._permutation()
        return chosen[self.rank * self.per_rank : (self.rank + 1) * self.per_rank]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.offset = state["epoch"], state["offset"]
        self._order = self._permutation()


@dataclass
class Rollout:
    """One PPO batch. Sequences are ``(B, P + T)``: left-padded prompt of width P, right-padded response of T."""

    input_ids: Tensor
    attention_mask: Tensor
    position_ids: Tensor
    prompt_width: int
    response_mask: Tensor  # (B, T)
    logprobs: Tensor  # (B, T)
    ref_logprobs: Tensor  # (B, T)
    values: Tensor  # (B, T)
    scores: Tensor  # (B,) after baseline/normalisation/penalty
    raw_scores: Tensor  # (B,) as the reward model gave them
    rewards: Tensor  # (B, T)
    kl: Tensor  # (B, T)
    advantages: Tensor  # (B, T), whitened
    returns: Tensor  # (B, T)
    has_eos: Tensor  # (B,)
    entropy: Tensor  # (B, T)
    responses: list[str]


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
        self.lr_scheduler = config.lr_scheduler(optimizer, accelerator.num_processes)
        self.reward_stats = reward_stats
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
        self.eos_ids = tokenizer.eos_token_id

    # ------------------------------------------------------------------ helpers

    @property
    def unwrapped(self) -> PolicyWithValue:
        return self.accelerator.unwrap_model(self.policy)

    def _timed(self, name: str, start: float) -> None:
        self.timers[name] += time.perf_counter() - start

    def response_length(self) -> int:
        if self.config.response_length is not None:
            return self.config.response_length
        return sample_response_length(self.length_generator, MIN_RESPONSE_LENGTH, self.config.output_max_length)

    def _chunks(self, n: int) -> list[slice]:
        size = self.config.forward_batch_size or n
        return [slice(i, min(i + size, n)) for i in range(0, n, size)]

    # ------------------------------------------------------------------ rollout

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], max_new_tokens: int) -> tuple[Tensor, Tensor, int]:
        """Sample responses. Returns left-padded prompts ``(B, P)``, their mask, and responses ``(B, T)``."""
        from transformers import GenerationConfig

        device = self.accelerator.device
        pad = self.tokenizer.pad_token_id
        width = self.config.max_prompt_length if self.config.static_shapes else max(len(p) for p in prompts)
        prompt_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        prompt_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, ids in enumerate(prompts):
            prompt_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            prompt_mask[row, width - len(ids) :] = 1
        prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
        gen_config = GenerationConfig(
            do_sample=True,
            top_k=0,
            top_p=1.0,
            temperature=self.config.temperature,
            max_new_tokens=max_new_tokens,
            min_new_tokens=0,
            eos_token_id=None if self.config.ignore_eos else self.eos_ids,
            pad_token_id=pad,
        )
        lm = self.unwrapped.lm
        # generate() fills every setting we leave unset from the checkpoint's generation_config.json (a
        # repetition_penalty, min_p, suppressed tokens...), which would reshape the distribution the log-probs
        # describe. Lend the model our config for the call, so nothing else applies.
        base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
        saved, base.generation_config = base.generation_config, gen_config
        try:
            # Sharded policy (FSDP/ZeRO-3): rlhf.runtime.distributed. Mixed precision: sampling runs in the same
            # autocast as every other forward, so the tokens come from the distribution the log-probs describe.
            with full_parameters(self.accelerator, self.policy), self.accelerator.autocast():
                out = lm.generate(
                    input_ids=prompt_ids,
                    attention_mask=prompt_mask,
                    generation_config=gen_config,
                    **generation_kwargs(self.accelerator),
                    **self.runtime.generate_kwargs,  # Gaudi lazy mode: optimum-habana's generation with HPU graphs
                )
        finally:
            base.generation_config = saved
        self.runtime.mark_step()
        responses = out[:, width:]
        # Static shapes: every step's responses have the width of the longest possible one, whatever was drawn.
        static_width = self.config.response_length or self.config.output_max_length
        if self.config.static_shapes and responses.shape[1] < static_width:
            fill = torch.full((responses.shape[0], static_width - responses.shape[1]), pad, device=device)
            responses = torch.cat([responses, fill.to(responses.dtype)], dim=1)
        return prompt_ids, prompt_mask, responses

    @torch.no_grad()
    def policy_forward(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, width: int):
        """Old log-probs, values and entropy of the response tokens: one policy forward per chunk."""
        logprobs, values, entropy = [], [], []
        for part in self._chunks(input_ids.shape[0]):
            self.forward_calls["policy"] += 1
            with self.runtime.graphs(self.unwrapped), self.accelerator.autocast():
                logits, vals = self.policy(
                    input_ids[part], attention_mask[part], position_ids[part], input_ids.shape[1] - width + 1
                )
            lp, ent = response_logprobs(logits.float(), input_ids[part], width, self.config.temperature)
            logprobs.append(lp)
            values.append(vals[:, width - 1 : -1])
            entropy.append(ent)
        return torch.cat(logprobs), torch.cat(values), torch.cat(entropy)

    @torch.no_grad()
    def reference_forward(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, width: int):
        """Log-probs of the response under the reference: the adapter switched off, or the frozen copy."""
        out = []
        for part in self._chunks(input_ids.shape[0]):
            self.forward_calls["reference"] += 1
            if self.ref_model is None:
                lm = self.unwrapped.lm
                with full_parameters(self.accelerator, self.policy), adapter_disabled(lm), self.accelerator.autocast():
                    logits = lm(
                        input_ids=input_ids[part],
                        attention_mask=attention_mask[part],
                        position_ids=position_ids[part],
                        use_cache=False,
                        logits_to_keep=input_ids.shape[1] - width + 1,
                    ).logits
            else:
                # Not with the adapter off: a graph ignores that switch.
                with self.runtime.graphs(self.ref_model), self.accelerator.autocast():
                    logits = self.ref_model(
                        input_ids=input_ids[part],
                        attention_mask=attention_mask[part],
                        position_ids=position_ids[part],
                        use_cache=False,
                        logits_to_keep=input_ids.shape[1] - width + 1,
                    ).logits
            # float32 logits on every path: the policy's come converted by accelerate, the reference's do not.
            out.append(response_logprobs(logits.float(), input_ids[part], width, self.config.temperature)[0])
        return torch.cat(out)

    def rollout(self, batch: list[dict[str, Any]]) -> Rollout:
        cfg = self.config
        self.policy.eval()  # dropout off for rollout and update alike: log-probs must not depend on a mask
        start = time.perf_counter()
        max_new_tokens = self.response_length()
        prompt_ids, prompt_mask, raw_responses = self.generate([b["prompt_ids"] for b in batch], max_new_tokens)
        self._timed("generate", start)

        eos = self.eos_ids if isinstance(self.eos_ids, list) else [self.eos_ids]
        responses, response_mask, has_eos = truncate_after_eos(raw_responses, eos, self.tokenizer.pad_token_id)
        if cfg.ignore_eos:  # an EOS mid-response is an ordinary token: keep the whole sample
            responses, response_mask = raw_responses, torch.ones_like(response_mask)
        response_mask[:, max_new_tokens:] = 0  # static shapes: the fill past the drawn length is not a response
        width = prompt_ids.shape[1]
        input_ids = torch.cat([prompt_ids, responses], dim=1)
        attention_mask = torch.cat([prompt_mask, response_mask.to(prompt_mask.dtype)], dim=1)
        position_ids = position_ids_from_mask(attention_mask)
        response_mask = response_mask.bool()

        start = time.perf_counter()
        logprobs, values, entropy = self.policy_forward(input_ids, attention_mask, position_ids, width)
        self._timed("policy_forward", start)
        start = time.perf_counter()
        ref_logprobs = self.reference_forward(input_ids, attention_mask, position_ids, width)
        self._timed("reference", start)

        start = time.perf_counter()
        texts = [
            self.tokenizer.decode(ids[mask], skip_special_tokens=False)
            for ids, mask in zip(responses.cpu(), response_mask.cpu(), strict=True)
        ]
        systems, questions = [b["system"] for b in batch], [b["question"] for b in batch]
        own_ids = None
        if getattr(self.scorer, "reads_policy_ids", False):
            # Same tokenizer and prompt format: score exactly the ids the policy sampled (decoding and re-encoding
            # can merge or split tokens and move the score).
            own_ids = [
                b["prompt_ids"] + ids[mask].tolist()
                for b, ids, mask in zip(batch, responses.cpu(), response_mask.cpu(), strict=True)
            ]
        raw_scores = []
        for part in self._chunks(len(batch)):  # the reward model is a no-grad rollout forward too
            self.forward_calls["reward"] += 1
            with self.runtime.graphs(getattr(self.scorer, "model", None)), self.accelerator.autocast():
                if own_ids is not None:
                    raw_scores.append(self.scorer.score_ids(own_ids[part]))
                else:
                    raw_scores.append(self.scorer(systems[part], questions[part], texts[part]))
        raw_scores = torch.cat(raw_scores).to(logprobs.device)
        self._timed("score", start)

        mean = std = None
        if cfg.normalize_rewards and self.reward_stats:
            mean, std = self.reward_stats["mean"], self.reward_stats["std"]
        scores = normalize_scores(raw_scores, mean, std, cfg.reward_clip, cfg.reward_baseline)
        scores = missing_eos_penalty(scores, has_eos.to(scores.device), cfg.missing_eos_penalty)

        rewards, kl = kl_penalized_rewards(
            scores, logprobs, ref_logprobs, response_mask, self.kl_ctl.value, cfg.kl_estimator
        )
        if cfg.whiten_rewards:
            # TRL's whiten_rewards: scale only (shift_mean=False), so the sign of what the batch earned survives.
            rewards = masked_whiten(rewards, response_mask, shift_mean=False)
        advantages, returns = gae_advantages(values, rewards, response_mask, cfg.gamma, cfg.lam)
        advantages = masked_whiten(advantages, response_mask)
        return Rollout(
            input_ids,
            attention_mask,
            position_ids,
            width,
            response_mask,
            logprobs,
            ref_logprobs,
            values,
            scores,
            raw_scores,
            rewards,
            kl,
            advantages,
            returns,
            has_eos,
            entropy,
            texts,
        )

    # ------------------------------------------------------------------ update

    def update(self, ro: Rollout) -> dict[str, float]:
        """``ppo_epochs`` passes of clipped PPO over shuffled minibatches; returns averaged statistics."""
        cfg = self.config
        n = ro.input_ids.shape[0]
        backward_size = cfg.mini_batch_size * cfg.gradient_accumulation_steps
        stats: dict[str, list[float]] = defaultdict(list)
        early_stopped = skipped_ratio = skipped_nonfinite = 0
        keep_logits = ro.input_ids.shape[1] - ro.prompt_width + 1  # the LM head runs on response positions only
        self.first_minibatch_max_abs_logratio = None
        self.policy.eval()
        start = time.perf_counter()
        for _epoch in range(cfg.ppo_epochs):
            order = torch.randperm(n, generator=self.shuffle_generator).to(ro.input_ids.device)
            for b_start in range(0, n, backward_size):
                approx_kls = []
                for m_start in range(b_start, b_start + backward_size, cfg.mini_batch_size):
                    idx = order[m_start : m_start + cfg.mini_batch_size]
                    mask = ro.response_mask[idx]
                    with self.accelerator.autocast():  # the rollout's precision context (prepare() adds it too)
                        logits, values = self.policy(
                            ro.input_ids[idx], ro.attention_mask[idx], ro.position_ids[idx], keep_logits
                        )
                    logprobs, entropy = response_logprobs(
                        logits.float(), ro.input_ids[idx], ro.prompt_width, cfg.temperature
                    )
                    values = values[:, ro.prompt_width - 1 : -1]
                    if self.first_minibatch_max_abs_logratio is None:
                        diff = (logprobs - ro.logprobs[idx]).detach().abs()
                        self.first_minibatch_max_abs_logratio = diff[mask].max().item()
                    pg_loss, pg_stats = clipped_policy_loss(
                        logprobs, ro.logprobs[idx], ro.advantages[idx], mask, cfg.cliprange
                    )
                    vf_loss, vf_stats = clipped_value_loss(
                        values, ro.values[idx], ro.returns[idx], mask, cfg.cliprange_value
                    )
                    loss = pg_loss + cfg.vf_coef * vf_loss
                    if not torch.isfinite(loss):
                        if cfg.stop_on_nonfinite:
                            raise FloatingPointError("non-finite PPO loss (--stop_on_nonfinite)")
                        skipped_nonfinite += 1
                        # A zero loss through the parameters themselves: 0 * NaN would still be NaN in the
                        # gradients, and DDP needs every rank to run the same backward.
                        loss = sum((p * 0.0).sum() for p in self.policy.parameters() if p.requires_grad)
                    elif pg_stats["ratio_mean"] > cfg.ratio_threshold:
                        skipped_ratio += 1
                        loss = loss * 0.0
                    last = m_start + cfg.mini_batch_size >= b_start + backward_size
                    with accumulation_boundary(self.accelerator, last):  # DeepSpeed steps only at the boundary
                        self.accelerator.backward(loss / cfg.gradient_accumulation_steps)
                    self.runtime.mark_step()
                    approx_kls.append(pg_stats["approxkl"].item())
                    stats["loss/policy"].append(pg_loss.item())
                    stats["loss/value"].append(vf_loss.item())
                    stats["loss/total"].append(loss.item())
                    stats["policy/approxkl"].append(pg_stats["approxkl"].item())
                    stats["policy/clipfrac"].append(pg_stats["clipfrac"].item())
                    stats["policy/entropy"].append(masked_mean(entropy, mask).item())
                    stats["val/ratio"].append(pg_stats["ratio_mean"].item())
                    stats["val/ratio_max"].append(pg_stats["ratio_max"].item())
                    stats["val/clipfrac"].append(vf_stats["vf_clipfrac"].item())
                    stats["val/vpred"].append(masked_mean(values.detach(), mask).item())
                    stats["val/error"].append(masked_mean((values.detach() - ro.returns[idx]) ** 2, mask).item())
                self._clip_and_step()
                if cfg.early_stopping:
                    kl_now = self._mean_across_ranks(sum(approx_kls) / len(approx_kls))
                    if kl_now > 1.5 * cfg.target_kl:
                        early_stopped = 1
                        break
            if early_stopped:
                break
        self._timed("update", start)
        out = {k: sum(v) / len(v) for k, v in stats.items()}
        out["ppo/early_stopped"] = float(early_stopped)
        out["ppo/skipped_minibatches_ratio"] = float(skipped_ratio)
        out["ppo/skipped_minibatches_nonfinite"] = float(skipped_nonfinite)
        out["policy/first_minibatch_max_abs_logratio"] = self.first_minibatch_max_abs_logratio or 0.0
        return out

    def _clip_and_step(self) -> None:
        if self.config.max_grad_norm > 0:
            self.accelerator.clip_grad_norm_(self.policy.parameters(), self.config.max_grad_norm)
        if getattr(self.accelerator, "scaler", None) is not None:
            # fp16: the loss scaler skips a step with inf/NaN gradients itself and lowers its scale; skipping the
            # step here instead would keep the scale from ever adapting.
            self.optimizer.step()
            self.nonfinite_updates_skipped += int(bool(getattr(self.optimizer, "step_was_skipped", False)))
        else:
            # Last line of defence: weights never take a non-finite update (gradients are already all-reduced, so
            # every rank decides the same).
            grads = [p.grad for p in self.policy.parameters() if p.grad is not None]
            if all_finite(self.accelerator, grads):  # sharded gradients: every rank checks its shard, all agree
                self.optimizer.step()
            else:
                self.nonfinite_updates_skipped += 1
        self.optimizer.zero_grad(set_to_none=True)
        self.runtime.mark_step()

    def _mean_across_ranks(self, value: float) -> float:
        tensor = torch.tensor([value], dtype=torch.float64, device=self.accelerator.device)
        return self.accelerator.reduce(tensor, reduction="mean").item()

    # ------------------------------------------------------------------ one step

    def step(self, batch: list[dict[str, Any]]) -> tuple[dict[str, float], Rollout]:
        """Rollout + update + KL-controller update; statistics are averaged over all processes."""
        self.timers.clear()
        start = time.perf_counter()
        ro = self.rollout(batch)
        # A non-finite score means a broken reward model, not a bad minibatch: stop before any update, on every rank.
        bad = torch.tensor([0.0 if torch.isfinite(ro.raw_scores).all() else 1.0], device=self.accelerator.device)
        if self.accelerator.reduce(bad, reduction="sum").item() > 0:
            raise FloatingPointError("the reward model returned a non-finite score")
        kl_coef = self.kl_ctl.value
        local = rollout_stats(ro, kl_coef)
        local.update(self.update(ro))
        local.update({f"time/ppo/{k}": v for k, v in self.timers.items()})
        local["time/ppo/total"] = time.perf_counter() - start
        local["ppo/nonfinite_updates_skipped"] = float(self.nonfinite_updates_skipped)
        stats = self._reduce_stats(local)
        # Every rank feeds the same all-reduced KL, so the coefficient stays identical across processes.
        self.kl_ctl.update(stats["objective/kl"], self.config.batch_size * self.accelerator.num_processes)
        stats["objective/kl_coef"] = kl_coef
        stats["ppo/learning_rate"] = self.optimizer.param_groups[0]["lr"]  # the rate this step's update used
        self.lr_scheduler.step()
        return stats, ro

    def _reduce_stats(self, local: dict[str, float]) -> dict[str, float]:
        keys = sorted(local)
        tensor = torch.tensor([local[k] for k in keys], dtype=torch.float64, device=self.accelerator.device)
        tensor = self.accelerator.reduce(tensor, reduction="mean")
        return dict(zip(keys, tensor.tolist(), strict=True))

    # ------------------------------------------------------------------ state for exact resume

    def state_dict(self) -> dict[str, Any]:
        return {
            "kl_ctl": self.kl_ctl.state_dict(),
            "length_generator": self.length_generator.get_state(),
            "shuffle_generator": self.shuffle_generator.get_state(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.kl_ctl.load_state_dict(state["kl_ctl"])
        self.length_generator.set_state(state["length_generator"])
        self.shuffle_generator.set_state(state["shuffle_generator"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])


def rollout_stats(ro: Rollout, kl_coef: float) -> dict[str, float]:
    """Per-batch rollout statistics named like TRL's PPO metrics."""
    mask = ro.response_mask
    kl_sum = (ro.kl * mask).sum(1)
    lengths = mask.sum(1).float()
    return {
        "objective/kl": kl_sum.mean().item(),
        "objective/entropy": (-(ro.logprobs * mask)).sum(1).mean().item(),
        "objective/token_entropy": masked_mean(ro.entropy, mask).item(),
        "objective/scores": ro.raw_scores.mean().item(),
        "objective/non_score_reward": (-kl_coef * kl_sum).mean().item(),
        "objective/rlhf_reward": (ro.scores - kl_coef * kl_sum).mean().item(),
        "env/reward_mean": ro.scores.mean().item(),
        "env/reward_std": ro.scores.std(unbiased=False).item(),
        "returns/mean": masked_mean(ro.returns, mask).item(),
        "val/num_eos_tokens": ro.has_eos.float().sum().item(),
        "val/eos_rate": ro.has_eos.float().mean().item(),
        "tokens/responses_len_mean": lengths.mean().item(),
    }
