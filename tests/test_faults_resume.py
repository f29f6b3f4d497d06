"""Fault suite, the Trainer stages (sft.py, reward_modeling.py) under faults in the middle of a run.

* SIGKILL in the middle of writing a checkpoint: that checkpoint is never resumed from, the previous one is intact,
  and ``--resume_from_checkpoint latest`` ends with exactly the weights and per-step losses of a run that was never
  interrupted.
* SIGTERM (preemption): the current step finishes, a checkpoint is written, exit code 143 with a line saying how
  to resume; resuming ends like the uninterrupted run.
* Disk full while writing a checkpoint (ENOSPC), or a file-size limit (RLIMIT_FSIZE, what ``ulimit -f`` sets) while
  writing the final result over a previous complete one: one-line error, exit 1, the previous checkpoint and the
  previous complete result intact, nothing new marked complete.
* NaN loss: ``--nonfinite_loss stop`` (default) stops with exit 1 and saves nothing from that step; ``skip``
  discards that update and finishes; saved weights are finite either way.

Every scenario runs as its own process (``run_forked``: the script as ``__main__``, forked from one driver that
imported the libraries once); faults are injected by a few lines of Python run in that process before the script
(``PRELUDES``), at a fixed step so that the outcome is exact. ``test_real_sigterm_*`` sends a real SIGTERM from
outside to ``python sft.py`` once training is under way, and the slow test kills real processes at random moments.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, run_forked, run_script
from rlhf.outputs.folders import COMPLETE_MARKER
from rlhf.outputs.trainer_checkpoints import latest_trainer_checkpoint, resolve_resume
from tiny import write_rows

STEPS = 6  # optimizer steps per run; checkpoints at 2, 4, 6
ROWS = [
    {
        "system": "You add." if i % 3 == 0 else "",
        "question": f"What is {i} plus {i % 5}?",
        "chosen": f"{i} plus {i % 5} is {i + i % 5}.",
        "rejected": f"It is {i + 7}.",
    }
    for i in range(24)
]
FLAGS = (
    f"--max_steps {STEPS} --save_steps 2 --logging_steps 1 --per_device_train_batch_size 2 --learning_rate 5e-3 "
    "--report_to none --validation_split_percentage 0 --seed 7 --save_total_limit 5 --keep_checkpoints"
).split()  # checkpoints kept after success: the scenarios inspect them (their removal: tests/test_sft.py)

# Python run in the scenario's process just before the script. ``Trainer`` is patched on the base class; TRL's
# trainers call ``super()`` for these methods.
PRELUDES = {
    # SIGKILL after the weights and optimizer of checkpoint-4 are written, before its RNG states and
    # trainer_state.json: what a crash or an OOM kill in the middle of a save leaves.
    "kill_during_save": """
import os, signal, transformers
original = transformers.Trainer._save_rng_state
def save_rng_state(self, output_dir):
    if self.state.global_step == 4:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, output_dir)
transformers.Trainer._save_rng_state = save_rng_state
""",
    # SIGTERM arrives while step 3 is computing.
    "sigterm_in_step_3": """
import os, signal, transformers
original = transformers.Trainer.training_step
def training_step(self, *args, **kwargs):
    if self.state.global_step == 2:
        os.kill(os.getpid(), signal.SIGTERM)
    return original(self, *args, **kwargs)
transformers.Trainer.training_step = training_step
""",
    # The disk fills up while checkpoint-4 is written.
    "enospc_in_checkpoint_4": """
import errno, transformers
original = transformers.Trainer._save_rng_state
def save_rng_state(self, output_dir):
    if self.state.global_step == 4:
        raise OSError(errno.ENOSPC, "No space left on device", output_dir + "/rng_state.pth")
    return original(self, output_dir)
transformers.Trainer._save_rng_state = save_rng_state
""",
    # The loss of step 4 is NaN (as after an overflow): its gradients are NaN.
    "nan_loss_at_step_4": """
import transformers
original = transformers.Trainer.training_step
def compute_loss_hook(trainer, loss):
    return loss * float("nan") if trainer.state.global_step == 3 else loss
def training_step(self, model, inputs, *args, **kwargs):
    compute_loss = self.compute_loss
    def poisoned(*a, **k):
        out = compute_loss(*a, **k)
        return (compute_loss_hook(self, out[0]), *out[1:]) if isinstance(out, tuple) else compute_loss_hook(self, out)
    self.compute_loss = poisoned
    try:
        return original(self, model, inputs, *args, **kwargs)
    finally:
        del self.compute_loss
