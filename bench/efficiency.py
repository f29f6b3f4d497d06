"""Training efficiency of sft.py, reward_modeling.py and the PPO update on a ~100M model (SmolLM2-135M's shape).

    python -m bench.efficiency [--steps 8] [--rounds 1] [--only sft-fp32-packed,sft-bf16-packed]

Each stage row is the real script (bench/timed_train.py and bench/timed_ppo.py only count and timestamp its work),
in fp32 and in bf16 (``--bf16 True``: bf16 autocast over float32 master weights; for rl_training.py accelerate's
``ACCELERATE_MIXED_PRECISION=bf16``, the same autocast), measured the same way in both: steady-state tokens/s over
the steps after the first. The headline is each row's share of its *plain step* (bench/plain_step.py): a bare
forward + backward + AdamW of the same model, precision, rows and row width, no Trainer and no engine. A plain step
is what the hardware gives that model; the share is what the stage keeps of it, on any host. The plain steps run
inside the stage's process, between its steps and with each step's shape, in both dtypes: a load change on the
shared CPU hits both sides of a share, and the plain bf16/fp32 ratio is measured under the same conditions too.

A stage's bf16 speed over its fp32 speed is the ratio of its two runs' tokens/s, and, less exposed to load changes
between the two runs, share(bf16) / share(fp32) x the plain step's bf16/fp32 ratio (all three measured interleaved).
``sampling`` (bench/sampling.py): generation + reward scoring as evaluate.py runs them, bf16 autocast against fp32.
These are the inputs of the per-stage precision defaults.

Also kept, because they are cheap: achieved FLOP/s against this CPU's best matmul rate in the dtype (model-FLOPs
count of ``bench.common.training_flops_per_token``), the padding fraction, and the cost of TRL's default activation
checkpointing. Writes out/bench/efficiency.json.
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
    measured_stamp,
    precision_env,
    ratio_summary,
    run_measured,
    save_json,
    tiny_ppo_models,
    training_flops_per_token,
)
from bench.timed_ppo import ppo_update_positions

# (M, K, N) of a (tokens x hidden) @ (hidden x MLP) product like the model's own, its mirror, and a square one, each
# with the right operand as stored ("kn") and as nn.Linear stores its weight ("nk", used transposed); the best is
# taken as the CPU's matmul rate for the dtype (emulated bf16 differs a lot between the two layouts).
MATMUL_SHAPES = ((1024, 576, 1536), (1024, 1536, 576), (1024, 1024, 1024))

# LoRA settings of each script's defaults, which the LoRA rows use and their plain steps copy. The reward model's
# dropout is 0.1 on paper, but TRL's RewardTrainer zeroes every dropout (RewardConfig.disable_dropout, on by default),
# so it trains without one, and so does its plain step.
LORA = {"sft": {"rank": 8, "alpha": 16, "dropout": 0.05}, "rm": {"rank": 8, "alpha": 32, "dropout": 0.0}}

# The PPO rows: a rollout of 8 prompts, 32 sampled tokens each (EOS ignored: fixed widths), one epoch of 4
# minibatches of 2, one optimizer step each; 4 PPO steps of which the first is warm-up.
PPO = {"batch_size": 8, "mini_batch_size": 2, "ppo_epochs": 1, "response_length": 32, "steps": 4}


def matmul_flops(dtype_name: str, seconds: float = 0.5) -> dict:
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


# ---------------------------------------------------------------------------------------------- pure accounting


def steady_rate(record: dict) -> dict:
    """Steady-state throughput of a timed_train record: the steps after the first (warm-up). A step's time runs from
    the moment the stage resumed after the previous step (and after the plain steps run in between, if any) to its
    end. Needs at least two steps: a single step would time the warm-up."""
    ends, steps = record["step_ends"], record["steps"]
    resumes = record.get("step_resumes") or ends
    if len(ends) < 2 or len(steps) != len(ends) or len(resumes) != len(ends):
        raise ValueError(f"a steady rate needs >= 2 timed steps, got {len(ends)} ends for {len(steps)} steps")
    measured = steps[1:]
    step_seconds = [end - resumed for end, resumed in zip(ends[1:], resumes[:-1], strict=True)]
    seconds = sum(step_seconds)
    positions = sum(s["positions"] for s in measured)
    pads = sum(s["pads"] for s in measured)
    return {
        "steps_measured": len(measured),
        "step_seconds": step_seconds,
        "step_positions": [s["positions"] for s in measured],
        "seconds": seconds,
        "positions": positions,
        "pad_fraction": pads / positions,
        "mean_width": statistics.fmean(s["width"] for s in measured),
        "tokens_per_s": positions / seconds,
    }


def ppo_update_rate(metrics: list[dict], updates: list[dict]) -> dict:
    """Steady-state tokens/s of the PPO update: positions trained (``ppo_update_positions`` of each recorded
    update) over the engine's own ``time/ppo/update`` seconds, the first PPO step (warm-up) left out."""
    if len(metrics) != len(updates) or len(metrics) < 2:
        raise ValueError(f"need >= 2 PPO steps with one update each, got {len(metrics)} steps, {len(updates)} updates")
    if any(row.get("ppo/early_stopped", 0.0) for row in metrics):
        raise ValueError("an update stopped early: its positions are not rows x width x epochs")
    step_positions = [ppo_update_positions(u["rows"], u["width"], u["epochs"]) for u in updates[1:]]
    step_seconds = [row["time/ppo/update"] for row in metrics[1:]]
    positions, seconds = sum(step_positions), sum(step_seconds)
    return {
        "steps_measured": len(updates) - 1,
        "step_seconds": step_seconds,
        "step_positions": step_positions,
        "seconds": seconds,
        "positions": positions,
        "pad_fraction": sum(u["pads"] * u["epochs"] for u in updates[1:]) / positions,
        "mean_width": statistics.fmean(u["width"] for u in updates[1:]),
        "tokens_per_s": positions / seconds,
        "step_s": statistics.median(row["time/ppo/total"] for row in metrics[1:]),
    }


