"""The pure logic of bench/: the line fit and R², the super-linear flag, the FLOP counts, token counting, and the
plain-step accounting (positions per step, steady rates, the shape a stage's plain step copies, PPO update tokens)."""

from __future__ import annotations

import math
import random
import sys

import pytest
import torch

from bench.common import (
    ROOT,
    SMOLLM2_135M,
    linear_fit,
    lora_training_flops_per_token,
    ppo_phases,
    quadratic_share,
    ratio_summary,
    run_measured,
    training_flops_per_token,
)
from bench.efficiency import bf16_speedup_estimate, matmul_params, plain_rates, ppo_update_rate, steady_rate
from bench.plain_step import plain_step_positions
from bench.timed_ppo import ppo_update_positions
from bench.timed_train import batch_counts


def test_linear_fit_recovers_an_exact_line_with_r2_one():
    xs = [4.0, 8.0, 12.0, 16.0]
    fit = linear_fit(xs, [0.5 + 0.25 * x for x in xs])
    assert fit.slope == pytest.approx(0.25)
    assert fit.intercept == pytest.approx(0.5)
    assert fit.r2 == pytest.approx(1.0)


def test_linear_fit_matches_numpy_on_noisy_points():
    rng = random.Random(0)
    xs = [float(x) for x in range(1, 9)]
    ys = [2.0 * x + rng.gauss(0, 1.5) for x in xs]
    fit = linear_fit(xs, ys)
    slope, intercept = torch.linalg.lstsq(
        torch.tensor([[x, 1.0] for x in xs], dtype=torch.float64), torch.tensor(ys, dtype=torch.float64)[:, None]
    ).solution.flatten()
    assert fit.slope == pytest.approx(float(slope))
    assert fit.intercept == pytest.approx(float(intercept))
    predicted = [fit.intercept + fit.slope * x for x in xs]
    mean = sum(ys) / len(ys)
    r2 = 1 - sum((y - p) ** 2 for y, p in zip(ys, predicted, strict=True)) / sum((y - mean) ** 2 for y in ys)
    assert fit.r2 == pytest.approx(r2)
    assert 0.5 < fit.r2 < 1.0  # noisy: a good line, not a perfect one


def test_linear_fit_on_a_parabola_falls_below_the_target_and_is_flagged_super_linear():
    xs = [16.0, 32.0, 48.0, 64.0, 128.0]
    quadratic = [0.01 * x * x for x in xs]
    assert linear_fit(xs, quadratic).r2 < 0.98
    assert quadratic_share(xs, quadratic) == pytest.approx(1.0)
    linear = [1.0 + 0.1 * x for x in xs]
    assert abs(quadratic_share(xs, linear)) < 1e-9


def test_linear_fit_rejects_degenerate_input():
    with pytest.raises(ValueError):
        linear_fit([1.0], [2.0])
    with pytest.raises(ValueError):
        linear_fit([3.0, 3.0], [1.0, 2.0])


def test_flop_counts_for_the_smollm2_shaped_model():
    config = {**SMOLLM2_135M, "vocab_size": 49152}
    # SmolLM2-135M: 30 blocks of q/o 576x576, k/v 576x192, MLP 3 x 576x1536, plus the tied LM head 576x49152.
    block = 2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536
    assert matmul_params(config, reward=False) == 30 * block + 576 * 49152
    assert matmul_params(config, reward=True) == 30 * block + 576  # a 1-unit score head, no LM head
    n = matmul_params(config, reward=False)
    assert math.isclose(n / 1e6, 134.5, rel_tol=0.01)  # the published size (its embedding is the tied head)
    full = training_flops_per_token(n, 30, 576, 256)
    assert full == 6 * n + 12 * 30 * 576 * 256
    lora = lora_training_flops_per_token(n, 30, 576, 256)
    assert full - lora == 2 * n  # no weight gradients for frozen weights


