"""The pipeline runner chains the stage scripts, records what each ran, skips only what still matches the config,
resumes an interrupted stage, checks its config, and keeps the second reward model independent of the first."""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, run_script
from rlhf.pipeline.records import plan, redact_argv
from rlhf.pipeline.stages import Stage, split_for_judges
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


def _config(tmp_path, model, dataset, name: str = "config.json", **stages) -> str:
    path = tmp_path / name
    config = {"model": str(model), "dataset": str(dataset), "output": str(tmp_path / "out"), **FAST, **stages}
    path.write_text(json.dumps(config))
    return str(path)


def _sections(stdout: str) -> dict[str, str]:
    """The pipeline's console output, per stage (from its banner to the next one)."""
    parts = stdout.split("\n== stage ")[1:]
    return {part.split(":", 1)[1].split()[0]: part for part in parts}


def _record(out, stage: str) -> dict:
    return json.loads((out / "pipeline" / f"{stage}.json").read_text())


def _rows(path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()]


def _write_pairs(folder):
    """40 distinct pairs: enough for two disjoint reward-model halves with held-out rows each."""
    rows = [dict(r, question=f"{r['question']} ({i})") for i in range(10) for r in ORCA_ROWS]
    return write_rows(folder / "pairs.jsonl", rows)


def _pipeline(*args: str):
    return run_script("-m", "rlhf.pipeline", *args, timeout=900)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_dir):
    tmp = tmp_path_factory.mktemp("pipeline")
    config = _config(tmp, tiny_dir, _write_pairs(tmp))
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
    secret = "hf_do_not_leak_42"
    sft = [*FAST["sft"], "--hf_access_token", secret, "--hub_token=" + secret, "--tokenizer_name", str(tiny_dir)]
    config = _config(tmp_path, tiny_dir, tmp_path / "missing.jsonl", sft=sft)
    result = _pipeline("--config", config)
    assert result.returncode == 2
    assert "PIPELINE FAILED at stage 'sft'" in result.stderr
    assert "command: " in result.stderr and "rlhf.scripts.sft" in result.stderr
    assert "no such file or folder" in result.stderr  # the stage's own error line, from the log tail
    assert not (tmp_path / "out" / "rm").exists()  # later stages never ran
    # The token is never printed or recorded; the record of a failed stage never says complete.
    assert secret not in result.stdout + result.stderr
    record = _record(tmp_path / "out", "sft")
    assert secret not in json.dumps(record) and record["status"] == "running"
    argv = record["argv"]
    assert argv[argv.index("--hf_access_token") + 1] == "<redacted>" and "--hub_token=<redacted>" in argv
    assert argv[argv.index("--tokenizer_name") + 1] == str(tiny_dir)  # not a secret: still compared on reruns
    assert "command: " + shlex.join(argv) in result.stderr


def test_bad_config_is_a_one_line_error(tmp_path):
    bad = tmp_path / "c.json"
    bad.write_text(json.dumps({"model": "m", "dataset": "d"}))
    result = _pipeline("--config", str(bad))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: --config {bad}: missing key 'output'"
    assert ROOT.is_dir()


# ---------------------------------------------------------------------------------------------- completion records


def test_each_stage_records_the_command_it_ran_and_the_runs_it_built_on(finished_run):
    tmp, _, result = finished_run
    out = tmp / "out"
    printed = [shlex.split(line[2:]) for line in result.stdout.splitlines() if line.startswith("$ ")]
    names = ["sft", "rm", "ppo", "eval", "report"]
    records = {name: _record(out, name) for name in names}
    assert [records[name]["argv"] for name in names] == printed  # exactly what ran, in order
    assert all(r["status"] == "complete" and r["id"] for r in records.values())
    assert records["rm"]["inputs"]["stages"] == {"sft": records["sft"]["id"]}
    assert records["eval"]["inputs"]["stages"] == {n: records[n]["id"] for n in ("sft", "rm", "ppo")}
    pairs = tmp / "pairs.jsonl"
    digest = "sha256:" + hashlib.sha256(b"pairs.jsonl\0" + pairs.read_bytes()).hexdigest()
    assert records["sft"]["inputs"]["files"] == {str(pairs): digest}


