"""Does PPO's gain over SFT hold for every seed? ``make bench-learning`` (``python -m bench.learning``).

    python -m bench.learning [--config configs/demo.json] [--seeds 0,1,2] [--output out/demo] [--eval_samples K]

One SFT policy and one pair of reward models (the config's ``sft``, ``rm``, ``rm2`` stages, reused when already
complete in ``--output``: after ``make demo`` only PPO and evaluation run), then for each seed PPO (``--seed S``) and
the evaluation (sampling seed ``S``), with every other flag from the config. The evaluation draws as many responses
per prompt and policy as the config's ``eval`` stage says (``--samples_per_prompt``; the demo's: 2), every PPO
response compared with every SFT one, which measures the same win rate with less sampling luck; ``--eval_samples K``
overrides it. Each seed's win rate under the held-out judge (rm2, else rm) with its 95% interval, gold accuracy of SFT
and PPO with PPO's gain and its interval, KL(PPO || SFT) and PPO's EOS rate go into a table, with the worst seed
underneath; ``out/bench/learning.json`` keeps the numbers and BENCHMARKS.md gets the table in its "Learning" section
(``make bench`` keeps that section when it rewrites the rest). That section is the demo config's: with another
``--config`` (e.g. a copy pointing at other data) the numbers go to ``learning.json`` in its output folder and
BENCHMARKS.md is left as it is, unless ``--benchmarks_md`` asks for it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import sys
import time
from pathlib import Path

from bench.common import OUT, ROOT, machine, marked, replace_block

BLOCK = "learning"  # BENCHMARKS.md's section that this benchmark owns (make bench keeps it)
DEMO_CONFIG = ROOT / "configs" / "demo.json"  # the config whose table BENCHMARKS.md publishes
TARGET_MIN_WIN_RATE = 0.65


def seed_row(seed: int, ev: dict) -> dict:
    """The numbers of one seed's evaluation.json that the table shows."""
    judge = "rm2" if "win_rate_rm2" in ev else "rm"
    win = ev[f"win_rate_{judge}"]
    gold = ev.get("gold") or {}
    return {
        "seed": seed,
        "judge": judge,
        "win_rate": win["win_rate"],
        "ci_low": win["ci_low"],
        "ci_high": win["ci_high"],
        "n": win["n"],
        "ties": win["ties"],
        "samples_per_prompt": win.get("samples_per_prompt", 1),
        # PPO's own reward model's verdict, and how often it picks the same winner as the judge (rm2 only)
        "win_rate_trained": ev["win_rate_rm"]["win_rate"] if judge == "rm2" else None,
        "agreement": (ev.get("judge_agreement") or {}).get("agreement"),  # absent in older evaluations
        "gold_sft": gold.get("sft"),
        "gold_ppo": gold.get("ppo"),
        "gold_rows": gold.get("rows"),
        "gold_gain": gold.get("gain"),  # paired over prompts, with its interval (absent in older evaluations)
        "gold_kinds": gold.get("kinds"),  # the same per kind of question, where the data names kinds
        "kl": ev["kl_ppo_sft"]["mean"],
        "eos_sft": ev["sft"]["eos_rate"],
        "eos_ppo": ev["ppo"]["eos_rate"],
        "warnings": ev.get("warnings", []),
    }


def worst(rows: list[dict]) -> dict:
    """The worst value of each column over the seeds: lowest win rate, interval bound, gold gain and EOS rate,
    highest KL."""
    gains = [r["gold_ppo"] - r["gold_sft"] for r in rows if r["gold_sft"] is not None]
    return {
        "win_rate": min(r["win_rate"] for r in rows),
        "ci_low": min(r["ci_low"] for r in rows),
        "gold_gain": min(gains) if gains else None,
        "kl": max(r["kl"] for r in rows),
        "eos_ppo": min(r["eos_ppo"] for r in rows),
    }


def _gold(row: dict) -> str:
    if row["gold_sft"] is None:
        return "–"
    text = f"{row['gold_sft']:.3f} → {row['gold_ppo']:.3f} ({row['gold_rows']} prompts"
    gain = row.get("gold_gain")
    if gain:
        text += f"; gain {gain['gain']:+.3f}, {gain['ci_low']:+.3f} to {gain['ci_high']:+.3f}"
    return text + ")"


