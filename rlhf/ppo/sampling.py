"""Sampling responses from a policy: the one path PPO's rollout and evaluate.py both take.

Prompts are left-padded (position ids start at each row's first real token), tokens are drawn with exactly
``temperature`` and ``top_k=0, top_p=1`` — whatever a checkpoint's ``generation_config.json`` says (repetition
penalty, min_p, suppressed tokens...) is not applied, since PPO's log-probs must describe the distribution the
tokens came from — and each response is cut after its first EOS.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rlhf.ppo.math import truncate_after_eos
from rlhf.ppo.models import position_ids_from_mask


@dataclass
class Samples:
    """One response per prompt. Sequences are ``(B, P + T)``: a left-padded prompt of width P, then a right-padded
    response of width T."""

    input_ids: Tensor
    attention_mask: Tensor
    position_ids: Tensor
    prompt_width: int
    response_mask: Tensor  # (B, T) bool: the response tokens (through the first EOS)
    has_eos: Tensor  # (B,) bool
    texts: list[str]  # decoded responses, with the EOS text where the policy stopped

    @property
    def responses(self) -> Tensor:
        """``(B, T)``"""
        return self.input_ids[:, self.prompt_width :]

    def token_ids(self) -> list[list[int]]:
        """Each row's prompt + response token ids without padding: exactly what the policy read and wrote."""
        rows = zip(self.input_ids.cpu(), self.attention_mask.cpu(), strict=True)
        return [ids[mask.bool()].tolist() for ids, mask in rows]


def left_pad(prompts: list[list[int]], pad_token_id: int, width: int | None = None) -> tuple[Tensor, Tensor]:
    """Left-pad token lists to ``width`` (default: the longest); returns ids and attention mask ``(B, width)``."""
    width = width or max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[row, width - len(p) :] = 1
    return ids, mask


@torch.no_grad()
def sample(
    lm: Any,
    tokenizer: Any,
    prompts: list[list[int]],
    max_new_tokens: int,
    temperature: float,
    *,
    greedy: bool = False,
    ignore_eos: bool = False,
    prompt_width: int | None = None,
    response_width: int | None = None,
    device: Any = None,
    context: Any = None,
    **generate_kwargs: Any,
) -> Samples:
    """Sample one response per prompt from ``lm`` (a transformers or PEFT causal LM).

    ``ignore_eos``: EOS is an ordinary token and every response keeps its full length (fixed-length rollouts).
    ``prompt_width``/``response_width``: pad to these widths (static shapes: the same tensor shapes every step).
    ``context``: entered around ``generate`` (autocast, gathered sharded parameters); ``generate_kwargs`` are passed
    on (``synced_gpus``, optimum-habana's lazy-mode options). ``device``: where the prompts go (default: the
    model's).
    """
    from transformers import GenerationConfig

    device = device if device is not None else next(lm.parameters()).device
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    eos_ids = eos if isinstance(eos, list) else [eos]
    prompt_ids, prompt_mask = left_pad(prompts, pad, prompt_width)
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    config = GenerationConfig(
        do_sample=not greedy,
        top_k=0,
        top_p=1.0,
        temperature=1.0 if greedy else temperature,
        max_new_tokens=max_new_tokens,
        min_new_tokens=0,
        eos_token_id=None if ignore_eos else eos,
        pad_token_id=pad,
    )
    # generate() fills every setting left unset from the checkpoint's generation_config.json; lend the model ours for
    # the call, so nothing else applies.
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    saved, base.generation_config = base.generation_config, config
    try:
        with context if context is not None else nullcontext():
            out = lm.generate(
                input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=config, **generate_kwargs
            )
    finally:
        base.generation_config = saved
    raw = out[:, prompt_ids.shape[1] :]
    if response_width is not None and raw.shape[1] < response_width:
        fill = torch.full((raw.shape[0], response_width - raw.shape[1]), pad, device=raw.device, dtype=raw.dtype)
        raw = torch.cat([raw, fill], dim=1)
    responses, response_mask, has_eos = truncate_after_eos(raw, eos_ids, pad)
    if ignore_eos:  # an EOS mid-response is an ordinary token: keep the whole sample
        responses, response_mask = raw, torch.ones_like(response_mask)
    response_mask[:, max_new_tokens:] = 0  # static shapes: the fill past the drawn length is not a response
    attention_mask = torch.cat([prompt_mask, response_mask.to(prompt_mask.dtype)], dim=1)
    response_mask = response_mask.bool()
    texts = [
        tokenizer.decode(ids[mask], skip_special_tokens=False)
        for ids, mask in zip(responses.cpu(), response_mask.cpu(), strict=True)
    ]
    return Samples(
        input_ids=torch.cat([prompt_ids, responses], dim=1),
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        prompt_width=prompt_ids.shape[1],
        response_mask=response_mask,
        has_eos=has_eos,
        texts=texts,
    )


def concat_samples(parts: list[Samples], pad_token_id: int) -> Samples:
    """Batches sampled separately as one: generation stops once every row of a batch has ended, so batches come
    back with different response widths (responses are right-padded to the widest) and prompt widths (prompts are
    left-padded to the widest, positions unchanged)."""
    prompt_width = max(p.prompt_width for p in parts)
    response_width = max(p.responses.shape[1] for p in parts)
    ids, masks, resp_masks = [], [], []
    for p in parts:
        left, right = prompt_width - p.prompt_width, response_width - p.responses.shape[1]
        ids.append(torch.nn.functional.pad(p.input_ids, (left, right), value=pad_token_id))
        masks.append(torch.nn.functional.pad(p.attention_mask, (left, right), value=0))
        resp_masks.append(torch.nn.functional.pad(p.response_mask, (0, right), value=False))
    attention_mask = torch.cat(masks)
    return Samples(
        input_ids=torch.cat(ids),
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        prompt_width=prompt_width,
        response_mask=torch.cat(resp_masks),
        has_eos=torch.cat([p.has_eos for p in parts]),
        texts=[t for p in parts for t in p.texts],
    )
