"""Evaluation numbers on hand-made inputs: win rate and its interval, KL, length and EOS rate."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import run_script
from rlhf.evaluation import (
    as_gold,
    as_kind,
    clustered_win_rate,
    gold_comparison,
    judge_agreement,
    matches_gold,
    minimal_pair,
    paired_gain,
    policy_summary,
    reward_hacking_warnings,
    sequence_kl,
    split_preference_metrics,
    win_rate,
)
from rlhf.ppo.sampling import Samples, concat_samples, left_pad


def test_win_rate_counts_ties_half_and_gives_the_wilson_interval():
    a = torch.tensor([1.0, 2.0, 3.0, 0.0, 5.0, 5.0, 1.0, 9.0, 9.0, 9.0])
    b = torch.tensor([0.0, 1.0, 2.0, 1.0, 5.0, 4.0, 0.0, 1.0, 1.0, 1.0])
    result = win_rate(a, b)
    assert result["win_rate"] == pytest.approx(8.5 / 10)  # 8 wins, 1 tie, 1 loss
    assert result["ties"] == 1
    # Textbook Wilson 95% interval for 8 successes out of 10: (0.4902, 0.9433).
    eight = win_rate(torch.tensor([1.0] * 8 + [-1.0] * 2), torch.zeros(10))
    assert eight["ci_low"] == pytest.approx(0.4902, abs=1e-4)
    assert eight["ci_high"] == pytest.approx(0.9433, abs=1e-4)
    assert win_rate(torch.ones(5), torch.zeros(5))["ci_high"] == 1.0  # clamped, never above 1


def test_win_rate_rejects_mismatched_inputs():
    with pytest.raises(ValueError):
        win_rate(torch.ones(3), torch.ones(4))


def test_clustered_win_rate_compares_every_response_pair_of_a_prompt_and_takes_the_interval_over_prompts():
    # 4 prompts, 2 responses each; per prompt, every PPO response against every SFT response (ties count half):
    a = torch.tensor([[3.0, 1.0], [1.0, 1.0], [0.0, 0.0], [5.0, 5.0]])
    b = torch.tensor([[2.0, 0.0], [1.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
    # shares 3/4 (3-2, 3-0, 1-0 win; 1-2 loses), 3/4 (two wins, two ties), 0, 1 -> mean 0.625; their sample
    # standard deviation is sqrt(0.5625 / 3) = 0.4330, so the half-width is 1.96 * 0.4330 / sqrt(4) = 0.4244.
    result = clustered_win_rate(a, b)
    assert result["win_rate"] == pytest.approx(0.625) and result["n"] == 4 and result["ties"] == 2
    assert result["samples_per_prompt"] == 2
    assert result["ci_low"] == pytest.approx(0.625 - 0.4244, abs=1e-4) and result["ci_high"] == 1.0  # clamped
    # one response per prompt: the same rate and ties as win_rate (whose interval is Wilson's)
    x, y = torch.tensor([1.0, 2.0, 0.0, 4.0, 4.0]), torch.tensor([0.0, 3.0, 0.0, 1.0, 2.0])
    single = clustered_win_rate(x[:, None], y[:, None])
    assert (single["win_rate"], single["ties"]) == (win_rate(x, y)["win_rate"], win_rate(x, y)["ties"]) == (0.7, 1)
    with pytest.raises(ValueError):
        clustered_win_rate(torch.ones(3), torch.ones(3))  # not (prompts, k)


def test_judge_agreement_counts_the_response_pairs_both_judges_order_alike_and_leaves_out_ties():
    # one response per prompt: pair i is PPO's response i against SFT's response i
    first = {"ppo": torch.tensor([2.0, 1.0, 0.0, 3.0, 1.0]), "sft": torch.tensor([1.0, 2.0, 1.0, 3.0, 0.0])}
    second = {"ppo": torch.tensor([5.0, 0.0, 1.0, 1.0, 2.0]), "sft": torch.tensor([4.0, 1.0, 0.0, 0.0, 2.0])}
    # pair 0: both say PPO; 1: both say SFT; 2: they disagree; 3: first ties; 4: second ties -> 2 of 3
    assert judge_agreement(first, second) == {"agreement": pytest.approx(2 / 3), "pairs": 3}
    assert judge_agreement(first, first) == {"agreement": 1.0, "pairs": 4}  # with itself: all but its own tie
    # two responses per prompt: every PPO response against every SFT response of its prompt (2x2 pairs)
    ppo, sft = torch.tensor([3.0, 0.0]), torch.tensor([1.0, 2.0])  # first: 3>1, 3>2, 0<1, 0<2
    flipped = {"ppo": -ppo, "sft": -sft}  # the opposite order on every pair
    assert judge_agreement({"ppo": ppo, "sft": sft}, flipped, each=2) == {"agreement": 0.0, "pairs": 4}
    # the same scores read as two prompts of one response: only 3-1 and 0-2 are compared, never across prompts
    assert judge_agreement({"ppo": ppo, "sft": sft}, flipped, each=1)["pairs"] == 2
    # the first judge ties its pairs 1-1 and 2-2 and orders 1-2 and 2-1 as the second does (-3 < -2, 0 > -1)
    assert judge_agreement({"ppo": sft, "sft": sft}, flipped, each=2) == {"agreement": 1.0, "pairs": 2}
    # the same responses for both policies and one draw: every pair a tie, nothing to agree on (None, not NaN)
    assert judge_agreement({"ppo": sft, "sft": sft}, {"ppo": ppo, "sft": ppo}) == {"agreement": None, "pairs": 0}
    with pytest.raises(ValueError):
        judge_agreement({"ppo": ppo, "sft": sft}, {"ppo": torch.ones(3), "sft": torch.ones(3)})


def test_sequence_kl_sums_log_ratios_over_real_tokens_only():
    lp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -0.5]])
    ref = torch.tensor([[-1.5, -2.0, -9.0], [-1.0, -1.0, -1.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert sequence_kl(lp, ref, mask).tolist() == pytest.approx([0.5, 1.5])


def samples_of(response_mask: list[list[int]], has_eos: list[bool], prompt: list[list[int]]) -> Samples:
    """Samples with the given prompt ids (0 = left padding) and response mask (token ids 5 under the mask)."""
    from rlhf.ppo.models import position_ids_from_mask

    prompt_ids = torch.tensor(prompt)
    response_mask = torch.tensor(response_mask, dtype=torch.bool)
    attention_mask = torch.cat([(prompt_ids != 0).long(), response_mask.long()], 1)
    return Samples(
        input_ids=torch.cat([prompt_ids, torch.where(response_mask, 5, 0)], 1),
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        prompt_width=prompt_ids.shape[1],
        response_mask=response_mask,
        has_eos=torch.tensor(has_eos),
        texts=[f"r{i}" for i in range(len(has_eos))],
    )


def test_response_kl_in_length_groups_is_the_kl_of_the_whole_padded_batch(tiny_dir):
    """evaluate.py computes KL(PPO || SFT) --batch_size responses at a time, grouped by length and cut to each
    group's real columns: the same numbers as one forward pass over the whole padded batch, for any group size."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf.ppo.models import causal_lm_logprobs
    from rlhf.ppo.sampling import sample
    from rlhf.scripts.evaluate import response_kl

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_dir))
    policy = AutoModelForCausalLM.from_pretrained(str(tiny_dir)).eval()
    reference = AutoModelForCausalLM.from_pretrained(str(tiny_dir)).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
        texts = ["2 plus 3", "What is the capital of France, and why?", "Hi", "Name a colour of the sky at noon"]
        prompts = [tokenizer(t)["input_ids"] for t in texts]
        # responses of 3 and of 9 tokens, prompts of different lengths: padding on both sides of the batch
        s = concat_samples(
            [sample(policy, tokenizer, prompts[:2], 3, 1.0), sample(policy, tokenizer, prompts[2:], 9, 1.0)],
            tokenizer.pad_token_id,
        )
        inputs = (s.input_ids, s.attention_mask, s.position_ids, s.prompt_width, 0.7)
        logprobs, ref_logprobs = causal_lm_logprobs(policy, *inputs), causal_lm_logprobs(reference, *inputs)
        whole = sequence_kl(logprobs, ref_logprobs, s.response_mask)
        assert bool((whole.abs() > 1e-3).all())  # the two models differ on every response
        for size in (1, 3, 4):
            assert torch.allclose(response_kl(policy, reference, s, 0.7, size), whole, rtol=1e-4, atol=1e-5)