def test_batch_counts_reads_masks_and_pad_ids():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    padded = {"input_ids": torch.zeros(2, 4, dtype=torch.long), "attention_mask": mask, "labels": torch.zeros(2, 4)}
    assert batch_counts(padded, pad_token_id=0) == {"positions": 8, "pads": 3, "width": 4, "rows": 2}
    # A padding-free (packed) batch has no mask: pads are the pad id.
    packed = {"input_ids": torch.tensor([[5, 6, 7, 9, 9]]), "position_ids": torch.tensor([[0, 1, 2, 0, 1]])}
    assert batch_counts(packed, pad_token_id=9) == {"positions": 5, "pads": 2, "width": 5, "rows": 1}
    # A reward batch: chosen and rejected both count.
    pair = {
        "chosen_input_ids": torch.ones(2, 3, dtype=torch.long),
        "chosen_attention_mask": torch.tensor([[1, 1, 1], [1, 0, 0]]),
        "rejected_input_ids": torch.ones(2, 5, dtype=torch.long),
        "rejected_attention_mask": torch.ones(2, 5, dtype=torch.long),
    }
    assert batch_counts(pair, pad_token_id=0) == {"positions": 16, "pads": 2, "width": 5, "rows": 4}


def test_ppo_phases_skip_the_warm_up_step_and_account_for_the_rest():
    rows = [
        {"time/ppo/total": 9.0, "time/ppo/generate": 5.0, "time/ppo/update": 4.0},  # warm-up: ignored
        {"time/ppo/total": 3.0, "time/ppo/generate": 1.0, "time/ppo/update": 1.5},
        {"time/ppo/total": 3.2, "time/ppo/generate": 1.2, "time/ppo/update": 1.7},
        {"time/ppo/total": 3.1, "time/ppo/generate": 1.1, "time/ppo/update": 1.6},
    ]
    got = ppo_phases(rows)
    assert got["total"] == pytest.approx(3.1)
    assert got["generate"] == pytest.approx(1.1)
    assert got["reference"] == 0.0
    assert got["other"] == pytest.approx(3.1 - 1.1 - 1.6)


def test_ratio_summary():
    assert ratio_summary([1.4, 1.6, 1.5]) == {"median": 1.5, "min": 1.4, "max": 1.6, "n": 3}


def test_steady_rate_leaves_out_the_warm_up_step():
    record = {
        "steps": [
            {"positions": 100, "pads": 0, "width": 100},  # warm-up: neither its positions nor its time count
            {"positions": 90, "pads": 9, "width": 45},
            {"positions": 110, "pads": 11, "width": 55},
        ],
        "step_starts": [0.0, 10.0, 12.0],
        "step_ends": [10.0, 12.0, 14.0],
    }
    got = steady_rate(record)
    assert got["tokens_per_s"] == pytest.approx(200 / 4.0)
    assert got["pad_fraction"] == pytest.approx(0.1)
    assert got["mean_width"] == pytest.approx(50.0)
    assert got["steps_measured"] == 2
    with pytest.raises(ValueError):  # one step would time the warm-up
        steady_rate({"steps": record["steps"][:1], "step_starts": [0.0], "step_ends": [10.0]})


def test_steady_rate_leaves_the_interleaved_plain_steps_out_of_the_stage_time():
    # step 0 ends at 10, plain steps run until 13; step 1 ends at 15 (2 s of stage), plain until 18; step 2 ends at 21.
    record = {
        "steps": [{"positions": 100, "pads": 0, "width": 100}] * 3,
        "step_starts": [0.0, 13.0, 18.0],
        "step_ends": [10.0, 15.0, 21.0],
        "step_resumes": [13.0, 18.0, 21.0],
    }
    got = steady_rate(record)
    assert got["seconds"] == pytest.approx(2.0 + 3.0)
    assert got["tokens_per_s"] == pytest.approx(200 / 5.0)


def test_plain_step_positions_and_rates():
    assert plain_step_positions("causal", 1, 256) == 256
    assert plain_step_positions("reward", 4, 60) == 240
    assert plain_step_positions("ppo", 2, 75) == 150
    with pytest.raises(ValueError):
        plain_step_positions("reward", 3, 60)  # chosen and rejected come in pairs
    with pytest.raises(ValueError):
        plain_step_positions("dpo", 2, 10)
    plain = {
        "fp32": [{"positions": 256, "seconds": 2.0}, {"positions": 200, "seconds": 2.0}],
        "bf16": [{"positions": 256, "seconds": 1.0}, {"positions": 200, "seconds": 1.0}],
    }
    assert plain_rates(plain) == {"fp32": pytest.approx(456 / 4.0), "bf16": pytest.approx(456 / 2.0)}


