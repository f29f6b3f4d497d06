"""One prompt format for every stage: rendering, choosing, saving, and reuse by the next stage."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import trl
from transformers import AutoTokenizer

from rlhf.data.encoding import encode_pairs, reward_features, sft_features
from rlhf.data.pairs import Pair
from rlhf.data.prompt_format import FILENAME, PromptFormat, resolve_prompt_format
from rlhf.errors import UsageError
from tiny import CHATML, ORCA_ROWS, write_rows


@pytest.fixture(scope="module")
def chat_tok(tiny_dir):
    return AutoTokenizer.from_pretrained(str(tiny_dir))


@pytest.fixture(scope="module")
def plain_tok(tiny_plain_dir):
    return AutoTokenizer.from_pretrained(str(tiny_plain_dir))


def test_chat_format_has_a_system_turn_only_when_system_is_non_empty(chat_tok):
    fmt = resolve_prompt_format("auto", chat_tok, None)
    assert fmt.kind == "chat" and fmt.chat_template == CHATML and fmt.eos_token == "<|im_end|>"
    user_and_answer = "<|im_start|>user\nWhat is 2 plus 3?<|im_end|>\n<|im_start|>assistant\n"
    assert fmt.render_prompt("", "What is 2 plus 3?", chat_tok) == user_and_answer
    assert fmt.render_prompt(" \n", "What is 2 plus 3?", chat_tok) == user_and_answer
    assert (
        fmt.render_prompt("Be brief.", "What is 2 plus 3?", chat_tok)
        == "<|im_start|>system\nBe brief.<|im_end|>\n" + user_and_answer
    )
    assert fmt.render_completion("5.") == "5.<|im_end|>"


def test_plain_format_is_the_documented_template(plain_tok):
    fmt = resolve_prompt_format("auto", plain_tok, None)
    assert fmt.kind == "plain" and fmt.chat_template is None and fmt.eos_token == "<|endoftext|>"
    assert fmt.render_prompt("", "Q?") == "### Question:\nQ?\n\n### Answer:\n"
    assert fmt.render_prompt("Be brief.", "Q?") == "Be brief.\n\n### Question:\nQ?\n\n### Answer:\n"
    assert fmt.render_completion("A.") == "A.<|endoftext|>"


def test_raw_format_is_the_reference_concatenation(chat_tok):
    fmt = resolve_prompt_format("raw", chat_tok, None)
    assert fmt.kind == "raw" and fmt.chat_template is None
    assert fmt.render_prompt("You are helpful. ", "Q?") == "You are helpful. Q?"
    assert fmt.render_prompt("", "Q?") == "Q?"
    assert fmt.render_completion("A.") == "A.<|im_end|>"


def test_flag_choices(chat_tok, plain_tok):
    assert resolve_prompt_format("plain", chat_tok, None).kind == "plain"
    assert resolve_prompt_format("chat", chat_tok, None).kind == "chat"
    with pytest.raises(UsageError, match="no chat template"):
        resolve_prompt_format("chat", plain_tok, None)
    with pytest.raises(UsageError, match="expected one of auto, chat, plain, raw"):
        resolve_prompt_format("alpaca", chat_tok, None)


def test_saved_format_round_trips_and_wins_over_the_tokenizer(tmp_path, chat_tok):
    assert PromptFormat.load(tmp_path) is None
    saved = PromptFormat(kind="plain", eos_token="<|im_end|>")
    saved.save(tmp_path)
    assert json.loads((tmp_path / FILENAME).read_text())["kind"] == "plain"
    assert PromptFormat.load(tmp_path) == saved
    assert resolve_prompt_format("auto", chat_tok, str(tmp_path)) == saved
    assert resolve_prompt_format("plain", chat_tok, str(tmp_path)) == saved
    with pytest.raises(UsageError, match=r"--prompt_template chat: .* trained with the 'plain' format"):
        resolve_prompt_format("chat", chat_tok, str(tmp_path))


def test_saved_chat_template_is_used_even_if_the_tokenizer_template_changes(tmp_path, tiny_dir):
    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    resolve_prompt_format("auto", tok, None).save(tmp_path)
    before = PromptFormat.load(tmp_path).render_prompt("S", "Q", tok)
    tok.chat_template = "{% for m in messages %}[{{ m['content'] }}]{% endfor %}"
    fmt = resolve_prompt_format("auto", tok, str(tmp_path))
    assert fmt.render_prompt("S", "Q", tok) == before
    assert before.startswith("<|im_start|>system\nS")


def test_tokenizer_without_eos_is_refused(tiny_plain_dir):
    tok = AutoTokenizer.from_pretrained(str(tiny_plain_dir))
    tok.eos_token = None
    with pytest.raises(UsageError, match="no EOS token"):
        resolve_prompt_format("auto", tok, None)


def test_sft_and_rm_features_are_built_from_the_same_encoded_text(chat_tok):
    fmt = resolve_prompt_format("auto", chat_tok, None)
    pairs = [Pair(r["system"], r["question"], r["chosen"], r["rejected"]) for r in ORCA_ROWS]
    encoded = encode_pairs(pairs, chat_tok, fmt, None)
    sft_ids = [f["input_ids"] for f in sft_features(encoded)]
    rm = reward_features(encoded)
    assert sft_ids == [f["chosen_ids"] for f in rm]
    for pair, ids, feat in zip(pairs, sft_ids, rm, strict=True):
        prompt = fmt.render_prompt(pair.system, pair.question, chat_tok)
        assert chat_tok.decode(ids) == prompt + pair.chosen + "<|im_end|>"
        assert chat_tok.decode(feat["rejected_ids"]) == prompt + pair.rejected + "<|im_end|>"


# ----------------------------------------------------------------------------------------------------------------
# Across stages: SFT writes the format, the reward model started from the SFT folder reuses it.


def run_capturing(module_name: str, trainer_name: str, argv: list[str]):
    """Run a stage script's main in this process and return the TRL trainer it built."""
    import importlib

    module = importlib.import_module(module_name)
    built = []
    base = getattr(trl, trainer_name)

    class Capturing(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trl, trainer_name, Capturing)
        assert module.main(argv) == 0
    (trainer,) = built
    return trainer


