"""Rollout generation with a LoRA policy against plain ``generate`` on the same model with the adapter merged.

    python -m bench.generation [--rounds 3] [--batch 8] [--new_tokens 32] [--dims smollm2|tiny] [--lora_layers 18-29]

SmolLM2-135M's dimensions with random weights (``bench.common.SMOLLM2_135M``), PPO's default LoRA (``--lora_layers``
as in the demo), the adapter's B matrices set non-zero as after some training. Three ways to sample the same prompts,
alternated within each round (KV cache on, EOS ignored so every response has the same length):

- ``lora``: the PEFT model as it is (the adapter's two small matmuls next to every adapted layer);
- ``folded``: PPO's sampling, ``rlhf.ppo.models.adapter_folded`` (W + s*B@A folded in for the call, restored after;
  the folding is inside the timing);
- ``merged``: a separate plain model with the adapter merged (``merge_and_unload``), the target.

Prints tokens/s of each (median, min–max over rounds) and the ratios to ``merged``; saves ``out/bench/generation.json``.
Target (issue 16): PPO's rollout generation >= 0.9x the merged model's tokens/s.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

from bench.common import OUT, SMOLLM2_135M, TINY_LLAMA, machine, ratio_summary, save_json


def build(dims: dict, lora_layers: str):
    import torch
    from peft import get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlhf.ppo.models import foldable_lora_layers
    from rlhf.scripts.rl_training import PPOModelArguments

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=4096, max_position_embeddings=2048, pad_token_id=0, eos_token_id=1, **dims)
    base = LlamaForCausalLM(config).eval()
    lora = PPOModelArguments(model_name_or_path="bench", lora_layers=lora_layers).peft_config("CAUSAL_LM")
    model = get_peft_model(base, lora).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)
    merged = copy.deepcopy(model).merge_and_unload().eval()
    return model, merged, foldable_lora_layers(model)


class _Tokenizer:
    """What ``rlhf.ppo.sampling.sample`` reads of a tokenizer."""

    pad_token_id, eos_token_id = 0, 1

    def decode(self, ids, skip_special_tokens=False) -> str:
        return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt_tokens", type=int, default=48)
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--dims", choices=("smollm2", "tiny"), default="smollm2")
    parser.add_argument("--lora_layers", default="18-29")
    args = parser.parse_args(argv)

    import torch

    from rlhf.ppo.models import adapter_folded
    from rlhf.ppo.sampling import sample

    dims = SMOLLM2_135M if args.dims == "smollm2" else TINY_LLAMA
    model, merged, layers = build(dims, args.lora_layers)
    if layers is None:
        print("the adapter cannot be folded", file=sys.stderr)
        return 1
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(2, 4096, (args.prompt_tokens,), generator=g).tolist() for _ in range(args.batch)]
    tokenizer = _Tokenizer()

    def seconds(lm, context, new_tokens: int) -> float:
        start = time.perf_counter()
        sample(lm, tokenizer, prompts, new_tokens, 1.0, ignore_eos=True, context=context)
        return time.perf_counter() - start

    def run(lm, context_fn=None) -> dict[str, float]:
        """Tokens/s of the whole call, and by phase: the prefill (a call that samples one token) and the decode
        (the other new tokens: the whole call's time less the prefill's)."""
        prefill = seconds(lm, context_fn() if context_fn else None, 1)
        total = seconds(lm, context_fn() if context_fn else None, args.new_tokens)
        return {
            "total": args.batch * args.new_tokens / total,
            "prefill": args.batch * args.prompt_tokens / prefill,
            "decode": args.batch * (args.new_tokens - 1) / max(total - prefill, 1e-9),
        }

    ways = {"lora": lambda: run(model), "folded": lambda: run(model, lambda: adapter_folded(model, layers))}
    ways["merged"] = lambda: run(merged)
    run(merged)  # warm-up: first-call allocations and kernels
    speeds: dict[str, list[dict[str, float]]] = {name: [] for name in ways}
    for i in range(args.rounds):
        for name in list(ways) if i % 2 == 0 else list(ways)[::-1]:  # alternate the order each round
            speeds[name].append(ways[name]())
    ratios = {
        name: ratio_summary([a["total"] / b["total"] for a, b in zip(speeds[name], speeds["merged"], strict=True)])
        for name in ("lora", "folded")
    }

    def summary(values: list[float]) -> dict[str, float]:
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    result = {
        "machine": machine(),
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "settings": vars(args),
        "tokens_per_s": {k: summary([r["total"] for r in v]) for k, v in speeds.items()},
        "phases": {
            k: {phase: summary([r[phase] for r in v]) for phase in ("prefill", "decode")} for k, v in speeds.items()
        },
        "ratio_to_merged": ratios,
    }
    save_json("generation", result)
    for name, s in result["tokens_per_s"].items():
        ph = result["phases"][name]
        print(
            f"{name:>7}: {s['median']:8.1f} tokens/s (min {s['min']:.1f}, max {s['max']:.1f}); prefill "
            f"{ph['prefill']['median']:.0f} prompt tokens/s, decode {ph['decode']['median']:.1f} tokens/s"
        )
    for name, r in ratios.items():
        print(f"{name:>7} / merged: {r['median']:.3f}x ({r['min']:.3f}-{r['max']:.3f}, n={r['n']})")
    load = os.getloadavg()[0]
    print(f"threads {torch.get_num_threads()}, load average {load:.1f}; saved to {OUT / 'generation.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