transformers.Trainer.training_step = training_step
""",
}


def fsize_prelude(reference: Path, target: Path) -> str:
    """A previous complete result in ``target`` (a copy of ``reference``), then a per-file size limit that every
    checkpoint file fits under but the merged model does not (RLIMIT_FSIZE, as ``ulimit -f``)."""
    return f"""
import resource, shutil
from pathlib import Path
reference, target = Path({str(reference)!r}), Path({str(target)!r})
shutil.copytree(reference, target)
first = reference / "checkpoints" / "checkpoint-2"
largest_checkpoint_file = max(p.stat().st_size for p in first.rglob("*") if p.is_file())
model = (reference / "model.safetensors").stat().st_size
assert largest_checkpoint_file < model, (largest_checkpoint_file, model)
limit = (largest_checkpoint_file + model) // 2
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
"""


def scenarios(script: str, model: Path, data: Path, tmp: Path, extra: list[str]) -> dict[str, tuple]:
    def args(out: str, *more: str) -> list[str]:
        return [
            "--model_name_or_path",
            str(model),
            "--dataset_name",
            str(data),
            "--output_dir",
            str(tmp / out),
            *FLAGS,
            *extra,
            *more,
        ]

    latest = ("--resume_from_checkpoint", "latest")
    return {
        "reference": (script, args("reference")),
        "killed": (script, args("killed"), PRELUDES["kill_during_save"]),
        "killed_resumed": (script, args("killed", *latest)),
        "sigterm": (script, args("sigterm"), PRELUDES["sigterm_in_step_3"]),
        "sigterm_resumed": (script, args("sigterm", *latest)),
        "enospc": (script, args("enospc"), PRELUDES["enospc_in_checkpoint_4"]),
        "enospc_resumed": (script, args("enospc", *latest)),
        "fsize": (script, args("fsize", "--overwrite_output_dir"), fsize_prelude(tmp / "reference", tmp / "fsize")),
        "nan_stop": (script, args("nan_stop"), PRELUDES["nan_loss_at_step_4"]),
        "nan_skip": (script, args("nan_skip", "--nonfinite_loss", "skip"), PRELUDES["nan_loss_at_step_4"]),
    }


RESUME = ["reference", "killed", "killed_resumed", "sigterm", "sigterm_resumed"]
FAULTS = ["reference", "enospc", "enospc_resumed", "fsize", "nan_stop", "nan_skip"]
# (script, extra flags, scenarios). Every scenario runs for SFT; the reward-model stage shares the same code
# (rlhf.stages.guard) and runs the SIGTERM scenario by default, all others with the slow tests (-m slow).
STAGES = {
    "sft": ("sft.py", [], RESUME + ["enospc", "fsize", "nan_stop", "nan_skip"]),
    "rm": ("reward_modeling.py", ["--torch_dtype", "float32"], ["reference", "sigterm", "sigterm_resumed"]),
    "rm-slow": ("reward_modeling.py", ["--torch_dtype", "float32"], RESUME + FAULTS[1:]),
}
DEFAULT = ("sft", "rm")


def run_stages(names: tuple[str, ...], tiny_dir: Path, tmp: Path) -> dict[str, tuple[Path, dict]]:
    """The scenarios of the given stages, in order, in one driver process: {stage: (folder, {scenario: result})}."""
    runs, folders = {}, {}
    for stage in names:
        script, extra, scenario_names = STAGES[stage]
        folders[stage] = tmp / stage
        folders[stage].mkdir()
        data = write_rows(folders[stage] / "pairs.jsonl", ROWS)
        every = scenarios(script, tiny_dir, data, folders[stage], extra)
        runs.update({f"{stage}.{name}": every[name] for name in scenario_names})
    results = run_forked(runs, tmp, env={"OMP_NUM_THREADS": "1"})
    return {
        stage: (
            folders[stage],
            {key.split(".", 1)[1]: proc for key, proc in results.items() if key.startswith(f"{stage}.")},
        )
        for stage in names
    }


@pytest.fixture(scope="module")
def default_runs(tiny_dir, tmp_path_factory):
    return run_stages(DEFAULT, tiny_dir, tmp_path_factory.mktemp("faults"))


@pytest.fixture(scope="module", params=[*DEFAULT, pytest.param("rm-slow", marks=pytest.mark.slow)])
def stage(request, tiny_dir, tmp_path_factory):
    """The scenarios of one stage: (its folder, {scenario: CompletedProcess})."""
    if request.param in DEFAULT:
        return request.getfixturevalue("default_runs")[request.param]
    return run_stages((request.param,), tiny_dir, tmp_path_factory.mktemp("faults-slow"))[request.param]


def need(runs: dict, *names: str) -> None:
    if not all(name in runs for name in names):
        pytest.skip("this stage runs these scenarios with the slow tests (-m slow)")


def error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return errors[0]


def log_losses(folder: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (folder / "log_history.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows if "loss" in row}


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def assert_same_result(folder: Path, reference: Path) -> None:
    """Same per-step training losses and same final (merged) weights as the uninterrupted run."""
    assert (folder / COMPLETE_MARKER).is_file()
    ref_losses, losses = log_losses(reference), log_losses(folder)
    assert sorted(losses) == sorted(ref_losses) == list(range(1, STEPS + 1))
    for step, loss in ref_losses.items():
        assert losses[step] == pytest.approx(loss, abs=1e-6), step
    ref, got = weights(reference), weights(folder)
    assert ref.keys() == got.keys()
    worst = max((ref[k] - got[k]).abs().max().item() for k in ref)
    assert worst <= 1e-6, f"final weights differ by {worst}"


def test_reference_run_completes(stage):
    tmp, runs = stage
    assert runs["reference"].returncode == 0, runs["reference"].stderr[-3000:]
    assert resolve_resume("latest", tmp / "reference") == str(tmp / "reference" / "checkpoints" / f"checkpoint-{STEPS}")
    assert len(log_losses(tmp / "reference")) == STEPS


def test_kill_during_a_checkpoint_write_never_damages_the_previous_one(stage):
    tmp, runs = stage
    need(runs, "killed", "killed_resumed")
    assert runs["killed"].returncode == -signal.SIGKILL
    folder = tmp / "killed"
    # what the kill left: checkpoint-2 complete, checkpoint-4 half-written, no result (checked before the resume
    # from the resumed run's log, since the resumed run has already replaced checkpoint-4)
    resumed = runs["killed_resumed"]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"removing {folder}/checkpoints/checkpoint-4: its save was interrupted" in resumed.stderr
    assert f"resuming from {folder}/checkpoints/checkpoint-2" in resumed.stderr
    assert_same_result(folder, tmp / "reference")


def test_half_written_checkpoint_is_never_latest(tmp_path):
    folder = tmp_path / "checkpoints"  # where the Trainer's checkpoints of --output_dir tmp_path live
    for step in (2, 4, 6, 8):
        (folder / f"checkpoint-{step}").mkdir(parents=True)
    for step in (2, 4):
        (folder / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (folder / "checkpoint-6" / "trainer_state.json").write_text('{"global_step": 6, "log_hist')  # truncated
    (folder / "checkpoint-8" / "model.safetensors").write_bytes(b"")  # killed before trainer_state.json
    (folder / "checkpoint-x").mkdir()
    assert resolve_resume("latest", tmp_path) == str(tmp_path / "checkpoints" / "checkpoint-4")
    from rlhf.errors import UsageError

    with pytest.raises(UsageError, match="incomplete checkpoint"):
        resolve_resume(str(tmp_path / "checkpoints" / "checkpoint-8"), tmp_path)
    assert resolve_resume("latest", tmp_path / "empty") is None


def test_sigterm_finishes_the_step_writes_a_checkpoint_and_exits_143(stage):
    tmp, runs = stage
    need(runs, "sigterm", "sigterm_resumed")
    proc = runs["sigterm"]
    assert proc.returncode == 143, proc.stderr[-3000:]
    folder = tmp / "sigterm"
    assert "stopped by SIGTERM at step 3" in proc.stderr
    assert "rerun the same command with --resume_from_checkpoint latest" in proc.stderr
    assert "Traceback" not in proc.stderr
    resumed = runs["sigterm_resumed"]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {folder}/checkpoints/checkpoint-3" in resumed.stderr  # the checkpoint SIGTERM wrote
    assert_same_result(folder, tmp / "reference")


def test_disk_full_while_writing_a_checkpoint(stage):
    tmp, runs = stage
    need(runs, "enospc")
    folder = tmp / "enospc"
    line = error_line(runs["enospc"])
    assert runs["enospc"].returncode == 1
    assert f"saving {folder}/checkpoints/checkpoint-4 failed" in line and "No space left on device" in line
    assert "--resume_from_checkpoint latest" in line and "checkpoint-2" in line
    if "enospc_resumed" not in runs:
        assert resolve_resume("latest", folder) == str(folder / "checkpoints" / "checkpoint-2")
    else:
        resumed = runs["enospc_resumed"]
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert f"removing {folder}/checkpoints/checkpoint-4" in resumed.stderr
        assert_same_result(folder, tmp / "reference")


def test_file_size_limit_during_the_final_save_keeps_the_previous_result(stage):
    tmp, runs = stage
    need(runs, "fsize")
    folder, reference = tmp / "fsize", tmp / "reference"
    proc = runs["fsize"]
    line = error_line(proc)
    assert proc.returncode == 1
    assert "saving the result in" in line and "File too large" in line and "nothing was marked complete" in line
    # the previous complete result is whole and still marked complete
    assert (folder / COMPLETE_MARKER).read_text() == (reference / COMPLETE_MARKER).read_text()
    for name in json.loads((reference / COMPLETE_MARKER).read_text())["files"]:
        old, new = reference / name, folder / name
        if old.is_file():
            assert new.read_bytes() == old.read_bytes(), name
    assert not list(folder.glob(".tmp-*"))
    # the new run's checkpoints (all smaller than the limit) are complete: it can be resumed once space is back
    assert resolve_resume("latest", folder) == str(folder / "checkpoints" / f"checkpoint-{STEPS}")


def test_nan_loss_stops_without_saving_that_step(stage):
    tmp, runs = stage
    need(runs, "nan_stop")
    folder = tmp / "nan_stop"
    proc = runs["nan_stop"]
    line = error_line(proc)
    assert proc.returncode == 1
    assert "training stopped at step 4: non-finite loss" in line and "--nonfinite_loss skip" in line
    assert f"{folder}/checkpoints/checkpoint-2" in line
    assert not (folder / COMPLETE_MARKER).exists() and not (folder / "checkpoints" / "checkpoint-4").exists()
    for path in (folder / "checkpoints" / "checkpoint-2").glob("*.safetensors"):
        assert all(torch.isfinite(t).all() for t in load_file(str(path)).values())


def test_nan_loss_skip_discards_the_step_and_finishes(stage):
    tmp, runs = stage
    need(runs, "nan_skip")
    folder = tmp / "nan_skip"
    proc = runs["nan_skip"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step 4: non-finite loss or gradients (NaN/inf); update skipped" in proc.stderr
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["nonfinite_steps_skipped"] == [4]
    got = weights(folder)
    assert all(torch.isfinite(t).all() for t in got.values())
    ref = weights(tmp / "reference")
    assert max((ref[k] - got[k]).abs().max().item() for k in ref) > 0  # step 4's update really was left out


# ---------------------------------------------------------------------------------------------------- real signals

SLOW_STEPS = """
import time, transformers
original = transformers.Trainer.training_step
def training_step(self, *args, **kwargs):
    time.sleep(0.15)  # a step that takes a while, as on a real model, so that signals land mid-run
    return original(self, *args, **kwargs)