def plain_rates(plain: dict[str, list[dict]]) -> dict[str, float]:
    """Tokens/s of the interleaved plain steps, per dtype: all their positions over all their seconds."""
    return {dtype: sum(s["positions"] for s in got) / sum(s["seconds"] for s in got) for dtype, got in plain.items()}


def step_shares(stage_seconds: list[float], stage_positions: list[int], plain: list[dict]) -> list[float]:
    """Per measured stage step, its tokens/s over that of the plain steps run right after it (a stage step and its
    plain steps share their shape). ``plain``: the same number of plain steps after every stage step, the warm-up
    step included (it has no measured time: its plain steps are dropped)."""
    groups = len(stage_seconds) + 1
    if not stage_seconds or len(plain) % groups:
        raise ValueError(f"{len(plain)} plain steps do not pair with {len(stage_seconds)} measured stage steps")
    per = len(plain) // groups
    out = []
    for i, (seconds, positions) in enumerate(zip(stage_seconds, stage_positions, strict=True)):
        group = plain[(i + 1) * per : (i + 2) * per]
        plain_rate = sum(p["positions"] for p in group) / sum(p["seconds"] for p in group)
        out.append(positions / seconds / plain_rate)
    return out


def bf16_speedup_estimate(fp32: dict, bf16: dict) -> float:
    """A stage's bf16 tokens/s over its fp32 tokens/s from interleaved measurements only: the share of the plain
    step in each dtype times the plain step's own bf16/fp32 ratio (the geometric mean of the two runs' ratios, each
    measured within one process). Equal to the plain ratio of the raw tokens/s when nothing changed between runs."""
    plain_ratio = (fp32["plain_bf16_over_fp32"] * bf16["plain_bf16_over_fp32"]) ** 0.5
    return bf16["share"] / fp32["share"] * plain_ratio


# ---------------------------------------------------------------------------------------------- runs


