"""Comparing two policies on held-out prompts (win rate with its interval, KL, length, EOS rate, and accuracy
against ground truth where the data has gold answers) and a reward model on held-out pairs (strict accuracy, ties,
margins). Sampling is PPO's own (rlhf.ppo.sampling)."""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any

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


def minimal_pair(chosen: str, rejected: str, max_words: int = 2) -> bool:
    """Whether two answers have the same number of words and differ in 1..``max_words`` of them ("... you get 28."
    against "... you get 31."): a pair only a judge of content can rank, where most pairs also differ in form
    (evasive, rude, cut off, padded)."""
    a, b = chosen.split(), rejected.split()
    return len(a) == len(b) and 0 < sum(x != y for x, y in zip(a, b, strict=True)) <= max_words


def split_preference_metrics(chosen: Tensor, rejected: Tensor, content: Sequence[bool]) -> dict[str, Any]:
    """``preference_metrics`` over all pairs, plus ``content`` and ``form``: the same over the pairs flagged in
    ``content`` (``minimal_pair``) and over the others, each None when it has no pair. A reward model can rank
    form at 100% with large margins and content barely above chance with margins near 0; PPO then learns form."""
    flags = torch.tensor([bool(c) for c in content], dtype=torch.bool, device=chosen.device)
    if flags.numel() != chosen.numel():
        raise ValueError("one content flag per pair")
    result: dict[str, Any] = preference_metrics(chosen, rejected)
    for name, mask in (("content", flags), ("form", ~flags)):
        result[name] = preference_metrics(chosen[mask], rejected[mask]) if bool(mask.any()) else None
    return result


def describe_split_metrics(metrics: dict[str, Any]) -> str:
    """``split_preference_metrics`` in one line: strict accuracy, tie rate and mean margin, then content and form."""
    line = (
        f"accuracy {metrics['accuracy']:.3f} (ties count as wrong), tie rate {metrics['tie_rate']:.3f}, "
        f"mean margin {metrics['margin_mean']:.3f}"
    )
    for kind in ("content", "form"):
        if part := metrics[kind]:
            line += f"; {kind} pairs ({part['pairs']}): accuracy {part['accuracy']:.3f}, "
            line += f"mean margin {part['margin_mean']:.3f}"
    return line


def paired_gain(before: Sequence[float], after: Sequence[float], z: float = 1.96) -> dict[str, float]:
    """Mean of ``after - before`` over paired outcomes (gold accuracy of PPO and SFT on the same prompts: right or
    wrong, or the share right of a prompt's responses) with a normal-approximation interval: a fall of one or two
    prompts in 77 is not evidence of anything."""
    if len(before) != len(after) or not before:
        raise ValueError("before and after must be non-empty and of the same length")
    diffs = [float(b) - float(a) for a, b in zip(before, after, strict=True)]
    n, mean = len(diffs), sum(diffs) / len(diffs)
    half = z * math.sqrt(sum((d - mean) ** 2 for d in diffs) / max(n - 1, 1) / n)
    return {"gain": mean, "ci_low": mean - half, "ci_high": mean + half, "n": n}


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


def pair_differences(a: Tensor, b: Tensor) -> Tensor:
    """Every response of ``a`` minus every response of ``b`` to the same prompt: ``(prompts, k)`` scores ->
    ``(prompts, k, k)``, in float64 (the pairs that the clustered win rate and the judges' agreement compare)."""
    return a.double()[:, :, None] - b.double()[:, None, :]


def clustered_win_rate(a: Tensor, b: Tensor, z: float = 1.96) -> dict[str, float]:
    """How often a response of policy ``a`` beats a response of policy ``b`` to the same prompt, shapes
    ``(prompts, k)``: every one of the k x k pairs of a prompt is compared (a tie counts half), each prompt's share
    weighs the same, and the 95% interval is the normal one over the prompts' shares, since prompts, not
    responses, are the independent draws. The same rate as ``win_rate`` on one response each, measured with less
    sampling luck."""
    if a.shape != b.shape or a.dim() != 2 or a.numel() == 0:
        raise ValueError("a and b must be non-empty and of the same (prompts, k) shape")
    cross = pair_differences(a, b)
    share = ((cross > 0).double() + 0.5 * (cross == 0).double()).mean((1, 2))
    n, p = share.numel(), share.mean().item()
    half = z * share.std().item() / math.sqrt(n) if n > 1 else math.inf
    return {
        "win_rate": p,
        "ci_low": max(0.0, p - half),
        "ci_high": min(1.0, p + half),
        "n": n,
        "ties": int((cross == 0).sum().item()),
        "samples_per_prompt": a.shape[1],
    }