def test_generation_batches_follow_their_own_flag(tiny_dir, monkeypatch):
    """Responses are generated --generation_batch_size at a time (default: --batch_size, which the KL and the
    reward models keep), and come back one per prompt, in prompt order."""
    from contextlib import nullcontext
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM, AutoTokenizer

    import rlhf.scripts.evaluate as evaluate

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_dir))
    lm = AutoModelForCausalLM.from_pretrained(str(tiny_dir)).eval()
    prompts = [{"prompt_ids": tokenizer(f"What is {i} plus {i * 11}?")["input_ids"]} for i in range(7)]
    sizes, real = [], evaluate.sample
    monkeypatch.setattr(
        evaluate, "sample", lambda lm, tok, batch, *a, **k: sizes.append(len(batch)) or real(lm, tok, batch, *a, **k)
    )
    for generation_batch_size, expected in ((None, [2, 2, 2, 1]), (3, [3, 3, 1]), (16, [7])):
        sizes.clear()
        args = SimpleNamespace(
            seed=0, max_new_tokens=2, greedy=False, batch_size=2, generation_batch_size=generation_batch_size
        )
        s = evaluate.generate_all(lm, tokenizer, prompts, args, 1.0, nullcontext)
        assert sizes == expected
        rows = s.token_ids()
        assert len(rows) == len(prompts)
        assert all(row[: len(p["prompt_ids"])] == p["prompt_ids"] for row, p in zip(rows, prompts, strict=True))


