"""The pipeline runner chains the three stage scripts, skips finished stages, and reports failures clearly."""

from __future__ import annotations

import json
import sys

import pytest

from conftest import ROOT, run_script
from tiny import ORCA_ROWS, write_rows

FAST = {
    "sft": [
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "4",
        "--save_strategy",
        "no",
        "--report_to",
        "none",
        "--logging_steps",
        "1",
    ],
    "rm": [
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "4",
        "--save_strategy",
        "no",
        "--report_to",
        "none",
        "--validation_split_percentage",
        "10",
    ],
    "ppo": [
        "--steps",
        "4",
        "--batch_size",
        "4",
        "--mini_batch_size",
        "2",
        "--gradient_accumulation_steps",
        "1",
        "--ppo_epochs",
        "1",
        "--response_length",
        "8",
    ],
    "eval": ["--num_prompts", "4", "--max_new_tokens", "6"],
}


def _config(tmp_path, model, dataset) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model": str(model), "dataset": str(dataset), "output": str(tmp_path / "out"), **FAST}))
    return str(path)


def _pipeline(*args: str):
    return run_script("-m", "rlhf.pipeline", *args, timeout=900)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_dir):
    tmp = tmp_path_factory.mktemp("pipeline")
    rows = [dict(r, question=f"{r['question']} ({i})") for i in range(10) for r in ORCA_ROWS]
    config = _config(tmp, tiny_dir, write_rows(tmp / "pairs.jsonl", rows))
    result = _pipeline("--config", config)
    return tmp, config, result


def test_stages_chain_outputs_into_the_next_stage(finished_run):
    tmp, _, result = finished_run
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp / "out"
    for done in (out / "sft", out / "rm", out / "ppo" / "final"):
        assert (done / "COMPLETE.json").is_file(), done
    assert (out / "eval" / "evaluation.json").is_file()
    report = (out / "report.md").read_text()
    assert "## 4. Evaluation" in report and "PPO win rate over SFT" in report
    assert (out / "ppo.png").is_file() and (out / "sft_loss.png").is_file()
    # Every stage's exact command is printed, and each consumes the previous stage's folder.
    assert f"--model_name_or_path {out / 'sft'}" in result.stdout  # rm starts from the SFT output
    assert f"--reward_model_name {out / 'rm'}" in result.stdout
    assert result.stdout.count("$ " + sys.executable) == 5  # sft, rm, ppo, eval, report (no rm2 configured)
    assert (out / "logs" / "ppo.log").read_text().strip()


def test_finished_stages_are_skipped_and_from_stage_reruns_the_rest(finished_run):
    tmp, config, _ = finished_run
    out = tmp / "out"
    sft_stamp = (out / "sft" / "COMPLETE.json").read_text()
    rerun = _pipeline("--config", config)
    assert rerun.returncode == 0
    assert rerun.stdout.count("skipped:") == 4  # all but the report, which is always redrawn

    ppo_stamp = (out / "ppo" / "final" / "COMPLETE.json").read_text()
    partial = _pipeline("--config", config, "--from_stage", "ppo")
    assert partial.returncode == 0, partial.stderr[-3000:]
    assert partial.stdout.count("skipped:") == 2
    assert (out / "sft" / "COMPLETE.json").read_text() == sft_stamp  # untouched
    assert (out / "ppo" / "final" / "COMPLETE.json").read_text() != ppo_stamp  # redone


def test_a_failing_stage_stops_the_pipeline_with_its_name_command_and_log(tmp_path, tiny_dir):
    config = _config(tmp_path, tiny_dir, tmp_path / "missing.jsonl")
    result = _pipeline("--config", config)
    assert result.returncode == 2
    assert "PIPELINE FAILED at stage 'sft'" in result.stderr
    assert "command: " in result.stderr and "sft.py" in result.stderr
    assert "no such file or folder" in result.stderr  # the stage's own error line, from the log tail
    assert not (tmp_path / "out" / "rm").exists()  # later stages never ran


def test_bad_config_is_a_one_line_error(tmp_path):
    bad = tmp_path / "c.json"
    bad.write_text(json.dumps({"model": "m", "dataset": "d"}))
    result = _pipeline("--config", str(bad))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: --config {bad}: missing key 'output'"
    assert ROOT.is_dir()


# ---------------------------------------------------------------------------------------------- the config


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"sft": "--max_steps 3"}, "'sft' must be a list of strings, one item per flag or value, got the string"),
        ({"rm": ["--max_steps", 3]}, "'rm'[1] must be a string, got number 3 (write it as the string \"3\")"),
        ({"ppo": ["--steps 4"]}, "'ppo'[0] '--steps 4': a flag and its value are two items of the list"),
        ({"eval": {"--num_prompts": "4"}}, "'eval' must be a list of strings, got object"),
        ({"rm3": []}, "unknown key 'rm3' (known keys: model, dataset, heldout, output, sft, rm, rm2, ppo, eval)"),
        ({"model": ["m"]}, "'model' must be a non-empty string, got list [\"m\"]"),
    ],
)
def test_config_values_are_type_checked_with_one_line_errors(tmp_path, config, message):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"model": "m", "dataset": "d", "output": str(tmp_path / "o"), **config}))
    result = _pipeline("--config", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: --config {path}: {message}"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists() and "$ " not in result.stdout  # refused before any stage ran
