"""The ``README.md`` model card of every published folder (SFT, reward model, PPO ``final/``), written by us.

It states what users need before they upload or load the folder: the stage, the model it started from, the data,
the flags that differ from the defaults (secrets never: secret fields are dropped and the hub token is redacted from
the whole text), the metrics, the prompt format, and how to load the model in three lines. A card a library wrote
(TRL's, PEFT's) describes a training run, not this folder, and is never what ends up here.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from rlhf.data.prompt_format import PromptFormat
from rlhf.secrets import SECRET_FIELDS, redact

CARD = "README.md"

STAGES = {
    "sft": ("Supervised fine-tuning (sft.py)", "AutoModelForCausalLM"),
    "reward_model": ("Reward model (reward_modeling.py)", "AutoModelForSequenceClassification"),
    "ppo": ("PPO, RLHF stage 3 (rl_training.py)", "AutoModelForCausalLM"),
}


def changed_flags(*args: Any) -> dict[str, Any]:
    """The fields of the parsed flag dataclasses whose value differs from the default, secret fields left out."""
    flags: dict[str, Any] = {}
    for obj in args:
        for f in dataclasses.fields(obj):
            if f.name in SECRET_FIELDS or f.name.startswith("_") or not f.init:
                continue
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = dataclasses.MISSING
            value = getattr(obj, f.name, None)
            if value != default:
                flags[f.name] = _plain(value)
    return flags


def _plain(value: Any) -> Any:
    """A value as JSON shows it (enums by value, paths and other objects as text)."""
    return json.loads(json.dumps(getattr(value, "value", value), default=str))


def render_model_card(
    stage: str,
    base_model: str,
    data: str,
    flags: dict[str, Any],
    metrics: dict[str, Any],
    fmt: PromptFormat,
    extra: dict[str, str] | None = None,
    secrets: list[str | None] | None = None,
) -> str:
    """The card's Markdown. ``extra``: further inputs worth naming (e.g. the reward model of a PPO run)."""
    title, auto_class = STAGES[stage]
    lines = [
        "---",
        "library_name: transformers",
        "tags: [rlhf]",
        "---",
        "",
        f"# {title}",
        "",
        f"- stage: `{stage}`",
        f"- started from: `{base_model}`",
        f"- data: `{data}`",
        *(f"- {name}: `{value}`" for name, value in (extra or {}).items()),
        f"- prompt format: `{fmt.kind}` (`prompt_format.json`; the later stages and evaluation reuse it)",
        "",
        "## Load it",
        "",
        "```python",
        f"from transformers import {auto_class}, AutoTokenizer",
        f'model = {auto_class}.from_pretrained("path/to/this/folder")',
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
        "```",
        "",
        "Prompts in this model's format: `rlhf.data.prompt_format.PromptFormat.load(folder).render_prompt(system, "
        "question, tokenizer)`.",
        "",
        "## Flags (those not at their default)",
        "",
        "```json",
        json.dumps(flags, indent=2, sort_keys=True, default=str),
        "```",
        "",
        "## Metrics",
        "",
        "```json",
        json.dumps(metrics, indent=2, sort_keys=True, default=str),
        "```",
        "",
    ]
    # The hub token may sit inside a value (a URL, a path); the environment holds it after protect_secrets.
    return redact("\n".join(lines), [*(secrets or []), os.environ.get("HF_TOKEN")])


def write_model_card(folder: str | Path, **card: Any) -> None:
    """Write ``README.md`` into ``folder`` (a staging folder: publishing makes it part of the result)."""
    (Path(folder) / CARD).write_text(render_model_card(**card), encoding="utf-8")
