"""The prompts PPO and evaluation sample from: each distinct (system, question) of the pairs rendered in the policy's
prompt format, and the resumable order in which PPO visits them."""

from __future__ import annotations

import math
from typing import Any

import torch

from rlhf.data.encoding import encode_completion, encode_text
from rlhf.data.pairs import DropReport, Pair
from rlhf.data.prompt_format import PromptFormat


def build_prompts(
    pairs: list[Pair],
    tokenizer: Any,
    fmt: PromptFormat,
    max_prompt_length: int | None = None,
    limit: int | None = None,
    report: DropReport | None = None,
) -> list[dict[str, Any]]:
    """``{"system", "question", "prompt_ids"}`` for each distinct prompt, in order. Prompts longer than
    ``max_prompt_length`` tokens are dropped (and counted in ``report``); at most ``limit`` are returned."""
    prompts, seen = [], set()
    for pair in pairs:
        if limit is not None and len(prompts) >= limit:
            break
        if (pair.system, pair.question) in seen:
            continue
        seen.add((pair.system, pair.question))
        ids = encode_text(tokenizer, fmt.render_prompt(pair.system, pair.question, tokenizer), fmt)
        if max_prompt_length is not None and len(ids) > max_prompt_length:
            if report is not None:
                report.drop("prompt_over_max_prompt_length")
            continue
        prompts.append({"system": pair.system, "question": pair.question, "prompt_ids": ids})
    return prompts


def answer_length_quantile(pairs: list[Pair], tokenizer: Any, quantile: float) -> int:
    """The ``quantile`` (nearest rank) of the chosen answers' lengths in tokens, one EOS included."""
    if not pairs:
        raise ValueError("no pairs to measure the answers of")
    lengths = sorted(len(encode_completion(tokenizer, pair.chosen)) + 1 for pair in pairs)
    return lengths[max(math.ceil(quantile * len(lengths)) - 1, 0)]


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
