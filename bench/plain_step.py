"""The plain training step a stage is measured against: bare forward + backward + AdamW, no Trainer, no engine.

    python -m bench.plain_step RECORD.json --model M --kind causal --rows 1 --width 256 [--steps 5]

Same model folder, same rows and row width as the stage step it is compared with, random token ids, every position
real; fp32, or bf16 autocast over float32 master weights (what ``--bf16 True`` means for the stages). What each kind
runs per step:

- ``causal`` (SFT): the causal LM with its own next-token loss over all positions;
- ``reward`` (reward modeling): a one-logit sequence classifier on ``rows`` sequences (chosen and rejected rows of
  ``rows / 2`` pairs), the pairwise loss ``-log sigmoid(r_chosen - r_rejected)``;
- ``ppo`` (the PPO update): the causal LM plus a scalar value head on its last hidden state, the LM head on the last
  ``response + 1`` positions only (as the engine asks with ``logits_to_keep``), a policy-gradient-shaped loss on the
  response log-probs plus a squared value loss; model in eval mode, as the engine trains it.

With ``peft: lora`` the model gets LoRA adapters on all linear layers (the stage's rank/alpha/dropout; the frozen
base in ``base_dtype``), so a LoRA stage is compared with LoRA. The optimizer is torch's fused AdamW, what the
Trainer stages use by default (``adamw_torch_fused``).

The benchmark runs plain steps *inside* the stage's process, between its steps (``Interleaved``, used by
bench/timed_train.py and bench/timed_ppo.py), in the stage's dtype and in the other one: a stage step and the plain
steps of the same shape run seconds apart, so a load change on a shared CPU hits both sides of the share. The command
line above runs the plain step alone, both dtypes alternated, and writes seconds per step.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path
from typing import Any

KINDS = ("causal", "reward", "ppo")
DTYPES = ("fp32", "bf16")


def plain_step_positions(kind: str, rows: int, width: int) -> int:
    """Token positions one plain step processes: every row is ``width`` wide and fully real (no padding); the
    forward/backward covers all of them whatever the loss reads (the PPO kind's LM head sees fewer)."""
    if kind not in KINDS:
        raise ValueError(f"unknown plain-step kind {kind!r}")
    if rows < 1 or width < 1:
        raise ValueError("rows and width must be positive")
    if kind == "reward" and rows % 2:
        raise ValueError("a reward step needs an even number of rows (chosen and rejected of each pair)")
    return rows * width


class PlainStep:
    """One model + fused AdamW; ``step(rows, width, dtype)`` runs one training step and returns its seconds.

    ``spec``: ``model`` (folder), ``kind``, and optionally ``peft`` (none/lora), ``lora_rank``, ``lora_alpha``,
    ``lora_dropout``, ``base_dtype`` (fp32/bf16: the frozen base of a LoRA model), ``response`` (ppo: response
    tokens)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

        self.kind, self.response = spec["kind"], spec.get("response", 32)
        torch.manual_seed(0)
        dtype = torch.bfloat16 if spec.get("base_dtype") == "bf16" else torch.float32
        if self.kind == "reward":
            model = AutoModelForSequenceClassification.from_pretrained(spec["model"], num_labels=1, dtype=dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=dtype)
        if spec.get("peft", "none") == "lora":
            from peft import LoraConfig, get_peft_model

            config = LoraConfig(
                r=spec.get("lora_rank", 8),
                lora_alpha=spec.get("lora_alpha", 16),
                lora_dropout=spec.get("lora_dropout", 0.05),
                target_modules="all-linear",
                task_type="SEQ_CLS" if self.kind == "reward" else "CAUSAL_LM",
            )
            model = get_peft_model(model, config)
        for param in model.parameters():  # trained weights in float32 (a bf16 base keeps only its frozen part bf16)
            if param.requires_grad:
                param.data = param.data.float()
        self.head = torch.nn.Linear(model.config.hidden_size, 1) if self.kind == "ppo" else None
        model.train(self.kind != "ppo")
        self.model = model
        params = [p for p in model.parameters() if p.requires_grad]
        params += list(self.head.parameters()) if self.head is not None else []
        self.optimizer = torch.optim.AdamW(params, lr=1e-5, fused=True)
        self.generator = torch.Generator().manual_seed(0)
        self.vocab = model.config.vocab_size

    def _loss(self, ids):
        import torch

        if self.kind == "causal":
            return self.model(input_ids=ids, labels=ids, use_cache=False).loss
        if self.kind == "reward":
            rewards = self.model(input_ids=ids, use_cache=False).logits.squeeze(-1).float()
            half = ids.shape[0] // 2
            return -torch.nn.functional.logsigmoid(rewards[:half] - rewards[half:]).mean()
        out = self.model(input_ids=ids, use_cache=False, output_hidden_states=True, logits_to_keep=self.response + 1)
        values = self.head(out.hidden_states[-1].float()).squeeze(-1)
        logprobs = torch.log_softmax(out.logits[:, :-1].float(), -1)
        chosen = logprobs.gather(-1, ids[:, -self.response :, None]).squeeze(-1)
        return -chosen.mean() + 0.1 * values[:, -self.response :].pow(2).mean()

    def step(self, rows: int, width: int, dtype: str) -> float:
        import torch

        plain_step_positions(self.kind, rows, width)
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}")
        ids = torch.randint(0, self.vocab, (rows, width), generator=self.generator)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()
        start = time.perf_counter()
        with autocast:
            loss = self._loss(ids)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start


class Interleaved:
    """Plain steps run between a stage's own steps: ``after(rows, width, repeats)`` runs ``repeats`` plain steps of
    that shape in each of ``dtypes`` (the stage's first) and records them; the first call also runs one untimed
    warm-up step per dtype. A ``base_dtype: bf16`` spec (a LoRA stage that loads its frozen base in bf16 when it
    trains in bf16) applies to the bf16 steps; the fp32 steps get a float32 base, as the fp32 stage loads it.
    ``record()``: ``{dtype: [{"positions", "seconds"}, ...]}``."""

    def __init__(self, spec: dict[str, Any], dtypes: list[str]) -> None:
        models: dict[str, PlainStep] = {}
        self.plain = {}
        for dtype in dtypes:
            base = spec.get("base_dtype", "fp32") if dtype == "bf16" else "fp32"
            if base not in models:
                models[base] = PlainStep({**spec, "base_dtype": base})
            self.plain[dtype] = models[base]
        self.dtypes = dtypes
        self.steps: dict[str, list[dict]] = {d: [] for d in dtypes}
        self.warm = False

    def after(self, rows: int, width: int, repeats: int = 1) -> None:
        if not self.warm:
            for dtype in self.dtypes:
                self.plain[dtype].step(rows, width, dtype)
            self.warm = True
        for _ in range(repeats):
            for dtype in self.dtypes:
                seconds = self.plain[dtype].step(rows, width, dtype)
                self.steps[dtype].append({"positions": rows * width, "seconds": seconds})

    def record(self) -> dict[str, list[dict]]:
        return self.steps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("record")
    parser.add_argument("--model", required=True)
    parser.add_argument("--kind", choices=KINDS, required=True)
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--width", type=int, required=True)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per dtype (after one warm-up each)")
    parser.add_argument("--response", type=int, default=32, help="ppo: response tokens")
    parser.add_argument("--peft", choices=("none", "lora"), default="none")
    parser.add_argument("--lora_rank", type=int, default=8)
    parser.add_argument("--lora_alpha", type=float, default=16)
    parser.add_argument("--lora_dropout", type=float, default=0.05)
    parser.add_argument("--base_dtype", choices=DTYPES, default="fp32", help="lora: the frozen base's dtype in bf16")
    args = parser.parse_args(argv)
    spec = {k: v for k, v in vars(args).items() if k not in ("record", "rows", "width", "steps")}
    runner = Interleaved(spec, list(DTYPES))
    runner.after(args.rows, args.width, repeats=args.steps)
    Path(args.record).write_text(json.dumps({"spec": spec, "plain": runner.record()}), encoding="utf-8")


if __name__ == "__main__":
    main()
