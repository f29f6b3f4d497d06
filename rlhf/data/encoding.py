"""Rendering pairs in the prompt format and tokenizing them into what each stage trains on."""

from __future__ import annotations

from typing import Any

from rlhf.data.pairs import DropReport, Pair, SplitPairs
from rlhf.data.prompt_format import PromptFormat
from rlhf.errors import UsageError


def encode_text(tokenizer: Any, text: str, fmt: PromptFormat) -> list[int]:
    """Token ids of rendered text. Chat templates carry their own BOS, so no special tokens are added for them."""
    return tokenizer(text, add_special_tokens=fmt.kind != "chat")["input_ids"]


def encode_completion(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a completion, which always follows a prompt: never gets a BOS of its own."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_pairs(
    pairs: list[Pair],
    tokenizer: Any,
    fmt: PromptFormat,
    max_length: int | None,
    report: DropReport | None = None,
) -> list[dict[str, Any]]:
    """Render and tokenize pairs; a pair whose prompt + longer answer exceeds ``max_length`` is dropped and counted.

    Each result holds ``prompt``/``chosen``/``rejected`` text and ``prompt_ids``/``chosen_ids``/``rejected_ids``
    (completion ids only, to be appended to the prompt ids).
    """
    out = []
    for pair in pairs:
        prompt = fmt.render_prompt(pair.system, pair.question, tokenizer)
        chosen = fmt.render_completion(pair.chosen)
        rejected = fmt.render_completion(pair.rejected)
        prompt_ids = encode_text(tokenizer, prompt, fmt)
        chosen_ids = encode_completion(tokenizer, chosen)
        rejected_ids = encode_completion(tokenizer, rejected)
        if max_length is not None and len(prompt_ids) + max(len(chosen_ids), len(rejected_ids)) > max_length:
            if report is not None:
                report.drop("over_max_length")
            continue
        out.append(
            {
                "prompt": prompt,
                "chosen": chosen,
                "rejected": rejected,
                "prompt_ids": prompt_ids,
                "chosen_ids": chosen_ids,
                "rejected_ids": rejected_ids,
            }
        )
    return out


def require_rows(encoded: list[dict[str, Any]], what: str, report: DropReport, flag: str = "max_length") -> None:
    """Stop if nothing is left after tokenization (e.g. every pair longer than --max_length)."""
    if not encoded:
        raise UsageError(f"no usable {what} pairs left after tokenization ({report.summary()}); raise --{flag}")


def encode_split(
    split: SplitPairs, tokenizer: Any, fmt: PromptFormat, max_length: int | None, flag: str = "max_length"
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Tokenize both parts, drop over-long pairs, log the one-line drop summary; stop if no train pair is left."""
    train = encode_pairs(split.train, tokenizer, fmt, max_length, split.report)
    evals = encode_pairs(split.eval, tokenizer, fmt, max_length, split.report)
    split.report.log()
    require_rows(train, "training", split.report, flag)
    return train, evals


def sft_features(encoded: list[dict[str, Any]]) -> list[dict[str, list[int]]]:
    """prompt + chosen as one sequence, with a mask that keeps the loss on the answer tokens only."""
    return [
        {
            "input_ids": e["prompt_ids"] + e["chosen_ids"],
            "completion_mask": [0] * len(e["prompt_ids"]) + [1] * len(e["chosen_ids"]),
        }
        for e in encoded
    ]


def reward_features(encoded: list[dict[str, Any]]) -> list[dict[str, list[int]]]:
    """prompt + chosen and prompt + rejected token ids, the pre-tokenized form TRL's RewardTrainer accepts."""
    return [
        {"chosen_ids": e["prompt_ids"] + e["chosen_ids"], "rejected_ids": e["prompt_ids"] + e["rejected_ids"]}
        for e in encoded
    ]
