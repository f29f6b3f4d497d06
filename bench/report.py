"""Turn out/bench/*.json into BENCHMARKS.md and the PNG plots in bench/plots/ (matplotlib, headless).

python -m bench.report [--seconds TOTAL] [--scale default|small|full]

A section whose benchmark did not run (no json in out/bench) is left out, except the marked ones that other scales
or runs own: the 135M comparison (section 1b, not at ``BENCH_SCALE=small``), the stages' efficiency and precision
(sections 2 and 5, ``BENCH_SCALE=full``) and the learning section (``make bench-learning``) are kept from the
BENCHMARKS.md in place, as they were written, each with its date and host.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics

from bench import learning
from bench.common import PLOTS, PPO_PHASES, ROOT, extract_block, load_json, machine, marked, replace_block

TARGET_EPS, TARGET_RSS, TARGET_PLAIN_SHARE, TARGET_R2 = 1.5, 0.7, 0.8, 0.98
TARGET_EPS_135M, TARGET_RSS_135M = 2.0, 0.6  # issue 16: at SmolLM2-135M's size, full fine-tune


def fmt_ratio(summary: dict) -> str:
    return f"{summary['median']:.2f} ({summary['min']:.2f}–{summary['max']:.2f}, n={summary['n']})"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def yes(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    PLOTS.mkdir(parents=True, exist_ok=True)
    return plt


def plot_ppo(ppo: dict) -> str:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    names = list(ppo["variants"])
    for ax, key, label in ((axes[0], "episodes_per_s", "episodes/s"), (axes[1], "peak_rss_mb", "peak RSS (MB)")):
        for offset, who, colour in ((-0.2, "ours", "tab:blue"), (0.2, "trl", "tab:orange")):
            vals = [[r[who][key] for r in ppo["variants"][n]["runs"]] for n in names]
            mid = [statistics.median(v) for v in vals]
            err = [
                [m - min(v) for m, v in zip(mid, vals, strict=True)],
                [max(v) - m for m, v in zip(mid, vals, strict=True)],
            ]
            ax.bar([i + offset for i in range(len(names))], mid, 0.4, yerr=err, label=who, color=colour)
        ax.set_xticks(range(len(names)), ["full fine-tune" if n == "none" else n for n in names])
        ax.set_ylabel(label)
    axes[0].legend()
    fig.suptitle("PPO: ours vs TRL 1.12 PPOTrainer (median, min-max over alternated runs)")
    fig.tight_layout()
    fig.savefig(PLOTS / "ppo_vs_trl.png", dpi=100)
    plt.close(fig)
    return "bench/plots/ppo_vs_trl.png"


def plot_efficiency(eff: dict) -> str:
    plt = _plt()
    runs = [r for r in eff["runs"] if r.get("share")]
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    names = [r["name"] for r in runs]
    mid = [100 * r["share"]["median"] for r in runs]
    err = [
        [m - 100 * r["share"]["min"] for m, r in zip(mid, runs, strict=True)],
        [100 * r["share"]["max"] - m for m, r in zip(mid, runs, strict=True)],
    ]
    colours = ["tab:blue" if r["dtype"] == "fp32" else "tab:orange" for r in runs]
    axes[0].bar(names, mid, yerr=err, color=colours)
    axes[0].axhline(100 * TARGET_PLAIN_SHARE, color="grey", linestyle="--", label=f"target {TARGET_PLAIN_SHARE:.0%}")
    axes[0].set_ylabel("% of the plain step's tokens/s")
    axes[0].legend()
    x = range(len(runs))
    axes[1].bar([i - 0.2 for i in x], [r["tokens_per_s"] for r in runs], 0.4, label="stage", color="tab:green")
    axes[1].bar([i + 0.2 for i in x], [r["plain_tokens_per_s"] for r in runs], 0.4, label="plain step", color="grey")
    axes[1].set_xticks(list(x), names)
    axes[1].set_ylabel("tokens/s (median over rounds)")
    axes[1].legend()
    for ax in axes:
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle("Stages against a bare forward + backward + AdamW of the same model, precision and shape")
    fig.tight_layout()
    fig.savefig(PLOTS / "efficiency.png", dpi=100)
    plt.close(fig)
    return "bench/plots/efficiency.png"


def plot_scaling(scaling: dict) -> str:
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    for ax, key in zip(axes[:2], ("batch_size", "response_length"), strict=False):
        sweep = scaling[key]
        xs = [p[key] for p in sweep["points"]]
        ax.plot(xs, [p["total"] for p in sweep["points"]], "o", label="measured")
        ax.plot(xs, [sweep["intercept"] + sweep["slope"] * x for x in xs], "-", label=f"fit, R²={sweep['r2']:.3f}")
        ax.set_xlabel(key.replace("_", " "))
        ax.set_ylabel("seconds per PPO step")
        ax.legend()
    sweep = scaling["batch_size"]
    bottom = [0.0] * len(sweep["points"])
    labels = [str(p["batch_size"]) for p in sweep["points"]]
    for phase in (*PPO_PHASES, "other"):
        vals = [p[phase] for p in sweep["points"]]
        axes[2].bar(labels, vals, bottom=bottom, label=phase)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    axes[2].set_xlabel("batch size")
    axes[2].set_ylabel("seconds per phase")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(PLOTS / "scaling.png", dpi=100)
    plt.close(fig)
    return "bench/plots/scaling.png"


ANON_HEADER = "anon. peak ratio"
ANON_NOTE = (
    "Peak RSS also counts the shared libraries' pages mapped from the page cache, whose resident share depends on the "
    "cache's history (a freshly installed venv maps more), not on the program; the anon. peak ratio compares the "
    "highest anonymous memory (heap and tensors; `RssAnon` sampled every 10 ms by bench/launcher.py) instead."
)


def measured_on(stamp: dict) -> str:
    """The opening of a section's origin line, from its json's ``measured`` (bench.common.measured_stamp)."""
    return f"Measured on {stamp['when']} on {stamp['cpu']} ({stamp['isa']})"


def ppo_targets(variant: dict, what: str, eps_target: float, rss_target: float) -> list[list[str]]:
    """The summary rows of a PPO-vs-TRL variant: episodes/s and peak RSS ratios against their targets."""
    eps, rss = variant["eps_ratio"]["median"], variant["rss_ratio"]["median"]
    return [
        [f"PPO episodes/s vs TRL 1.12 {what}", f">= {eps_target}x", f"{eps:.2f}x", yes(eps >= eps_target)],
        [f"PPO peak RSS vs TRL 1.12 {what}", f"<= {rss_target}x", f"{rss:.2f}x", yes(rss <= rss_target)],
    ]


def ppo_cells(variant: dict, digits: int) -> list[str]:
    """A PPO-vs-TRL table's cells for one variant: medians of each side's episodes/s and peak RSS, and the ratios."""

    def med(who: str, key: str) -> float:
        return statistics.median(r[who][key] for r in variant["runs"])

    return [
        f"{med('ours', 'episodes_per_s'):.{digits}f}",
        f"{med('trl', 'episodes_per_s'):.{digits}f}",
        fmt_ratio(variant["eps_ratio"]),
        f"{med('ours', 'peak_rss_mb'):.0f}",
        f"{med('trl', 'peak_rss_mb'):.0f}",
        fmt_ratio(variant["rss_ratio"]),
        fmt_ratio(variant["anon_ratio"]) if "anon_ratio" in variant else "–",
    ]


def ppo_section(ppo: dict, summary: list[list[str]]) -> str:
    cfg = ppo["config"]
    rows = []
    for name, v in ppo["variants"].items():
        rows.append(
            [
                "full fine-tune" if name == "none" else "LoRA",
                *ppo_cells(v, 2),
                fmt_ratio(v["rss_above_floor_ratio"]) if "rss_above_floor_ratio" in v else "–",
            ]
        )
    if "none" in ppo["variants"]:
        summary += ppo_targets(ppo["variants"]["none"], "(full fine-tune)", TARGET_EPS, TARGET_RSS)
    header = ["variant", "ours ep/s", "TRL ep/s", "ep/s ratio: median (min–max)", "ours RSS MB", "TRL RSS MB"]
    ppo_table = table([*header, "RSS ratio: median (min–max)", ANON_HEADER, "RSS above import floor: ratio"], rows)
    floors = ppo.get("import_floor_mb", {})
    floor_text = (
        f"The import floor (peak RSS of a process that only imports the stack's libraries) is "
        f"{floors['ours']:.0f} MB for ours and {floors['trl']:.0f} MB for TRL; the last column compares what each run "
        "holds above its own floor."
        if floors
        else ""
    )
    return f"""## 1. PPO against TRL 1.12's PPOTrainer

