"""What evaluate.py (and PPO's rollout) spends its time on, in bf16 autocast and in fp32: sampling and scoring.

    python -m bench.sampling RECORD.json --model M [--rows 8] [--prompt 32] [--new_tokens 32] [--rounds 3]

One process, one model with float32 weights; each round samples ``--new_tokens`` tokens for ``--rows`` prompts
(temperature 0.7, top_k 0, top_p 1, EOS off so every round does the same work) and scores the results with a
sequence classifier of the same shape (one no-grad forward), once in fp32 and once under bf16 autocast, the order
alternating by round. Writes seconds per round and the fp32/bf16 time ratios (> 1: bf16 is faster).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

from bench.common import ratio_summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("record")
    parser.add_argument("--model", required=True)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, GenerationConfig

    lm = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    scorer = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=1, dtype=torch.float32).eval()
    generator = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, lm.config.vocab_size, (args.rows, args.prompt), generator=generator)
    contexts = {
        "fp32": contextlib.nullcontext,
        "bf16": lambda: torch.autocast("cpu", dtype=torch.bfloat16),
    }

    @torch.no_grad()
    def one(dtype: str, new_tokens: int) -> tuple[float, float]:
        config = GenerationConfig(
            do_sample=True,
            top_k=0,
            top_p=1.0,
            temperature=0.7,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            eos_token_id=None,
            pad_token_id=lm.config.pad_token_id,
        )
        with contexts[dtype]():
            start = time.perf_counter()
            out = lm.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), generation_config=config)
            middle = time.perf_counter()
            scorer(input_ids=out).logits.float()
            return middle - start, time.perf_counter() - middle

    for dtype in contexts:  # warm-up: first calls build kernels and caches
        one(dtype, 2)
    seconds: dict[str, dict[str, list[float]]] = {"generate": {}, "score": {}}
    for r in range(args.rounds):
        for dtype in ("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32"):
            generate, score = one(dtype, args.new_tokens)
            seconds["generate"].setdefault(dtype, []).append(generate)
            seconds["score"].setdefault(dtype, []).append(score)
    ratios = {
        part: ratio_summary([a / b for a, b in zip(s["fp32"], s["bf16"], strict=True)]) for part, s in seconds.items()
    }
    totals = {
        dt: [g + s for g, s in zip(seconds["generate"][dt], seconds["score"][dt], strict=True)] for dt in contexts
    }
    ratios["total"] = ratio_summary([a / b for a, b in zip(totals["fp32"], totals["bf16"], strict=True)])
    record = {"config": vars(args), "seconds": seconds, "fp32_over_bf16_time": ratios}
    Path(args.record).write_text(json.dumps(record, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