def plain_spec(case: dict, model: Path) -> dict:
    """What the interleaved plain steps run: the stage's model folder and kind, its LoRA settings, both dtypes
    (the stage's first)."""
    spec = {"model": str(model), "kind": {"sft": "causal", "rm": "reward", "ppo": "ppo"}[case["stage"]]}
    spec["dtypes"] = [case["dtype"], "bf16" if case["dtype"] == "fp32" else "fp32"]
    spec["response"] = PPO["response_length"]
    if case["peft"] == "lora":
        lora = LORA[case["stage"]]
        spec.update(peft="lora", lora_rank=lora["rank"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"])
        # The LoRA reward model's bf16 run loads its frozen base in bf16 (the script's default there): so do the
        # bf16 plain steps of both rows of that family, and the fp32 ones keep a float32 base.
        spec["base_dtype"] = "bf16" if case["stage"] == "rm" else "fp32"
    return spec


def with_plain(rate: dict, record: dict, dtype: str) -> dict:
    plain = plain_rates(record["plain"])
    other = "bf16" if dtype == "fp32" else "fp32"
    return {
        **rate,
        "plain_tokens_per_s": plain[dtype],
        "plain_other_tokens_per_s": plain[other],
        "plain_bf16_over_fp32": plain["bf16"] / plain["fp32"],
        "share": rate["tokens_per_s"] / plain[dtype],
        "step_shares": step_shares(rate["step_seconds"], rate["step_positions"], record["plain"][dtype]),
        "plain_steps": {d: len(v) for d, v in record["plain"].items()},
    }


def run_stage(case: dict, model: Path, args: argparse.Namespace, tag: str) -> dict:
    out = OUT / "efficiency" / f"{case['name']}-{tag}"
    shutil.rmtree(out, ignore_errors=True)
    record = out.with_suffix(".steps.json")
    plain = ["--plain", json.dumps(plain_spec(case, model))] if case.get("plain", True) else []
    if case["stage"] == "ppo":
        return run_ppo(case, model, out, record, plain)
    common = [
        f"--output_dir={out}",
        "--dataset_name=data/orca_sample/train.jsonl",
        "--validation_split_percentage=0",
        f"--max_steps={args.steps}",
        "--save_strategy=no",
        "--report_to=none",
        "--logging_steps=1",
        f"--peft={case['peft']}",
        f"--bf16={case['dtype'] == 'bf16'}",
        "--seed=0",
    ]
    if case["stage"] == "sft":
        argv = [
            "sft.py",
            f"--model_name_or_path={model}",
            f"--max_length={args.seq_len}",
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
            f"--max_length={args.seq_len}",
            f"--per_device_train_batch_size={case['batch']}",
            f"--max_train_samples={case['batch'] * (args.steps + 1)}",  # it scores (at most 256) train pairs at the end
            f"--torch_dtype={case['torch_dtype']}",
        ]
    argv = [PYTHON, "bench/timed_train.py", str(record), *plain, *argv, *common]
    res = check(run_measured(argv, log=out.with_suffix(".log")), case["name"])
    got = json.loads(record.read_text())
    rate = {**steady_rate(got), "wall_s": res.wall_s}
    return with_plain(rate, got, case["dtype"]) if plain else rate


def run_ppo(case: dict, model: Path, out: Path, record: Path, plain: list[str]) -> dict:
    _, reward = tiny_ppo_models(OUT / "models")  # scoring is not what is measured: the tiny reward model does it
    argv = [
        PYTHON,
        "bench/timed_ppo.py",
        str(record),
        *plain,
        "rl_training.py",
        f"--model_name={model}",
        f"--reward_model_name={reward}",
        "--dataset_name=data/orca_sample/train.jsonl",
        f"--batch_size={PPO['batch_size']}",
        f"--mini_batch_size={PPO['mini_batch_size']}",
        "--gradient_accumulation_steps=1",
        f"--ppo_epochs={PPO['ppo_epochs']}",
        f"--steps={PPO['steps'] * PPO['batch_size']}",
        f"--response_length={PPO['response_length']}",
        "--ignore_eos=true",
        f"--peft={case['peft']}",
        f"--output_dir={out}",
        "--log_samples_every=0",
        "--seed=0",
    ]
    env = precision_env(case["dtype"])
    res = check(run_measured(argv, env=env, log=out.with_suffix(".log")), case["name"])
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    got = json.loads(record.read_text())
    rate = {**ppo_update_rate(metrics, got["updates"]), "wall_s": res.wall_s}
    return with_plain(rate, got, case["dtype"]) if plain else rate


def run_family(family: dict, model: Path, args: argparse.Namespace) -> list[dict]:
    """The family's stage rows (fp32 then bf16; reversed every other round), each with its interleaved plain steps."""
    cases = family["cases"]
    results = {c["name"]: {**c, "rounds": []} for c in cases}
    for r in range(family["rounds"]):
        for case in cases if r % 2 == 0 else cases[::-1]:
            print(f"[efficiency] round {r + 1}/{family['rounds']}: {case['name']}", flush=True)
            got = run_stage(case, model, args, f"r{r}")
            got["load"] = os.getloadavg()[0]
            results[case["name"]]["rounds"].append(got)
            if "share" in got:
                rates = f"{got['tokens_per_s']:.1f} tok/s, plain step {got['plain_tokens_per_s']:.1f}"
                print(f"  {case['name']}: {rates}: {got['share']:.0%}", flush=True)
    return list(results.values())


def summarize(row: dict, config: dict, peaks: dict, plains: dict) -> dict:
    """Medians over rounds, the plain-step share (own plain steps, or ``plain_of``'s), FLOP/s against the matmul."""
    rounds = row["rounds"]
    stage_rates = [r["tokens_per_s"] for r in rounds]
    out = {
        **row,
        "tokens_per_s": statistics.median(stage_rates),
        "mean_width": statistics.fmean(r["mean_width"] for r in rounds),
        "pad_fraction": statistics.fmean(r["pad_fraction"] for r in rounds),
    }
    if "share" in rounds[0]:
        out["plain_tokens_per_s"] = statistics.median(r["plain_tokens_per_s"] for r in rounds)
        out["share"] = ratio_summary([r["share"] for r in rounds])
        out["step_share"] = ratio_summary([x for r in rounds for x in r["step_shares"]])
    elif row.get("plain_of") in plains:  # no plain steps of its own: the same shape's, from another row's runs
        out["plain_tokens_per_s"] = plains[row["plain_of"]]
        out["share"] = ratio_summary([rate / plains[row["plain_of"]] for rate in stage_rates])
    if row["stage"] != "ppo":  # the PPO head runs on response positions only: no simple model-FLOPs count
        n = matmul_params(config, reward=row["stage"] == "rm")
        count = lora_training_flops_per_token if row["peft"] == "lora" else training_flops_per_token
        per_token = count(n, config["num_hidden_layers"], config["hidden_size"], int(out["mean_width"]))
        out.update(
            matmul_params=n,
            flops_per_token=per_token,
            achieved_flops=out["tokens_per_s"] * per_token,
            fraction_of_matmul=out["tokens_per_s"] * per_token / peaks[row["dtype"]]["flops"],
        )
    return out


def bf16_ratios(families: list[dict], runs: dict) -> dict:
    """Per family, bf16 over fp32 tokens/s: the raw ratio of the two runs, and the interleaved estimate, per round."""
    out = {}
    for family in families:
        if len(family["cases"]) != 2:
            continue
        fp32, bf16 = (runs[c["name"]]["rounds"] for c in family["cases"])
        pairs = list(zip(fp32, bf16, strict=True))
        out[family["name"]] = {
            "raw": ratio_summary([b["tokens_per_s"] / a["tokens_per_s"] for a, b in pairs]),
            "interleaved": ratio_summary([bf16_speedup_estimate(a, b) for a, b in pairs]),
        }
        if family["cases"][0]["stage"] == "ppo":  # the whole PPO step as well (rollout + update), raw
            out["ppo step"] = {"raw": ratio_summary([a["step_s"] / b["step_s"] for a, b in pairs])}
    return out


def families() -> list[dict]:
    def pair(name: str, **case) -> dict:
        stage = case["stage"]
        cases = []
        for dtype in ("fp32", "bf16"):
            c = {**case, "dtype": dtype}
            if stage == "rm":  # full fine-tune: float32 weights either way; LoRA: the default bf16 base under bf16
                c["torch_dtype"] = "bfloat16" if dtype == "bf16" and case["peft"] == "lora" else "float32"
            suffix = "-lora" if case["peft"] == "lora" else "-packed" if stage == "sft" else ""
            c["name"] = f"{stage}-{dtype}{suffix}"
            cases.append(c)
        return {"name": name, "rounds": 1, "cases": cases}

    return [
        pair("sft", stage="sft", peft="none", packing=True, batch=1),
        pair("rm", stage="rm", peft="none", packing=False, batch=2),
        pair("ppo update", stage="ppo", peft="none", packing=False, batch=PPO["mini_batch_size"]),
        pair("sft lora", stage="sft", peft="lora", packing=True, batch=1),
        pair("rm lora", stage="rm", peft="lora", packing=False, batch=2),
    ]


SINGLES = [
    # TRL's default activation checkpointing, against the plain steps of the packed fp32 row (the same shapes).
    {
        "name": "sft-fp32-packed-ckpt",
        "stage": "sft",
        "dtype": "fp32",
        "peft": "none",
        "packing": True,
        "batch": 1,
        "checkpointing": True,
        "plain": False,
        "plain_of": "sft-fp32-packed",
    },
    # Padding waste without packing (no plain steps: it shows the padding fraction).
    {
        "name": "sft-fp32-padded",
        "stage": "sft",
        "dtype": "fp32",
        "peft": "none",
        "packing": False,
        "batch": 2,
        "plain": False,
    },
]


def sampling_speed(model: Path) -> dict:
    """bench/sampling.py in its own process: evaluate.py's generation and scoring, bf16 against fp32."""
    out = OUT / "efficiency" / "sampling.json"
    argv = [PYTHON, "-m", "bench.sampling", str(out), f"--model={model}"]
    check(run_measured(argv, log=out.with_suffix(".log")), "sampling")
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per SFT/RM run (the first: warm-up)")
    parser.add_argument("--rounds", type=int, default=1, help="runs of every stage row (fp32/bf16 order alternating)")
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--only", default="", help="comma-separated row names (default: all)")
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps: at least 2 (the first step is warm-up)")

    import torch

    model = build_model(OUT / "models" / "smollm2-135m-arch", SMOLLM2_135M, "causal", seed=0)
    config = json.loads((model / "config.json").read_text())
    only = set(filter(None, args.only.split(",")))
    fams = families()
    for family in fams:
        family["cases"] = [c for c in family["cases"] if not only or c["name"] in only]
        family["rounds"] = args.rounds
    peaks = {dt: matmul_flops(dt) for dt in ("fp32", "bf16")}
    loads = [os.getloadavg()]
    raw: list[dict] = []
    for family in fams:
        if family["cases"]:
            raw += run_family(family, model, args)
            loads.append(os.getloadavg())
    singles = [c for c in SINGLES if not only or c["name"] in only]
    raw += run_family({"name": "singles", "rounds": 1, "cases": singles}, model, args) if singles else []
    with_plain_steps = [r for r in raw if "share" in r["rounds"][0]]
    plains = {r["name"]: statistics.median(x["plain_tokens_per_s"] for x in r["rounds"]) for r in with_plain_steps}
    runs = {r["name"]: summarize(r, config, peaks, plains) for r in raw}
    sampling = sampling_speed(model) if not only else None
    loads.append(os.getloadavg())
    save_json(
        "efficiency",
        {
            "model": {"dims": SMOLLM2_135M, "vocab_size": config["vocab_size"], "seq_len": args.seq_len},
            "matmul": peaks,
            "threads": os.environ.get("OMP_NUM_THREADS", str(torch.get_num_threads())),
            "steps": args.steps,
            "rounds": args.rounds,
            "ppo": PPO,
            "load_average": loads,
            "runs": list(runs.values()),
            "bf16_over_fp32": bf16_ratios(fams, runs),
            "sampling": sampling,
            "measured": measured_stamp(),
        },
    )


if __name__ == "__main__":
    main()
