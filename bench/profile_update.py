"""Where a PPO step's time and memory go: torch's profiler around one real update of rl_training.py, and the
process's peak resident memory split into weights, gradients, optimizer state and the rest.

    python -m bench.profile_update [--dims smollm2|tiny] [--precision fp32|bf16] [--peft none|lora]

Runs rl_training.py unchanged (as bench/timed_ppo.py does, through runpy) on the benchmark's models, for two PPO
steps, and profiles the second step's ``PPOEngine.update`` (the first is warm-up). Each operator's self CPU time is
put into one of a few groups — weight matmuls forward and backward, attention, the optimizer, normalisation and
activations, the loss and log-probability math, copies and dtype casts, and the rest — and the groups' shares of the
update are printed and saved to out/bench/profile_update.json. What is not model math (the optimizer aside) is the
part an engine can remove: casts, copies, host syncs, redundant work.

Memory: the high-water mark of the process (VmHWM) after loading and after each phase of both steps, and the bytes
of every tensor the engine holds for the whole run — the weights of policy (with its value head), reference and
reward model, the gradients of the trained parameters, the optimizer's state. What the peak holds beyond those and
the import floor (the libraries alone) is activations, the generation cache and allocator slack.
"""

from __future__ import annotations

import argparse
import json
import runpy
import shutil
import sys
from pathlib import Path

# Operator name -> group, first match wins (names as torch's profiler reports them, forward and backward).
GROUPS = (
    # Gradient clipping: a norm of every gradient, then an in-place multiply of every gradient (aten::mul_ is only
    # called there in a PPO update).
    ("optimizer", ("adam", "_foreach", "clip_grad", "norm", "aten::mul_")),
    ("attention", ("attention", "sdpa", "flash")),
    ("weight matmuls", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "mkldnn")),
    ("norm and activations", ("rms", "silu", "pow", "rsqrt", "sigmoid", "mean")),
    ("log-probs and losses", ("log_softmax", "logsumexp", "softmax", "gather", "clamp", "exp", "where", "max")),
    ("copies and casts", ("copy_", "to_copy", "aten::to", "contiguous", "clone", "cat", "index")),
)


def group_of(op: str) -> str:
    """The group of a profiler operator name (lower-cased substring match, in GROUPS' order)."""
    name = op.lower()
    for group, needles in GROUPS:
        if any(n in name for n in needles):
            return group
    return "other"


def summarize(ops: list[tuple[str, float, int]], wall_s: float) -> dict:
    """Self CPU seconds per group (and the top operators) from (name, self seconds, calls) rows."""
    groups: dict[str, float] = {}
    for name, seconds, _ in ops:
        groups[group_of(name)] = groups.get(group_of(name), 0.0) + seconds
    total = sum(groups.values())
    ranked = sorted(groups.items(), key=lambda x: -x[1])
    top = sorted(ops, key=lambda r: -r[1])[:15]
    return {
        "wall_s": wall_s,
        "self_cpu_s": total,
        "groups": {g: {"s": s, "share": s / total if total else 0.0} for g, s in ranked},
        "top_ops": [{"op": n, "s": s, "calls": c, "group": group_of(n)} for n, s, c in top],
    }


def vm_kb(field: str) -> int:
    """A field of /proc/self/status in kB (VmHWM: peak resident set so far; VmRSS: now)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


# glibc's struct mallinfo2, in order: every field a size_t.
MALLINFO2_FIELDS = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
MALLINFO2_FIELDS += ("keepcost",)


def malloc_free_kb() -> int | None:
    """KiB in glibc malloc's free lists, all arenas (``mallinfo2().fordblks``): memory the process freed but still
    holds resident, to reuse; None where the C library is not glibc >= 2.33."""
    import ctypes

    class Mallinfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in MALLINFO2_FIELDS]

    try:
        fn = ctypes.CDLL(None).mallinfo2
    except AttributeError:
        return None
    fn.restype = Mallinfo2
    return fn().fordblks // 1024


def tensor_bytes(tensors) -> int:
    """Bytes of distinct tensors' storage (a tied weight counts once)."""
    seen, total = set(), 0
    for t in tensors:
        if t is None or t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