def test_bf16_speedup_estimate_from_shares_and_the_plain_ratio():
    # The plain step runs 2x faster in bf16 in both processes; the stage keeps 90% of it in fp32, 60% in bf16:
    # the stage's own bf16 speed-up is 2 x 0.6 / 0.9.
    fp32 = {"share": 0.9, "plain_bf16_over_fp32": 2.0}
    bf16 = {"share": 0.6, "plain_bf16_over_fp32": 2.0}
    assert bf16_speedup_estimate(fp32, bf16) == pytest.approx(2.0 * 0.6 / 0.9)
    # Plain ratios that differ between the runs are averaged geometrically (neither run is preferred).
    assert bf16_speedup_estimate({**fp32, "plain_bf16_over_fp32": 1.0}, {**bf16, "plain_bf16_over_fp32": 4.0}) == (
        pytest.approx(2.0 * 0.6 / 0.9)
    )


def test_ppo_update_tokens_come_from_rows_width_epochs_and_the_engine_timer():
    assert ppo_update_positions(8, 72, 4) == 8 * 72 * 4
    with pytest.raises(ValueError):
        ppo_update_positions(8, 0, 4)
    metrics = [
        {"time/ppo/update": 30.0, "time/ppo/total": 40.0, "ppo/early_stopped": 0.0},  # warm-up step
        {"time/ppo/update": 8.0, "time/ppo/total": 15.0, "ppo/early_stopped": 0.0},
        {"time/ppo/update": 10.0, "time/ppo/total": 17.0, "ppo/early_stopped": 0.0},
    ]
    updates = [{"rows": 8, "width": w, "epochs": 2, "pads": p} for w, p in ((70, 50), (80, 64), (72, 48))]
    got = ppo_update_rate(metrics, updates)
    assert got["positions"] == 8 * 80 * 2 + 8 * 72 * 2
    assert got["tokens_per_s"] == pytest.approx(got["positions"] / 18.0)
    assert got["pad_fraction"] == pytest.approx((64 + 48) * 2 / got["positions"])
    assert got["mean_width"] == pytest.approx(76.0)
    assert got["step_s"] == pytest.approx(16.0)
    stopped = [*metrics[:2], {**metrics[2], "ppo/early_stopped": 1.0}]
    with pytest.raises(ValueError, match="early"):  # an early stop trains fewer positions than rows x width x epochs
        ppo_update_rate(stopped, updates)


def test_precision_section_defaults_a_stage_to_bf16_only_where_every_measurement_says_faster():
    from bench.report import precision_section

    def r(median):
        return {"median": median, "min": median - 0.1, "max": median + 0.1, "n": 2}

    def both(median):
        return {"interleaved": r(median), "raw": r(median + 0.05)}

    eff = {
        "bf16_over_fp32": {
            "sft": both(1.5),
            "sft lora": both(1.3),
            "rm": both(1.4),
            "rm lora": both(0.9),
            "ppo update": both(1.2),
        },
        "sampling": {
            "config": {"rows": 8, "new_tokens": 32},
            "fp32_over_bf16_time": {"generate": r(1.8), "total": r(0.8)},
        },
    }
    text = precision_section(eff, "avx2, avx512f, avx512_bf16, amx_bf16")
    assert "`sft`: bf16, `rm`: fp32, `ppo`: bf16, `evaluate`: fp32" in text
    assert "CPU with native bf16" in text
    assert "CPU without native bf16" in precision_section(eff, "avx2")


