"""Fault suite, hostile flags and paths for rl_training.py and evaluate.py: the same breadth as the SFT/RM suite
(tests/test_faults_flags.py). Each case runs ``run_main(<script>.main, argv)`` in this process, which is what
``python rl_training.py ...`` / ``python evaluate.py ...`` run: exit code 2, one ``error:`` line naming the flag,
no traceback, no model loaded and no output written.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from rlhf.errors import run_main
from tiny import ORCA_ROWS, write_rows


@pytest.fixture(scope="module")
def paths(tiny_dir, tmp_path_factory) -> dict[str, Path]:
    """A reward-model folder next to the tiny policy, good data, data with the wrong columns, and a plain file."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from rlhf.data.prompt_format import PromptFormat

    root = tmp_path_factory.mktemp("hostile")
    rm = root / "rm"
    config = LlamaConfig.from_pretrained(str(tiny_dir))
    config.num_labels = 1
    LlamaForSequenceClassification(config).save_pretrained(str(rm))
    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    tok.save_pretrained(str(rm))
    PromptFormat("chat", tok.eos_token, tok.chat_template).save(rm)
    wrong_columns = root / "wrong_columns.jsonl"
    wrong_columns.write_text('{"prompt": "a", "answer": "b"}\n', encoding="utf-8")
    a_file = root / "a_file"
    a_file.write_text("not a folder", encoding="utf-8")
    return {
        "policy": tiny_dir,
        "rm": rm,
        "data": write_rows(root / "pairs.jsonl", ORCA_ROWS),
        "wrong_columns": wrong_columns,
        "file": a_file,
        "missing": root / "missing-folder",
    }


@pytest.fixture(autouse=True)
def keep_logging():
    """The scripts reconfigure the root logger; give pytest's back after an in-process run."""
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def run(script: str, argv: list[str], capfd) -> tuple[int, list[str], str]:
    """Exit code, the ``error:`` lines, and everything printed."""
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


def argv_of(settings: dict, paths: dict[str, Path]) -> list[str]:
    """``{flag: value}`` as command-line flags; a value naming a key of ``paths`` (``@rm``) becomes that path, and
    None leaves the flag out."""
    out = []
    for key, value in settings.items():
        if value is None:
            continue
        text = str(value)
        out += [f"--{key}", str(paths[text[1:]]) if text.startswith("@") else text]
    return out


def check_refused(script, settings, expected, paths, out, capfd, loads, extra=()):
    code, lines, printed = run(script, [*argv_of(settings, paths), *extra], capfd)
    assert code == 2, printed[-3000:]
    assert len(lines) == 1, printed[-3000:]
    for text in expected:
        assert text in lines[0], lines[0]
    assert "Traceback" not in printed
    assert loads == [], f"a model was loaded before the error: {loads}"
    assert not out.exists() or out == paths["file"]


# ---------------------------------------------------------------------------------------------------- rl_training.py

