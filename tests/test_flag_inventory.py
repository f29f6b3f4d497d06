"""Every flag in a stage's --help works as documented or is refused with one line naming it (issue 14, item 5).

The inventory below walks each stage's parser (its HfArgumentParser dataclasses): every flag must be on a list of
honoured flags, grouped by purpose, or on ``UNSUPPORTED_TRAINER_FLAGS`` (refused). A flag that a new TRL or
transformers release adds to SFTConfig/RewardConfig/TrainingArguments fails the inventory until someone decides
which list it belongs on, so it cannot slip into --help unexamined. Each refused flag has a test that it is refused.
"""

from __future__ import annotations

import dataclasses

import pytest
import test_faults_flags as faults

from rlhf.stages.flags import UNSUPPORTED_TRAINER_FLAGS
from tiny import write_rows

check_refused, run = faults.check_refused, faults.run


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_rows(tmp_path_factory.mktemp("inventory") / "pairs.jsonl", faults.ROWS)


# ---------------------------------------------------------------------------------------------------- the inventory
# Flags the transformers Trainer itself reads, with the meaning its --help gives them.
TRAINER = {
    "optimisation": {
        "learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm", "optim",
        "optim_args", "optim_target_modules", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps",
        "num_train_epochs", "max_steps", "gradient_accumulation_steps", "per_device_train_batch_size",
        "per_device_eval_batch_size", "auto_find_batch_size", "label_smoothing_factor", "neftune_noise_alpha",
        "average_tokens_across_devices", "train_sampling_strategy",
    },
    "seeds": {"seed", "data_seed", "full_determinism"},
    "precision, memory, speed": {
        "bf16", "fp16", "bf16_full_eval", "fp16_full_eval", "tf32", "gradient_checkpointing",
        "gradient_checkpointing_kwargs", "activation_checkpointing", "activation_checkpointing_kwargs",
        "torch_compile", "torch_compile_backend", "torch_compile_mode", "torch_empty_cache_steps", "use_liger_kernel",
        "liger_kernel_config", "use_cache", "use_cpu", "skip_memory_metrics",
    },
    "evaluation during training": {
        "eval_strategy", "eval_steps", "eval_delay", "eval_on_start", "eval_accumulation_steps",
        "eval_do_concat_batches", "eval_use_gather_object", "batch_eval_metrics", "prediction_loss_only",
        "include_for_metrics", "metric_for_best_model", "greater_is_better", "load_best_model_at_end", "label_names",
        "do_eval",  # refused without --eval_strategy (test below): the end-of-run metrics need no flag
    },
    "logging and trackers": {
        "logging_strategy", "logging_steps", "logging_first_step", "logging_nan_inf_filter", "log_level",
        "log_level_replica", "log_on_each_node", "report_to", "run_name", "project", "trackio_space_id",
        "trackio_bucket_id", "trackio_static_space_id", "disable_tqdm", "include_num_input_tokens_seen",
        "debug",  # the Trainer's --debug <features>; a bare --debug is this project's traceback switch
    },
    "checkpoints and resume": {
        "output_dir", "save_strategy", "save_steps", "save_total_limit", "save_only_model", "save_on_each_node",
        "resume_from_checkpoint", "ignore_data_skip", "restore_callback_states_from_checkpoint",
        "enable_jit_checkpoint",
    },
    "data loading": {
        "dataloader_drop_last", "dataloader_num_workers", "dataloader_prefetch_factor", "dataloader_pin_memory",
        "dataloader_persistent_workers", "dataloader_multiprocessing_context", "dataloader_in_order",
        "remove_unused_columns", "length_column_name",
    },
    "distributed": {
        "local_rank", "ddp_backend", "ddp_timeout", "ddp_find_unused_parameters", "ddp_bucket_cap_mb",
        "ddp_broadcast_buffers", "ddp_static_graph", "fsdp", "fsdp_config", "deepspeed", "accelerator_config",
        "parallelism_config",
    },
    "the reference command line": {"do_train"},  # always true here; false is refused (test below)
    # Publishing to the hub: the published folder, once, at the end (rlhf.outputs.hub).
    "hub": {"push_to_hub", "hub_model_id", "hub_token", "hub_private_repo"},
}  # fmt: skip
# Flags of TRL's configs that act on data the trainer receives already tokenized, honoured by TRL as documented.
TRL = {
    "sft": {
        "max_length",  # ours: longer pairs are dropped and counted
        "packing", "packing_strategy", "padding_free", "pad_to_multiple_of", "eval_packing", "shuffle_dataset",
        "completion_only_loss", "loss_type", "activation_offloading", "router_aux_loss_coef",
    },
    "reward_model": {
        "max_length", "pad_to_multiple_of", "disable_dropout", "center_rewards_coefficient", "activation_offloading",
    },
}  # fmt: skip
# This project's own flags, shared by the stages named.
OURS = {
    "model (all stages)": {
        "model_name_or_path", "tokenizer_name", "use_fast_tokenizer", "torch_dtype", "trust_remote_code", "peft",
        "lora_rank", "lora_alpha", "lora_dropout", "lora_target_modules", "lora_layers", "load_in_4bit",
        "load_in_8bit",
    },
    "data (all stages)": {
        "dataset_name", "dataset_split", "system_column", "prompt_column", "chosen_column", "rejected_column",
        "validation_split_percentage", "prompt_template", "max_train_samples",
        "max_eval_samples",  # refused by rl_training.py and evaluate.py, which have no eval rows (tests below)
    },
    "secrets (all stages)": {"hf_access_token", "use_auth_token"},
    "devices (all stages)": {"use_habana", "use_lazy_mode", "gaudi_config_name", "device"},
    "Trainer stages": {"evaluation_strategy", "overwrite_output_dir", "nonfinite_loss", "keep_checkpoints"},
    "sft": {"dataset_concatenation"},
    "reward_model": {
        "eval_batch_size",
        "length_groups",  # test_reward_modeling: test_batch_plans_train_the_same_reward_model
        "share_prompts",  # test_reward_modeling: test_batch_plans_train_the_same_reward_model
        "average_seeds",  # test_weight_average: test_the_published_weights_are_the_members_mean_and_measured_like...
        "average_members",  # test_weight_average: test_runs_trained_apart_are_averaged_by_average_members
        "member_processes",  # test_weight_average: test_members_trained_side_by_side_give_the_same_average
    },
}  # fmt: skip