def test_step_shares_pair_each_measured_step_with_the_plain_steps_after_it():
    from bench.efficiency import step_shares

    # Three stage steps (the first is warm-up, unmeasured), two plain steps after each, same shape as the step.
    plain = [{"positions": 100, "seconds": s} for s in (9.0, 9.0, 1.0, 1.0, 2.0, 2.0)]
    assert step_shares([2.0, 2.0], [100, 100], plain) == [pytest.approx(0.5), pytest.approx(1.0)]
    with pytest.raises(ValueError):
        step_shares([2.0, 2.0], [100, 100], plain[:5])


def _evaluation(win: float, low: float, gold: tuple[float, float] | None, kl: float, eos: float) -> dict:
    ev = {
        "win_rate_rm": {"win_rate": 0.5, "ci_low": 0.4, "ci_high": 0.6, "n": 128, "ties": 0},
        "judge_agreement": {"judges": ["rm", "rm2"], "agreement": 0.8125, "pairs": 120},
        "win_rate_rm2": {"win_rate": win, "ci_low": low, "ci_high": min(1.0, win + 0.08), "n": 128, "ties": 1},
        "kl_ppo_sft": {"mean": kl, "max": 9.0},
        "sft": {"eos_rate": 0.9},
        "ppo": {"eos_rate": eos},
    }
    if gold:
        gain = {"gain": gold[1] - gold[0], "ci_low": gold[1] - gold[0] - 0.1, "ci_high": gold[1] - gold[0] + 0.1}
        ev["gold"] = {"rows": 80, "sft": gold[0], "ppo": gold[1], "gain": gain}
    return ev


def test_learning_table_reads_the_held_out_judge_and_shows_the_worst_seed():
    from bench.learning import section, seed_row, table, worst

    rows = [
        seed_row(0, _evaluation(0.78, 0.70, (0.50, 0.55), 3.1, 0.97)),
        seed_row(1, _evaluation(0.66, 0.58, (0.52, 0.50), 4.2, 1.00)),
        seed_row(2, _evaluation(0.81, 0.73, (0.48, 0.60), 2.5, 0.95)),
    ]
    assert rows[0]["judge"] == "rm2" and rows[0]["win_rate"] == 0.78  # rm2, not the trained rm (0.5)
    w = worst(rows)
    assert w == {"win_rate": 0.66, "ci_low": 0.58, "gold_gain": pytest.approx(-0.02), "kl": 4.2, "eos_ppo": 0.95}
    text = table(rows)
    assert (
        "| 1 | 0.660 (0.580–0.740, n=128, 1) | 0.500 · 0.81 | 0.520 → 0.500 (80 prompts; gain -0.020, -0.120 to "
        "+0.080) | 4.20 | 1.000 |"
    ) in text
    assert "| **worst** | **0.660** (lowest CI bound 0.580) | | -0.020 (smallest gain) | 4.20 | 0.950 |" in text
    assert rows[0]["gold_kinds"] is None  # the data named no kinds of question
    kinds = {"arithmetic": {"rows": 40, "sft": 0.3, "ppo": 0.25, "gain": {"gain": -0.05}}}
    with_kinds = _evaluation(0.7, 0.6, (0.5, 0.55), 1.0, 1.0)
    with_kinds["gold"]["kinds"] = kinds
    assert seed_row(6, with_kinds)["gold_kinds"] == kinds  # kept in learning.json
    no_gold = seed_row(3, _evaluation(0.7, 0.6, None, 1.0, 1.0))
    assert worst([no_gold])["gold_gain"] is None and "| 3 | 0.700" in table([no_gold])
    # an evaluation with 4 responses per prompt (--eval_samples 4), and one written before the gain existed
    ev = _evaluation(0.64, 0.6, (0.4, 0.45), 2.0, 1.0)
    ev["win_rate_rm2"]["samples_per_prompt"] = 4
    del ev["gold"]["gain"], ev["judge_agreement"]
    assert "| 4 | 0.640 (0.600–0.720, n=128×4, 1) | 0.500 · – | 0.400 → 0.450 (80 prompts) | 2.00 |" in table(
        [seed_row(4, ev)]
    )
    # one judge only: rm's own win rate is the table's, nothing to compare it with
    one = {k: v for k, v in ev.items() if k != "win_rate_rm2"}
    assert "| 5 | 0.500 (0.400–0.600, n=128, 0) | – | 0.400" in table([seed_row(5, one)])
    run = {"when": "now", "minutes": 1.0, "host": "cpu", "load": "0", "config": "c.json"}
    assert "prompts, 4 responses per prompt and policy, every PPO" in section({**run, "seeds": [seed_row(4, ev)]})
    assert "prompts, one response per prompt and policy, ties" in section({**run, "seeds": rows})


