"""Tiny models and tokenizers built locally, so no test ever needs the hub."""

from __future__ import annotations

import json
from pathlib import Path

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "What is two plus three? Two plus three is five.",
    "The capital of France is Paris. The capital of Italy is Rome.",
    "You are a helpful assistant. Answer briefly and politely.",
    "I am not sure I can help with that. Sorry, I do not know.",
    "### Question:\n### Answer:\n system user assistant",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 plus minus times equals is the a an of to and",
]


def build_tokenizer(folder: str | Path, chat: bool = True, pad: bool = True, extra_text: list[str] | None = None):
    """A byte-level BPE tokenizer (vocab ~400) trained on a few sentences; saved to ``folder``.

    ``chat``: ChatML template with ``<|im_end|>`` as EOS (like SmolLM2-Instruct); else no template and
    ``<|endoftext|>`` as EOS. ``pad``: whether a pad token is defined (tests of the pad fallback turn it off).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + (["<|pad|>"] if pad else [])
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS + (extra_text or []), trainer=trainer)
    kwargs = {"eos_token": "<|im_end|>" if chat else "<|endoftext|>", "bos_token": None, "unk_token": None}
    if pad:
        kwargs["pad_token"] = "<|pad|>"
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)
    if chat:
        fast.chat_template = CHATML
    folder = Path(folder)
    fast.save_pretrained(str(folder))
    return fast


def build_llama(folder: str | Path, tokenizer, layers: int = 2, hidden: int = 32, seed: int = 0) -> Path:
    """A randomly initialised Llama small enough to train in seconds on a CPU, saved with ``tokenizer``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    folder = Path(folder)
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    return folder


ORCA_ROWS = [
    {"system": "", "question": "What is 2 plus 3?", "chosen": "2 plus 3 is 5.", "rejected": "2 plus 3 is 7."},
    {
        "system": "You are a helpful assistant.",
        "question": "Capital of France?",
        "chosen": "It is Paris.",
        "rejected": "I do not know.",
    },
    {"system": "", "question": "What is 4 times 2?", "chosen": "4 times 2 is 8.", "rejected": "Maybe 9."},
    {
        "system": "",
        "question": "Name a colour of the sky.",
        "chosen": "The sky is blue.",
        "rejected": "Sorry, I cannot help.",
    },
]


def write_rows(path: str | Path, rows: list[dict], fmt: str | None = None) -> Path:
    """Write rows as JSON, JSONL, CSV or Parquet (by suffix or ``fmt``)."""
    path = Path(path)
    fmt = fmt or path.suffix.lstrip(".")
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif fmt == "json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif fmt == "csv":
        import csv

        keys = sorted({k for r in rows for k in r})
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        raise ValueError(fmt)
    return path
