"""Fault suite, hostile flags: contradictory or out-of-range values stop with one line before any heavy work.

Each case runs ``run_main(<script>.main, argv)`` in this process, which is exactly what ``python sft.py ...`` /
``python reward_modeling.py ...`` run: exit code 2, one ``error:`` line on stderr naming the flag, no traceback.
"Before any heavy work" is checked, not assumed: model loading is watched, and for every case but the few that can
only be judged against the loaded model (a LoRA target that the model lacks, a folder without weights) no model is
loaded and no output folder is created.
"""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import pytest

from rlhf.errors import UsageError, run_main
from rlhf.models.loading import check_causal_lm_folder, check_reward_folder
from rlhf.outputs.folders import COMPLETE_MARKER
from tiny import build_tokenizer, write_rows

ROWS = [
    {"system": "", "question": f"What is {i} plus 1?", "chosen": f"{i} plus 1 is {i + 1}.", "rejected": "No."}
    for i in range(8)
]

# (flags, substrings of the error line, whether the model may be loaded before the error)
EARLY, LATE = False, True
COMMON = {
    "negative_max_length": (["--max_length", "-5"], ["--max_length", "positive", "-5"], EARLY),
    "zero_max_length": (["--max_length", "0"], ["--max_length", "positive"], EARLY),
    "zero_batch_size": (["--per_device_train_batch_size", "0"], ["--per_device_train_batch_size"], EARLY),
    "zero_eval_batch_size": (["--per_device_eval_batch_size", "0"], ["--per_device_eval_batch_size"], EARLY),
    "zero_accumulation": (["--gradient_accumulation_steps", "0"], ["--gradient_accumulation_steps"], EARLY),
    "negative_learning_rate": (["--learning_rate", "-0.0001"], ["--learning_rate", "finite value >= 0"], EARLY),
    "nan_learning_rate": (["--learning_rate", "nan"], ["--learning_rate", "nan"], EARLY),
    "negative_weight_decay": (["--weight_decay", "-0.1"], ["--weight_decay"], EARLY),
    "negative_seed": (["--seed", "-1"], ["--seed", "2**32"], EARLY),
    "zero_epochs": (
        ["--num_train_epochs", "0", "--max_steps", "-1"],
        ["--num_train_epochs", "nothing to train"],
        EARLY,
    ),
    "zero_save_steps": (["--save_strategy", "steps", "--save_steps", "0"], ["--save_steps"], EARLY),
    "zero_logging_steps": (["--logging_steps", "0"], ["logging_steps"], EARLY),
    "fp16_and_bf16": (["--bf16", "True", "--fp16", "True"], ["fp16", "bf16"], EARLY),
    "split_100": (["--validation_split_percentage", "100"], ["--validation_split_percentage", "[0, 100)"], EARLY),
    "split_negative": (["--validation_split_percentage", "-1"], ["--validation_split_percentage"], EARLY),
    "split_nan": (["--validation_split_percentage", "nan"], ["--validation_split_percentage", "nan"], EARLY),
    "max_train_samples_negative": (["--max_train_samples", "-1"], ["--max_train_samples"], EARLY),
    "max_train_samples_zero": (["--max_train_samples", "0"], ["--max_train_samples"], EARLY),
    "unknown_peft": (["--peft", "qlora"], ["--peft", "invalid choice", "qlora", "lora", "none"], EARLY),
    "unknown_prompt_template": (
        ["--prompt_template", "alpaca"],
        ["--prompt_template", "invalid choice", "alpaca", "'auto', 'chat', 'plain', 'raw'"],
        EARLY,
    ),
    "unknown_dtype": (["--torch_dtype", "int8"], ["--torch_dtype", "int8"], EARLY),
    "lora_rank_zero": (["--lora_rank", "0"], ["--lora_rank"], EARLY),
    "lora_dropout_above_one": (["--lora_dropout", "1.5"], ["--lora_dropout"], EARLY),
    "unknown_nonfinite_policy": (
        ["--nonfinite_loss", "ignore"],
        ["--nonfinite_loss", "invalid choice", "ignore", "'stop', 'skip'"],
        EARLY,
    ),
    "eval_strategy_without_eval_rows": (
        ["--eval_strategy", "steps", "--validation_split_percentage", "0"],
        ["--eval_strategy needs eval rows"],
        EARLY,
    ),
    "unknown_optimizer": (["--optim", "sgd_with_magic"], ["--optim", "invalid choice"], EARLY),
    "not_a_number": (["--learning_rate", "fast"], ["--learning_rate", "invalid float value"], EARLY),
    "unknown_flag": (["--frobnicate", "3"], ["--frobnicate"], EARLY),
    "unknown_tracker": (["--report_to", "tensorboard,wandbx"], ["--report_to", "unknown tracker wandbx"], EARLY),
    "tracker_not_installed": (["--report_to", "mlflow"], ["--report_to mlflow", "not installed"], EARLY),
    "use_habana_without_habana": (["--use_habana", "--use_lazy_mode"], ["--use_habana", "install"], EARLY),
    "resume_from_missing_folder": (
        ["--resume_from_checkpoint", "/nonexistent/checkpoint-9"],
        ["--resume_from_checkpoint", "no such checkpoint folder"],
        EARLY,
    ),
    "lora_layers_not_a_range": (["--lora_layers", "top-2"], ["--lora_layers", "like 22-29"], EARLY),
    "lora_layers_beyond_the_model": (["--lora_layers", "1-5"], ["--lora_layers", "has 2 layers", "5"], LATE),
    # QLoRA exists for both stages (and rl_training.py, tests/test_distributed_quantized.py); this machine has no GPU.
    "load_in_4bit_without_gpu": (["--load_in_4bit"], ["--load_in_4bit", "CUDA", "bitsandbytes"], EARLY),
    "load_in_8bit_without_gpu": (["--load_in_8bit"], ["--load_in_8bit", "CUDA", "bitsandbytes"], EARLY),
    "load_in_4bit_and_8bit": (["--load_in_4bit", "--load_in_8bit"], ["exclusive"], EARLY),
    "lora_target_missing": (
        ["--lora_target_modules", "q_proj,attn_c"],
        ["--lora_target_modules", "attn_c", "q_proj", "all-linear"],
        LATE,
    ),
}
SFT_ONLY = {
    "use_fast_tokenizer_not_a_bool": (["--use_fast_tokenizer", "maybe"], ["--use_fast_tokenizer", "maybe"], EARLY),
}
RM_ONLY = {
    "zero_scoring_batch": (["--eval_batch_size", "0"], ["--eval_batch_size"], EARLY),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_rows(tmp_path_factory.mktemp("flags") / "pairs.jsonl", ROWS)


@pytest.fixture(scope="module")
def folders(tiny_dir, tmp_path_factory) -> dict[str, Path]:
    """Model folders of the wrong kind, next to the good tiny one."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    root = tmp_path_factory.mktemp("wrong-models")
    reward = root / "reward-model"
    config = LlamaConfig.from_pretrained(str(tiny_dir))
    config.num_labels = 1
    LlamaForSequenceClassification(config).save_pretrained(str(reward))
    AutoTokenizer.from_pretrained(str(tiny_dir)).save_pretrained(str(reward))
    no_eos = root / "no-eos"
    tok = build_tokenizer(no_eos, chat=False, pad=False)
    tok.eos_token = None
    tok.save_pretrained(str(no_eos))
    config_data = json.loads((no_eos / "tokenizer_config.json").read_text())
    assert config_data.get("eos_token") is None
    tokenizer_only = root / "tokenizer-only"
    shutil.copytree(
        tiny_dir,
        tokenizer_only,
        ignore=shutil.ignore_patterns("*.safetensors", "config.json", "generation_config.json"),
    )
    return {"reward": reward, "no_eos": no_eos, "tokenizer_only": tokenizer_only}


def run(script: str, argv: list[str], capfd) -> tuple[int, list[str], str]:
    """Exit code, the ``error:`` lines (log lines before them are fine), and all that was printed."""
    module = importlib.import_module(script)
    capfd.readouterr()
    with pytest.raises(SystemExit) as exit_:
        run_main(module.main, argv)
    printed = capfd.readouterr()
    lines = [line for line in printed.err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    if errors and lines[-1] != errors[-1]:
        errors.append(f"(not the last line: {lines[-1]!r})")
    return exit_.value.code, errors, printed.err + printed.out


def check_refused(script, model, data, tmp_path, capfd, loads, flags, expected, late):
    out = tmp_path / "out"
    argv = [
        "--model_name_or_path",
        str(model),
        "--dataset_name",
        str(data),
        "--output_dir",
        str(out),
        "--report_to",
        "none",
        "--max_steps",
        "1",
        *flags,
    ]
    code, lines, printed = run(script, argv, capfd)
    assert code == 2, printed[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), printed[-3000:]
    for text in expected:
        assert text in lines[0], lines[0]
    assert "Traceback" not in printed
    assert not (out / COMPLETE_MARKER).exists()
    if not late:
        assert loads == [], f"a model was loaded before the error: {loads}"
        assert not out.exists()


@pytest.mark.parametrize("case", sorted({**COMMON, **SFT_ONLY}))
def test_sft_refuses(case, tiny_dir, data, tmp_path, capfd, loads):
    flags, expected, late = {**COMMON, **SFT_ONLY}[case]
    check_refused("sft", tiny_dir, data, tmp_path, capfd, loads, flags, expected, late)


@pytest.mark.parametrize("case", sorted({**COMMON, **RM_ONLY}))
def test_reward_modeling_refuses(case, tiny_dir, data, tmp_path, capfd, loads):
    flags, expected, late = {**COMMON, **RM_ONLY}[case]
    check_refused("reward_modeling", tiny_dir, data, tmp_path, capfd, loads, flags, expected, late)


# ---------------------------------------------------------------------------------------------------- model folders


def test_sft_refuses_a_reward_model_folder_before_reading_data(folders, data, tmp_path, capfd, loads):
    check_refused(
        "sft",
        folders["reward"],
        data,
        tmp_path,
        capfd,
        loads,
        [],
        ["--model_name_or_path", "expected a *ForCausalLM model", "LlamaForSequenceClassification"],
        EARLY,
    )


@pytest.mark.parametrize("script", ["sft", "reward_modeling"])
def test_a_tokenizer_without_eos_is_refused(script, tiny_dir, folders, data, tmp_path, capfd, loads):
    flags = ["--tokenizer_name", str(folders["no_eos"])]
    check_refused(script, tiny_dir, data, tmp_path, capfd, loads, flags, ["has no EOS token"], EARLY)


@pytest.mark.parametrize("script", ["sft", "reward_modeling"])
def test_a_model_folder_that_does_not_exist(script, data, tmp_path, capfd, loads):
    expected = ["--model_name_or_path", "no-model: no such folder"]
    check_refused(script, tmp_path / "no-model", data, tmp_path, capfd, loads, [], expected, EARLY)


@pytest.mark.parametrize("script", ["sft", "reward_modeling"])
def test_a_model_folder_without_weights(script, folders, data, tmp_path, capfd, loads):
    check_refused(
        script,
        folders["tokenizer_only"],
        data,
        tmp_path,
        capfd,
        loads,
        [],
        ["--model_name_or_path", "cannot load the model"],
        LATE,
    )


def test_prompt_template_that_the_tokenizer_cannot_render(tiny_plain_dir, data, tmp_path, capfd, loads):
    check_refused(
        "sft",
        tiny_plain_dir,
        data,
        tmp_path,
        capfd,
        loads,
        ["--prompt_template", "chat"],
        ["--prompt_template chat", "no chat template"],
        EARLY,
    )


def test_required_model_flag_missing(data, tmp_path, capfd):
    code, lines, _ = run("sft", ["--dataset_name", str(data), "--output_dir", str(tmp_path / "o")], capfd)
    assert code == 2 and len(lines) == 1 and "--model_name_or_path" in lines[0]


def test_ppo_reward_model_folder_checks(tiny_dir, folders):
    """The PPO stage's own check (rl_training.py calls these first): a policy is not a reward model, and back."""
    with pytest.raises(UsageError, match=r"--reward_model_name .*expected a \*ForSequenceClassification model"):
        check_reward_folder(str(tiny_dir), "reward_model_name")
    with pytest.raises(UsageError, match=r"--model_name .*expected a \*ForCausalLM model"):
        check_causal_lm_folder(str(folders["reward"]), "model_name")
    check_reward_folder(str(folders["reward"]), "reward_model_name")
    check_causal_lm_folder(str(tiny_dir), "model_name")


@pytest.mark.parametrize("value", ["-1", "-0.5", "nan"])
def test_ppo_refuses_a_negative_missing_eos_penalty(value, tiny_dir, folders, data, tmp_path, capfd, loads):
    """TRL's convention: a positive penalty is subtracted. The old sign (a negative number added) would turn a TRL
    user's 1.0 into a reward for responses that never end, so a negative value is refused, never flipped."""
    out = tmp_path / "ppo"
    argv = ["--model_name", str(tiny_dir), "--reward_model_name", str(folders["reward"]), "--dataset_name", str(data)]
    code, lines, printed = run("rl_training", [*argv, "--output_dir", str(out), "--missing_eos_penalty", value], capfd)
    assert code == 2, printed[-3000:]
    assert len(lines) == 1 and "--missing_eos_penalty" in lines[0] and "subtracted" in lines[0], lines
    assert "Traceback" not in printed and loads == [] and not out.exists()


def test_help_documents_the_fault_flags(capsys):
    for script in ("sft", "reward_modeling"):
        with pytest.raises(SystemExit):
            importlib.import_module(script).main(["--help"])
        text = capsys.readouterr().out
        assert "--nonfinite_loss" in text and "--resume_from_checkpoint" in text