def test_learning_seed_commands_keep_the_configs_evaluation_draws_unless_overridden(tmp_path):
    """Each seed's evaluation parses (through evaluate.py's own parser) to the demo config's responses per prompt,
    this seed's PPO policy, folder and sampling seed; --eval_samples replaces the config's count."""
    from bench.learning import seed_commands
    from rlhf.cli import parse_arguments
    from rlhf.pipeline.config import load_config
    from rlhf.pipeline.stages import build_stages
    from rlhf.scripts.evaluate import EvalArguments, EvalDataArguments, HubArguments, LoadArguments, PrecisionArguments

    config = load_config(str(ROOT / "configs" / "demo.json"), {"output": str(tmp_path / "demo")})
    stages = {s.name: s for s in build_stages(config)}
    folder = tmp_path / "demo" / "seeds" / "seed_2"

    def evaluation(eval_samples):
        ppo, ev = seed_commands(stages["ppo"].argv, stages["eval"].argv, folder, 2, eval_samples)
        assert ppo[-4:] == ["--output_dir", str(folder / "ppo"), "--seed", "2"]
        assert ev[:3] == stages["eval"].argv[:3] and ev[1:3] == ["-m", "rlhf.scripts.evaluate"]
        types = (EvalArguments, EvalDataArguments, LoadArguments, HubArguments, PrecisionArguments)
        args, *_ = parse_arguments(types, ev[3:])
        assert (args.ppo_model, args.output_dir, args.seed) == (str(folder / "ppo" / "final"), str(folder / "eval"), 2)
        return args.samples_per_prompt

    assert "--samples_per_prompt" in config["eval"]  # the demo draws several responses per prompt
    assert evaluation(None) == int(config["eval"][config["eval"].index("--samples_per_prompt") + 1]) == 2
    assert evaluation(4) == 4 and evaluation(1) == 1


def test_learning_publishes_only_the_demo_configs_table(tmp_path, monkeypatch):
    """BENCHMARKS.md's Learning section is the demo config's: a copy pointing at other data keeps its numbers in its
    own output folder (the section would otherwise be overwritten by a run on unseen data), unless asked."""
    from bench.common import OUT
    from bench.learning import destinations

    monkeypatch.chdir(tmp_path)  # a relative --config resolves from where the command runs
    (tmp_path / "configs").mkdir()
    copy = tmp_path / "configs" / "demo.json"  # the same file name elsewhere is another config
    copy.write_text((ROOT / "configs" / "demo.json").read_text(encoding="utf-8"), encoding="utf-8")
    out = tmp_path / "out" / "unseen"
    assert destinations(str(ROOT / "configs" / "demo.json"), out) == (OUT / "learning.json", ROOT / "BENCHMARKS.md")
    assert destinations("configs/demo.json", out) == (out / "learning.json", None)
    assert destinations(str(copy), out, benchmarks_md=True) == (OUT / "learning.json", ROOT / "BENCHMARKS.md")


def test_a_marked_section_of_benchmarks_md_is_replaced_alone_and_kept_by_name():
    from bench.common import extract_block, marked, replace_block

    old = f"# Benchmarks\n\nintro\n\n{marked('learning', 'old table')}\n\n{marked('efficiency', 'eff')}\n## After\n"
    new = marked("learning", "new table")
    text = replace_block(old, "learning", new)
    assert "new table" in text and "old table" not in text and text.endswith("## After\n") and "intro" in text
    assert extract_block(text, "learning") == new
    assert extract_block(text, "efficiency") == "<!-- efficiency:start -->\neff\n<!-- efficiency:end -->"
    appended = replace_block("# Benchmarks\n", "learning", new)
    assert appended == f"# Benchmarks\n\n{new}\n" and extract_block("# Benchmarks\n", "learning") is None
    # an end marker before the start (or none after it) is no section
    assert extract_block("<!-- x:end --> <!-- x:start --> body", "x") is None


