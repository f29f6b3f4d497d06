"""rl_training.py end to end, run as users run it: usage errors, the reference command line under wandb offline with
a token that must never be written, exact resume after SIGKILL and after SIGTERM, checkpoint folders that are never
half-written, and a 2-process CPU run (torchrun, gloo) with its own exact resume.

Subprocesses run torch on one thread: on a small shared machine, two threads per process are much slower.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, run_script
from rlhf.data.prompt_format import PromptFormat
from rlhf.outputs.folders import COMPLETE_MARKER
from rlhf.ppo.checkpoint import find_latest, resolve_checkpoint
from tiny import ORCA_ROWS, write_rows

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
TOKEN = "hf_TestTokenThatMustNeverBeWritten42"


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory, tiny_dir) -> Path:
    """A reward-model folder as reward_modeling.py leaves it: 1-label Llama classifier, tokenizer, prompt format."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    folder = tmp_path_factory.mktemp("tiny-rm")
    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        num_labels=1,
    )
    LlamaForSequenceClassification(config).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    PromptFormat("chat", tok.eos_token, tok.chat_template).save(folder)
    return folder


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> Path:
    return write_rows(tmp_path_factory.mktemp("rows") / "orca.jsonl", ORCA_ROWS)


def base_args(tiny_dir: Path, rm_dir: Path, rows: Path, out: Path, **flags) -> list[str]:
    """Fast flags: batch 8 as 4 minibatches of 2, 2 PPO epochs, 8-token responses, one step per 8 prompts. A flag
    given as None is left out."""
    settings = {
        "model_name": tiny_dir,
        "reward_model_name": rm_dir,
        "dataset_name": rows,
        "output_dir": out,
        "batch_size": 8,
        "mini_batch_size": 2,
        "gradient_accumulation_steps": 2,
        "ppo_epochs": 2,
        "response_length": 8,
        "steps": 16,
        "seed": 0,
        "learning_rate": 1e-3,
        **flags,
    }
    return [item for key, value in settings.items() if value is not None for item in (f"--{key}", str(value))]


STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def stop_leftover_processes():
    """A failing test must not leave a training run (or torchrun and its workers) behind."""
    yield
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def popen(argv: list[str], env: dict | None = None) -> subprocess.Popen:
    """Start ``python argv`` in its own process group (so a hung run and its children can all be stopped)."""
    proc = subprocess.Popen(
        [sys.executable, *argv],
        cwd=ROOT,
        env={**os.environ, **ONE_THREAD, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    STARTED.append(proc)
    return proc


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[str, str]:
    """Wait for ``proc``; on timeout kill its whole process group and fail with the end of its stderr."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"timed out after {timeout}s; stderr ends with:\n{stderr[-6000:]}")


def metrics(out: Path) -> list[dict]:
    """metrics.jsonl rows without the wall-clock timings and the episodes per second (the only values allowed to
    differ between runs)."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{k: v for k, v in row.items() if not k.startswith("time/") and k != "eps"} for row in rows]


def trainable(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "trainable_state.safetensors"))


# ---------------------------------------------------------------------------------------------------- usage errors


USAGE_CASES = {
    "not a multiple": (
        ["--batch_size", "6", "--mini_batch_size", "2", "--gradient_accumulation_steps", "2"],
        "must be a multiple of --mini_batch_size x --gradient_accumulation_steps",
    ),
    "short output": (["--output_max_length", "32"], "--output_max_length 32"),  # without --response_length
    "estimator": (["--kl_estimator", "k2"], "--kl_estimator"),
    "tracker": (["--log_with", "bogus"], "--log_with"),
    "rm is a causal LM": (["--reward_model_name", "{tiny_dir}"], "ForSequenceClassification"),
    "habana": (["--use_habana"], "--use_habana"),
    "fp16 on a cpu": (["--fp16", "True"], "--fp16: fp16 mixed precision needs a CUDA GPU"),
    "both precisions": (["--fp16", "True", "--bf16", "True"], "--bf16 and --fp16 are exclusive"),
    "negative grad norm": (["--max_grad_norm", "-1"], "--max_grad_norm"),
    "scheduler": (["--lr_scheduler_type", "step"], "--lr_scheduler_type"),
    "warmup ratio": (["--warmup_ratio", "1.5"], "--warmup_ratio"),
    "save every 0 steps": (["--save_freq", "0"], "--save_freq"),
    "keep 0 checkpoints": (["--save_total_limit", "0"], "--save_total_limit"),
    "not a checkpoint": (["--resume_from_checkpoint", "{tiny_dir}"], "not a complete PPO checkpoint"),
}


def check_usage_error(code: int, stdout: str, stderr: str, expected: str) -> None:
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2, stderr[-2000:]
    assert len(errors) == 1 and expected in errors[0], stderr[-2000:]
    assert stderr.rstrip().endswith(errors[0])  # the last thing printed, on one line
    assert "Traceback" not in stderr + stdout


@pytest.fixture()
def keep_logging():
    """rl_training.main reconfigures the root logger; give pytest's back after an in-process run."""
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize("case", sorted(USAGE_CASES))
def test_usage_errors_are_one_line_exit_2(case, tiny_dir, rm_dir, rows, tmp_path, capsys, keep_logging):
    """In-process through the CLI entry point (run_main) to keep it fast; the next test runs one as a process."""
    import rl_training
    from rlhf.errors import run_main

    extra, expected = USAGE_CASES[case]
    extra = [arg.format(tiny_dir=tiny_dir) for arg in extra]
    drop = {"response_length": None} if case == "short output" else {}
    argv = [*base_args(tiny_dir, rm_dir, rows, tmp_path / "out", **drop), *extra]
    with pytest.raises(SystemExit) as exit_info:
        run_main(rl_training.main, argv)
    captured = capsys.readouterr()
    check_usage_error(exit_info.value.code, captured.out, captured.err, expected)
    assert not (tmp_path / "out" / "metrics.jsonl").exists()


def test_usage_error_as_a_process(tiny_dir, rm_dir, rows, tmp_path):
    extra, expected = USAGE_CASES["not a multiple"]
    argv = [str(ROOT / "rl_training.py"), *base_args(tiny_dir, rm_dir, rows, tmp_path / "out"), *extra]
    proc = popen(argv)
    stdout, stderr = finish(proc)
    check_usage_error(proc.returncode, stdout, stderr, expected)


def test_an_output_dir_that_is_a_file_is_one_line_exit_2(tiny_dir, rm_dir, rows, tmp_path, capsys, keep_logging):
    import rl_training
    from rlhf.errors import run_main

    target = tmp_path / "taken"
    target.write_text("not a folder")
    with pytest.raises(SystemExit) as exit_info:
        run_main(rl_training.main, base_args(tiny_dir, rm_dir, rows, target))
    captured = capsys.readouterr()
    check_usage_error(exit_info.value.code, captured.out, captured.err, f"--output_dir {target}: is a file")
    assert target.read_text() == "not a folder"


# ---------------------------------------------------------------------------------------------------- output safety


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_finished_run_is_kept_rotated_refused_and_resumable(tiny_dir, rm_dir, rows, tmp_path):
    """One 4-step run (a checkpoint every step, 2 kept), then, into the same folder: a second run is refused (exit
    2, final/ and metrics.jsonl byte-identical), a resume with a changed flag is refused naming it, a resume of the
    finished run with the same flags works, and --overwrite_output_dir starts afresh. final/ holds the model as users
    upload it, with our model card and no resume state; that is in the last step_N/."""
    out = tmp_path / "out"
    script = str(ROOT / "rl_training.py")
    flags = {"steps": 32, "save_freq": 1, "save_total_limit": 2, "hf_access_token": TOKEN}
    stdout, stderr = finish(popen([script, *base_args(tiny_dir, rm_dir, rows, out, **flags)]))
    assert (out / "final" / COMPLETE_MARKER).is_file(), stderr[-3000:]
    assert sorted(p.name for p in out.glob("step_*")) == ["step_3", "step_4"]  # rotated: the newest 2

    final = out / "final"
    names = {p.name for p in final.iterdir()}
    assert {"model.safetensors", "config.json", "value_head.safetensors", "prompt_format.json", "README.md"} <= names
    assert {"tokenizer_config.json", "adapter", "ppo_config.json"} <= names
    for resume_state in ("optimizer.pt", "rng.pt", "trainable_state.safetensors", "state.json", "run.json"):
        assert resume_state not in names and (out / "step_4" / resume_state).is_file(), resume_state
    card = (final / "README.md").read_text()
    assert "# PPO" in card and str(tiny_dir) in card and str(rm_dir) in card and str(rows) in card
    assert "AutoModelForCausalLM.from_pretrained" in card and '"learning_rate": 0.001' in card
    assert '"objective/kl"' in card  # the last step's metrics
    assert TOKEN not in card and "hf_access_token" not in card
    assert not (final / "adapter" / "README.md").exists()  # PEFT's template card is not left behind
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(str(final))  # loads as uploaded
    before = {"final": snapshot(final), "metrics": (out / "metrics.jsonl").read_bytes()}

    def rerun(*extra: str) -> subprocess.Popen:
        return popen([script, *base_args(tiny_dir, rm_dir, rows, out, **flags), *extra])

    proc = rerun()
    stdout, stderr = finish(proc)
    check_usage_error(proc.returncode, stdout, stderr, "holds a finished run; pass --overwrite_output_dir")
    proc = rerun("--resume_from_checkpoint", "latest", "--learning_rate", "0.002", "--reward_baseline", "1")
    stdout, stderr = finish(proc)
    check_usage_error(proc.returncode, stdout, stderr, "a checkpoint of a different run")
    assert "--learning_rate 0.001 -> 0.002" in stderr and "--reward_baseline 0.0 -> 1.0" in stderr
    assert snapshot(final) == before["final"] and (out / "metrics.jsonl").read_bytes() == before["metrics"]

    proc = rerun("--resume_from_checkpoint", "latest")  # a finished run resumes at its end: nothing to redo
    stdout, stderr = finish(proc)
    assert proc.returncode == 0, stderr[-3000:]
    assert f"resumed from {out / 'step_4'} at step 4" in stderr
    assert (out / "metrics.jsonl").read_bytes() == before["metrics"]
    assert snapshot(final)["model.safetensors"] == before["final"]["model.safetensors"]

    proc = rerun("--overwrite_output_dir", "--steps", "16")
    stdout, stderr = finish(proc)
    assert proc.returncode == 0, stderr[-3000:]
    assert [r["step"] for r in metrics(out)] == [1, 2]
    assert sorted(p.name for p in out.glob("step_*")) == ["step_1", "step_2"]  # the old run's checkpoints went
    assert json.loads((final / COMPLETE_MARKER).read_text())["step"] == 2


def test_an_unfinished_run_is_not_restarted_over(tiny_dir, rm_dir, rows, tmp_path, capsys, keep_logging):
    """Checkpoints of an unfinished run in --output_dir: a fresh start (no resume flag) is refused, not mixed in."""
    import rl_training
    from rlhf.errors import run_main

    out = tmp_path / "out"
    (out / "step_2").mkdir(parents=True)
    (out / "step_2" / "state.json").write_text("{}")
    (out / "step_2" / COMPLETE_MARKER).write_text(json.dumps({"step": 2}))
    with pytest.raises(SystemExit) as exit_info:
        run_main(rl_training.main, base_args(tiny_dir, rm_dir, rows, out))
    captured = capsys.readouterr()
    check_usage_error(exit_info.value.code, captured.out, captured.err, "holds checkpoints of an unfinished run")
    assert (out / "step_2" / COMPLETE_MARKER).is_file()


def test_push_to_hub_uploads_final_only(tiny_dir, rm_dir, rows, tmp_path, monkeypatch, keep_logging):
    """huggingface_hub's HfApi calls replaced by a recorder, only because the real hub is unreachable here; the file
    list is what huggingface_hub's own filter keeps under the ignore patterns we pass."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import filter_repo_objects

    import rl_training

    calls = []

    def upload_folder(self, *, repo_id, folder_path, ignore_patterns=None, **kwargs):
        files = [p.relative_to(folder_path).as_posix() for p in Path(folder_path).rglob("*") if p.is_file()]
        calls.append((repo_id, Path(folder_path), sorted(filter_repo_objects(files, ignore_patterns=ignore_patterns))))

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: calls.append(repo_id))
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    out = tmp_path / "out"
    argv = [*base_args(tiny_dir, rm_dir, rows, out, steps=8), "--push_to_hub", "--hub_model_id", "me/tiny-ppo"]
    assert rl_training.main(argv) == 0
    assert calls[0] == "me/tiny-ppo"
    repo_id, folder, files = calls[1]
    assert repo_id == "me/tiny-ppo" and folder == out / "final"
    assert {"README.md", "model.safetensors", "value_head.safetensors", "prompt_format.json"} <= set(files)
    assert not {"optimizer.pt", "rng.pt", "state.json", COMPLETE_MARKER} & set(files)


def test_run_identity_names_what_differs(tiny_dir, rm_dir, tmp_path):
    """Another data file content, another reward model or another process count is another run."""
    from rlhf.data.pairs import DataArguments
    from rlhf.errors import UsageError
    from rlhf.ppo.checkpoint import RUN_FILE, check_same_run, run_identity
    from rlhf.ppo.config import PPOConfig
    from rlhf.scripts.rl_training import PPOModelArguments

    data = write_rows(tmp_path / "rows.jsonl", ORCA_ROWS)
    model, cfg, data_args = PPOModelArguments(model_name_or_path=str(tiny_dir)), PPOConfig(), DataArguments(str(data))

    def identity(**changes) -> dict:
        args = {"reward_model": str(rm_dir), "seed": 0, "processes": 1, "mixed_precision": "no", **changes}
        return run_identity(model, cfg, data_args, **args)

    checkpoint = tmp_path / "step_2"
    checkpoint.mkdir()
    check_same_run(checkpoint, identity(), False)  # an older checkpoint without run.json: resumed, with a warning
    (checkpoint / RUN_FILE).write_text(json.dumps(identity()))
    check_same_run(checkpoint, identity(), False)
    with pytest.raises(UsageError, match="written by an unsharded run"):  # said first: it needs another launch
        check_same_run(checkpoint, identity(processes=2), True)
    with pytest.raises(UsageError, match="processes 1 -> 2, --reward_model_name"):
        check_same_run(checkpoint, identity(processes=2, reward_model=str(tiny_dir)), False)
    write_rows(data, ORCA_ROWS[:-1])
    with pytest.raises(UsageError, match=r"a different run \(the data file's content \(sha256\) changed\)"):
        check_same_run(checkpoint, identity(), False)


def test_rotation_keeps_the_newest_and_the_resumed_one(tmp_path):
    from rlhf.ppo.checkpoint import rotate_checkpoints

    for step in (1, 2, 3, 4):
        folder = tmp_path / f"step_{step}"
        folder.mkdir()
        (folder / COMPLETE_MARKER).write_text(json.dumps({"step": step}))
    (tmp_path / "step_5").mkdir()  # being written: no marker, never counted nor deleted
    rotate_checkpoints(tmp_path, 2, protected=tmp_path / "step_1")
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_1", "step_3", "step_4", "step_5"]
    rotate_checkpoints(tmp_path, None)
    assert len(list(tmp_path.glob("step_*"))) == 4


# ---------------------------------------------------------------------------------------------------- reference line


def test_reference_command_line_runs_with_wandb_offline_and_writes_no_token(tiny_dir, rm_dir, sample_data, tmp_path):
    out, wandb_dir = tmp_path / "out", tmp_path / "wandb"
    wandb_dir.mkdir()
    env = {
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(wandb_dir),
        "WANDB_CACHE_DIR": str(wandb_dir / "cache"),
        "WANDB_CONFIG_DIR": str(wandb_dir / "config"),
        "WANDB_DATA_DIR": str(wandb_dir / "data"),
        **ONE_THREAD,
    }
    # The SPEC command line, verbatim, plus a local dataset, mini_batch_size 1 and one PPO step (8 prompts).
    reference = (
        f"--log_with=wandb --model_name={tiny_dir} --reward_model_name={rm_dir} --adafactor=False "
        f"--tokenizer_name={tiny_dir} --save_freq=100 --output_max_length=128 --batch_size=8 "
        "--gradient_accumulation_steps=8 --batched_gen=True --ppo_epochs=4 --seed=0 --learning_rate=1.4e-5 "
        f"--early_stopping=True --output_dir={out} --hf_access_token {TOKEN}"
    ).split()
    extra = ["--dataset_name", str(sample_data / "train.jsonl"), "--mini_batch_size", "1", "--steps", "8"]
    result = run_script("rl_training.py", *reference, *extra, env=env)
    assert result.returncode == 0, result.stderr[-3000:]

    rows = metrics(out)
    assert [r["step"] for r in rows] == [1]
    for key in (
        "objective/kl",
        "objective/scores",
        "objective/rlhf_reward",
        "objective/entropy",
        "policy/approxkl_avg",
        "policy/clipfrac_avg",
        "policy/entropy_avg",
        "loss/policy_avg",
        "loss/value_avg",
        "val/clipfrac_avg",
        "val/ratio_var",
        "lr",
        "episode",
        "val/ratio",
        "val/num_eos_tokens",
        "env/reward_mean",
        "env/reward_std",
        "objective/kl_coef",
    ):
        assert key in rows[0], key
    assert rows[0]["objective/kl_coef"] == 0.2 and rows[0]["lr"] == 1.4e-5 and rows[0]["episode"] == 8
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["eps"] > 0  # episodes per second
    assert 32 <= rows[0]["tokens/responses_len_mean"] < 128
    final = out / "final"
    assert (final / COMPLETE_MARKER).is_file() and (final / "model.safetensors").is_file()
    assert (final / "adapter" / "adapter_config.json").is_file()
    assert [p.name for p in out.glob("step_*")] == ["step_1"]  # save_freq=100 > 1 step: only the last step's
    runs = list((wandb_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].rglob("*.wandb")), "wandb wrote no offline run"

    # wandb recorded the command line (where the token was) with the value replaced: the check below has teeth.
    recorded = b"".join(path.read_bytes() for path in runs[0].rglob("*.wandb"))
    assert b"--hf_access_token" in recorded and b"<redacted>" in recorded
    secret = TOKEN.encode()
    assert TOKEN not in result.stdout and TOKEN not in result.stderr
    for folder in (out, wandb_dir):
        for path in folder.rglob("*"):
            if path.is_file():
                assert secret not in path.read_bytes(), f"token written to {path}"


# ---------------------------------------------------------------------------------------------------- resume


def wait_for(path: Path, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 300
    while not path.is_file():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"no {what}"
        time.sleep(0.05)


# ``python -c PAUSED script args...``: the script, each PPO step followed by a one-second pause. On a fast machine the
# tiny runs take a fraction of a second per step; a signal meant for "after step N" must not find the run finished.
PAUSED = """
import runpy, sys, time
import rlhf.ppo.engine
update = rlhf.ppo.engine.PPOEngine.update
def paused(self, rollout):
    out = update(self, rollout)
    time.sleep(1.0)
    return out
rlhf.ppo.engine.PPOEngine.update = paused
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize("bf16", [False, True])
def test_exact_resume_after_sigkill_and_sigterm(tiny_dir, rm_dir, rows, tmp_path, bf16):
    """4 steps straight == 2 steps, SIGKILL once step_2 is complete, then resume 'latest' for the rest: same final
    trainable weights (bit for bit) and the same logged metrics (time/* aside), in fp32 and in bf16 mixed precision.
    Half-written folders planted before the resume (a complete-looking .tmp-step_4-*, a step_3 without its marker)
    must not be taken for the latest checkpoint. Same for SIGTERM after the first step: the run checkpoints the step
    it is in and exits 143."""
    straight, killed, termed = tmp_path / "straight", tmp_path / "killed", tmp_path / "termed"
    script = str(ROOT / "rl_training.py")
    args = {"steps": 32, "save_freq": 2, "response_length": 12, "bf16": bf16}
    runs = (straight, killed, termed)
    procs = {
        out: popen(
            [*(["-c", PAUSED] if out != straight else []), script, *base_args(tiny_dir, rm_dir, rows, out, **args)]
        )
        for out in runs
    }
    wait_for(termed / "metrics.jsonl", procs[termed], "first step")
    procs[termed].send_signal(signal.SIGTERM)
    wait_for(killed / "step_2" / COMPLETE_MARKER, procs[killed], "step_2 checkpoint")
    procs[killed].send_signal(signal.SIGKILL)
    for out, proc in procs.items():
        stdout, stderr = finish(proc)
        expected = {straight: 0, killed: -signal.SIGKILL, termed: 143}[out]
        assert proc.returncode == expected, (out.name, stderr[-3000:])
    assert not (killed / "final").exists(), "the run finished before it was killed: the test proves nothing"
    assert not (termed / "final").exists()
    stopped_at = len(metrics(termed))
    assert stopped_at < 4 and (termed / f"step_{stopped_at}" / COMPLETE_MARKER).is_file()

    # Plant what a crash mid-save leaves: a temporary folder (even one holding a marker) and a marker-less step.
    import shutil

    shutil.copytree(killed / "step_2", killed / ".tmp-step_4-99999")
    (killed / ".tmp-step_4-99999" / COMPLETE_MARKER).write_text(json.dumps({"step": 4}))
    shutil.copytree(killed / "step_2", killed / "step_3")
    (killed / "step_3" / COMPLETE_MARKER).unlink()
    assert find_latest(killed) == killed / "step_2"

    resumes = {
        out: popen([script, *base_args(tiny_dir, rm_dir, rows, out, **args), "--resume_from_checkpoint", "latest"])
        for out in (killed, termed)
    }
    for out, proc in resumes.items():
        stdout, stderr = finish(proc)
        assert proc.returncode == 0, stderr[-3000:]
        step = 2 if out == killed else stopped_at
        assert f"resumed from {out / f'step_{step}'} at step {step}" in stderr
    assert not list(killed.glob(".tmp-*"))  # stale temporaries are cleaned

    a = trainable(straight / "step_4")
    assert any("lora_B" in k for k in a) and any("value_head" in k for k in a)
    assert any(a[k].abs().sum() > 0 for k in a if "lora_B" in k)  # it trained
    for out in (killed, termed):
        b = trainable(out / "step_4")
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), (out.name, name)
        assert metrics(out) == metrics(straight), out.name
        assert [r["step"] for r in metrics(out)] == [1, 2, 3, 4]
        assert json.loads((out / "step_4" / "state.json").read_text()) == json.loads(
            (straight / "step_4" / "state.json").read_text()
        )

    # final/ is a loadable merged policy: the same function as base + saved adapter, and not the base.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[5, 17, 99, 230, 41, 7, 300]])
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(str(straight / "final")).eval()(ids).logits
        base = AutoModelForCausalLM.from_pretrained(str(tiny_dir)).eval()(ids).logits
        adapted_model = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(str(tiny_dir)), str(straight / "final" / "adapter")
        )
        adapted = adapted_model.eval()(ids).logits
    torch.testing.assert_close(merged, adapted, rtol=0, atol=1e-5)
    assert (merged - base).abs().max() > 1e-4
    assert PromptFormat.load(straight / "final") is not None