def stage_fields(script: str) -> set[str]:
    """Every flag of a stage's parser: the init fields of its dataclasses."""
    types: tuple[type, ...]
    if script in ("sft", "reward_modeling"):
        from rlhf.data.pairs import DataArguments
        from rlhf.runtime.backend import BackendArguments
        from rlhf.secrets import HubArguments
        from rlhf.stages.flags import StageArguments

        module = __import__(f"rlhf.scripts.{script}", fromlist=["_"])
        stage = module.SFT if script == "sft" else module.REWARD_MODEL
        script_type, model_type, train_type = stage.arguments
        types = (script_type, model_type, StageArguments, DataArguments, HubArguments, BackendArguments, train_type)
    elif script == "rl_training":
        from rlhf.scripts.rl_training import ARGUMENTS as types
    else:
        from rlhf.data.pairs import DataArguments
        from rlhf.models.arguments import LoadArguments
        from rlhf.runtime.precision import PrecisionArguments
        from rlhf.scripts.evaluate import EvalArguments, EvalDataArguments
        from rlhf.secrets import HubArguments

        types = (EvalArguments, EvalDataArguments, LoadArguments, HubArguments, PrecisionArguments)
    return {f.name for t in types for f in dataclasses.fields(t) if f.init}


def honoured(*groups: dict, keys: tuple[str, ...] = ()) -> set[str]:
    names: set[str] = set()
    for group in groups:
        for key, flags in group.items():
            if not keys or key in keys or "all stages" in key:
                names |= flags
    return names


def check_inventory(fields: set[str], allowed: set[str], refused: set[str]) -> None:
    unlisted = sorted(fields - allowed - refused)
    assert not unlisted, f"flags in --help on neither list (decide: honoured or refused): {unlisted}"
    both = sorted(fields & allowed & refused)
    assert not both, f"flags on both lists: {both}"


@pytest.mark.parametrize("script, stage", [("sft", "sft"), ("reward_modeling", "reward_model")])
def test_every_trainer_stage_flag_is_honoured_or_refused(script, stage):
    fields = stage_fields(script)
    allowed = honoured(TRAINER) | TRL[stage] | honoured(OURS, keys=("Trainer stages", stage))
    check_inventory(fields, allowed, set(UNSUPPORTED_TRAINER_FLAGS))
    refused_here = fields & set(UNSUPPORTED_TRAINER_FLAGS)
    expected = {"pad_token", "eos_token", "chat_template_path", "dataset_num_proc", "model_init_kwargs", "do_predict"}
    assert expected <= refused_here  # the lists name flags these stages really have
    # No stale entries: every honoured name is a flag of the stage.
    assert TRL[stage] <= fields and honoured(TRAINER) <= fields


