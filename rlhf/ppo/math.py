"""Pure tensor math for PPO on language models.

Every function here is side-effect free: tensors in, tensors out, no model
code and no module-level state. Shapes use ``B`` = batch, ``T`` = response
length (number of generated tokens), ``V`` = vocabulary size.

Masks are ``1``/``True`` on real response tokens and ``0``/``False`` on
padding. Unless stated otherwise, padding is assumed to come *after* the
response (right padding), which is what ``truncate_after_eos`` produces.

Reductions are carried out in float32 even for bf16/fp16 inputs, because
sums over thousands of tokens lose too much precision in 16-bit formats.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "AdaptiveKLController",
    "FixedKLController",
    "clipped_policy_loss",
    "clipped_value_loss",
    "entropy_from_logits",
    "gae_advantages",
    "kl_penalized_rewards",
    "kl_per_token",
    "logprobs_from_logits",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "missing_eos_penalty",
    "normalize_scores",
    "sample_response_length",
    "truncate_after_eos",
]


_KL_ESTIMATORS = ("k1", "k3")


def _as_bool_mask(mask: Tensor, like: Tensor) -> Tensor:
    if mask.shape != like.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != tensor shape {tuple(like.shape)}")
    return mask.to(torch.bool)


def _float32(x: Tensor) -> Tensor:
    # float64 is kept as is so that callers asking for more precision get it.
    return x if x.dtype == torch.float64 else x.to(torch.float32)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over positions where ``mask`` is set.

    Shapes: ``x`` and ``mask`` have the same shape, e.g. ``(B, T)``. With
    ``dim=None`` the result is a scalar; otherwise ``dim`` is reduced away.
    An empty selection (no set mask entries) gives 0 rather than NaN.
    Computed in float32 (float64 stays float64).

    Source: token-level averaging as in "The N Implementation Details of RLHF
    with PPO" (Huang et al. 2024).
    """
    m = _as_bool_mask(mask, x)
    # where(), not x * mask: NaN/inf sitting in padding must not poison the sum.
    xs = torch.where(m, _float32(x), 0.0)
    if dim is None:
        total, count = xs.sum(), m.sum()
    else:
        total, count = xs.sum(dim=dim), m.sum(dim=dim)
    return total / count.clamp_min(1).to(total.dtype)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of ``x`` over all positions where ``mask`` is set (scalar).

    Shapes: ``x`` and ``mask`` same shape, e.g. ``(B, T)``; returns ``()``.
    With ``unbiased=True`` Bessel's correction ``n / (n - 1)`` is applied when
    ``n > 1``; for ``n <= 1`` the (biased) value 0 is returned instead of NaN.

    Source: statistics used for advantage whitening in Huang et al. 2024
    ("The N Implementation Details of RLHF with PPO").
    """
    m = _as_bool_mask(mask, x)
    mean = masked_mean(x, m)
    centered = torch.where(m, _float32(x) - mean, 0.0)
    var = masked_mean(centered * centered, m)
    if unbiased:
        n = m.sum().to(var.dtype)
        bessel = torch.where(n > 1, n / (n - 1).clamp_min(1), torch.ones_like(n))
        var = var * bessel
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Standardise ``x`` using mean/variance of its masked elements.

    Shapes: ``x`` and ``mask`` same shape, e.g. ``(B, T)``; returns the same
    shape and dtype as ``x``. Result is ``(x - mean) / sqrt(var + eps)``; with
    ``shift_mean=False`` the mean is added back (only the scale changes).
    Masked-out positions are returned as 0. Variance is unbiased.

    Source: advantage whitening, Huang et al. 2024 ("The N Implementation
    Details of RLHF with PPO"), following openai/lm-human-preferences.
    """
    m = _as_bool_mask(mask, x)
    mean = masked_mean(x, m)
    var = masked_var(x, m, unbiased=True)
    # eps keeps a constant batch (var == 0) finite instead of dividing by zero.
    out = (_float32(x) - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    out = torch.where(m, out, 0.0)
    return out.to(x.dtype) if x.is_floating_point() else out


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def logprobs_from_logits(logits: Tensor, labels: Tensor, temperature: float = 1.0) -> Tensor:
    """Log-probability of each label under ``softmax(logits / temperature)``.

    Shapes: ``logits`` ``(B, T, V)`` float, ``labels`` ``(B, T)`` long;
    returns ``(B, T)`` float32 (float64 for float64 logits).

    The logits must be divided by the *sampling* temperature, otherwise the
    PPO ratio is computed against a different distribution than the one the
    responses were drawn from. Source: Huang et al. 2024, "The N
    Implementation Details of RLHF with PPO" (temperature scaling detail).
    """
    _check_temperature(temperature)
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"expected logits (B,T,V) and labels (B,T), got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    labels = labels.to(torch.long).unsqueeze(-1)
    if logits.dtype in (torch.float32, torch.float64):
        z = logits if temperature == 1.0 else logits / temperature
        # gather - logsumexp never materialises a full (B,T,V) log_softmax tensor.
        picked = z.gather(-1, labels).squeeze(-1)
        return picked - torch.logsumexp(z, dim=-1)
    # For 16-bit logits, upcasting the whole (B,T,V) tensor at once can double
    # peak memory for large vocabularies, so upcast one sequence at a time.
    rows = []
    for logit_row, label_row in zip(logits, labels, strict=True):
        z = logit_row.to(torch.float32) / temperature
        rows.append(torch.log_softmax(z, dim=-1).gather(-1, label_row).squeeze(-1))
    return torch.stack(rows)


def entropy_from_logits(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Entropy of ``softmax(logits / temperature)`` at every position.

    Shapes: ``logits`` ``(B, T, V)``; returns ``(B, T)`` float32 (float64 stays float64).
    Uses ``H = logsumexp(z) - sum(softmax(z) * z)``, which is stable for very
    negative logits where ``p * log p`` would be ``0 * -inf``.

    Source: standard policy-entropy diagnostic reported by PPO implementations
    (Huang et al. 2024 log it as ``objective/entropy``).
    """
    _check_temperature(temperature)
    if logits.dim() != 3:
        raise ValueError(f"expected logits (B,T,V), got {tuple(logits.shape)}")
    rows = []
    # One sequence at a time bounds float32 temporaries to (T, V).
    for logit_row in logits:
        z = _float32(logit_row) / temperature
        p = torch.softmax(z, dim=-1)
        rows.append(torch.logsumexp(z, dim=-1) - (p * z).sum(dim=-1))
    return torch.stack(rows)


def kl_per_token(logprobs: Tensor, ref_logprobs: Tensor, estimator: str = "k1") -> Tensor:
    """Per-token single-sample estimate of KL(policy || reference).

    Shapes: ``logprobs`` and ``ref_logprobs`` ``(B, T)``; returns ``(B, T)``.
    ``"k1"``: ``logp - ref_logp`` (unbiased, can be negative).
    ``"k3"``: ``(r - 1) - log r`` with ``r = exp(ref_logp - logp)``
    (unbiased, always >= 0, lower variance).

    Source: John Schulman, "Approximating KL Divergence" (2020 blog post).
    """
    if estimator not in _KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {_KL_ESTIMATORS}")
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(f"shape mismatch: logprobs {tuple(logprobs.shape)} vs ref {tuple(ref_logprobs.shape)}")
    logprobs, ref_logprobs = _float32(logprobs), _float32(ref_logprobs)
    if estimator == "k1":
        return logprobs - ref_logprobs
    log_r = ref_logprobs - logprobs
    # expm1 avoids cancellation in exp(x) - 1 for the tiny log-ratios typical
    # of early training; clamp removes the last-ulp negatives rounding can give.
    return (torch.expm1(log_r) - log_r).clamp_min(0.0)


def _last_valid_index(mask: Tensor) -> Tensor:
    m = mask.to(torch.bool)
    if not bool(m.any(dim=1).all()):
        raise ValueError("every row of mask needs at least one valid response token")
    positions = torch.arange(1, m.shape[1] + 1, device=m.device)
    # The largest set position is unique, so argmax picks the last valid token
    # even if the mask had holes.
    return (m.long() * positions).argmax(dim=1)


def kl_penalized_rewards(
    scores: Tensor,
    logprobs: Tensor,
    ref_logprobs: Tensor,
    mask: Tensor,
    kl_coef: float,
    estimator: str = "k1",
) -> tuple[Tensor, Tensor]:
    """Per-token PPO rewards: KL penalty everywhere, reward-model score at the end.

    Shapes: ``scores`` ``(B,)``; ``logprobs``, ``ref_logprobs``, ``mask``
    ``(B, T)``. Returns ``(rewards, kl)``, both ``(B, T)`` float32:
    ``rewards = -kl_coef * kl`` on valid tokens and 0 on padding, plus
    ``scores[b]`` added at the last valid token of row ``b``; ``kl`` is
    zeroed outside the mask. Every row must contain at least one valid token
    (``truncate_after_eos`` guarantees this for T >= 1); an all-masked row
    raises ``ValueError`` rather than silently dropping its score.

    Source: InstructGPT (Ouyang et al. 2022, eq. 2) / Ziegler et al. 2019,
    per-token KL shaping with the sequence score as a terminal reward.
    """
    m = _as_bool_mask(mask, logprobs)
    if scores.shape != (logprobs.shape[0],):
        raise ValueError(f"scores must be (B,)={logprobs.shape[0]}, got {tuple(scores.shape)}")
    kl = torch.where(m, kl_per_token(logprobs, ref_logprobs, estimator), 0.0)
    rewards = -kl_coef * kl
    last = _last_valid_index(m)
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last] += scores.to(rewards.dtype)
    return rewards, kl


def gae_advantages(
    values: Tensor,
    rewards: Tensor,
    mask: Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[Tensor, Tensor]:
    """Generalised Advantage Estimation over the response tokens.

    Shapes: ``values``, ``rewards``, ``mask`` ``(B, T)``; returns
    ``(advantages, returns)``, both ``(B, T)`` float32, with
    ``returns = advantages + values`` on valid tokens and both 0 on padding.
    Padding is expected after the response: the bootstrap value after the
    last valid token is 0 (the episode ends at EOS/truncation), and whatever
    sits in padded positions (even NaN) never enters the recursion. Not
    whitened here.

    Source: Schulman et al. 2016, "High-Dimensional Continuous Control Using
    Generalized Advantage Estimation".
    """
    m = _as_bool_mask(mask, values)
    if rewards.shape != values.shape:
        raise ValueError(f"rewards {tuple(rewards.shape)} vs values {tuple(values.shape)}")
    v, r = _float32(values), _float32(rewards)
    batch, length = v.shape
    advantages = torch.zeros_like(v)
    next_value = torch.zeros(batch, dtype=v.dtype, device=v.device)
    next_adv = torch.zeros_like(next_value)
    # Backwards in time; a padded step resets the carry so the next valid step
    # (going backwards) sees a terminal state with value 0 and advantage 0.
    for t in reversed(range(length)):
        valid = m[:, t]
        delta = r[:, t] + gamma * next_value - v[:, t]
        adv_t = torch.where(valid, delta + gamma * lam * next_adv, 0.0)
        advantages[:, t] = adv_t
        next_value = torch.where(valid, v[:, t], 0.0)
        next_adv = adv_t
    returns = torch.where(m, advantages + v, 0.0)
    return advantages, returns


def clipped_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    cliprange: float,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate loss, averaged over valid tokens.

    Shapes: ``logprobs``, ``old_logprobs``, ``advantages``, ``mask`` ``(B, T)``;
    returns a scalar loss and a dict of detached scalar stats:
    ``clipfrac`` (fraction of valid tokens where the clipped term was strictly
    larger, i.e. selected by the max), ``approxkl``
    (``0.5 * mean((logp - old)^2)``), ``ratio_mean``, ``ratio_var`` (unbiased
    where there are >= 2 tokens) and ``ratio_max``.
    ``loss = mean(max(-A * ratio, -A * clip(ratio, 1 - c, 1 + c)))``.

    Source: Schulman et al. 2017, "Proximal Policy Optimization Algorithms"
    (eq. 7, written as a loss to minimise).
    """
    m = _as_bool_mask(mask, logprobs)
    log_ratio = _float32(logprobs) - _float32(old_logprobs)
    # Padding may hold arbitrary logprobs; zeroing first avoids exp() overflow
    # producing inf * 0 = NaN in the masked reductions or their gradients.
    log_ratio = torch.where(m, log_ratio, 0.0)
    ratio = torch.exp(log_ratio)
    adv = torch.where(m, _float32(advantages), 0.0)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), m)
    with torch.no_grad():
        ratio_d = ratio.detach()
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).float(), m).detach(),
            "approxkl": (0.5 * masked_mean(log_ratio.detach() ** 2, m)).detach(),
            "ratio_mean": masked_mean(ratio_d, m),
            "ratio_var": masked_var(ratio_d, m),
            "ratio_max": torch.where(m, ratio_d, float("-inf")).max(),
        }
    return loss, stats


