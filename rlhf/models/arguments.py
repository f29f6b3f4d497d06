"""Flags that say which model to load and how to adapt it (LoRA)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from rlhf.errors import UsageError


@dataclass
class LoraArguments:
    """LoRA adapter settings; defaults differ per stage and are set by each script."""

    lora_rank: int = field(default=8, metadata={"help": "LoRA rank r."})
    lora_alpha: float = field(default=16, metadata={"help": "LoRA alpha (scaling = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: str = field(
        default="all-linear",
        metadata={"help": "Comma-separated module names to adapt (e.g. q_proj,v_proj), or all-linear."},
    )
    lora_layers: str | None = field(
        default=None,
        metadata={
            "help": "Adapt only these decoder layers: comma-separated indices or ranges, e.g. 22-29 (default: all). "
            "Backpropagation stops at the lowest adapted layer, so adapting the top layers trains faster."
        },
    )

    def peft_config(self, task_type: str, modules_to_save: list[str] | None = None) -> Any:
        from peft import LoraConfig

        if self.lora_rank <= 0:
            raise UsageError(f"--lora_rank: expected a positive integer, got {self.lora_rank}")
        if not 0 <= self.lora_dropout < 1:
            raise UsageError(f"--lora_dropout: expected a value in [0, 1), got {self.lora_dropout}")
        targets = self.lora_target_modules.strip()
        config = LoraConfig(
            r=self.lora_rank,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules="all-linear" if targets == "all-linear" else [t.strip() for t in targets.split(",")],
            task_type=task_type,
            modules_to_save=modules_to_save,
        )
        if self.lora_layers is not None:
            # Set after construction: LoraConfig refuses a layer list next to the string all-linear, which
            # stage.check_lora_targets turns into module names once the model is loaded.
            config.layers_to_transform = parse_layers(self.lora_layers)
        return config


def parse_layers(spec: str) -> list[int]:
    """``"0,2,5-7"`` -> ``[0, 2, 5, 6, 7]``; anything else is a usage error naming --lora_layers."""
    layers: set[int] = set()
    for part in spec.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if match is None or (match[2] is not None and int(match[2]) < int(match[1])):
            raise UsageError(f"--lora_layers: expected layer indices or ranges like 22-29, got {spec!r}")
        layers.update(range(int(match[1]), int(match[2] or match[1]) + 1))
    return sorted(layers)
