"""reward_modeling.py: strict metrics, saved reward statistics, the reference command line, CLI errors, torchrun."""

from __future__ import annotations

import importlib
import json
import math

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from conftest import free_port, run_script
from rlhf.data.encoding import encode_pairs, reward_features
from rlhf.data.pairs import Pair
from rlhf.data.prompt_format import PromptFormat
from rlhf.errors import run_main
from rlhf.evaluation import preference_metrics
from rlhf.models.reward import STATS_FILE, load_reward_stats, reward_stats, save_reward_stats, score_sequences
from rlhf.outputs.folders import COMPLETE_MARKER
from tiny import write_rows

TOKEN = "hf_TESTtokenQ8zR3xV1k9mN"


def arithmetic_rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        j = i % 7
        system = "You answer sums." if i % 3 == 0 else ""
        question, chosen, rejected = f"What is {i} plus {j}?", f"{i} plus {j} is {i + j}.", f"It is {i + j + 3}."
        rows.append({"system": system, "question": question, "chosen": chosen, "rejected": rejected})
    return rows


# ----------------------------------------------------------------------------------------------------------------
# Metrics on hand-made scores


def test_preference_metrics_count_ties_as_wrong():
    chosen = torch.tensor([3.0, 1.0, 2.0, 0.5])
    rejected = torch.tensor([1.0, 1.0, 5.0, 0.0])  # margins 2, 0 (tie), -3, 0.5
    metrics = preference_metrics(chosen, rejected)
    assert metrics["accuracy"] == 0.5 and metrics["tie_rate"] == 0.25 and metrics["pairs"] == 4
    assert metrics["margin_mean"] == pytest.approx(-0.125)
    margins = [2.0, 0.0, -3.0, 0.5]
    assert metrics["margin_std"] == pytest.approx(math.sqrt(sum((m + 0.125) ** 2 for m in margins) / 4))


def test_a_constant_reward_model_scores_zero_accuracy():
    metrics = preference_metrics(torch.full((5,), 0.7), torch.full((5,), 0.7))
    assert metrics["accuracy"] == 0.0 and metrics["tie_rate"] == 1.0 and metrics["margin_mean"] == 0.0


def test_preference_metrics_reject_empty_or_mismatched_input():
    with pytest.raises(ValueError):
        preference_metrics(torch.zeros(0), torch.zeros(0))
    with pytest.raises(ValueError):
        preference_metrics(torch.zeros(3), torch.zeros(2))


def test_reward_stats_are_population_mean_and_std_and_round_trip(tmp_path):
    stats = reward_stats(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert stats == {"mean": 2.5, "std": pytest.approx(math.sqrt(1.25)), "n": 4}
    assert load_reward_stats(tmp_path) is None
    save_reward_stats(tmp_path, stats)
    assert load_reward_stats(tmp_path) == stats and (tmp_path / STATS_FILE).is_file()


def test_scores_do_not_depend_on_right_padding(tiny_dir):
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_dir), num_labels=1).train()
    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    short = tok("2 plus 3 is 5.<|im_end|>")["input_ids"]
    long = tok("The capital of France is Paris. The capital of Italy is Rome.<|im_end|>")["input_ids"]
    alone = score_sequences(model, [short], tok.pad_token_id)
    batched = score_sequences(model, [long, short], tok.pad_token_id)
    assert torch.allclose(alone[0], batched[1], atol=1e-5)
    assert model.training  # dropout was off for scoring only; the mode is restored


def test_scores_come_back_in_input_order_when_batched_by_length(tiny_dir):
    """score_sequences batches sequences of similar length together (less padding); the order must not change."""
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_dir), num_labels=1)
    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    texts = ["2 plus 3 is 5.", "The capital of France is Paris. The capital of Italy is Rome.", "Sorry.", "It is 8."]
    sequences = [tok(t + "<|im_end|>")["input_ids"] for t in texts * 2]
    one_by_one = torch.cat([score_sequences(model, [s], tok.pad_token_id) for s in sequences])
    in_pairs = score_sequences(model, sequences, tok.pad_token_id, batch_size=2)
    torch.testing.assert_close(in_pairs, one_by_one, atol=1e-5, rtol=0)
    assert len(set(one_by_one.tolist())) == len(texts)  # distinct scores: a permutation would be caught
    assert torch.equal(in_pairs[: len(texts)], in_pairs[len(texts) :])  # equal sequences: bit-equal scores


