"""Fault suite, secrets and trust: tokens end up in no file, no tracker and no log; weights are never pickles.

Extends test_secrets.py (in-process SFT with TensorBoard) and test_reward_modeling.py (torchrun RM, no tracker):
here both Trainer stages run as real processes with TensorBoard AND wandb (offline) on, tokens given in each
accepted spelling, checkpoints written, and a failing run too; then every byte they wrote is searched. The code
checks are static: every ``torch.load`` in this repository (and in the Trainer that resumes our checkpoints) reads
with ``weights_only=True``, nothing unpickles, nothing saves weights as pickles, nothing trusts remote code or runs
a shell by itself.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

from conftest import ROOT, run_forked
from tiny import ORCA_ROWS, write_rows

SECRETS = {
    "access": "hf_FAULTaccessQ1w2E3r4T5",  # --hf_access_token=...
    "hub": "hf_FAULThubY6u7I8o9P0",  # --hub_token ...
    "auth": "hf_FAULTauthA1s2D3f4G5",  # --use_auth_token ... (the reference's spelling, given a real token)
}


@pytest.fixture(scope="module")
def runs(tiny_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("secrets")
    data = write_rows(tmp / "pairs.jsonl", ORCA_ROWS * 2)
    common = [
        "--model_name_or_path",
        str(tiny_dir),
        "--dataset_name",
        str(data),
        "--max_steps",
        "2",
        "--save_steps",
        "1",
        "--logging_steps",
        "1",
        "--validation_split_percentage",
        "25",
        "--eval_strategy",
        "steps",
        "--eval_steps",
        "1",
        "--keep_checkpoints",  # searched for the token too
    ]
    # Both stages log to TensorBoard; the reward model to wandb too (finishing a wandb run costs ~20 s here; the
    # token reaches wandb the same way from either stage: the parsed arguments and the command line).
    trackers = {"sft": ["--report_to", "tensorboard"], "rm": ["--report_to", "tensorboard,wandb"]}
    tokens = {
        "sft": [f"--hf_access_token={SECRETS['access']}", "--hub_token", SECRETS["hub"]],
        "rm": ["--use_auth_token", SECRETS["auth"], "--hub_token", SECRETS["hub"]],
    }
    cases = {}
    for name, script in (("sft", "sft.py"), ("rm", "reward_modeling.py")):
        # TensorBoard logs outside the output folder (TENSORBOARD_LOGGING_DIR, set in the prelude), wandb in WANDB_DIR
        prelude = f"import os; os.environ['TENSORBOARD_LOGGING_DIR'] = {str(tmp / f'tb-{name}')!r}"
        cases[name] = (
            script,
            [
                *common,
                *trackers[name],
                *tokens[name],
                "--output_dir",
                str(tmp / f"out-{name}"),
                "--run_name",
                f"faults-{name}",
            ],
            prelude,
        )
    # a run that fails after the token was read: the error line must not echo it
    cases["failing"] = (
        "sft.py",
        [
            "--model_name_or_path",
            str(tiny_dir),
            "--dataset_name",
            str(tmp / "absent.jsonl"),
            "--output_dir",
            str(tmp / "out-failing"),
            "--hf_access_token",
            SECRETS["access"],
        ],
    )
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp / "wandb"), "WANDB_SILENT": "true"}
    return tmp, run_forked(cases, tmp, env=env)


def test_both_stages_ran_with_both_trackers(runs):
    tmp, results = runs
    for name in ("sft", "rm"):
        assert results[name].returncode == 0, results[name].stderr[-3000:]
        assert list((tmp / f"tb-{name}").rglob("*tfevents*")), "TensorBoard wrote nothing: the test proves nothing"
        assert (tmp / f"out-{name}" / "checkpoints" / "checkpoint-2" / "training_args.bin").is_file()
    wandb_files = [p for p in (tmp / "wandb").rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in wandb_files), "wandb wrote nothing: the test proves nothing"
    assert results["failing"].returncode == 2


def test_no_secret_in_any_file_or_output(runs):
    tmp, results = runs
    files = [p for p in tmp.rglob("*") if p.is_file() and not p.is_symlink()]
    assert len(files) > 50
    leaked = [
        f"{p.relative_to(tmp)}: {kind}"
        for p in files
        for kind, secret in SECRETS.items()
        if secret.encode() in p.read_bytes()
    ]
    assert leaked == []  # (files include each process's stdout/stderr: *.out, *.err)
    for proc in results.values():
        for secret in SECRETS.values():
            assert secret not in proc.stdout + proc.stderr


def test_trackers_saw_the_command_line_redacted(runs):
    """wandb records the command line in its run file; it gets the scrubbed one (the flag stays, its value not)."""
    tmp, _ = runs
    (run_file,) = (tmp / "wandb").rglob("run-*.wandb")
    data = run_file.read_bytes()
    assert b"--use_auth_token" in data and b"<redacted>" in data


def test_saved_weights_are_safetensors(runs):
    """Model weights are safetensors everywhere; the only pickles are the Trainer's own resume files."""
    tmp, _ = runs
    trainer_files = {"optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin", "scaler.pt"}
    for name in ("sft", "rm"):
        out = tmp / f"out-{name}"
        pickles = {p.name for p in out.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt")}
        assert pickles <= trainer_files, pickles
        assert (out / "model.safetensors").is_file() and (out / "adapter" / "adapter_model.safetensors").is_file()
        for checkpoint in out.glob("checkpoints/checkpoint-*"):
            assert list(checkpoint.glob("*.safetensors")), checkpoint


# ---------------------------------------------------------------------------------------------------- static checks


def python_files() -> list[Path]:
    skip = {".venv", ".git", ".cache", "out", "node_modules"}
    return [
        p
        for p in ROOT.rglob("*.py")
        if not (set(p.relative_to(ROOT).parts) & skip)
        and not any(part.startswith(".venv") for part in p.relative_to(ROOT).parts)
    ]


def calls(tree: ast.AST):
    """(dotted name of the called function, call node) for every call."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield ast.unparse(node.func), node


def keyword(node: ast.Call, name: str):
    for kw in node.keywords:
        if kw.arg == name:
            return kw.value
    return None


def is_true(value) -> bool:
    return isinstance(value, ast.Constant) and value.value is True


def test_repository_code_loads_and_saves_safely():
    problems = []
    files = python_files()
    assert len(files) > 20 and ROOT / "rlhf" / "ppo" / "checkpoint.py" in files
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        where = path.relative_to(ROOT)
        for name, node in calls(tree):
            line = f"{where}:{node.lineno}: {name}"
            if name == "torch.load" and not is_true(keyword(node, "weights_only")):
                problems.append(f"{line} without weights_only=True")
            if name in ("pickle.load", "pickle.loads", "dill.load", "joblib.load") or (
                name in ("np.load", "numpy.load") and is_true(keyword(node, "allow_pickle"))
            ):
                problems.append(f"{line} unpickles")
            if keyword(node, "safe_serialization") is not None and not is_true(keyword(node, "safe_serialization")):
                problems.append(f"{line} saves weights as a pickle")
            if is_true(keyword(node, "trust_remote_code")):
                problems.append(f"{line} trusts remote code unconditionally")
            if is_true(keyword(node, "shell")) or name in ("os.system", "os.popen"):
                problems.append(f"{line} runs a shell")
    assert problems == []


def test_the_trainer_that_resumes_our_checkpoints_reads_them_with_weights_only():
    """Resuming unpickles optimizer/scheduler/RNG files: the installed Trainer must restrict that to tensors."""
    spec = importlib.util.find_spec("transformers.trainer")
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    loads = [node for name, node in calls(tree) if name == "torch.load"]
    assert loads, "no torch.load found: the check proves nothing"
    unsafe = [node.lineno for node in loads if not is_true(keyword(node, "weights_only"))]
    assert unsafe == [], f"transformers/trainer.py torch.load without weights_only=True at lines {unsafe}"
