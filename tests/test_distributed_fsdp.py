"""All three stages under FSDP2 (configs/accelerate/fsdp.yaml, full shard) on 2 CPU processes with gloo, launched
with ``accelerate launch`` as users do.

accelerate 1.15 enables FSDP only for processes that own accelerators: with CPU processes it silently falls back
to DDP (AcceleratorState.__init__ promotes only MULTI_GPU/NPU/XPU/... to FSDP). torch's FSDP2 itself runs on CPU
tensors over gloo, so ``tests/fsdp_on_cpu/sitecustomize.py`` (on PYTHONPATH, active only with
RLHF_TEST_FSDP_ON_CPU=1) keeps accelerate's FSDP choice; that stands in for the GPUs and nothing else. Each run
proves it was sharded: accelerate writes ``pytorch_model_fsdp_0/`` (sharded DCP checkpoints) only under FSDP.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from conftest import ROOT, free_port, run_script
from rlhf.outputs.folders import COMPLETE_MARKER
from tiny import write_rows

pytestmark = pytest.mark.slow  # each run: 2 processes, 30-60 s on a small CPU machine

FSDP_CONFIG = ROOT / "configs" / "accelerate" / "fsdp.yaml"
SHIM = ROOT / "tests" / "fsdp_on_cpu"


def accelerate_fsdp(script: str, *args: str):
    """``accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes 2 --mixed_precision no``."""
    launch = [
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(FSDP_CONFIG),
        "--num_processes",
        "2",
        "--mixed_precision",
        "no",
        "--main_process_port",
        str(free_port()),
        str(ROOT / script),
    ]
    env = {
        "RLHF_TEST_FSDP_ON_CPU": "1",
        "PYTHONPATH": os.pathsep.join([str(SHIM), str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    proc = run_script(launch[0], *launch[1:], *args, env=env, timeout=400)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return proc


def state(folder: Path, loader) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in loader(str(folder)).state_dict().items()}


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)


def merged_from_adapter(base: Path, adapter: Path, loader) -> dict[str, torch.Tensor]:
    from peft import PeftModel

    return {
        k: v.detach().clone()
        for k, v in PeftModel.from_pretrained(loader(str(base)), str(adapter)).merge_and_unload().state_dict().items()
    }


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    rows = [
        {"system": "", "question": f"What is {i} plus {j}?", "chosen": f"It is {i + j}.", "rejected": f"{i + j + 1}."}
        for i in range(8)
        for j in range(5)
    ]
    return write_rows(tmp_path_factory.mktemp("fsdp-data") / "pairs.jsonl", rows)


@pytest.fixture(scope="module")
def sft_out(tiny_dir, pairs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fsdp") / "sft"
    proc = accelerate_fsdp(
        "sft.py",
        *("--model_name_or_path", str(tiny_dir), "--dataset_name", str(pairs), "--output_dir", str(out)),
        *("--per_device_train_batch_size", "2", "--max_steps", "2", "--save_steps", "2", "--learning_rate", "1e-2"),
        "--keep_checkpoints",
        *("--logging_steps", "1", "--report_to", "none"),
    )
    assert proc.stderr.count("sft: model saved to") == 1  # gathered once, written by rank 0 alone
    return out


@pytest.fixture(scope="module")
def rm_out(sft_out, pairs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fsdp") / "rm"
    proc = accelerate_fsdp(
        "reward_modeling.py",
        *("--model_name_or_path", str(sft_out), "--dataset_name", str(pairs), "--output_dir", str(out)),
        *("--per_device_train_batch_size", "2", "--max_steps", "2", "--save_steps", "2", "--learning_rate", "1e-2"),
        "--keep_checkpoints",
        *("--validation_split_percentage", "20", "--logging_steps", "1", "--report_to", "none"),
    )
    assert proc.stderr.count("reward_model: model saved to") == 1
    return out


def test_sft_under_fsdp_saves_the_gathered_merged_model(sft_out, tiny_dir):
    from transformers import AutoModelForCausalLM

    assert (sft_out / "checkpoints" / "checkpoint-2" / "pytorch_model_fsdp_0").is_dir()  # trained sharded
    assert (sft_out / COMPLETE_MARKER).is_file()
    assert not (sft_out / ".tmp-result").exists()
    merged = state(sft_out, AutoModelForCausalLM.from_pretrained)
    # the merged model at the root is exactly base + the saved adapter, and training moved it away from the base
    assert_same_weights(
        merged, merged_from_adapter(tiny_dir, sft_out / "adapter", AutoModelForCausalLM.from_pretrained)
    )
    base = state(tiny_dir, AutoModelForCausalLM.from_pretrained)
    assert any(not torch.equal(merged[k], base[k]) for k in base)
    assert json.loads((sft_out / "metrics.json").read_text())["train"]["train_loss"] > 0


def test_reward_modeling_under_fsdp_saves_the_gathered_merged_model(rm_out, sft_out):
    from transformers import AutoModelForSequenceClassification

    # The reward model's weights follow its precision (bf16 under --bf16, the default where bf16 is native): it
    # merged its adapter into a base loaded in that dtype, and so does the rebuild here.
    dtype = getattr(torch, json.loads((rm_out / "config.json").read_text())["dtype"])

    def load(path: str):
        return AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=dtype)

    assert (rm_out / "checkpoints" / "checkpoint-2" / "pytorch_model_fsdp_0").is_dir()
    merged = state(rm_out, load)
    # (the base's score head is new and random; merging puts the adapter's trained copy in its place)
    assert_same_weights(merged, merged_from_adapter(sft_out, rm_out / "adapter", load))
    metrics = json.loads((rm_out / "metrics.json").read_text())
    assert metrics["heldout"]["pairs"] == 8 and metrics["heldout"]["split"] == "eval"
    assert (rm_out / "reward_stats.json").is_file()


def ppo_args(sft_out: Path, rm_out: Path, pairs: Path, out: Path) -> list[str]:
    flags = {
        "model_name": sft_out,
        "reward_model_name": rm_out,
        "dataset_name": pairs,
        "output_dir": out,
        "batch_size": 4,
        "mini_batch_size": 2,
        "gradient_accumulation_steps": 2,
        "ppo_epochs": 1,
        "response_length": 8,
        "steps": 16,  # 4 prompts x 2 processes per step: 2 steps
        "save_freq": 1,
        "learning_rate": 1e-3,
    }
    return [item for key, value in flags.items() for item in (f"--{key}", str(value))]


def test_ppo_under_fsdp_generates_saves_sharded_state_and_resumes_exactly(sft_out, rm_out, pairs, tmp_path):
    """Generation with the sharded policy (root unit unsharded, synced per-layer gathers), a sharded optimizer
    checkpoint via accelerate's save_state, a gathered merged policy, and an exact resume from step_1."""
    from transformers import AutoModelForCausalLM

    out, resumed = tmp_path / "out", tmp_path / "resumed"
    accelerate_fsdp("rl_training.py", *ppo_args(sft_out, rm_out, pairs, out))
    final = out / "final"
    for folder in (out / "step_1", out / "step_2"):
        assert (folder / COMPLETE_MARKER).is_file()
        assert (folder / "accelerate_state" / "pytorch_model_fsdp_0").is_dir()
        assert (folder / "accelerate_state" / "optimizer_0").is_dir()
        assert not (folder / "optimizer.pt").exists()  # a rank-0 copy of a sharded optimizer would be partial
    assert (final / COMPLETE_MARKER).is_file() and not (final / "accelerate_state").exists()  # the model only
    merged = state(final, AutoModelForCausalLM.from_pretrained)
    assert_same_weights(merged, merged_from_adapter(sft_out, final / "adapter", AutoModelForCausalLM.from_pretrained))
    from safetensors.torch import load_file

    head = load_file(str(final / "value_head.safetensors"))
    assert head["weight"].shape == (1, 32) and torch.isfinite(head["weight"]).all()

    resumed.mkdir()
    import shutil

    shutil.copytree(out / "step_1", resumed / "step_1")
    proc = accelerate_fsdp(
        "rl_training.py", *ppo_args(sft_out, rm_out, pairs, resumed), "--resume_from_checkpoint", "latest"
    )
    assert "resumed from" in proc.stderr
    original = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    again = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in again] == [2]
    for key in ("objective/kl", "objective/scores", "loss/total", "val/vpred", "policy/approxkl_avg"):
        assert again[0][key] == original[1][key], key  # same rollout, same update, bit for bit
    assert_same_weights(state(resumed / "final", AutoModelForCausalLM.from_pretrained), merged)


