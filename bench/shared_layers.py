"""PPO steps with the frozen bottom layers computed once per rollout (``--share_frozen_layers``) against full forwards.

    python -m bench.shared_layers [--rounds 2] [--steps 3] [--dims smollm2|tiny] [--lora_layers 18-29]

SmolLM2-135M's dimensions with random weights (``bench.common.SMOLLM2_135M``), the demo's PPO shape: a LoRA on
``--lora_layers``, 8 responses of 48 tokens per step (EOS ignored, so every step has the same shapes), minibatches
of 4, two PPO epochs, fp32. Two engines built alike, one sharing and one not, run ``--steps`` PPO steps each per
round, the order alternated between rounds. Prints each phase's seconds per step (the engine's own timers; the
first step of each run is a warm-up and left out) and the sharing engine's time as a ratio of the other's, and
the largest difference between the two runs' log-probs (the same samples: the results should agree to float32
rounding); saves ``out/bench/shared_layers.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

from bench.common import OUT, SMOLLM2_135M, TINY_LLAMA, machine, ratio_summary, save_json
from bench.generation import _Tokenizer

PHASES = ("generate", "policy_forward", "reference", "score", "update", "total")


class _LengthScorer:
    """A reward that needs no model: the number of distinct token ids in the response (scoring is not what the
    benchmark compares)."""

    reads_policy_ids = True

    def score_ids(self, ids: list[list[int]]):
        import torch

        return torch.tensor([float(len(set(row[-48:]))) for row in ids])


def engine(dims: dict, lora_layers: str, share: bool):
    import torch
    from accelerate import Accelerator
    from peft import get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlhf.ppo.config import PPOConfig
    from rlhf.ppo.engine import PPOEngine
    from rlhf.ppo.models import PolicyWithValue
    from rlhf.scripts.rl_training import PPOModelArguments

    cfg = PPOConfig(
        batch_size=8,
        mini_batch_size=4,
        gradient_accumulation_steps=1,
        ppo_epochs=2,
        response_length=48,
        ignore_eos=True,
        learning_rate=7e-4,
        share_frozen_layers=share,
    )
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=4096, max_position_embeddings=2048, pad_token_id=0, eos_token_id=1, **dims)
    lora = PPOModelArguments(model_name_or_path="bench", lora_layers=lora_layers).peft_config("CAUSAL_LM")
    policy = PolicyWithValue(get_peft_model(LlamaForCausalLM(config), lora))
    optimizer = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=cfg.learning_rate)
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=1)
    policy, optimizer = accelerator.prepare(policy, optimizer)
    return PPOEngine(cfg, accelerator, policy, optimizer, _Tokenizer(), _LengthScorer(), None, None, seed=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="PPO steps per run; the first is a warm-up")
    parser.add_argument("--prompt_tokens", type=int, default=40)
    parser.add_argument("--dims", choices=("smollm2", "tiny"), default="smollm2")
    parser.add_argument("--lora_layers", default="18-29")
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps: at least 2 (the first is a warm-up)")

    import torch

    dims = SMOLLM2_135M if args.dims == "smollm2" else TINY_LLAMA
    g = torch.Generator().manual_seed(0)
    batch = [
        {
            "system": "",
            "question": "",
            "prompt_ids": torch.randint(2, 4096, (args.prompt_tokens,), generator=g).tolist(),
        }
        for _ in range(8)
    ]
    seconds: dict[str, list[dict[str, float]]] = {"shared": [], "full": []}
    gap = 0.0
    depth = None
    for i in range(args.rounds):
        logprobs = {}
        for name in ("shared", "full") if i % 2 == 0 else ("full", "shared"):
            ppo = engine(dims, args.lora_layers, name == "shared")
            depth = ppo.prefix_depth if name == "shared" else depth
            torch.manual_seed(i)
            for step in range(args.steps):
                stats, rollout = ppo.step(batch)
                if step:
                    seconds[name].append({p: stats[f"time/ppo/{p}"] for p in PHASES})
            logprobs[name] = rollout.logprobs
        gap = max(gap, float((logprobs["shared"] - logprobs["full"]).abs().max()))
    per_step = {name: {p: statistics.median(r[p] for r in runs) for p in PHASES} for name, runs in seconds.items()}
    ratios = {
        p: ratio_summary([a[p] / b[p] for a, b in zip(seconds["shared"], seconds["full"], strict=True)])
        for p in PHASES
        if p != "generate"
    }
    result = {
        "machine": machine(),
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "settings": vars(args),
        "shared_layers": depth,
        "seconds_per_step": per_step,
        "ratio_shared_to_full": ratios,
        "max_abs_logprob_difference": gap,
    }
    save_json("shared_layers", result)
    print(f"layers computed once per rollout: {depth} (LoRA on {args.lora_layers})")
    print(f"{'phase':>15} {'shared s':>9} {'full s':>9}  shared/full (min-max)")
    for p in PHASES:
        r = ratios.get(p)
        ratio = f"{r['median']:.3f}x ({r['min']:.3f}-{r['max']:.3f})" if r else "(not affected)"
        print(f"{p:>15} {per_step['shared'][p]:9.2f} {per_step['full'][p]:9.2f}  {ratio}")
    print(f"largest log-prob difference between the two runs' last rollouts: {gap:.2e}")
    load = os.getloadavg()[0]
    print(f"threads {torch.get_num_threads()}, load average {load:.1f}; saved to {OUT / 'shared_layers.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