def _n(row: dict) -> str:
    each = row.get("samples_per_prompt", 1)
    return f"n={row['n']}" if each == 1 else f"n={row['n']}×{each}"


def _trained(row: dict) -> str:
    if row.get("win_rate_trained") is None:
        return "–"
    agreement = row.get("agreement")
    return f"{row['win_rate_trained']:.3f} · " + ("–" if agreement is None else f"{agreement:.2f}")


def table(rows: list[dict]) -> str:
    """Markdown: one line per seed and the worst value of each column."""
    lines = [
        "| seed | PPO win rate over SFT (95% CI, n, ties) | under rm · rm/rm2 agreement "
        "| gold accuracy SFT → PPO (gain, 95% CI) | KL(PPO ‖ SFT) | EOS rate PPO |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['seed']} | {r['win_rate']:.3f} ({r['ci_low']:.3f}–{r['ci_high']:.3f}, {_n(r)}, {r['ties']}) "
            f"| {_trained(r)} | {_gold(r)} | {r['kl']:.2f} | {r['eos_ppo']:.3f} |"
        )
    w = worst(rows)
    gain = "–" if w["gold_gain"] is None else f"{w['gold_gain']:+.3f} (smallest gain)"
    lines.append(
        f"| **worst** | **{w['win_rate']:.3f}** (lowest CI bound {w['ci_low']:.3f}) | | {gain} | {w['kl']:.2f} "
        f"| {w['eos_ppo']:.3f} |"
    )
    return "\n".join(lines)


def section(result: dict) -> str:
    rows = result["seeds"]
    w = worst(rows)
    each = rows[0].get("samples_per_prompt", 1)
    drawn = (
        "one response per prompt and policy"
        if each == 1
        else f"{each} responses per prompt and policy, every PPO response compared with every SFT one "
        f"(n=prompts×{each})"
    )
    met = "met" if w["win_rate"] >= TARGET_MIN_WIN_RATE else "**not met**"
    return marked(
        BLOCK,
        f"""## Learning across seeds (`make bench-learning`)

Generated on {result["when"]} in {result["minutes"]:.1f} minutes ({result["host"]}; load average
{result["load"]}). One SFT policy and one pair of reward models from `{result["config"]}`, then PPO and the
evaluation for each seed (PPO `--seed S`, evaluation sampling seed S), every other flag from the config. Judge:
{rows[0]["judge"]}, the reward model PPO never saw; win rate on held-out prompts, {drawn}, ties count half. Next to
it, the win rate under rm (the reward model PPO trained against) and how often rm and rm2 pick the same winner of
those response pairs: rm2 can confirm what PPO learned from rm only as far as the two agree.

{table(rows)}

Target (issue 13): lowest win rate over the seeds >= {TARGET_MIN_WIN_RATE}: {w["win_rate"]:.3f}, {met}.""",
    )


def seed_commands(
    ppo: list[str], evaluation: list[str], folder: Path, seed: int, eval_samples: int | None = None
) -> tuple[list[str], list[str]]:
    """One seed's PPO and evaluation command lines: the config's, with this seed's folders and ``--seed S`` appended
    (the last occurrence of a flag wins), and ``--samples_per_prompt K`` only when ``eval_samples`` overrides the
    config's."""
    ppo_argv = [*ppo, "--output_dir", str(folder / "ppo"), "--seed", str(seed)]
    eval_argv = [*evaluation, "--ppo_model", str(folder / "ppo" / "final")]
    eval_argv += ["--output_dir", str(folder / "eval"), "--seed", str(seed)]
    if eval_samples is not None:
        eval_argv += ["--samples_per_prompt", str(eval_samples)]
    return ppo_argv, eval_argv


def destinations(config: str, output: Path, benchmarks_md: bool = False) -> tuple[Path, Path | None]:
    """Where a run's numbers go: its ``learning.json`` and the BENCHMARKS.md whose section it rewrites (None: left
    alone). The published section is the demo config's; a run of another config keeps its numbers in its own output
    folder unless ``benchmarks_md`` says otherwise."""
    if benchmarks_md or Path(config).resolve() == DEMO_CONFIG.resolve():
        return OUT / "learning.json", ROOT / "BENCHMARKS.md"
    return output / "learning.json", None


