"""PPO seconds per step against batch size and against response length, and one step's time by phase.

    python -m bench.scaling [--batch_sizes 2,4,6,8,10] [--lengths 16,32,48,64,80] [--repeats 3]

Every point is ``--repeats`` real rl_training.py runs on the tiny Llama (full fine-tune, fixed response length, EOS
ignored), the sweep visited in a new order each repeat (forward, backward, ...) so a load change spreads over the
points instead of tilting the line; a run's seconds per step is the median of the engine's own ``time/ppo/total``
over the steps after the first, a point's the median over its runs (its min and max kept), and the phases come from
the same rows (``time/ppo/generate``, ``policy_forward``, ``reference``, ``score``, ``update``). Every run records
the 1-minute load average when it ends.
A least-squares line gives slope and R^2; a fitted x^2 term that explains a clear share of the largest point's time
is flagged as super-linear. Writes out/bench/scaling.json.
"""

from __future__ import annotations

import argparse
import os
import statistics

from bench.common import OUT, PPO_PHASES, linear_fit, quadratic_share, save_json, tiny_ppo_models
from bench.ppo_vs_trl import run_ours

SUPERLINEAR_SHARE = 0.10  # an x^2 term worth >= 10% of the largest point's time


def sweep(name: str, values: list[int], fixed: dict, policy, reward, base: argparse.Namespace) -> dict:
    runs: dict[int, list[dict]] = {v: [] for v in values}
    for repeat in range(base.repeats):
        for value in values if repeat % 2 == 0 else values[::-1]:
            args = argparse.Namespace(**{**vars(base), **fixed, name: value})
            print(f"[scaling] {name}={value} (repeat {repeat + 1}/{base.repeats})", flush=True)
            run = run_ours(policy, reward, OUT / "scaling" / f"{name}-{value}-{repeat}", "none", args)
            runs[value].append({**run["phases"], "load": os.getloadavg()[0]})
    points = []
    for value in values:
        totals = [r["total"] for r in runs[value]]
        phases = {k: statistics.median(r[k] for r in runs[value]) for k in (*PPO_PHASES, "other", "total")}
        points.append({name: value, **phases, "min": min(totals), "max": max(totals), "runs": runs[value]})
    xs = [float(p[name]) for p in points]
    ys = [p["total"] for p in points]
    fit = linear_fit(xs, ys)
    share = quadratic_share(xs, ys) if len(xs) >= 3 else 0.0
    loads = [r["load"] for v in values for r in runs[v]]
    return {
        "x": name,
        "fixed": fixed,
        "points": points,
        "repeats": base.repeats,
        "load": {"min": min(loads), "max": max(loads)},
        "slope": fit.slope,
        "intercept": fit.intercept,
        "r2": fit.r2,
        "quadratic_share": share,
        "superlinear": share >= SUPERLINEAR_SHARE,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_sizes", default="2,4,6,8,10")
    parser.add_argument("--lengths", default="16,32,48,64,80")
    parser.add_argument("--repeats", type=int, default=3, help="runs per point")
    parser.add_argument("--steps", type=int, default=3, help="PPO steps per point (the first is warm-up)")
    parser.add_argument("--mini_batch_size", type=int, default=2)
    parser.add_argument("--ppo_epochs", type=int, default=4)
    parser.add_argument("--threads", default="1")
    args = parser.parse_args(argv)
    policy, reward = tiny_ppo_models(OUT / "models")
    base = argparse.Namespace(
        steps=args.steps,
        mini_batch_size=args.mini_batch_size,
        ppo_epochs=args.ppo_epochs,
        threads=args.threads,
        repeats=args.repeats,
    )
    batch = sweep(
        "batch_size", [int(v) for v in args.batch_sizes.split(",")], {"response_length": 32}, policy, reward, base
    )
    length = sweep(
        "response_length", [int(v) for v in args.lengths.split(",")], {"batch_size": 4}, policy, reward, base
    )
    save_json("scaling", {"config": vars(args), "batch_size": batch, "response_length": length})


if __name__ == "__main__":
    main()