PPO_FLAGS = {
    "the run": {
        "reward_model_name", "output_dir", "save_freq", "save_merged", "resume_from_checkpoint", "seed", "debug",
        "log_with", "project_name", "log_samples_every", "overwrite_output_dir", "save_total_limit",
        "push_to_hub", "hub_model_id", "hub_private_repo",
        "batched_gen",  # the reference's flag: generation is always batched; checked as a bool, documented as such
    },
    "optimisation": {
        "learning_rate", "batch_size", "mini_batch_size", "gradient_accumulation_steps", "ppo_epochs",
        "lr_scheduler_type", "warmup_steps", "warmup_ratio", "steps", "max_grad_norm", "adafactor",
    },
    "PPO": {
        "init_kl_coef", "adap_kl_ctrl", "kl_target", "kl_horizon", "kl_estimator", "gamma", "lam", "cliprange",
        "cliprange_value", "vf_coef", "ratio_threshold", "early_stopping", "target_kl", "whiten_rewards",
        "stop_on_nonfinite",
    },
    "rewards": {"reward_baseline", "normalize_rewards", "reward_clip", "missing_eos_penalty", "samples_per_prompt"},
    "sampling": {
        "temperature", "output_max_length", "response_length", "ignore_eos", "max_prompt_length",
        "response_length_quantile",  # test_rl_training: test_response_length_from_the_chosen_answers
        "forward_batch_size", "static_shapes", "fold_lora_for_sampling",
        "share_frozen_layers",  # test_ppo_engine: test_frozen_layers_run_once_per_rollout_and_the_step_is_the_same
    },
    "precision": {"bf16", "fp16"},
}  # fmt: skip
EVAL_FLAGS = {
    "inputs and outputs": {
        "sft_model", "ppo_model", "reward_model", "second_reward_model", "output_dir", "gold_column",
        "kind_column",  # test_evaluation: test_evaluate_script_with_several_responses_per_prompt
    },
    "sampling and sizes": {
        "num_prompts", "num_pairs", "max_new_tokens", "temperature", "greedy", "batch_size", "seed", "device",
        "generation_batch_size",  # test_evaluation: test_generation_batches_follow_their_own_flag
        "samples_per_prompt",  # test_evaluation: test_evaluate_script_with_several_responses_per_prompt
    },
    "precision": {"bf16", "fp16", "torch_dtype", "trust_remote_code"},
}  # fmt: skip


def test_every_ppo_and_evaluate_flag_is_listed():
    check_inventory(stage_fields("rl_training"), honoured(PPO_FLAGS) | honoured(OURS, keys=("none",)), set())
    check_inventory(
        stage_fields("evaluate"), honoured(EVAL_FLAGS) | OURS["data (all stages)"] | OURS["secrets (all stages)"], set()
    )


# ---------------------------------------------------------------------------------------------------- refused flags
# A value for each refused flag (other than its default), and the stages that have it.
REFUSED_VALUES = {
    "pad_token": ["--pad_token", "<|im_end|>"],
    "eos_token": ["--eos_token", "<|im_start|>"],
    "chat_template_path": ["--chat_template_path", "template.jinja"],
    "dataset_text_field": ["--dataset_text_field", "question"],
    "dataset_kwargs": ["--dataset_kwargs", '{"skip_prepare_dataset": true}'],
    "dataset_num_proc": ["--dataset_num_proc", "4"],
    "model_init_kwargs": ["--model_init_kwargs", '{"attn_implementation": "eager"}'],
    "assistant_only_loss": ["--assistant_only_loss", "True"],
    "truncation_mode": ["--truncation_mode", "keep_end"],
    "do_predict": ["--do_predict"],
    "hub_strategy": ["--hub_strategy", "checkpoint"],
    "hub_always_push": ["--hub_always_push"],
    "hub_revision": ["--hub_revision", "dev"],
}
SFT_ONLY = {"dataset_text_field", "dataset_kwargs", "assistant_only_loss", "truncation_mode"}


def test_every_refused_flag_has_a_refusal_test():
    assert set(REFUSED_VALUES) == set(UNSUPPORTED_TRAINER_FLAGS)


CASES = [("sft", flag) for flag in sorted(REFUSED_VALUES)] + [
    ("reward_modeling", flag) for flag in sorted(set(REFUSED_VALUES) - SFT_ONLY)
]


@pytest.mark.parametrize("script, flag", CASES)
def test_an_unsupported_trainer_flag_is_refused_before_any_work(script, flag, tiny_dir, data, tmp_path, capfd, loads):
    expected = [f"--{flag} is not supported by this stage", UNSUPPORTED_TRAINER_FLAGS[flag].split(";")[0]]
    check_refused(script, tiny_dir, data, tmp_path, capfd, loads, REFUSED_VALUES[flag], expected, False)


