"""Shared fixtures: tiny local models, the sample data, and a way to run the stage scripts as users do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tiny import build_llama, build_tokenizer

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "orca_sample"

# Tests never touch the network: the hub is unreachable here and CI must not depend on it.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama with a ChatML tokenizer (EOS = <|im_end|>, pad = <|pad|>)."""
    folder = tmp_path_factory.mktemp("tiny-chat")
    tok = build_tokenizer(folder)
    return build_llama(folder, tok)


@pytest.fixture(scope="session")
def tiny_plain_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama whose tokenizer has no chat template and no pad token (EOS = <|endoftext|>)."""
    folder = tmp_path_factory.mktemp("tiny-plain")
    return build_llama(folder, build_tokenizer(folder, chat=False, pad=False))


@pytest.fixture(scope="session")
def sample_data() -> Path:
    assert (SAMPLE / "train.jsonl").is_file(), "run python data/make_sample_data.py"
    return SAMPLE


def run_script(script: str, *args: str, env: dict | None = None, timeout: int = 600,
               cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run a top-level script (or any argv after the python executable) the way a user would."""
    full_env = {**os.environ, **(env or {})}
    argv = [sys.executable, str(ROOT / script), *args] if script.endswith(".py") else [sys.executable, script, *args]
    return subprocess.run(argv, capture_output=True, text=True, env=full_env, timeout=timeout, cwd=cwd or ROOT)
