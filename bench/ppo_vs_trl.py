"""PPO against TRL 1.12's PPOTrainer: same Llama, prompts, batch, fixed response length, epochs, minibatches.

    python -m bench.ppo_vs_trl [--rounds 3] [--steps 3] [--batch_size 8] [--mini_batch_size 2]
                               [--dims tiny|smollm2] [--precisions fp32,bf16]

``--dims tiny`` (default) is a 4-layer, hidden-256 Llama; ``--dims smollm2`` SmolLM2-135M's transformer with random
weights (policy, reference, reward and TRL's value model all that size), written to out/bench/ppo_vs_trl_smollm2.json.
``--precisions`` adds bf16 mixed precision (autocast over fp32 weights) on both sides: ours through accelerate's
``ACCELERATE_MIXED_PRECISION``, TRL through its ``bf16=True``.

Creates ``.venv-trl112`` on first use (torch CPU, trl==1.12.0, transformers 5.x, peft, requests; never a project
dependency). Each round runs both stacks once per variant (full fine-tune, LoRA), alternating which goes first, so
a load change on the shared CPU hits both. Episodes/s is the steady state (the first PPO step, with its one-off
warm-up, is left out); peak RSS is each process's own maximum resident set (wait4). Writes out/bench/ppo_vs_trl.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench.common import (
    OUT,
    PYTHON,
    ROOT,
    check,
    measured_stamp,
    ppo_phases,
    precision_env,
    ratio_summary,
    run_measured,
    save_json,
    smollm2_ppo_models,
    tiny_ppo_models,
)

TRL_VENV = ROOT / ".venv-trl112"
TRL_PY = TRL_VENV / "bin" / "python"
TRL_PACKAGES = ["trl==1.12.0", "transformers>=5,<6", "peft", "requests"]


def ensure_trl_venv() -> str:
    """The peer's own environment; installs once, then checks it co-installs (pip check) and imports."""
    marker = TRL_VENV / ".installed"
    if not marker.is_file():
        torch_spec = os.environ.get("TORCH_SPEC", "torch==2.13.0")
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(TRL_VENV)], check=True)
        pip = [str(TRL_PY), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, torch_spec], check=True)  # CPU wheel first, so trl does not pull a CUDA build
        subprocess.run([*pip, *TRL_PACKAGES], check=True)
        subprocess.run([str(TRL_PY), "-m", "pip", "check"], check=True)
        marker.write_text("ok\n")
    probe = (
        "import torch, transformers, trl; from trl.experimental.ppo import PPOTrainer; "
        "assert transformers.__version__.startswith('5.'), transformers.__version__; "
        "print(f'trl {trl.__version__}, transformers {transformers.__version__}, torch {torch.__version__}')"
    )
    out = subprocess.run([str(TRL_PY), "-c", probe], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def write_prompts(policy: Path, path: Path) -> int:
    """The prompts rl_training.py builds (its format and encoder), for the peer to read as token ids."""
    from transformers import AutoTokenizer

    from rlhf.data.encoding import encode_text
    from rlhf.data.prompt_format import resolve_prompt_format

    tok = AutoTokenizer.from_pretrained(str(policy))
    fmt = resolve_prompt_format("auto", tok, str(policy))
    seen, rows = set(), []
    for line in (ROOT / "data" / "orca_sample" / "train.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if (row["system"], row["question"]) in seen:
            continue
        seen.add((row["system"], row["question"]))
        rows.append({"prompt_ids": encode_text(tok, fmt.render_prompt(row["system"], row["question"], tok), fmt)})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return sum(len(r["prompt_ids"]) for r in rows) // len(rows)


def ppo_flags(policy: Path, reward: Path, out: Path, peft: str, args: argparse.Namespace, steps: int) -> list[str]:
    """rl_training.py's flags for ``steps`` fixed-length PPO steps of the benchmark's shape."""
    return [
        f"--model_name={policy}",
        f"--reward_model_name={reward}",
        "--dataset_name=data/orca_sample/train.jsonl",
        f"--batch_size={args.batch_size}",
        f"--mini_batch_size={args.mini_batch_size}",
        "--gradient_accumulation_steps=1",
        f"--ppo_epochs={args.ppo_epochs}",
        f"--steps={steps * args.batch_size}",
        f"--response_length={args.response_length}",
        "--ignore_eos=true",
        f"--peft={peft}",
        f"--output_dir={out}",
        "--log_samples_every=0",
    ]


def run_ours(
    policy: Path, reward: Path, out: Path, peft: str, args: argparse.Namespace, extra=(), precision: str = "fp32"
) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    argv = [PYTHON, "rl_training.py", *ppo_flags(policy, reward, out, peft, args, args.steps), *extra]
    env = {"OMP_NUM_THREADS": args.threads, **precision_env(precision)}
    res = check(run_measured(argv, env=env, log=out.with_suffix(".log")), "ours")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steady = sum(r["time/ppo/total"] for r in rows[1:])
    return {
        "episodes_per_s": args.batch_size * (len(rows) - 1) / steady,
        "peak_rss_mb": res.peak_rss_mb,
        "peak_anon_mb": res.peak_anon_mb,
        "wall_s": res.wall_s,
        "phases": ppo_phases(rows),
    }


def run_trl(
    policy: Path, reward: Path, prompts: Path, out: Path, peft: str, args: argparse.Namespace, precision: str = "fp32"
) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    argv = [
        str(TRL_PY),
        "bench/trl_ppo_run.py",
        f"--policy={policy}",
        f"--reward={reward}",
        f"--prompts={prompts}",
        f"--out={out}",
        f"--peft={peft}",
        f"--batch_size={args.batch_size}",
        f"--mini_batch_size={args.mini_batch_size}",
        f"--ppo_epochs={args.ppo_epochs}",
        f"--response_length={args.response_length}",
        f"--steps={args.steps}",
        f"--precision={precision}",
    ]
    res = check(run_measured(argv, env={"OMP_NUM_THREADS": args.threads}, log=out.with_suffix(".log")), "TRL")
    ends = json.loads((out / "timings.json").read_text())["step_ends"]
    return {
        "episodes_per_s": args.batch_size * (len(ends) - 1) / (ends[-1] - ends[0]),
        "peak_rss_mb": res.peak_rss_mb,
        "peak_anon_mb": res.peak_anon_mb,
        "wall_s": res.wall_s,
    }


# What each stack imports before it holds any model: the interpreter, torch, transformers' Llama and its own modules.
OURS_IMPORTS = "import rl_training, peft, accelerate, transformers.models.llama.modeling_llama"
TRL_IMPORTS = "import trl.experimental.ppo, datasets, peft, accelerate, transformers.models.llama.modeling_llama"


def import_floor_mb(python: str, imports: str, threads: str) -> float:
    """Peak RSS of a process that only imports the stack: the part of peak RSS no training change can remove."""
    return check(run_measured([python, "-c", imports], env={"OMP_NUM_THREADS": threads}), "import probe").peak_rss_mb


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="PPO steps per run (the first is warm-up)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--mini_batch_size", type=int, default=2)
    parser.add_argument("--ppo_epochs", type=int, default=4)
    parser.add_argument("--response_length", type=int, default=32)
    parser.add_argument("--threads", default="1", help="OMP_NUM_THREADS of both stacks")
    parser.add_argument("--variants", default="none,lora")
    parser.add_argument("--dims", choices=("tiny", "smollm2"), default="tiny", help="the models' size (see above)")
    parser.add_argument("--precisions", default="fp32", help="comma-separated: fp32, bf16 (mixed precision)")
    args = parser.parse_args(argv)
    precisions = args.precisions.split(",")
    if not set(precisions) <= {"fp32", "bf16"}:
        parser.error(f"--precisions: expected fp32 and/or bf16, got {args.precisions!r}")

    versions = ensure_trl_venv()
    work = OUT / f"ppo_vs_trl_{args.dims}"
    work.mkdir(parents=True, exist_ok=True)
    policy, reward = (tiny_ppo_models if args.dims == "tiny" else smollm2_ppo_models)(OUT / "models")
    prompts = work / "prompts.jsonl"
    mean_prompt = write_prompts(policy, prompts)
    results: dict = {
        "peer": versions,
        "config": {**vars(args), "mean_prompt_tokens": mean_prompt},
        "variants": {},
    }
    for precision in precisions:
        for peft in args.variants.split(","):
            name = peft if precision == "fp32" else f"{peft}-{precision}"
            runs = []
            for i in range(args.rounds):
                order = ("ours", "trl") if i % 2 == 0 else ("trl", "ours")
                got = {}
                for who in order:
                    print(f"[ppo_vs_trl] {name} round {i + 1}/{args.rounds}: {who}", flush=True)
                    out = work / f"{who}-{name}-{i}"
                    if who == "ours":
                        got[who] = run_ours(policy, reward, out, peft, args, precision=precision)
                    else:
                        got[who] = run_trl(policy, reward, prompts, out, peft, args, precision=precision)
                    got[who]["load"] = os.getloadavg()[0]
                runs.append(got)
            results["variants"][name] = {
                "peft": peft,
                "precision": precision,
                "runs": runs,
                "eps_ratio": ratio_summary([r["ours"]["episodes_per_s"] / r["trl"]["episodes_per_s"] for r in runs]),
                "rss_ratio": ratio_summary([r["ours"]["peak_rss_mb"] / r["trl"]["peak_rss_mb"] for r in runs]),
                "anon_ratio": ratio_summary([r["ours"]["peak_anon_mb"] / r["trl"]["peak_anon_mb"] for r in runs]),
            }
            print(json.dumps({k: v for k, v in results["variants"][name].items() if k != "runs"}), flush=True)
    floors = {
        "ours": import_floor_mb(PYTHON, OURS_IMPORTS, args.threads),
        "trl": import_floor_mb(str(TRL_PY), TRL_IMPORTS, args.threads),
    }
    results["import_floor_mb"] = floors
    for variant in results["variants"].values():
        variant["rss_above_floor_ratio"] = ratio_summary(
            [
                (r["ours"]["peak_rss_mb"] - floors["ours"]) / (r["trl"]["peak_rss_mb"] - floors["trl"])
                for r in variant["runs"]
            ]
        )
    results["measured"] = measured_stamp()
    save_json("ppo_vs_trl" if args.dims == "tiny" else f"ppo_vs_trl_{args.dims}", results)


if __name__ == "__main__":
    main()