def test_half_written_checkpoints_are_never_latest(tmp_path):
    def checkpoint(name: str, step: int, complete: bool = True) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "state.json").write_text(json.dumps({"step": step}))
        if complete:
            (folder / COMPLETE_MARKER).write_text(json.dumps({"step": step}))
        return folder

    assert find_latest(tmp_path) is None
    checkpoint("step_2", 2)
    checkpoint("step_10", 10)  # numeric, not lexical, order: step_10 > step_2
    checkpoint(".tmp-step_12-4242", 12)  # marker written, rename never happened
    checkpoint(".old-step_14-4242", 14)  # previous copy being replaced
    checkpoint("step_16", 16, complete=False)  # interrupted without the atomic writer
    (tmp_path / "step_18").write_text("not a folder")
    assert find_latest(tmp_path) == tmp_path / "step_10"
    assert resolve_checkpoint("latest", tmp_path) == tmp_path / "step_10"
    assert resolve_checkpoint(None, tmp_path) is None
    from rlhf.errors import UsageError

    with pytest.raises(UsageError, match="not a complete PPO checkpoint"):
        resolve_checkpoint(str(tmp_path / "step_16"), tmp_path)


# ---------------------------------------------------------------------------------------------------- 2 processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(flags: list[str], env: dict | None = None) -> subprocess.Popen:
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    argv = [*launcher, "--master_port", str(free_port()), str(ROOT / "rl_training.py"), *flags, "--debug"]
    return popen(argv, env)