@pytest.mark.parametrize("script", ["sft", "reward_modeling"])
@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--do_train", "False"], ["--do_train false", "always trains"]),
        (["--do_eval"], ["--do_eval without --eval_strategy", "--validation_split_percentage"]),
        (["--device", "cuda:1"], ["--device cuda:1", "CUDA_VISIBLE_DEVICES=1"]),
        (["--device", "cpu", "--use_cpu", "False", "--bf16", "False"], ["--device cpu", "--use_cpu True"]),
    ],
)
def test_trainer_stage_compatibility_flags_that_would_be_ignored_are_refused(
    script, flags, expected, tiny_dir, data, tmp_path, capfd, loads
):
    check_refused(script, tiny_dir, data, tmp_path, capfd, loads, flags, expected, False)


def test_do_eval_with_an_eval_strategy_and_the_reference_do_train_are_accepted(tiny_dir, data, tmp_path, capfd):
    """The honoured side: the same flags in the combinations that mean something parse and pass the checks (the
    run then stops at a later, deliberate error: a missing --max_steps value would be argparse's, so use a bad
    --lora_layers that is only judged against the loaded model)."""
    argv = ["--model_name_or_path", str(tiny_dir), "--dataset_name", str(data), "--output_dir", str(tmp_path / "o")]
    argv += ["--report_to", "none", "--do_train", "--do_eval", "--eval_strategy", "steps", "--eval_steps", "1"]
    argv += ["--validation_split_percentage", "25", "--lora_layers", "7"]
    code, lines, printed = run("sft", argv, capfd)
    assert code == 2 and len(lines) == 1 and "--lora_layers" in lines[0], printed[-3000:]


def test_rl_training_refuses_max_eval_samples(tiny_dir, data, tmp_path, capfd, loads):
    argv = ["--model_name", str(tiny_dir), "--reward_model_name", str(tiny_dir), "--dataset_name", str(data)]
    code, lines, printed = run(
        "rl_training", [*argv, "--output_dir", str(tmp_path / "o"), "--max_eval_samples", "4"], capfd
    )
    assert code == 2 and len(lines) == 1 and "--max_eval_samples: PPO has no evaluation rows" in lines[0], printed
    assert loads == []


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--max_eval_samples", "4"], "--max_eval_samples: evaluate.py uses every row"),
        (["--validation_split_percentage", "10"], "--validation_split_percentage: evaluate.py uses every row"),
    ],
)
def test_evaluate_refuses_split_flags(flags, expected, tiny_dir, data, tmp_path, capfd, loads):
    argv = ["--sft_model", str(tiny_dir), "--ppo_model", str(tiny_dir), "--reward_model", str(tiny_dir)]
    code, lines, printed = run("evaluate", [*argv, "--dataset_name", str(data), *flags], capfd)
    assert code == 2 and len(lines) == 1 and expected in lines[0], printed
    assert loads == []


def test_evaluate_takes_the_debug_switch(tiny_dir, data, tmp_path, capfd):
    """--debug is the traceback switch of every script: on evaluate.py it used to be an unknown flag."""
    argv = ["--sft_model", str(tmp_path / "nope"), "--ppo_model", str(tiny_dir), "--reward_model", str(tiny_dir)]
    code, lines, printed = run("evaluate", [*argv, "--dataset_name", str(data), "--debug"], capfd)
    assert code == 2 and len(lines) == 1 and "--sft_model" in lines[0] and "no such folder" in lines[0], printed
    assert "Traceback" in printed  # what --debug is for


def test_sft_logs_to_tensorboard_where_the_readme_says(tiny_dir, data, tmp_path, capfd):
    """README, "Logs, trackers and --debug": TensorBoard events of the Trainer stages go to O/runs/<date>_<host>/."""
    pytest.importorskip("tensorboard")
    out = tmp_path / "sft"
    argv = ["--model_name_or_path", str(tiny_dir), "--dataset_name", str(data), "--output_dir", str(out)]
    argv += ["--report_to", "tensorboard", "--max_steps", "1", "--logging_steps", "1", "--save_strategy", "no"]
    code, lines, printed = run("sft", argv, capfd)
    assert code == 0 and not lines, printed[-3000:]
    events = list((out / "runs").glob("*/events.out.tfevents.*"))
    assert events, sorted(str(p.relative_to(out)) for p in out.rglob("*"))