def held_memory(engine) -> dict[str, float]:
    """MB of what the engine holds between steps: weights, gradients (as large as the trained parameters, held
    from the first backward to each optimizer step), optimizer state."""
    import torch

    mb = 1024.0**2
    policy = engine.unwrapped
    trained = [p for p in policy.parameters() if p.requires_grad]
    state = [v for s in engine.optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    scorer_model = getattr(engine.scorer, "model", None)
    return {
        "policy_weights": tensor_bytes([*policy.parameters(), *policy.buffers()]) / mb,
        "reference_weights": (tensor_bytes(engine.ref_model.parameters()) / mb) if engine.ref_model else 0.0,
        "reward_weights": (tensor_bytes(scorer_model.parameters()) / mb) if scorer_model is not None else 0.0,
        "gradients": tensor_bytes(trained) / mb,
        "optimizer_state": tensor_bytes(state) / mb,
    }


def child(record: str, script: str, args: list[str]) -> None:
    """Inside rl_training.py's process: profile the second update."""
    import time

    import torch
    from torch.profiler import ProfilerActivity, profile

    from rlhf.ppo.engine import PPOEngine

    original_update, original_rollout = PPOEngine.update, PPOEngine.rollout
    original_minibatch = PPOEngine._train_minibatch
    calls: list[int] = []
    peaks: list[dict] = []
    # The resident set after each minibatch's backward of the first update (where the peak is reached: gradients
    # and optimizer state held, activations just freed) and how much of it sits in malloc's free lists.
    samples: list[dict] = []

    def train_minibatch(self, *args, **kwargs):
        out = original_minibatch(self, *args, **kwargs)
        if len(calls) == 1:
            free = malloc_free_kb()
            samples.append({"rss_mb": vm_kb("VmRSS") / 1024, "malloc_free_mb": None if free is None else free / 1024})
        return out

    def rollout(self, batch):
        if not peaks:
            peaks.append({"after": "loading", "hwm_mb": vm_kb("VmHWM") / 1024})
        out = original_rollout(self, batch)
        peaks.append({"after": f"rollout {len(calls) + 1}", "hwm_mb": vm_kb("VmHWM") / 1024})
        return out

    def update(self, ro):
        calls.append(1)
        if len(calls) != 2:
            out = original_update(self, ro)
            peaks.append({"after": f"update {len(calls)}", "hwm_mb": vm_kb("VmHWM") / 1024})
            return out
        start = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            out = original_update(self, ro)
        wall = time.perf_counter() - start
        peaks.append({"after": "update 2 (profiled)", "hwm_mb": vm_kb("VmHWM") / 1024})
        ops = [(e.key, e.self_cpu_time_total / 1e6, e.count) for e in prof.key_averages()]
        highest = max(samples, key=lambda x: x["rss_mb"]) if samples else None
        memory = {"held_mb": held_memory(self), "hwm": peaks, "at_highest_rss": highest}
        got = {**summarize(ops, wall), "memory": memory}
        Path(record).write_text(json.dumps(got), encoding="utf-8")
        return out

    PPOEngine.update, PPOEngine.rollout, PPOEngine._train_minibatch = update, rollout, train_minibatch
    torch.manual_seed(0)
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", choices=("tiny", "smollm2"), default="smollm2")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--peft", choices=("none", "lora"), default="none")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--mini_batch_size", type=int, default=2)
    parser.add_argument("--ppo_epochs", type=int, default=4)
    parser.add_argument("--response_length", type=int, default=32)
    parser.add_argument("--threads", default="1")
    args = parser.parse_args(argv)

    from bench.common import (
        OUT,
        PYTHON,
        check,
        precision_env,
        run_measured,
        save_json,
        smollm2_ppo_models,
        tiny_ppo_models,
    )
    from bench.ppo_vs_trl import OURS_IMPORTS, import_floor_mb, ppo_flags

    policy, reward = (tiny_ppo_models if args.dims == "tiny" else smollm2_ppo_models)(OUT / "models")
    out = OUT / "profile_update"
    record = out / "record.json"
    out.mkdir(parents=True, exist_ok=True)
    record.unlink(missing_ok=True)
    shutil.rmtree(out / "run", ignore_errors=True)
    ppo_args = ppo_flags(policy, reward, out / "run", args.peft, args, steps=2)
    argv_child = [PYTHON, "-m", "bench.profile_update", "--child", str(record), "rl_training.py", *ppo_args]
    env = {"OMP_NUM_THREADS": args.threads, **precision_env(args.precision)}
    check(run_measured(argv_child, env=env, log=out / "run.log"), "profiled PPO run")
    got = json.loads(record.read_text(encoding="utf-8"))
    got["config"] = vars(args)
    print(f"update {got['wall_s']:.2f} s wall, {got['self_cpu_s']:.2f} s self CPU in operators")
    for group, v in got["groups"].items():
        print(f"  {group:24s} {v['s']:7.2f} s  {v['share']:6.1%}")
    mem = got["memory"]
    held = sum(mem["held_mb"].values())
    floor = import_floor_mb(PYTHON, OURS_IMPORTS, args.threads)
    # The high-water mark before the profiled update: the profiler's own event records would inflate the peak.
    peak = max(p["hwm_mb"] for p in mem["hwm"] if "profiled" not in p["after"])
    mem.update({"import_floor_mb": floor, "peak_mb": peak, "rest_mb": peak - held - floor})
    save_json("profile_update", got)
    print(
        f"peak RSS {peak:.0f} MB: import floor {floor:.0f} MB, "
        + ", ".join(f"{k} {v:.0f} MB" for k, v in mem["held_mb"].items())
        + f", rest {mem['rest_mb']:.0f} MB"
    )
    print("high-water mark after: " + ", ".join(f"{p['after']} {p['hwm_mb']:.0f}" for p in mem["hwm"]))
    top = mem.get("at_highest_rss")
    if top and top["malloc_free_mb"] is not None:
        print(
            f"after the first update's fullest backward: RSS {top['rss_mb']:.0f} MB, of it "
            f"{top['malloc_free_mb']:.0f} MB in malloc's free lists (freed, kept for reuse: not live tensors)"
        )
    print("top operators:")
    for row in got["top_ops"]:
        print(f"  {row['op']:40s} {row['s']:7.2f} s  {row['calls']:6d} calls  ({row['group']})")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        sys.path[0] = str(Path(__file__).resolve().parent.parent)
        child(sys.argv[2], sys.argv[3], sys.argv[4:])
    else:
        main()