def kl_coefs_per_rank(stderr: str) -> dict[int, dict[int, str]]:
    """{rank: {step: repr(kl_coef)}} from the per-rank debug lines of rl_training."""
    coefs: dict[int, dict[int, str]] = {0: {}, 1: {}}
    for line in stderr.splitlines():
        if "rlhf.ppo.trainer: rank " in line and ": kl_coef " in line:
            head, value = line.split("rlhf.ppo.trainer: rank ", 1)[1].split(": kl_coef ")
            rank, step = head.split(" step ")
            coefs[int(rank)][int(step)] = value.strip()
    return coefs


@pytest.mark.parametrize("mixed_precision", ["no", "bf16"])
def test_two_process_cpu_run(tiny_dir, rm_dir, rows, tmp_path, mixed_precision):
    """torchrun --nproc_per_node 2 (gloo): both ranks finish, agree on the KL coefficient at every step (each
    logs its own under --debug), and only rank 0 writes metrics and checkpoints. Resuming step_2 on 2 processes
    (each rank gets its own random state back) reproduces step 3 exactly. The precision comes from accelerate's
    environment (ACCELERATE_MIXED_PRECISION, what ``accelerate launch`` with a config sets): under bf16 autocast the
    KL to the reference is still exactly 0 before the first update, because every forward shares that context."""
    env = {"ACCELERATE_MIXED_PRECISION": mixed_precision}
    out, resumed = tmp_path / "out", tmp_path / "resumed"
    # 4 prompts per rank x 2 ranks = 8 per step; 24 prompts -> 3 steps. A small --kl_target makes the adaptive
    # coefficient move every step.
    settings = {
        "batch_size": 4,
        "mini_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "steps": 24,
        "save_freq": 2,
        "kl_target": 0.01,
    }
    proc = torchrun(base_args(tiny_dir, rm_dir, rows, out, **settings), env)
    stdout, stderr = finish(proc, timeout=180)
    assert proc.returncode == 0, stderr[-4000:]
    assert f"precision: {mixed_precision} mixed precision, weights in float32" in stderr

    coefs = kl_coefs_per_rank(stderr)
    assert sorted(coefs[0]) == [1, 2, 3], stderr[-4000:]
    assert coefs[0] == coefs[1]
    assert len(set(coefs[0].values())) == 3, coefs  # the coefficient did adapt, identically on both ranks

    rows_logged = metrics(out)
    assert [r["step"] for r in rows_logged] == [1, 2, 3]  # one writer: no duplicated lines
    assert abs(rows_logged[0]["objective/kl"]) < 1e-6
    assert rows_logged[0]["policy/first_minibatch_max_abs_logratio"] < 1e-5  # ratio 1 before the first update
    assert rows_logged[1]["objective/kl"] != 0  # it is 0 because nothing was updated yet, not by construction
    assert float(coefs[0][2]) == pytest.approx(rows_logged[2]["objective/kl_coef"], rel=1e-12)
    assert (out / "step_2" / COMPLETE_MARKER).is_file() and (out / "final" / COMPLETE_MARKER).is_file()
    assert not list(out.glob(".tmp-*")) and not list(out.glob(".old-*"))
    assert len(torch.load(out / "step_3" / "rng.pt", weights_only=True)["ranks"]) == 2

    proc = torchrun(base_args(tiny_dir, rm_dir, rows, resumed, **settings, resume_from_checkpoint=out / "step_2"), env)
    stdout, stderr = finish(proc, timeout=180)
    assert proc.returncode == 0, stderr[-4000:]
    assert metrics(resumed) == metrics(out)[2:]
    a, b = trainable(out / "step_3"), trainable(resumed / "step_3")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert kl_coefs_per_rank(stderr)[1] == {3: coefs[1][3]}


def test_response_length_from_the_chosen_answers(tiny_dir, rm_dir, rows, tmp_path):
    """--response_length_quantile 1.0: the response length is the longest chosen answer's token count with EOS,
    rounded up to a multiple of 8 (saved in ppo_config.json, logged), and no response of the run is longer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_dir))
    longest = max(len(tokenizer(r["chosen"], add_special_tokens=False)["input_ids"]) + 1 for r in ORCA_ROWS)
    expected = -(-longest // 8) * 8
    assert expected != 8  # differs from base_args' --response_length: the quantile, not a default, sets it
    out = tmp_path / "out"
    args = base_args(tiny_dir, rm_dir, rows, out, response_length=None, response_length_quantile=1.0, steps=8)
    result = run_script("rl_training.py", *args, "--log_samples_every", "1", env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"response length {expected}: the 1.0 quantile of the chosen answers is {longest} tokens" in result.stderr
    saved = json.loads((out / "final" / "ppo_config.json").read_text(encoding="utf-8"))
    assert saved["response_length"] == expected and saved["response_length_quantile"] == 1.0
    assert all(m["tokens/responses_len_mean"] <= expected for m in metrics(out))
