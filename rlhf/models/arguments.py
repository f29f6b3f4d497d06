"""Which model a stage starts from and how it is loaded and adapted: the same flags, checked the same way, in every
stage (like TRL's ``ModelConfig``). Each script subclasses ``ModelArguments`` only to change defaults (the LoRA
shape of its reference example, PPO's ``--model_name``)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch

from rlhf.errors import UsageError

DTYPES = {"auto": "auto", "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass
class LoadArguments:
    """How weights are loaded: what every stage and evaluate.py share."""

    torch_dtype: str | None = field(
        default=None,
        metadata={
            "help": "Dtype the weights are stored in once loaded (default: as the stage says). Under --bf16 mixed "
            "precision keep float32: autocast computes in bf16 while the weights stay float32.",
            "choices": list(DTYPES),
        },
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow model repos to run their own Python code (off unless given)."}
    )

    def __post_init__(self) -> None:
        if self.torch_dtype is not None and self.torch_dtype not in DTYPES:
            raise UsageError(f"--torch_dtype: expected one of {', '.join(DTYPES)}, got {self.torch_dtype!r}")

    @property
    def dtype(self) -> Any:
        """``torch_dtype`` as a ``torch.dtype`` (or "auto", or None for the library's default)."""
        return None if self.torch_dtype is None else DTYPES[self.torch_dtype]


@dataclass
class ModelArguments(LoadArguments):
    """The model a training stage starts from, its tokenizer, and how it is adapted (LoRA, QLoRA)."""

    model_name_or_path: str = field(
        default=None, metadata={"help": "The model to start from: hub name or local folder.", "required": True}
    )
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer, if not the model's own."})
    use_fast_tokenizer: bool = field(
        default=True, metadata={"help": "Use the fast (Rust) tokenizer (the reference passes false)."}
    )
    peft: str = field(
        default="lora",
        metadata={"help": "lora (train a LoRA adapter) or none (full fine-tune).", "choices": ["lora", "none"]},
    )
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
    load_in_4bit: bool = field(
        default=False, metadata={"help": "QLoRA: load the base in 4 bit (NF4; CUDA + bitsandbytes, --peft lora)."}
    )
    load_in_8bit: bool = field(
        default=False, metadata={"help": "Load the base in 8 bit (CUDA + bitsandbytes, --peft lora)."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.model_name_or_path:
            raise UsageError("--model_name_or_path is required")
        if self.tokenizer_name:
            from rlhf.models.loading import check_model_folder

            check_model_folder(self.tokenizer_name, "tokenizer_name")
        if self.peft not in ("lora", "none"):
            raise UsageError(f"--peft: expected lora or none, got {self.peft!r}")
        if self.lora_rank <= 0:
            raise UsageError(f"--lora_rank: expected a positive integer, got {self.lora_rank}")
        if not 0 <= self.lora_dropout < 1:
            raise UsageError(f"--lora_dropout: expected a value in [0, 1), got {self.lora_dropout}")
        if self.lora_layers is not None:
            parse_layers(self.lora_layers)
        if self.load_in_4bit and self.load_in_8bit:
            raise UsageError("--load_in_4bit and --load_in_8bit are exclusive: pick one")
        if (self.load_in_4bit or self.load_in_8bit) and self.peft != "lora":
            raise UsageError(
                "--load_in_4bit/--load_in_8bit: quantized weights cannot be fully fine-tuned; use --peft lora"
            )

    @property
    def tokenizer_path(self) -> str:
        return self.tokenizer_name or self.model_name_or_path

    def peft_config(self, task_type: str, modules_to_save: list[str] | None = None) -> Any:
        """The LoRA config of these flags (``task_type``: CAUSAL_LM or SEQ_CLS), or None with ``--peft none``."""
        if self.peft != "lora":
            return None
        from peft import LoraConfig

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
            # rlhf.models.loading.check_lora_targets turns into module names once the model is loaded.
            config.layers_to_transform = parse_layers(self.lora_layers)
        return config

    def quantization_config(self, device: str, compute_dtype: Any = None) -> Any:
        """A bitsandbytes config for QLoRA, or None. Quantized loading exists only on CUDA (``device``)."""
        if not (self.load_in_4bit or self.load_in_8bit):
            return None
        flag = "--load_in_4bit" if self.load_in_4bit else "--load_in_8bit"
        if device != "cuda":
            raise UsageError(f"{flag}: quantized loading needs a CUDA GPU with bitsandbytes; this run is on {device}")
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            raise UsageError(f"{flag}: bitsandbytes is not installed (pip install bitsandbytes)")
        from transformers import BitsAndBytesConfig

        if self.load_in_8bit:
            return BitsAndBytesConfig(load_in_8bit=True)
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype if isinstance(compute_dtype, torch.dtype) else torch.bfloat16,
        )


def parse_layers(spec: str) -> list[int]:
    """``"0,2,5-7"`` -> ``[0, 2, 5, 6, 7]``; anything else is a usage error naming --lora_layers."""
    layers: set[int] = set()
    for part in spec.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if match is None or (match[2] is not None and int(match[2]) < int(match[1])):
            raise UsageError(f"--lora_layers: expected layer indices or ranges like 22-29, got {spec!r}")
        layers.update(range(int(match[1]), int(match[2] or match[1]) + 1))
    return sorted(layers)
