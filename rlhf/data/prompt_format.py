"""One prompt format for all three stages, recorded in every output folder.

The text a model sees for an Orca row is decided once (at SFT, or at the first stage that runs) and saved as
``prompt_format.json``; every later stage reads it from its input model folder, so SFT, the reward model and PPO
see byte-identical prompts and answers.

Formats:

* ``chat`` — the tokenizer's chat template: a system turn only when ``system`` is non-empty, a user turn with the
  question, then the assistant answer. The template text itself is saved, so a later change of the tokenizer's
  template cannot change the rendering.
* ``plain`` — for tokenizers without a chat template::

      {system}\n\n          (only when system is non-empty)
      ### Question:\n{question}\n\n### Answer:\n{answer}{eos}

* ``raw`` — the reference example's bare concatenation ``system + question``, answer appended directly.

In every format the completion is ``answer + eos_token``: that is what the policy learns to generate, where PPO
stops generation, and what the reward model scores.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rlhf.errors import UsageError

FILENAME = "prompt_format.json"


TEMPLATE_CHOICES = ("auto", "chat", "plain", "raw")


@dataclass(frozen=True)
class PromptFormat:
    """How an Orca row becomes text. ``kind`` is one of ``chat``, ``plain``, ``raw``."""

    kind: str
    eos_token: str
    chat_template: str | None = None

    def render_prompt(self, system: str, question: str, tokenizer: Any = None) -> str:
        """The text up to where the assistant's answer starts."""
        if self.kind == "chat":
            if tokenizer is None:
                raise ValueError("the chat format needs the tokenizer to render")
            messages = [{"role": "system", "content": system}] if system.strip() else []
            messages.append({"role": "user", "content": question})
            return tokenizer.apply_chat_template(
                messages, chat_template=self.chat_template, tokenize=False, add_generation_prompt=True
            )
        if self.kind == "plain":
            head = f"{system}\n\n" if system.strip() else ""
            return f"{head}### Question:\n{question}\n\n### Answer:\n"
        if self.kind == "raw":
            # Kept for compatibility with the reference example, which fed system + question with no separator.
            return system + question
        raise ValueError(f"unknown prompt format {self.kind!r}")

    def render_completion(self, answer: str) -> str:
        """The answer as the model must produce it: the text, then EOS."""
        return answer + self.eos_token

    def save(self, folder: str | Path) -> None:
        path = Path(folder) / FILENAME
        path.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, folder: str | Path) -> PromptFormat | None:
        """The format saved in a model folder, or None if the folder has none (e.g. a hub base model)."""
        path = Path(folder) / FILENAME
        if not path.is_file():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(kind=data["kind"], eos_token=data["eos_token"], chat_template=data.get("chat_template"))


def resolve_prompt_format(choice: str, tokenizer: Any, model_path: str | None) -> PromptFormat:
    """Decide the format: the one saved with the input model wins; else the flag; ``auto`` = chat if available.

    Raises UsageError if the flag asks for a format that contradicts the one the input model was trained with, or
    for ``chat`` with a tokenizer that has no chat template.
    """
    if choice not in TEMPLATE_CHOICES:
        raise UsageError(f"--prompt_template: expected one of {', '.join(TEMPLATE_CHOICES)}, got {choice!r}")
    saved = PromptFormat.load(model_path) if model_path and Path(model_path).is_dir() else None
    if saved is not None:
        if choice not in ("auto", saved.kind):
            raise UsageError(
                f"--prompt_template {choice}: the model in {model_path} was trained with the {saved.kind!r} format "
                f"({FILENAME}); use --prompt_template auto or {saved.kind}"
            )
        return saved
    if tokenizer.eos_token is None:
        raise UsageError("the tokenizer has no EOS token; set one (e.g. tokenizer.eos_token) before training")
    template = getattr(tokenizer, "chat_template", None)
    if choice == "chat" and not template:
        raise UsageError("--prompt_template chat: the tokenizer has no chat template; use plain or raw")
    if choice == "auto":
        choice = "chat" if template else "plain"
    chat_template = template if choice == "chat" else None
    return PromptFormat(kind=choice, eos_token=tokenizer.eos_token, chat_template=chat_template)
