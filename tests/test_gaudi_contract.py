"""Gaudi contract suite: the three stages end to end through optimum-habana's classes, on the CPU.

Runs in the optimum-habana environment (``make test-gaudi`` builds ``.venv-gaudi`` from requirements-gaudi.txt and
constraints-gaudi.txt); everywhere else the whole module is skipped. The scripts run in this process with the
settings optimum-habana documents for CPUs (``use_habana=False, use_lazy_mode=False, use_cpu=True``), so
GaudiSFTTrainer, GaudiRewardTrainer (GaudiTrainer's loop, log and save) and GaudiAccelerator do the work.

Test-only shims, limited to what only a Gaudi machine provides (``hardware_shims`` below):

1. ``import optimum.habana`` runs ``check_synapse_version()``, which shells out to ``pip list | grep
   habana-torch-plugin`` and ``hl-smi``; without the Habana software the first yields nothing and the import fails
   (IndexError). While that import runs, exactly those two commands get the answers of a machine with the
   validated SynapseAI and no visible card (the check then only logs); every other command runs for real.
2. ``optimum.habana.trl`` and its model/diffusers modules import ``habana_frameworks`` (the SynapseAI PyTorch
   bridge) at import time. A stand-in package answers those imports; everything in it raises "needs Gaudi
   hardware" when called, so these tests also prove that the CPU path calls nothing of the bridge ...
3. ... except ``habana_frameworks.torch.hpu.memory_stats``: GaudiTrainer.log() reads HPU memory statistics on
   every log call whatever the device; the stand-in reports zero bytes in use.

On a machine with the Habana software installed, no shim is installed: the real bridge answers.

What needs the hardware itself (HPU kernels, lazy mode, HPU graphs, fused AdamW/clip-norm, HCCL) is not exercised
here; the README's Gaudi section gives the command a Gaudi owner runs to check it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from rlhf.runtime.stack import on_gaudi_stack

pytestmark = [
    pytest.mark.gaudi,
    pytest.mark.skipif(not on_gaudi_stack(), reason="needs the optimum-habana stack: make test-gaudi"),
]

# What `pip list | grep habana-torch-plugin` prints where SynapseAI 1.24 (validated for optimum-habana 1.21) is
# installed.
SYNAPSE_PIP_LINE = "habana-torch-plugin            1.24.0.0\n"


class NeedsGaudi:
    """Any attribute of the stand-in bridge: importable, subclassable, never callable."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{self._name} needs Gaudi hardware (test stand-in for habana_frameworks)")

    def __getattr__(self, item: str) -> NeedsGaudi:
        if item.startswith("__"):
            raise AttributeError(item)
        return NeedsGaudi(f"{self._name}.{item}")

    def __mro_entries__(self, bases):  # `class X(FusedSDPA-like placeholder)` at import time
        return (object,)


def zero_memory_stats(device=None) -> dict[str, int]:
    return {"InUse": 0, "MaxInUse": 0, "Limit": 0}


class StandInModule(types.ModuleType):
    def __getattr__(self, item: str):
        if item.startswith("__"):
            raise AttributeError(item)
        if self.__name__ == "habana_frameworks.torch.hpu" and item == "memory_stats":
            return zero_memory_stats
        return NeedsGaudi(f"{self.__name__}.{item}")