@pytest.fixture(scope="module")
def sft_then_rm(tiny_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stages")
    rows = ORCA_ROWS + [
        {
            "system": "",
            "question": f"What is {i} plus 1?",
            "chosen": f"{i} plus 1 is {i + 1}.",
            "rejected": "I do not know.",
        }
        for i in range(4)
    ]
    data = write_rows(tmp / "pairs.jsonl", rows)
    common = [
        "--dataset_name",
        str(data),
        "--max_steps",
        "1",
        "--report_to",
        "none",
        "--save_strategy",
        "no",
        "--per_device_train_batch_size",
        "2",
        "--validation_split_percentage",
        "25",
    ]
    sft_out, rm_out = tmp / "sft", tmp / "rm"
    sft_trainer = run_capturing(
        "sft", "SFTTrainer", ["--model_name_or_path", str(tiny_dir), "--output_dir", str(sft_out), *common]
    )
    rm_trainer = run_capturing(
        "reward_modeling",
        "RewardTrainer",
        ["--model_name_or_path", str(sft_out), "--output_dir", str(rm_out), "--torch_dtype", "float32", *common],
    )
    return sft_out, rm_out, sft_trainer, rm_trainer, rows, common


def test_format_is_saved_by_sft_and_reused_by_the_reward_model(sft_then_rm):
    sft_out, rm_out, *_ = sft_then_rm
    saved = PromptFormat.load(sft_out)
    assert saved is not None and saved.kind == "chat" and saved.chat_template == CHATML
    assert (rm_out / FILENAME).read_bytes() == (sft_out / FILENAME).read_bytes()


def test_sft_and_reward_model_trainers_see_identical_token_sequences(sft_then_rm):
    sft_out, _, sft_trainer, rm_trainer, rows, _ = sft_then_rm
    sft_seqs = Counter(tuple(ids) for ids in sft_trainer.train_dataset["input_ids"])
    rm_chosen = Counter(tuple(ids) for ids in rm_trainer.train_dataset["chosen_ids"])
    assert len(sft_seqs) == 6 and sft_seqs == rm_chosen
    tok = AutoTokenizer.from_pretrained(str(sft_out))
    fmt = PromptFormat.load(sft_out)
    expected = {fmt.render_prompt(r["system"], r["question"], tok) + r["chosen"] + fmt.eos_token for r in rows[2:]}
    assert {tok.decode(list(seq)) for seq in sft_seqs} == expected


def test_reward_model_refuses_a_format_that_contradicts_the_sft_folder(sft_then_rm, tmp_path):
    import reward_modeling

    sft_out, *_, common = sft_then_rm
    with pytest.raises(UsageError, match=r"--prompt_template plain: the model in .* 'chat' format"):
        reward_modeling.main(
            [
                "--model_name_or_path",
                str(sft_out),
                "--output_dir",
                str(tmp_path / "rm"),
                "--prompt_template",
                "plain",
                *common,
            ]
        )
    assert not (tmp_path / "rm").exists()