PPO_CASES = {
    # model folders
    "missing_policy": ({"model_name": "@missing"}, ["--model_name", "no such folder"]),
    "policy_is_a_file": ({"model_name": "@file"}, ["--model_name", "is a file"]),
    "policy_is_a_reward_model": ({"model_name": "@rm"}, ["--model_name", "expected a *ForCausalLM model"]),
    "missing_reward_model": ({"reward_model_name": "@missing"}, ["--reward_model_name", "no such folder"]),
    "reward_model_is_a_policy": (
        {"reward_model_name": "@policy"},
        ["--reward_model_name", "expected a *ForSequenceClassification model"],
    ),
    "missing_tokenizer": ({"tokenizer_name": "@missing"}, ["--tokenizer_name", "no such folder"]),
    # data
    "missing_dataset": ({"dataset_name": "@missing"}, ["--dataset_name", "no such file or folder"]),
    "wrong_columns": ({"dataset_name": "@wrong_columns"}, ["missing column 'question'", "--prompt_column"]),
    "split_100": ({"validation_split_percentage": 100}, ["--validation_split_percentage"]),
    "max_train_samples_zero": ({"max_train_samples": 0}, ["--max_train_samples"]),
    "prompts_too_long": ({"max_prompt_length": 2}, ["--max_prompt_length 2"]),
    # sizes
    "negative_batch_size": ({"batch_size": -8}, ["--batch_size", "positive", "-8"]),
    "zero_mini_batch_size": ({"mini_batch_size": 0}, ["--mini_batch_size", "positive"]),
    "zero_accumulation": ({"gradient_accumulation_steps": 0}, ["--gradient_accumulation_steps", "positive"]),
    "zero_ppo_epochs": ({"ppo_epochs": 0}, ["--ppo_epochs", "positive"]),
    "zero_steps": ({"steps": 0}, ["--steps", "positive"]),
    "zero_prompt_length": ({"max_prompt_length": 0}, ["--max_prompt_length", "positive"]),
    "negative_response_length": ({"response_length": -1}, ["--response_length", "positive"]),
    "zero_forward_batch": ({"forward_batch_size": 0}, ["--forward_batch_size"]),
    "zero_save_freq": ({"save_freq": 0}, ["--save_freq", "positive"]),
    "negative_log_samples_every": ({"log_samples_every": -1}, ["--log_samples_every"]),
    "lora_rank_zero": ({"lora_rank": 0}, ["--lora_rank"]),
    "mini_batch_not_dividing": (
        {"batch_size": 6},
        ["--batch_size 6 must be a multiple of --mini_batch_size x --gradient_accumulation_steps"],
    ),
    # values out of range or not numbers
    "nan_learning_rate": ({"learning_rate": "nan"}, ["--learning_rate", "nan"]),
    "negative_learning_rate": ({"learning_rate": -1e-5}, ["--learning_rate"]),
    "nan_temperature": ({"temperature": "nan"}, ["--temperature", "nan"]),
    "zero_temperature": ({"temperature": 0}, ["--temperature"]),
    "negative_kl_coef": ({"init_kl_coef": -0.2}, ["--init_kl_coef"]),
    "nan_reward_baseline": ({"reward_baseline": "nan"}, ["--reward_baseline"]),
    "gamma_above_one": ({"gamma": 1.5}, ["--gamma"]),
    "negative_seed": ({"seed": -1}, ["--seed", "2**32"]),
    "batch_size_not_a_number": ({"batch_size": "eight"}, ["--batch_size", "invalid int value", "eight"]),
    "learning_rate_not_a_number": ({"learning_rate": "fast"}, ["--learning_rate", "invalid float value"]),
    "batched_gen_not_a_bool": ({"batched_gen": "perhaps"}, ["--batched_gen", "perhaps"]),
    "adafactor_not_a_bool": ({"adafactor": "perhaps"}, ["--adafactor", "perhaps"]),
    # devices, trackers, paths
    "gpu_by_index": ({"device": "cuda:1"}, ["--device cuda:1", "CUDA_VISIBLE_DEVICES=1"]),
    "unknown_device": ({"device": "gpu"}, ["--device gpu", "cpu, cuda, hpu"]),
    "cuda_without_gpu": ({"device": "cuda"}, ["--device cuda", "no CUDA GPU"]),
    "habana_and_cpu": ({"device": "cpu", "use_habana": "True"}, ["--use_habana", "--device cpu"]),
    "unknown_tracker": ({"log_with": "comet"}, ["--log_with", "invalid choice", "comet"]),
    "output_dir_is_a_file": ({"output_dir": "@file"}, ["--output_dir", "is a file"]),
    "resume_from_missing": ({"resume_from_checkpoint": "@missing"}, ["--resume_from_checkpoint"]),
    "unknown_dtype": ({"torch_dtype": "int8"}, ["--torch_dtype", "int8"]),
    "unknown_peft": ({"peft": "qlora"}, ["--peft", "qlora"]),
    "load_in_4bit_without_gpu": ({"load_in_4bit": "True"}, ["--load_in_4bit", "CUDA"]),
}


def ppo_settings(paths, out, **flags) -> dict:
    return {
        "model_name": "@policy",
        "reward_model_name": "@rm",
        "dataset_name": "@data",
        "output_dir": str(out),
        "batch_size": 4,
        "mini_batch_size": 2,
        "gradient_accumulation_steps": 2,
        "ppo_epochs": 1,
        "response_length": 4,
        "steps": 4,
        **flags,
    }


@pytest.mark.parametrize("case", sorted(PPO_CASES))
def test_rl_training_refuses(case, paths, tmp_path, capfd, loads, monkeypatch):
    flags, expected = PPO_CASES[case]
    if case == "cuda_without_gpu":
        monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    out = paths["file"] if flags.get("output_dir") == "@file" else tmp_path / "out"
    check_refused("rl_training", ppo_settings(paths, out, **flags), expected, paths, out, capfd, loads)


def test_rl_training_refuses_unknown_flags_and_a_missing_required_one(paths, tmp_path, capfd, loads):
    out = tmp_path / "out"
    check_refused(
        "rl_training", ppo_settings(paths, out), ["--frobnicate"], paths, out, capfd, loads, ["--frobnicate", "3"]
    )
    check_refused(
        "rl_training",
        ppo_settings(paths, out, reward_model_name=None),
        ["--reward_model_name"],
        paths,
        out,
        capfd,
        loads,
    )


@pytest.mark.parametrize("tracker, package", [("tensorboard", "tensorboard"), ("wandb", "wandb")])
def test_rl_training_refuses_a_tracker_that_is_not_installed(
    tracker, package, paths, tmp_path, capfd, loads, monkeypatch
):
    """accelerate drops an unavailable tracker with a warning and the run goes on unlogged: refused instead."""
    for module in (package, f"{package}X"):
        monkeypatch.setitem(sys.modules, module, None)  # importlib.util.find_spec now says: not installed
    out = tmp_path / "out"
    expected = [f"--log_with {tracker}", "not installed", f"pip install {package}"]
    check_refused("rl_training", ppo_settings(paths, out, log_with=tracker), expected, paths, out, capfd, loads)