class StandInBridge(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves ``habana_frameworks`` and all its submodules as StandInModule packages."""

    def find_spec(self, name, path=None, target=None):
        if name == "habana_frameworks" or name.startswith("habana_frameworks."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        return StandInModule(spec.name)

    def exec_module(self, module):
        module.__path__ = []


@pytest.fixture(scope="module", autouse=True)
def hardware_shims():
    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    if importlib.util.find_spec("habana_frameworks") is not None:  # a Gaudi machine: the real software answers
        importlib.import_module("optimum.habana.trl")
        yield
        torch.set_num_threads(old_threads)
        return
    bridge = StandInBridge()
    sys.meta_path.insert(0, bridge)
    real_run = subprocess.run

    def run(cmd, *args, **kwargs):
        if cmd == "pip list | grep habana-torch-plugin":
            return subprocess.CompletedProcess(cmd, 0, SYNAPSE_PIP_LINE, "")
        if cmd == "hl-smi":  # no card visible: the driver check is skipped
            return subprocess.CompletedProcess(cmd, 127, "", "hl-smi: not found")
        return real_run(cmd, *args, **kwargs)

    subprocess.run = run
    try:
        importlib.import_module("optimum.habana")
    finally:
        subprocess.run = real_run
    importlib.import_module("optimum.habana.trl")
    yield
    torch.set_num_threads(old_threads)
    sys.meta_path.remove(bridge)


# ---------------------------------------------------------------------------------------------------- helpers

ROWS = [
    {"system": "", "question": f"What is {i} plus 1?", "chosen": f"{i} plus 1 is {i + 1}.", "rejected": "No idea."}
    for i in range(8)
]  # 8 pairs; --validation_split_percentage 25: the first 2 are held out


class Recorded:
    """Subclasses an optimum-habana class in its module so the scripts' instances can be inspected."""

    def __init__(self, monkeypatch, module: str, name: str) -> None:
        self.instances: list = []
        mod = importlib.import_module(module)
        base = getattr(mod, name)
        instances = self.instances

        class Recording(base):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                instances.append(self)

        Recording.__name__ = name
        monkeypatch.setattr(mod, name, Recording)
        self.base = base


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    from tiny import write_rows

    return write_rows(tmp_path_factory.mktemp("gaudi-data") / "pairs.jsonl", ROWS)


QUICK = ["--report_to", "none", "--save_strategy", "no", "--per_device_train_batch_size", "2", "--logging_steps", "1"]


@pytest.fixture(scope="module")
def sft_run(tiny_dir, data_file, tmp_path_factory):
    import sft

    out = tmp_path_factory.mktemp("gaudi-sft") / "out"
    argv = ["--model_name_or_path", str(tiny_dir), "--dataset_name", str(data_file), "--output_dir", str(out)]
    argv += [*QUICK, "--max_steps", "3", "--learning_rate", "5e-3", "--validation_split_percentage", "25"]
    argv += ["--dataset_concatenation", "--max_length", "64", "--use_cpu", "True"]
    with pytest.MonkeyPatch.context() as mp:
        rec = Recorded(mp, "optimum.habana.trl", "GaudiSFTTrainer")
        assert sft.main(argv) == 0
    (trainer,) = rec.instances
    return out, trainer


@pytest.fixture(scope="module")
def rm_run(sft_run, data_file, tmp_path_factory):
    import reward_modeling

    sft_out, _ = sft_run
    out = tmp_path_factory.mktemp("gaudi-rm") / "out"
    argv = ["--model_name_or_path", str(sft_out), "--dataset_name", str(data_file), "--output_dir", str(out)]
    argv += [*QUICK, "--max_steps", "3", "--learning_rate", "1e-2", "--validation_split_percentage", "25"]
    argv += ["--use_cpu", "True", "--eval_strategy", "steps", "--eval_steps", "3"]
    with pytest.MonkeyPatch.context() as mp:
        rec = Recorded(mp, "optimum.habana.trl", "GaudiRewardTrainer")
        assert reward_modeling.main(argv) == 0
    (trainer,) = rec.instances
    return out, trainer


@pytest.fixture(scope="module")
def ppo_run(sft_run, rm_run, data_file, tmp_path_factory):
    import rl_training

    out = tmp_path_factory.mktemp("gaudi-ppo") / "out"
    argv = ["--model_name", str(sft_run[0]), "--reward_model_name", str(rm_run[0]), "--dataset_name", str(data_file)]
    argv += ["--output_dir", str(out), "--batch_size", "4", "--mini_batch_size", "2", "--gradient_accumulation_steps"]
    argv += ["2", "--ppo_epochs", "1", "--steps", "8", "--response_length", "6", "--max_prompt_length", "48"]
    argv += ["--static_shapes", "True", "--save_freq", "1", "--log_samples_every", "1"]
    with pytest.MonkeyPatch.context() as mp:
        rec = Recorded(mp, "optimum.habana.accelerate", "GaudiAccelerator")
        assert rl_training.main(argv) == 0
    (accelerator,) = rec.instances
    return out, accelerator


def assert_like_cuda_output(folder: Path, stage: str, tiny_dir: Path) -> None:
    """What the CUDA path's save_stage_output writes: COMPLETE.json last, listing the files; the prompt format the
    later stages reuse, as the same resolution from the tokenizer gives; loadable tokenizer."""
    from transformers import AutoTokenizer

    from rlhf.data.prompt_format import PromptFormat, resolve_prompt_format

    complete = json.loads((folder / "COMPLETE.json").read_text())
    assert complete["stage"] == stage and complete["adapter"] is True
    assert {"config.json", "model.safetensors", "prompt_format.json", "metrics.json"} <= set(complete["files"])
    tok = AutoTokenizer.from_pretrained(str(folder))
    assert tok.pad_token_id != tok.eos_token_id
    assert PromptFormat.load(folder) == resolve_prompt_format(
        "auto", AutoTokenizer.from_pretrained(str(tiny_dir)), None
    )


# ---------------------------------------------------------------------------------------------------- SFT


def test_sft_trains_through_gaudi_sft_trainer_on_cpu(sft_run):
    from optimum.habana import GaudiConfig
    from optimum.habana.trl import GaudiSFTConfig

    _, trainer = sft_run
    args = trainer.args
    assert isinstance(args, GaudiSFTConfig)
    assert (args.use_habana, args.use_lazy_mode, args.use_cpu) == (False, False, True)
    assert args.learning_rate == 5e-3 and args.max_steps == 3  # our flags carried over
    assert args.adam_epsilon == 1e-6  # flags left alone take optimum-habana's defaults
    assert trainer.args.device.type == "cpu"
    assert isinstance(trainer.gaudi_config, GaudiConfig)
    assert trainer.gaudi_config.use_fused_adam and trainer.gaudi_config.use_fused_clip_norm
    # GaudiTrainer's own loop ran: its log() adds the (stand-in) HPU memory statistics to every entry.
    losses = [row for row in trainer.state.log_history if "loss" in row]
    assert len(losses) == 3 and all("memory_allocated (GB)" in row for row in losses)
    assert all(torch.isfinite(torch.tensor(row["loss"])) for row in losses)


def test_sft_packs_examples_with_answer_only_labels(sft_run, tiny_dir):
    from transformers import AutoTokenizer

    _, trainer = sft_run
    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    batch = next(iter(trainer.get_train_dataloader()))
    row = 0
    starts = (batch["position_ids"][row] == 0) & (batch["attention_mask"][row] == 1)
    assert starts.sum() >= 2  # --dataset_concatenation: several examples share a row, positions restart
    labels = batch["labels"][row]
    answer_text = tok.decode(labels[labels != -100])
    assert "plus 1 is" in answer_text and "What is" not in answer_text  # loss on answers only


def test_sft_output_folder_loads_like_the_cuda_path(sft_run, tiny_dir):
    from peft import PeftConfig
    from transformers import AutoModelForCausalLM

    out, _ = sft_run
    assert_like_cuda_output(out, "sft", tiny_dir)
    merged = AutoModelForCausalLM.from_pretrained(str(out))
    base = AutoModelForCausalLM.from_pretrained(str(tiny_dir))
    assert merged.config.architectures == ["LlamaForCausalLM"]
    changed = [n for n, p in merged.named_parameters() if not torch.equal(p, base.state_dict()[n])]
    assert changed  # the merged LoRA update moved the weights
    assert PeftConfig.from_pretrained(str(out / "adapter")).peft_type == "LORA"
    assert (out / "adapter" / "gaudi_config.json").is_file()  # GaudiTrainer.save_model wrote it


# ---------------------------------------------------------------------------------------------------- reward model


def test_reward_model_trains_through_gaudi_reward_trainer_on_cpu(rm_run):
    from optimum.habana import GaudiTrainingArguments

    out, trainer = rm_run
    assert type(trainer).__mro__[1].__name__ == "GaudiRewardTrainer"
    assert isinstance(trainer.args, GaudiTrainingArguments)
    assert (trainer.args.use_habana, trainer.args.use_cpu) == (False, True)
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    assert len(losses) == 3
    evals = [row for row in trainer.state.log_history if "eval_loss" in row]
    assert evals and torch.isfinite(torch.tensor(evals[-1]["eval_loss"]))  # pairwise loss on held-out pairs


def test_reward_output_folder_scores_pairs_like_the_cuda_path(rm_run, tiny_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhf.models.reward import score_sequences

    out, _ = rm_run
    assert_like_cuda_output(out, "reward_model", tiny_dir)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["heldout"]["pairs"] == 2 and metrics["heldout"]["split"] == "eval"
    stats = json.loads((out / "reward_stats.json").read_text())
    assert stats["std"] > 0
    model = AutoModelForSequenceClassification.from_pretrained(str(out))
    tok = AutoTokenizer.from_pretrained(str(out))
    ids = [tok("2 plus 1 is 3.")["input_ids"], tok("No idea.")["input_ids"]]
    scores = score_sequences(model, ids, tok.pad_token_id)
    assert scores.shape == (2,) and torch.isfinite(scores).all()


# ---------------------------------------------------------------------------------------------------- PPO


def test_ppo_runs_on_gaudi_accelerator_on_cpu(ppo_run):
    out, accelerator = ppo_run
    assert type(accelerator).__mro__[1].__name__ == "GaudiAccelerator"
    assert accelerator.device.type == "cpu"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(torch.isfinite(torch.tensor(r["objective/scores"])) for r in rows)
    assert rows[0]["policy/first_minibatch_max_abs_logratio"] < 1e-5  # ratio 1 at the first minibatch


def test_ppo_output_folders_load(ppo_run, sft_run):
    from transformers import AutoModelForCausalLM

    from rlhf.data.prompt_format import PromptFormat

    out, _ = ppo_run
    final = out / "final"
    assert (final / "COMPLETE.json").is_file() and (out / "step_1" / "COMPLETE.json").is_file()
    assert PromptFormat.load(final) == PromptFormat.load(sft_run[0])  # the format travels on, as on CUDA
    policy = AutoModelForCausalLM.from_pretrained(str(final))
    assert policy.config.architectures == ["LlamaForCausalLM"]


# ---------------------------------------------------------------------------------------------------- flags on an HPU


def test_one_set_of_flags_parses_the_reference_gaudi_command_lines():
    """The reference's Gaudi command lines (SPEC.md) parse on this stack: TRL 1.x names, legacy names, Gaudi flags."""
    from transformers import HfArgumentParser

    from rlhf.data.pairs import DataArguments
    from rlhf.runtime.backend import BackendArguments
    from rlhf.scripts import reward_modeling, sft
    from rlhf.secrets import HubArguments
    from rlhf.stages.flags import StageArguments

    sft_argv = (
        "--model_name_or_path M --bf16 True --dataset_name Intel/orca_dpo_pairs --dataset_concatenation "
        "--per_device_train_batch_size 2 --per_device_eval_batch_size 2 --gradient_accumulation_steps 4 "
        "--evaluation_strategy no --save_strategy steps --save_steps 2000 --save_total_limit 1 --learning_rate 1e-4 "
        "--logging_steps 1 --do_train --num_train_epochs 3 --overwrite_output_dir --log_level info --output_dir O "
        "--peft lora --use_fast_tokenizer false --use_auth_token True --device hpu --use_habana --use_lazy_mode "
        "--max_length 512 --completion_only_loss True"
    ).split()
    parser = HfArgumentParser(
        (sft.ScriptArguments, sft.SFTModelArguments, StageArguments, DataArguments, HubArguments, BackendArguments)
        + (sft.SFTArguments,)
    )
    script, model, stage, _, hub, backend, train = parser.parse_args_into_dataclasses(args=sft_argv)
    assert model.use_fast_tokenizer is False and model.peft == "lora"
    assert script.dataset_concatenation and stage.overwrite_output_dir and stage.evaluation_strategy == "no"
    assert backend.use_habana and backend.use_lazy_mode and backend.device == "hpu"
    assert train.max_length == 512 and train.completion_only_loss is True and train.num_train_epochs == 3

    rm_argv = (
        "--model_name_or_path M --output_dir O --log_level info --num_train_epochs 1 --per_device_train_batch_size 1 "
        "--hf_access_token T --use_habana --use_lazy_mode --ddp_find_unused_parameters True "
        "--gaudi_config_name Habana/gpt2"
    ).split()
    parser = HfArgumentParser(
        (reward_modeling.ScriptArguments, reward_modeling.RewardModelArguments, StageArguments, DataArguments)
        + (HubArguments, BackendArguments, reward_modeling.RewardArguments)
    )
    *_, backend, train = parser.parse_args_into_dataclasses(args=rm_argv)
    assert train.ddp_find_unused_parameters is True and backend.gaudi_config_name == "Habana/gpt2"


def test_training_arguments_on_an_hpu(tmp_path):
    """The mapping --use_habana gets (building GaudiTrainingArguments with use_habana=True sets the HPU up, which
    needs the card: checked here as the keyword arguments it is built from)."""
    from optimum.habana import GaudiTrainingArguments
    from transformers import HfArgumentParser

    from rlhf.runtime.backend import Backend, BackendArguments
    from rlhf.runtime.gaudi import gaudi_training_kwargs
    from rlhf.scripts import reward_modeling

    argv = ["--output_dir", str(tmp_path), "--learning_rate", "2e-5", "--ddp_find_unused_parameters", "True"]
    argv += ["--use_habana", "--use_lazy_mode", "--gaudi_config_name", "Habana/llama", "--bf16", "True"]
    train, backend_args = HfArgumentParser(
        (reward_modeling.RewardArguments, BackendArguments)
    ).parse_args_into_dataclasses(args=argv)
    kwargs = gaudi_training_kwargs(train, Backend("hpu", lazy_mode=True), backend_args, GaudiTrainingArguments)
    assert kwargs["use_habana"] is True and kwargs["use_lazy_mode"] is True and kwargs["use_cpu"] is False
    assert kwargs["gaudi_config_name"] == "Habana/llama"
    assert kwargs["ddp_find_unused_parameters"] is True and kwargs["learning_rate"] == 2e-5 and kwargs["bf16"]
    assert "half_precision_backend" not in kwargs  # optimum-habana's hpu_amp applies
    eager = gaudi_training_kwargs(train, Backend("hpu", lazy_mode=False), backend_args, GaudiTrainingArguments)
    assert eager["use_lazy_mode"] is False
    on_cpu = gaudi_training_kwargs(train, Backend("cpu"), backend_args, GaudiTrainingArguments)
    assert on_cpu["use_habana"] is False and on_cpu["use_cpu"] is True and on_cpu["gaudi_config_name"] is None

    train.fp16 = True
    from rlhf.errors import UsageError

    with pytest.raises(UsageError, match="--fp16 is not supported by optimum-habana"):
        gaudi_training_kwargs(train, Backend("hpu", lazy_mode=True), backend_args, GaudiTrainingArguments)


def test_gaudi_config_from_flags_or_a_local_file(tmp_path):
    from rlhf.errors import UsageError
    from rlhf.runtime.backend import Backend, BackendArguments
    from rlhf.runtime.gaudi import gaudi_config

    hpu = Backend("hpu", lazy_mode=True)
    default = gaudi_config(hpu, BackendArguments(), bf16=True)
    assert (default.use_fused_adam, default.use_fused_clip_norm, default.use_torch_autocast) == (True, True, True)
    assert gaudi_config(hpu, BackendArguments(), bf16=False).use_torch_autocast is False

    folder = tmp_path / "gaudi-cfg"
    folder.mkdir()
    (folder / "gaudi_config.json").write_text(
        json.dumps({"use_fused_adam": False, "use_fused_clip_norm": True, "use_torch_autocast": True})
    )
    for name in (folder, folder / "gaudi_config.json"):
        loaded = gaudi_config(hpu, BackendArguments(use_habana=True, gaudi_config_name=str(name)), bf16=False)
        assert (loaded.use_fused_adam, loaded.use_torch_autocast) == (False, True)
    with pytest.raises(UsageError, match="--gaudi_config_name .*missing: cannot load a Gaudi config"):
        gaudi_config(hpu, BackendArguments(use_habana=True, gaudi_config_name=str(tmp_path / "missing")), bf16=False)


@pytest.mark.skipif(importlib.util.find_spec("habana_frameworks") is not None, reason="the real bridge is here")
def test_ppo_runtime_on_an_hpu_uses_the_bridge():
    """--use_habana --use_lazy_mode: mark_step is htcore.mark_step and generation asks optimum-habana for lazy mode
    and HPU graphs (the stand-in bridge says which bridge function would run); eager mode uses neither."""
    from rlhf.runtime.backend import Backend
    from rlhf.runtime.gaudi import GaudiRuntime

    lazy = GaudiRuntime.for_backend(Backend("hpu", lazy_mode=True))
    assert lazy.generate_kwargs == {"lazy_mode": True, "hpu_graphs": True, "ignore_eos": False}
    with pytest.raises(RuntimeError, match=r"habana_frameworks\.torch\.core\.mark_step needs Gaudi hardware"):
        lazy.mark_step()
    with pytest.raises(RuntimeError, match=r"wrap_in_hpu_graph needs Gaudi hardware"):
        with lazy.graphs(torch.nn.Linear(2, 2)):
            pass
    eager = GaudiRuntime.for_backend(Backend("hpu", lazy_mode=False))
    assert eager.generate_kwargs == {}
    eager.mark_step()  # nothing to cut in eager mode


# ---------------------------------------------------------------------------------------------------- gaudi_spawn.py

SPAWNED = ["reward_modeling.py", "--model_name_or_path", "M", "--use_habana", "--use_lazy_mode"]


def runner_argv(**kwargs) -> tuple[list[str], dict[str, str]]:
    """The command optimum-habana's own launcher (DistributedRunner, as its examples/gaudi_spawn.py drives it) would
    run through the shell, split into argv, and the variables it would set."""
    import shlex

    from optimum.habana.distributed import DistributedRunner

    runner = DistributedRunner(command_list=[" ".join(SPAWNED)], **kwargs)
    env = {k: str(v) for k, v in runner._model_env_vars.items()}
    return shlex.split(runner._interpreter + runner._commands[0]), env


def spawn_argv(launcher: list[str]) -> tuple[list[str], dict[str, str]]:
    import gaudi_spawn

    argv, env = gaudi_spawn.build_command(gaudi_spawn.parse_args([*launcher, *SPAWNED]), {})
    return argv, env


def test_gaudi_spawn_runs_what_optimum_habanas_launcher_runs(tmp_path):
    """Same inputs, same command as optimum-habana's DistributedRunner (both read this machine's CPU topology for
    mpirun's --map-by)."""
    import gaudi_spawn

    sockets, cores = gaudi_spawn.detect_cpu_topology()
    hostfile = tmp_path / "hosts.txt"
    hostfile.write_text("node-a slots=8\nnode-b slots=8\n")
    cases = {
        "torchrun": (["--world_size", "8"], {"world_size": 8}),
        "deepspeed": (["--world_size", "8", "--use_deepspeed"], {"world_size": 8, "use_deepspeed": True}),
        "one card": (["--world_size", "1"], {"world_size": 1}),
        "hostfile": (
            ["--hostfile", str(hostfile), "--use_deepspeed", "--master_port", "4242"],
            {"hostfile": str(hostfile), "use_deepspeed": True, "master_port": 4242},
        ),
    }
    if sockets * cores >= 2:  # with fewer cores than ranks optimum-habana asks mpirun for PE=0 (gaudi_spawn: by slot)
        n = sockets * cores
        cases["mpi"] = (["--world_size", str(n), "--use_mpi"], {"world_size": n, "use_mpi": True})
    for name, (launcher, runner_kwargs) in cases.items():
        theirs, their_env = runner_argv(**runner_kwargs)
        ours, our_env = spawn_argv(launcher)
        assert ours == theirs, name
        for key, value in their_env.items():  # MASTER_ADDR/MASTER_PORT for mpirun (ours: 127.0.0.1 = localhost)
            assert our_env[key] in (value, "127.0.0.1" if value == "localhost" else value), (name, key)


# ------------------------------------------------------------------------------------------------ no Habana software


@pytest.mark.skipif(importlib.util.find_spec("habana_frameworks") is not None, reason="the Habana software is here")
def test_without_the_habana_software_the_scripts_say_what_to_install(tiny_dir, data_file, tmp_path):
    """The real behaviour of this stack where SynapseAI is missing (separate processes: no stand-ins): --use_habana
    stops at once, and a plain run (whose trainer is optimum-habana's) explains why optimum-habana cannot load."""
    from conftest import run_forked

    common = ["--model_name_or_path", str(tiny_dir), "--dataset_name", str(data_file)]
    runs = run_forked(
        {
            "habana": ("sft.py", [*common, "--output_dir", str(tmp_path / "a"), "--use_habana", "--use_lazy_mode"]),
            "plain": ("reward_modeling.py", [*common, "--output_dir", str(tmp_path / "b"), "--max_steps", "1"]),
        },
        tmp_path,
    )
    habana, plain = runs["habana"], runs["plain"]
    assert habana.returncode == 2, habana.stderr[-2000:]
    assert "error: --use_habana: the Habana software is not installed" in habana.stderr
    assert plain.returncode == 2, plain.stderr[-2000:]
    assert "error: optimum-habana is installed but cannot be imported" in plain.stderr
    assert "requirements-gaudi.txt" in plain.stderr
    assert not (tmp_path / "b").exists()  # stopped before any data, model or output folder