def test_profile_groups_put_each_operator_in_one_group_and_shares_sum_to_one():
    from bench.profile_update import group_of, summarize

    assert group_of("aten::mm") == "weight matmuls"
    assert group_of("aten::_fused_adam_") == "optimizer"
    assert group_of("aten::_scaled_dot_product_flash_attention_for_cpu_backward") == "attention"
    assert group_of("aten::silu_backward") == "norm and activations"
    assert group_of("aten::log_softmax") == "log-probs and losses"
    assert group_of("aten::_to_copy") == "copies and casts"
    assert group_of("aten::mul") == "other" and group_of("aten::mul_") == "optimizer"  # clipping scales in place
    got = summarize([("aten::mm", 6.0, 10), ("aten::_fused_adam_", 1.0, 2), ("aten::mul", 3.0, 7)], wall_s=11.0)
    assert got["self_cpu_s"] == pytest.approx(10.0)
    assert list(got["groups"]) == ["weight matmuls", "other", "optimizer"]  # largest first
    assert sum(g["share"] for g in got["groups"].values()) == pytest.approx(1.0)
    assert got["groups"]["weight matmuls"]["share"] == pytest.approx(0.6)
    assert got["top_ops"][0] == {"op": "aten::mm", "s": 6.0, "calls": 10, "group": "weight matmuls"}


def test_memory_breakdown_derives_trl_from_our_sizes_and_accounts_for_each_peak():
    from bench.report import memory_breakdown

    held = {"policy_weights": 400.0, "reference_weights": 400.0, "reward_weights": 400.0}
    held |= {"gradients": 400.0, "optimizer_state": 800.0}
    rows = {what: (ours, trl) for what, ours, trl in memory_breakdown(held, 350.0, 3100.0, 430.0, 5100.0)}
    assert rows["weights"] == (1200.0, 1600.0)  # TRL: policy, reference, reward and a value network
    assert rows["gradients"] == (400.0, 800.0) and rows["optimizer state"] == (800.0, 1600.0)
    held_ours = sum(rows[k][0] for k in ("weights", "gradients", "optimizer state"))
    held_trl = sum(rows[k][1] for k in ("weights", "gradients", "optimizer state"))
    assert held_ours / held_trl == pytest.approx(0.6)  # 6 model sizes against 10, by design
    rest = rows["activations, generation cache, allocator slack"]
    assert rest == (3100.0 - 350.0 - 2400.0, 5100.0 - 430.0 - 4000.0)
    assert rows["peak RSS"] == (3100.0, 5100.0)
    # With malloc's free lists measured (ours only), the remainder is split; TRL's share of it stays unsplit.
    split = {w: (o, t) for w, o, t in memory_breakdown(held, 350.0, 3100.0, 430.0, 5100.0, ours_malloc_free=150.0)}
    assert split["freed memory malloc keeps for reuse"] == (150.0, None)
    assert split["activations, generation cache, the rest"] == (3100.0 - 350.0 - 2400.0 - 150.0, None)
    assert split["the two above together"] == rest