@pytest.mark.parametrize("peft", [True, False])
def test_a_bf16_base_with_float32_trainable_weights_runs_without_autocast(tiny_dir, peft):
    """--torch_dtype bfloat16 keeps the frozen base in bf16 and the trained weights (score head, LoRA) in float32.
    Without autocast (fp32 runs, optimum-habana's trainer on a CPU, FSDP without mixed precision) the float32 head
    still gets float32 input: the forward and backward run, and the gradients are float32."""
    from transformers import AutoTokenizer

    from rlhf.models.loading import load_reward_model, upcast_trainable, with_lora
    from rlhf.scripts.reward_modeling import RewardModelArguments

    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    args = RewardModelArguments(model_name_or_path=str(tiny_dir), peft="lora" if peft else "none")
    model = load_reward_model(str(tiny_dir), tok, token=None, dtype=torch.bfloat16, trained=False)
    model = with_lora(model, args.peft_config("SEQ_CLS", modules_to_save=["score"]))
    upcast_trainable(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    if peft:
        assert any(p.dtype == torch.bfloat16 for p in model.parameters() if not p.requires_grad)
    ids = torch.tensor([[5, 17, 99, 230, 41], [7, 300, 12, 8, 9]])
    score = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert score.dtype == torch.float32 and score.shape == (2, 1)
    score.sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in trainable if p.grad is not None)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)


def test_help_documents_the_reference_flags(capsys):
    reward_modeling = importlib.import_module("reward_modeling")
    with pytest.raises(SystemExit) as exit_:
        reward_modeling.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    flags = """--model_name_or_path --output_dir --log_level --num_train_epochs --per_device_train_batch_size
        --hf_access_token --use_habana --use_lazy_mode --ddp_find_unused_parameters --torch_dtype --load_in_4bit
        --lora_rank --validation_split_percentage --max_length --dataset_name --trust_remote_code"""
    for flag in flags.split():
        assert f"  {flag} " in text or f"  {flag}," in text, flag
    assert "bfloat16" in text


# ----------------------------------------------------------------------------------------------------------------
# In process: full fine-tune, no held-out rows


@pytest.mark.parametrize("bf16", [False, True])
def test_full_fine_tune_without_eval_rows_saves_stats_from_training_pairs(tiny_dir, tmp_path, bf16):
    """The reward statistics are those of the trained model, scored in the precision the stage trained in (bf16
    autocast or fp32): the same scores computed here agree to that precision's rounding."""
    reward_modeling = importlib.import_module("reward_modeling")
    rows = arithmetic_rows(6)
    for row in rows[::2]:  # three content pairs: the same answer with the wrong number ("0 plus 0 is 3.")
        row["rejected"] = row["chosen"].rsplit(" ", 1)[0] + f" {int(row['chosen'].rsplit(' ', 1)[1][:-1]) + 3}."
    data = write_rows(tmp_path / "pairs.jsonl", rows)
    out = tmp_path / "rm"
    flags = "--validation_split_percentage 0 --peft none --torch_dtype float32 --max_steps 2 --report_to none "
    flags += f"--save_strategy no --per_device_train_batch_size 2 --bf16 {bf16}"
    paths = ["--model_name_or_path", str(tiny_dir), "--dataset_name", str(data), "--output_dir", str(out)]
    assert reward_modeling.main([*paths, *flags.split()]) == 0
    assert (out / COMPLETE_MARKER).is_file() and not (out / "adapter").exists()
    stats = load_reward_stats(out)
    assert stats["split"] == "train_subset" and stats["n"] == 12
    heldout = json.loads((out / "metrics.json").read_text())["heldout"]
    assert heldout["pairs"] == 6 and heldout["split"] == "train_subset"
    model = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    tok = AutoTokenizer.from_pretrained(str(out))
    assert model.config.num_labels == 1 and model.config.pad_token_id == tok.pad_token_id != tok.eos_token_id
    pairs = [Pair(r["system"], r["question"], r["chosen"], r["rejected"]) for r in rows]
    features = reward_features(encode_pairs(pairs, tok, PromptFormat.load(out), None))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        scores = score_sequences(
            model, [f["chosen_ids"] for f in features] + [f["rejected_ids"] for f in features], tok.pad_token_id
        )
    # fp32: the same numbers to float32 rounding; bf16: 8 mantissa bits, scores of order 1, other batch shapes.
    tol = 2e-2 if bf16 else 1e-5
    assert scores.mean().item() == pytest.approx(stats["mean"], abs=tol)
    assert scores.std(unbiased=False).item() == pytest.approx(stats["std"], abs=tol)
    # the held-out metrics apart for the content pairs (rows 0, 2, 4) and the form pairs (1, 3, 5)
    margins = scores[:6] - scores[6:]
    assert heldout["content"]["pairs"] == heldout["form"]["pairs"] == 3
    assert heldout["content"]["margin_mean"] == pytest.approx(margins[::2].mean().item(), abs=tol)
    assert heldout["form"]["margin_mean"] == pytest.approx(margins[1::2].mean().item(), abs=tol)
    assert heldout["margin_mean"] == pytest.approx(margins.mean().item(), abs=tol)