def clipped_value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    cliprange_value: float,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value-function loss, averaged over valid tokens.

    Shapes: ``values``, ``old_values``, ``returns``, ``mask`` ``(B, T)``;
    returns a scalar loss and ``{"vf_clipfrac": scalar}`` (detached; fraction
    of valid tokens where the clipped error was strictly larger).
    ``loss = 0.5 * mean(max((v - R)^2, (clip(v, old - c, old + c) - R)^2))``.

    Source: value clipping from OpenAI baselines PPO2, as kept for RLHF by
    Huang et al. 2024 ("The N Implementation Details of RLHF with PPO").
    """
    m = _as_bool_mask(mask, values)
    v = torch.where(m, _float32(values), 0.0)
    old = torch.where(m, _float32(old_values), 0.0)
    ret = torch.where(m, _float32(returns), 0.0)
    v_clipped = old + torch.clamp(v - old, -cliprange_value, cliprange_value)
    err_unclipped = (v - ret) ** 2
    err_clipped = (v_clipped - ret) ** 2
    loss = 0.5 * masked_mean(torch.maximum(err_unclipped, err_clipped), m)
    with torch.no_grad():
        clipfrac = masked_mean((err_clipped > err_unclipped).float(), m)
    return loss, {"vf_clipfrac": clipfrac.detach()}


class FixedKLController:
    """Constant KL coefficient; ``update`` is a no-op.

    Source: fixed-beta variant in Ziegler et al. 2019, "Fine-Tuning Language
    Models from Human Preferences".
    """

    def __init__(self, kl_coef: float) -> None:
        self.value: float = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Do nothing: the coefficient is fixed."""

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Proportional controller that steers the measured KL towards ``target``.

    ``err = clip(current_kl / target - 1, -0.2, 0.2)`` and
    ``value *= 1 + err * n_steps / horizon``. The clip keeps one noisy batch
    from moving the coefficient by more than 20% of ``n_steps / horizon``.

    Source: Ziegler et al. 2019, "Fine-Tuning Language Models from Human
    Preferences", section 2.2.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        if not target > 0:
            raise ValueError(f"target KL must be > 0, got {target}")
        if not horizon > 0:
            raise ValueError(f"horizon must be > 0, got {horizon}")
        self.value: float = float(init_kl_coef)
        self.target: float = float(target)
        self.horizon: int = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Scale ``value`` up when ``current_kl > target`` and down when below."""
        err = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + err * n_steps / self.horizon

    def state_dict(self) -> dict[str, float | int]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        self.value = float(state["value"])
        self.target = float(state["target"])
        self.horizon = int(state["horizon"])


def missing_eos_penalty(scores: Tensor, has_eos: Tensor, penalty: float | None) -> Tensor:
    """Subtract ``penalty`` from the score of every response that never emitted EOS.

    Shapes: ``scores`` ``(B,)``, ``has_eos`` ``(B,)`` bool; returns ``(B,)``.
    TRL's convention: ``penalty`` is a positive number (e.g. ``1.0``) that is
    *subtracted*; a negative one raises ``ValueError`` (with the opposite
    convention a TRL user's ``1.0`` would reward responses that never end).
    ``None`` returns an unchanged copy. Discourages the policy from exploiting
    the reward model with rambling, truncated answers.

    Source: Huang et al. 2024, "The N Implementation Details of RLHF with PPO"
    (penalise completions that do not end with EOS); sign as TRL's
    ``missing_eos_penalty``.
    """
    if has_eos.shape != scores.shape:
        raise ValueError(f"has_eos {tuple(has_eos.shape)} vs scores {tuple(scores.shape)}")
    if penalty is None:
        return scores.clone()
    if not penalty >= 0:  # NaN fails too
        raise ValueError(f"missing_eos_penalty must be >= 0 (it is subtracted from the score), got {penalty}")
    return torch.where(has_eos.to(torch.bool), scores, scores - penalty)


def leave_one_out_baseline(scores: Tensor, group_size: int) -> Tensor:
    """Each score minus the mean of the other scores of its group (consecutive runs of ``group_size``: the responses
    to one prompt). Shapes: ``(B,)`` in and out, ``B`` a multiple of ``group_size``; each group's results sum to 0.
    ``group_size`` 1 returns an unchanged copy.

    Source: Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human
    Feedback in LLMs" (RLOO's baseline)."""
    if group_size == 1:
        return scores.clone()
    if group_size < 1 or scores.shape[0] % group_size:
        raise ValueError(f"{scores.shape[0]} scores do not split into groups of {group_size}")
    groups = scores.reshape(-1, group_size)
    others = (groups.sum(1, keepdim=True) - groups) / (group_size - 1)
    return (groups - others).reshape(scores.shape)


def normalize_scores(
    scores: Tensor,
    mean: float | None,
    std: float | None,
    clip: float | None = None,
    baseline: float = 0.0,
) -> Tensor:
    """Shift, standardise and clip reward-model scores.

    Shapes: ``scores`` ``(B,)``; returns ``(B,)`` float32. Order:
    ``s - baseline``; then ``(s - mean) / std`` only if both ``mean`` and
    ``std`` are given (``std <= 0`` raises ``ValueError``); then clamp to
    ``[-clip, clip]`` if ``clip`` is given (``clip <= 0`` raises).

    Source: ``reward_baseline`` of the TRL stack-llama PPO example; reward
    normalisation from Ziegler et al. 2019 / Huang et al. 2024.
    """
    s = _float32(scores) - baseline
    if mean is not None and std is not None:
        if not std > 0:
            raise ValueError(f"std must be > 0, got {std}")
        s = (s - mean) / std
    if clip is not None:
        if not clip > 0:
            raise ValueError(f"clip must be > 0, got {clip}")
        s = s.clamp(-clip, clip)
    return s


def truncate_after_eos(
    response_ids: Tensor, eos_token_id: int | list[int], pad_token_id: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Cut each generated response right after its first EOS token.

    Shapes: ``response_ids`` ``(B, T)``; returns ``(ids, mask, has_eos)``:
    ``ids`` ``(B, T)`` with every token after the first EOS set to
    ``pad_token_id``; ``mask`` ``(B, T)`` long, 1 up to and including the
    first EOS (EOS is part of the response, so it gets a logprob and a
    reward); ``has_eos`` ``(B,)`` bool. Rows without EOS keep all T tokens.
    The mask, not the ids, is authoritative: ``pad_token_id`` may equal an
    EOS id.

    Source: Huang et al. 2024, "The N Implementation Details of RLHF with PPO"
    (truncate after EOS; ``generate`` keeps sampling for finished rows).
    """
    if response_ids.dim() != 2:
        raise ValueError(f"response_ids must be (B,T), got {tuple(response_ids.shape)}")
    eos_ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    if not eos_ids:
        raise ValueError("eos_token_id must name at least one token id")
    eos = torch.tensor(eos_ids, dtype=response_ids.dtype, device=response_ids.device)
    is_eos = torch.isin(response_ids, eos)
    has_eos = is_eos.any(dim=1)
    length = response_ids.shape[1]
    # argmax returns the first maximal index, i.e. the first EOS.
    first_eos = torch.where(has_eos, is_eos.long().argmax(dim=1), length)
    positions = torch.arange(length, device=response_ids.device).unsqueeze(0)
    keep = positions <= first_eos.unsqueeze(1)
    ids = torch.where(keep, response_ids, torch.full_like(response_ids, pad_token_id))
    return ids, keep.long(), has_eos


def sample_response_length(generator: torch.Generator, low: int, high: int) -> int:
    """Draw a generation length uniformly from the integers ``[low, high)``.

    Shapes: scalars only. ``high`` plays the role of ``output_max_length``;
    ``high <= low`` raises ``ValueError``. Drawing from an explicit generator
    keeps runs reproducible without touching global RNG state.

    Source: ``LengthSampler(32, output_max_length)`` in the TRL stack-llama
    PPO example.
    """
    if high <= low:
        raise ValueError(
            f"output_max_length (high={high}) must be greater than the minimum response length (low={low})"
        )
    return int(torch.randint(low, high, (1,), generator=generator).item())