def test_token_values_are_redacted_in_every_spelling():
    argv = ["python", "s.py", "--hf-access-token", "a", "--hub_token=b", "--use_auth_token", "--max_new_tokens", "4"]
    assert redact_argv(argv) == [
        "python",
        "s.py",
        "--hf-access-token",
        "<redacted>",
        "--hub_token=<redacted>",
        "--use_auth_token",  # a switch here: the next item is a flag, not its value
        "--max_new_tokens",
        "4",
    ]


# ---------------------------------------------------------------------------------------------- reruns, rm2

# rm2 saves a checkpoint every step, so the resume test below has one to resume from ("no" is --save_strategy's).
RM2 = [("steps" if flag == "no" else flag) for flag in FAST["rm"]] + ["--save_steps", "1", "--keep_checkpoints"]


@pytest.fixture(scope="module")
def with_rm2(finished_run, tiny_dir):
    """The finished run, rerun after two config changes: rm trains one step more, and a second reward model is added.

    Returns the folder, the new config, the outputs' COMPLETE.json before the rerun, and the rerun's result.
    """
    tmp, _, _ = finished_run
    out = tmp / "out"
    stamps = {name: (out / name / "COMPLETE.json").read_text() for name in ("sft", "rm")}
    stamps["ppo"] = _record(out, "ppo")["id"]
    assert FAST["rm"][:2] == ["--max_steps", "2"]
    rm = ["--max_steps", "3", *FAST["rm"][2:]]
    config = _config(tmp, tiny_dir, tmp / "pairs.jsonl", "rm2.json", rm=rm, rm2=RM2)
    return tmp, config, stamps, _pipeline("--config", config, "--stages", "sft,rm,rm2,ppo")


def test_a_changed_config_reruns_that_stage_and_the_later_ones_saying_why(with_rm2):
    tmp, _, stamps, result = with_rm2
    assert result.returncode == 0, result.stderr[-3000:]
    out, pairs = tmp / "out", tmp / "pairs.jsonl"
    section = _sections(result.stdout)
    assert "skipped:" in section["sft"]
    assert (out / "sft" / "COMPLETE.json").read_text() == stamps["sft"]
    # rm: its own flag changed, and with rm2 in the config it reads its own part of the rows, with an explicit seed.
    changed = f"--dataset_name {pairs} -> {out / 'data' / 'rm.jsonl'}, --max_steps 2 -> 3, --seed 42 (added)"
    assert f"   rerun: its command changed: {changed}\n" in section["rm"]
    assert (out / "rm" / "COMPLETE.json").read_text() != stamps["rm"]
    assert json.loads(_rows(out / "rm" / "log_history.jsonl")[-1])["step"] == 3
    assert "   rerun: rm was rerun; rm2 is new\n" in section["ppo"]  # every stage after a rerun one reruns
    rm_record, ppo_record = _record(out, "rm"), _record(out, "ppo")
    assert ppo_record["id"] != stamps["ppo"] and ppo_record["inputs"]["stages"]["rm"] == rm_record["id"]


def test_rm2_trains_on_rows_disjoint_from_rm_with_its_own_seed(with_rm2):
    tmp, _, _, result = with_rm2
    assert result.returncode == 0, result.stderr[-3000:]
    out, pairs = tmp / "out", tmp / "pairs.jsonl"
    rm_rows, rm2_rows = _rows(out / "data" / "rm.jsonl"), _rows(out / "data" / "rm2.jsonl")
    assert not set(rm_rows) & set(rm2_rows)
    assert sorted(rm_rows + rm2_rows) == sorted(json.dumps(json.loads(line)) for line in _rows(pairs))
    assert len(rm_rows) > 10 and len(rm2_rows) > 10  # about half each
    for name, rows, seed in (("rm", rm_rows, "42"), ("rm2", rm2_rows, "43")):
        argv = _record(out, name)["argv"]
        assert argv[argv.index("--dataset_name") + 1] == str(out / "data" / f"{name}.jsonl")
        assert argv[argv.index("--seed") + 1] == seed
        metrics = json.loads((out / name / "metrics.json").read_text())
        assert metrics["data"] == f"data: {len(rows)} rows, all usable"  # what the stage itself read
        assert metrics["heldout"]["split"] == "eval" and metrics["heldout"]["pairs"] >= 1  # its own held-out rows