# ----------------------------------------------------------------------------------------------------------------
# --length_groups, --share_prompts: a batch in several forwards, the same loss and gradients for less work


class CountingCalls:
    """The classifier, recording the shape of each forward it is asked for."""

    def __init__(self, model):
        self.model, self.shapes = model, []

    def __call__(self, input_ids, attention_mask, **kwargs):
        self.shapes.append(tuple(input_ids.shape))
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)


def matches_one_padded_forward(model, wrap, ids, mask) -> list[tuple[int, int]]:
    """Scores and gradients through ``wrap(model)`` equal those of one forward over the whole padded batch (fp32: to
    float32 rounding); returns the shapes of the forwards ``wrap`` asked the model for."""

    def scores_and_grads(call):
        model.zero_grad()
        scores = call(input_ids=ids, attention_mask=mask, use_cache=False).logits
        (scores * torch.arange(1.0, len(ids) + 1.0).unsqueeze(1)).sum().backward()  # a different weight per row
        return scores.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    padded_scores, padded_grads = scores_and_grads(model)
    counting = CountingCalls(model)
    scores, grads = scores_and_grads(wrap(counting))
    torch.testing.assert_close(scores, padded_scores, atol=1e-5, rtol=1e-5)
    assert len(set(scores.flatten().tolist())) == len(ids)  # distinct: a permutation would be caught
    assert len(grads) == len(padded_grads) > 0
    for mine, padded in zip(grads, padded_grads, strict=True):
        torch.testing.assert_close(mine, padded, atol=1e-5, rtol=1e-4)
    return counting.shapes


