"""The networks PPO works with: policy + value head (one forward for both), reference log-probs, reward scoring."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from rlhf.ppo.math import entropy_from_logits, logprobs_from_logits


class PolicyWithValue(nn.Module):
    """A causal LM with a scalar value head on its last hidden state.

    ``forward`` returns the logits and the values of the same pass, so a PPO minibatch costs one forward of the
    network. The head starts near zero so early value losses do not swamp the policy gradient ("The N
    Implementation Details of RLHF with PPO", Huang et al. 2024).
    """

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm
        hidden = (
            lm.config.get_text_config().hidden_size
            if hasattr(lm.config, "get_text_config")
            else (lm.config.hidden_size)
        )
        self.value_head = nn.Linear(hidden, 1)
        nn.init.normal_(self.value_head.weight, std=1e-3 / hidden**0.5)
        nn.init.zeros_(self.value_head.bias)
        self.value_head.float()
        # FSDP wraps each decoder layer as its own unit: the layer classes are the language model's.
        self._no_split_modules = list(getattr(lm, "_no_split_modules", None) or [])

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, logits_to_keep: int = 0
    ) -> tuple[Tensor, Tensor]:
        """Shapes: ``(B, L)`` in; logits ``(B, K, V)`` for the last ``K = logits_to_keep`` positions (all ``L`` when
        0: PPO needs only the response's, and the LM head is a large share of a small model's compute) and values
        ``(B, L)`` (float32) out."""
        out = self.lm(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            output_hidden_states=True,
            use_cache=False,
            **({"logits_to_keep": logits_to_keep} if logits_to_keep else {}),
        )
        hidden = out.hidden_states[-1]
        # The value head runs in float32 even under autocast: values feed GAE, and bf16's 8 bits of mantissa would
        # quantise them to ~0.4%.
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            values = self.value_head(hidden.float()).squeeze(-1)
        return out.logits, values


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions that start at 0 at the first real token, for left-padded rows, shape ``(B, L)``."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def response_logprobs(
    logits: Tensor, input_ids: Tensor, prompt_width: int, temperature: float
) -> tuple[Tensor, Tensor]:
    """Log-probs of the response tokens (those after ``prompt_width``) and the per-token entropy, ``(B, T)`` each.

    The logits are divided by the sampling temperature, so these are the log-probs of the distribution the tokens
    were actually drawn from. ``logits`` may cover only the last ``K`` positions (``logits_to_keep``), ``K > T``.
    """
    skipped = input_ids.shape[1] - logits.shape[1]
    response_logits = logits[:, prompt_width - 1 - skipped : -1]
    labels = input_ids[:, prompt_width:]
    return (
        logprobs_from_logits(response_logits, labels, temperature),
        entropy_from_logits(response_logits.detach(), temperature),
    )


def causal_lm_logprobs(
    lm: Any, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, prompt_width: int, temperature: float
) -> Tensor:
    """Log-probs ``(B, T)`` of the response tokens under a plain causal LM (PPO's reference; either policy in
    evaluation), from float32 logits of the response positions only (the LM head is a large share of a small
    model's compute)."""
    logits = lm(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=False,
        logits_to_keep=input_ids.shape[1] - prompt_width + 1,
    ).logits
    return response_logprobs(logits.float(), input_ids, prompt_width, temperature)[0]


def adapter_disabled(model: nn.Module) -> Any:
    """Context in which a PEFT model computes with its base weights only (the frozen reference policy)."""
    disable = getattr(model, "disable_adapter", None)
    return disable() if disable is not None else nullcontext()
