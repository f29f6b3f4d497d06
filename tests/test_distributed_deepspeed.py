"""The DeepSpeed and accelerate config files in configs/accelerate/, checked by DeepSpeed's and accelerate's own
parsers (DeepSpeed installs without CUDA; running ZeRO needs GPUs, see README "Scaling out")."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import ROOT

deepspeed = pytest.importorskip("deepspeed")  # requirements-dev.txt installs it (make setup)

CONFIGS = ROOT / "configs" / "accelerate"
DS_JSON = {"ds_zero2.json": (2, None), "ds_zero3.json": (3, None), "ds_zero3_offload.json": (3, "cpu")}
YAMLS = {
    "ddp.yaml": "MULTI_GPU",
    "deepspeed_zero2.yaml": "DEEPSPEED",
    "deepspeed_zero3.yaml": "DEEPSPEED",
    "deepspeed_zero3_offload.yaml": "DEEPSPEED",
    "fsdp.yaml": "FSDP",
}


def trainer_filled(config: dict) -> dict:
    """The config as the Trainer hands it to DeepSpeed: its "auto" values filled from the training arguments."""
    from transformers import TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    hf = HfTrainerDeepSpeedConfig(copy.deepcopy(config))
    args = TrainingArguments(
        output_dir="unused", per_device_train_batch_size=2, gradient_accumulation_steps=4, bf16=True, use_cpu=True
    )
    hf.trainer_config_process(args)
    hf.trainer_config_finalize(args, None, num_training_steps=100)
    return hf.config


@pytest.mark.parametrize("name", sorted(DS_JSON))
def test_deepspeed_config_is_accepted_by_deepspeed(name):
    from deepspeed.runtime.config import DeepSpeedConfig

    stage, offload = DS_JSON[name]
    parsed = DeepSpeedConfig(trainer_filled(json.loads((CONFIGS / name).read_text())))
    assert parsed.zero_optimization_stage == stage
    assert (parsed.train_micro_batch_size_per_gpu, parsed.gradient_accumulation_steps) == (2, 4)
    assert parsed.train_batch_size == 8  # micro batch x accumulation x 1 process: DeepSpeed checks the product
    offload_param = parsed.zero_config.offload_param
    assert (offload_param.device if offload_param else None) == offload
    if stage == 3:  # saving a merged model gathers the weights: needs the 16-bit gather on save
        assert parsed.zero_config.gather_16bit_weights_on_model_save


def test_deepspeed_parser_rejects_what_the_files_could_get_wrong():
    """The check above can fail: a misspelt key or an unknown stage is an error in DeepSpeed's parser."""
    from deepspeed.runtime.config import DeepSpeedConfig

    good = trainer_filled(json.loads((CONFIGS / "ds_zero2.json").read_text()))
    typo = copy.deepcopy(good)
    typo["zero_optimization"]["overlap_comms"] = True
    with pytest.raises(Exception, match="overlap_comms"):
        DeepSpeedConfig(typo)
    stage = copy.deepcopy(good)
    stage["zero_optimization"]["stage"] = 4
    with pytest.raises(Exception, match="stage"):
        DeepSpeedConfig(stage)


@pytest.mark.parametrize("name", sorted(YAMLS))
def test_accelerate_config_file_loads(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(CONFIGS / name))
    assert str(config.distributed_type).rsplit(".", 1)[-1] == YAMLS[name]
    assert (config.num_machines, config.machine_rank) == (1, 0)  # multi-node: overridden on the command line
    if YAMLS[name] == "DEEPSPEED":
        json_file = ROOT / config.deepspeed_config["deepspeed_config_file"]  # relative to the repository root
        assert json_file.is_file() and json_file.name in DS_JSON
        assert json_file.stem.replace("ds_", "deepspeed_") == Path(name).stem
    if YAMLS[name] == "FSDP":
        assert config.fsdp_config["fsdp_version"] == 2
        assert config.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"