def test_length_grouped_call_gives_the_padded_forwards_scores_and_gradients(tiny_dir):
    """Six right-padded rows of lengths 3..14 in three groups: three forwards, each cut after its longest row, and
    the scores and gradients of one forward over the whole padded batch (fp32: to float32 rounding)."""
    from rlhf.models.reward import LengthGroupedCall

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_dir), num_labels=1).eval()
    pad = model.config.pad_token_id
    lengths = [14, 3, 9, 5, 12, 4]
    ids = torch.full((len(lengths), 14), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(5, model.config.vocab_size, (n,))
        mask[row, :n] = 1

    shapes = matches_one_padded_forward(model, lambda counting: LengthGroupedCall(counting, 3), ids, mask)
    assert shapes == [(2, 4), (2, 9), (2, 14)]  # rows (3, 4), (5, 9), (12, 14), each cut to its longest
    counting = CountingCalls(model)
    LengthGroupedCall(counting, 10)(input_ids=ids[:2], attention_mask=mask[:2])
    assert counting.shapes == [(1, 3), (1, 14)]  # more groups than rows: one row a forward


def preference_batch(model, prompts, answers):
    """TRL's layout: the chosen rows (prompt + first answer), then the rejected ones, right-padded to the longest."""
    pad = model.config.pad_token_id
    sequences = [p + a[0] for p, a in zip(prompts, answers, strict=True)]
    sequences += [p + a[1] for p, a in zip(prompts, answers, strict=True)]
    width = max(len(seq) for seq in sequences)
    ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    return ids, mask


@pytest.mark.parametrize(
    "groups, shapes",
    [
        (1, [(4, 12), (8, 8)]),  # prompts of 7, 3, 12 and 0 tokens; answers of 1 to 8 tokens after them
        (2, [(2, 3), (4, 4), (2, 12), (4, 8)]),  # pairs sorted by prompt length: (4th, 2nd), (1st, 3rd)
        (4, [(2, 3), (1, 3), (2, 4), (1, 7), (2, 8), (1, 12), (2, 5)]),  # the 4th pair alone: its rows as they are
    ],
)
def test_shared_prompt_call_gives_the_padded_forwards_scores_and_gradients(tiny_dir, groups, shapes):
    """Four pairs: prompts of 7, 2 and 11 tokens and none, answers of other lengths (the second pair's share a first
    word, the third's rejected answer is its chosen one cut short, so the prompt it shares is 12 tokens: each answer
    keeps its last token). The prompts computed once, in one or more groups of pairs, and the scores and gradients
    of one forward over the whole padded batch."""
    from rlhf.models.reward import SharedPromptCall

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_dir), num_labels=1).eval()

    def tokens(n):
        return torch.randint(5, model.config.vocab_size, (n,)).tolist()

    word, long_answer = tokens(1), tokens(6)
    first = tokens(1)
    answers = [
        (tokens(3), tokens(8)),
        (word + tokens(4), word + tokens(1)),
        (long_answer, long_answer[:2]),
        (first + tokens(2), [first[0] + 1] + tokens(1)),
    ]
    ids, mask = preference_batch(model, [tokens(7), tokens(2), tokens(11), []], answers)

    def wrap(counting):
        return SharedPromptCall(counting, model.config.pad_token_id, groups)

    assert matches_one_padded_forward(model, wrap, ids, mask) == shapes


def varied_rows(n: int) -> list[dict]:
    """Pairs of lengths far apart (a batch pads to its longest): every third answer is long."""
    rows = arithmetic_rows(n)
    for row in rows[::3]:
        row["chosen"] += " Adding the two numbers one after the other gives this sum, as counting on shows."
    return rows


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize(
    "plan", [["--length_groups", "3"], ["--share_prompts"], ["--share_prompts", "--length_groups", "2"]]
)
def test_batch_plans_train_the_same_reward_model(tiny_dir, tmp_path, bf16, plan):
    """The stage with --length_groups 3, or --share_prompts (in 1 or 2 groups of pairs), logs the losses of the stage
    computing each batch in TRL's one padded forward and ends with the same scores, to the rounding of the precision
    it trained in."""
    reward_modeling = importlib.import_module("reward_modeling")
    data = write_rows(tmp_path / "pairs.jsonl", varied_rows(24))
    flags = "--validation_split_percentage 0 --peft none --torch_dtype float32 --max_steps 4 --report_to none "
    flags += f"--save_strategy no --per_device_train_batch_size 3 --logging_steps 1 --learning_rate 1e-3 --bf16 {bf16}"
    runs = []
    for extra in ([], plan):
        out = tmp_path / f"rm{len(runs)}"
        paths = ["--model_name_or_path", str(tiny_dir), "--dataset_name", str(data), "--output_dir", str(out)]
        assert reward_modeling.main([*paths, *flags.split(), *extra]) == 0
        runs.append((json.loads((out / "metrics.json").read_text()), load_reward_stats(out)))
    (padded, padded_stats), (planned, planned_stats) = runs
    tol = 5e-2 if bf16 else 1e-4  # bf16 autocast: 8 mantissa bits, other matmul shapes per forward
    assert planned["train"]["train_loss"] == pytest.approx(padded["train"]["train_loss"], abs=tol)
    assert planned_stats["mean"] == pytest.approx(padded_stats["mean"], abs=tol) and planned_stats["std"] > 0
    assert planned["heldout"]["margin_mean"] == pytest.approx(padded["heldout"]["margin_mean"], abs=tol)


