"""The networks PPO works with: policy + value head (one forward for both), reference log-probs, reward scoring."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
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


def foldable_lora_layers(model: nn.Module) -> list[nn.Module] | None:
    """The LoRA layers of ``model`` when its adapter can be folded into plain float32 base weights (see
    ``adapter_folded``); None when it cannot: no LoRA, weights already merged, a quantized or low-precision base
    (bf16 would round a small update away), DoRA or a LoRA bias (their deltas are not a plain ``s * B @ A``), or a
    LoRA layer other than a linear one."""
    try:
        from peft.tuners.lora import LoraLayer
        from peft.tuners.lora.layer import Linear
    except ImportError:
        return None
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    if not layers or any(type(m) is not Linear for m in layers):  # an embedding may share its weight with the head
        return None
    for layer in layers:
        weight = getattr(layer.get_base_layer(), "weight", None)
        if layer.merged or type(weight) not in (torch.Tensor, nn.Parameter) or weight.dtype != torch.float32:
            return None
        if any(layer.use_dora.get(a) or getattr(layer, "lora_bias", {}).get(a) for a in _adapters(layer)):
            return None
    return layers


@contextmanager
def adapter_folded(model: nn.Module, layers: list[nn.Module]) -> Iterator[None]:
    """Context in which a LoRA model computes with each adapter folded into its base weight (``W + s * B @ A``, one
    matrix, the LoRA branch switched off): the same function to float32 rounding, at the bare model's speed. For
    token-by-token generation, where the adapter's extra small matmuls per layer cost a large share of the time.

    The folded weights are new tensors: the original ones are put back untouched on exit (an in-place merge and
    unmerge would leave ``W`` off by rounding after every step, so a resumed run would not match an uninterrupted
    one). Costs one extra copy of the adapted weights while inside. ``layers``: from ``foldable_lora_layers``.
    """
    originals = []
    try:
        with torch.no_grad():
            for layer in layers:
                base = layer.get_base_layer()
                delta = sum((layer.get_delta_weight(a) for a in _adapters(layer)), torch.zeros_like(base.weight))
                originals.append((base, base.weight.data))
                base.weight.data = base.weight.data + delta.to(base.weight.dtype)
        with adapter_disabled(model):
            yield
    finally:
        for base, data in originals:
            base.weight.data = data


def _adapters(layer: nn.Module) -> list[str]:
    """The active adapters a LoRA layer holds weights for."""
    return [a for a in layer.active_adapters if a in layer.lora_A]