def test_rl_training_logs_to_tensorboard_in_the_output_folder(paths, tmp_path, capfd):
    """The honoured side of --log_with tensorboard: event files in output_dir/<project_name>/ (README says so)."""
    pytest.importorskip("tensorboard")
    out = tmp_path / "out"
    settings = ppo_settings(paths, out, log_with="tensorboard", project_name="tb-run")
    code, lines, printed = run("rl_training", argv_of(settings, paths), capfd)
    assert code == 0 and not lines, printed[-3000:]
    assert list((out / "tb-run").rglob("events.out.tfevents.*")), sorted(p.name for p in out.rglob("*"))


# ---------------------------------------------------------------------------------------------------- evaluate.py

EVAL_CASES = {
    "missing_sft_model": ({"sft_model": "@missing"}, ["--sft_model", "no such folder"]),
    "missing_ppo_model": ({"ppo_model": "@missing"}, ["--ppo_model", "no such folder"]),
    "ppo_model_is_a_file": ({"ppo_model": "@file"}, ["--ppo_model", "is a file"]),
    "sft_model_is_a_reward_model": ({"sft_model": "@rm"}, ["--sft_model", "expected a *ForCausalLM model"]),
    "missing_reward_model": ({"reward_model": "@missing"}, ["--reward_model", "no such folder"]),
    "missing_second_reward_model": ({"second_reward_model": "@missing"}, ["--second_reward_model", "no such folder"]),
    "reward_model_is_a_policy": (
        {"reward_model": "@policy"},
        ["--reward_model", "expected a *ForSequenceClassification model"],
    ),
    "missing_dataset": ({"dataset_name": "@missing"}, ["--dataset_name", "no such file or folder"]),
    "wrong_columns": ({"dataset_name": "@wrong_columns"}, ["missing column 'question'"]),
    "split_100": ({"validation_split_percentage": 100}, ["--validation_split_percentage"]),
    "zero_prompts": ({"num_prompts": 0}, ["--num_prompts", "positive"]),
    "zero_pairs": ({"num_pairs": 0}, ["--num_pairs", "positive"]),
    "negative_batch_size": ({"batch_size": -1}, ["--batch_size", "positive"]),
    "zero_new_tokens": ({"max_new_tokens": 0}, ["--max_new_tokens", "positive"]),
    "zero_temperature": ({"temperature": 0}, ["--temperature"]),
    "nan_temperature": ({"temperature": "nan"}, ["--temperature", "nan"]),
    "negative_seed": ({"seed": -1}, ["--seed", "2**32"]),
    "prompts_not_a_number": ({"num_prompts": "many"}, ["--num_prompts", "invalid int value"]),
    "gpu_that_is_not_here": ({"device": "cuda:7"}, ["--device cuda:7", "no such GPU"]),
    "unknown_device": ({"device": "gpu7"}, ["--device gpu7"]),
    "output_dir_is_a_file": ({"output_dir": "@file"}, ["--output_dir", "is a file"]),
    "unknown_dtype": ({"torch_dtype": "int8"}, ["--torch_dtype", "int8"]),
    "fp16_on_a_cpu": ({"fp16": "True", "device": "cpu"}, ["--fp16"]),
}


def eval_settings(paths, out, **flags) -> dict:
    return {
        "sft_model": "@policy",
        "ppo_model": "@policy",
        "reward_model": "@rm",
        "dataset_name": "@data",
        "output_dir": str(out),
        "num_prompts": 2,
        "num_pairs": 2,
        "max_new_tokens": 4,
        **flags,
    }


@pytest.mark.parametrize("case", sorted(EVAL_CASES))
def test_evaluate_refuses(case, paths, tmp_path, capfd, loads):
    flags, expected = EVAL_CASES[case]
    out = paths["file"] if flags.get("output_dir") == "@file" else tmp_path / "eval"
    check_refused("evaluate", eval_settings(paths, out, **flags), expected, paths, out, capfd, loads)


def test_evaluate_refuses_unknown_flags_and_a_missing_required_one(paths, tmp_path, capfd, loads):
    out = tmp_path / "eval"
    check_refused("evaluate", eval_settings(paths, out), ["--frobnicate"], paths, out, capfd, loads, ["--frobnicate"])
    check_refused("evaluate", eval_settings(paths, out, ppo_model=None), ["--ppo_model"], paths, out, capfd, loads)


def test_an_output_dir_below_a_file_is_refused_too(paths, tmp_path, capfd, loads):
    out = paths["file"] / "eval"
    expected = ["--output_dir", f"cannot be created: {paths['file']} is a file"]
    check_refused("evaluate", eval_settings(paths, out), expected, paths, out, capfd, loads)
