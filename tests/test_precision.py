"""Which precision each stage runs in: the host's native-bf16 switch, per-stage defaults, flags over accelerate's
environment over the default, and the one-line refusals. The precision *behaviour* (ratio 1 and KL 0 under bf16
autocast, learning, exact resume) is tested with the engine and the scripts (test_ppo_engine, test_rl_training)."""

from __future__ import annotations

import pytest
from transformers import HfArgumentParser

from rlhf.errors import UsageError
from rlhf.runtime.backend import Backend
from rlhf.runtime.precision import BF16_FASTER, STAGES, PrecisionArguments, default_bf16, native_bf16

CPU = Backend("cpu")


@pytest.mark.parametrize("value, expected", [("1", True), ("true", True), ("0", False), ("no", False)])
def test_the_switch_overrides_native_bf16_detection(value, expected):
    assert native_bf16({"RLHF_NATIVE_BF16": value}) is expected
    measured = BF16_FASTER["cpu"]  # the suite runs on a CPU host
    assert all(default_bf16(stage, {"RLHF_NATIVE_BF16": value}) is (expected and measured[stage]) for stage in STAGES)


def test_on_a_native_bf16_cpu_only_the_stages_measured_faster_default_to_bf16():
    """BENCHMARKS.md, Precision: on a CPU with AVX512-BF16/AMX the PPO update ran slower in bf16 than in fp32."""
    native = {"RLHF_NATIVE_BF16": "1"}
    assert [stage for stage in STAGES if default_bf16(stage, native)] == ["sft", "rm", "evaluate"]
    assert PrecisionArguments().mixed_precision("ppo", CPU, native) == "no"
    assert PrecisionArguments().mixed_precision("evaluate", CPU, native) == "bf16"


def test_a_bad_switch_value_is_a_one_line_usage_error():
    with pytest.raises(UsageError, match=r"RLHF_NATIVE_BF16='maybe': expected 0 or 1"):
        native_bf16({"RLHF_NATIVE_BF16": "maybe"})


def test_unknown_stage_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown stage"):
        default_bf16("dpo", {"RLHF_NATIVE_BF16": "1"})


@pytest.mark.parametrize(
    "flags, env, expected",
    [
        ({}, {"RLHF_NATIVE_BF16": "1"}, "bf16"),  # the default where bf16 is native (and measured faster)
        ({}, {"RLHF_NATIVE_BF16": "0"}, "no"),  # and where it would be emulated
        ({}, {"RLHF_NATIVE_BF16": "0", "ACCELERATE_MIXED_PRECISION": "bf16"}, "bf16"),  # accelerate's config wins
        ({}, {"RLHF_NATIVE_BF16": "1", "ACCELERATE_MIXED_PRECISION": "no"}, "no"),
        ({"bf16": True}, {"RLHF_NATIVE_BF16": "0", "ACCELERATE_MIXED_PRECISION": "no"}, "bf16"),  # the flag wins
        ({"bf16": False}, {"RLHF_NATIVE_BF16": "1", "ACCELERATE_MIXED_PRECISION": "bf16"}, "no"),
    ],
)
def test_flags_win_over_accelerates_environment_which_wins_over_the_default(flags, env, expected):
    assert PrecisionArguments(**flags).mixed_precision("evaluate", CPU, env) == expected


@pytest.mark.parametrize(
    "flags, env, message",
    [
        ({"bf16": True, "fp16": True}, {}, "--bf16 and --fp16 are exclusive"),
        ({"fp16": True}, {}, "--fp16: fp16 mixed precision needs a CUDA GPU (this run is on cpu)"),
        ({}, {"ACCELERATE_MIXED_PRECISION": "fp8"}, "ACCELERATE_MIXED_PRECISION=fp8: expected no, bf16 or fp16"),
    ],
)
def test_impossible_precisions_are_refused(flags, env, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        PrecisionArguments(**flags).mixed_precision("ppo", CPU, env)


def test_fp16_is_allowed_on_cuda():
    assert PrecisionArguments(fp16=True).mixed_precision("ppo", Backend("cuda"), {}) == "fp16"


@pytest.mark.parametrize("script, dataclass_name", [("sft", "SFTArguments"), ("reward_modeling", "RewardArguments")])
@pytest.mark.parametrize("native", ["0", "1"])
def test_trainer_stages_decide_their_default_when_flags_are_parsed(
    monkeypatch, tmp_path, script, dataclass_name, native
):
    """Not at import: a process that sets RLHF_NATIVE_BF16 after importing the script still gets its default."""
    import importlib

    module = importlib.import_module(f"rlhf.scripts.{script}")
    monkeypatch.setenv("RLHF_NATIVE_BF16", native)
    parser = HfArgumentParser(getattr(module, dataclass_name))
    (args,) = parser.parse_args_into_dataclasses(["--output_dir", str(tmp_path)])
    assert args.bf16 is (native == "1")
    (args,) = parser.parse_args_into_dataclasses(["--output_dir", str(tmp_path), "--bf16", "False"])
    assert args.bf16 is False