def test_policy_summary_reports_length_and_eos_rate():
    s = samples_of([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1]], [True, False, True, True], [[7]] * 4)
    summary = policy_summary(s, torch.tensor([1.0, 2.0, 3.0, 6.0]))
    assert summary == {"reward_mean": 3.0, "length_mean": 2.25, "eos_rate": 0.75}


def test_samples_of_batches_with_different_widths_concatenate():
    """Generation stops when a whole batch has ended: a 48-prompt evaluation in batches of 16 came back 39 and 40
    tokens wide and could not be concatenated. Prompts of different widths are left-padded further, positions kept."""
    a = samples_of([[1, 1, 0], [1, 0, 0]], [True, True], [[0, 7], [8, 9]])
    b = samples_of([[1, 1, 1, 1]], [False], [[6, 7, 8]])
    merged = concat_samples([a, b], pad_token_id=0)
    assert merged.prompt_width == 3 and merged.input_ids.shape == (3, 7)
    assert merged.response_mask.tolist() == [[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]]
    assert merged.input_ids[0].tolist() == [0, 0, 7, 5, 5, 0, 0]
    assert merged.position_ids[0, 2:5].tolist() == [0, 1, 2]  # the first real token is position 0, as before
    assert merged.texts == ["r0", "r1", "r0"]
    summary = policy_summary(merged, torch.tensor([0.0, 1.0, 2.0]))
    assert summary["length_mean"] == pytest.approx(7 / 3) and summary["eos_rate"] == pytest.approx(2 / 3)


def test_left_pad_puts_tokens_on_the_right():
    ids, mask = left_pad([[5, 6], [7]], pad_token_id=0)
    assert ids.tolist() == [[5, 6], [0, 7]]
    assert mask.tolist() == [[1, 1], [0, 1]]


@pytest.mark.parametrize(
    ("response", "gold", "expected"),
    [
        ("47 minus 19 equals 28.", ["28", "twenty-eight"], True),
        ("The answer is twenty-eight.", ["28", "twenty-eight"], True),
        ("The answer is Twenty Eight!", ["28", "twenty-eight"], True),  # case, and a space for the hyphen
        ("It is 128.", ["28", "twenty-eight"], False),  # not inside a longer number
        ("It is 28.5 or so.", ["28"], False),
        ("About 28,000 people.", ["28"], False),
        ("It is 28, I think.", ["28"], True),  # a comma after the number is punctuation
        ("Twenty-eight is 20 + 8.", ["eight"], False),  # not inside a hyphenated number
        ("She has eighteen.", ["eight"], False),
        ("The plural of woman is women.", ["women"], True),
        ('The singular form of "woman" is "woman".', ["women"], False),
        ("The capital of Brazil is Brasilia.", ["Brasília"], True),  # accents do not matter
        ("The capital of Brazil is BRASÍLIA.", "Brasília", True),  # a single string is one answer
        ("You say \u201cs\u2019il vous pla\u00eet\u201d.", ["s'il vous plaît"], True),
        ("New Delhi is the capital.", ["New Delhi"], True),
        ("Delhi is the capital.", ["New Delhi"], False),
        ("A dog barks.", ["bark", "barks"], True),
        ("Nothing here.", [], False),
    ],
)
def test_matches_gold(response, gold, expected):
    assert matches_gold(response, gold) is expected


