"""configs/accelerate/ddp.yaml as shipped, launched by ``accelerate launch`` on 2 CPU processes (gloo): the file's
MULTI_GPU launcher starts the processes, which find no GPU and train data-parallel on the CPU.
(torchrun launches of every stage are in test_sft.py, test_reward_modeling.py and test_rl_training.py.)"""

from __future__ import annotations

import json

import pytest

from conftest import ROOT, free_port, run_script
from rlhf.outputs.folders import COMPLETE_MARKER
from tiny import write_rows

pytestmark = pytest.mark.slow  # 2 processes, ~40 s


def test_ddp_config_runs_sft_on_two_processes(tiny_dir, tmp_path):
    rows = [
        {"system": "", "question": f"What is {i} plus {j}?", "chosen": f"It is {i + j}.", "rejected": f"{i + j + 1}."}
        for i in range(6)
        for j in range(4)
    ]
    data = write_rows(tmp_path / "pairs.jsonl", rows)
    out = tmp_path / "sft"
    proc = run_script(
        "-m",
        "accelerate.commands.launch",
        *("--config_file", str(ROOT / "configs" / "accelerate" / "ddp.yaml"), "--num_processes", "2"),
        *("--mixed_precision", "no", "--main_process_port", str(free_port()), str(ROOT / "sft.py")),
        *("--model_name_or_path", str(tiny_dir), "--dataset_name", str(data), "--output_dir", str(out)),
        *("--per_device_train_batch_size", "2", "--max_steps", "2", "--report_to", "none", "--log_level", "info"),
        env={"OMP_NUM_THREADS": "1"},
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "Total train batch size (w. parallel, distributed & accumulation) = 4" in proc.stderr  # 2 per process x 2
    assert proc.stderr.count("sft: model saved to") == 1
    assert (out / COMPLETE_MARKER).is_file()
    assert json.loads((out / "metrics.json").read_text())["train"]["train_loss"] > 0