def test_the_135m_section_reports_each_variant_and_judges_the_full_fine_tune_targets():
    from bench.report import ppo_135m_section

    def run(ours_eps, trl_eps, ours_rss, trl_rss):
        phases = {"generate": 5.0, "policy_forward": 1.0, "reference": 1.0, "score": 1.0, "update": 20.0}
        ours = {"episodes_per_s": ours_eps, "peak_rss_mb": ours_rss, "load": 1.0, "phases": {**phases, "total": 28.0}}
        ours["phases"]["other"] = 0.0
        return {"ours": ours, "trl": {"episodes_per_s": trl_eps, "peak_rss_mb": trl_rss, "load": 1.2}}

    def variant(peft, precision, runs):
        return {
            "peft": peft,
            "precision": precision,
            "runs": runs,
            "eps_ratio": ratio_summary([r["ours"]["episodes_per_s"] / r["trl"]["episodes_per_s"] for r in runs]),
            "rss_ratio": ratio_summary([r["ours"]["peak_rss_mb"] / r["trl"]["peak_rss_mb"] for r in runs]),
        }

    config = {"batch_size": 8, "mini_batch_size": 2, "ppo_epochs": 4, "response_length": 32, "threads": "1"}
    ppo = {
        "config": {**config, "steps": 3, "rounds": 3, "mean_prompt_tokens": 27},
        "variants": {
            "none": variant("none", "fp32", [run(0.30, 0.12, 3000, 5100), run(0.28, 0.15, 3050, 5000)]),
            "lora-bf16": variant("lora", "bf16", [run(0.5, 0.2, 2000, 4000)]),
        },
    }
    ppo["measured"] = {"when": "2026-12-05 17:49 UTC", "cpu": "AMD EPYC", "isa": "avx2, avx512f, avx512_bf16"}
    full = ppo["variants"]["none"]
    full["anon_ratio"] = ratio_summary([0.55, 0.59])  # runs without it (older json) show a dash
    summary: list[list[str]] = []
    text = ppo_135m_section(ppo, None, summary)
    assert "| full fine-tune, fp32 |" in text and "| LoRA, bf16 |" in text
    assert "\n\nMeasured on 2026-12-05 17:49 UTC on AMD EPYC (avx2, avx512f, avx512_bf16).\n\n" in text
    assert "| 0.60 (0.59–0.61, n=2) | 0.57 (0.55–0.59, n=2) | 1.0–1.2 |" in text
    assert "| 0.50 (0.50–0.50, n=1) | – | 1.0–1.2 |" in text
    eps, rss = summary
    assert eps[0].startswith("PPO episodes/s") and eps[2] == "2.18x" and eps[3] == "met"  # median of 2.5, 1.87
    assert rss[2] == "0.60x" and rss[3] == "met"  # median of 0.588, 0.61
    ppo["variants"]["none"] = variant("none", "fp32", [run(0.2, 0.12, 3200, 5100)])
    summary.clear()
    ppo_135m_section(ppo, None, summary)
    assert summary[0][3] == "**not met**" and summary[1][3] == "**not met**"  # 1.67x, 0.63x


def test_run_measured_counts_the_child_alone_not_the_peak_of_the_process_that_spawned_it():
    """Linux starts a spawned child's ru_maxrss at its parent's high-water mark; the benchmark parent holds models
    while it measures its children, so without bench/launcher.py a tiny child would report the parent's peak."""
    ballast = torch.ones(64 * 2**20)  # 256 MiB resident in this process (ones: the pages are touched)
    try:
        small = run_measured([sys.executable, "-S", "-c", "pass"])
        grown = run_measured([sys.executable, "-S", "-c", "b = b'x' * (200 * 2**20)"])  # written, so resident
        failed = run_measured([sys.executable, "-S", "-c", "raise SystemExit(3)"])
    finally:
        del ballast
    assert small.returncode == 0 and small.peak_rss_mb < 100, small
    assert grown.peak_rss_mb > small.peak_rss_mb + 190, (small, grown)
    assert failed.returncode == 3


def test_run_measured_samples_anonymous_memory_apart_from_library_pages_mapped_from_the_page_cache(tmp_path):
    """ru_maxrss counts file pages a process maps (shared libraries), whose resident share depends on the page cache's
    history; the launcher's sampled anonymous peak counts the heap alone."""
    mapped = tmp_path / "file.bin"
    mapped.write_bytes(b"\x01" * (96 * 2**20))
    hold = "import time; time.sleep(0.3)"
    touch_file = (
        f"import mmap; f = open({str(mapped)!r}, 'rb'); m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ); "
        f"s = sum(m[i] for i in range(0, len(m), 4096)); {hold}"
    )
    small = run_measured([sys.executable, "-S", "-c", hold])
    heap = run_measured([sys.executable, "-S", "-c", f"b = b'x' * (200 * 2**20); {hold}"])
    pages = run_measured([sys.executable, "-S", "-c", touch_file])
    assert heap.returncode == 0 and pages.returncode == 0, (heap.output, pages.output)
    assert heap.peak_anon_mb > small.peak_anon_mb + 190, (small, heap)
    assert pages.peak_rss_mb > small.peak_rss_mb + 90, (small, pages)  # the kernel's peak counts the mapped file
    assert pages.peak_anon_mb < small.peak_anon_mb + 20, (small, pages)  # the anonymous peak does not


