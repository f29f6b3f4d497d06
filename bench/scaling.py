"""PPO seconds per step against batch size and against response length, and one step's time by phase.

    python -m bench.scaling [--batch_sizes 2,4,6,8] [--lengths 16,32,48,64]

Every point is a real rl_training.py run on the tiny Llama (full fine-tune, fixed response length, EOS ignored);
its seconds per step is the median of the engine's own ``time/ppo/total`` over the steps after the first, and the
phases come from the same rows (``time/ppo/generate``, ``policy_forward``, ``reference``, ``score``, ``update``).
A least-squares line gives slope and R^2; a fitted x^2 term that explains a clear share of the largest point's time
is flagged as super-linear. Writes out/bench/scaling.json.
"""

from __future__ import annotations

import argparse

from bench.common import OUT, linear_fit, quadratic_share, save_json, tiny_ppo_models
from bench.ppo_vs_trl import run_ours

SUPERLINEAR_SHARE = 0.10  # an x^2 term worth >= 10% of the largest point's time


def sweep(name: str, values: list[int], fixed: dict, policy, reward, base: argparse.Namespace) -> dict:
    points = []
    for value in values:
        args = argparse.Namespace(**{**vars(base), **fixed, name: value})
        print(f"[scaling] {name}={value}", flush=True)
        run = run_ours(policy, reward, OUT / "scaling" / f"{name}-{value}", "none", args)
        points.append({name: value, **run["phases"]})
    xs = [float(p[name]) for p in points]
    ys = [p["total"] for p in points]
    fit = linear_fit(xs, ys)
    share = quadratic_share(xs, ys) if len(xs) >= 3 else 0.0
    return {
        "x": name,
        "fixed": fixed,
        "points": points,
        "slope": fit.slope,
        "intercept": fit.intercept,
        "r2": fit.r2,
        "quadratic_share": share,
        "superlinear": share >= SUPERLINEAR_SHARE,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_sizes", default="2,4,6,8")
    parser.add_argument("--lengths", default="16,32,48,64")
    parser.add_argument("--steps", type=int, default=3, help="PPO steps per point (the first is warm-up)")
    parser.add_argument("--mini_batch_size", type=int, default=2)
    parser.add_argument("--ppo_epochs", type=int, default=4)
    parser.add_argument("--threads", default="1")
    args = parser.parse_args(argv)
    policy, reward = tiny_ppo_models(OUT / "models")
    base = argparse.Namespace(
        steps=args.steps, mini_batch_size=args.mini_batch_size, ppo_epochs=args.ppo_epochs, threads=args.threads
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
