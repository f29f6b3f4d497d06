"""Write ``<run>/report.md`` with PNG plots from a pipeline run's outputs (sft/, rm/, ppo/, eval/); without
matplotlib the plots are tables.

    python -m rlhf.pipeline.report --run out/demo

Every section is drawn from files the stages wrote; a missing stage is reported as missing, never invented.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def _member_label(seed: int | str | None) -> str:
    """A curve's suffix for one member of an averaged reward model: its seed, or its folder where that is unknown."""
    if seed is None:
        return ""
    return f" (seed {seed})" if isinstance(seed, int) else f" ({seed})"


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _pyplot() -> Any:
    """matplotlib's pyplot (headless), or None when matplotlib is not installed: the report then shows tables."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt

    return plt


NO_MATPLOTLIB = "matplotlib is not installed (`pip install matplotlib`): plots are shown as tables."
TABLE_ROWS = 20  # a series longer than this is shown at evenly spaced points, the last one included


def _plot(
    path: Path, series: dict[str, tuple[list[float], list[float]]], title: str, xlabel: str, alt: str
) -> list[str]:
    """One small figure per quantity, as a markdown image line, or a table of the values without matplotlib; no
    lines when there is nothing to draw."""
    series = {k: v for k, v in series.items() if v[0]}
    if not series:
        return []
    plt = _pyplot()
    if plt is None:
        return _table(series, xlabel)
    fig, axes = plt.subplots(1, len(series), figsize=(4 * len(series), 3), squeeze=False)
    for ax, (name, (xs, ys)) in zip(axes[0], series.items(), strict=True):
        ax.plot(xs, ys, marker="." if len(xs) < 50 else None)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [f"![{alt}]({path.name})", ""]


def _table(series: dict[str, tuple[list[float], list[float]]], xlabel: str) -> list[str]:
    """The series as one markdown table keyed by their x values (they share them: steps)."""
    columns = list(series)
    by_x: dict[Any, dict[str, float]] = {}
    for name, (xs, ys) in series.items():
        for x, y in zip(xs, ys, strict=True):
            by_x.setdefault(x, {})[name] = y
    xs = sorted(by_x)
    if len(xs) > TABLE_ROWS:
        xs = [xs[round(i * (len(xs) - 1) / (TABLE_ROWS - 1))] for i in range(TABLE_ROWS)]
    lines = [f"| {xlabel} | {' | '.join(columns)} |", "|" + "---|" * (len(columns) + 1)]
    for x in xs:
        lines.append(f"| {x} | {' | '.join(_fmt(by_x[x].get(c, '')) for c in columns)} |")
    return [*lines, ""]


def _histogram(path: Path, values: list[float], title: str, alt: str) -> list[str]:
    if not values:
        return []
    plt = _pyplot()
    if plt is None:
        ordered = sorted(values)
        quantiles = {q: ordered[round(q * (len(ordered) - 1))] for q in (0.0, 0.25, 0.5, 0.75, 1.0)}
        positive = sum(v > 0 for v in values) / len(values)
        return [
            f"{title}: | min | 25% | median | 75% | max | share > 0 |",
            "|---|---|---|---|---|---|",
            "| " + " | ".join(_fmt(float(v)) for v in quantiles.values()) + f" | {_fmt(positive)} |",
            "",
        ]
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.hist(values, bins=30)
    ax.axvline(0.0, color="black", linewidth=1)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("reward(chosen) - reward(rejected)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [f"![{alt}]({path.name})", ""]


def _gain(gain: dict) -> str:
    return f"{gain['gain']:+.3f} ({gain['ci_low']:+.3f} to {gain['ci_high']:+.3f})"


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _content_and_form(heldout: dict) -> str:
    """The held-out accuracy apart for pairs that differ in a word or two (content) and the others (form), when the
    evaluation split them and both kinds exist."""
    content, form = heldout.get("content"), heldout.get("form")
    if not (content and form):
        return ""
    return (
        f"; pairs that differ in one or two words (content): {content['accuracy']:.3f}, mean margin "
        f"{content['margin_mean']:.3f} ({content['pairs']}); the others (form): {form['accuracy']:.3f}, mean "
        f"margin {form['margin_mean']:.3f} ({form['pairs']})"
    )


def build_report(run: Path) -> Path:
    lines = [f"# RLHF run report: `{run}`", ""]
    if _pyplot() is None:
        lines += [NO_MATPLOTLIB, ""]

    # SFT
    lines += ["## 1. SFT", ""]
    history = [r for r in _jsonl(run / "sft" / "log_history.jsonl") if "loss" in r]
    lines += _plot(
        run / "sft_loss.png",
        {"train loss": ([r["step"] for r in history], [r["loss"] for r in history])},
        "SFT",
        "step",
        alt="SFT loss",
    ) or ["No SFT loss history found.", ""]

    # Reward model
    lines += ["## 2. Reward model", ""]
    rm = _json(run / "rm" / "metrics.json")
    if rm and "heldout" in rm:
        h = rm["heldout"]
        lines += [
            f"Held-out ({h['split']}, {h['pairs']} pairs): strict accuracy **{h['accuracy']:.3f}** (ties count "
            f"as wrong), tie rate {h['tie_rate']:.3f}, mean margin {h['margin_mean']:.3f}{_content_and_form(h)}.",
            "",
        ]
        seeds = ", ".join(str(m.get("seed")) for m in rm.get("members", []))
        if rm.get("average_seeds", 1) > 1:
            lines += [f"The weight average of {rm['average_seeds']} runs (seeds {seeds}; `--average_seeds`).", ""]
        elif rm.get("average_members"):
            folders = ", ".join(f"`{folder}`" for folder in rm["average_members"])
            count = len(rm["average_members"])
            lines += [
                f"The weight average of {count} runs trained apart (seeds {seeds}; `--average_members` {folders}).",
                "",
            ]
    rm_history = [r for r in _jsonl(run / "rm" / "log_history.jsonl") if "accuracy" in r and "loss" in r]
    curves = {}
    for seed in dict.fromkeys(r.get("seed") for r in rm_history):  # an averaged model: one curve per member
        rows, which = [r for r in rm_history if r.get("seed") == seed], _member_label(seed)
        curves[f"train accuracy{which}"] = ([r["step"] for r in rows], [r["accuracy"] for r in rows])
        curves[f"train loss{which}"] = ([r["step"] for r in rows], [r["loss"] for r in rows])
    lines += _plot(
        run / "rm_training.png",
        curves,
        "Reward model",
        "step",
        alt="RM training",
    )
    margins = _json(run / "eval" / "margins.json") or {}
    lines += _histogram(
        run / "rm_margins.png", margins.get("rm", []), "held-out margins of the reward model", alt="RM margins"
    )

    # PPO
    lines += ["## 3. PPO", ""]
    steps = _jsonl(run / "ppo" / "metrics.jsonl")
    xs = [r["step"] for r in steps]
    keys = {
        "reward (objective/scores)": "objective/scores",
        "KL (objective/kl)": "objective/kl",
        "entropy per token": "objective/token_entropy",
        "response length": "tokens/responses_len_mean",
    }
    drawn = _plot(
        run / "ppo.png",
        {label: (xs, [r.get(key, float("nan")) for r in steps]) for label, key in keys.items()},
        "PPO per step",
        "step",
        alt="PPO",
    )
    if drawn:
        lines += drawn
        last = steps[-1]
        lines += [
            f"{len(steps)} steps; last step: reward {last['objective/scores']:.3f}, KL "
            f"{last['objective/kl']:.3f}, {last.get('time/ppo/total', float('nan')):.1f} s/step.",
            "",
        ]
    else:
        lines += ["No PPO metrics found.", ""]

    # Evaluation
    lines += ["## 4. Evaluation on held-out prompts", ""]
    ev = _json(run / "eval" / "evaluation.json")
    if ev:
        judges = [k.removeprefix("win_rate_") for k in ev if k.startswith("win_rate_")]
        lines += ["| metric | SFT | PPO |", "|---|---|---|"]
        for judge in judges:
            lines.append(
                f"| mean reward ({judge}) | {_fmt(ev['sft'][f'reward_mean_{judge}'])} | "
                f"{_fmt(ev['ppo'][f'reward_mean_{judge}'])} |"
            )
        if ev.get("gold"):  # ground truth next to the reward models' opinion: rewards can rise while answers get worse
            g = ev["gold"]
            lines.append(
                f"| gold accuracy ({g['rows']} prompts with ground truth) | {_fmt(g['sft'])} | {_fmt(g['ppo'])} |"
            )
            gain = g.get("gain")  # absent in evaluations written before it existed
            if gain:
                lines.append(f"| gold gain of PPO over SFT, same prompts (95% CI) | | {_gain(gain)} |")
            for kind, part in g.get("kinds", {}).items():  # where the data names kinds of question
                lines.append(
                    f"| gold accuracy, {kind} ({part['rows']} prompts) | {_fmt(part['sft'])} | {_fmt(part['ppo'])}, "
                    f"gain {_gain(part['gain'])} |"
                )
        lines.append(
            f"| mean response length (tokens) | {_fmt(ev['sft']['length_mean'])} | {_fmt(ev['ppo']['length_mean'])} |"
        )
        lines.append(f"| EOS rate | {_fmt(ev['sft']['eos_rate'])} | {_fmt(ev['ppo']['eos_rate'])} |")
        lines.append("")
        for judge in judges:
            w = ev[f"win_rate_{judge}"]
            k = w.get("samples_per_prompt", 1)  # several responses per prompt: every PPO one against every SFT one
            n = f"n={w['n']}" if k == 1 else f"n={w['n']} prompts, {k}×{k} response pairs each"
            lines.append(
                f"- PPO win rate over SFT under **{judge}**: {w['win_rate']:.3f} "
                f"(95% CI {w['ci_low']:.3f}–{w['ci_high']:.3f}, {n}, ties {w['ties']})"
            )
        agree = ev.get("judge_agreement")  # absent with one judge, and in evaluations written before it existed
        if agree and agree["pairs"]:
            first, second = agree["judges"]
            lines.append(
                f"- {first} and {second} pick the same winner in {agree['agreement']:.3f} of these response pairs "
                f"({agree['pairs']} that neither ties): {second} can confirm what PPO learned from {first} only as "
                "far as they agree"
            )
        lines.append(f"- KL(PPO ‖ SFT): {ev['kl_ppo_sft']['mean']:.3f} nats per response (mean)")
        for judge in judges:
            h = ev.get(f"{judge}_heldout")
            if h:
                lines.append(
                    f"- {judge} on held-out pairs: strict accuracy {h['accuracy']:.3f}, tie rate "
                    f"{h['tie_rate']:.3f}, mean margin {h['margin_mean']:.3f} ({h['pairs']} pairs)"
                    + _content_and_form(h)
                )
        lines.append("")
        for warning in ev.get("warnings", []):
            lines += [f"**Warning: {warning}**", ""]
        samples = [s for s in _jsonl(run / "eval" / "samples.jsonl") if not s.get("sample")][:5]  # one per prompt
        if samples:
            lines += ["### Samples", ""]
            for s in samples:
                lines += [
                    f"**Q:** {s['question']}",
                    "",
                    f"- SFT ({_fmt(s.get('rm_sft'))}): {s['sft']!r}",
                    f"- PPO ({_fmt(s.get('rm_ppo'))}): {s['ppo']!r}",
                    "",
                ]
    else:
        lines += ["No evaluation found.", ""]

    path = run / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlhf.pipeline.report", description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="pipeline output folder (holding sft/, rm/, ppo/, eval/)")
    args = parser.parse_args(argv)
    run = Path(args.run)
    if not run.is_dir():
        print(f"error: --run {run}: no such folder", file=sys.stderr)
        return 2
    print(f"report: {build_report(run)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