def test_gold_comparison_counts_only_prompts_with_ground_truth_and_pairs_the_gain_over_prompts():
    # two responses per prompt; the third prompt has no ground truth
    sft = [True, False, False, False, None, None, True, True]
    ppo = [True, True, False, True, None, None, False, True]
    g = gold_comparison(sft, ppo, each=2)
    assert (g["rows"], g["sft"], g["ppo"]) == (3, 0.5, pytest.approx(4 / 6))
    # per-prompt shares: sft 0.5, 0, 1; ppo 1, 0.5, 0.5 -> differences +0.5, +0.5, -0.5
    assert g["gain"] == paired_gain([0.5, 0.0, 1.0], [1.0, 0.5, 0.5])
    assert g["gain"]["gain"] == pytest.approx(1 / 6) and g["gain"]["n"] == 3
    assert gold_comparison([None, None], [None, None], each=2) is None
    with pytest.raises(ValueError):
        gold_comparison([True, False, True], [True, False, True], each=2)  # not whole prompts
    with pytest.raises(ValueError):
        gold_comparison([True], [True, False])


def test_as_kind_reads_strings_and_treats_anything_else_as_none():
    assert as_kind(" arithmetic ") == "arithmetic"
    assert as_kind(None) == as_kind(float("nan")) == as_kind(3) == as_kind("  ") == ""


def test_as_gold_reads_strings_lists_and_empty_cells():
    assert as_gold("Paris") == ["Paris"]
    assert as_gold(["28", "twenty-eight"]) == ["28", "twenty-eight"]
    assert as_gold(None) == [] and as_gold(float("nan")) == [] and as_gold([]) == [] and as_gold("  ") == []
    assert as_gold(28) == ["28"]


def test_reward_hacking_warning_when_reward_rises_and_gold_falls():
    rewards = {"rm": (1.0, 2.0), "rm2": (1.0, 0.5)}
    warnings = reward_hacking_warnings(rewards, gold_sft=0.6, gold_ppo=0.4, rows=50)
    assert len(warnings) == 1 and "under rm rose (1.000 -> 2.000)" in warnings[0] and "0.600 -> 0.400" in warnings[0]
    assert reward_hacking_warnings(rewards, gold_sft=0.4, gold_ppo=0.6, rows=50) == []  # answers got better
    assert reward_hacking_warnings(rewards, gold_sft=0.5, gold_ppo=0.5, rows=50) == []
    assert reward_hacking_warnings({"rm": (2.0, 1.0)}, gold_sft=0.6, gold_ppo=0.4, rows=50) == []
    # with PPO's paired gain, the warning says whether the fall is more than the sampling noise
    small = {"gain": -0.2, "ci_low": -0.45, "ci_high": 0.05}
    (within,) = reward_hacking_warnings(rewards, 0.6, 0.4, 50, small)
    assert within.endswith(
        "50 prompts with ground truth; gain -0.200, 95% interval -0.450 to +0.050: within the sampling noise)"
    )
    (beyond,) = reward_hacking_warnings(rewards, 0.6, 0.4, 50, {**small, "ci_high": -0.01})
    assert beyond.endswith("interval -0.450 to -0.010: beyond the sampling noise)")
    # per kind of question: the same rule, and the warning names the kind
    (arithmetic,) = reward_hacking_warnings(rewards, 0.6, 0.4, 20, small, kind="arithmetic")
    assert arithmetic.startswith("reward hacking on arithmetic prompts? the mean reward under rm rose (1.000 -> 2.000)")
    assert "20 prompts with ground truth" in arithmetic


