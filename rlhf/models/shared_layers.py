"""Forwards that share their first decoder layers compute them once.

Within one model: a LoRA on the top layers leaves the bottom ones frozen, so the PPO policy, its reference (adapter
off) and every update forward compute the same hidden states there (``frozen_prefix_depth``, ``frozen_prefix_hidden``,
``prefix_replayed``). Across models: models fine-tuned with LoRA on their last layers over one base keep its
embeddings and first layers bit for bit (the demo's SFT policy, PPO policy and both reward models share 18 of 30), so
evaluating several of them on the same inputs runs those layers once (``SharedLayers``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

T = TypeVar("T")


# ----------------------------------------------------------------------------------------- one model, one frozen prefix
# A LoRA on the top decoder layers (--lora_layers 18-29 of 30) leaves the layers below it untouched and untrained: the
# policy, the reference (adapter off) and every update forward compute the same hidden states there. The PPO engine
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


# ------------------------------------------------------------------------------------ several models, shared layers


def _state(module: nn.Module) -> dict[str, Tensor]:
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


def _equal(a: nn.Module, b: nn.Module) -> bool:
    x, y = _state(a), _state(b)
    return (
        type(a) is type(b)
        and x.keys() == y.keys()
        and all(v.dtype == y[k].dtype and v.shape == y[k].shape and torch.equal(v, y[k]) for k, v in x.items())
    )


def shared_depth(a: nn.Module, b: nn.Module) -> int:
    """How many first decoder layers ``a`` and ``b`` hold with the same weights, over the same input embeddings
    (equal layers on other inputs compute other things); 0 when none, or when either's layers cannot be found."""
    layers_a, layers_b = decoder_layers(a), decoder_layers(b)
    embed_a = a.get_input_embeddings() if hasattr(a, "get_input_embeddings") else None
    embed_b = b.get_input_embeddings() if hasattr(b, "get_input_embeddings") else None
    if layers_a is None or layers_b is None or embed_a is None or embed_b is None or not _equal(embed_a, embed_b):
        return 0
    depth = 0
    for layer_a, layer_b in zip(layers_a, layers_b, strict=False):
        if not _equal(layer_a, layer_b):
            break
        depth += 1
    return depth


def _keep(stored: dict[int, tuple[Tensor, bool]], depth: int, module: nn.Module, args: Any, output: Any) -> None:
    stored[depth] = (output, False) if isinstance(output, Tensor) else (output[0], True)


class SharedLayers:
    """``shared(call)`` is ``[call(lead), *(call(f) for f in followers)]``, where each follower starts from the
    output of the lead's layer ``shared_depth(lead, follower) - 1`` instead of computing its own first layers.
    ``call`` runs one model on a batch (the same inputs for every model) and returns a tensor. On its first call each
    follower is also run in full and the two results compared bit for bit: a follower whose layers compute otherwise
    despite equal weights (they read a setting that is not a weight, e.g. another norm epsilon) runs in full from
    then on, with a warning."""

    def __init__(self, lead: nn.Module, followers: Sequence[nn.Module] = ()) -> None:
        self.lead = lead
        self.followers = list(followers)
        self.depths = [shared_depth(lead, f) for f in self.followers]
        self.checked = [False] * len(self.followers)

    def __call__(self, call: Callable[[nn.Module], T]) -> list[T]:
        stored: dict[int, tuple[Tensor, bool]] = {}
        layers = decoder_layers(self.lead) if any(self.depths) else None
        hooks = [layers[d - 1].register_forward_hook(partial(_keep, stored, d)) for d in set(self.depths) if d > 0]
        try:
            results = [call(self.lead)]
        finally:
            for hook in hooks:
                hook.remove()
        for i, (follower, depth) in enumerate(zip(self.followers, self.depths, strict=True)):
            if depth == 0:
                results.append(call(follower))
                continue
            with prefix_replayed(follower, depth, *stored[depth]):
                result = call(follower)
            if not self.checked[i]:
                self.checked[i] = True
                full = call(follower)
                if not torch.equal(result, full):
                    logger.warning("shared layers: model %d differs when run from the lead's layer %d", i + 1, depth)
                    self.depths[i], result = 0, full
            results.append(result)
        return results