def host() -> str:
    from rlhf.runtime.precision import native_bf16

    info = machine()
    precision = os.environ.get("RLHF_NATIVE_BF16")
    kind = "native bf16" if native_bf16() else "no native bf16"
    forced = f", RLHF_NATIVE_BF16={precision}" if precision is not None else ""
    return f"{info['cpu']}, {info['cores']} cores, {kind}{forced}"


def main(argv: list[str] | None = None) -> int:
    from rlhf.outputs.folders import is_complete
    from rlhf.pipeline.config import load_config
    from rlhf.pipeline.runner import main as pipeline
    from rlhf.pipeline.runner import run_stage
    from rlhf.pipeline.stages import build_stages

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.json")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated PPO/evaluation seeds")
    parser.add_argument("--output", help="the pipeline folder holding (or to hold) sft/, rm/, rm2/ (default: config)")
    parser.add_argument("--force", action="store_true", help="rerun seeds whose evaluation is complete")
    parser.add_argument(
        "--benchmarks_md",
        action="store_true",
        help="write the table into BENCHMARKS.md for a config other than configs/demo.json too",
    )
    parser.add_argument(
        "--eval_samples",
        type=int,
        help="responses per prompt and policy in each evaluation (default: the config's eval --samples_per_prompt)",
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    config = load_config(args.config, {"output": args.output})
    out = Path(config["output"])
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]

    # The SFT policy and reward models, through the pipeline (skipped when complete and unchanged).
    base = ",".join(name for name in ("sft", "rm", "rm2") if name == "sft" or name in config)
    if pipeline(["--config", args.config, "--output", str(out), "--stages", base]) != 0:
        print("bench-learning: the SFT / reward-model stages failed", file=sys.stderr)
        return 1

    stages = {s.name: s for s in build_stages(config)}
    rows = []
    for seed in seeds:
        folder = out / "seeds" / f"seed_{seed}"
        ppo_argv, eval_argv = seed_commands(stages["ppo"].argv, stages["eval"].argv, folder, seed, args.eval_samples)
        for name, stage_argv, done in (
            (f"ppo_seed{seed}", ppo_argv, folder / "ppo" / "final"),
            (f"eval_seed{seed}", eval_argv, folder / "eval"),
        ):
            print(f"\n== seed {seed}: $ {shlex.join(stage_argv)}", flush=True)
            if is_complete(done) and not args.force:
                print(f"   skipped: {done} is complete (--force to redo)", flush=True)
                continue
            t0 = time.perf_counter()
            log = out / "logs" / f"{name}.log"
            code, _ = run_stage(stage_argv, log)
            if code:
                print(f"bench-learning: {name} failed (log: {log})", file=sys.stderr)
                return 1
            print(f"   {name} done in {time.perf_counter() - t0:.0f} s", flush=True)
        evaluation = json.loads((folder / "eval" / "evaluation.json").read_text(encoding="utf-8"))
        rows.append(seed_row(seed, evaluation))
    result = {
        "when": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "minutes": (time.perf_counter() - start) / 60,
        "host": host(),
        "load": "{:.1f} / {:.1f} / {:.1f} (1/5/15 min)".format(*os.getloadavg()),
        "config": args.config,
        "seeds": rows,
        "worst": worst(rows),
    }
    numbers, bench_md = destinations(args.config, out, args.benchmarks_md)
    numbers.parent.mkdir(parents=True, exist_ok=True)
    numbers.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print("\n" + table(rows))
    if bench_md is None:
        print(f"wrote {numbers}; BENCHMARKS.md left as it is (its table is {DEMO_CONFIG.name}'s; --benchmarks_md)")
        return 0
    old = bench_md.read_text(encoding="utf-8") if bench_md.is_file() else "# Benchmarks\n"
    bench_md.write_text(replace_block(old, BLOCK, section(result)), encoding="utf-8")
    print(f"wrote {numbers} and the learning section of {bench_md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
