"""Every model and tokenizer loader, the same way in every stage: tokenizer (pad distinct from EOS), causal LM
(policy, reference, a policy to evaluate), reward model (to train or to score with), LoRA on top.

Load failures (no weights, not on the hub, no network) are one-line usage errors naming the flag."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
import transformers

from rlhf.errors import UsageError, first_line

logger = logging.getLogger("rlhf.models.loading")

PAD_TOKEN = "<|pad|>"
TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])


def dtype_kwarg(dtype: Any) -> dict[str, Any]:
    """transformers 5 calls it ``dtype``; 4.x (the Gaudi stack) ``torch_dtype``."""
    if dtype is None:
        return {}
    return {"dtype": dtype} if TRANSFORMERS_MAJOR >= 5 else {"torch_dtype": dtype}


# ----------------------------------------------------------------------------------------------------------------
# Tokenizer


def load_tokenizer(name: str, token: str | None = None, use_fast: bool = True, trust_remote_code: bool = False) -> Any:
    """A tokenizer with a pad token distinct from EOS.

    A pad equal to EOS makes EOS look like padding (sequence-classification heads then score the wrong token and
    masked losses drop the EOS the model must learn), so an existing spare special token is used, else a new one
    (``fit_embeddings`` then grows the model's embeddings).
    """
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            name, token=token, use_fast=use_fast, trust_remote_code=trust_remote_code
        )
    except OSError as err:
        raise UsageError(f"cannot load tokenizer {name!r} ({first_line(err)})") from None
    if tokenizer.eos_token is None:
        raise UsageError(f"tokenizer {name!r} has no EOS token; generation could never stop")
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        spare = tokenizer.unk_token if tokenizer.unk_token not in (None, tokenizer.eos_token) else None
        if spare is not None:
            tokenizer.pad_token = spare
        elif tokenizer.add_special_tokens({"pad_token": PAD_TOKEN}) == 0:
            tokenizer.pad_token = PAD_TOKEN
        logger.info(
            "pad token set to %r (id %d), distinct from EOS %r",
            tokenizer.pad_token,
            tokenizer.pad_token_id,
            tokenizer.eos_token,
        )
    return tokenizer


def fit_embeddings(model: Any, tokenizer: Any) -> None:
    """Grow the embeddings if the tokenizer gained a token, and record pad/eos ids in the model config."""
    vocab = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > vocab:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id


# ----------------------------------------------------------------------------------------------------------------
# Models


def load_causal_lm(
    name: str,
    tokenizer: Any,
    *,
    token: str | None,
    dtype: Any = None,
    trust_remote_code: bool = False,
    quantization: Any | None = None,
    flag: str = "model_name_or_path",
) -> Any:
    """A causal LM that works with ``tokenizer``: the policy to train (SFT, PPO), the reference, or a policy to
    evaluate. ``quantization``: a bitsandbytes config for QLoRA; the quantized model is prepared for adapter
    training (norms in float32, input gradients on)."""
    from transformers import AutoModelForCausalLM

    check_causal_lm_folder(name, flag)
    model = _from_pretrained(AutoModelForCausalLM, name, flag, token, dtype, trust_remote_code, quantization)
    fit_embeddings(model, tokenizer)
    if quantization is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model


def load_reward_model(
    name: str,
    tokenizer: Any,
    *,
    token: str | None,
    dtype: Any = None,
    trust_remote_code: bool = False,
    quantization: Any | None = None,
    flag: str = "reward_model_name",
    trained: bool = True,
) -> Any:
    """A one-logit sequence classifier. ``trained`` (PPO, evaluation): ``name`` must be a reward model already;
    otherwise (the reward-model stage) it may be any causal LM, whose new score head is then trained."""
    from transformers import AutoModelForSequenceClassification

    if trained:
        check_reward_folder(name, flag)
    model = _from_pretrained(
        AutoModelForSequenceClassification, name, flag, token, dtype, trust_remote_code, quantization, num_labels=1
    )
    fit_embeddings(model, tokenizer)
    if quantization is not None and not trained:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model)
    return model


def _from_pretrained(
    auto_class: Any,
    name: str,
    flag: str,
    token: str | None,
    dtype: Any,
    trust_remote_code: bool,
    quantization: Any | None,
    **kwargs: Any,
) -> Any:
    if quantization is not None:
        kwargs["quantization_config"] = quantization
    try:
        return auto_class.from_pretrained(
            name, token=token, trust_remote_code=trust_remote_code, **dtype_kwarg(dtype), **kwargs
        )
    except (OSError, ValueError) as err:  # no weights or config in the folder, not on the hub, no network
        raise UsageError(f"--{flag} {name}: cannot load the model ({first_line(err)})") from None


def frozen(model: Any, device: Any = None) -> Any:
    """``model`` for inference only (reference, reward model, evaluated policies): eval mode (no dropout), no
    gradients, on ``device`` (left where it is for None, and for quantized weights, which bitsandbytes places)."""
    model = model.eval().requires_grad_(False)
    if device is not None and not getattr(model, "is_quantized", False):
        model = model.to(device)
    return model


def with_lora(model: Any, peft_config: Any | None) -> Any:
    """``model`` with a fresh LoRA adapter (``peft_config`` None: the model itself, for a full fine-tune)."""
    if peft_config is None:
        return model
    from peft import get_peft_model

    check_lora_targets(model, peft_config)
    return get_peft_model(model, peft_config)


def check_lora_targets(model: Any, peft_config: Any) -> None:
    """``--lora_target_modules`` that name no module of the model, or ``--lora_layers`` it does not have, stop with
    what would work. With ``--lora_layers`` and all-linear, all-linear becomes the names of the linear modules inside
    the numbered decoder blocks (PEFT itself refuses a layer list next to the string all-linear)."""
    layers = peft_config.layers_to_transform
    if layers:
        count = getattr(model.config, "num_hidden_layers", None)
        if count is not None and max(layers) >= count:
            raise UsageError(f"--lora_layers: the model has {count} layers (0-{count - 1}), got layer {max(layers)}")
    targets = peft_config.target_modules
    if isinstance(targets, str):
        targets = targets.split(",")
    targets = sorted(t.strip() for t in targets if t.strip())
    if targets == ["all-linear"]:
        if layers:
            peft_config.target_modules = {
                name.rsplit(".", 1)[-1]
                for name, module in model.named_modules()
                if isinstance(module, torch.nn.Linear) and re.search(r"\.\d+\.", name)
            }
        return
    names = [name for name, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise UsageError(
            f"--lora_target_modules: {', '.join(missing)} not found in the model; its linear layers are "
            f"{', '.join(linear)} (or use all-linear)"
        )


def upcast_trainable(model: Any) -> None:
    """Keep parameters that receive gradients in float32 (the frozen base may stay in bf16/fp16): Adam updates of a
    bf16 score head are mostly rounded away.

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


# ----------------------------------------------------------------------------------------------------------------
# Folder checks: the wrong kind of model stops before anything is loaded


def _local_path(name: str) -> bool:
    """A name that can only be a path, never a hub id (``name`` or ``org/name``)."""
    return Path(name).is_absolute() or name.startswith((".", "~")) or name.count("/") > 1 or "\\" in name


def check_causal_lm_folder(path: str, what: str) -> None:
    """Stop early when a local folder is not a causal LM (e.g. a reward model passed as policy)."""
    _check_architecture(path, what, want="ForCausalLM")


def check_reward_folder(path: str, what: str) -> None:
    """Stop early when a local folder is not a sequence-classification model (e.g. an SFT policy)."""
    _check_architecture(path, what, want="ForSequenceClassification")


def check_model_folder(path: str, what: str) -> None:
    """Stop early when ``path`` can only be a local folder and is not one (a typo, a file)."""
    folder = Path(path)
    if folder.is_file():
        raise UsageError(f"--{what} {path}: is a file; expected a model folder")
    if not folder.exists() and _local_path(path):
        raise UsageError(f"--{what} {path}: no such folder")


def _check_architecture(path: str, what: str, want: str) -> None:
    check_model_folder(path, what)
    config = Path(path) / "config.json"
    if not config.is_file():
        return  # a hub name: the hub's loader reports its own problems
    archs = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
    if archs and not any(a.endswith(want) for a in archs):
        raise UsageError(f"--{what} {path}: expected a *{want} model, found {', '.join(archs)}")