def judge_agreement(first: dict[str, Tensor], second: dict[str, Tensor], each: int = 1) -> dict[str, float | None]:
    """How often two reward models pick the same winner among the PPO/SFT response pairs that the win rates count
    (every PPO response against every SFT response of its prompt). ``first``/``second``: a judge's scores of the
    ``"sft"`` and ``"ppo"`` responses, ``each`` responses per prompt, prompt-major. Pairs that either judge ties are
    left out (``pairs`` counts the rest; with none, ``agreement`` is None, which JSON can hold).

    The held-out judge can confirm what PPO learned from its reward model only as far as the two agree on the
    policies' own responses, which their accuracy on the held-out preference pairs does not show."""

    def differences(scores: dict[str, Tensor]) -> Tensor:
        return pair_differences(scores["ppo"].reshape(-1, each), scores["sft"].reshape(-1, each)).flatten()

    a, b = differences(first), differences(second)
    if a.shape != b.shape:
        raise ValueError("both judges must score the same responses")
    decided = (a != 0) & (b != 0)
    pairs = int(decided.sum().item())
    same = int((decided & ((a > 0) == (b > 0))).sum().item())
    return {"agreement": same / pairs if pairs else None, "pairs": pairs}


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


def _fold(text: str) -> str:
    """Lower case, accents dropped ("Brasília" == "brasilia"), typographic apostrophes straightened."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).lower().replace("\u2019", "'")


def as_gold(value: Any) -> list[str]:
    """A gold cell as a list of accepted answers: a string is one answer, a list several; empty or missing (None,
    NaN, ``[]``, blank) means the row has no ground truth."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    values = [value] if isinstance(value, str) else list(value) if isinstance(value, Iterable) else [str(value)]
    return [str(v) for v in values if v is not None and str(v).strip()]


def as_kind(value: Any) -> str:
    """A kind cell (the kind of question a held-out row asks: "arithmetic", "facts") as a stripped string; "" when
    empty or missing (None, NaN) or not text."""
    return value.strip() if isinstance(value, str) else ""


def matches_gold(response: str, gold: str | Sequence[str]) -> bool:
    """Whether ``response`` contains one of the accepted answers: whole words, case- and accent-insensitive.

    A space or hyphen inside an answer matches either ("twenty-eight" == "twenty eight"); an answer is never found
    inside a longer word or number ("eight" is not in "twenty-eight" or "eighteen", "28" is not in "128", "2.8"
    or "28,000"). Numbers are matched as written, so gold lists both spellings ("28", "twenty-eight").
    """
    text = _fold(response)
    for answer in [gold] if isinstance(gold, str) else gold:
        parts = [re.escape(part) for part in re.split(r"[\s-]+", _fold(answer)) if part]
        if not parts:
            continue
        pattern = r"(?<![\w-])(?<!\d[.,])" + r"[\s-]+".join(parts) + r"(?![\w-])(?![.,]\d)"
        if re.search(pattern, text):
            return True
    return False


def gold_comparison(sft: Sequence[bool | None], ppo: Sequence[bool | None], each: int = 1) -> dict[str, Any] | None:
    """Gold accuracy of two policies' responses to the same prompts and PPO's gain over SFT. ``sft[i]``/``ppo[i]``:
    whether response ``i`` contains its gold answer (None: its prompt has no ground truth), ``each`` responses per
    prompt in a row. Accuracy is over responses; the gain (``paired_gain``) over prompts, each counted by the share
    of its responses that are right. None when no prompt has ground truth."""
    if len(sft) != len(ppo) or len(sft) % each:
        raise ValueError(f"expected two equally long lists of whole prompts ({each} responses each)")
    shares: dict[str, list[float]] = {}
    for name, hits in (("sft", sft), ("ppo", ppo)):
        shares[name] = [sum(hits[i : i + each]) / each for i in range(0, len(hits), each) if hits[i] is not None]
    if not shares["sft"]:
        return None
    checked = {name: [h for h in hits if h is not None] for name, hits in (("sft", sft), ("ppo", ppo))}
    return {
        "rows": len(shares["sft"]),  # prompts with ground truth
        **{name: sum(hits) / len(hits) for name, hits in checked.items()},
        "gain": paired_gain(shares["sft"], shares["ppo"]),
    }


def reward_hacking_warnings(
    rewards: dict[str, tuple[float, float]],
    gold_sft: float,
    gold_ppo: float,
    rows: int,
    gain: dict[str, float] | None = None,
    kind: str | None = None,
) -> list[str]:
    """One warning per judge whose mean reward rose from SFT to PPO (``rewards[judge] = (sft, ppo)``) while gold
    accuracy fell: the policy learned what the reward model likes, not better answers. With ``gain``
    (``paired_gain``), the warning also says whether the fall is larger than the sampling noise; with ``kind``, that
    the numbers are over the prompts of that kind only (a fall on one kind can hide behind a rise on another)."""
    if not gold_ppo < gold_sft:
        return []
    where = f" on {kind} prompts" if kind else ""
    noise = ""
    if gain is not None:
        beyond = "beyond" if gain["ci_high"] < 0 else "within"
        interval = f"{gain['ci_low']:+.3f} to {gain['ci_high']:+.3f}"
        noise = f"; gain {gain['gain']:+.3f}, 95% interval {interval}: {beyond} the sampling noise"
    return [
        f"reward hacking{where}? the mean reward under {judge} rose ({before:.3f} -> {after:.3f}) while gold accuracy "
        f"fell ({gold_sft:.3f} -> {gold_ppo:.3f}, {rows} prompts with ground truth{noise})"
        for judge, (before, after) in rewards.items()
        if after > before
    ]
