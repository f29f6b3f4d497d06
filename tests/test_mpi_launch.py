"""gaudi_spawn.py --use_mpi with a real mpirun: every stage script finds its rank from Open MPI and trains on 2 ranks.

Runs on the CPU (gloo); on a Gaudi box the same command adds --use_habana.
"""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import run_script
from tiny import ORCA_ROWS, write_rows

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("mpirun") is None, reason="mpirun not on PATH (apt-get install openmpi-bin)"),
]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    rows = [dict(r, question=f"{r['question']} ({i})") for i in range(10) for r in ORCA_ROWS]
    return write_rows(tmp_path_factory.mktemp("mpi") / "pairs.jsonl", rows)


def _spawn(*args: str):
    return run_script("gaudi_spawn.py", "--world_size", "2", "--use_mpi", *args, timeout=600)


def test_sft_and_reward_model_train_on_two_mpi_ranks(tmp_path, tiny_dir, pairs):
    sft = tmp_path / "sft"
    result = _spawn(
        "sft.py",
        "--model_name_or_path",
        str(tiny_dir),
        "--dataset_name",
        str(pairs),
        "--output_dir",
        str(sft),
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "4",
        "--save_strategy",
        "no",
        "--log_level",
        "info",
    )
    assert result.returncode == 0, result.stdout[-3000:]
    out = result.stdout + result.stderr
    assert "MCW rank 1 bound" in out  # mpirun really started two ranks
    assert "Total train batch size (w. parallel, distributed & accumulation) = 8" in out  # 4 per rank x 2 ranks
    assert out.count("sft: model saved to") == 1  # rank 0 alone writes
    assert json.loads((sft / "COMPLETE.json").read_text())["stage"] == "sft"

    rm = tmp_path / "rm"
    result = _spawn(
        "reward_modeling.py",
        "--model_name_or_path",
        str(sft),
        "--dataset_name",
        str(pairs),
        "--output_dir",
        str(rm),
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "2",
        "--save_strategy",
        "no",
        "--log_level",
        "info",
        "--validation_split_percentage",
        "10",
    )
    assert result.returncode == 0, result.stdout[-3000:]
    out = result.stdout + result.stderr
    assert "Total train batch size (w. parallel, distributed & accumulation) = 4" in out
    assert out.count("reward_model: model saved to") == 1
    from transformers import AutoModelForSequenceClassification

    assert AutoModelForSequenceClassification.from_pretrained(str(rm)).config.num_labels == 1

    ppo = tmp_path / "ppo"
    result = _spawn(
        "rl_training.py",
        "--model_name",
        str(sft),
        "--reward_model_name",
        str(rm),
        "--dataset_name",
        str(pairs),
        "--output_dir",
        str(ppo),
        "--steps",
        "8",
        "--batch_size",
        "4",
        "--mini_batch_size",
        "2",
        "--gradient_accumulation_steps",
        "1",
        "--ppo_epochs",
        "1",
        "--response_length",
        "6",
    )
    assert result.returncode == 0, result.stdout[-3000:]
    # steps counts episodes over all processes: 8 / (4 per rank x 2 ranks) = 1 PPO step.
    assert len((ppo / "metrics.jsonl").read_text().splitlines()) == 1
    assert (ppo / "final" / "COMPLETE.json").is_file()