Peer: `trl.experimental.ppo.PPOTrainer` ({ppo["peer"]}), in its own venv
(`.venv-trl112`, created by `bench/ppo_vs_trl.py`). Both stacks train the same randomly initialised tiny Llama
(4 layers, hidden 256, vocabulary {4096} from this benchmark's tokenizer) against the same reward model (same
architecture as a sequence classifier), on the same prompts (rl_training.py's rendering, mean
{cfg["mean_prompt_tokens"]} tokens), batch {cfg["batch_size"]}, minibatch {cfg["mini_batch_size"]} (one optimizer step
each), {cfg["ppo_epochs"]} PPO epochs, exactly {cfg["response_length"]} response tokens (EOS disabled: our
`--ignore_eos`, TRL's `stop_token=None`), fp32, {cfg["threads"]} thread(s) each, {cfg["steps"]} PPO steps per run of
which the first is warm-up. Episodes/s is the steady state (ours: the engine's `time/ppo/total`; TRL: wall time
between its `on_step_end` callbacks); peak RSS is each process's own maximum resident set. {cfg["rounds"]} rounds,
the order alternating each round; ratios are ours / TRL's per round. {ANON_NOTE}

{ppo_table}

![PPO vs TRL]({plot_ppo(ppo)})

What differs by design, not by configuration: TRL trains a separate value network (a second full model with its own
optimizer state, also under LoRA, where it is fully trained) and keeps generation logits; ours puts a value head
on the policy (one forward for both). Peak RSS includes the Python/torch/transformers baseline that both pay,
which bounds how low the ratio can go for a model this small. {floor_text}
"""


def variant_label(name: str, v: dict) -> str:
    peft = v.get("peft", name.split("-")[0])
    return ("full fine-tune" if peft == "none" else "LoRA") + f", {v.get('precision', 'fp32')}"


def memory_breakdown(
    held: dict[str, float],
    ours_floor: float,
    ours_peak: float,
    trl_floor: float,
    trl_peak: float,
    ours_malloc_free: float | None = None,
):
    """Rows (what, ours MB, TRL MB) of where each full fine-tune's peak resident memory goes.

    Ours is measured (``held``: the engine's tensors, bench/profile_update.py). TRL's is derived from the same sizes
    by its design: policy, reference, reward model and a value network of the reward model's size, all fp32; the
    policy and the value network trained, each with gradients and two Adam moments. What neither accounts for
    (activations, the generation cache, allocator slack) is each peak minus the rest. ``ours_malloc_free``: what
    ours held in malloc's free lists at its highest sampled resident set (bench/profile_update.py), split out of
    that remainder; TRL's is not measured (None in its column).
    """
    model, reward = held["policy_weights"], held["reward_weights"]
    trained = held["gradients"]
    trl = {
        "weights": model + held["reference_weights"] + reward + reward,
        "gradients": trained + reward,
        "optimizer state": 2 * (trained + reward),
    }
    ours = {
        "weights": model + held["reference_weights"] + reward,
        "gradients": trained,
        "optimizer state": held["optimizer_state"],
    }
    rows = [["libraries (import floor)", ours_floor, trl_floor]]
    rows += [[k, ours[k], trl[k]] for k in ours]
    ours_rest = ours_peak - ours_floor - sum(ours.values())
    trl_rest = trl_peak - trl_floor - sum(trl.values())
    if ours_malloc_free is None:
        rows.append(["activations, generation cache, allocator slack", ours_rest, trl_rest])
    else:
        rows.append(["activations, generation cache, the rest", ours_rest - ours_malloc_free, None])
        rows.append(["freed memory malloc keeps for reuse", ours_malloc_free, None])
        rows.append(["the two above together", ours_rest, trl_rest])
    rows.append(["peak RSS", ours_peak, trl_peak])
    return rows


def ppo_135m_section(ppo: dict, profile: dict | None, summary: list[list[str]]) -> str:
    cfg = ppo["config"]
    rows = []
    for name, v in ppo["variants"].items():
        loads = [r[w]["load"] for r in v["runs"] for w in ("ours", "trl") if "load" in r[w]]
        rows.append(
            [
                variant_label(name, v),
                *ppo_cells(v, 3),
                f"{min(loads):.1f}–{max(loads):.1f}" if loads else "–",
            ]
        )
    full = ppo["variants"].get("none")
    if full:
        summary += ppo_targets(full, "at 135M (full fine-tune, fp32)", TARGET_EPS_135M, TARGET_RSS_135M)
    header = ["variant", "ours ep/s", "TRL ep/s", "ep/s ratio: median (min–max)", "ours RSS MB", "TRL RSS MB"]
    main_table = table([*header, "RSS ratio: median (min–max)", ANON_HEADER, "load (1 min)"], rows)
    origin = f"{measured_on(ppo['measured'])}.\n\n" if ppo.get("measured") else ""
    parts = [
        f"""## 1b. PPO against TRL 1.12 at SmolLM2-135M's size

{origin}`python -m bench.ppo_vs_trl --dims smollm2`: the comparison of section 1 with SmolLM2-135M's transformer
(30 layers, hidden 576, 9/3 heads, MLP 1536; random weights, this benchmark's 4096-token vocabulary: ~108M
parameters) as policy, reference and reward model (and TRL's value network). Prompts mean
{cfg["mean_prompt_tokens"]} tokens, batch {cfg["batch_size"]}, minibatch {cfg["mini_batch_size"]},
{cfg["ppo_epochs"]} PPO epochs, {cfg["response_length"]} response tokens, {cfg["threads"]} thread(s) each,
{cfg["steps"]} PPO steps per run (the first is warm-up), {cfg["rounds"]} rounds alternating which stack goes first.
bf16 = mixed precision on both sides (autocast over fp32 weights: ours `ACCELERATE_MIXED_PRECISION=bf16`, TRL
`bf16=True`).

{main_table}
"""
    ]
    if full:
        runs = [r["ours"]["phases"] for r in full["runs"]]
        keys = (*PPO_PHASES, "other", "total")
        ours = {k: statistics.median(r[k] for r in runs) for k in keys}
        trl_step = cfg["batch_size"] / statistics.median(r["trl"]["episodes_per_s"] for r in full["runs"])
        phase_rows = [[k, f"{ours[k]:.1f}", f"{100 * ours[k] / ours['total']:.0f}%"] for k in keys]
        parts.append(
            f"""**Where a step's time goes** (ours, full fine-tune fp32, median over its runs; TRL's step took
{trl_step:.1f} s). TRL runs two backward passes per minibatch (policy and value network) where ours runs one, and
one more no-grad forward per rollout (the value network); so its update should cost about twice ours, and the
episodes/s ratio approaches 2x only as far as the update dominates both steps: generation, the rollout forwards and
scoring cost both stacks about the same.

{table(["phase (ours)", "seconds", "share"], phase_rows)}
"""
        )
    if profile:
        group_rows = [[g, f"{v['s']:.2f}", f"{100 * v['share']:.1f}%"] for g, v in profile["groups"].items()]
        pc = profile["config"]
        parts.append(
            f"""**The update by profile** (`python -m bench.profile_update`: torch's profiler around the second
update of a {pc["dims"]} {pc["precision"]} run, {"full fine-tune" if pc["peft"] == "none" else "LoRA"}; self CPU
time of every operator, grouped; {profile["wall_s"]:.1f} s under the profiler). Model math (weight matmuls forward
and backward, attention, norms and activations) and the optimizer (AdamW and gradient clipping) are what it spends
its time on; "other" is the same model math's elementwise work (the RMSNorm, rotary and SwiGLU multiplies, residual
adds) and autograd's bookkeeping. Copies, casts and the loss math are the part an engine could still remove.

{table(["group", "self CPU s", "share"], group_rows)}
"""
        )
        mem = profile.get("memory")
        if mem and full and "import_floor_mb" in ppo:
            floors = ppo["import_floor_mb"]
            trl_peak = statistics.median(r["trl"]["peak_rss_mb"] for r in full["runs"])
            ours_peak = statistics.median(r["ours"]["peak_rss_mb"] for r in full["runs"])
            free = (mem.get("at_highest_rss") or {}).get("malloc_free_mb")
            rows = memory_breakdown(mem["held_mb"], floors["ours"], ours_peak, floors["trl"], trl_peak, free)
            mem_rows = [
                [what, f"{a:.0f}", "–" if b is None else f"{b:.0f}", "–" if b is None else f"{a / b:.2f}"]
                for what, a, b in rows
            ]
            parts.append(
                f"""**Where the memory goes** (full fine-tune, fp32; peaks: medians of the table above; ours' tensors
measured by bench/profile_update.py, TRL's derived from the same sizes by its design: four fp32 models, two of them
trained with gradients and two Adam moments each). Held tensors alone give ours / TRL = 6/10 model sizes = 0.6;
the libraries, activations and slack move the whole-process ratio.

{table(["what", "ours MB", "TRL MB", "ratio"], mem_rows)}
"""
            )
    return "\n".join(parts)


TARGET_GENERATION = 0.9  # issue 16: PPO's LoRA rollout generation against the merged model's


def generation_section(gen: dict, summary: list[list[str]]) -> str:
    st = gen["settings"]
    labels = {
        "lora": "PEFT model as it is",
        "folded": "PPO's sampling (adapter folded)",
        "merged": "plain model, adapter merged",
    }
    rows = []
    for name, label in labels.items():
        tps, ph = gen["tokens_per_s"][name], gen.get("phases", {}).get(name)
        ratio = gen["ratio_to_merged"].get(name)
        rows.append(
            [
                label,
                f"{tps['median']:.1f} ({tps['min']:.1f}–{tps['max']:.1f})",
                f"{ph['prefill']['median']:.0f}" if ph else "–",
                f"{ph['decode']['median']:.1f}" if ph else "–",
                fmt_ratio(ratio) if ratio else "1",
            ]
        )
    folded = gen["ratio_to_merged"]["folded"]["median"]
    summary.append(
        [
            f"LoRA rollout generation vs the merged model ({st['dims']})",
            f">= {TARGET_GENERATION}x",
            f"{folded:.2f}x",
            yes(folded >= TARGET_GENERATION),
        ]
    )
    load = gen.get("load_average", [float("nan")])[0]
    header = ["sampling", "tokens/s (min–max)", "prefill: prompt tokens/s", "decode: tokens/s", "ratio to merged"]
    return f"""## 1c. Rollout generation with a LoRA policy

`python -m bench.generation --dims {st["dims"]} --lora_layers {st["lora_layers"]}`: {st["batch"]} prompts of
{st["prompt_tokens"]} tokens, {st["new_tokens"]} new tokens each (EOS ignored), KV cache on, {gen["threads"]}
thread(s), {st["rounds"]} rounds alternating the order (load average {load:.1f} at the end). PPO samples with the
adapter folded into the weights for the call (``rlhf.ppo.models.adapter_folded``: the same function to float32
rounding, restored after); the target is a separate plain model with the adapter merged. Prefill = a call that
samples one token; decode = the rest of a full call.

{table(header, rows)}
"""


STAGE_LABEL = {"sft": "SFT", "rm": "RM", "ppo": "PPO update"}


def fmt_share(s: dict) -> str:
    if s["n"] == 1:
        return f"{100 * s['median']:.0f}%"
    return f"{100 * s['median']:.0f}% ({100 * s['min']:.0f}–{100 * s['max']:.0f}%, n={s['n']})"


def fmt_range(s: dict) -> str:
    return f"{100 * s['min']:.0f}–{100 * s['max']:.0f}% (n={s['n']})"


def run_label(r: dict) -> str:
    return f"{STAGE_LABEL[r['stage']]} {r['dtype']}{' LoRA' if r['peft'] == 'lora' else ''}"


def efficiency_section(eff: dict, summary: list[list[str]]) -> str:
    peaks = eff["matmul"]
    rows = []
    for r in eff["runs"]:
        rows_per_step = r.get("plain_rows") or (2 * r["batch"] if r["stage"] == "rm" else r["batch"])
        rows.append(
            [
                r["name"],
                r["dtype"],
                "LoRA" if r["peft"] == "lora" else "full",
                "yes" if r.get("packing") else "no",
                "on" if r.get("checkpointing") else "off",
                f"{rows_per_step} x {r['mean_width']:.0f}",
                f"{100 * r['pad_fraction']:.1f}%",
                f"{r['tokens_per_s']:.1f}",
                f"{r['plain_tokens_per_s']:.1f}" if "plain_tokens_per_s" in r else "–",
                f"**{fmt_share(r['share'])}**" if "share" in r else "–",
                fmt_range(r["step_share"]) if "step_share" in r else "–",
                f"{100 * r['fraction_of_matmul']:.1f}%" if "fraction_of_matmul" in r else "–",
            ]
        )
        if "share" in r and not r.get("checkpointing"):
            summary.append(
                [
                    f"{run_label(r)}: tokens/s share of its plain step",
                    f">= {TARGET_PLAIN_SHARE:.0%}",
                    fmt_share(r["share"]),
                    yes(r["share"]["median"] >= TARGET_PLAIN_SHARE),
                ]
            )
    by = {r["name"]: r for r in eff["runs"]}
    mm = table(
        ["dtype", "best matmul GFLOP/s", "per shape (M x K x N): GFLOP/s"],
        [
            [k, f"{v['flops'] / 1e9:.2f}", ", ".join(f"{s}: {f / 1e9:.2f}" for s, f in v["per_shape"].items())]
            for k, v in peaks.items()
        ],
    )
    notes = [f"- bf16 matmul runs at **{peaks['bf16']['flops'] / peaks['fp32']['flops']:.2f}x** the fp32 rate here."]
    padded, packed = by.get("sft-fp32-padded"), by.get("sft-fp32-packed")
    if padded and packed:
        notes.append(
            f"- Padding waste (SFT): {100 * padded['pad_fraction']:.1f}% of processed positions are padding without "
            f"packing, {100 * packed['pad_fraction']:.1f}% with `--dataset_concatenation` (packing)."
        )
    ckpt = by.get("sft-fp32-packed-ckpt")
    if ckpt and "share" in ckpt:
        notes.append(
            f"- TRL's default activation checkpointing (`sft-fp32-packed-ckpt`, turned off in every other row) keeps "
            f"{fmt_share(ckpt['share'])} of the same plain step: the forward is computed twice."
        )
    loads = ", ".join(f"{load[0]:.1f}" for load in eff.get("load_average", []))
    model, ppo = eff["model"], eff["ppo"]
    dims = model["dims"]
    header = ["run", "dtype", "params", "packing", "act. ckpt", "rows x width", "padding", "tokens/s"]
    runs_table = table([*header, "plain step tokens/s", "share of plain step", "per step", "% of matmul"], rows)
    origin = (
        f"{measured_on(eff['measured'])} by `python -m bench.efficiency` (part of `make bench BENCH_SCALE=full`; the "
        "default scale keeps this section and section 5 as they are).\n\n"
        if eff.get("measured")
        else ""
    )
    return f"""## 2. Training efficiency: each stage against its plain step

{origin}Model: SmolLM2-135M's transformer (hidden {dims["hidden_size"]}, {dims["num_hidden_layers"]} layers,
{dims["num_attention_heads"]}/{dims["num_key_value_heads"]} heads, MLP {dims["intermediate_size"]}, tied embeddings)
with this benchmark's {model["vocab_size"]}-token vocabulary, randomly initialised; `{eff["threads"]}` thread(s).
Each stage row is the real script: `sft.py` (packed rows of up to
{model["seq_len"]} tokens, batch 1; `-padded`: batch 2 without packing), `reward_modeling.py` (batch 2 pairs: 4 rows
per forward) and the update phase of `rl_training.py` (a rollout of {ppo["batch_size"]} prompts with
{ppo["response_length"]} sampled tokens, {ppo["ppo_epochs"]} epoch(s) of minibatches of {ppo["mini_batch_size"]}, one
optimizer step each; seconds from the engine's `time/ppo/update`, tokens = rows x width x epochs of each rollout),
full fine-tune unless marked LoRA (each script's default LoRA settings). fp32, and bf16 = `--bf16 True` (for PPO
`ACCELERATE_MIXED_PRECISION=bf16`): bf16 autocast over float32 master weights (the LoRA reward model keeps its
default bf16 frozen base). Both dtypes are measured the same way: {eff["steps"]} optimizer steps per run (PPO:
{ppo["steps"]} PPO steps), steady state = everything after the first. (Before issue #12 the bf16 rows were 128 tokens
wide, or one pair per batch, and timed over their first step, warm-up included: on a host with native bf16 that made
bf16 look slower than fp32.)

**Plain step** (`bench/plain_step.py`): the same model, precision, rows and row width, random tokens, a bare
forward + backward + fused AdamW, no Trainer, no engine (for PPO: the LM head on the response positions and a value
head, as the engine runs them; LoRA rows: the same adapters). It measures what the hardware gives this model; a
stage's **share** of it is what the stage keeps, on any host. The plain steps run inside the stage's process, after
each of its optimizer steps (PPO: two after each update) and with that step's shape, in the stage's dtype and in the
other; the stage's clock stops while they run. A load change on the shared CPU thus hits both sides of a share
within seconds. Share = the stage's steady tokens/s over its plain steps' (median over {eff.get("rounds", 1)} run(s)
per row); per step = the range of the same ratio step by step (each stage step against the plain steps right after
it): how much the shared CPU moved the measurement. Tokens/s counts every processed position, padding included
(the plain step has none). Load average (1 min) at the start and after each family: {loads} (other jobs shared the
2 cores).

{runs_table}

{chr(10).join(notes)}

% of matmul: model FLOPs (6 N + 12 L d s; LoRA 4 N + 12 L d s; recomputation not counted) per second over this CPU's
best `torch.matmul` rate in the dtype, measured once at the start (kept for comparison with earlier runs; the plain
step share replaces it as the target because it holds on hosts where bf16 is emulated or native alike):

{mm}

![efficiency]({plot_efficiency(eff)})
"""


def native_bf16_isa(isa: str) -> bool:
    return any(flag in isa for flag in ("avx512_bf16", "amx_bf16"))


def precision_section(eff: dict, isa: str) -> str:
    """bf16 over fp32 per stage, from section 2's runs and the sampling measurement; the default it implies."""
    ratios = eff.get("bf16_over_fp32", {})
    sampling = (eff.get("sampling") or {}).get("fp32_over_bf16_time", {})

    def training(family: str) -> dict | None:
        return ratios.get(family, {}).get("interleaved")

    evidence = {
        "sft": [("SFT full fine-tune", "sft"), ("SFT LoRA", "sft lora")],
        "rm": [("RM full fine-tune", "rm"), ("RM LoRA", "rm lora")],
        "ppo": [("PPO update", "ppo update"), ("sampling (the rollout's generation)", "generate")],
        "evaluate": [("sampling + reward scoring", "total")],
    }
    rows, decisions = [], []
    for stage, items in evidence.items():
        got = []
        for what, key in items:
            if key in sampling:
                got.append((what, sampling[key], "–"))
            elif training(key):
                raw = ratios[key]["raw"]
                got.append((what, training(key), f"{raw['median']:.2f}x ({raw['min']:.2f}–{raw['max']:.2f})"))
        if not got:
            continue
        faster = all(r["median"] > 1.0 for _, r, _ in got)
        decisions.append(f"`{stage}`: {'bf16' if faster else 'fp32'}")
        for i, (what, r, raw) in enumerate(got):
            measured = f"{r['median']:.2f}x" + (f" ({r['min']:.2f}–{r['max']:.2f}, n={r['n']})" if r["n"] > 1 else "")
            verdict = ("**yes**" if faster else "**no**") if i == 0 else ""
            rows.append([stage if i == 0 else "", what, measured, raw, verdict])
    step = ratios.get("ppo step", {}).get("raw")
    step_note = ""
    if step:
        step_note = (
            f"The whole PPO step (rollout + update, `time/ppo/total`, every forward of it in the one precision "
            f"context) ran at {step['median']:.2f}x its fp32 speed in bf16 in these runs"
        )
        step_note += ": a faster rollout does not make up for a slower update." if step["median"] < 1.0 else "."
    config = (eff.get("sampling") or {}).get("config", {})
    kind = "CPU with native bf16 (AVX512-BF16/AMX)" if native_bf16_isa(isa) else "CPU without native bf16"
    header = ["stage", "measured", "bf16 speed over fp32", "raw ratio of the two runs", "bf16 faster?"]
    return f"""## 5. Precision: is bf16 faster than fp32, per stage?

Host kind: **{kind}** ({isa}). A stage defaults to bf16 only where its bf16 run is faster than its fp32 run on this
kind of host (issue #12). Training stages (section 2's runs): share(bf16) / share(fp32) x the plain step's bf16/fp32
ratio, three quantities each measured interleaved within one process, so a load change between the fp32 and the
bf16 run does not enter; the raw ratio of the two runs' tokens/s is shown next to it. Sampling and scoring
(`bench/sampling.py`): what evaluate.py does, and what a PPO rollout does before its update: sampling
{config.get("new_tokens", "?")} tokens for {config.get("rows", "?")} prompts, then scoring them with a sequence
classifier of the same shape; fp32 time over bf16 time, the two alternated in one process. bf16 counts as faster
when every ratio of the stage is above 1.

{table(header, rows)}

Decision for this kind of host: {", ".join(decisions)}. {step_note}
"""


def scaling_section(scaling: dict, summary: list[list[str]]) -> str:
    parts = []
    for key, unit in (("batch_size", "prompt"), ("response_length", "token")):
        s = scaling[key]
        rows = [
            [p[key], f"{p['total']:.2f}", f"{p['min']:.2f}–{p['max']:.2f}" if "min" in p else "–"]
            + [f"{p[ph]:.2f}" for ph in (*PPO_PHASES, "other")]
            for p in s["points"]
        ]
        flag = "**super-linear term flagged**" if s["superlinear"] else "no super-linear term"
        fixed = ", ".join(f"{k} {v}" for k, v in s["fixed"].items())
        parts.append(
            f"**Against {key.replace('_', ' ')}** ({fixed}): slope {s['slope']:.3f} s per {unit}, intercept "
            f"{s['intercept']:.2f} s, R² {s['r2']:.3f}; fitted x² term = {100 * s['quadratic_share']:.1f}% of the "
            f"largest point's time: {flag}."
            + (
                f" {s['repeats']} runs per point; load average (1 min) {s['load']['min']:.1f}–{s['load']['max']:.1f}."
                if "load" in s
                else ""
            )
            + "\n\n"
            + table([key, "s/step", "runs min–max", *PPO_PHASES, "other"], rows)
        )
        summary.append(
            [
                f"PPO step time linear in {key.replace('_', ' ')}",
                f"R² >= {TARGET_R2}",
                f"{s['r2']:.3f}",
                yes(s["r2"] >= TARGET_R2),
            ]
        )
    length = scaling["response_length"]["points"]
    per_token = [p["generate"] / p["response_length"] for p in length]
    gen_text = (
        f"Generation alone costs {1000 * min(per_token):.1f}–{1000 * max(per_token):.1f} ms per response token "
        f"across the length sweep (flat per token: the KV cache works). A flagged x² term therefore comes from the "
        "forwards and backward over prompt + response, whose attention grows with the square of the sequence length, "
        "and from noise: four points on a shared CPU move the quadratic fit by several percent."
    )
    return f"""## 3. Scaling: PPO seconds per step

rl_training.py on the tiny Llama, full fine-tune, fixed response length (EOS ignored), minibatch
{scaling["config"]["mini_batch_size"]}, {scaling["config"]["ppo_epochs"]} PPO epochs; each point is the median of the
engine's `time/ppo/total` over the steps after the first of a {scaling["config"]["steps"]}-step run (with repeats:
the median over the point's runs, the sweep visited forward and backward in turn). A quadratic fit
flags a super-linear term when its x² part is >= 10% of the largest point's time (generation reuses the KV cache, so
none is expected from it).

{(chr(10) * 2).join(parts)}

{gen_text}

![scaling]({plot_scaling(scaling)})
"""


def breakdown_section(ppo: dict) -> str:
    runs = [r["ours"]["phases"] for r in ppo["variants"].get("none", {}).get("runs", [])]
    if not runs:
        return ""
    keys = (*PPO_PHASES, "other", "total")
    med = {k: statistics.median(r[k] for r in runs) for k in keys}
    rows = [[k, f"{med[k]:.2f}", f"{100 * med[k] / med['total']:.0f}%"] for k in keys]
    cfg = ppo["config"]
    return f"""## 4. One PPO step by phase

The engine's own timers (`time/ppo/*` in metrics.jsonl), median over the full-fine-tune runs of section 1 (batch
{cfg["batch_size"]}, {cfg["response_length"]} response tokens, {cfg["ppo_epochs"]} epochs of
{cfg["batch_size"] // cfg["mini_batch_size"]} minibatches): generate = sampling, policy_forward = old log-probs and
values, reference = reference log-probs, score = reward model, update = the PPO epochs (forward, backward, optimizer).

{table(["phase", "seconds", "share"], rows)}
"""


def kept_note(sections: list[str]) -> str:
    """The header's line on sections this run did not measure and kept as their own runs wrote them."""
    return (
        f"Sections {', '.join(sections)} were not measured at this run's scale: they are kept as their own runs wrote "
        "them (`make bench BENCH_SCALE=full`, `python -m bench.efficiency`, `python -m bench.ppo_vs_trl --dims "
        "smollm2`), each with its date and host."
    )


def kept_target(what: str, wanted: str, section: str) -> list[str]:
    return [what, wanted, f"section {section}, kept from its own run", "–"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=None, help="total make bench duration to report")
    parser.add_argument("--scale", default=None, help="the BENCH_SCALE the run used, named in the header")
    args = parser.parse_args(argv)
    ppo, eff, scaling = load_json("ppo_vs_trl"), load_json("efficiency"), load_json("scaling")
    ppo_135m, profile = load_json("ppo_vs_trl_smollm2"), load_json("profile_update")
    generation = load_json("generation")
    path = ROOT / "BENCHMARKS.md"
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    info = machine()
    info["threads"] = f"{os.environ.get('OMP_NUM_THREADS', info['threads'])} per benchmark process (OMP_NUM_THREADS)"
    info["load average at report time"] = "{:.1f} / {:.1f} / {:.1f} (1/5/15 min; the cores are shared)".format(
        *os.getloadavg()
    )
    summary: list[list[str]] = []
    sections = []
    if ppo:
        sections.append(ppo_section(ppo, summary))
    kept: list[str] = []  # the sections this run did not measure and keeps from the BENCHMARKS.md in place
    kept_135m = None if ppo_135m else extract_block(old, "ppo135m")
    if ppo_135m:
        sections.append(marked("ppo135m", ppo_135m_section(ppo_135m, profile, summary)))
    elif kept_135m:
        sections.append(kept_135m)
        kept.append("1b")
        what = "PPO vs TRL 1.12 at 135M (full fine-tune, fp32)"
        summary.append(kept_target(what, f">= {TARGET_EPS_135M}x episodes/s, <= {TARGET_RSS_135M}x RSS", "1b"))
    if generation:
        sections.append(generation_section(generation, summary))
    if eff:
        efficiency = marked("efficiency", efficiency_section(eff, summary))
        precision = marked("precision", precision_section(eff, info["isa"]))
    else:
        efficiency, precision = extract_block(old, "efficiency"), extract_block(old, "precision")
        kept += ["2"] if efficiency else []
        kept += ["5"] if precision else []
        if efficiency:
            what = "each stage's tokens/s share of its plain step (issues #6, #12)"
            summary.append(kept_target(what, f">= {TARGET_PLAIN_SHARE:.0%}", "2"))
    sections += [efficiency] if efficiency else []
    if scaling:
        sections.append(scaling_section(scaling, summary))
    if ppo:
        sections.append(breakdown_section(ppo))
    sections += [precision] if precision else []
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    took = f" in {args.seconds / 60:.1f} minutes" if args.seconds else ""
    scale = f" (`BENCH_SCALE={args.scale}`)" if args.scale else ""
    note = f"\n\n{kept_note(kept)}" if kept else ""
    text = f"""# Benchmarks

Generated by `make bench`{scale} on {when}{took}; rerun it to regenerate this file and the plots in `bench/plots/`.
Timings on a shared CPU are noisy: absolute seconds mean little, which is why comparisons are ratios of runs
alternated in one session.{note}

## Machine

{table(["", ""], [[k, v] for k, v in info.items()])}

## Targets (issues #6, #12 and #16)

{table(["target", "wanted", "measured", ""], summary)}

{(chr(10) * 2).join(sections)}"""
    learned = extract_block(old, learning.BLOCK)  # written by `make bench-learning`, not by this run
    if learned:
        text = replace_block(text, learning.BLOCK, learned)
    path.write_text(text.rstrip() + "\n", encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