@pytest.mark.parametrize(
    ("chosen", "rejected", "expected"),
    [
        ("If you add 20 and 4, you get 24.", "If you add 20 and 4, you get 25.", True),  # the number only
        ("The plural of wife is wives.", "The plural of wife is wifes.", True),
        ("Rabat is the capital of Morocco.", "Cairo is the capital of Morocco.", True),
        ("A B C D", "A X Y D", True),  # two words: still content
        ("A B C D", "X Y Z D", False),  # three
        ("It is Paris.", "I do not know.", False),  # evasive: form
        ("2 plus 3 is 5.", "2 plus 3 is", False),  # cut off: another length
        ("Same answer.", "Same answer.", False),  # no difference at all
    ],
)
def test_minimal_pair_is_same_length_and_one_or_two_words_apart(chosen, rejected, expected):
    assert minimal_pair(chosen, rejected) is expected


def test_held_out_accuracy_split_into_content_and_form_pairs():
    """A judge of form: the two form pairs ranked with wide margins, the content pairs one right and one wrong."""
    chosen = torch.tensor([10.0, 8.0, 0.5, 1.0])
    rejected = torch.tensor([0.0, 1.0, 0.0, 1.5])
    result = split_preference_metrics(chosen, rejected, [False, False, True, True])
    assert result["accuracy"] == pytest.approx(0.75) and result["pairs"] == 4
    assert result["form"]["accuracy"] == 1.0 and result["form"]["margin_mean"] == pytest.approx(8.5)
    assert result["content"]["accuracy"] == 0.5 and result["content"]["margin_mean"] == pytest.approx(0.0)
    assert result["content"]["pairs"] == result["form"]["pairs"] == 2
    only_form = split_preference_metrics(chosen, rejected, [False] * 4)
    assert only_form["content"] is None and only_form["form"]["pairs"] == 4
    with pytest.raises(ValueError, match="one content flag per pair"):
        split_preference_metrics(chosen, rejected, [True])


def test_paired_gain_of_gold_accuracy_with_its_interval():
    # 10 prompts: PPO fixes 3, breaks 1, 6 unchanged -> gain 0.2; differences (+1 x3, -1, 0 x6) have sample
    # variance (3 * 0.8^2 + 1.2^2 + 6 * 0.2^2) / 9 = 0.4, so the half-width is 1.96 * sqrt(0.4 / 10) = 0.392.
    before = [False, False, False, True] + [True] * 3 + [False] * 3
    after = [True, True, True, False] + [True] * 3 + [False] * 3
    result = paired_gain(before, after)
    assert result["gain"] == pytest.approx(0.2) and result["n"] == 10
    assert result["ci_low"] == pytest.approx(0.2 - 0.392, abs=1e-3)
    assert result["ci_high"] == pytest.approx(0.2 + 0.392, abs=1e-3)
    same = paired_gain([True, False], [True, False])
    assert same == {"gain": 0.0, "ci_low": 0.0, "ci_high": 0.0, "n": 2}
    with pytest.raises(ValueError):
        paired_gain([True], [])


