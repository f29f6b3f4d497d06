"""Loading tokenizers and models the same way in every stage, and saving them as loadable folders."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlhf.cli import UsageError

logger = logging.getLogger("rlhf.models")

PAD_TOKEN = "<|pad|>"
DTYPES = {"auto": "auto", "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


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


def resolve_dtype(name: str | None) -> Any:
    if name is None:
        return None
    if name not in DTYPES:
        raise UsageError(f"--torch_dtype: expected one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]


def load_tokenizer(
    name: str, token: str | None = None, use_fast: bool = True, trust_remote_code: bool = False
) -> tuple[Any, bool]:
    """Load a tokenizer with a pad token distinct from EOS. Returns (tokenizer, added_new_token).

    A pad equal to EOS makes EOS look like padding (sequence-classification heads then score the wrong token and
    masked losses drop the EOS the model must learn), so an existing spare special token is used, else a new one.
    """
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            name, token=token, use_fast=use_fast, trust_remote_code=trust_remote_code
        )
    except OSError as err:
        first = str(err).strip().splitlines()[0]
        raise UsageError(f"cannot load tokenizer {name!r} ({first})") from None
    if tokenizer.eos_token is None:
        raise UsageError(f"tokenizer {name!r} has no EOS token; generation could never stop")
    added = False
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        spare = tokenizer.unk_token if tokenizer.unk_token not in (None, tokenizer.eos_token) else None
        if spare is not None:
            tokenizer.pad_token = spare
        else:
            added = tokenizer.add_special_tokens({"pad_token": PAD_TOKEN}) > 0
            if not added:
                tokenizer.pad_token = PAD_TOKEN
        logger.info(
            "pad token set to %r (id %d), distinct from EOS %r",
            tokenizer.pad_token,
            tokenizer.pad_token_id,
            tokenizer.eos_token,
        )
    return tokenizer, added


def fit_embeddings(model: Any, tokenizer: Any) -> None:
    """Grow the embeddings if the tokenizer gained a token, and record pad/eos ids in the model config."""
    vocab = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > vocab:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id


def check_causal_lm_folder(path: str, what: str) -> None:
    """Stop early when a local folder is not a causal LM (e.g. a reward model passed as policy)."""
    _check_architecture(path, what, want="ForCausalLM")


def check_reward_folder(path: str, what: str) -> None:
    """Stop early when a local folder is not a sequence-classification model (e.g. an SFT policy)."""
    _check_architecture(path, what, want="ForSequenceClassification")


def _check_architecture(path: str, what: str, want: str) -> None:
    config = Path(path) / "config.json"
    if not config.is_file():
        return  # a hub name: the hub's loader reports its own problems
    import json

    archs = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
    if archs and not any(a.endswith(want) for a in archs):
        raise UsageError(f"--{what} {path}: expected a *{want} model, found {', '.join(archs)}")


def upcast_trainable(model: Any) -> None:
    """Keep parameters that receive gradients in float32 (the frozen base may stay in bf16/fp16).

    A module whose own weights were upcast gets its floating inputs in float32 too: without autocast (a run in fp32
    mixed precision "no", optimum-habana's trainer on a CPU, FSDP without mixed precision) a bf16 hidden state
    would meet a float32 score head and the matmul would refuse the mix. Under autocast the op is cast as usual.
    """
    for module in model.modules():
        upcast = False
        for param in module.parameters(recurse=False):
            if param.requires_grad and param.dtype in (torch.bfloat16, torch.float16):
                param.data = param.data.float()
                upcast = True
        if upcast:
            module.register_forward_pre_hook(_float32_inputs)


def _float32_inputs(module: Any, args: tuple) -> tuple:
    return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)