def test_resuming_a_sharded_checkpoint_without_sharding_is_one_line_exit_2(sft_out, rm_out, pairs, tmp_path):
    """A checkpoint written under FSDP holds its optimizer as shards: a plain run refuses it and says why."""
    out = tmp_path / "out"
    accelerate_fsdp("rl_training.py", *ppo_args(sft_out, rm_out, pairs, out), "--steps", "8")
    proc = run_script(
        "rl_training.py",
        *ppo_args(sft_out, rm_out, pairs, out),
        *("--steps", "32", "--resume_from_checkpoint", "latest"),
        env={"OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --resume_from_checkpoint") and "sharded run (FSDP/DeepSpeed)" in last


def test_full_fine_tune_under_fsdp_sft_then_ppo(tiny_dir, rm_out, pairs, tmp_path):
    """--peft none: the sharded root is the model itself (FSDP swaps its class); the gathered copy is rebuilt as
    the plain class, trained weights differ from the input ones in every tensor, and PPO with a frozen reference
    replica (not sharded) runs on it."""
    from transformers import AutoModelForCausalLM

    sft = tmp_path / "sft-full"
    accelerate_fsdp(
        "sft.py",
        *("--model_name_or_path", str(tiny_dir), "--dataset_name", str(pairs), "--output_dir", str(sft)),
        *("--per_device_train_batch_size", "2", "--max_steps", "2", "--learning_rate", "1e-2", "--peft", "none"),
        *("--save_strategy", "no", "--report_to", "none"),
    )
    assert json.loads((sft / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert not (sft / "adapter").exists()
    base, trained = (state(p, AutoModelForCausalLM.from_pretrained) for p in (tiny_dir, sft))
    assert base.keys() == trained.keys()
    assert all(not torch.equal(base[k], trained[k]) for k in base)  # every tensor trained (and gathered whole)
    ppo = tmp_path / "ppo-full"
    accelerate_fsdp("rl_training.py", *ppo_args(sft, rm_out, pairs, ppo), "--peft", "none")
    final = state(ppo / "final", AutoModelForCausalLM.from_pretrained)
    assert any(not torch.equal(final[k], trained[k]) for k in final)
    assert all(torch.isfinite(v).all() for v in final.values())
