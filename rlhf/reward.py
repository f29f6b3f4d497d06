"""Scoring with a reward model and the metrics of a reward model on preference pairs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

STATS_FILE = "reward_stats.json"


@torch.no_grad()
def score_sequences(model: Any, sequences: list[list[int]], pad_token_id: int, batch_size: int = 16) -> torch.Tensor:
    """Reward of each token sequence, shape ``(n,)``, float32.

    Sequences are right-padded with ``pad_token_id`` (distinct from EOS), so the head reads the last real token,
    the same convention as the reward-model training collator.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # dropout off: a reward must not depend on a random mask
    out = []
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start : start + batch_size]
        width = max(len(s) for s in chunk)
        ids = torch.full((len(chunk), width), pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, seq in enumerate(chunk):
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        out.append(logits[:, 0].float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


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


def reward_stats(scores: torch.Tensor) -> dict[str, float]:
    """Mean and standard deviation of rewards, used by PPO to normalise scores."""
    return {
        "mean": scores.float().mean().item(),
        "std": scores.float().std(unbiased=False).item(),
        "n": int(scores.numel()),
    }


def save_reward_stats(folder: str | Path, stats: dict[str, Any]) -> None:
    (Path(folder) / STATS_FILE).write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")


def load_reward_stats(folder: str | Path) -> dict[str, Any] | None:
    path = Path(folder) / STATS_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