@pytest.mark.parametrize(("bf16", "greedy"), [(False, False), (True, False), (False, True)])
def test_evaluate_script_on_tiny_models(tmp_path, tiny_dir, bf16, greedy):
    """End to end on a tiny policy compared with itself, in fp32 and under bf16 autocast, sampled or greedy: every
    number is defined and self-consistent (sampling, log-probs and scores share one precision context), and the
    report says how the responses were decoded."""
    from transformers import AutoModelForSequenceClassification

    from tiny import ORCA_ROWS, write_rows

    rm = tmp_path / "rm"
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_dir), num_labels=1)
    model.save_pretrained(str(rm))
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(tiny_dir)).save_pretrained(str(rm))
    # A gold column (what data/orca_sample/heldout.jsonl carries) on all rows but the last: the stages ignore it,
    # the evaluation scores against it.
    # One kind of question only: no breakdown by kind (it would repeat the overall numbers).
    rows = [
        {**row, "gold": [row["chosen"].split()[0]] if i < len(ORCA_ROWS) - 1 else [], "kind": "arithmetic"}
        for i, row in enumerate(ORCA_ROWS)
    ]
    data = write_rows(tmp_path / "heldout.jsonl", rows)
    out = tmp_path / "eval"
    result = run_script(
        "evaluate.py",
        "--sft_model",
        str(tiny_dir),
        "--ppo_model",
        str(tiny_dir),
        "--reward_model",
        str(rm),
        "--dataset_name",
        str(data),
        "--output_dir",
        str(out),
        "--num_prompts",
        "4",
        "--max_new_tokens",
        "6",
        "--batch_size",
        "3",  # two generation batches, merged
        "--bf16",
        str(bf16),
        "--greedy",
        str(greedy),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert ("greedy decoding" in result.stderr) is greedy
    assert f"precision: {'bf16' if bf16 else 'no'} mixed precision" in result.stderr
    report = json.loads((out / "evaluation.json").read_text())
    assert report["prompts"] == 4 and report["greedy"] is greedy
    # Same weights and the same sampling seed: identical responses, so every comparison is a tie and KL is 0.
    assert report["win_rate_rm"]["ties"] == 4 and report["win_rate_rm"]["win_rate"] == 0.5
    assert report["kl_ppo_sft"]["mean"] == pytest.approx(0.0, abs=1e-5)
    assert report["rm_heldout"]["pairs"] == len(ORCA_ROWS)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4
    gold_rows = [s for s in samples if "gold" in s]
    assert report["gold"]["rows"] == len(gold_rows) == len(ORCA_ROWS) - 1
    sft_correct = sum(s["sft_gold"] for s in gold_rows)
    assert report["gold"]["sft"] == report["gold"]["ppo"] == pytest.approx(sft_correct / len(gold_rows))
    assert report["gold"]["gain"] == {"gain": 0.0, "ci_low": 0.0, "ci_high": 0.0, "n": len(gold_rows)}
    assert "kinds" not in report["gold"]
    content = sum(minimal_pair(r["chosen"], r["rejected"]) for r in ORCA_ROWS)
    assert 0 < content < len(ORCA_ROWS)  # the tiny rows have both kinds ("2 plus 3 is 5." / "... 7.")
    assert report["rm_heldout"]["content"]["pairs"] == content
    assert report["rm_heldout"]["form"]["pairs"] == len(ORCA_ROWS) - content
    assert report["warnings"] == []


def test_evaluate_script_with_several_responses_per_prompt(tmp_path, tiny_dir):
    """--samples_per_prompt 3 on a tiny policy compared with itself: three different responses to each prompt, the
    same three for both policies (one sampling seed), so every prompt's 3x3 comparisons are as often won as lost:
    win rate exactly 0.5 with no width; gold accuracy over all responses, its gain over prompts."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhf.pipeline.report import build_report
    from tiny import ORCA_ROWS, write_rows

    run = tmp_path / "run"
    rm = run / "rm"
    AutoModelForSequenceClassification.from_pretrained(str(tiny_dir), num_labels=1).save_pretrained(str(rm))
    AutoTokenizer.from_pretrained(str(tiny_dir)).save_pretrained(str(rm))
    # Two kinds of question, alternating: gold accuracy, its gain and the judges' rewards also per kind.
    kinds = ["arithmetic", "facts"]
    rows = [{**row, "gold": [row["chosen"].split()[0]], "kind": kinds[i % 2]} for i, row in enumerate(ORCA_ROWS)]
    data = write_rows(tmp_path / "heldout.jsonl", rows)
    out = run / "eval"
    result = run_script(
        *("evaluate.py", "--sft_model", str(tiny_dir), "--ppo_model", str(tiny_dir), "--reward_model", str(rm)),
        *("--second_reward_model", str(rm)),
        *("--dataset_name", str(data), "--output_dir", str(out), "--num_prompts", "4", "--max_new_tokens", "6"),
        *("--samples_per_prompt", "3", "--temperature", "1.0", "--batch_size", "5"),  # batches across prompts
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((out / "evaluation.json").read_text())
    assert report["prompts"] == 4 and report["samples_per_prompt"] == 3
    win = report["win_rate_rm"]
    assert (win["win_rate"], win["ci_low"], win["ci_high"], win["n"]) == (0.5, 0.5, 0.5, 4)
    assert win["ties"] >= 4 * 3  # at least each response against itself
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [s["sample"] for s in samples] == [0, 1, 2] * 4
    assert [s["question"] for s in samples[::3]] == [r["question"] for r in ORCA_ROWS[:4]]
    assert all(s["sft"] == s["ppo"] for s in samples)
    assert any(len({s["sft"] for s in samples[i : i + 3]}) > 1 for i in range(0, 12, 3))  # responses differ
    assert report["gold"]["rows"] == 4 and report["gold"]["gain"]["n"] == 4
    assert report["gold"]["sft"] == pytest.approx(sum(s["sft_gold"] for s in samples) / 12)
    assert report["gold"]["gain"]["gain"] == 0.0 and report["kl_ppo_sft"]["mean"] == pytest.approx(0.0, abs=1e-5)
    assert [s["kind"] for s in samples[::3]] == kinds * 2
    assert list(report["gold"]["kinds"]) == kinds
    for kind, part in report["gold"]["kinds"].items():
        mine = [s for s in samples if s["kind"] == kind]
        assert part["rows"] == 2 and part["gain"]["n"] == 2 and part["gain"]["gain"] == 0.0
        assert part["sft"] == part["ppo"] == pytest.approx(sum(s["sft_gold"] for s in mine) / 6)
        for judge in ("rm", "rm2"):
            means = [sum(s[f"{judge}_{p}"] for s in mine) / 6 for p in ("sft", "ppo")]
            assert part["rewards"][judge] == pytest.approx(means)
    assert report["warnings"] == []  # one policy against itself: nothing fell
    # The same reward model as the second judge: it picks the same winner on every pair that it does not tie,
    # and those pairs are the 3x3 cross pairs of each prompt whose two responses score differently.
    untied = sum(
        a["rm_ppo"] != b["rm_sft"] for i in range(0, 12, 3) for a in samples[i : i + 3] for b in samples[i : i + 3]
    )
    assert 0 < untied and report["judge_agreement"] == {"judges": ["rm", "rm2"], "agreement": 1.0, "pairs": untied}
    # Two judges reading the same ids score in one pass (their layers shared), each with its own scores.
    assert "score_rm+rm2" in report["seconds"] and "score_rm" not in report["seconds"]
    assert all(s[f"rm2_{p}"] == s[f"rm_{p}"] for s in samples for p in ("sft", "ppo"))
    md = build_report(run).read_text()
    assert "(95% CI 0.500–0.500, n=4 prompts, 3×3 response pairs each, ties " in md
    assert f"- rm and rm2 pick the same winner in 1.000 of these response pairs ({untied} that neither ties)" in md
    assert md.count("**Q:**") == 4  # the samples section shows one response pair per prompt


def test_report_shows_gold_accuracy_next_to_the_rewards_and_the_warning(tmp_path):
    from rlhf.pipeline.report import build_report

    policy = {"reward_mean_rm": 1.0, "length_mean": 10.0, "eos_rate": 1.0}
    ev = {
        "prompts": 8,
        "sft": dict(policy),
        "ppo": {**policy, "reward_mean_rm": 2.0},
        "win_rate_rm": {"win_rate": 0.75, "ci_low": 0.4, "ci_high": 0.9, "n": 8, "ties": 0},
        "kl_ppo_sft": {"mean": 1.0, "max": 2.0},
        "gold": {
            "rows": 6,
            "sft": 0.5,
            "ppo": 1 / 3,
            "gain": paired_gain([True] * 3 + [False] * 3, [True] * 2 + [False] * 4),
        },
        "warnings": reward_hacking_warnings({"rm": (1.0, 2.0)}, 0.5, 1 / 3, 6),
        "rm_heldout": split_preference_metrics(torch.tensor([5.0, 0.2]), torch.tensor([0.0, 0.4]), [False, True]),
    }
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "evaluation.json").write_text(json.dumps(ev))
    report = build_report(tmp_path).read_text()
    assert "| gold accuracy (6 prompts with ground truth) | 0.500 | 0.333 |" in report
    assert "**Warning: reward hacking? the mean reward under rm rose (1.000 -> 2.000)" in report
    # one prompt of six lost: -0.167 +- 1.96 * sqrt((1/6) * (5/6) * 6/5 / 6) = +- 0.327
    assert "| gold gain of PPO over SFT, same prompts (95% CI) | | -0.167 (-0.493 to +0.160) |" in report
    assert (
        "- rm on held-out pairs: strict accuracy 0.500, tie rate 0.000, mean margin 2.400 (2 pairs); pairs that "
        "differ in one or two words (content): 0.000, mean margin -0.200 (1); the others (form): 1.000, mean "
        "margin 5.000 (1)"
    ) in report
    # per kind of question: a line each, and the warning of the kind whose gold fell while its reward rose
    ev["gold"]["kinds"] = {
        "arithmetic": {"rows": 4, "sft": 0.5, "ppo": 0.25, "gain": paired_gain([1, 1, 0, 0], [1, 0, 0, 0])},
        "facts": {"rows": 2, "sft": 0.5, "ppo": 0.5, "gain": paired_gain([1, 0], [1, 0])},
    }
    ev["warnings"] += reward_hacking_warnings({"rm": (0.5, 3.0)}, 0.5, 0.25, 4, kind="arithmetic")
    (tmp_path / "eval" / "evaluation.json").write_text(json.dumps(ev))
    report = build_report(tmp_path).read_text()
    assert "| gold accuracy, arithmetic (4 prompts) | 0.500 | 0.250, gain -0.250 (-0.740 to +0.240) |" in report
    assert "| gold accuracy, facts (2 prompts) | 0.500 | 0.500, gain +0.000 (+0.000 to +0.000) |" in report
    assert "**Warning: reward hacking on arithmetic prompts? the mean reward under rm rose (0.500 -> 3.000)" in report
    del ev["gold"], ev["warnings"], ev["rm_heldout"]  # data without ground truth: no row, no warning
    (tmp_path / "eval" / "evaluation.json").write_text(json.dumps(ev))
    report = build_report(tmp_path).read_text()
    assert "gold accuracy" not in report and "Warning" not in report


def test_report_splits_the_reward_model_stage_held_out_line_when_its_metrics_do(tmp_path):
    from rlhf.pipeline.report import build_report

    (tmp_path / "rm").mkdir()
    heldout = split_preference_metrics(torch.tensor([3.0, 1.0, 0.5]), torch.tensor([0.0, 0.0, 1.0]), [0, 1, 1])
    (tmp_path / "rm" / "metrics.json").write_text(json.dumps({"heldout": {**heldout, "split": "eval"}}))
    report = build_report(tmp_path).read_text()
    assert (
        "Held-out (eval, 3 pairs): strict accuracy **0.667** (ties count as wrong), tie rate 0.000, mean margin "
        "1.167; pairs that differ in one or two words (content): 0.500, mean margin 0.250 (2); the others (form): "
        "1.000, mean margin 3.000 (1)."
    ) in report
    # metrics.json of a run before the split (or with one kind of pair only): the line as it was
    del heldout["content"]
    (tmp_path / "rm" / "metrics.json").write_text(json.dumps({"heldout": {**heldout, "split": "eval"}}))
    report = build_report(tmp_path).read_text()
    assert "tie rate 0.000, mean margin 1.167.\n" in report


def test_the_judges_held_out_accuracy_does_not_depend_on_the_policies_evaluated(tmp_path, tiny_dir):
    """The held-out pairs are scored in batches of their own: evaluating other responses (here: longer ones, so other
    batches by length) leaves every pair's margin as it was, to the bit, also under bf16 autocast, where the batch
    a row lands in changes its rounding."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tiny import ORCA_ROWS, write_rows

    rm = tmp_path / "rm"
    AutoModelForSequenceClassification.from_pretrained(str(tiny_dir), num_labels=1).save_pretrained(str(rm))
    AutoTokenizer.from_pretrained(str(tiny_dir)).save_pretrained(str(rm))
    data = write_rows(tmp_path / "heldout.jsonl", ORCA_ROWS)
    margins = []
    for tokens in ("2", "12"):
        out = tmp_path / f"eval_{tokens}"
        result = run_script(
            *("evaluate.py", "--sft_model", str(tiny_dir), "--ppo_model", str(tiny_dir), "--reward_model", str(rm)),
            *("--dataset_name", str(data), "--output_dir", str(out), "--num_prompts", "4", "--bf16", "True"),
            *("--max_new_tokens", tokens, "--temperature", "1.0", "--batch_size", "3"),
        )
        assert result.returncode == 0, result.stderr[-2000:]
        margins.append(json.loads((out / "margins.json").read_text())["rm"])
    samples = [json.loads(line) for line in (tmp_path / "eval_12" / "samples.jsonl").read_text().splitlines()]
    assert max(len(s["sft"]) for s in samples) > 0  # responses were drawn and scored beside the pairs
    assert len(margins[0]) == len(ORCA_ROWS) and margins[0] == margins[1]