transformers.Trainer.training_step = training_step
"""
LAUNCH = (
    "import runpy, sys; exec(sys.argv[1]); sys.argv = sys.argv[2:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)


def launch(script: str, args: list[str], log: Path) -> subprocess.Popen:
    """``python script args`` in a new process (with slow steps), stderr to ``log``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-c", LAUNCH, SLOW_STEPS, str(ROOT / script), *args]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log.open("w"), env=env, cwd=ROOT)


def wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"process ended ({proc.returncode}) before {what}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_real_sigterm_to_a_running_sft_process_then_resume(tiny_dir, tmp_path):
    steps = 40
    data = write_rows(tmp_path / "pairs.jsonl", ROWS)
    out = tmp_path / "out"
    args = [
        "--model_name_or_path",
        str(tiny_dir),
        "--dataset_name",
        str(data),
        "--output_dir",
        str(out),
        *FLAGS,
        "--max_steps",
        str(steps),
        "--save_steps",
        "1000",
    ]
    log = tmp_path / "run.log"
    proc = launch("sft.py", args, log)
    # the progress bar on stderr shows "| 1/40 [" once the first optimizer step is done
    wait_for(lambda: re.search(rf"\| [1-9]\d*/{steps} \[", log.read_text()), proc, "the first training step")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143, log.read_text()[-3000:]
    text = log.read_text()
    assert "Traceback" not in text and "rerun the same command with --resume_from_checkpoint latest" in text
    checkpoint = resolve_resume("latest", out)
    assert checkpoint is not None, text[-3000:]  # written although --save_steps would not have saved yet
    stopped_at = int(checkpoint.rsplit("-", 1)[1])
    assert 1 <= stopped_at < steps and f"stopped by SIGTERM at step {stopped_at}" in text
    assert not (out / COMPLETE_MARKER).exists()

    resumed = run_script("sft.py", *args, "--resume_from_checkpoint", "latest", env={"OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {checkpoint}" in resumed.stderr
    assert (out / COMPLETE_MARKER).is_file()
    assert sorted(log_losses(out)) == list(range(1, steps + 1))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("script", ["sft.py", "reward_modeling.py"])
def test_sigkill_at_a_random_moment_then_resume_matches_an_uninterrupted_run(script, seed, tiny_dir, tmp_path):
    """Real processes killed with SIGKILL at a random moment after the first checkpoint (mid-step or mid-save)."""
    steps = 12
    data = write_rows(tmp_path / "pairs.jsonl", ROWS)

    def args(out: Path) -> list[str]:
        return [
            "--model_name_or_path",
            str(tiny_dir),
            "--dataset_name",
            str(data),
            "--output_dir",
            str(out),
            *FLAGS,
            "--max_steps",
            str(steps),
            "--save_steps",
            "1",
            "--torch_dtype",
            "float32",
        ]

    reference = tmp_path / "reference"
    proc = launch(script, args(reference), tmp_path / "reference.log")
    assert proc.wait(timeout=300) == 0, (tmp_path / "reference.log").read_text()[-3000:]
    out = tmp_path / "out"
    proc = launch(script, args(out), tmp_path / "killed.log")
    wait_for(lambda: latest_trainer_checkpoint(out) is not None, proc, "the first checkpoint")
    time.sleep(random.Random(seed).uniform(0, 1.2))
    proc.kill()
    proc.wait()
    if (out / COMPLETE_MARKER).exists():
        pytest.skip("the run finished before the kill")
    resumed = run_script(script, *args(out), "--resume_from_checkpoint", "latest", env={"OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ref_losses, losses = log_losses(reference), log_losses(out)
    assert sorted(losses) == list(range(1, steps + 1))
    for step, loss in ref_losses.items():
        assert losses[step] == pytest.approx(loss, abs=1e-6), step
    ref, got = weights(reference), weights(out)
    assert max((ref[k] - got[k]).abs().max().item() for k in ref) <= 1e-6


# ---------------------------------------------------------------------------------------------------- NaN weights


@pytest.fixture(scope="module")
def nan_model(tiny_dir, tmp_path_factory) -> Path:
    """The tiny model with one NaN in its final norm: every forward pass, loss and gradient is NaN."""
    import shutil

    folder = tmp_path_factory.mktemp("nan-model")
    shutil.copytree(tiny_dir, folder, dirs_exist_ok=True)
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["model.norm.weight"][0] = float("nan")
    from safetensors.torch import save_file

    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


@pytest.mark.parametrize(
    "script, policy, expected",
    [
        ("sft", "stop", "training stopped at step 1: non-finite loss"),
        ("reward_modeling", "skip", "the trained weights hold NaN/inf values"),
    ],
)
def test_a_model_with_nan_weights_is_never_saved(script, policy, expected, nan_model, tmp_path, capfd):
    """``stop``: the first step stops the run. ``skip``: every step is skipped, and the final save refuses."""
    import importlib

    from rlhf.errors import run_main

    data = write_rows(tmp_path / "pairs.jsonl", ROWS[:8])
    out = tmp_path / "out"
    argv = [
        "--model_name_or_path",
        str(nan_model),
        "--dataset_name",
        str(data),
        "--output_dir",
        str(out),
        "--max_steps",
        "2",
        "--save_strategy",
        "no",
        "--report_to",
        "none",
        "--validation_split_percentage",
        "0",
        "--torch_dtype",
        "float32",
        "--nonfinite_loss",
        policy,
    ]
    with pytest.raises(SystemExit) as exit_:
        run_main(importlib.import_module(script).main, argv)
    assert exit_.value.code == 1
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and expected in lines[-1], err[-3000:]
    assert "Traceback" not in err
    assert not (out / COMPLETE_MARKER).exists() and not (out / "model.safetensors").exists()
    assert not list(out.glob("checkpoints/checkpoint-*")) and not list(out.glob(".tmp-*"))


def test_any_disk_full_error_is_one_line_and_exit_1(capfd):
    """Whatever was writing (a tokenizer, a cache, a tracker): ENOSPC/EDQUOT/EFBIG/EROFS end in one line."""
    import errno

    from rlhf.errors import run_main

    def full(argv):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/out/tokenizer.json")

    with pytest.raises(SystemExit) as exit_:
        run_main(full, [])
    assert exit_.value.code == 1
    err = capfd.readouterr().err
    assert err.startswith("error: disk write failed ([Errno 28] No space left on device: '/data/out/tokenizer.json')")
    assert "--resume_from_checkpoint latest" in err and len(err.strip().splitlines()) == 1

    def missing(argv):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "x")

    with pytest.raises(FileNotFoundError):  # not a disk fault: a bug or a user error elsewhere, shown in full
        run_main(missing, [])