def test_report_keeps_the_sections_other_runs_own_when_this_run_did_not_measure_them(tmp_path, monkeypatch):
    import bench.report as report
    from bench.common import extract_block, marked

    old = "\n\n".join(
        [
            "# Benchmarks\n\nan older run",
            marked("ppo135m", "## 1b. PPO against TRL 1.12 at SmolLM2-135M's size\n\nMeasured on 2026-01-02"),
            marked("efficiency", "## 2. Training efficiency\n\nMeasured on 2026-01-01 on some CPU"),
            "## 3. Scaling\n\nold scaling",
            marked("precision", "## 5. Precision defaults\n\nbf16 where faster"),
            marked("learning", "## Learning across seeds\n\nseed table"),
        ]
    )
    (tmp_path / "BENCHMARKS.md").write_text(old, encoding="utf-8")
    monkeypatch.setattr(report, "ROOT", tmp_path)
    monkeypatch.setattr(report, "load_json", lambda name: None)  # this run measured none of them
    report.main(["--scale", "small", "--seconds", "90"])
    text = (tmp_path / "BENCHMARKS.md").read_text(encoding="utf-8")
    for name in ("ppo135m", "efficiency", "precision", "learning"):
        assert extract_block(text, name) == extract_block(old, name)
    assert "old scaling" not in text and "an older run" not in text  # the rest is this run's
    assert "`BENCH_SCALE=small`" in text and "in 1.5 minutes" in text and report.kept_note(["1b", "2", "5"]) in text
    assert "| section 2, kept from its own run |" in text  # the targets point at the kept sections
    assert "| section 1b, kept from its own run |" in text
    assert text.index("ppo135m:start") < text.index("efficiency:start") < text.index("precision:start")


def test_bench_scales_choose_the_135m_comparison_and_refuse_unknown_names(monkeypatch):
    import bench.__main__ as bench_main

    default = bench_main.smollm2_comparison("default")
    assert default[default.index("--variants") + 1] == "none" and default[default.index("--steps") + 1] == "2"
    assert bench_main.smollm2_comparison("small") == []
    full = bench_main.smollm2_comparison("full")
    assert full[full.index("--variants") + 1] == "none,lora" and "--steps" not in full
    monkeypatch.setenv("BENCH_SCALE", "huge")
    with pytest.raises(SystemExit, match="BENCH_SCALE='huge': expected one of default, small, full"):
        bench_main.main()


def test_the_shared_layers_benchmark_runs_both_engines_and_finds_the_same_log_probs(tmp_path, monkeypatch, capsys):
    """bench.shared_layers end to end at the tiny size (one round, one measured step): both engines run, the
    sharing one computes the two layers below the LoRA once per rollout, each phase gets a ratio, and the two runs'
    log-probs agree to float32 rounding."""
    import json

    import bench.common
    from bench import shared_layers

    monkeypatch.setattr(bench.common, "OUT", tmp_path)
    old_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with torch.random.fork_rng():  # the benchmark seeds the global generator
            assert shared_layers.main(["--dims", "tiny", "--lora_layers", "2-3", "--rounds", "1", "--steps", "2"]) == 0
    finally:
        torch.set_num_threads(old_threads)
    result = json.loads((tmp_path / "shared_layers.json").read_text(encoding="utf-8"))
    assert result["shared_layers"] == 2
    assert set(result["ratio_shared_to_full"]) == {"policy_forward", "reference", "score", "update", "total"}
    assert all(r["n"] == 1 and r["median"] > 0 for r in result["ratio_shared_to_full"].values())
    assert result["max_abs_logprob_difference"] <= 1e-5
    assert "shared/full" in capsys.readouterr().out
