"""What the PPO engine asks of the device beyond accelerate: nothing on CPU/CUDA (this base), lazy-mode
steps and HPU graphs on Gaudi (``rlhf.runtime.gaudi.GaudiRuntime``)."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch


class DeviceRuntime:
    """What the PPO engine asks the device for. This base does nothing: CPU and CUDA need no hooks."""

    generate_kwargs: dict[str, Any] = {}  # extra keyword arguments of ``generate`` (never mutated)
    # PPO minibatches drop the padding columns all their rows share: fewer positions, a shape per minibatch. A
    # device that compiles a graph per shape (Gaudi's lazy mode) keeps the rollout's one width instead.
    trims_padding = True

    def mark_step(self) -> None:
        """End of a lazy-mode graph (after backward, after the optimizer step, after a rollout forward)."""

    def graphs(self, module: torch.nn.Module | None) -> Any:
        """Context in which ``module``'s forward (no-grad) runs as a cached HPU graph (None: nothing to graph)."""
        return nullcontext()


def module_available(module: str) -> bool:
    """Whether ``module`` can be imported here (without importing it; a broken parent package counts as no)."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
