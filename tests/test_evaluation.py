"""Evaluation numbers on hand-made inputs: win rate and its interval, KL, length and EOS rate."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import run_script
from rlhf.evaluation import left_pad, policy_summary, sequence_kl, win_rate


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


def test_sequence_kl_sums_log_ratios_over_real_tokens_only():
    lp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -0.5]])
    ref = torch.tensor([[-1.5, -2.0, -9.0], [-1.0, -1.0, -1.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert sequence_kl(lp, ref, mask).tolist() == pytest.approx([0.5, 1.5])


def test_policy_summary_reports_length_and_eos_rate():
    batch = {
        "response_mask": torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1]]),
        "has_eos": torch.tensor([True, False, True, True]),
    }
    summary = policy_summary(batch, torch.tensor([1.0, 2.0, 3.0, 6.0]))
    assert summary == {"reward_mean": 3.0, "length_mean": 2.25, "eos_rate": 0.75}


def test_samples_of_batches_with_different_response_widths_merge():
    """Generation stops when a whole batch has ended: a 48-prompt evaluation in batches of 16 came back 39 and 40
    tokens wide and could not be concatenated."""
    from rlhf.evaluation import merge_samples

    a = {"response_mask": torch.tensor([[1, 1, 0], [1, 0, 0]]), "has_eos": torch.tensor([True, True])}
    b = {"response_mask": torch.tensor([[1, 1, 1, 1]]), "has_eos": torch.tensor([False])}
    merged = merge_samples([a, b])
    assert merged["response_mask"].tolist() == [[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]]
    summary = policy_summary(merged, torch.tensor([0.0, 1.0, 2.0]))
    assert summary["length_mean"] == pytest.approx(7 / 3) and summary["eos_rate"] == pytest.approx(2 / 3)


def test_left_pad_puts_tokens_on_the_right():
    ids, mask = left_pad([[5, 6], [7]], pad_token_id=0)
    assert ids.tolist() == [[5, 6], [0, 7]]
    assert mask.tolist() == [[1, 1], [0, 1]]


@pytest.mark.parametrize("bf16", [False, True])
def test_evaluate_script_on_tiny_models(tmp_path, tiny_dir, bf16):
    """End to end on a tiny policy compared with itself, in fp32 and under bf16 autocast: every number is defined
    and self-consistent (sampling, log-probs and scores share one precision context)."""
    from transformers import AutoModelForSequenceClassification

    from tiny import ORCA_ROWS, write_rows

    rm = tmp_path / "rm"
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_dir), num_labels=1)
    model.save_pretrained(str(rm))
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(tiny_dir)).save_pretrained(str(rm))
    data = write_rows(tmp_path / "heldout.jsonl", ORCA_ROWS)
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
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"precision: {'bf16' if bf16 else 'no'} mixed precision" in result.stderr
    report = json.loads((out / "evaluation.json").read_text())
    assert report["prompts"] == 4
    # Same weights and the same sampling seed: identical responses, so every comparison is a tie and KL is 0.
    assert report["win_rate_rm"]["ties"] == 4 and report["win_rate_rm"]["win_rate"] == 0.5
    assert report["kl_ppo_sft"]["mean"] == pytest.approx(0.0, abs=1e-5)
    assert report["rm_heldout"]["pairs"] == len(ORCA_ROWS)
    assert len((out / "samples.jsonl").read_text().splitlines()) == 4