def test_a_row_keeps_its_side_when_the_dataset_is_edited(tmp_path):
    rows = [dict(r, question=f"{r['question']} ({i})") for i in range(10) for r in ORCA_ROWS]
    files = {"rm": tmp_path / "rm.jsonl", "rm2": tmp_path / "rm2.jsonl"}
    split_for_judges(str(write_rows(tmp_path / "before.jsonl", rows)), files, [])
    before = {name: set(_rows(path)) for name, path in files.items()}
    # A row inserted at the top, one removed in the middle, one repeated at the end: every position shifts.
    new = dict(ORCA_ROWS[0], question="A question added at the top")
    edited = [new, *rows[:5], *rows[6:], rows[3]]
    split_for_judges(str(write_rows(tmp_path / "after.jsonl", edited)), files, [])
    after = {name: set(_rows(path)) for name, path in files.items()}
    removed = {json.dumps(rows[5])}
    assert before["rm"] - after["rm"] == before["rm"] & removed  # no row changed sides
    assert before["rm2"] - after["rm2"] == before["rm2"] & removed
    assert not after["rm"] & after["rm2"]  # the repeated row went where its first copy is


def test_rm2_flags_that_would_undo_its_independence_are_refused(tmp_path):
    cases = {
        "--dataset_name": (
            {"rm2": ["--dataset_name", "other.jsonl"]},
            "'rm2': --dataset_name is set by the pipeline: each reward model reads its own part of 'dataset', "
            "disjoint from the other's",
        ),
        "abbreviated": ({"rm2": ["--dataset_n=x"]}, "'rm2': --dataset_n (--dataset_name) is set by the pipeline"),
        "same seed": ({"rm": ["--seed", "7"], "rm2": ["--seed=7"]}, "'rm2': --seed 7 is rm's seed too"),
        "a member's seed": (
            {"rm": ["--seed", "7", "--average_seeds", "3"], "rm2": ["--seed", "9"]},
            "'rm2': --seed 9 is the seed of one of rm's members (7-9) too",
        ),
        "no count": ({"rm": ["--average_seeds", "two"], "rm2": []}, "'rm': --average_seeds expects a positive integer"),
    }
    for name, (stages, message) in cases.items():
        path = tmp_path / "c.json"
        path.write_text(json.dumps({"model": "m", "dataset": "d.jsonl", "output": str(tmp_path / "o"), **stages}))
        result = _pipeline("--config", str(path))
        assert result.returncode == 2, name
        assert result.stderr.startswith(f"error: --config {path}: {message}"), (name, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists(), name


# ---------------------------------------------------------------------------------------------- resume


def test_an_interrupted_stage_resumes_from_its_latest_complete_checkpoint(with_rm2):
    tmp, config, _, first = with_rm2
    assert first.returncode == 0, first.stderr[-3000:]
    out = tmp / "out"
    rm2 = out / "rm2"
    # What a run stopped after its first checkpoint leaves: checkpoint-1, no checkpoint-2, no COMPLETE.json.
    shutil.rmtree(rm2 / "checkpoints" / "checkpoint-2")
    (rm2 / "COMPLETE.json").unlink()
    result = _pipeline("--config", config, "--stages", "rm2")
    assert result.returncode == 0, result.stderr[-3000:]
    first = rm2 / "checkpoints" / "checkpoint-1"
    assert f"resuming from {first}: the last run of this command did not complete" in result.stdout
    assert "--resume_from_checkpoint latest\n" in result.stdout  # the same command, plus the resume flag
    log = (out / "logs" / "rm2.log").read_text()
    assert f"resuming from {rm2 / 'checkpoints' / 'checkpoint-1'}" in log  # the stage itself says so (the log goes on)
    assert (rm2 / "COMPLETE.json").is_file()
    steps = [json.loads(line).get("step") for line in _rows(rm2 / "log_history.jsonl")]
    assert max(steps) == 2
    record = _record(out, "rm2")
    assert record["status"] == "complete" and record["resumed_from"] == str(first)
    # The resumed run stands for the configured command: the next run skips it.
    again = _pipeline("--config", config, "--stages", "rm2")
    assert again.returncode == 0 and "skipped:" in again.stdout, again.stdout[-2000:]


def _trainer_stage(tmp_path, flags: list[str]) -> Stage:
    folder = tmp_path / "rm"
    argv = ["python", "reward_modeling.py", "--output_dir", str(folder), *flags]
    return Stage("rm", argv, flags, folder, folder, "trainer")


def test_a_checkpoint_is_resumed_only_by_the_command_that_made_it(tmp_path):
    stage = _trainer_stage(tmp_path, ["--max_steps", "4"])
    inputs = {"files": {}, "stages": {}}
    checkpoints = stage.clean / "checkpoints"  # where the Trainer checkpoints for --output_dir stage.clean
    (checkpoints / "checkpoint-2").mkdir(parents=True)
    (checkpoints / "checkpoint-3").mkdir()  # interrupted mid-save: no trainer_state.json, never resumed
    (checkpoints / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2}')
    record = {"status": "running", "argv": stage.argv, "inputs": inputs}
    assert plan(stage, record, inputs, None) == (
        "resume",
        f"resuming from {checkpoints / 'checkpoint-2'}: the last run of this command did not complete",
    )
    changed = _trainer_stage(tmp_path, ["--max_steps", "8"])
    action, why = plan(changed, record, inputs, None)
    assert action == "fresh"
    assert why == (
        f"rerun: its command changed: --max_steps 4 -> 8; not resuming from {checkpoints / 'checkpoint-2'}: "
        "it predates that change"
    )
    assert plan(stage, record, {"files": {}, "stages": {"sft": "new"}}, None)[1].startswith("rerun: sft is new")
    assert plan(stage, record, inputs, "--force") == ("fresh", "rerun: --force")
    shutil.rmtree(checkpoints / "checkpoint-2")
    assert plan(stage, record, inputs, None) == (
        "fresh",
        f"rerun: {stage.clean} is incomplete and holds no complete checkpoint",
    )


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
        ({"sft": ["--output_dir", "x"]}, "'sft': --output_dir is set by the pipeline: use the top-level 'output'"),
        ({"ppo": ["--resume_from_checkpoint", "latest"]}, "'ppo': --resume_from_checkpoint is set by the pipeline"),
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


@pytest.mark.slow
def test_sigterm_checkpoints_the_running_stage_and_the_next_run_resumes_it(tmp_path, tiny_dir):
    """A real interruption (slow: a stage started, stopped, then resumed): the pipeline passes SIGTERM on."""
    sft = ["--max_steps", "12", *FAST["sft"][2:]]
    sft[sft.index("no")] = "steps"
    sft += ["--save_steps", "2", "--save_total_limit", "2"]
    config = _config(tmp_path, tiny_dir, _write_pairs(tmp_path), sft=sft)
    folder = tmp_path / "out" / "sft"
    checkpoints = folder / "checkpoints"  # the Trainer's, apart from the published model
    with (tmp_path / "stdout").open("w") as stdout, (tmp_path / "stderr").open("w") as stderr:
        argv = [sys.executable, "-m", "rlhf.pipeline", "--config", config, "--stages", "sft"]
        pipeline = subprocess.Popen(argv, cwd=ROOT, stdout=stdout, stderr=stderr)
        deadline = time.time() + 600
        while not (checkpoints / "checkpoint-2" / "trainer_state.json").is_file():  # training is under way
            assert pipeline.poll() is None and time.time() < deadline, (tmp_path / "stderr").read_text()[-3000:]
            time.sleep(0.02)
        pipeline.send_signal(signal.SIGTERM)  # to the pipeline only, as a scheduler would
        assert pipeline.wait(timeout=600) == 143
    stderr_text = (tmp_path / "stderr").read_text()
    assert "PIPELINE INTERRUPTED at stage 'sft' (exit code 143)" in stderr_text, stderr_text[-3000:]
    assert "SIGTERM: step" in (tmp_path / "out" / "logs" / "sft.log").read_text()  # the stage got it and saved
    assert not (folder / "COMPLETE.json").exists()
    stopped_at = max(int(p.name.split("-")[1]) for p in checkpoints.glob("checkpoint-*"))
    assert 2 <= stopped_at < 12
    result = _pipeline("--config", config, "--stages", "sft")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming from {checkpoints / f'checkpoint-{stopped_at}'}" in result.stdout
    assert (folder / "COMPLETE.json").is_file()
    assert json.loads(_rows(folder / "log_history.jsonl")[-1])["step"] == 12
