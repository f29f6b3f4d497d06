"""QLoRA flags (--load_in_4bit / --load_in_8bit) of all three stages: one-line errors where quantized loading
cannot work. Loading in 4/8 bit itself needs CUDA + bitsandbytes (README "Scaling out" has the GPU command)."""

from __future__ import annotations

import importlib.util

import pytest

from conftest import ROOT, run_script
from rlhf.errors import UsageError
from rlhf.models.arguments import ModelArguments

ZERO3 = str(ROOT / "configs" / "accelerate" / "ds_zero3.json")


@pytest.mark.parametrize("flag", ["--load_in_4bit"])  # --load_in_8bit: same path, see the config tests below
def test_rl_training_quantized_on_cpu_is_one_line_exit_2(flag, tiny_dir, tmp_path):
    proc = run_script(
        "rl_training.py",
        *("--model_name", str(tiny_dir), "--reward_model_name", str(tiny_dir), flag, "--output_dir", str(tmp_path)),
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert lines[-1].startswith("error:") and flag in lines[-1] and "CUDA" in lines[-1], lines[-3:]
    assert "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())  # stopped before anything was loaded or written


def test_quantized_config_on_cuda_without_bitsandbytes_names_the_package():
    """On a GPU machine (none here, so the device is named) without bitsandbytes installed."""
    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed here")
    with pytest.raises(UsageError, match=r"--load_in_4bit: bitsandbytes is not installed \(pip install bitsandbytes\)"):
        ModelArguments(model_name_or_path="m", load_in_4bit=True).quantization_config("cuda")


@pytest.mark.parametrize("device", ["cpu", "hpu"])
def test_quantized_config_needs_cuda(device):
    with pytest.raises(UsageError, match=f"--load_in_8bit: quantized loading needs a CUDA GPU.*on {device}"):
        ModelArguments(model_name_or_path="m", load_in_8bit=True).quantization_config(device)
    assert ModelArguments(model_name_or_path="m").quantization_config(device) is None


def test_quantized_weights_need_lora_and_one_width():
    with pytest.raises(UsageError, match="quantized weights cannot be fully fine-tuned; use --peft lora"):
        ModelArguments(model_name_or_path="m", load_in_4bit=True, peft="none")
    with pytest.raises(UsageError, match="--load_in_4bit and --load_in_8bit are exclusive"):
        ModelArguments(model_name_or_path="m", load_in_4bit=True, load_in_8bit=True)


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"ACCELERATE_USE_FSDP": "true"}, "FSDP"),
        ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, "DeepSpeed ZeRO-3"),
        ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": ZERO3}, "DeepSpeed ZeRO-3"),
    ],
)
def test_quantized_with_parameter_sharding_is_refused(environ, named):
    """The variables are those `accelerate launch` sets for the configs in configs/accelerate/."""
    from rlhf.runtime.distributed import check_quantized_launch

    with pytest.raises(UsageError, match=f"cannot be sharded with {named}"):
        check_quantized_launch(object(), environ)


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": ZERO3.replace("zero3", "zero2")},
    ],
)
def test_quantized_with_ddp_or_zero2_is_allowed(environ):
    from rlhf.runtime.distributed import check_quantized_launch

    check_quantized_launch(object(), environ)
    check_quantized_launch(None, {"ACCELERATE_USE_FSDP": "true"})  # nothing quantized: nothing to refuse
