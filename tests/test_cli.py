"""The command-line shape every script shares: ``--config file.yaml`` (flags in a file, the command line wins),
``--help`` that opens with the usage lines and lists each enum flag's choices, required flags, one-line errors for a
bad config; and ``pip install .`` giving the library and a console command per stage."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, run_script
from rlhf.cli import parse_arguments
from rlhf.errors import UsageError
from rlhf.outputs.folders import COMPLETE_MARKER
from tiny import ORCA_ROWS, write_rows

SFT = importlib.import_module("rlhf.scripts.sft")
SFT_TYPES = (SFT.ScriptArguments, SFT.SFTModelArguments, SFT.SFTArguments)


def test_config_file_gives_values_and_the_command_line_wins(tmp_path):
    config = tmp_path / "sft.yaml"
    config.write_text(
        "model_name_or_path: some/model\n"
        "learning_rate: 1e-4\n"  # YAML reads this as a string: it is converted like a typed flag
        "dataset_concatenation: true\n"
        "lora_layers: 16-29\n"
        "num_train_epochs: 2\n"
        f"output_dir: {tmp_path / 'from-file'}\n"
    )
    script, model, train = parse_arguments(SFT_TYPES, ["--config", str(config), "--num_train_epochs", "5"])
    assert model.model_name_or_path == "some/model" and model.lora_layers == "16-29"
    assert train.learning_rate == pytest.approx(1e-4) and isinstance(train.learning_rate, float)
    assert script.dataset_concatenation is True
    assert train.num_train_epochs == 5  # the command line overrides the file
    assert train.output_dir == str(tmp_path / "from-file")


@pytest.mark.parametrize(
    "content, message",
    [
        ("bogus_flag: 3\n", "unknown flag 'bogus_flag'"),
        ("- a\n- b\n", "expected a mapping of flag names to values"),
        ("model_name_or_path: [a, b]\n", "model_name_or_path: expected one value, got a list"),
        ("learning_rate: [unclosed\n", "not valid YAML"),
        ("peft: qlora\n", "--peft: expected lora or none, got 'qlora'"),  # the values are checked like typed ones
    ],
)
def test_a_bad_config_file_is_one_line_naming_the_problem(tmp_path, content, message):
    config = tmp_path / "bad.yaml"
    config.write_text(content)
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("(", r"\(")):
        parse_arguments(SFT_TYPES, ["--config", str(config), "--model_name_or_path", "m"])


def test_a_missing_config_file_or_required_flag_is_one_line(tmp_path):
    with pytest.raises(UsageError, match="--config .*missing.yaml: cannot read"):
        parse_arguments(SFT_TYPES, ["--config", str(tmp_path / "missing.yaml")])
    with pytest.raises(UsageError, match="the following arguments are required: --model_name_or_path"):
        parse_arguments(SFT_TYPES, [])
    # A required flag given by the file is not required on the command line.
    config = tmp_path / "ok.yaml"
    config.write_text("model_name_or_path: m\n")
    assert parse_arguments(SFT_TYPES, ["--config", str(config)])[1].model_name_or_path == "m"


def test_sft_trains_from_a_config_file(tmp_path, tiny_dir):
    """``python sft.py --config x.yaml`` as a user runs it, with one flag overridden on the command line."""
    data = write_rows(tmp_path / "pairs.jsonl", ORCA_ROWS * 2)
    config = tmp_path / "sft.yaml"
    config.write_text(
        json.dumps(  # JSON is YAML: either format works
            {
                "model_name_or_path": str(tiny_dir),
                "dataset_name": str(data),
                "output_dir": str(tmp_path / "ignored"),
                "max_steps": 1,
                "per_device_train_batch_size": 2,
                "report_to": "none",
                "save_strategy": "no",
                "learning_rate": "1e-3",
            }
        )
    )
    out = tmp_path / "sft"
    result = run_script("sft.py", "--config", str(config), "--output_dir", str(out), env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / COMPLETE_MARKER).is_file() and not (tmp_path / "ignored").exists()
    assert json.loads((out / "metrics.json").read_text())["train"]["train_runtime"] > 0


@pytest.mark.parametrize(
    "script, choices",
    [
        ("sft.py", ["--peft {lora,none}", "--prompt_template {auto,chat,plain,raw}", "--nonfinite_loss {stop,skip}"]),
        ("rl_training.py", ["--kl_estimator {k1,k3}", "--lr_scheduler_type {linear,cosine,constant}"]),
        ("evaluate.py", ["--torch_dtype {auto,bfloat16,float16,float32}"]),
    ],
)
def test_help_opens_with_the_usage_lines_and_lists_choices(script, choices):
    result = run_script(script, "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    text = result.stdout
    usage_line = f"python {script} --config"  # the recipe's docstring, shown under the usage summary
    assert usage_line in text and text.index(usage_line) < text.index("options:")
    flat = " ".join(text.split())
    for choice in choices:
        assert choice in flat, choice


def test_ppo_accepts_hf_style_aliases_next_to_the_reference_names():
    ppo = importlib.import_module("rlhf.scripts.rl_training")
    script, model, *_ = parse_arguments(
        ppo.ARGUMENTS,
        ["--model_name_or_path", "m", "--reward_model_name", "r", "--report_to", "none", "--save_steps", "3"],
    )
    assert (model.model_name_or_path, script.log_with, script.save_freq) == ("m", "none", 3)
    script, model, *_ = parse_arguments(
        ppo.ARGUMENTS, ["--model_name=m", "--reward_model_name=r", "--log_with=wandb", "--save_freq=100"]
    )
    assert (model.model_name_or_path, script.log_with, script.save_freq) == ("m", "wandb", 100)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """``pip install .`` of a copy of the repository (its tracked files) into a folder of its own."""
    tmp = tmp_path_factory.mktemp("pip")
    src, site = tmp / "src", tmp / "site"
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes((ROOT / name).read_bytes())
    # No build isolation and no dependencies: the test machine's libraries serve, and nothing is downloaded.
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(site)]
    result = subprocess.run([*pip, str(src)], capture_output=True, text=True, cwd=tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    return site


@pytest.mark.parametrize(
    "command, flag",
    [
        ("rlhf-sft", "--dataset_concatenation"),
        ("rlhf-reward-model", "--eval_batch_size"),
        ("rlhf-ppo", "--reward_model_name"),
        ("rlhf-evaluate", "--second_reward_model"),
        ("rlhf-pipeline", "--from_stage"),
    ],
)
def test_pip_install_gives_a_console_command_per_stage(installed, command, flag, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(installed)}
    result = subprocess.run(
        [sys.executable, str(installed / "bin" / command), "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # not the repository: the installed copy is what runs
        env=env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert flag in result.stdout
    where = subprocess.run(
        [sys.executable, "-c", "import rlhf; print(rlhf.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert where.stdout.strip().startswith(str(installed))
