"""Training efficiency of sft.py and reward_modeling.py on a ~100M model (SmolLM2-135M's transformer dimensions).

    python -m bench.efficiency [--steps 2] [--bf16_steps 1]

Each run is the real script (bench/timed_train.py only counts and timestamps its steps) for a few optimizer steps at
sequence length ~256, fp32 and bf16 (bf16 SFT rows 128 tokens wide, each bf16 run timed over one whole step: it is
emulated here and several times slower). Steady-state tokens/s (the first step is warm-up) becomes achieved FLOP/s with
the model-FLOPs count of ``bench.common.training_flops_per_token`` (6 N + attention; 4 N + attention with LoRA, where
no weight gradients are computed; activation recomputation is not counted), divided by this CPU's matmul FLOP/s in
the same dtype, measured right before each run. Padding waste is the fraction of processed positions that are padding.
Writes out/bench/efficiency.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path

from bench.common import (
    OUT,
    PYTHON,
    SMOLLM2_135M,
    build_model,
    check,
    lora_training_flops_per_token,
    run_measured,
    save_json,
    training_flops_per_token,
)

# (M, K, N) of a (tokens x hidden) @ (hidden x MLP) product like the model's own, its mirror, and a square one, each
# with the right operand as stored ("kn") and as nn.Linear stores its weight ("nk", used transposed); the best is
# taken as the CPU's matmul rate for the dtype (emulated bf16 differs a lot between the two layouts).
MATMUL_SHAPES = ((1024, 576, 1536), (1024, 1536, 576), (1024, 1024, 1024))


def matmul_flops(dtype_name: str, seconds: float = 1.0) -> dict:
    """Best FLOP/s of a large torch.matmul in ``dtype`` over a few shapes and layouts, each timed for ``seconds``."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    best, per_shape = 0.0, {}
    for m, k, n in MATMUL_SHAPES:
        a = torch.randn(m, k).to(dtype)
        for layout, b in (("kn", torch.randn(k, n).to(dtype)), ("nk", torch.randn(n, k).to(dtype).t())):
            a @ b  # warm-up
            count, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                a @ b
                count += 1
            rate = 2.0 * m * k * n * count / (time.perf_counter() - start)
            per_shape[f"{m}x{k}x{n} {layout}"] = rate
            best = max(best, rate)
    return {"flops": best, "per_shape": per_shape, "threads": torch.get_num_threads()}


def matmul_params(config: dict, reward: bool) -> int:
    """Parameters that take part in matmuls: attention and MLP weights of every block, plus the output head (the
    LM head over the vocabulary, or the reward model's 1-unit score head); embedding lookups are not matmuls."""
    d, inter, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    head_dim = config.get("head_dim") or d // config["num_attention_heads"]
    q_out, kv_out = config["num_attention_heads"] * head_dim, config["num_key_value_heads"] * head_dim
    block = d * q_out + 2 * d * kv_out + q_out * d + 3 * d * inter
    return layers * block + d * (1 if reward else config["vocab_size"])


