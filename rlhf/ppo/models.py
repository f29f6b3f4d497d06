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


# ---------------------------------------------------------------------------------------------------- frozen prefix
# A LoRA on the top decoder layers (--lora_layers 18-29 of 30) leaves the layers below it untouched and untrained: the
# policy, the reference (adapter off) and every update forward compute the same hidden states there. The engine
# computes them once per rollout (``frozen_prefix_hidden``) and has the other forwards start from them
# (``prefix_replayed``): the same numbers, without 60% of those forwards' layers.


def decoder_layers(model: nn.Module) -> nn.ModuleList | None:
    """The decoder-layer list of a transformers (or PEFT) causal LM: its one ``nn.ModuleList`` as long as the
    config's ``num_hidden_layers``; None when there is not exactly one."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if config is None:
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    n = getattr(text, "num_hidden_layers", None)
    found = [m for m in base.modules() if isinstance(m, nn.ModuleList) and len(m) == n]
    return found[0] if n and len(found) == 1 else None


def frozen_prefix_depth(model: nn.Module) -> int:
    """How many bottom decoder layers of ``model`` nothing trains and no adapter touches, with frozen input
    embeddings: the layers whose output is the same for the policy and the reference. 0 when none (or when the
    model's layers cannot be found)."""
    layers = decoder_layers(model)
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if layers is None or embeddings is None or _trained_or_adapted(embeddings):
        return 0
    depth = 0
    for layer in layers:
        if _trained_or_adapted(layer):
            break
        depth += 1
    return depth if depth < len(layers) else 0  # nothing adapted above: nothing to train, nothing to share


def _trained_or_adapted(module: nn.Module) -> bool:
    if any(p.requires_grad for p in module.parameters()):
        return True
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        return False
    return any(isinstance(m, BaseTunerLayer) for m in module.modules())


class _PrefixDone(Exception):
    """Raised by the hook on the last frozen layer: the forward has computed all it was asked for."""

    def __init__(self, output: Any) -> None:
        super().__init__()
        self.output = output


def frozen_prefix_hidden(
    model: nn.Module, depth: int, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor
) -> tuple[Tensor, bool]:
    """The hidden states ``(B, L, H)`` after the first ``depth`` decoder layers of ``model`` (the embeddings and
    those layers only: the forward stops there), and whether the layers return tuples (older transformers)."""

    def stop(module: nn.Module, args: Any, output: Any) -> None:
        raise _PrefixDone(output)

    handle = decoder_layers(model)[depth - 1].register_forward_hook(stop)
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    except _PrefixDone as done:
        if isinstance(done.output, Tensor):
            return done.output, False
        return done.output[0], True
    finally:
        handle.remove()
    raise RuntimeError(f"the forward of {type(model).__name__} never reached decoder layer {depth - 1}")


class _Replay(nn.Module):
    """Stands in for decoder layer ``i`` of a frozen prefix: layer 0 returns the stored hidden states, the others
    pass theirs on; in the form the model's own layers return (a tensor, or a tuple whose first item it reads)."""

    def __init__(self, original: nn.Module, hidden: Tensor | None, as_tuple: bool) -> None:
        super().__init__()
        self.hidden, self.as_tuple = hidden, as_tuple
        if hasattr(original, "attention_type"):  # models with sliding-window layers look this up per layer
            self.attention_type = original.attention_type

    def forward(self, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Any:
        if self.hidden is not None:
            if self.hidden.shape[:2] != hidden_states.shape[:2]:
                raise RuntimeError(
                    f"stored frozen-layer states of shape {tuple(self.hidden.shape)} replayed for a batch of "
                    f"{tuple(hidden_states.shape)}"
                )
            hidden_states = self.hidden
        return (hidden_states,) if self.as_tuple else hidden_states


@contextmanager
def prefix_replayed(model: nn.Module, depth: int, hidden: Tensor, as_tuple: bool = False) -> Iterator[None]:
    """Context in which ``model``'s first ``depth`` decoder layers are not computed: its forward continues from
    ``hidden`` (from ``frozen_prefix_hidden`` on the same rows and columns). ``as_tuple``: the model's layers return
    tuples (older transformers)."""
    layers = decoder_layers(model)
    originals = [layers[i] for i in range(depth)]
    try:
        for i, layer in enumerate(originals):
            layers[i] = _Replay(layer, hidden if i == 0 else None, as_tuple)
        yield
    finally:
        for i, layer in enumerate(originals):
            layers[i] = layer