@pytest.mark.parametrize(
    "flags, env, expected",
    [
        (["--length_groups", "0"], {}, "--length_groups: expected a positive integer, got 0"),
        (["--length_groups", "2"], {"WORLD_SIZE": "2", "RANK": "1"}, "--length_groups 2: needs one process"),
        (["--length_groups", "2", "--fsdp", "full_shard"], {}, "--length_groups 2: needs no FSDP or DeepSpeed"),
        (["--share_prompts"], {"WORLD_SIZE": "2", "RANK": "1"}, "--share_prompts: needs one process"),
        (["--share_prompts", "--gradient_checkpointing"], {}, "--share_prompts: needs the key-value cache"),
    ],
)
def test_batch_plans_that_cannot_work_are_refused_in_one_line(
    tiny_dir, tmp_path, capfd, monkeypatch, flags, env, expected
):
    reward_modeling = importlib.import_module("reward_modeling")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    data = write_rows(tmp_path / "pairs.jsonl", arithmetic_rows(6))
    paths = ["--model_name_or_path", str(tiny_dir), "--dataset_name", str(data), "--output_dir", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exit_:
        run_main(reward_modeling.main, [*paths, "--report_to", "none", *flags])
    assert exit_.value.code == 2
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------------------------------------------
# Flags that cannot work here stop at once with a message saying why


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--load_in_4bit"], ["--load_in_4bit", "CUDA", "bitsandbytes"]),
        (["--use_habana", "--use_lazy_mode"], ["--use_habana", "habana_frameworks", "install"]),
    ],
)
def test_unsupported_flag_exits_2_with_one_clear_line(tiny_dir, tmp_path, capfd, flags, expected):
    """Through ``run_main``, exactly what ``python reward_modeling.py ...`` runs (subprocesses: see test_sft)."""
    reward_modeling = importlib.import_module("reward_modeling")
    data = write_rows(tmp_path / "pairs.jsonl", arithmetic_rows(6))
    paths = ["--model_name_or_path", str(tiny_dir), "--dataset_name", str(data), "--output_dir", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exit_:
        run_main(reward_modeling.main, [*paths, "--report_to", "none", *flags])
    assert exit_.value.code == 2
    printed = capfd.readouterr()
    lines = [line for line in printed.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), printed.err[-3000:]
    for text in expected:
        assert text in lines[0]
    assert "Traceback" not in printed.err and not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------------------------------------------
# The reference command line of SPEC.md, under torchrun with two CPU processes, with a token that must not leak


def test_reference_command_under_torchrun_trains_keeps_the_token_out_and_rank_0_alone_writes(tiny_dir, tmp_path):
    rows = arithmetic_rows(100)  # the default 2% held out: the first 2 rows
    data = write_rows(tmp_path / "pairs.jsonl", rows)
    out = tmp_path / "rm"
    reference = (
        f"--model_name_or_path {tiny_dir} --output_dir {out} --log_level info --num_train_epochs 1 "
        f"--per_device_train_batch_size 1 --hf_access_token {TOKEN}"
    ).split()  # (pytest's temporary paths have no spaces)
    # Unchanged, plus the local data set and --max_steps 2 so that the test takes seconds, not an epoch; the
    # checkpoints are kept so that they are searched for the token too.
    local = ["--dataset_name", str(data), "--max_steps", "2", "--keep_checkpoints"]
    torchrun = ["-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2", "--master_port"]
    proc = run_script(
        *torchrun, str(free_port()), "reward_modeling.py", *reference, *local, env={"OMP_NUM_THREADS": "1"}
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "Total train batch size (w. parallel, distributed & accumulation) = 2" in proc.stderr
    assert proc.stderr.count("reward_model: model saved to") == 1

    # the token is nowhere: not in any file of the output folder, not in what the run printed
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) > 10 and (out / "checkpoints" / "checkpoint-2" / "training_args.bin").is_file()
    leaked = [str(p.relative_to(out)) for p in files if TOKEN.encode() in p.read_bytes()]
    assert leaked == []
    assert TOKEN not in proc.stdout and TOKEN not in proc.stderr

    # one complete, loadable result, with our model card
    assert (out / COMPLETE_MARKER).is_file() and (out / "adapter" / "adapter_config.json").is_file()
    card = (out / "README.md").read_text()
    assert "# Reward model (reward_modeling.py)" in card and "AutoModelForSequenceClassification" in card
    assert '"accuracy"' in card and "hf_access_token" not in card
    assert not [p.name for p in out.rglob("*") if p.name.startswith((".tmp", ".old"))]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stage"] == "reward_model" and metrics["heldout"]["split"] == "eval"
    assert metrics["heldout"]["pairs"] == 2
    assert set(metrics["heldout"]) >= {"accuracy", "tie_rate", "margin_mean", "margin_std"}
    stats = json.loads((out / STATS_FILE).read_text())
    assert stats["n"] == 4 and stats["split"] == "eval" and stats["std"] > 0
    model = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    tok = AutoTokenizer.from_pretrained(str(out))
    assert model.config.num_labels == 1 and tok.pad_token_id != tok.eos_token_id
    # the saved (merged) model gives the scores that the statistics and metrics were computed from
    pairs = [Pair(r["system"], r["question"], r["chosen"], r["rejected"]) for r in rows[:2]]
    features = reward_features(encode_pairs(pairs, tok, PromptFormat.load(out), None))
    scores = score_sequences(
        model, [f["chosen_ids"] for f in features] + [f["rejected_ids"] for f in features], tok.pad_token_id
    )
    assert scores.mean().item() == pytest.approx(stats["mean"], abs=2e-3)
    assert (scores[:2] - scores[2:]).mean().item() == pytest.approx(metrics["heldout"]["margin_mean"], abs=2e-3)
    assert PromptFormat.load(out).kind == "chat"


@pytest.mark.parametrize("weights", ["bf16", "fp32 under bf16 autocast"])
def test_the_score_head_computes_in_float32_so_distinct_responses_do_not_tie(tiny_dir, weights):
    """A bf16 score keeps 8 bits of mantissa, so different responses tie (a tie counts as a half win and as a wrong
    ranking in held-out accuracy). score_head_in_fp32, which load_scorer applies, computes the head's projection in
    float32 from the same hidden states: every distinct sequence gets its own score, the float32 dot product."""
    from contextlib import nullcontext

    from rlhf.models.reward import score_head_in_fp32

    dtype = torch.bfloat16 if weights == "bf16" else torch.float32
    with torch.random.fork_rng(devices=[]):  # the new head's random init must not move the suite's global RNG
        model = AutoModelForSequenceClassification.from_pretrained(str(tiny_dir), num_labels=1, dtype=dtype)
    with torch.no_grad():  # scores of a few units, like a trained reward model's
        model.score.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(0))
    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    sequences = [tok(f"{a} plus {b} is {a + b}.<|im_end|>")["input_ids"] for a in range(20) for b in range(10)]
    context = nullcontext if weights == "bf16" else lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    keys = sorted(model.state_dict())
    with context():
        rounded = score_sequences(model, sequences, tok.pad_token_id)
        score_head_in_fp32(model)
        exact = score_sequences(model, sequences, tok.pad_token_id)
        ids = torch.tensor(sequences[:1])
        hidden = model.model(input_ids=ids).last_hidden_state[0, -1]
    assert len(set(rounded.tolist())) < len(sequences)  # bf16 scores tie
    assert len(set(exact.tolist())) == len(sequences)  # float32 scores do not
    expected = hidden.float() @ model.score.weight.float()[0]
    torch.testing.assert_close(exact[0], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(exact, rounded, atol=0.1, rtol=0.02)  # the same scores, only finer
    assert sorted(model.state_dict()) == keys  # same module, same names: nothing else changes
    assert model.model.layers[0].mlp.up_proj.weight.dtype == dtype  # the rest of the model keeps its precision