def run_case(case: dict, model: Path, args: argparse.Namespace) -> dict:
    out = OUT / "efficiency" / case["name"]
    shutil.rmtree(out, ignore_errors=True)
    record = out.with_suffix(".steps.json")
    steps = args.bf16_steps if case["dtype"] == "bf16" else args.steps
    seq_len = case.get("seq_len", args.seq_len)
    common = [
        f"--output_dir={out}",
        "--dataset_name=data/orca_sample/train.jsonl",
        "--validation_split_percentage=0",
        f"--max_steps={steps}",
        "--save_strategy=no",
        "--report_to=none",
        "--logging_steps=1",
        f"--peft={case['peft']}",
        f"--bf16={case['dtype'] == 'bf16'}",
        "--seed=0",
    ]
    if case["script"] == "sft.py":
        argv = [
            "sft.py",
            f"--model_name_or_path={model}",
            f"--max_length={seq_len}",
            f"--per_device_train_batch_size={case['batch']}",
            "--max_train_samples=256",
            *(["--dataset_concatenation"] if case["packing"] else []),
            # TRL's SFTConfig turns activation checkpointing on; it recomputes the forward (6 N becomes 8 N of work)
            # to save memory a 100M model does not need, so the benchmark measures sft.py with it off.
            f"--gradient_checkpointing={case.get('checkpointing', False)}",
        ]
    else:
        argv = [
            "reward_modeling.py",
            f"--model_name_or_path={model}",
            f"--max_length={seq_len}",
            f"--per_device_train_batch_size={case['batch']}",
            f"--max_train_samples={case['batch'] * (steps + 1)}",  # it scores (at most 256) train pairs at the end
            f"--torch_dtype={'bfloat16' if case['dtype'] == 'bf16' else 'float32'}",
        ]
    res = check(
        run_measured([PYTHON, "bench/timed_train.py", str(record), *argv, *common], log=out.with_suffix(".log")),
        case["name"],
    )
    rec = json.loads(record.read_text())
    if len(rec["step_ends"]) > 1:  # steady state: the steps after the first
        measured, seconds = rec["steps"][1:], rec["step_ends"][-1] - rec["step_ends"][0]
    else:  # one (long, bf16) step: its own duration; the warm-up is a small part of it
        measured, seconds = rec["steps"], rec["step_ends"][0] - rec["step_starts"][0]
    positions = sum(s["positions"] for s in measured)
    pads = sum(s["pads"] for s in measured)
    return {
        **case,
        "steps_measured": len(measured),
        "seconds": seconds,
        "positions": positions,
        "pad_fraction": pads / positions,
        "mean_width": statistics.fmean(s["width"] for s in measured),
        "tokens_per_s": positions / seconds,
        "real_tokens_per_s": (positions - pads) / seconds,
        "wall_s": res.wall_s,
        "all_steps": rec["steps"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps of an fp32 run (the first is warm-up)")
    parser.add_argument(
        "--bf16_steps", type=int, default=1, help="bf16 runs: emulated bf16 is slow, so one step is timed whole"
    )
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--only", default="", help="comma-separated case names (default: all)")
    args = parser.parse_args(argv)

    import torch

    model = build_model(OUT / "models" / "smollm2-135m-arch", SMOLLM2_135M, "causal", seed=0)
    config = json.loads((model / "config.json").read_text())
    sft, rm = "sft.py", "reward_modeling.py"
    cases = [
        {"name": "sft-fp32-packed", "script": sft, "dtype": "fp32", "peft": "none", "packing": True, "batch": 1},
        {
            "name": "sft-fp32-packed-ckpt",
            "script": sft,
            "dtype": "fp32",
            "peft": "none",
            "packing": True,
            "batch": 1,
            "checkpointing": True,
        },
        {"name": "sft-fp32-padded", "script": sft, "dtype": "fp32", "peft": "none", "packing": False, "batch": 2},
        {"name": "sft-fp32-lora", "script": sft, "dtype": "fp32", "peft": "lora", "packing": True, "batch": 1},
        {
            "name": "sft-bf16-packed",
            "script": sft,
            "dtype": "bf16",
            "peft": "none",
            "packing": True,
            "batch": 1,
            "seq_len": 128,
        },
        {"name": "rm-fp32", "script": rm, "dtype": "fp32", "peft": "none", "packing": False, "batch": 2},
        {"name": "rm-bf16", "script": rm, "dtype": "bf16", "peft": "none", "packing": False, "batch": 1},
    ]
    if args.only:
        cases = [c for c in cases if c["name"] in args.only.split(",")]
    peaks = {dt: matmul_flops(dt) for dt in ("fp32", "bf16")}
    results = []
    for case in cases:
        print(f"[efficiency] {case['name']}", flush=True)
        # The shared CPU's speed drifts: each run is compared with a matmul measured right before it.
        case["matmul_flops"] = matmul_flops(case["dtype"])["flops"]
        got = run_case(case, model, args)
        reward = case["script"] != "sft.py"
        n = matmul_params(config, reward)
        count = lora_training_flops_per_token if case["peft"] == "lora" else training_flops_per_token
        per_token = count(n, config["num_hidden_layers"], config["hidden_size"], int(got["mean_width"]))
        got.update(
            matmul_params=n,
            flops_per_token=per_token,
            achieved_flops=got["tokens_per_s"] * per_token,
            fraction_of_matmul=got["tokens_per_s"] * per_token / case["matmul_flops"],
        )
        results.append(got)
        share = f"{got['fraction_of_matmul']:.1%} of {case['dtype']} matmul"
        print(f"  {got['tokens_per_s']:.1f} tok/s, {share}", flush=True)
    save_json(
        "efficiency",
        {
            "model": {"dims": SMOLLM2_135M, "vocab_size": config["vocab_size"], "seq_len": args.seq_len},
            "matmul": peaks,
            "threads": os.environ.get("OMP_NUM_THREADS", str(torch.get_num_threads())),
            "runs": results,
        },
    )


if __name__ == "__main__":
    main()
