"""Comparing two policies on held-out prompts (win rate with its interval, KL, length, EOS rate) and a reward
model on held-out pairs (strict accuracy, ties, margins). Sampling is PPO's own (rlhf.ppo.sampling)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rlhf.ppo.sampling import Samples


def preference_metrics(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, float]:
    """Strict accuracy (a tie is NOT a correct ranking), tie rate and margin statistics over pairs, shapes ``(n,)``.

    The reference example counted ``r_chosen >= r_rejected`` as correct, which rewards a constant model.
    """
    if chosen.shape != rejected.shape or chosen.numel() == 0:
        raise ValueError("chosen and rejected must be non-empty and of the same shape")
    margin = chosen.float() - rejected.float()
    return {
        "accuracy": (margin > 0).float().mean().item(),
        "tie_rate": (margin == 0).float().mean().item(),
        "margin_mean": margin.mean().item(),
        "margin_std": margin.std(unbiased=False).item(),
        "pairs": int(margin.numel()),
    }


def win_rate(a: Tensor, b: Tensor, z: float = 1.96) -> dict[str, float]:
    """How often ``a`` beats ``b`` (a tie counts half), with a Wilson score interval; shapes ``(n,)``.

    Wilson's interval stays inside [0, 1] and behaves for small n and rates near 0 or 1, unlike the normal
    approximation.
    """
    if a.shape != b.shape or a.numel() == 0:
        raise ValueError("a and b must be non-empty and of the same shape")
    n = a.numel()
    wins = (a > b).float().sum().item() + 0.5 * (a == b).float().sum().item()
    p = wins / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return {
        "win_rate": p,
        "ci_low": max(0.0, centre - half),
        "ci_high": min(1.0, centre + half),
        "n": n,
        "ties": int((a == b).sum().item()),
    }


def sequence_kl(logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor) -> Tensor:
    """Monte-Carlo KL(policy || ref) per sequence from the policy's own samples, ``(B, T)`` -> ``(B,)``.

    Sum over response tokens of log p - log q (the k1 estimator; unbiased for samples drawn from p).
    """
    return ((logprobs - ref_logprobs) * mask).sum(1)


def policy_summary(samples: Samples, scores: Tensor) -> dict[str, float]:
    """Mean score, mean response length (tokens) and EOS rate of one policy's samples."""
    return {
        "reward_mean": scores.float().mean().item(),
        "length_mean": samples.response_mask.float().sum(1).mean().item(),
        "eos_rate": samples.has_eos.float().mean().item(),
    }