def fake_accelerator(config_file: str, processes: int = 4):
    """What rlhf.runtime.distributed reads of an Accelerator (its distributed type, DeepSpeed plugin, process count): a
    real accelerate DeepSpeedPlugin on the real config file. A real DeepSpeed Accelerator needs GPUs."""
    from accelerate.utils import DeepSpeedPlugin, DistributedType

    plugin = DeepSpeedPlugin(hf_ds_config=str(CONFIGS / config_file))
    plugin.set_mixed_precision("bf16")
    accelerator = SimpleNamespace(
        distributed_type=DistributedType.DEEPSPEED,
        state=SimpleNamespace(deepspeed_plugin=plugin),
        num_processes=processes,
    )
    return accelerator, plugin


@pytest.mark.parametrize("name", sorted(DS_JSON))
def test_ppo_settings_make_a_valid_deepspeed_config(name):
    """rl_training.py has no data loader for accelerate to infer batch sizes from: configure_deepspeed_for_ppo
    fills them, and the result passes DeepSpeed's parser (incl. its batch-size product check)."""
    import torch
    from deepspeed.runtime.config import DeepSpeedConfig

    from rlhf.runtime.distributed import configure_deepspeed_for_ppo, deepspeed_stage, ppo_optimizer

    accelerator, plugin = fake_accelerator(name, processes=4)
    assert deepspeed_stage(accelerator) == DS_JSON[name][0]
    configure_deepspeed_for_ppo(accelerator, mini_batch_size=2, accumulation=3, max_grad_norm=1.0)
    assert plugin.deepspeed_config["train_batch_size"] == 2 * 3 * 4  # micro batch x accumulation x processes
    assert plugin.deepspeed_config["gradient_accumulation_steps"] == 3  # the boundary accelerate.accumulate marks
    # DeepSpeed's parser checks the batch product against the world size it sees: 1 process outside a launch.
    accelerator, plugin = fake_accelerator(name, processes=1)
    configure_deepspeed_for_ppo(accelerator, mini_batch_size=2, accumulation=3, max_grad_norm=1.0)
    config = copy.deepcopy(plugin.deepspeed_config)
    optimizer = ppo_optimizer(accelerator, [torch.nn.Parameter(torch.zeros(2))], lr=1e-5, adafactor=False)
    if "optimizer" in config:  # the offload config: DeepSpeed's CPU Adam; accelerate fills lr from the placeholder
        from accelerate.utils import DummyOptim

        assert isinstance(optimizer, DummyOptim) and optimizer.lr == 1e-5
        config["optimizer"]["params"] = {"lr": 1e-5, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0}
    else:
        assert isinstance(optimizer, torch.optim.Adam)
    assert "auto" not in json.dumps(config)
    parsed = DeepSpeedConfig(config)
    assert (parsed.train_micro_batch_size_per_gpu, parsed.gradient_accumulation_steps) == (2, 3)
    assert parsed.train_batch_size == 2 * 3 and parsed.gradient_clipping == 1.0


def test_adafactor_with_a_config_that_brings_its_optimizer_is_refused():
    from rlhf.errors import UsageError
    from rlhf.runtime.distributed import ppo_optimizer

    accelerator, _ = fake_accelerator("ds_zero3_offload.json")
    with pytest.raises(UsageError, match="--adafactor"):
        ppo_optimizer(accelerator, [], lr=1e-5, adafactor=True)


def test_frozen_models_load_whole_under_zero3():
    """Under ZeRO-3 transformers partitions every model loaded while its DeepSpeed config is alive; the reward
    model and a frozen reference are loaded with that lifted, as whole replicas."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    from rlhf.runtime.distributed import frozen_model_loading

    accelerator, plugin = fake_accelerator("ds_zero3.json")
    plugin.set_deepspeed_weakref()  # what the Accelerator does for ZeRO-3
    assert is_deepspeed_zero3_enabled()
    with frozen_model_loading(accelerator):
        assert not is_deepspeed_zero3_enabled()
    assert is_deepspeed_zero3_enabled()
    plugin.dschf = None  # leave no global DeepSpeed config behind for other tests
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    assert not is_deepspeed_zero3_enabled()
